"""``python -m cnnlab`` is the ``cnnlab`` command (torchrun launches it this way)."""

import sys


def run() -> int:
    """The command, with Ctrl-C during its start-up imports answered like Ctrl-C later (one line, exit 130)."""
    try:
        from cnnlab.cli import main
    except KeyboardInterrupt:
        print("cnnlab: interrupted", file=sys.stderr)
        return 130
    return main()


if __name__ == "__main__":
    sys.exit(run())
