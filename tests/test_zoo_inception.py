"""Inception-v3 (torchvision), Inception-v4 and Inception-ResNet-v2 against their published numbers."""

import pytest
import torch
import torchvision
from torch import nn

from cnnlab import create_model, model_card
from cnnlab.analysis.summary import summary
from cnnlab.models.inception import RESNET_A, InceptionResNetBlock, make_layer
from cnnlab.models.layers import InceptionOutputs

NAMES = ["inception_v3", "inception_v4", "inception_resnet_v2"]
EXACT_PARAMS = [
    ("inception_v3", {}, 27_161_264),  # torchvision, with the auxiliary head
    ("inception_v3", {"aux_logits": False}, 23_834_568),  # torchvision without it
    ("inception_v4", {}, 42_679_816),  # timm
    ("inception_resnet_v2", {}, 55_843_464),  # timm, the released TF-slim network
]


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def v4():
    return create_model("inception_v4").eval()


@pytest.fixture(scope="module")
def irv2():
    return create_model("inception_resnet_v2").eval()


@pytest.mark.parametrize("name,options,count", EXACT_PARAMS)
def test_exact_parameter_counts(name, options, count):
    with torch.device("meta"):
        assert n_params(create_model(name, **options)) == count


@pytest.mark.parametrize("name", NAMES)
def test_summary_runs_and_params_figure_agrees(name):
    s = summary(name)
    assert s.total_params == model_card(name).figure("params").value
    assert s.input_size == (3, 299, 299) and s.total_macs > 5e9


def test_inception_v3_macs_match_torchvision_metadata():
    assert round(summary("inception_v3").total_macs / 1e6) == 5713  # 5.713 GMACs


# -- Inception-v3 against torchvision -----------------------------------------------------------------------
@pytest.mark.slow
def test_inception_v3_loads_torchvision_state_dict_and_computes_the_same():
    theirs = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=True)
    ours = create_model("inception_v3")
    sd_theirs, sd_ours = theirs.state_dict(), ours.state_dict()
    assert list(sd_ours) == list(sd_theirs)
    assert all(sd_ours[k].shape == sd_theirs[k].shape for k in sd_theirs)
    ours.load_state_dict(sd_theirs, strict=True)
    with torch.no_grad():
        x = torch.randn(1, 3, 299, 299)
        torch.testing.assert_close(ours.eval()(x), theirs.eval()(x), rtol=0, atol=1e-6)
        # training mode: batch statistics, dropout (same seed) and the auxiliary head
        x = torch.randn(2, 3, 299, 299)
        torch.manual_seed(1)
        out_theirs = theirs.train()(x)
        torch.manual_seed(1)
        out_ours = ours.train()(x)
    assert type(out_ours)._fields == type(out_theirs)._fields == ("logits", "aux_logits")
    for mine, theirs in zip(out_ours, out_theirs):  # the same outputs by position and by name
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-5)
    torch.testing.assert_close(out_ours.aux, out_theirs.aux_logits, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_inception_v3_transform_input_matches_torchvision():
    theirs = torchvision.models.inception_v3(weights=None, aux_logits=False, transform_input=True,
                                             init_weights=False).eval()
    ours = create_model("inception_v3", aux_logits=False, transform_input=True).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(1, 3, 107, 107)  # the adaptive pool takes anything from 75x75 up in eval mode
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


# Shapes and return types only: the meta device runs them without computing (or initialising) anything.
@pytest.mark.slow
def test_inception_v3_outputs_by_mode_and_num_classes():
    with torch.device("meta"):
        m = create_model("inception_v3", num_classes=10)
        x = torch.randn(2, 3, 299, 299)  # the aux head needs the 17x17 grid of a 299x299 input
        train_out = m.train()(x)
        eval_out = m.eval()(x)
    assert m.fc.out_features == 10 and m.AuxLogits.fc.out_features == 10
    assert isinstance(train_out, InceptionOutputs) and train_out.aux_weights == (0.4,)
    assert train_out.logits.shape == (2, 10) and train_out.aux.shape == (2, 10)
    assert isinstance(eval_out, torch.Tensor) and not isinstance(eval_out, tuple) and eval_out.shape == (2, 10)


def test_inception_v3_without_aux_returns_a_tensor_in_training():
    with torch.device("meta"):
        m = create_model("inception_v3", aux_logits=False, num_classes=5).train()
        out = m(torch.randn(2, 3, 96, 96))
    assert m.AuxLogits is None
    assert isinstance(out, torch.Tensor) and out.shape == (2, 5)


# -- Inception-v4 and Inception-ResNet-v2 --------------------------------------------------------------------
def grid_shapes(model, names, x):
    """Per-image output shape of each named sub-module, from forward hooks removed afterwards."""
    shapes, handles = {}, []
    for name in names:
        def hook(_module, _inputs, output, name=name):
            shapes[name] = tuple(output.shape[1:])
        handles.append(model.get_submodule(name).register_forward_hook(hook))
    try:
        with torch.no_grad():
            out = model(x)
    finally:
        for h in handles:
            h.remove()
    return out, shapes


@pytest.mark.slow
def test_inception_v4_grid(v4):
    out, shapes = grid_shapes(v4, ["stem", "inception_a", "reduction_a", "inception_b", "reduction_b",
                                   "inception_c"], torch.randn(1, 3, 299, 299))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()
    assert shapes == {"stem": (384, 35, 35), "inception_a": (384, 35, 35), "reduction_a": (1024, 17, 17),
                      "inception_b": (1024, 17, 17), "reduction_b": (1536, 8, 8), "inception_c": (1536, 8, 8)}
    assert [len(v4.inception_a), len(v4.inception_b), len(v4.inception_c)] == [4, 7, 3]  # Fig. 9


@pytest.mark.slow
def test_inception_resnet_v2_grid(irv2):
    out, shapes = grid_shapes(irv2, ["stem", "reduction_a", "reduction_b", "inception_resnet_c", "conv"],
                              torch.randn(1, 3, 299, 299))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()
    assert shapes == {"stem": (320, 35, 35), "reduction_a": (1088, 17, 17), "reduction_b": (2080, 8, 8),
                      "inception_resnet_c": (2080, 8, 8), "conv": (1536, 8, 8)}


def test_no_auxiliary_heads_and_other_class_counts():
    with torch.device("meta"):
        for name in ("inception_v4", "inception_resnet_v2"):
            m = create_model(name, num_classes=10).train()
            assert m.fc.out_features == 10
            assert not any("aux" in n.lower() for n, _ in m.named_modules())


def test_inception_resnet_v2_block_counts_and_scales():
    with torch.device("meta"):
        m = create_model("inception_resnet_v2")
        paper = create_model("inception_resnet_v2", blocks=(5, 10, 5))  # Fig. 15's counts
    stages = (m.inception_resnet_a, m.inception_resnet_b, m.inception_resnet_c)
    assert [len(s) for s in stages] == [10, 20, 10]
    assert [len(s) for s in (paper.inception_resnet_a, paper.inception_resnet_b, paper.inception_resnet_c)] \
        == [5, 10, 5]
    assert {b.scale for b in m.inception_resnet_a} == {0.17} and {b.scale for b in m.inception_resnet_b} == {0.10}
    assert [b.scale for b in m.inception_resnet_c] == [0.20] * 9 + [1.0]
    assert all(isinstance(b.relu, nn.ReLU) for b in m.inception_resnet_c[:-1])
    assert isinstance(m.inception_resnet_c[-1].relu, nn.Identity)
    up = m.inception_resnet_a[0].up  # the 1x1 "Linear" projection: a bias, no BatchNorm after it
    assert up.bias is not None and up.kernel_size == (1, 1)


@pytest.mark.slow
def test_residual_scale_is_applied():
    block = InceptionResNetBlock(320, RESNET_A, scale=0.17).eval()
    x = torch.randn(1, 320, 35, 35)
    with torch.no_grad():
        residual = block.up(block.branches(x))
        torch.testing.assert_close(block(x), torch.relu(x + 0.17 * residual))
        block.scale = 0.0
        torch.testing.assert_close(block(x), torch.relu(x), rtol=0, atol=0)
        last = InceptionResNetBlock(320, RESNET_A, scale=0.0, relu=False).eval()
        torch.testing.assert_close(last(x), x, rtol=0, atol=0)


def test_layer_notation():
    conv, c = make_layer(8, "1x7", 16)
    assert c == 16 and conv.conv.kernel_size == (1, 7) and conv.conv.padding == (0, 3)
    assert conv.conv.bias is None and conv.bn.eps == 0.001
    conv, _ = make_layer(8, "3x3/2 V", 16)
    assert conv.conv.stride == (2, 2) and conv.conv.padding == (0, 0)
    pool, c = make_layer(8, "avg 3x3", None)
    assert c == 8 and pool.count_include_pad is False and pool.padding == (1, 1)
