"""What the fast recipes and a busy machine add to the trainer: the moving average of the weights against a
hand computation and through kill-and-resume, the mirrored evaluation against ``cnnlab eval --tta flip``,
the thread count fitted to the cores other processes leave free, and curves.png drawn once a minute."""

import json
import subprocess
import sys
import time

import pytest
import torch
from torch import nn

from cnnlab.analysis.evaluate import evaluate as eval_command
from cnnlab.platform import ThreadShare
from cnnlab.runs import load_checkpoint
from cnnlab.train import TrainConfig, train
from cnnlab.train import recipes as R
from cnnlab.train.average import WeightAverage
from cnnlab.train.recipes import Recipe, get_recipe

RUN = dict(model="lenet5_modern", epochs=2, batch_size=256, lr=0.05, train_limit=1024, val_split=0.125,
           deterministic=True, seed=3, quiet=True)


# --- the moving average of the weights -----------------------------------------------------------------------------

def test_the_average_follows_the_formula_step_by_step():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    avg = WeightAverage(net, decay=0.9)
    expected = {k: v.clone() for k, v in net.state_dict().items()}
    for n in range(15):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        net.train()(torch.randn(4, 3))  # moves BatchNorm's running statistics and its counter
        d = min(0.9, (1 + n) / (10 + n))  # a short memory at first, then the decay asked for
        for k, v in net.state_dict().items():
            expected[k] = v.clone() if not v.is_floating_point() else d * expected[k] + (1 - d) * v
        avg.update(net)
    got = avg.model.state_dict()
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-6, atol=1e-6)
    assert got["1.num_batches_tracked"] == 15  # integers are copied, not averaged
    assert not any(p.requires_grad for p in avg.model.parameters())


def test_an_average_of_another_network_or_decay_is_refused():
    with pytest.raises(ValueError):
        WeightAverage(nn.Linear(2, 2), decay=1.0)
    avg = WeightAverage(nn.Linear(2, 2), decay=0.5)
    with pytest.raises(ValueError):
        avg.update(nn.Linear(2, 3, bias=False))


@pytest.fixture
def averaging(monkeypatch):
    """A recipe like the lecture LeNet-5's that averages its weights and evaluates mirrored images."""
    r = Recipe(**{**get_recipe("lenet5_modern_mnist").__dict__, "name": "test_average", "models": (),
                  "ema": 0.9, "tta": "flip"})
    monkeypatch.setitem(R.RECIPES, r.name, r)
    return r.name


def test_a_run_that_averages_checkpoints_the_average_and_scores_it(averaging, tmp_path):
    out = tmp_path / "run"
    result = train(TrainConfig(**RUN, recipe=averaging, out=str(out)))
    ckpt = load_checkpoint(out)
    assert set(ckpt) >= {"trained_model", "average"} and ckpt["average"]["updates"] == ckpt["step"] == 6
    assert any(not torch.equal(ckpt["model"][k], ckpt["trained_model"][k]) for k in ckpt["model"])
    # the recorded accuracy is the average's, scored on mirrored views as `cnnlab eval --tta flip` scores them
    report = eval_command([str(out)], tta="flip")
    assert report.split == "val" and report.n == 130  # the stratified eighth of 1,024
    assert report.top1 == pytest.approx(result.history[-1]["eval_top1"], abs=1e-9)


def test_a_run_that_averages_resumes_bit_for_bit(averaging, tmp_path, monkeypatch):
    from cnnlab.train import trainer

    whole, part = tmp_path / "whole", tmp_path / "part"
    train(TrainConfig(**RUN, recipe=averaging, out=str(whole)))
    one_epoch = trainer.train_one_epoch

    def stopped_in_epoch_2(t, data, epoch, *rest):
        if epoch == 1:
            raise KeyboardInterrupt  # as Ctrl-C: the run keeps epoch 1's checkpoint
        return one_epoch(t, data, epoch, *rest)

    monkeypatch.setattr(trainer, "train_one_epoch", stopped_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**RUN, recipe=averaging, out=str(part)))
    monkeypatch.setattr(trainer, "train_one_epoch", one_epoch)
    assert load_checkpoint(part)["epoch"] == 1
    train(TrainConfig(**RUN, recipe=averaging, resume=str(part)))
    a, b = load_checkpoint(whole), load_checkpoint(part)
    for key in ("model", "trained_model"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])
    assert a["average"] == b["average"]


def test_a_run_from_before_its_recipe_averaged_resumes_and_starts_the_average(tmp_path, monkeypatch):
    from cnnlab.train import trainer

    plain = Recipe(**{**get_recipe("lenet5_modern_mnist").__dict__, "name": "test_plain", "models": (), "ema": 0.0})
    monkeypatch.setitem(R.RECIPES, plain.name, plain)
    one_epoch = trainer.train_one_epoch

    def stopped_in_epoch_2(t, data, epoch, *rest):
        if epoch == 1:
            raise KeyboardInterrupt
        return one_epoch(t, data, epoch, *rest)

    out = tmp_path / "run"
    monkeypatch.setattr(trainer, "train_one_epoch", stopped_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**RUN, recipe=plain.name, out=str(out)))
    monkeypatch.setattr(trainer, "train_one_epoch", one_epoch)
    assert "trained_model" not in load_checkpoint(out)
    # a later version of the recipe averages its weights: the run resumes, the average starting from its weights
    monkeypatch.setitem(R.RECIPES, plain.name, Recipe(**{**plain.__dict__, "ema": 0.9}))
    train(TrainConfig(**RUN, recipe=plain.name, resume=str(out)))
    after = load_checkpoint(out)
    assert after["average"]["updates"] == 3 and after["epoch"] == 2  # epoch 2's three steps
    # and back: a run that kept an average resumes under a recipe that keeps none, from its trained weights
    monkeypatch.setitem(R.RECIPES, plain.name, plain)
    train(TrainConfig(**{**RUN, "epochs": 3}, recipe=plain.name, resume=str(out)))
    last = load_checkpoint(out)
    assert "trained_model" not in last and last["epoch"] == 3


def test_recipes_check_their_average_and_mirroring():
    base = get_recipe("resnet_cifar_fast").__dict__
    for bad in ({"ema": 1.0}, {"ema": -0.1}, {"tta": "crops10"}):
        with pytest.raises(ValueError):
            Recipe(**{**base, **bad})


# --- threads fitted to the free cores -------------------------------------------------------------------------------

def test_threads_drop_to_the_free_cores_and_come_back(monkeypatch):
    readings = iter([(0.0, 0.0, 0.0),  # (wall s, CPU s of every process, CPU s of this one)
                     (10.0, 20.0, 10.0),  # another process used one core of two: one is left
                     (20.0, 30.0, 20.0),  # only this process: both
                     (30.0, 45.0, 30.0),  # others used half a core: 1.5 left, still both
                     (40.0, 62.0, 40.0)])  # others used 0.7 of a core: 1.3 left, one
    monkeypatch.setattr(ThreadShare, "_read", staticmethod(lambda: next(readings)))
    set_to = []
    monkeypatch.setattr(torch, "set_num_threads", set_to.append)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    share = ThreadShare(every=0.0)
    share.cores = 2
    share.enabled = True
    assert [share.poll() for _ in range(4)] == [1, 2, 2, 1]
    assert set_to == [1, 2, 1]
    share.restore()
    assert set_to[-1] == 2


def test_threads_stay_put_when_asked(monkeypatch):
    monkeypatch.setenv("CNNLAB_FIT_THREADS", "0")
    assert not ThreadShare().enabled
    monkeypatch.delenv("CNNLAB_FIT_THREADS")
    assert not ThreadShare(enabled=False).enabled


def test_a_busy_process_takes_a_thread_from_a_real_run(tmp_path):
    if torch.get_num_threads() < 2 or len(__import__("os").sched_getaffinity(0)) < 2:
        pytest.skip("needs two cores")
    share = ThreadShare(every=0.5)
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        deadline = time.monotonic() + 5
        while share.poll() == share.base and time.monotonic() < deadline:
            time.sleep(0.1)
        assert share.threads == share.base - 1 and share.others > 0.5
    finally:
        spinner.kill()
        spinner.wait()
        share.restore()
    assert torch.get_num_threads() == share.base


def test_a_run_records_its_threads_and_deterministic_runs_keep_them(tmp_path):
    out = tmp_path / "run"
    train(TrainConfig(**{**RUN, "epochs": 1}, out=str(out)))
    line = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"kind": "epoch"' in x][0]
    assert line["threads"] == torch.get_num_threads()


# --- curves.png ---------------------------------------------------------------------------------------------------

def test_curves_are_drawn_at_the_end_and_once_a_minute(tmp_path, monkeypatch):
    from cnnlab.train import rundir

    drawn = []
    monkeypatch.setattr(rundir, "write_curves", lambda history, path: drawn.append(len(history)))
    folder = rundir.RunFolder(tmp_path)
    folder.curves([{"epoch": 1}])
    assert drawn == []  # too soon
    folder.drawn -= rundir.CURVES_EVERY
    folder.curves([{"epoch": 1}, {"epoch": 2}])
    folder.curves([{"epoch": 1}, {"epoch": 2}, {"epoch": 3}])
    folder.curves([{"epoch": 1}, {"epoch": 2}, {"epoch": 3}], final=True)
    assert drawn == [2, 3]
