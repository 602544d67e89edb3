"""Issue 15: signals and closed streams end the command with one line, never a traceback. SIGTERM is treated
as Ctrl-C (a training run stops between two writes, its checkpoint whole) and exits 143 = 128 + 15; Ctrl-C
exits 130, during the start-up imports too."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SRC = str(Path(__file__).parents[1] / "src")


def _env():
    return {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _cnnlab(*argv, **kwargs):
    # a shell's background job starts with SIGINT ignored, and Python then leaves it ignored: give it back
    return subprocess.Popen([sys.executable, "-m", "cnnlab", *argv], env=_env(), text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kwargs)


@pytest.mark.slow
@pytest.mark.parametrize("redirect", [">&-", "1>&-"])
def test_a_closed_stdout_is_no_traceback(redirect):
    # `cnnlab models >&-`: Python starts with sys.stdout None; writing to it was an AttributeError
    for argv in ("calc conv --input 32x32x3 --filters 8 --kernel 3", "summary lenet5"):
        r = subprocess.run(f"{sys.executable} -m cnnlab {argv} {redirect}", shell=True, env=_env(),
                           stderr=subprocess.PIPE, text=True, timeout=120)
        assert r.returncode in (0, 2) and "Traceback" not in r.stderr and len(r.stderr.splitlines()) <= 1


@pytest.mark.slow
def test_an_output_that_cannot_be_written_is_one_sentence():
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "cnnlab", "calc", "conv", "--input", "32x32x3", "--filters", "8",
                            "--kernel", "3"], env=_env(), stdout=full,
                           stderr=subprocess.PIPE, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("cnnlab: error: the output could not be written")
    assert "Traceback" not in r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.3, 2.5])
@pytest.mark.parametrize("signum,code,words", [(signal.SIGINT, 130, "cnnlab: interrupted"),
                                               (signal.SIGTERM, 143, "cnnlab: terminated (SIGTERM)")])
def test_a_signal_during_the_start_up_is_one_line(tmp_path, delay, signum, code, words):
    # at 0.3 s Python imports cnnlab, at 2.5 s the trainer imports torch or reads the data. (A SIGINT that
    # lands inside torch's own C start-up, `from torch._C import *`, can be lost there: the command then runs.)
    p = _cnnlab("train", "lenet5", "--train-limit", "2000", "--epochs", "1", "--out", str(tmp_path / "run"),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(delay)
    p.send_signal(signum)
    out, err = p.communicate(timeout=120)
    assert p.returncode == code and err.strip().splitlines()[-1] == words and "Traceback" not in err, err


def test_the_entry_point_catches_ctrl_c_while_importing_the_cli(monkeypatch, capsys):
    import builtins

    from cnnlab import __main__ as entry

    real = builtins.__import__

    def interrupted(name, *args, **kwargs):
        if name == "cnnlab.cli":
            raise KeyboardInterrupt
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", interrupted)
    assert entry.run() == 130
    assert capsys.readouterr().err == "cnnlab: interrupted\n"


def test_sigterm_in_process_raises_where_the_program_is(capsys):
    from cnnlab import cli

    def handler(args):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises here
        return "not reached\n"

    parser = cli.build_parser
    try:
        cli.build_parser = lambda: _with_handler(parser(), handler)
        start = time.perf_counter()
        assert cli.main(["models"]) == 143
        assert time.perf_counter() - start < 4
    finally:
        cli.build_parser = parser
    out, err = capsys.readouterr()
    assert out == "" and err == "cnnlab: terminated (SIGTERM)\n"
    assert signal.getsignal(signal.SIGTERM) is not cli._terminate  # the caller's handler is back


def _with_handler(parser, handler):
    for action in parser._subparsers._group_actions:
        action.choices["models"].set_defaults(handler=handler)
    return parser


@pytest.mark.slow
def test_sigterm_stops_training_with_its_checkpoint_whole(tmp_path):
    from cnnlab.runs import load_checkpoint

    out = tmp_path / "run"
    p = _cnnlab("train", "lenet5", "--train-limit", "2000", "--epochs", "3", "--out", str(out), "--data-dir",
                os.environ.get("CNNLAB_DATA_DIR", str(tmp_path / "data")), stdout=subprocess.PIPE,
                stderr=subprocess.PIPE)
    lines = []
    for line in p.stdout:  # the first epoch's line: last.pt has been written
        lines.append(line)
        if line.lstrip().startswith("epoch") and "1/3" in line:
            break
    assert lines and "1/3" in lines[-1], "".join(lines)
    p.send_signal(signal.SIGTERM)
    rest, err = p.communicate(timeout=120)
    assert p.returncode == 143, err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "cnnlab: terminated (SIGTERM)"
    assert "training stopped in epoch 2 of 3; --resume" in err
    assert load_checkpoint(out / "last.pt")["epoch"] >= 1


@pytest.mark.parametrize("signum,code,words", [(signal.SIGTERM, 143, "cnnlab: terminated (SIGTERM)"),
                                               (signal.SIGINT, 130, "cnnlab: interrupted")])
@pytest.mark.parametrize("becomes", [AttributeError("module 'sympy' has no attribute 'logic'"),
                                     OSError(5, "Input/output error")])
def test_an_error_a_signal_causes_on_its_way_out_is_reported_as_the_signal(monkeypatch, capsys, signum, code,
                                                                           words, becomes):
    """A signal that lands inside an import (seen: SIGTERM while torch imported sympy) can come out as another
    error, a half-imported module's AttributeError; the command still ends as the signal, in one line."""
    from cnnlab import cli

    def handler(args):
        try:
            signal.raise_signal(signum)  # delivered to cli's handler, as from outside
        except KeyboardInterrupt:
            raise becomes from None  # what a library's clean-up turned it into

    real = cli._models
    monkeypatch.setattr(cli, "_models", handler)
    assert cli.main(["models"]) == code
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == words and "Traceback" not in err
    # the next command starts afresh: the same error without a signal is that error
    monkeypatch.setattr(cli, "_models", lambda args: (_ for _ in ()).throw(becomes))
    if isinstance(becomes, OSError):
        assert cli.main(["models"]) == 2 and "Input/output error" in capsys.readouterr().err
    else:
        with pytest.raises(AttributeError):
            cli.main(["models"])
    monkeypatch.setattr(cli, "_models", real)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers given back
