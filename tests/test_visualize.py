"""Visualisation: kernels, feature maps, top-9 patches, saliency and Grad-CAM against answers computed by hand
(brute force, finite differences, toys), hooks removed, memory flat; the commands on a real MNIST run."""

import copy
import gc
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab import CnnlabError, create_model, list_models, model_card, summary
from cnnlab.cli import main
from cnnlab.visualize import (
    capture,
    feature_maps,
    filters,
    gradcam,
    gradcam_layer,
    hooks_left,
    mosaic,
    saliency,
    top_images,
)
from cnnlab.visualize.layers import trace

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One short epoch of lenet5_modern on real MNIST (a class-balanced 3,000 images), through the trainer."""
    from cnnlab.train import TrainConfig, train

    out = tmp_path_factory.mktemp("vis-run")
    train(TrainConfig(model="lenet5_modern", epochs=1, batch_size=64, lr=0.05, quiet=True, seed=3, out=str(out),
                      train_limit=3000))
    return out


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """Real MNIST test digits as PNG files: a 7, a 2, a 1."""
    from torchvision.io import write_png

    from cnnlab.data import load

    folder = tmp_path_factory.mktemp("digits")
    ds = load("mnist", "test", data_dir="/nonexistent")  # the embedded copy
    paths = []
    for i in range(3):
        paths.append(folder / f"digit{i}_{int(ds.labels[i])}.png")
        write_png(ds.images[i], str(paths[-1]))
    return paths


def _small_cnn() -> nn.Sequential:
    """conv3 p1 -> ReLU (in place) -> max-pool 2 -> conv3 p1 -> ReLU (in place) -> GAP -> linear."""
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                         nn.Conv2d(4, 5, 3, padding=1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(5, 3))


# -- kernels -------------------------------------------------------------------------------------------------

def test_kernel_grids_have_one_tile_per_kernel_each_scaled_to_0_1():
    k = filters(create_model("lenet5_modern"))  # first layer, grey input
    assert k.layer == "features.0" and k.kind == "grey" and k.tiles.shape == (6, 5, 5) and k.grid == (2, 3)
    assert np.allclose(k.tiles.min((1, 2)), 0) and np.allclose(k.tiles.max((1, 2)), 1)
    rgb = filters(create_model("resnet20"))  # colour input: one RGB tile per kernel
    assert rgb.kind == "rgb" and rgb.tiles.shape == (16, 3, 3, 3)
    assert np.allclose(rgb.tiles.min((1, 2, 3)), 0) and np.allclose(rgb.tiles.max((1, 2, 3)), 1)
    deep = filters(create_model("lenet5_modern"), "features.3")  # a row of input-channel slices per kernel
    assert deep.kind == "slices" and deep.tiles.shape == (16 * 6, 5, 5) and deep.grid == (16, 6)
    per_kernel = deep.tiles.reshape(16, -1)
    assert np.allclose(per_kernel.min(1), 0) and np.allclose(per_kernel.max(1), 1)
    assert mosaic(k.tiles, k.grid).shape == (2 * 5 + 1, 3 * 5 + 2)
    with pytest.raises(CnnlabError, match="is a ReLU, not a convolution.*features.0, features.3"):
        filters(create_model("lenet5_modern"), "features.1")


# -- feature maps --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,layers", [
    ("lenet5_modern", ["features.0", "features.2", "features.5", "classifier.1"]),
    ("resnet20", ["conv1", "layer1.0", "layer2", "layer3.2.conv2"]),
])
def test_feature_maps_have_the_shapes_the_inspector_predicts(name, layers):
    model = create_model(name)
    size = model_card(name).input_size
    maps = feature_maps(model, torch.randn(size), layers)
    rows = summary(name, size)
    assert list(maps) == layers
    for layer in layers:
        assert list(maps[layer].shape) == rows.row(layer).output_shape


def test_feature_maps_are_the_layer_outputs_even_before_an_in_place_relu():
    model = _small_cnn()
    x = torch.randn(2, 8, 8)
    maps = feature_maps(model, x, ["0", "1"])
    conv = model[0](x[None])[0].detach().numpy()
    assert (conv < 0).any()  # the in-place ReLU would overwrite these if the hook kept the live tensor
    np.testing.assert_allclose(maps["0"], conv, rtol=1e-6)
    np.testing.assert_allclose(maps["1"], np.maximum(conv, 0), rtol=1e-6)


# -- top-9 ---------------------------------------------------------------------------------------------------

def test_top9_finds_the_brute_force_top9_in_one_pass_and_crops_the_receptive_field():
    model = _small_cnn().eval()
    data = torch.randn(50, 2, 12, 12)
    batches = (data[i:i + 7] for i in range(0, 50, 7))  # a generator: one pass, uneven batches
    res = top_images(model, batches, "3", channels=[0, 2, 4])
    with torch.no_grad():
        a = model[:4](data)[:, [0, 2, 4]]  # N x 3 x 6 x 6
    best, where = a.flatten(2).max(2)
    for c in range(3):
        top = best[:, c].topk(9)
        assert res.indices[c].tolist() == top.indices.tolist()
        np.testing.assert_allclose(res.values[c], top.values.numpy(), rtol=1e-6)
        rows, cols = where[top.indices, c] // 6, where[top.indices, c] % 6
        assert res.positions[c].tolist() == torch.stack((rows, cols), 1).tolist()
    # by hand: conv3 p1 (size 3), pool 2 (size 4, jump 2, start 0.5), conv3 p1 (size 8): unit (i, j) sees
    # input rows 2i-3 .. 2i+4 and columns 2j-3 .. 2j+4
    assert res.field.size_text == "8" and res.field.jump_text == "2"
    for (i, j), box in zip(res.positions.reshape(-1, 2), res.boxes.reshape(-1, 4)):
        assert box.tolist() == [2 * i - 3, 2 * i + 5, 2 * j - 3, 2 * j + 5]
    # patches: the field cut from the image, its parts outside the image left at the fill value
    images = np.arange(50 * 144, dtype=np.float32).reshape(50, 12, 12, 1)
    patches = res.patches(lambda i: images[i], fill=-1)
    assert patches.shape == (3, 9, 8, 8, 1)
    for c in range(3):
        for r in range(9):
            t, b, l, rr = res.boxes[c, r]
            full = np.full((24, 24), -1.0, dtype=np.float32)
            full[6:18, 6:18] = images[res.indices[c, r], :, :, 0]
            np.testing.assert_array_equal(patches[c, r, :, :, 0], full[t + 6:b + 6, l + 6:rr + 6])


def test_top9_refuses_channels_that_do_not_exist():
    with pytest.raises(CnnlabError, match="channel 9 is out of range; layer '3' has 5 channels, 0 to 4"):
        top_images(_small_cnn(), [torch.randn(4, 2, 12, 12)], "3", channels=[1, 9])


# -- saliency and Grad-CAM -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_saliency_equals_a_finite_difference_gradient():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 3 * 3, 4)).double()
    x = torch.randn(2, 5, 5, dtype=torch.float64)
    att = saliency(model, x, target=2)
    eps, grad = 1e-6, torch.zeros_like(x)
    with torch.no_grad():
        for idx in np.ndindex(*x.shape):
            d = torch.zeros_like(x)
            d[idx] = eps
            grad[idx] = (model((x + d)[None])[0, 2] - model((x - d)[None])[0, 2]) / (2 * eps)
    np.testing.assert_allclose(att.map, grad.abs().amax(0).numpy(), atol=1e-7)
    assert att.target == 2 and att.predicted == int(model(x[None]).argmax())


def test_gradcam_on_a_toy_with_a_known_answer(gradcam_toy):
    """Class c of the toy is the mean of channel c, so its Grad-CAM is channel c's picture, and its raw map
    channel c / (H W)."""
    model, conv = gradcam_toy, gradcam_toy[0]
    x = torch.zeros(2, 8, 8)
    x[0, 1:3, 1:4] = 1.0  # a bar top-left in channel 0
    x[1, 5:8, 6:8] = 2.0  # a block bottom-right in channel 1
    for c in (0, 1):
        att = gradcam(model, x, "0", target=c)
        np.testing.assert_allclose(att.map, (x[c] / x[c].max()).numpy(), atol=1e-6)
        np.testing.assert_allclose(att.raw, (x[c] / 64).numpy(), atol=1e-7)
    assert gradcam(model, x, "0").target == 1  # the predicted class: channel 1 has the larger mean
    # as pytorch-grad-cam and Captum take them: the layer as a module, the target as a tensor
    np.testing.assert_allclose(gradcam(model, x, conv, target=torch.tensor(0)).map, gradcam(model, x, "0", 0).map)
    assert saliency(model, x, target=torch.tensor([1])).target == 1
    with pytest.raises(CnnlabError, match="the Conv2d given as layer is not a module of this Sequential"):
        gradcam(model, x, nn.Conv2d(2, 2, 1))  # one line, not the module's repr
    with pytest.raises(CnnlabError, match="one class index for one image, got a tensor of shape .2,"):
        saliency(model, x, target=torch.tensor([0, 1]))


def _gradcam_by_hand(model: nn.Sequential, x: torch.Tensor, cut: int, target: int) -> np.ndarray:
    ref = copy.deepcopy(model)
    for m in ref.modules():
        if hasattr(m, "inplace"):
            m.inplace = False
    a = ref[:cut](x[None])
    (g,) = torch.autograd.grad(ref[cut:](a.clone())[0, target], a)  # the rest may change its input in place
    cam = F.relu((g.mean((2, 3), keepdim=True) * a).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[1:], mode="bilinear", align_corners=False)[0, 0]
    return (cam / cam.max()).detach().numpy()


class _AddInPlace(nn.Module):
    def forward(self, x):
        x += 0.25  # a functional in-place operation, as residual networks write `out += identity`
        return x


def test_in_place_activations_do_not_change_gradcam_or_saliency_and_nothing_is_left_behind():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(2, 6, 3, padding=1), _AddInPlace(), nn.ReLU(inplace=True), nn.Conv2d(6, 4, 3),
                          nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    model.train()
    x = torch.randn(2, 9, 9)
    assert (model[0](x[None]) < 0).any()
    for layer, cut in (("0", 1), ("3", 4)):
        np.testing.assert_allclose(gradcam(model, x, layer, target=1, normalize="max").map,
                                   _gradcam_by_hand(model.eval(), x, cut, 1), atol=1e-5)
        model.train()
    plain = copy.deepcopy(model).eval()
    for m in plain.modules():
        if hasattr(m, "inplace"):
            m.inplace = False
    xr = x[None].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(plain(xr)[0, 0], xr)
    np.testing.assert_allclose(saliency(model, x, 0).map, g[0].abs().amax(0).numpy(), atol=1e-6)
    assert hooks_left(model) == 0 and model.training  # hooks gone, mode restored
    assert model[2].inplace and model[4].inplace
    assert all(p.grad is None for p in model.parameters())  # no parameter gradients accumulated


def test_hooks_are_removed_after_an_error():
    model = _small_cnn()
    with pytest.raises(RuntimeError), capture(model, ["0", "3"]):
        assert hooks_left(model) == 2
        model(torch.randn(1, 3, 8, 8))  # wrong channels: the forward pass fails
    assert hooks_left(model) == 0
    with pytest.raises(CnnlabError, match="class 3 is out of range; this model has 3 classes, 0 to 2"):
        gradcam(model, torch.randn(2, 8, 8), "3", target=3)
    with pytest.raises(CnnlabError, match="Grad-CAM needs a layer with spatial maps; '7' outputs 3"):
        gradcam(model, torch.randn(2, 8, 8), "7")
    assert hooks_left(model) == 0


@pytest.mark.slow
def test_memory_stays_flat_over_hundreds_of_calls():
    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 64, 3, padding=1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(64, 5))
    x = torch.randn(1, 32, 32)  # each call's map is 64 x 32 x 32 floats: 256 KiB, with its graph more

    def step():
        gradcam(model, x, "0")
        saliency(model, x)

    for _ in range(20):
        step()
    gc.collect()
    objects, memory = len(gc.get_objects()), rss()
    for _ in range(300):
        step()
    gc.collect()
    assert len(gc.get_objects()) - objects < 50  # a kept output or graph per call would add thousands
    assert rss() - memory < 16 * 2 ** 20  # a kept map per call would add 75 MiB
    assert hooks_left(model) == 0


@pytest.mark.slow
def test_every_model_of_the_zoo_has_a_default_gradcam_layer_with_a_spatial_map():
    expected = {"lenet5": "c3", "lenet5_modern": "features.4", "alexnet": "features.11", "vgg16": "features.29",
                "resnet18": "layer4", "resnet20": "layer3", "densenet121": "features.norm5",
                "googlenet": "inception5b", "inception_v3": "Mixed_7c", "nin_cifar": "features"}
    for name in list_models():
        size = model_card(name).input_size
        with torch.device("meta"):
            model = create_model(name)
        layer = gradcam_layer(model, size)
        shapes = [c.shape for c in trace(model, size) if c.name == layer]
        assert shapes and len(shapes[-1]) == 3 and shapes[-1][1] * shapes[-1][2] > 1, (name, layer, shapes)
        assert expected.get(name, layer) == layer, name


def test_wrong_input_is_a_clear_error():
    model = create_model("lenet5_modern")
    with pytest.raises(CnnlabError, match="the image has 3 channels but LeNet5Modern reads 1"):
        saliency(model, torch.randn(3, 32, 32))
    with pytest.raises(CnnlabError, match=r"has no layer 'features.9'; did you mean features.\d.*its layers are: "
                                          r"features, features.0"):
        feature_maps(model, torch.randn(1, 32, 32), ["features.9"])
    with pytest.raises(CnnlabError, match="LeNet5Modern cannot run on 1x8x8 images"):
        gradcam(model, torch.randn(1, 8, 8), "features.0")
    assert hooks_left(model) == 0


# -- the commands, on a real run -----------------------------------------------------------------------------

@pytest.mark.slow
def test_visualize_commands_write_pngs_and_print_their_paths(run, digits, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    seven, two = str(digits[0]), str(digits[1])
    for argv, name in ((["filters", str(run)], "filters.png"),
                       (["filters", str(run), "--layer", "features.3", "--out", "deep.png"], "deep.png"),
                       (["features", str(run), seven], "features.png"),
                       (["features", str(run), seven, "--layer", "features.1", "classifier.1", "--out", "f.png"],
                        "f.png"),
                       (["top9", str(run), "--layer", "features.4", "--channels", "0", "3"], "top9.png"),
                       (["saliency", str(run), seven], "saliency.png"),
                       (["gradcam", str(run), two, "--target", "2"], "gradcam.png"),
                       (["filters", "lenet5"], "filters.png")):
        assert main(["visualize", *argv]) == 0, argv
        assert capsys.readouterr().out == f"{name}\n"
        assert (tmp_path / name).read_bytes()[:8] == PNG


@pytest.mark.slow
def test_saliency_and_gradcam_of_a_real_digit(run, digits):
    from cnnlab.data.view import load_image
    from cnnlab.runs import open_run

    opened = open_run(run)
    model = opened.model
    x = load_image(digits[0], opened.info.view)  # a 7, padded to 32 x 32
    sal = saliency(model, x[0])
    assert sal.predicted == 7 and sal.map.shape == (32, 32)
    ink = torch.nn.functional.max_pool2d((x > 0).float(), 5, 1, 2)[0, 0].numpy() > 0  # the digit and its rim
    assert sal.map[ink].mean() > 3 * sal.map[~ink].mean()  # the score depends on the strokes, not the background
    cam = gradcam(model, x[0])
    assert cam.layer == "features.4" and cam.map.shape == (32, 32) and cam.map.max() == pytest.approx(1.0)
    assert cam.raw.shape == (10, 10) and hooks_left(model) == 0


@pytest.mark.parametrize("argv,message", [
    (["features", "RUN", "IMG", "--layer", "features.7"], "has no layer 'features.7'; did you mean"),
    (["gradcam", "RUN", "IMG", "--layer", "classifier.3"], "Grad-CAM needs a layer with spatial maps"),
    (["saliency", "RUN", "IMG", "--target", "10"], "class 10 is out of range; this model has 10 classes"),
    (["saliency", "RUN", "IMG", "--target", "seven"], "unknown class 'seven'"),
    (["saliency", "RUN", "NOT_IMAGE"], "is not an image cnnlab can read (it reads JPEG, PNG, WebP, GIF, BMP, TIFF"),
    (["saliency", "RUN", "CUT_IMAGE"], "is truncated or corrupt (image file is truncated); remove it or replace it"),
    (["saliency", "RUN", "/nonexistent.png"], "image /nonexistent.png does not exist"),
    (["top9", "RUN", "--layer", "features.4", "--channels", "16"], "channel 16 is out of range"),
    (["filters", "/nonexistent/run"], "no checkpoint at"),
    (["filters", "RUN", "--out", "x.jpg"], "--out must be a .png file"),
    ([], "say what to draw"),
])
@pytest.mark.slow
def test_visualize_mistakes_exit_2(run, digits, tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.png").write_text("not an image")
    (tmp_path / "cut.png").write_bytes(Path(digits[0]).read_bytes()[:60])
    swap = {"RUN": str(run), "IMG": str(digits[0]), "NOT_IMAGE": str(tmp_path / "notes.png"),
            "CUT_IMAGE": str(tmp_path / "cut.png")}
    assert main(["visualize", *[swap.get(a, a) for a in argv]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cnnlab: error: ") and message in err and "Traceback" not in err
    assert ".cpp" not in err  # no C++ source locations from the decoder


@pytest.mark.slow
def test_top9_on_a_dataset_with_other_channels_exits_2(run, capsys, monkeypatch):
    from cnnlab.data import memory

    def colour(name, split="train", data_dir=None, download=False):  # a CIFAR-like set, without the download
        return memory.ArrayDataset(name, split, torch.zeros(4, 3, 32, 32, dtype=torch.uint8), torch.zeros(4).long(),
                                   [str(i) for i in range(10)], (0.5,) * 3, (0.25,) * 3)

    monkeypatch.setattr(memory, "load", colour)
    assert main(["visualize", "top9", str(run), "--layer", "features.0", "--data", "cifar10"]) == 2
    assert "cifar10 has 3-channel images but the model reads 1" in capsys.readouterr().err
