"""Saliency and Grad-CAM as Captum and pytorch-grad-cam users call them: a batch with one target per image, the
map's normalisation named; checked by hand on toys and against the peers themselves where they are installed
(`pip install -e .[peers]`; without them those tests skip)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab import CnnlabError
from cnnlab.visualize import Attribution, gradcam, hooks_left, saliency


def _small_cnn() -> nn.Sequential:
    torch.manual_seed(4)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                         nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 5))


def _batch() -> torch.Tensor:
    return torch.randn(4, 3, 10, 10, generator=torch.Generator().manual_seed(5))


# -- batches -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", [saliency, gradcam])
def test_a_batch_gives_each_image_what_it_gives_alone(method):
    model = _small_cnn()
    model.train()  # batch norm in training mode would mix the images; the methods run in eval mode
    x, targets = _batch(), [0, 3, 3, 4]
    att = method(model, x, target=targets)
    assert att.batched and att.map.shape == (4, 10, 10) and len(att) == 4
    assert att.target.tolist() == targets and att.probability.shape == (4,) and att.predicted.shape == (4,)
    for i, one in enumerate(att):
        alone = method(model, x[i], target=targets[i])
        assert not alone.batched and alone.map.shape == (10, 10) and isinstance(alone.target, int)
        np.testing.assert_allclose(one.map, alone.map, rtol=1e-5, atol=1e-6)
        assert (one.target, one.predicted) == (alone.target, alone.predicted)
        assert one.probability == pytest.approx(alone.probability, rel=1e-5)
        if method is gradcam:
            np.testing.assert_allclose(one.raw, alone.raw, rtol=1e-5, atol=1e-7)
    assert att[1:3].map.shape == (2, 10, 10) and att[1:3].target.tolist() == [3, 3]
    assert model.training and hooks_left(model) == 0


def test_one_image_stays_one_image_and_a_batch_of_one_is_a_batch():
    model, x = _small_cnn(), _batch()
    one = gradcam(model, x[0])
    assert one.map.shape == (10, 10) and one.raw.ndim == 2 and isinstance(one.probability, float)
    assert len(one) == 1 and one[0] is one and list(one) == [one]  # a sequence of itself, as a character is a str
    with pytest.raises(IndexError):
        one[1]
    batch = gradcam(model, x[:1])  # shaped like the input, as Captum's answers are
    assert batch.map.shape == (1, 10, 10) and batch.target.shape == (1,)
    np.testing.assert_array_equal(batch.map[0], one.map)


def test_targets_as_captum_takes_them():
    model, x = _small_cnn(), _batch()
    predicted = saliency(model, x).predicted
    assert saliency(model, x).target.tolist() == predicted.tolist()  # None: each image's own top class
    for same in (2, np.int64(2), torch.tensor(2), torch.tensor([2]), np.array(2)):  # one class for every image
        assert saliency(model, x, target=same).target.tolist() == [2] * 4
    for each in ([1, 0, 4, 2], (1, 0, 4, 2), torch.tensor([1, 0, 4, 2]), np.array([1, 0, 4, 2])):
        assert gradcam(model, x, "4", target=each).target.tolist() == [1, 0, 4, 2]
    assert saliency(model, x[0], target=[3]).target == 3  # one image, a list of one


@pytest.mark.parametrize("target,message", [
    ([1, 2], r"the target list has 2 classes for 4 images; give one per image, or one int for all"),
    ([1, 2, 3, 9], r"class 9 \(image 3\) is out of range; this model has 5 classes, 0 to 4"),
    (-1, r"class -1 \(image 0\) is out of range"),
    (2.0, r"the target must be a class index \(an int\), a list of them or a tensor, got 2.0"),
    ([1, 2, 3, 1.5], r"a class index \(an int\), a list of them or a tensor, got 1.5"),
    (True, r"a class index \(an int\), a list of them or a tensor, got True"),
    ("cat", r"a class index \(an int\), a list of them or a tensor, got 'cat'"),
    (torch.tensor([1.0, 2.0, 3.0, 4.0]), r"class indices \(integers\), got a tensor of type torch.float32"),
    (torch.tensor([[1, 2], [3, 4]]), r"one class for all 4 images or a 1-d tensor of one per image, got a tensor "
                                     r"of shape \(2, 2\)"),
    (torch.tensor([1, 2]), r"one class for all 4 images or a 1-d tensor of one per image, got a tensor of shape "
                           r"\(2,\)"),
])
@pytest.mark.parametrize("method", [saliency, gradcam])
def test_bad_targets_are_one_sentence(method, target, message):
    model = _small_cnn()
    with pytest.raises(CnnlabError, match=message) as e:
        method(model, _batch(), target=target)
    assert "\n" not in str(e.value) and str(e.value).count("; ") <= 1
    assert hooks_left(model) == 0


def test_bad_inputs_and_normalisations_are_one_sentence():
    model = _small_cnn()
    with pytest.raises(CnnlabError, match="the batch holds no images"):
        gradcam(model, torch.randn(0, 3, 10, 10))
    with pytest.raises(CnnlabError, match=r"an image, C x H x W, or a batch, N x C x H x W, got a tensor of shape "
                                          r"\(1, 1, 3, 10, 10\)"):
        saliency(model, torch.randn(1, 1, 3, 10, 10))
    with pytest.raises(CnnlabError, match="normalize must be 'max', 'minmax' or None, got 'l2'"):
        gradcam(model, _batch(), normalize="l2")
    with pytest.raises(CnnlabError, match="one class index for one image, got a tensor of shape"):
        saliency(model, _batch()[0], target=torch.tensor([1, 2]))


# -- normalisation, by hand ----------------------------------------------------------------------------------

def test_gradcam_normalisations_on_a_toy_computed_by_hand(gradcam_toy):
    """A batch of two images whose channel c is a picture plus 1 everywhere: Grad-CAM of class c is
    (picture + 1) / 64, positive everywhere. "max" keeps its floor, "minmax" stretches it to 0..1."""
    model = gradcam_toy
    x = torch.zeros(2, 2, 8, 8)
    x[0, 0, 1:3, 1:4] = 1.0  # image 0, channel 0: a bar top-left
    x[1, 1, 5:8, 6:8] = 2.0  # image 1, channel 1: a block bottom-right
    x += 1
    targets = [0, 1]
    raw = gradcam(model, x, "0", targets, normalize=None)
    top = gradcam(model, x, "0", targets, normalize="max")
    stretched = gradcam(model, x, "0", targets)  # the default: min-max, as pytorch-grad-cam
    assert (raw.normalize, top.normalize, stretched.normalize) == (None, "max", "minmax")
    for i, c in enumerate(targets):
        picture = x[i, c].numpy()
        np.testing.assert_allclose(raw.map[i], picture / 64, rtol=1e-6)
        np.testing.assert_allclose(raw.raw[i], picture / 64, rtol=1e-6)
        np.testing.assert_allclose(top.map[i], picture / picture.max(), rtol=1e-6)
        assert top.map[i].min() == pytest.approx(1 / picture.max())  # the floor: 1/2 and 1/3
        np.testing.assert_allclose(stretched.map[i], (picture - 1) / (picture.max() - 1), atol=1e-6)
    flat = gradcam(model, torch.ones(2, 8, 8), "0", 0)  # the same everywhere: no place stands out
    assert flat.map.max() == 0 and gradcam(model, torch.ones(2, 8, 8), "0", 0, normalize="max").map.min() == 1


def test_saliency_is_raw_by_default_and_scales_when_asked():
    model = _small_cnn()
    x = _batch()
    raw = saliency(model, x, 1)
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model.eval()(xr)[:, 1].sum(), xr)
    np.testing.assert_allclose(raw.map, g.abs().amax(1).numpy(), rtol=1e-5, atol=1e-8)
    assert raw.normalize is None
    top = saliency(model, x, 1, normalize="max").map
    np.testing.assert_allclose(top, raw.map / raw.map.max((1, 2), keepdims=True), rtol=1e-5)
    lo, hi = raw.map.min((1, 2), keepdims=True), raw.map.max((1, 2), keepdims=True)
    np.testing.assert_allclose(saliency(model, x, 1, normalize="minmax").map, (raw.map - lo) / (hi - lo), rtol=1e-4,
                               atol=1e-6)


def test_an_attribution_shows_itself_in_a_notebook():
    model = _small_cnn()
    for att in (gradcam(model, _batch()[0]), saliency(model, _batch())):
        assert isinstance(att, Attribution) and att._repr_png_()[:8] == b"\x89PNG\r\n\x1a\n"


# -- the peers ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def resnet18():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()  # random weights: no download
    x = torch.randn(3, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    return model, x, [1, 500, 999]


@pytest.mark.slow
def test_gradcam_matches_pytorch_grad_cam_on_a_batch(resnet18):
    pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, x, targets = resnet18
    with GradCAM(model, target_layers=[model.layer4[-1]]) as cam:
        ref = cam(x, targets=[ClassifierOutputTarget(t) for t in targets])  # N x H x W, min-max per image
    ours = gradcam(model, x, model.layer4[-1], targets)
    assert ref.shape == ours.map.shape == (3, 128, 128)
    np.testing.assert_allclose(ours.map, ref, atol=1e-5)  # their scale adds 1e-7 to the divisor
    # the case where the two scales part: a map positive everywhere (here image 2's), which "max" leaves a floor
    floor = ours.raw.min((1, 2)) / ours.raw.max((1, 2))
    assert floor.max() > 0.01
    assert np.abs(gradcam(model, x, "layer4", targets, normalize="max").map - ref).max() > 0.01


@pytest.mark.slow
def test_saliency_and_layer_gradcam_match_captum_on_a_batch(resnet18):
    pytest.importorskip("captum")
    from captum.attr import LayerAttribution, LayerGradCam, Saliency

    model, x, targets = resnet18
    ref = Saliency(model).attribute(x.clone().requires_grad_(True), target=targets, abs=True)  # N x C x H x W
    # Simonyan et al. take the maximum over the colour channels; Captum keeps them
    np.testing.assert_allclose(saliency(model, x, targets).map, ref.amax(1).numpy(), rtol=1e-5, atol=1e-9)
    cam = LayerGradCam(model, model.layer4).attribute(x, target=targets, relu_attributions=True)  # N x 1 x h x w
    ours = gradcam(model, x, "layer4", torch.tensor(targets), normalize=None)
    np.testing.assert_allclose(ours.raw, cam[:, 0].detach().numpy(), rtol=1e-5, atol=1e-9)
    up = LayerAttribution.interpolate(cam, tuple(x.shape[2:]), "bilinear")[:, 0].detach().numpy()
    np.testing.assert_allclose(ours.map, up, rtol=1e-5, atol=1e-9)


@pytest.mark.slow
def test_the_raw_map_is_relu_of_the_weighted_maps_for_one_image(resnet18):
    """By hand on the real network: the spatial mean of the gradient weights the layer's maps."""
    model, x, targets = resnet18
    a = model.layer3(model.layer2(model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(x[:1])))))))
    a = model.layer4(a)
    score = model.fc(torch.flatten(model.avgpool(a), 1))[0, targets[0]]
    (g,) = torch.autograd.grad(score, a)
    by_hand = F.relu((g.mean((2, 3), keepdim=True) * a).sum(1))[0].detach().numpy()
    np.testing.assert_allclose(gradcam(model, x[0], "layer4", targets[0]).raw, by_hand, rtol=1e-5, atol=1e-9)
