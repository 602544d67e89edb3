"""GoogLeNet and the ResNet family against the papers' tables, torchvision, and hand computation."""

import pytest
import torch
import torch.nn.functional as F
import torchvision

from cnnlab import CnnlabError, create_model, model_card, summary
from cnnlab.analysis.paper_tables import paper_table_rows, render_paper_table
from cnnlab.models.googlenet import INCEPTION, TABLE1
from cnnlab.models.layers import GoogLeNetOutputs, ResidualBlock, linear_drop_probs
from cnnlab.models.registry import model_options
from cnnlab.models.resnet import ZeroPadShortcut
from cnnlab.train.trainer import classification_loss


def n_params(name, **kw):
    with torch.device("meta"):
        return sum(p.numel() for p in create_model(name, **kw).parameters())


# -- torchvision compatibility ---------------------------------------------------------------------------
TORCHVISION = {  # our name -> (torchvision builder, its weights enum)
    "resnet18": ("resnet18", "ResNet18_Weights"), "resnet34": ("resnet34", "ResNet34_Weights"),
    "resnet50": ("resnet50", "ResNet50_Weights"), "resnet101": ("resnet101", "ResNet101_Weights"),
    "resnet152": ("resnet152", "ResNet152_Weights"),
    "resnext50_32x4d": ("resnext50_32x4d", "ResNeXt50_32X4D_Weights"),
    "resnext101_32x8d": ("resnext101_32x8d", "ResNeXt101_32X8D_Weights"),
    "wide_resnet50_2": ("wide_resnet50_2", "Wide_ResNet50_2_Weights"),
    "wide_resnet101_2": ("wide_resnet101_2", "Wide_ResNet101_2_Weights"),
    "googlenet": ("googlenet", "GoogLeNet_Weights"),
}


@pytest.mark.parametrize("name", TORCHVISION)
def test_parameter_count_and_card_match_torchvision_metadata(name):
    _builder, weights = TORCHVISION[name]
    meta = getattr(torchvision.models, weights).IMAGENET1K_V1.meta
    kw = {"aux_logits": False} if name.startswith("googlenet") else {}
    assert n_params(name, **kw) == meta["num_params"]
    card = model_card(name)
    assert card.figure("params").value == meta["num_params"]
    assert card.figure("macs").value == pytest.approx(meta["_ops"] * 1e9)
    assert card.figure("top1_acc").value == meta["_metrics"]["ImageNet-1K"]["acc@1"]
    # our inspector's count agrees with torchvision's published GFLOPS to its 3 decimals
    assert summary(name, **kw).total_macs / 1e9 == pytest.approx(meta["_ops"], abs=5e-4)


@pytest.mark.slow
def test_googlenet_train_mode_matches_torchvision_aux_outputs():
    theirs = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True).train()
    ours = create_model("googlenet").train()
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 3, 96, 96)  # torchvision's aux heads pool adaptively, so a small input is enough
    torch.manual_seed(1)
    a = ours(x)
    torch.manual_seed(1)
    b = theirs(x)
    # a drop-in: torchvision's field names, and the same heads by position (code unpacks them as a tuple)
    assert type(a)._fields == type(b)._fields == ("logits", "aux_logits2", "aux_logits1")
    for mine, theirs in zip(a, b):
        torch.testing.assert_close(mine, theirs)
    torch.testing.assert_close(a.aux1, b.aux_logits1)  # the earlier names still work


# -- ResNet: the paper's Table 1 ------------------------------------------------------------------------------
TABLE1_GFLOPS = {18: 1.8, 34: 3.6, 50: 3.8, 101: 7.6, 152: 11.3}


@pytest.mark.parametrize("depth", [18, 34, 101, 152])
def test_paper_placement_reproduces_table_1_multiply_adds(depth):
    name = f"resnet{depth}_paper" if depth >= 50 else f"resnet{depth}"
    kw = {"shortcut": "A"} if depth < 50 else {}
    assert round(summary(name, **kw).total_macs / 1e9, 1) == TABLE1_GFLOPS[depth]


def test_resnet50_paper_is_the_one_table_1_figure_that_does_not_round():
    # 3.86 G: documented on the card; if this changes, the card's note must change too
    macs = summary("resnet50_paper").total_macs
    assert macs == 3_857_973_248 and round(macs / 1e9, 1) == 3.9
    assert "3.86" in model_card("resnet50_paper").figure("macs").note
    assert round(summary("resnet50").total_macs / 1e9, 2) == 4.09  # v1.5 costs more


def test_stride_placement_v1_and_v15():
    v1, v15 = create_model("resnet50_paper"), create_model("resnet50")
    for stage in ("layer2", "layer3", "layer4"):
        a, b = getattr(v1, stage)[0], getattr(v15, stage)[0]
        assert (a.conv1.stride, a.conv2.stride) == ((2, 2), (1, 1))
        assert (b.conv1.stride, b.conv2.stride) == ((1, 1), (2, 2))
    assert list(v1.state_dict()) == list(v15.state_dict())


def test_plain_nets_are_the_resnets_without_shortcuts():
    projections = sum(n_params(f"resnet{d}") - n_params(f"plain{d}") for d in (18, 34))
    # the three projection shortcuts (conv + BN) of each: 64->128, 128->256, 256->512
    one = 64 * 128 + 2 * 128 + 128 * 256 + 2 * 256 + 256 * 512 + 2 * 512
    assert projections == 2 * one
    m = create_model("plain18").eval()
    block = m.layer1[0]
    x = torch.randn(1, 64, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x), F.relu(block.branch(x)))
    with pytest.raises(CnnlabError, match="plain"):
        create_model("plain18", shortcut="B")


def test_shortcut_options_a_b_c():
    a, b, c = (n_params("resnet34", shortcut=s) for s in "ABC")
    assert b - a == 64 * 128 + 128 * 256 + 256 * 512 + 2 * (128 + 256 + 512)  # projections only where shapes change
    assert c > b
    assert n_params("resnet34", shortcut="A") == n_params("plain34")


def test_option_a_shortcut_subsamples_and_pads_with_zeros():
    x = torch.randn(2, 16, 8, 8)
    y = ZeroPadShortcut(16, 2)(x)
    assert y.shape == (2, 32, 4, 4)
    torch.testing.assert_close(y[:, :16], x[:, :, ::2, ::2])
    assert not y[:, 16:].any()


# -- CIFAR ResNets, plain twins, WRN ------------------------------------------------------------------------
def cifar_resnet_params(n, classes=10):
    """6n + 2 layers, counted by hand: 3x3 convs without bias, BN (2 per channel), FC with bias."""
    total = 3 * 16 * 9 + 2 * 16
    cin = 16
    for width in (16, 32, 64):
        for b in range(n):
            total += cin * width * 9 + width * width * 9 + 4 * width
            cin = width
    return total + 64 * classes + classes


@pytest.mark.parametrize("depth,n,millions", [(20, 3, 0.27), (32, 5, 0.46), (44, 7, 0.66), (56, 9, 0.85),
                                              (110, 18, 1.7),
                                              pytest.param(1202, 200, 19.4, marks=pytest.mark.slow)])
def test_cifar_resnets_match_table_6(depth, n, millions):
    count = n_params(f"resnet{depth}")
    assert count == cifar_resnet_params(n)
    digits = 2 if millions < 1 else 1
    assert round(count / 1e6, digits) == millions
    if depth != 1202:
        assert n_params(f"plain{depth}") == count  # option A adds no parameters


def test_cifar_resnet_shapes_and_plain_twin():
    m = create_model("resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    h = F.relu(m.bn1(m.conv1(x)))
    shapes = []
    for stage in (m.layer1, m.layer2, m.layer3):
        h = stage(h)
        shapes.append(tuple(h.shape[1:]))
    assert shapes == [(16, 32, 32), (32, 16, 16), (64, 8, 8)]
    p = create_model("plain20").eval()
    assert all(b.shortcut is None and not b.residual for s in (p.layer1, p.layer2, p.layer3) for b in s)


@pytest.mark.parametrize("name,millions", [("wrn16_4", 2.7), ("wrn28_10", 36.5), ("wrn40_4", 8.9)])
def test_wide_resnets_match_the_paper(name, millions):
    assert round(n_params(name) / 1e6, 1) == millions


def test_wide_block_is_pre_activation_with_dropout():
    m = create_model("wrn16_4", dropout=0.3)
    block = m.layer2[0]
    assert block.bn1.num_features == 64 and block.conv1.stride == (2, 2) and block.shortcut is not None
    assert block.dropout.p == 0.3
    assert m.layer1[0].shortcut is not None  # 16 -> 64 channels: projection
    assert m.fc.in_features == 256


@pytest.mark.parametrize("name,options", [
    ("resnet18", {}), ("resnet50", {}), ("plain18", {}), ("resnet20", {}), ("plain20", {}), ("wrn16_4", {}),
    ("inception_resnet_v2", {"blocks": (1, 1, 1)}),
])
def test_residual_blocks_share_one_forward(name, options):
    with torch.device("meta"):
        m = create_model(name, **options)
    blocks = [b for b in m.modules() if isinstance(b, ResidualBlock)]
    assert blocks and all(type(b).forward is ResidualBlock.forward for b in blocks)
    assert not any(b.may_skip_parameters for b in blocks)
    if "drop_path_rate" in model_options(name) and not name.startswith("plain"):
        # stochastic depth tells distributed training that a step may leave parameters unused (WRN's block
        # once did not say so)
        with torch.device("meta"):
            m = create_model(name, **options, drop_path_rate=0.2)
        assert all(b.may_skip_parameters for b in m.modules() if isinstance(b, ResidualBlock))


# -- stochastic depth ----------------------------------------------------------------------------------------
def test_linear_decay_rule():
    probs = linear_drop_probs(54, 0.5)
    assert probs[-1] == 0.5 and probs[0] == pytest.approx(0.5 / 54)
    m = create_model("resnet110_sd")
    blocks = [b for s in (m.layer1, m.layer2, m.layer3) for b in s]
    assert len(blocks) == 54 and [b.drop_prob for b in blocks] == probs


@pytest.mark.slow
def test_drop_path_is_active_in_training_and_scaled_in_eval():
    m = create_model("resnet20", drop_path_rate=0.9)
    block = m.layer3[-1]  # drop probability 0.9
    x = torch.randn(2, 64, 8, 8)
    block.eval()
    with torch.no_grad():
        expected = F.relu(block.branch(x) * (1 - block.drop_prob) + x)
        torch.testing.assert_close(block(x), expected)
        torch.testing.assert_close(block(x), block(x))
    block.train()
    torch.manual_seed(0)
    with torch.no_grad():
        outs = [block(x) for _ in range(200)]
    dropped = sum(torch.equal(o, F.relu(x)) for o in outs)
    assert 150 <= dropped <= 200  # binomial(200, 0.9): mean 180, sd 4.2
    assert dropped < 200


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_dropped_branch_leaves_the_block_input_alone_and_trains(name):
    # The in-place ReLU after the sum once wrote into the block's input when the branch was dropped and the
    # shortcut was the identity: the caller's tensor changed and backward failed (a saved tensor modified).
    m = create_model(name, drop_path_rate=0.9).train()
    block = m.layer4[-1]  # drop probability 0.9, identity shortcut
    x = torch.randn(2, block.conv1.in_channels, 4, 4)
    before = x.clone()
    torch.manual_seed(0)
    outs = [block(x) for _ in range(20)]
    assert any(torch.equal(o, F.relu(before)) for o in outs) and torch.equal(x, before)
    torch.manual_seed(0)
    for _ in range(3):
        m(torch.randn(2, 3, 64, 64)).sum().backward()


@pytest.mark.slow
def test_drop_path_on_imagenet_resnets_and_eval_equals_no_drop_when_rate_zero():
    m = create_model("resnet18", drop_path_rate=0.2).eval()
    blocks = [b for s in (m.layer1, m.layer2, m.layer3, m.layer4) for b in s]
    assert [round(b.drop_prob, 3) for b in blocks] == [round(0.2 * (i + 1) / 8, 3) for i in range(8)]
    ref = create_model("resnet18").eval()
    ref.load_state_dict(m.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(m(x), ref(x))  # eval scales branches by their survival probability


# -- GoogLeNet -------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_googlenet_inception_table_and_output_widths():
    m = create_model("googlenet_paper")
    widths = {k: getattr(m, f"inception{k}").out_channels for k in INCEPTION}
    assert widths == {"3a": 256, "3b": 480, "4a": 512, "4b": 512, "4c": 512, "4d": 528, "4e": 832,
                      "5a": 832, "5b": 1024}  # Table 1's output depths
    assert m.inception3a.branch3[1].conv.kernel_size == (5, 5)  # the paper's real 5x5
    assert create_model("googlenet").inception3a.branch3[1].conv.kernel_size == (3, 3)  # torchvision's
    assert m.dropout.p == 0.4 and m.aux1.dropout.p == 0.7
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules())


def test_googlenet_table_1_recomputed():
    assert model_card("googlenet_paper").paper_table.rows == TABLE1  # the card carries the table as printed
    rows = {r["row"]: r for r in paper_table_rows("googlenet_paper")}
    assert set(rows) == set(TABLE1)
    # inception 3a by hand: weights of its six convolutions, without biases
    w3a = 192 * 64 + 192 * 96 + 96 * 128 * 9 + 192 * 16 + 16 * 32 * 25 + 192 * 32
    assert rows["inception3a"]["params_k"] * 1024 == w3a == 163_328
    assert rows["inception3a"]["ops_m"] * 1e6 == pytest.approx(w3a * 28 * 28)
    ops_ok = {r for r in rows if rows[r]["ops_agree"]}
    params_ok = {r for r in rows if rows[r]["params_agree"]}
    # the paper's own layer list reproduces its ops column except conv1 and 5a, and its params column
    # except conv1, 4c, 4d, 5a, 5b; the rendered table flags exactly these
    assert set(rows) - ops_ok == {"conv1", "inception5a"}
    assert set(rows) - params_ok == {"conv1", "inception4c", "inception4d", "inception5a", "inception5b"}
    text = render_paper_table("googlenet_paper")
    assert sum("  <- " in line for line in text.splitlines()) == 5


def test_googlenet_summary_prints_table_1(golden):
    import contextlib
    import io

    from cnnlab.cli import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["summary", "googlenet_paper", "--depth", "1"]) in (0, None)
    out = buf.getvalue()
    assert "Table 1" in out and "K = 1024" in out
    golden("googlenet_table1.txt", render_paper_table("googlenet_paper") + "\n")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["googlenet_paper", "googlenet"])
def test_aux_outputs_in_training_and_logits_in_eval(name):
    m = create_model(name, num_classes=7)
    x = torch.randn(2, 3, 224, 224)
    out = m.train()(x)
    assert isinstance(out, GoogLeNetOutputs) and out.aux_weights == (0.3, 0.3)
    assert out.logits.shape == out.aux1.shape == out.aux2.shape == (2, 7)
    with torch.no_grad():
        assert isinstance(m.eval()(x), torch.Tensor)
    m = create_model(name, aux_logits=False).train()
    assert isinstance(m(x), torch.Tensor)


def test_trainer_weights_the_auxiliary_losses_as_the_paper():
    logits, a1, a2 = torch.randn(4, 10), torch.randn(4, 10), torch.randn(4, 10)
    y = torch.tensor([1, 2, 3, 4])
    loss, main = classification_loss(GoogLeNetOutputs(logits, a1, a2), y, 0.0)
    expected = F.cross_entropy(logits, y) + 0.3 * F.cross_entropy(a1, y) + 0.3 * F.cross_entropy(a2, y)
    torch.testing.assert_close(loss, expected)
    assert main is logits


@pytest.mark.slow
def test_googlenet_paper_aux_head_pools_5x5_stride_3():
    m = create_model("googlenet_paper")
    x = torch.randn(1, 512, 14, 14)
    assert F.avg_pool2d(x, 5, stride=3).shape[-1] == 4
    assert m.aux1.fc1.in_features == 128 * 4 * 4 and m.aux2.conv.conv.in_channels == 528
