"""DenseNet and FractalNet against their papers, torchvision, and hand-written references."""

import pytest
import torch
import torchvision

from cnnlab import create_model, model_card
from cnnlab.analysis.fidelity import fidelity
from cnnlab.models.densenet import DenseBlock, DenseNet
from cnnlab.models.fractalnet import FractalBlock

SMALL = (8, 8, 16, 16, 16)  # narrow FractalNet filters: the same wiring, quick to build and run on a CPU

TORCHVISION = {  # name: torchvision weights enum, whose metadata gives the exact parameter count
    "densenet121": "DenseNet121_Weights", "densenet161": "DenseNet161_Weights",
    "densenet169": "DenseNet169_Weights", "densenet201": "DenseNet201_Weights",
}
CIFAR_TABLE2_MILLIONS = {"densenet40": 1.0, "densenet_bc100": 0.8}  # Huang et al. 2017, Table 2


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def meta_model(name, **kw):
    with torch.device("meta"):
        return create_model(name, **kw)


def tv_meta(name):
    return getattr(torchvision.models, TORCHVISION[name]).IMAGENET1K_V1.meta


# -- DenseNet ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_parameter_counts_are_exact(name):
    assert n_params(meta_model(name)) == tv_meta(name)["num_params"]


@pytest.mark.parametrize("name,millions", CIFAR_TABLE2_MILLIONS.items())
def test_cifar_parameters_reproduce_table_2(name, millions):
    assert round(n_params(meta_model(name)) / 1e5) / 10 == millions


@pytest.mark.parametrize("name", TORCHVISION)
def test_card_figures_are_torchvision_metadata_and_agree(name):
    meta = tv_meta(name)
    figs = {f.metric: f.value for f in model_card(name).figures}
    assert figs["params"] == meta["num_params"]
    assert figs["macs"] == pytest.approx(meta["_ops"] * 1e9)
    assert figs["top1_acc"] == meta["_metrics"]["ImageNet-1K"]["acc@1"]
    assert figs["top5_acc"] == meta["_metrics"]["ImageNet-1K"]["acc@5"]


@pytest.mark.slow
def test_fidelity_of_computable_figures():
    rows = [r for r in fidelity(list(TORCHVISION) + list(CIFAR_TABLE2_MILLIONS)) if r.ours is not None]
    assert len(rows) == 2 * len(TORCHVISION) + len(CIFAR_TABLE2_MILLIONS)
    assert all(r.agrees for r in rows), [(r.model, r.figure.metric, r.ours) for r in rows if not r.agrees]


def test_densenet264_is_table_1():
    m = meta_model("densenet264")
    f = m.features
    blocks = [getattr(f, f"denseblock{i}") for i in range(1, 5)]
    assert [len(list(b.children())) for b in blocks] == [6, 12, 64, 48]
    assert f.conv0.out_channels == 64 and f.conv0.kernel_size == (7, 7)  # 2k
    # each block adds 32 maps a layer; each transition halves them (theta = 0.5)
    assert [b.out_channels for b in blocks] == [64 + 6 * 32, 128 + 12 * 32, 256 + 64 * 32, 1152 + 48 * 32]
    assert [getattr(f, f"transition{i}").conv.out_channels for i in range(1, 4)] == [128, 256, 1152]
    assert m.classifier.in_features == 2688
    assert all(layer.conv1.out_channels == 128 for b in blocks for layer in b.children())  # 4k bottleneck


@pytest.mark.parametrize("name,c0,k,layers", [("densenet121", 64, 32, (6, 12, 24, 16)),
                                              ("densenet40", 16, 12, (12, 12, 12)),
                                              ("densenet_bc100", 24, 12, (16, 16, 16))])
def test_each_layer_reads_the_block_input_plus_i_times_k(name, c0, k, layers):
    m = meta_model(name)
    c = c0
    for b, n in enumerate(layers, 1):
        block = getattr(m.features, f"denseblock{b}")
        ins = [layer.norm1.num_features for layer in block.children()]
        assert ins == [c + i * k for i in range(n)]
        c = block.out_channels
        if b < len(layers):
            c = getattr(m.features, f"transition{b}").conv.out_channels


@pytest.mark.parametrize("bottleneck", [False, True])
def test_dense_connectivity_is_concatenation_of_all_earlier_maps(bottleneck):
    block = DenseBlock(4, in_channels=5, growth_rate=3, bottleneck=bottleneck, drop_rate=0.0,
                       memory_efficient=False, paper_dropout=False).eval()
    layers = list(block.children())
    seen_inputs, outputs = [], []
    hooks = [layer.norm1.register_forward_pre_hook(lambda m, a: seen_inputs.append(a[0].clone()))
             for layer in layers]
    hooks += [layer.register_forward_hook(lambda m, a, out: outputs.append(out)) for layer in layers]
    x = torch.randn(2, 5, 6, 6)
    with torch.no_grad():
        y = block(x)
    for h in hooks:
        h.remove()
    for i in range(4):
        assert torch.equal(seen_inputs[i], torch.cat([x] + outputs[:i], 1))  # H_i([x_0, ..., x_{i-1}])
        assert outputs[i].shape[1] == 3
    assert torch.equal(y, torch.cat([x] + outputs, 1)) and y.shape[1] == 5 + 4 * 3


@pytest.mark.slow
def test_memory_efficient_gives_the_same_outputs_and_gradients():
    def small(memory_efficient):  # densenet_bc100's modules, fewer and narrower
        return DenseNet(4, (3, 3), 8, bottleneck=True, compression=0.5, stem="cifar", num_classes=10,
                        memory_efficient=memory_efficient, paper_dropout=True)

    plain, saving = small(False), small(True)
    saving.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 16, 16)
    outs, grads = [], []
    for m in (plain, saving):
        out = m(x)
        out.square().sum().backward()
        outs.append(out.detach())
        grads.append(m.features.denseblock1.denselayer1.conv1.weight.grad)
    torch.testing.assert_close(outs[0], outs[1])
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.slow
def test_cifar_dropout_follows_every_conv_but_the_first():
    m = meta_model("densenet_bc100", drop_rate=0.2)
    assert m.features.transition1.drop_rate == 0.2 and m.features.denseblock1.denselayer1.paper_dropout
    assert meta_model("densenet121", drop_rate=0.2).features.transition1.drop_rate == 0  # torchvision's placement
    m = DenseNet(4, (2, 2), 8, stem="cifar", drop_rate=0.2, num_classes=10, paper_dropout=True)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert not torch.equal(m(x), m(x))
        m.eval()
        assert torch.equal(m(x), m(x))


# -- FractalNet -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,C,depth", [("fractalnet20", 3, 20), ("fractalnet40", 4, 40)])
def test_fractal_structure(name, C, depth):
    m = meta_model(name)
    assert len(m.blocks) == 5 and m.depth == depth
    for block, width in zip(m.blocks, (64, 128, 256, 512, 512)):
        convs = [x for x in block.modules() if isinstance(x, torch.nn.Conv2d)]
        assert len(convs) == 2 ** C - 1 and all(c.out_channels == width for c in convs)
        assert [len(col) for col in block.columns] == [2 ** c for c in range(C)]
        assert max(len(col) for col in block.columns) == 2 ** (C - 1)  # the longest path through a block
    assert m.classifier.in_features == 512


def test_joins_merge_every_column_that_ends_at_the_same_depth():
    assert FractalBlock(1, 1, 3).joins() == [[1, 2], [0, 1, 2]]
    assert FractalBlock(1, 1, 4).joins() == [[2, 3], [1, 2, 3], [2, 3], [0, 1, 2, 3]]


@pytest.mark.slow
def test_eval_is_deterministic_and_the_mean_join_by_hand():
    block = FractalBlock(2, 3, 3).eval()
    c0, c1, c2 = block.columns
    x = torch.randn(2, 2, 5, 5)
    with torch.no_grad():
        # f_3(z) = join(f_2(f_2(z)), conv(z)) with f_2(z) = join(conv(conv(z)), conv(z)), joins merged per depth
        j1 = (c2[1](c2[0](x)) + c1[0](x)) / 2
        ref = (c2[3](c2[2](j1)) + c1[1](j1) + c0[0](x)) / 3
        out = block(x)
        torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
        assert torch.equal(block(x), out)
    m = create_model("fractalnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(m(x), m(x))


def test_local_drop_path_never_drops_every_input_of_a_join():
    m = create_model("fractalnet20", local_drop_prob=0.9, widths=SMALL)
    m.generator = torch.Generator().manual_seed(0)
    masks = [m._local_mask(n) for n in (2, 3, 4) for _ in range(200)]
    assert all(any(k) for k in masks)
    assert any(sum(k) == 1 for k in masks) and any(sum(k) > 1 for k in masks)  # really random


@pytest.mark.slow
def test_training_drop_path_varies_outputs_and_eval_does_not():
    m = create_model("fractalnet20", global_ratio=0.0, widths=SMALL)  # local drop-path only
    m.generator = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 32, 32)
    recorded = []
    local_mask = m._local_mask
    m._local_mask = lambda n: recorded.append(local_mask(n)) or recorded[-1]
    with torch.no_grad():
        outs = [m(x) for _ in range(4)]
    assert m.last_drop == "local" and len(recorded) == 4 * 5 * 2  # 5 blocks of 2 joins, every pass
    assert all(any(k) for k in recorded) and not all(all(k) for k in recorded)
    assert any(not torch.equal(outs[0], o) for o in outs[1:])
    m = create_model("fractalnet20", drop_path=False, widths=SMALL)  # training without drop-path uses every path
    assert m(x).shape == (4, 10) and m.last_drop is None


@pytest.mark.slow
def test_global_drop_path_is_exactly_one_column():
    m = create_model("fractalnet20", global_ratio=1.0, widths=SMALL)
    m.generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 32, 32)
    chosen = set()
    with torch.no_grad():
        for _ in range(6):
            out = m(x)
            c = m.last_drop
            assert isinstance(c, int)
            chosen.add(c)
            torch.testing.assert_close(out, m(x, column=c), rtol=0, atol=0)  # that column alone
    assert len(chosen) > 1


@pytest.mark.slow
def test_single_column_extraction():
    m = create_model("fractalnet20", widths=SMALL).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        deepest = m(x, column=-1)
        h = x
        for block in m.blocks:
            h = m.pool(block.columns[2](h))  # a plain 20-layer conv net
        torch.testing.assert_close(deepest, m.classifier(h.flatten(1)), rtol=0, atol=0)
        extracted = create_model("fractalnet20", column=2, widths=SMALL).eval()
        extracted.load_state_dict(m.state_dict())
        assert torch.equal(extracted(x), deepest)  # the option, the attribute and the argument agree
        assert not torch.equal(m(x, column=0), m(x))


def test_dropout_is_one_rate_per_block():
    m = meta_model("fractalnet20", dropout=(0.0, 0.1, 0.2, 0.3, 0.4))
    rates = [[d.p for d in b.modules() if isinstance(d, torch.nn.Dropout)] for b in m.blocks]
    assert rates == [[], [0.1] * 7, [0.2] * 7, [0.3] * 7, [0.4] * 7]
    with pytest.raises(ValueError, match="one rate per block"):
        meta_model("fractalnet20", dropout=(0.1, 0.2))


@pytest.mark.parametrize("name", ["fractalnet20", "fractalnet40"])
def test_fractalnet_forward_at_32x32(name):
    m = create_model(name).eval()
    with torch.no_grad():
        out = m(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
