"""Training from Python as a notebook does it: cnnlab.train("lenet5", ...) with keywords, a result that carries its
history and draws its curves without touching the notebook's matplotlib backend, the stop button
(KeyboardInterrupt) leaving a run that resumes exactly, and no rich warnings in a notebook without widgets."""

import matplotlib
import pytest
import torch

import cnnlab
from cnnlab.errors import CnnlabError
from cnnlab.train import TrainConfig, trainer

# a quarter of 2,048 training images held out for evaluation: scoring the 10,000 test images would be most of the time
SMALL = dict(epochs=2, batch_size=256, lr=0.05, train_limit=2048, val_split=0.25, quiet=True, deterministic=True,
             seed=5)


@pytest.mark.slow
def test_train_with_keywords_gives_history_plot_and_the_run(tmp_path, monkeypatch):
    monkeypatch.setitem(matplotlib.rcParams, "backend", "pdf")  # as a notebook's inline backend: left alone
    result = cnnlab.train("lenet5_modern", out=str(tmp_path / "run"), **SMALL)
    assert [h["epoch"] for h in result.history] == [1, 2] and result.final == result.history[-1]
    assert result.best_top1 == max(h["eval_top1"] for h in result.history)
    fig = result.plot()
    loss, acc = fig.axes
    assert list(loss.lines[1].get_ydata()) == [h["eval_loss"] for h in result.history]
    assert list(acc.lines[1].get_ydata()) == [h["eval_top1"] for h in result.history]
    assert matplotlib.rcParams["backend"] == "pdf"
    fig.savefig(tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 1000
    run = result.open()
    assert run.model.cnnlab_config.name == "lenet5_modern"
    assert run.model.cnnlab_config.weights == str(tmp_path / "run" / "last.pt")
    assert run.model.cnnlab_config.mean == (0.1307,)  # MNIST's normalisation, as the run trained


@pytest.mark.slow
def test_the_stop_button_leaves_a_run_that_resumes_to_the_same_weights(tmp_path, monkeypatch):
    whole = cnnlab.train(TrainConfig("lenet5_modern", out=str(tmp_path / "whole"), **SMALL))
    real = trainer.train_one_epoch

    def stop_in_epoch_2(t, data, epoch, *args):
        if epoch == 1:
            raise KeyboardInterrupt  # what Jupyter's stop button raises in the kernel's main thread
        return real(t, data, epoch, *args)

    monkeypatch.setattr(trainer, "train_one_epoch", stop_in_epoch_2)
    with pytest.raises(KeyboardInterrupt), pytest.warns(UserWarning, match="training stopped in epoch 2 of 2"):
        cnnlab.train("lenet5_modern", out=str(tmp_path / "cut"), **SMALL)
    monkeypatch.setattr(trainer, "train_one_epoch", real)
    resumed = cnnlab.train("lenet5_modern", resume=str(tmp_path / "cut"), quiet=True)
    assert [h["epoch"] for h in resumed.history] == [1, 2]
    a = torch.load(whole.run_dir / "last.pt", weights_only=True)["model"]
    b = torch.load(resumed.run_dir / "last.pt", weights_only=True)["model"]
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=0)


def test_settings_are_checked():
    with pytest.raises(CnnlabError, match="train has no setting 'epoch'; did you mean 'epochs'?"):
        cnnlab.train("lenet5", epoch=3)
    with pytest.raises(CnnlabError, match="in the TrainConfig or as keywords, not both"):
        cnnlab.train(TrainConfig("lenet5"), epochs=3)
    with pytest.raises(CnnlabError, match="a model name or a TrainConfig, not a int"):
        cnnlab.train(5)
    assert cnnlab.train.train is trainer.train and cnnlab.TrainConfig is TrainConfig  # the package is callable


def test_a_notebook_without_ipywidgets_gets_the_epoch_lines_and_no_rich_warnings(monkeypatch):
    import builtins

    import rich.console

    monkeypatch.setattr(rich.console, "_is_jupyter", lambda: True)
    real_import = builtins.__import__

    def no_widgets(name, *args, **kwargs):
        if name == "ipywidgets":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_widgets)
    assert trainer._progress() is None
    monkeypatch.setattr(builtins, "__import__", real_import)
    monkeypatch.setattr(rich.console, "_is_jupyter", lambda: False)
    assert trainer._progress() is not None
