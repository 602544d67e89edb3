"""Issue 15: property-based tests of the command line. Whatever the arguments, a command exits 0, or exits 2
with exactly one line on stderr starting with `cnnlab: error:`; never a traceback, and within a time bound.

Run in-process through ``cnnlab.cli.main`` (argparse's own mistakes are one sentence too: ``_Parser.error``).
Examples are derandomized, so a run in CI sees the same ones; the quick loop runs the arithmetic commands, the
slower summary and train properties are marked slow."""

import argparse
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnlab.cli import build_parser, main

SECONDS = 3.0  # per example, on a slow shared 2-core machine
FUZZ = settings(derandomize=True, deadline=None, max_examples=100, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module", autouse=True)
def _imported():
    """First imports (seconds) are not a command's time."""
    import cnnlab.analysis.conv_arith  # noqa: F401
    import cnnlab.analysis.summary  # noqa: F401
    import cnnlab.scratch.explain  # noqa: F401
    import cnnlab.train.trainer  # noqa: F401
    from cnnlab.analysis.summary import summary

    summary("lenet5").table()  # rich's import, the registry's first build


def check(capsys, argv: list[str], bound: float = SECONDS) -> int:
    start = time.perf_counter()
    try:
        code = main(argv)
    except SystemExit as e:  # only --help exits through argparse
        code = e.code
    seconds = time.perf_counter() - start
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "Traceback" not in out, (argv, err)
    if code == 0:
        assert not err.strip() or all(line.startswith("cnnlab: note:") for line in err.splitlines()), (argv, err)
    else:
        assert code == 2, (argv, code, err)
        lines = [line for line in err.splitlines() if not line.startswith("cnnlab: note:")]
        assert len(lines) == 1 and lines[0].startswith("cnnlab: error: "), (argv, err)
    assert seconds < bound, (argv, seconds)
    return code


# numbers a user may type: small, zero, negative, huge (past 64 bits), and text that is not a number
numbers = st.one_of(st.integers(-3, 40), st.integers(-10**30, 10**30), st.integers(2**62, 2**70).map(str),
                    st.sampled_from(["0", "-1", "1e9", "nan", "inf", "", " 3", "٣", "0x10", "1_000", "9" * 5000]))
number_text = numbers.map(str)
sizes = st.one_of(
    st.tuples(number_text, number_text, number_text).map("x".join),
    st.tuples(number_text, number_text).map("x".join),
    st.text(max_size=20),
)


@FUZZ
@given(input=sizes, filters=number_text, kernel=number_text, stride=number_text, pad=number_text,
       dilation=number_text, groups=number_text, fmt=st.sampled_from(["text", "json"]))
def test_calc_conv(capsys, input, filters, kernel, stride, pad, dilation, groups, fmt):
    check(capsys, ["calc", "conv", "--input", input, "--filters", filters, "--kernel", kernel, "--stride", stride,
                   "--pad", pad, "--dilation", dilation, "--groups", groups, "--format", fmt])


@FUZZ
@given(input=sizes, kernel=number_text, stride=st.one_of(st.none(), number_text), pad=number_text,
       ceil=st.booleans(), op=st.sampled_from(["max", "avg", "min"]))
def test_calc_pool(capsys, input, kernel, stride, pad, ceil, op):
    argv = ["calc", "pool", "--input", input, "--kernel", kernel, "--pad", pad, "--op", op]
    argv += ["--stride", stride] if stride is not None else []
    check(capsys, argv + (["--ceil-mode"] if ceil else []))


layer = st.one_of(
    st.builds(lambda kind, k, s, p, d, n: f"{kind}{k}" + (f"s{s}" if s else "") + (f"p{p}" if p else "")
              + (f"d{d}" if d else "") + (f"*{n}" if n else ""),
              st.sampled_from(["conv", "pool", "CONV", "pool"]), st.integers(0, 10**12),
              st.one_of(st.none(), st.integers(0, 10**12)), st.one_of(st.none(), st.integers(0, 10**12)),
              st.one_of(st.none(), st.integers(0, 10**3)), st.one_of(st.none(), st.integers(0, 10**12))),
    st.sampled_from(["conv3*1000000000", "pool2/2", "conv", "conv3s", "conv-3", "conv3 conv3", "conv3,pool2",
                     "conv3s2*100", "pool٣", "conv" + "9" * 5000]),
    st.text(max_size=12),
)


@FUZZ
@given(layers=st.lists(layer, min_size=1, max_size=4), input=st.one_of(st.none(), number_text))
def test_calc_rf(capsys, layers, input):
    layers = [f" {x}" if x.startswith("-") else x for x in layers]  # a leading dash would read as a flag
    check(capsys, ["calc", "rf", *layers] + (["--input", input] if input is not None else []))


arrays = st.one_of(st.none(), st.sampled_from(["1 0 1; 0 1 0; 1 0 1", "1 2; 3", "", "a b", "1e400", "nan",
                                               "1 2 | 3 4", "/nonexistent.npy", "1;2;3"]),
                   st.text(max_size=15))


@FUZZ
@given(what=st.sampled_from(["conv", "pool", "backprop"]), input=arrays, kernel=arrays,
       stride=st.one_of(st.none(), number_text), pad=st.one_of(st.none(), number_text),
       size=st.one_of(st.none(), number_text))
def test_explain(capsys, what, input, kernel, stride, pad, size):
    argv = ["explain", what]
    for flag, value in (("--input", input), ("--stride", stride)):
        if value is not None:
            argv += [flag + "=" + value]
    if what in ("conv", "backprop"):
        argv += [f"--kernel={kernel}"] if kernel is not None else []
        argv += [f"--pad={pad}"] if pad is not None else []
    elif size is not None:
        argv += [f"--size={size}"]
    check(capsys, argv)


@FUZZ
@given(channels=number_text)
def test_explain_params(capsys, channels):
    check(capsys, ["explain", "params", f"--channels={channels}"])


QUICK_MODELS = ["lenet5", "lenet5_modern", "nin_cifar", "vgg_cifar", "resnet20", "wrn16_4", "fractalnet20"]
options = st.one_of(st.sampled_from(["dropout=0.5", "dropout=1", "dropout=-0.1", "column=5", "column=-1",
                                     "widths=(8, 8)", "widths=0", "drop_path_rate=2", "head=linear", "head=x",
                                     "x=1", "=", "drop_rate", "blocks=(1, 1, 1)", "dropout=" + "(" * 200]),
                    st.text(max_size=12))


@pytest.mark.slow
@settings(FUZZ, max_examples=30)
@given(name=st.one_of(st.sampled_from(QUICK_MODELS), st.text(max_size=10)),
       input=st.one_of(st.none(), sizes), option=st.one_of(st.none(), options),
       classes=st.one_of(st.none(), number_text), depth=st.one_of(st.none(), number_text))
def test_summary(capsys, name, input, option, classes, depth):
    argv = ["summary", name if not name.startswith("-") else " " + name]
    for flag, value in (("--input", input), ("--model-option", option), ("--num-classes", classes),
                        ("--depth", depth)):
        if value is not None:
            argv += [f"{flag}={value}"]
    check(capsys, argv, 2 * SECONDS)  # a real summary of a CIFAR network takes seconds here


# train: every example has one mistake, so none starts a training run; the other flags are random
train_mistakes = st.sampled_from([
    ["--epochs", "0"], ["--lr", "-1"], ["--lr", "nan"], ["--batch-size", "0"], ["--seed", "-1"],
    ["--seed", str(2**64)], ["--val-split", "1"], ["--sync-bn"], ["--max-restarts", "2"], ["--device", "tpu"],
    ["--model-option", "dropout=1.5"], ["--model-option", "nope=1"], ["--log-every", "0"],
    ["--nproc", "2", "--batch-size", "3", "--out", "/nonexistent/run"], ["--recipe", "nope"],
    ["--train-limit", "-5"], ["--precision", "fp8"],
])
train_others = st.lists(st.sampled_from([
    ["--epochs", "1"], ["--batch-size", "64"], ["--lr", "0.01"], ["--seed", "3"], ["--quiet"],
    ["--train-limit", "100"], ["--device", "cpu"], ["--precision", "fp32"], ["--deterministic"],
]), max_size=3)


@pytest.mark.slow
@settings(FUZZ, max_examples=25)
@given(name=st.one_of(st.sampled_from(["lenet5", "resnet20"]), st.text(min_size=1, max_size=8)),
       mistake=train_mistakes, others=train_others)
def test_train_mistakes_fail_fast(capsys, tmp_path_factory, name, mistake, others):
    flags = [f for pair in others for f in pair]
    # the mistake comes last, so no later flag of the same name can undo it
    argv = ["train", name if not name.startswith("-") else " " + name, *flags, *mistake]
    argv += ["--out", str(tmp_path_factory.mktemp("run") / "r")] if "--out" not in argv else []
    assert check(capsys, argv) == 2


def _commands(parser: argparse.ArgumentParser, path=()):
    """Every command and sub-command of the parser, as the words that name it."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name)
                yield from _commands(sub, (*path, name))


COMMANDS = list(_commands(build_parser()))


def test_every_command_is_listed():
    assert ("calc", "rf") in COMMANDS and ("train",) in COMMANDS and len(COMMANDS) > 20


@pytest.mark.parametrize("words", COMMANDS, ids=" ".join)
def test_every_command_has_help(capsys, words):
    with pytest.raises(SystemExit) as e:
        main([*words, "--help"])
    out, err = capsys.readouterr()
    assert e.value.code == 0 and out.startswith("usage: cnnlab " + " ".join(words)) and err == ""
