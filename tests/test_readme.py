"""The README's tour shows real output: every complete `$ cnnlab ...` example is run and compared."""

import re
import shlex
from pathlib import Path

import pytest

from cnnlab.cli import main

README = Path(__file__).resolve().parent.parent / "README.md"


def examples():
    text = README.read_text()
    out = []
    for block in re.findall(r"```\n(.*?)```", text, flags=re.S):
        for chunk in re.split(r"^(?=\$ cnnlab )", block, flags=re.M):
            if not chunk.startswith("$ cnnlab "):
                continue
            command, _, expected = chunk.partition("\n")
            if expected.strip() and "..." not in expected:  # shortened examples are not compared
                out.append((command[2:], expected.rstrip("\n")))
    return out


def test_the_readme_has_examples():
    assert len(examples()) >= 5


@pytest.mark.parametrize("command,expected", examples(), ids=[c for c, _ in examples()])
def test_readme_example_output_is_real(capsys, command, expected):
    argv = shlex.split(command)[1:]
    code = main(argv)
    out, err = capsys.readouterr()
    stream = out if code == 0 else err
    assert [l.rstrip() for l in stream.rstrip("\n").splitlines()] == [l.rstrip() for l in expected.splitlines()]


def test_setup_commands_are_the_ones_ci_runs():
    ci = (README.parent / ".ci" / "run").read_text()
    setup = [l for l in README.read_text().splitlines() if re.search(r"  # setup: \w+$", l)]
    assert len(setup) == 2 and "README.md" in ci
    assert setup[0].endswith("cnnlab train lenet5  # setup: main")
    assert "pytest" in setup[1]
