"""Issue 15: what a user types never hangs, runs out of memory or ends in a traceback. Each size or count an
arithmetic command would materialise is bounded (one sentence with the limit), and every option of every model
is checked for its range before anything is built."""

import time

import pytest

from cnnlab.cli import main


@pytest.fixture(scope="module", autouse=True)
def _imported():
    """The libraries' first import (seconds on a slow machine) is not a command's time."""
    import cnnlab.analysis.summary  # noqa: F401
    from cnnlab.models import create_model  # noqa: F401  (loads every family)
    import cnnlab.scratch.explain  # noqa: F401


def run(capsys, *argv):
    start = time.perf_counter()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err, time.perf_counter() - start


def one_sentence(err: str) -> bool:
    return len(err.splitlines()) == 1 and err.startswith("cnnlab: error: ") and "Traceback" not in err


@pytest.mark.parametrize("argv,words", [
    # a billion layers used to be materialised (a hang, then out of memory)
    (["calc", "rf", "conv3*1000000000"], "at most 10,000"),
    (["calc", "rf", "conv3s2*1000"], "grows past"),  # 2^1000-pixel jumps: unprintable numbers
    (["calc", "rf", "conv" + "9" * 30], "30 digits"),
    (["calc", "rf", "conv" + "9" * 5000], "5000 digits"),  # int() refuses over 4300 digits: was a traceback
    (["calc", "conv", "--input", "5x5x3", "--filters", "2", "--kernel", "3", "--stride", "9" * 25], "more than"),
    (["calc", "conv", "--input", "5x5x" + "9" * 30, "--filters", "2", "--kernel", "3"], "digits"),
    (["calc", "pool", "--input", "5x5", "--kernel", "3", "--pad", "1", "--stride", "10000000000"], "more than"),
    (["explain", "conv", "--pad", "1000"], "more than the 1,000,000"),  # 90 s before
    (["explain", "conv", "--stride", "1", "--pad", str(10**30)], "more than the 1,000,000"),
    (["explain", "backprop", "--pad", "100000"], "more than the 1,000,000"),
    (["explain", "params", "--channels", "9" * 3000], "between 1 and 1,000,000"),  # unprintable squares
    (["summary", "lenet5", "--input", "1x" + "9" * 30 + "x32"], "larger than the summary takes"),
    (["summary", "lenet5", "--num-classes", "1000000000"], "at most 100,000"),  # 672 GB allocated
])
def test_huge_sizes_are_refused_at_once(capsys, argv, words):
    code, out, err, seconds = run(capsys, *argv)
    assert code == 2 and out == "" and one_sentence(err) and words in err, err
    assert seconds < 1.5, argv


def test_large_but_cheap_arithmetic_is_still_answered_at_once(capsys):
    # a huge stride or kernel is only arithmetic: the suggestions for a misfit are solved, not searched
    code, out, err, seconds = run(capsys, "calc", "conv", "--input", "999999999x999999999x3", "--filters", "3",
                                  "--kernel", "1000000000", "--stride", "999999999", "--pad", "999999999")
    assert code == 0 and "would fit" in out and seconds < 1
    code, out, err, seconds = run(capsys, "calc", "rf", "conv3*10000", "--input", "224")
    assert code == 0 and out.count("\n") > 10_000 and seconds < 2


def test_explain_reads_only_the_header_of_a_huge_npy(capsys, tmp_path):
    import numpy as np

    np.save(tmp_path / "big.npy", np.zeros((1000, 1000)))
    code, out, err, _ = run(capsys, "explain", "pool", "--input", str(tmp_path / "big.npy"))
    assert code == 2 and one_sentence(err) and "1,000,000 numbers" in err


@pytest.mark.parametrize("model,option,words", [
    ("fractalnet20", "column=100", "column must be a column of the 3"),  # a traceback before
    ("fractalnet20", "column=-4", "column must be"),
    ("fractalnet20", "widths=(64, 0, 128)", "widths must be"),
    ("fractalnet20", "widths=(100000,)", "widths must be"),
    ("fractalnet20", "dropout=(0.1, 0.2)", "one rate per block"),
    ("fractalnet20", "local_drop_prob=1.5", "[0, 1)"),
    ("fractalnet20", "global_ratio=-0.1", "[0, 1]"),
    ("alexnet", "dropout=1.0", "[0, 1)"),
    ("alexnet", "dropout=-1", "[0, 1)"),
    ("alexnet", "dropout=nan", "not a float"),
    ("alexnet_paper", "towers=1.0", "not a int"),
    ("densenet40", "drop_rate=2", "[0, 1)"),
    ("resnet20", "drop_path_rate=1", "[0, 1)"),
    ("wrn16_4", "dropout=(0.1,)", "not a float"),
    ("inception_resnet_v2", "blocks=(1000, 1, 1)", "from 1 to 100"),
    ("inception_resnet_v2", "blocks=7", "not a tuple"),
])
def test_model_options_out_of_range_are_one_sentence(capsys, model, option, words):
    code, out, err, _ = run(capsys, "summary", model, "--model-option", option)
    assert code == 2 and one_sentence(err) and words in err, err


def test_python_callers_get_the_same_checks():
    from cnnlab import CnnlabError
    from cnnlab.models import create_model

    for options in ({"dropout": 1.0}, {"dropout": "x"}, {"dropout": None}, {"towers": 1.0}):
        with pytest.raises(CnnlabError, match="model_options"):
            create_model("alexnet_paper", **options)


def test_fractalnet_takes_one_dropout_rate_for_every_block():
    from cnnlab.models import create_model

    net = create_model("fractalnet20", dropout=0.1)
    assert [b.columns[0][0][1].p for b in net.blocks] == [0.1] * 5


# --- arguments of train, transfer and scratch-train: refused before anything starts ---------------------------

@pytest.mark.parametrize("argv,words", [
    (["train", "lenet5", "--seed", str(2**64)], "--seed must be a whole number from 0 to 2^63 - 1"),
    (["train", "lenet5", "--seed", "-1"], "--seed must be"),
    (["scratch-train", "--seed", "-1"], "--seed must be"),  # NumPy's generator: a traceback before
    (["train", "lenet5", "--sync-bn"], "--sync-bn applies to a data-parallel run only: add --nproc"),
    (["train", "lenet5", "--max-restarts", "3"], "--max-restarts applies to a data-parallel run only"),
    # checked by the launcher, before torchrun starts (the workers found it under a traceback before)
    (["train", "lenet5", "--nproc", "2", "--batch-size", "3", "--out", "OUT"], "split evenly over 2 processes"),
])
def test_train_arguments_are_refused_before_training(capsys, tmp_path, argv, words):
    argv = [str(tmp_path / "run") if a == "OUT" else a for a in argv]
    code, out, err, _ = run(capsys, *argv)
    assert code == 2 and one_sentence(err) and words in err, err
    assert not (tmp_path / "run").exists()


def test_unfreeze_is_bounded_by_the_blocks_of_the_backbone():
    from cnnlab import CnnlabError
    from cnnlab.models import create_model
    from cnnlab.transfer import freeze_backbone, heads
    from cnnlab.transfer.prepare import prepare

    m = create_model("lenet5_modern")
    with pytest.raises(CnnlabError, match=r"unfreeze 1000 is more than the \d+ blocks of this backbone"):
        freeze_backbone(m, heads(m, "lenet5_modern"), 1000)
    with pytest.raises(CnnlabError, match="feature extraction"):  # ignored silently before
        prepare(m, "lenet5_modern", {}, "x.pt", "finetune", 0.1, unfreeze=2, load=False)


def test_scratch_train_stops_when_the_loss_diverges(capsys):
    # it printed "loss nan" for every epoch and exited 0
    code, out, err, _ = run(capsys, "scratch-train", "--train-images", "500", "--test-images", "100", "--epochs",
                            "2", "--lr", "1000")
    assert code == 2 and one_sentence(err) and "the loss became nan at epoch 1" in err and "Lower --lr" in err


# --- messages that say what is wrong ---------------------------------------------------------------------------

FORMAT_1_RUN = __import__("pathlib").Path(__file__).parent / "fixtures" / "run-format-1"


def test_an_output_file_that_is_a_folder_is_named(capsys, tmp_path):
    # the message named the atomic write's temporary file (.out.png.5_cgnbuc.tmp) before
    (tmp_path / "out.png").mkdir()
    code, out, err, _ = run(capsys, "visualize", "filters", "lenet5", "--out", str(tmp_path / "out.png"))
    assert code == 2 and one_sentence(err) and f"{tmp_path / 'out.png'} is a folder" in err and ".tmp" not in err


def test_a_run_folder_named_like_a_model_wins_and_says_so(capsys, tmp_path, monkeypatch):
    import shutil

    shutil.copytree(FORMAT_1_RUN, tmp_path / "lenet5")
    monkeypatch.chdir(tmp_path)
    code, out, err, _ = run(capsys, "visualize", "filters", "lenet5", "--out", "f.png")
    assert code == 0 and err.startswith("cnnlab: note: lenet5 is both a model name and a path here; opening the path")
    assert len(err.splitlines()) == 1


def _digit(path):
    from torchvision.io import write_png

    from cnnlab.data import load

    write_png(load("mnist", "test").images[0], str(path))
    return path


@pytest.mark.parametrize("command", ["predict", "eval", "visualize"])
def test_non_finite_weights_are_one_sentence_in_every_command(capsys, tmp_path, command):
    import shutil

    import torch

    shutil.copytree(FORMAT_1_RUN, tmp_path / "run")
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    for t in ckpt["model"].values():
        if t.is_floating_point():
            t.fill_(float("nan"))
    torch.save(ckpt, tmp_path / "run" / "last.pt")
    # predict printed "nan%" beside five classes before, and eval an accuracy of argmax over NaN
    argv = {"predict": ["predict", str(tmp_path / "run"), str(_digit(tmp_path / "digit.png"))],
            "eval": ["eval", str(tmp_path / "run")],
            "visualize": ["visualize", "filters", str(tmp_path / "run"), "--out", str(tmp_path / "f.png")]}[command]
    code, out, err, _ = run(capsys, *argv)
    assert code == 2 and out == "" and one_sentence(err) and "holds weights that are not finite" in err
    assert "best.pt" in err
