"""Pictures for notebooks: every picture of `cnnlab visualize` (and eval's confusion matrix) is a matplotlib
Figure a Python user can show inline and save, drawn without pyplot; the command line's PNG is that Figure."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cnnlab import CnnlabError, create_model
from cnnlab.visualize import (
    feature_maps,
    filters,
    gradcam,
    plot_feature_maps,
    plot_filters,
    plot_gradcam,
    plot_saliency,
    plot_top_images,
    saliency,
    top_images,
)

PNG = b"\x89PNG\r\n\x1a\n"


def _images(ax) -> list[np.ndarray]:
    return [np.asarray(im.get_array()) for im in ax.get_images()]


def _small_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                         nn.Conv2d(4, 5, 3, padding=1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(5, 3))


@pytest.fixture
def no_pyplot_state():
    """The figures live outside pyplot: none is left open, and the backend a notebook chose is not switched."""
    import matplotlib
    import matplotlib.pyplot as plt

    backend, figures = matplotlib.get_backend(), plt.get_fignums()
    yield
    assert plt.get_fignums() == figures and matplotlib.get_backend() == backend


def test_kernels_are_a_figure_with_one_mosaic(no_pyplot_state, tmp_path):
    k = filters(create_model("lenet5_modern"))
    fig = plot_filters(k, "lenet5_modern")
    (ax,) = fig.axes
    (img,) = _images(ax)
    assert img.shape == (2 * 5 + 1, 3 * 5 + 2) and ax.get_title().startswith("lenet5_modern features.0: 5x5 kernels")
    fig.savefig(tmp_path / "k.png")
    assert (tmp_path / "k.png").read_bytes()[:8] == PNG
    assert k._repr_png_()[:8] == PNG and fig._repr_png_()[:8] == PNG  # shown inline without pyplot's backend


def test_feature_maps_are_one_panel_per_layer_after_the_image(no_pyplot_state):
    model, x = _small_cnn(), torch.randn(3, 8, 8)
    maps = feature_maps(model, x, ["0", "3", "7"])
    fig = plot_feature_maps(x, maps, image_name="x")  # a normalised tensor: drawn by its own range
    assert [ax.get_title().split(":")[0] for ax in fig.axes] == ["input x", "0", "3", "7"]
    shown = _images(fig.axes[0])[0]
    assert shown.shape == (8, 8, 3) and shown.min() == 0 and shown.max() == 1
    assert _images(fig.axes[3])[0].shape == (1, 3)  # the classifier's units as a strip
    assert len(plot_feature_maps(None, maps).axes) == 3
    with pytest.raises(CnnlabError, match="expected an image H x W x C"):
        plot_feature_maps(np.zeros((8, 8, 4)), maps)


@pytest.mark.slow  # top_images measures the receptive field with the inspector: seconds on 2 cores
def test_top_images_are_one_mosaic_per_channel(no_pyplot_state):
    data = torch.randn(20, 3, 8, 8)
    res = top_images(_small_cnn(), [data], "3", channels=[0, 2, 4], k=4)
    patches = res.patches(lambda i: data[i].permute(1, 2, 0).sigmoid().numpy())
    fig = plot_top_images(res, patches, data="random", images=20)
    titled = [ax for ax in fig.axes if ax.get_images()]
    assert [ax.get_title() for ax in titled] == ["channel 0", "channel 2", "channel 4"]
    assert fig._suptitle.get_text().startswith("3: top 4 of 20 random images per channel")


def test_saliency_and_gradcam_figures_for_one_image_and_a_batch(no_pyplot_state):
    model, x = _small_cnn(), torch.randn(2, 3, 8, 8)
    picture = x[0].sigmoid().permute(1, 2, 0).numpy()  # H x W x C in 0..1, as a person sees it
    att = gradcam(model, x[0], "0", 1)
    fig = plot_gradcam(picture, att, ["cat", "dog", "fox"], "toy", "a.png")
    left, right = fig.axes
    np.testing.assert_array_equal(_images(left)[0], picture)
    image, heat = _images(right)  # the image, and the map laid over it
    np.testing.assert_array_equal(heat, att.map)
    assert left.get_title() == f"a.png: predicted {['cat', 'dog', 'fox'][att.predicted]}"
    assert fig._suptitle.get_text() == f"toy: class dog (p = {att.probability:.3f})"

    sal = saliency(model, x, [0, 2])
    fig = plot_saliency(x, sal)  # a batch: one row per image, each titled with its class
    assert len(fig.axes) == 4
    for row, one in enumerate(sal):
        np.testing.assert_array_equal(_images(fig.axes[2 * row + 1])[0], one.map)
        assert f"class {one.target} (p = {one.probability:.3f})" in fig.axes[2 * row].get_title()
    assert len(plot_gradcam(None, gradcam(model, x, "3")).axes) == 2  # the maps alone: one panel per image
    with pytest.raises(CnnlabError, match="the attribution is of 2 images but 1 were given"):
        plot_saliency([picture], sal)
    with pytest.raises(CnnlabError, match="is a saliency map .it has no layer.; draw it with plot_saliency"):
        plot_gradcam(x, sal)


@pytest.mark.slow
def test_the_command_line_png_is_the_figure_saved(tmp_path, monkeypatch):
    from torchvision.io import write_png

    from cnnlab.data import load
    from cnnlab.data.view import display, load_image
    from cnnlab.fileio import atomic_savefig
    from cnnlab.runs import open_model
    from cnnlab.visualize.figures import filters_png, gradcam_png

    monkeypatch.chdir(tmp_path)
    run = open_model("lenet5_modern")  # its initial weights, seed 0, named "lenet5_modern (untrained)"
    filters_png("lenet5_modern", out="cli.png")
    atomic_savefig(plot_filters(filters(run.model), run.name), "lib.png", dpi=100)
    assert Path("cli.png").read_bytes() == Path("lib.png").read_bytes()

    write_png(load("mnist", "test", data_dir="/nonexistent").images[0], "seven.png")
    gradcam_png("lenet5_modern", "seven.png", target=2, out="cli.png")
    x = load_image("seven.png", run.info.view)[0]
    att = gradcam(run.model, x, "features.4", 2)
    atomic_savefig(plot_gradcam(display(x, run.info.view), att, run.info.classes, run.name, "seven.png"),
                   "lib.png", dpi=100)
    assert Path("cli.png").read_bytes() == Path("lib.png").read_bytes()


def test_the_confusion_matrix_is_a_figure(no_pyplot_state, tmp_path):
    from cnnlab.analysis.evaluate import EvalReport

    report = EvalReport(["a", "b", "c"], torch.tensor([[5, 1, 0], [2, 3, 1], [0, 0, 6]]), 18, "test", None, 1)
    fig = report.figure()
    np.testing.assert_array_equal(_images(fig.axes[0])[0], report.confusion.numpy())
    report.plot(tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:8] == PNG
