"""The command line: output, exit codes, and one-sentence errors without tracebacks."""

import json
import os
import subprocess
import sys

import pytest

from cnnlab.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_summary_vgg16_is_the_main_job(capsys):
    code, out, err = run(capsys, "summary", "vgg16")
    assert code == 0 and err == ""
    assert "features.0" in out and "138,357,544" in out and "15,470,264,320" in out


def test_summary_formats(capsys):
    code, out, _ = run(capsys, "summary", "lenet5", "--format", "json")
    d = json.loads(out)
    assert code == 0 and d["total_params"] == 60_000 and d["input_size"] == [1, 32, 32]
    code, out, _ = run(capsys, "summary", "vgg16", "--input", "3x32x32", "--depth", "1", "--format", "csv")
    assert code == 0 and out.splitlines()[1].startswith("features,Sequential,512x1x1")
    code, out, _ = run(capsys, "summary", "alexnet", "--num-classes", "10", "--format", "md")
    assert code == 0 and "| classifier.6 | Linear | 10 |" in out


@pytest.mark.slow
def test_summary_with_model_options(capsys):
    # He et al.'s option A (zero-padded identity shortcuts) drops ResNet-34's three projection shortcuts:
    # 1x1 convs 64->128, 128->256, 256->512 with their BatchNorms = 173,824 parameters fewer than option B.
    code, out, _ = run(capsys, "summary", "resnet34", "--format", "json")
    b = json.loads(out)["total_params"]
    code, out, _ = run(capsys, "summary", "resnet34", "--model-option", "shortcut=A", "--format", "json")
    assert code == 0 and b - json.loads(out)["total_params"] == 64 * 128 + 128 * 256 + 256 * 512 + 2 * (128 + 256 + 512)
    # tuples parse as Python literals: the paper's smaller Inception-ResNet-v2 (Fig. 15's 5/10/5 blocks)
    code, out, _ = run(capsys, "summary", "inception_resnet_v2", "--model-option", "blocks=(5, 10, 5)",
                       "--model-option", "dropout=0.2", "--format", "json")
    assert code == 0 and json.loads(out)["total_params"] < 40_000_000


def test_models_lists_params_input_and_year(capsys):
    code, out, _ = run(capsys, "models", "lenet*")
    assert code == 0
    assert out.splitlines()[1].split()[:4] == ["lenet5", "60,000", "1x32x32", "1998"]
    assert out.splitlines()[2].split()[:2] == ["lenet5_modern", "61,706"]
    # the table builds models without initialising them; models built afterwards are initialised as ever
    from cnnlab.models import create_model

    weight = create_model("resnet20").conv1.weight  # He normal over the fan-out: std sqrt(2 / (16 * 3 * 3))
    assert weight.device.type == "cpu" and abs(weight.std().item() - (2 / 144) ** 0.5) < 0.02


def test_card(capsys):
    code, out, _ = run(capsys, "card", "vgg16")
    assert code == 0 and "Simonyan" in out and "arxiv.org/abs/1409.1556" in out and "138,000,000" in out


def test_calc_commands(capsys):
    code, out, _ = run(capsys, "calc", "conv", "--input", "227x227x3", "--filters", "96", "--kernel", "11",
                       "--stride", "4")
    assert code == 0 and "55x55x96" in out and "34,944" in out
    code, out, _ = run(capsys, "calc", "pool", "--input", "55x55x96", "--kernel", "3", "--stride", "2",
                       "--format", "json")
    assert code == 0 and json.loads(out)["output"] == [27, 27, 96]
    code, out, _ = run(capsys, "calc", "rf", "conv3*3")
    assert code == 0 and "receptive field: 7x7" in out


def test_fidelity_command(capsys):
    code, out, _ = run(capsys, "fidelity", "vgg16")
    assert code == 0 and "Table 2: configuration D" in out and "agrees" in out
    code, out, _ = run(capsys, "fidelity", "lenet5", "--format", "json")
    assert code == 0 and json.loads(out)[0]["ours"] == 60_000


@pytest.mark.parametrize("argv,message", [
    (["summary", "vgg61"], "unknown model 'vgg61'; did you mean vgg19, vgg16"),
    (["summary", "vgg16", "--input", "224x224"], "needs three numbers"),
    (["summary", "vgg16", "--input", "3x-1x224"], "has a size below 1"),
    (["summary", "vgg16", "--input", "3xbigx224"], "not of the form CxHxW"),
    (["summary", "lenet5", "--input", "1x3x3"], "cannot run on a 1x3x3 input"),
    (["summary", "vgg16", "--depth", "0"], "must be 1 or more"),
    (["summary", "vgg16", "--frobnicate"], "unrecognized arguments"),
    (["calc", "conv", "--input", "5x5x3", "--filters", "2", "--kernel", "9"], "output would be empty"),
    (["calc", "conv", "--input", "5x5x0", "--filters", "2", "--kernel", "3"], "must be positive"),
    (["calc", "conv", "--input", "5x5x3", "--filters", "-2", "--kernel", "3"], "must be 1 or more"),
    (["calc", "rf", "banana"], "not understood"),
    (["calc"], "say what to calculate"),
    (["data"], "say what to do: `cnnlab data list`"),
    (["visualize"], "say what to draw"),
    (["explain"], "say what to explain"),
    (["fidelity", "nin"], "no published figures"),
    (["models", "zzz"], "no model matches"),
])
def test_user_mistakes_exit_2_with_one_sentence(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_python_dash_m_behaves_like_the_console_script():
    env = dict(os.environ)
    a = subprocess.run([sys.executable, "-m", "cnnlab", "calc", "rf", "conv3*3"], capture_output=True, text=True,
                       env=env)
    script = os.path.join(os.path.dirname(sys.executable), "cnnlab")
    b = subprocess.run([script, "calc", "rf", "conv3*3"], capture_output=True, text=True, env=env)
    assert a.returncode == b.returncode == 0 and a.stdout == b.stdout
    bad = subprocess.run([sys.executable, "-m", "cnnlab", "summary", "nope"], capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "unknown model 'nope'" in bad.stderr


def test_recipes_and_data_commands(capsys, tmp_path):
    code, out, _ = run(capsys, "recipes")
    assert code == 0 and all(r in out for r in ("lenet5_mnist", "alexnet_imagenet", "vgg_imagenet", "vgg_cifar"))
    assert "weight decay 0.0005" in out and "Krizhevsky et al. 2012" in out
    code, out, _ = run(capsys, "data", "verify", "mnist", "--data-dir", str(tmp_path))
    assert code == 0 and out.count(" ok ") == 4
    code, out, _ = run(capsys, "data", "list", "--data-dir", str(tmp_path))
    assert code == 0 and out.startswith("mnist") and "4/4 files" in out.splitlines()[0]
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not the real file")
    code, out, err = run(capsys, "data", "verify", "mnist", "--data-dir", str(tmp_path))
    assert code == 2 and "corrupt" in out and "missing or corrupt" in err


@pytest.mark.slow
def test_paths_that_cannot_be_written_are_one_sentence(tmp_path, capsys, monkeypatch):
    import errno

    from cnnlab import fileio

    (tmp_path / "notes.txt").write_text("a file, not a folder")
    blocked = tmp_path / "notes.txt"
    cases = [(["train", "lenet5_modern", "--epochs", "1", "--out", str(blocked)],
              f"{blocked} is a file, but a folder is needed there; choose another path"),
             (["train", "lenet5_modern", "--epochs", "1", "--out", str(blocked / "run")],
              f"{blocked / 'run'}: part of this path is a file, not a folder; choose another path")]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err == f"cnnlab: error: {message}\n", err

    def full(*a, **k):  # a disk that fills up while the temporary file is created
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fileio.tempfile, "mkstemp", full)
    run = tmp_path / "run"
    assert main(["train", "lenet5_modern", "--epochs", "1", "--train-limit", "200", "--out", str(run)]) == 2
    assert capsys.readouterr().err == f"cnnlab: error: disk full writing {run / 'config.json'}: free some space and " \
                                      f"run again (files written before are intact, and a run resumes from its last " \
                                      f"checkpoint)\n"
    with pytest.raises(OSError) as e:
        fileio.atomic_write_text(tmp_path / "out.txt", "x")
    assert e.value.filename == str(tmp_path / "out.txt")  # the file asked for, not the temporary one
    assert not any(p.name.startswith(".out.txt") for p in tmp_path.iterdir())


def test_a_python_caller_reads_the_parameter_and_the_command_line_the_flag(capsys):
    """One mistake, said to each in its own words: the library names the parameter passed, the CLI its flag."""
    from cnnlab.cli import flag
    from cnnlab.errors import CnnlabError
    from cnnlab.models.registry import coerce_model_options
    from cnnlab.train.config import TrainConfig
    from cnnlab.train.distributed import check_launch

    with pytest.raises(CnnlabError, match=r"^data-parallel training needs out \(or resume\): every worker"):
        check_launch(2, TrainConfig(model="lenet5"))
    code, _, err = run(capsys, "train", "lenet5", "--nproc", "2")
    assert code == 2 and err.startswith("cnnlab: error: data-parallel training needs --out (or --resume): every")
    with pytest.raises(CnnlabError, match=r"^model_options 'shortcut' is not KEY=VALUE, e.g. model_options "):
        coerce_model_options("resnet20", ["shortcut"])
    code, _, err = run(capsys, "summary", "resnet20", "--model-option", "shortcut")
    assert code == 2 and err == ("cnnlab: error: --model-option 'shortcut' is not KEY=VALUE, e.g. --model-option "
                                 "drop_path_rate=0.2\n")
    assert [flag(p) for p in ("batch_size", "lr", "pretrained", "transfer", "model_options")] == \
        ["--batch-size", "--lr", "--from", "--mode", "--model-option"]


def test_only_the_marked_parameter_becomes_a_flag():
    """A sentence marks its parameters in backticks: a word that happens to be a parameter's name elsewhere in
    it (a path, a count) stays as it is, for a Python caller and on the command line alike."""
    from cnnlab.cli import flag
    from cnnlab.errors import CnnlabError

    e = CnnlabError("`epochs` 3 (the run had 2) lays the schedule over 3 epochs of runs/epochs/last.pt",
                    params=("epochs",))
    assert str(e) == "epochs 3 (the run had 2) lays the schedule over 3 epochs of runs/epochs/last.pt"
    assert e.speak(flag) == "--epochs 3 (the run had 2) lays the schedule over 3 epochs of runs/epochs/last.pt"
    assert CnnlabError("see `cnnlab models`").speak(flag) == "see `cnnlab models`"  # not a parameter: kept
