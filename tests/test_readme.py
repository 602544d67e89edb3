"""The README's tour shows real output: every `$ cnnlab ...` example with output is run and compared.

How an example is compared with the real output, line by line:

* A line that is only "..." stands for any number of elided lines (none included); the lines before and after
  it must appear in the real output in that order, each exactly.
* What differs from run to run is masked on both sides first (and only that): run-folder timestamps
  (``20261201-151653``), throughput (``13,127 img/s``) and durations in seconds (``4.6s``, ``in 30.3s``).
* Training examples (the main job among them) take 30-60 s to the end, too slow for the suite: the command is
  run for real until the README's first "..." (the header and epoch 1, every figure but the masked ones) and
  then stopped; the lines after "..." are the same kind of line, checked in test_train.
* ``cnnlab serve`` runs until it is stopped: it is started (on a free port: the printed port is masked) and
  compared up to the first "..." as the training examples are.
* Examples that read the tour's trained run (``runs/lenet5-mnist-...``) or an image the README does not ship are
  skipped, and say so.
"""

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cnnlab.cli import main

README = Path(__file__).resolve().parent.parent / "README.md"

_MASKS = [(re.compile(r"\b\d{8}-\d{6}\b"), "YYYYMMDD-HHMMSS"), (re.compile(r"\b[\d,]+ img/s"), "N img/s"),
          (re.compile(r"\b\d+(\.\d+)?s\b"), "Ns"), (re.compile(r"(http://127\.0\.0\.1):\d+/"), r"\1:PORT/")]


def mask(line: str) -> str:
    line = line.rstrip()
    for pattern, token in _MASKS:
        line = pattern.sub(token, line)
    return line


def _elided(line: str) -> bool:
    return line.strip() == "..."


def matches(expected: list[str], actual: list[str]) -> bool:
    """Whether actual is expected with each "..." line standing for any run of lines (masks applied)."""
    exp, act = [None if _elided(l) else mask(l) for l in expected], [mask(l) for l in actual]
    # positions in exp reachable after consuming act[:j]; "..." may take zero or more lines
    reach = {0}
    for line in act:
        closure = _skip_elisions(reach, exp)
        reach = {i + (exp[i] is not None) for i in closure
                 if i < len(exp) and (exp[i] is None or exp[i] == line)}
        if not reach:
            return False
    return len(exp) in _skip_elisions(reach, exp)


def _skip_elisions(reach: set[int], exp: list) -> set[int]:
    out, todo = set(reach), list(reach)
    while todo:
        i = todo.pop()
        if i < len(exp) and exp[i] is None and i + 1 not in out:
            out.add(i + 1)
            todo.append(i + 1)
    return out


def _plain_blocks(text: str) -> list[str]:
    """The README's fenced blocks without a language (```python blocks are code, not output)."""
    blocks, current, language = [], None, None
    for line in text.splitlines(keepends=True):
        if line.startswith("```"):
            if current is None:
                current, language = [], line[3:].strip()
            else:
                if not language:
                    blocks.append("".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def examples():
    out = []
    for block in _plain_blocks(README.read_text()):
        for chunk in re.split(r"^(?=\$ cnnlab )", block, flags=re.M):
            if not chunk.startswith("$ cnnlab "):
                continue
            command, _, expected = chunk.partition("\n")
            if any(l.strip() and not _elided(l) for l in expected.splitlines()):  # something to compare
                out.append((command[2:], expected.rstrip("\n")))
    return out


def _needs(command: str) -> str | None:
    """Why an example cannot run here, or None."""
    argv = shlex.split(command)
    if any(a.startswith("runs/lenet5-mnist-") for a in argv):
        return "reads the tour's trained run (6 epochs of the main job); eval/predict/fidelity --run output is " \
               "tested in test_train and test_fidelity"
    if any(a.endswith(".png") and not Path(a).exists() for a in argv):
        return "reads an image the README does not ship"
    return None


def _params():
    out = []
    for command, expected in examples():
        marks = [pytest.mark.slow] if shlex.split(command)[1] == "train" else []
        if _needs(command):
            marks.append(pytest.mark.skip(reason=_needs(command)))
        out.append(pytest.param(command, expected, id=command, marks=marks))
    return out


def test_the_readme_has_examples():
    commands = [c for c, _ in examples()]
    assert len(commands) >= 14
    # the main job's example is among those compared, and blocks after the ```python one are found too
    assert {"cnnlab train lenet5", "cnnlab summary vgg61", "cnnlab explain pool"} <= set(commands)
    assert sum(_needs(c) is None for c in commands) >= 8


def test_the_matching_rule():
    assert matches(["a", "...", "d"], ["a", "b", "c", "d"]) and matches(["a", "...", "b"], ["a", "b"])
    assert not matches(["a", "...", "d"], ["a", "d", "x"]) and not matches(["a", "...", "d"], ["x", "a", "d"])
    assert not matches(["a", "...", "c", "b"], ["a", "b", "c"])  # in order
    assert matches(["...", "x", "..."], ["x"]) and not matches(["a"], [])
    assert matches(["epoch 1  13,127 img/s  4.6s"], ["epoch 1  6,702 img/s  12.0s"])
    assert not matches(["top-1 99.11%  4.6s"], ["top-1 99.10%  4.6s"])  # every other figure is compared
    assert mask("run folder runs/lenet5-mnist-20261201-151653") == "run folder runs/lenet5-mnist-YYYYMMDD-HHMMSS"


@pytest.mark.parametrize("command,expected", _params())
def test_readme_example_output_is_real(capsys, tmp_path, monkeypatch, command, expected):
    argv = shlex.split(command)[1:]
    if argv[0] == "train":
        return _check_training_until_the_first_elision(argv, expected.splitlines(), tmp_path)
    if argv[0] == "serve":  # runs until stopped: its first line is compared, on a free port (8000 may be taken)
        if "--runs" in argv:
            (tmp_path / argv[argv.index("--runs") + 1]).mkdir()
        return _check_training_until_the_first_elision(argv + ["--port", "0"], expected.splitlines(), tmp_path)
    code = main(argv)
    out, err = capsys.readouterr()
    stream = out if code == 0 else err
    lines = stream.rstrip("\n").splitlines()
    assert matches(expected.splitlines(), lines), "\n".join(["expected:", expected, "", "got:", *lines])


def _check_training_until_the_first_elision(argv, expected, tmp_path):
    """Run the training (or serving) command for real (in tmp_path, so runs/ lands there) and compare its output line by
    line up to the README's first "...", then stop it."""
    head = expected[:next(i for i, l in enumerate(expected) if _elided(l))]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # the README's figures were trained on all cores of a quiet machine; under the test suite the other workers
    # keep the cores busy, and a thread count fitted to them would change the sums' order, hence the figures
    env["CNNLAB_FIT_THREADS"] = "0"
    env["PYTHONPATH"] = os.pathsep.join([str(README.parent / "src"), env.get("PYTHONPATH", "")])
    err = (tmp_path / "stderr.txt").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "cnnlab", *argv], cwd=tmp_path, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=err, start_new_session=True)
    got, deadline = [], time.time() + 600
    try:
        while len(got) < len(head) and time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            got.append(line.rstrip("\n"))
            if mask(got[-1]) != mask(head[len(got) - 1]):
                break  # a difference: no need to wait for the rest
    finally:
        os.killpg(proc.pid, 9)  # the command and, for --nproc, its torchrun workers
        proc.wait()
        err.close()
    assert [mask(l) for l in got] == [mask(l) for l in head], "\n".join(
        ["expected:", *head, "", "got:", *got, "", "stderr:", (tmp_path / "stderr.txt").read_text()[-2000:]])


def test_setup_commands_are_the_ones_ci_runs():
    ci = (README.parent / ".ci" / "run").read_text()
    setup = [l for l in README.read_text().splitlines() if re.search(r"  # setup: \w+$", l)]
    assert len(setup) == 2 and "README.md" in ci
    assert setup[0].endswith("cnnlab train lenet5  # setup: main")
    assert "pytest" in setup[1]
