"""Architectures against the papers' numbers, torchvision, and hand-written references."""

import contextlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from cnnlab import create_model, list_models, model_card
from cnnlab.models.layers import FullConv2d, LocalResponseNorm, ScaledTanh, textbook_ops
from cnnlab.models.lenet import (
    C3_TABLE,
    DIGIT_BITMAPS,
    connection_table,
    rbf_prototypes,
)
from cnnlab.transfer import TORCHVISION_WEIGHTS

# Published parameter counts: the papers, the lecture, torchvision (exact) and VGG's Table 2 (millions).
EXACT_PARAMS = {
    "lenet5": 60_000,  # LeCun et al. 1998
    "lenet5_modern": 61_706,  # lecture
    "alexnet": 61_100_840,  # torchvision
    "alexnet_paper": 60_965_224,  # issue / lecture, two towers
    "vgg_cifar": (1792 + 128) + (73856 + 256) + (295168 + 512) + (590080 + 512) + (1180160 + 1024)
    + 3 * (2359808 + 1024) + 5130,  # conv + BN per layer, then linear(512 -> 10)
    "nin_cifar": 966_986,
}
VGG_TABLE2_MILLIONS = {"vgg11": 133, "vgg11_lrn": 133, "vgg13": 133, "vgg16_c": 134, "vgg16": 138, "vgg19": 144}


def n_params(model, trainable_only=True):
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def meta_model(name, **kw):
    with torch.device("meta"):
        return create_model(name, **kw)


@pytest.mark.parametrize("name,count", EXACT_PARAMS.items())
def test_exact_parameter_counts(name, count):
    assert n_params(meta_model(name)) == count


def test_alexnet_single_tower_matches_the_lecture_table():
    assert n_params(meta_model("alexnet_paper", towers=1)) == 62_378_344


@pytest.mark.parametrize("name,millions", VGG_TABLE2_MILLIONS.items())
def test_vgg_parameters_reproduce_table_2(name, millions):
    assert round(n_params(meta_model(name)) / 1e6) == millions


# Untrained BatchNorm layers hold identity running statistics, so in eval mode a freshly built 1202-layer
# ResNet adds 600 unnormalised branches and overflows; in training mode (batch statistics) it is fine.
TRAIN_MODE_ONLY = {"resnet1202"}


@pytest.mark.parametrize("name", list_models())
def test_forward_at_the_published_input(name):
    card = model_card(name)
    model = create_model(name).train(name in TRAIN_MODE_ONLY)
    batch = 2 if card.input_size[-1] <= 64 else 1  # keeps the ImageNet-size models fast
    with torch.no_grad():
        out = model(torch.randn(batch, *card.input_size))
    out = out if isinstance(out, torch.Tensor) else out[0]
    assert out.shape == (batch, card.num_classes)
    assert torch.isfinite(out).all()


# -- torchvision compatibility ---------------------------------------------------------------------------
# every torchvision-compatible name; torchvision builds GoogLeNet and Inception v3 with aux heads when weighted
TV_BUILDERS = {"googlenet": ("googlenet", {"aux_logits": True, "init_weights": True}),
               "inception_v3": ("inception_v3", {"aux_logits": True, "init_weights": True})}


@pytest.mark.parametrize("name", sorted(TORCHVISION_WEIGHTS))
def test_loads_torchvision_state_dict_key_for_key_and_computes_the_same(name):
    builder, kw = TV_BUILDERS.get(name, (name, {}))
    theirs = getattr(torchvision.models, builder)(weights=None, **kw).eval()
    ours = create_model(name).eval()
    sd_theirs, sd_ours = theirs.state_dict(), ours.state_dict()
    assert list(sd_ours) == list(sd_theirs)
    assert all(sd_ours[k].shape == sd_theirs[k].shape for k in sd_theirs)
    ours.load_state_dict(sd_theirs, strict=True)
    x = torch.randn(1, 3, 96, 96)  # adaptive pools make a small input enough, and keep the test fast
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)


# -- LeNet-5 ---------------------------------------------------------------------------------------------
def test_c3_table_is_table_one_of_the_paper():
    # The paper: the first six C3 maps read 3 contiguous S2 maps, the next six 4 contiguous, the next three
    # 4 discontinuous, the last all six (Sec. II.B).
    table = connection_table()
    for j in range(6):
        assert table[j] == sorted((j + d) % 6 for d in range(3))
    for j in range(6, 12):
        assert table[j] == sorted((j - 6 + d) % 6 for d in range(4))
    assert table[12:15] == [[0, 1, 3, 4], [1, 2, 4, 5], [0, 2, 3, 5]]
    assert table[15] == list(range(6))
    assert sum(len(t) for t in table) == 60 and len(C3_TABLE) == 6


def test_lenet5_layer_parameters_match_the_paper():
    m = create_model("lenet5")
    counts = {name: sum(p.numel() for p in mod.parameters()) for name, mod in m.named_children()}
    # Sec. II.B: C1 156, S2 12, C3 1,516, S4 32, C5 48,120, F6 10,164; the RBF prototypes are fixed.
    assert counts == {"c1": 156, "s2": 12, "c3": 1516, "s4": 32, "c5": 48120, "f6": 10164, "act": 0, "output": 0}
    assert n_params(create_model("lenet5", head="linear")) == 60_000 + 850


@pytest.mark.slow
def test_partial_conv_sums_only_the_connected_maps():
    m = create_model("lenet5")
    x = torch.randn(3, 6, 14, 14)
    w, b = m.c3.weight, m.c3.bias
    # reference: output map j is the sum over its input maps i in Table I of a 5x5 convolution, plus a bias
    ref = torch.zeros(3, 16, 10, 10)
    r = 0
    for j in range(16):
        for i in range(6):
            if C3_TABLE[i][j] == "X":
                ref[:, j] += F.conv2d(x[:, i:i + 1], w[r][None, None])[:, 0]
                r += 1
        ref[:, j] += b[j]
    assert r == w.shape[0] == 60
    torch.testing.assert_close(m.c3(x), ref, rtol=1e-5, atol=1e-5)
    mask = torch.tensor([[float(C3_TABLE[i][j] == "X") for i in range(6)] for j in range(16)])
    assert torch.equal((m.c3.dense_weight() != 0).float().amax(dim=(2, 3)), mask)


def test_lenet5_shapes_and_rbf_output():
    m = create_model("lenet5").eval()
    x = torch.randn(4, 1, 32, 32)
    out = m(x)
    # the RBF layer returns minus the squared distance to each prototype
    h = x
    for layer in ("c1", "s2", "c3", "s4", "c5"):
        h = m.act(getattr(m, layer)(h))
    f6 = m.act(m.f6(h.flatten(1)))
    ref = -((f6[:, None, :] - rbf_prototypes()[None]) ** 2).sum(-1)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-3)
    assert not any(p is m.output.prototypes for p in m.parameters())


def test_rbf_prototypes_are_distinct_7x12_bitmaps():
    assert all(len(rows) == 12 and all(len(r) == 7 for r in rows) for rows in DIGIT_BITMAPS.values())
    p = rbf_prototypes()
    assert p.shape == (10, 84) and set(p.unique().tolist()) == {-1.0, 1.0}
    hamming = ((p[:, None] != p[None]).sum(-1) + torch.eye(10, dtype=torch.long) * 99)
    assert hamming.min() >= 6  # far enough apart to tell the digits apart
    assert torch.equal(rbf_prototypes(5), rbf_prototypes(5))  # other class counts: fixed seed


def test_scaled_tanh_constants():
    f = ScaledTanh()
    torch.testing.assert_close(f(torch.tensor([1.0, -1.0, 0.0])), torch.tensor([1.0, -1.0, 0.0]), atol=2e-4, rtol=0)


def test_scaled_tanh_values_match_torch_tanh_over_the_whole_range():
    # computed through sigmoid; must stay the paper's A tanh(S a), saturating at +/-A without NaNs
    for dtype, tol in ((torch.float64, 1e-14), (torch.float32, 1e-6)):
        x = torch.cat([torch.linspace(-60, 60, 100_001, dtype=dtype), torch.tensor([-1e30, 1e30], dtype=dtype)])
        torch.testing.assert_close(ScaledTanh()(x), 1.7159 * torch.tanh(2 / 3 * x), rtol=0, atol=tol)


def test_scaled_tanh_hand_written_backward_matches_the_formula():
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(ScaledTanh(), (x,))
    torch.autograd.gradgradcheck(ScaledTanh(), (x,))  # saliency of saliency, Hessian-vector products
    g = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    (ours,) = torch.autograd.grad(ScaledTanh()(x), x, g)
    (ref,) = torch.autograd.grad(1.7159 * torch.tanh(2 / 3 * x), x, g)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.slow
def test_subsampling_is_pooling_times_a_coefficient_plus_a_bias_however_computed(monkeypatch):
    from cnnlab.models.lenet import Subsampling

    torch.manual_seed(0)
    layer = Subsampling(6).double()
    for size in (28, 9):  # an odd size drops the last row and column, as pooling does
        x = torch.randn(3, 6, size, size, dtype=torch.float64)
        x = x.contiguous(memory_format=torch.channels_last).requires_grad_()  # the layout of the fast path
        # the paper's definition, written out: the 2x2 block sums x coefficient / 4 + bias
        blocks = x[:, :, : size // 2 * 2, : size // 2 * 2].unfold(2, 2, 2).unfold(3, 2, 2).sum((-1, -2))
        ref = blocks * layer.weight.view(1, -1, 1, 1) / 4 + layer.bias.view(1, -1, 1, 1)
        g = torch.randn_like(ref)
        want = torch.autograd.grad(ref, (x, layer.weight, layer.bias), g)
        for fast in (True, False):  # the depthwise convolution (channels-last on a CPU), then pooling
            with monkeypatch.context() as m, (contextlib.nullcontext() if fast else textbook_ops()):
                if fast:
                    m.setattr(F, "avg_pool2d", None)  # the fast path must not pool
                out = layer(x)
            torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
            got = torch.autograd.grad(out, (x, layer.weight, layer.bias), g)
            for a, b in zip(got, want):
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for layout in (torch.contiguous_format, torch.channels_last):  # saliency of saliency, both paths
        x = torch.randn(2, 6, 4, 4, dtype=torch.float64).contiguous(memory_format=layout).requires_grad_()
        torch.autograd.gradgradcheck(layer, (x,))


def test_full_conv_is_a_convolution_computed_as_a_matrix_product():
    torch.manual_seed(0)
    fast, ref = FullConv2d(16, 120, 5), torch.nn.Conv2d(16, 120, 5)
    ref.load_state_dict(fast.state_dict())
    for size in (5, 9):  # the kernel's size (matrix product), and larger (ordinary convolution, 5x5 out)
        x = torch.randn(4, 16, size, size, requires_grad=True)
        out, out_ref = fast(x), ref(x)
        assert out.shape == out_ref.shape
        torch.testing.assert_close(out, out_ref, rtol=1e-5, atol=1e-5)
        g = torch.randn_like(out)
        grads = torch.autograd.grad(out, (x, fast.weight, fast.bias), g)
        grads_ref = torch.autograd.grad(out_ref, (x, ref.weight, ref.bias), g)
        for a, b in zip(grads, grads_ref):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_textbook_ops_run_the_full_conv_as_a_convolution():
    seen = []

    class Spy(torch.utils._python_dispatch.TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(func._overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    layer, x = FullConv2d(16, 120, 5), torch.randn(2, 16, 5, 5)
    with Spy():
        layer(x)
    assert "convolution" not in seen and "addmm" in seen
    seen.clear()
    with textbook_ops(), Spy():
        layer(x)
    assert "convolution" in seen


def test_lenet5_modern_structure():
    m = create_model("lenet5_modern")
    convs = [l for l in m.modules() if isinstance(l, torch.nn.Conv2d)]
    fcs = [l for l in m.modules() if isinstance(l, torch.nn.Linear)]
    assert [c.out_channels for c in convs] == [6, 16]
    assert [l.out_features for l in fcs] == [120, 84, 10]


# -- LRN and AlexNet --------------------------------------------------------------------------------------
def lrn_reference(a, n=5, alpha=1e-4, beta=0.75, k=2.0):
    """Krizhevsky et al. 2012, Sec. 3.3, written with loops."""
    a = a.numpy()
    b = np.empty_like(a)
    C = a.shape[1]
    for i in range(C):
        lo, hi = max(0, i - n // 2), min(C - 1, i + n // 2)
        b[:, i] = a[:, i] / (k + alpha * (a[:, lo:hi + 1] ** 2).sum(1)) ** beta
    return torch.from_numpy(b)


def test_lrn_uses_the_papers_alpha():
    x = torch.randn(2, 8, 3, 3) * 30  # large activations so alpha matters
    torch.testing.assert_close(LocalResponseNorm()(x), lrn_reference(x), rtol=1e-5, atol=1e-5)


def test_lrn_groups_normalise_each_tower_separately():
    x = torch.randn(1, 8, 2, 2) * 30
    y = LocalResponseNorm(groups=2)(x)
    torch.testing.assert_close(y[:, :4], lrn_reference(x[:, :4]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y[:, 4:], lrn_reference(x[:, 4:]), rtol=1e-5, atol=1e-5)


def feature_shapes(model, x):
    shapes = {}
    for name, layer in model.features.named_children():
        x = layer(x)
        shapes[name] = tuple(x.shape[1:])
    return shapes


@pytest.mark.slow
def test_alexnet_paper_volumes_and_towers():
    m = create_model("alexnet_paper").eval()
    s = feature_shapes(m, torch.randn(1, 3, 227, 227))
    assert s["conv1"] == (96, 55, 55) and s["pool1"] == (96, 27, 27)
    assert s["conv2"] == (256, 27, 27) and s["pool2"] == (256, 13, 13)
    assert s["conv3"] == (384, 13, 13) and s["conv5"] == (256, 13, 13) and s["pool5"] == (256, 6, 6)
    groups = {n: l.groups for n, l in m.features.named_children() if isinstance(l, torch.nn.Conv2d)}
    assert groups == {"conv1": 1, "conv2": 2, "conv3": 1, "conv4": 2, "conv5": 2}
    # a tower of conv2 sees only its own 48 maps: changing the other half of the input leaves it alone
    x = torch.randn(1, 96, 27, 27)
    y = x.clone()
    y[:, 48:] += 1
    a, b = m.features.conv2(x), m.features.conv2(y)
    assert torch.equal(a[:, :128], b[:, :128]) and not torch.equal(a[:, 128:], b[:, 128:])


@pytest.mark.slow
def test_alexnet_paper_initialisation():
    m = create_model("alexnet_paper")
    f, c = m.features, m.classifier
    assert torch.all(f.conv2.bias == 1) and torch.all(f.conv4.bias == 1) and torch.all(c.fc7.bias == 1)
    assert torch.all(f.conv1.bias == 0) and torch.all(f.conv3.bias == 0) and torch.all(c.fc8.bias == 0)
    assert abs(c.fc6.weight.std().item() - 0.01) < 1e-3


@pytest.mark.slow
def test_zfnet_volumes_follow_figure_3():
    m = create_model("zfnet").eval()
    s = feature_shapes(m, torch.randn(1, 3, 224, 224))
    assert s["conv1"] == (96, 110, 110) and s["pool1"] == (96, 55, 55)
    assert s["conv2"] == (256, 26, 26) and s["pool2"] == (256, 13, 13)
    assert s["conv5"] == (256, 13, 13) and s["pool5"] == (256, 6, 6)
    assert m.features.conv1.kernel_size == (7, 7) and m.features.conv1.stride == (2, 2)


def test_nin_cifar_maps_and_micro_networks():
    m = create_model("nin_cifar").eval()
    x = torch.randn(1, 3, 32, 32)
    s = feature_shapes(m, x)
    assert s["mlpconv1"] == (96, 32, 32) and s["pool1"] == (96, 16, 16) and s["pool2"] == (192, 8, 8)
    assert s["mlpconv3"] == (10, 8, 8)
    ones = [l for l in m.modules() if isinstance(l, torch.nn.Conv2d) and l.kernel_size == (1, 1)]
    assert len(ones) == 6 and not any(isinstance(l, torch.nn.Linear) for l in m.modules())
    # global average pooling is the classifier
    torch.testing.assert_close(m(x), m.features(x).mean((2, 3)))


def test_nin_imagenet_ends_in_a_6x6_map_of_class_scores():
    m = create_model("nin").eval()
    s = feature_shapes(m, torch.randn(1, 3, 224, 224))
    assert s["mlpconv1"] == (96, 54, 54) and s["pool1"] == (96, 27, 27) and s["mlpconv4"] == (1000, 6, 6)


def test_vgg_cifar_is_the_lecture_assignment():
    m = create_model("vgg_cifar")
    convs = [l for l in m.features if isinstance(l, torch.nn.Conv2d)]
    pools = [l for l in m.features if isinstance(l, torch.nn.MaxPool2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (3, 64), (64, 128), (128, 256), (256, 256), (256, 512), (512, 512), (512, 512), (512, 512)]
    assert all(c.kernel_size == (3, 3) and c.stride == (1, 1) and c.padding == (1, 1) for c in convs)
    assert len(pools) == 5 and all((p.kernel_size, p.stride, p.padding) == (3, 2, 1) for p in pools)
    kinds = [type(l).__name__ for l in m.features]
    assert kinds[:4] == ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"]
    assert (m.classifier.in_features, m.classifier.out_features) == (512, 10)


@pytest.mark.slow
def test_vgg_configuration_c_has_three_1x1_convolutions():
    m = create_model("vgg16_c")
    ks = [l.kernel_size for l in m.features if isinstance(l, torch.nn.Conv2d)]
    assert len(ks) == 13 and ks.count((1, 1)) == 3
    lrn = [l for l in create_model("vgg11_lrn").features if isinstance(l, LocalResponseNorm)]
    assert len(lrn) == 1
