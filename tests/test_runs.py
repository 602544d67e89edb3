"""The typed run (cnnlab.runs): a run folder written by an earlier release (checkpoint format 1, before RunInfo)
still opens, evaluates, resumes and visualises; RunInfo survives a round trip through a checkpoint."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from cnnlab import CnnlabError
from cnnlab.cli import main
from cnnlab.runs import FORMAT, FORMAT_1, RunInfo, load_checkpoint, open_model, open_run, save_checkpoint

# `cnnlab train lenet5 --epochs 2 --train-limit 3000 --batch-size 50 --val-split 0.2 --seed 5 --deterministic`
# with the release before RunInfo (commit 67a263a): last.pt, config.json and metrics.jsonl as it wrote them
FORMAT_1_RUN = Path(__file__).parent / "fixtures" / "run-format-1"
# what that release's `evaluate([run], split="test")` measured on the 10,000 MNIST test images
OLD_TEST_TOP1, OLD_TEST_TOP5 = 86.32, 99.03
OLD_TEST_DIAGONAL = [935, 1091, 887, 819, 879, 661, 892, 914, 777, 777]


def test_a_format_1_checkpoint_opens_as_a_typed_run():
    raw = torch.load(FORMAT_1_RUN / "last.pt", weights_only=True)
    assert raw["format"] == FORMAT_1 and "info" not in raw
    run = open_run(FORMAT_1_RUN)
    info = run.info
    assert (info.model, info.data, info.in_chans, info.input_size) == ("lenet5", "mnist", 1, (1, 32, 32))
    assert info.classes == tuple(str(i) for i in range(10)) and info.eval_split == "val"
    assert (info.seed, info.train_limit, info.recipe["val_split"]) == (5, 3000, 0.2)
    assert info.view.pad_to == 32 and not info.view.is_folder
    assert all(torch.equal(v, raw["model"][k]) for k, v in run.model.state_dict().items())
    assert not run.model.training and run.folder == FORMAT_1_RUN and [h["epoch"] for h in run.history] == [1, 2]
    ckpt = load_checkpoint(FORMAT_1_RUN)
    assert ckpt["format"] == FORMAT and ckpt["schedule"] == {"plateau": raw["plateau"]} and ckpt["epoch"] == 2


def test_a_format_1_run_evaluates_as_the_release_that_wrote_it_did():
    from cnnlab.analysis.evaluate import evaluate

    report = evaluate([str(FORMAT_1_RUN)], split="test")
    assert report.n == 10_000 and (report.top1, report.top5) == (OLD_TEST_TOP1, OLD_TEST_TOP5)
    assert report.confusion.diag().tolist() == OLD_TEST_DIAGONAL
    # its own validation split: the 600 images (20% of the 3,000 it trained on) it was scored on while training
    final = [json.loads(line) for line in (FORMAT_1_RUN / "metrics.jsonl").read_text().splitlines()][-1]
    report = evaluate([str(FORMAT_1_RUN)])
    assert report.split == "val" and report.n == 600 and report.top1 == pytest.approx(final["eval_top1"])


def test_a_format_1_run_resumes_in_its_own_folder_and_visualises(tmp_path, capsys):
    from torchvision.io import write_png

    from cnnlab.data import load

    run = tmp_path / "copied-run"
    shutil.copytree(FORMAT_1_RUN, run)
    assert main(["train", "lenet5", "--resume", str(run), "--epochs", "3", "--quiet"]) == 0
    # the copy goes on where it lies (format 1 recorded the folder it was first written to: not that one)
    assert load_checkpoint(run)["epoch"] == 3 and load_checkpoint(run)["format"] == FORMAT
    assert [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()][-1] == 3
    assert open_run(run).info.config["train_limit"] == 3000
    digit = tmp_path / "digit.png"
    write_png(load("mnist", "test").images[0], str(digit))
    for kind in ("saliency", "gradcam", "features"):
        out = tmp_path / f"{kind}.png"
        assert main(["visualize", kind, str(FORMAT_1_RUN), str(digit), "--out", str(out)]) == 0
        assert out.read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    assert main(["predict", str(FORMAT_1_RUN), str(digit)]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[1] == "7"  # the first test digit is a 7


def test_run_info_round_trips_through_a_checkpoint(tmp_path):
    info = RunInfo("resnet20", tuple("abc"), 3, (3, 32, 32), "folder:/x", {"drop_path_rate": 0.1},
                   {"val_split": 0.1, "augment": {"pad_to": 0}}, "val", 7, "bf16", None, {"lr": 0.1})
    model = info.build()
    save_checkpoint(tmp_path / "c.pt", info, model.state_dict(), {"epoch": 1})
    ckpt = load_checkpoint(tmp_path / "c.pt")
    assert ckpt["info"] == info and ckpt["epoch"] == 1
    assert info.view.val_split == 0.1 and info.view.is_folder and info.view.size == 32
    assert open_run(tmp_path / "c.pt").folder is None  # a checkpoint outside a run folder


def test_an_untrained_model_is_a_run_without_training():
    run = open_model("lenet5")
    assert run.info.untrained and run.name == "lenet5 (untrained)" and run.info.num_classes == 10
    assert run.info.view.is_folder and run.history == [] and run.checkpoint is None
    again = open_model("lenet5")  # seed 0: the same initial weights every time
    assert all(torch.equal(a, b) for a, b in zip(run.model.state_dict().values(), again.model.state_dict().values()))


def test_a_checkpoint_with_parts_missing_is_one_sentence(tmp_path):
    raw = torch.load(FORMAT_1_RUN / "last.pt", weights_only=True)
    del raw["classes"]
    torch.save(raw, tmp_path / "x.pt")
    with pytest.raises(CnnlabError, match=r"x.pt is a cnnlab checkpoint with parts missing \(KeyError: 'classes'\)"):
        open_run(tmp_path / "x.pt")
    assert main(["eval", str(tmp_path / "x.pt")]) == 2
