"""cnnlab.scratch: every layer's backward against central finite differences and torch autograd (float64), the
pooling matrix, the MNIST reader, and the NumPy-only LeNet reaching its accuracy on real data."""

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnlab.errors import CnnlabError
from cnnlab.scratch import (
    SGD,
    AvgPool2d,
    Conv2d,
    Flatten,
    GlobalAvgPool2d,
    LeakyReLU,
    Linear,
    MaxPool2d,
    ReLU,
    Sequential,
    Sigmoid,
    SoftmaxCrossEntropy,
    Tanh,
    col2im,
    conv2d_direct,
    im2col,
    pool_jacobian,
)
from cnnlab.scratch.gradcheck import (
    analytic_gradients,
    numerical_gradients,
    relative_error,
)
from cnnlab.scratch.mnist import load_mnist, read_idx
from cnnlab.scratch.train import train_mnist

RNG = np.random.default_rng(1234)


def test_import_does_not_touch_torch():
    code = ("import sys, cnnlab.scratch, cnnlab.scratch.explain, cnnlab.scratch.train, cnnlab.scratch.mnist; "
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if 'torch' in m)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr


def conv(c, f, k, s, p, bias=True, method="im2col"):
    layer = Conv2d(c, f, k, stride=s, padding=p, bias=bias, method=method, rng=RNG, dtype=np.float64)
    if bias:
        layer.params["bias"] = RNG.standard_normal(f)
    tf = lambda x, P: F.conv2d(x, P["weight"], P.get("bias"), stride=s, padding=p)
    return layer, tf


def layer_cases():
    # (id, layer, torch function of (x, params), input shape)
    cases = []
    for method in ("im2col", "direct"):
        small = (1, 2, 5, 4) if method == "direct" else (2, 3, 7, 6)
        c = small[1]
        cases += [
            (f"conv-{method}-3x3", *conv(c, 2, 3, 1, 0, method=method), small),
            (f"conv-{method}-nonsquare-stride-pad", *conv(c, 3, (3, 2), (2, 1), (1, 2), method=method), small),
            (f"conv-{method}-5x5-s2-p2-nobias", *conv(c, 2, 5, 2, 2, bias=False, method=method), small),
        ]
    cases += [
        ("conv-1x1", *conv(3, 4, 1, 1, 0), (2, 3, 4, 5)),
        ("maxpool-2", MaxPool2d(2), lambda x, P: F.max_pool2d(x, 2), (2, 3, 6, 4)),
        ("maxpool-3s2-overlap", MaxPool2d(3, 2), lambda x, P: F.max_pool2d(x, 3, 2), (2, 2, 7, 9)),
        ("maxpool-2x3-s1x2", MaxPool2d((2, 3), (1, 2)), lambda x, P: F.max_pool2d(x, (2, 3), (1, 2)), (1, 2, 5, 7)),
        ("avgpool-2", AvgPool2d(2), lambda x, P: F.avg_pool2d(x, 2), (2, 3, 6, 4)),
        ("avgpool-3s2-overlap", AvgPool2d(3, 2), lambda x, P: F.avg_pool2d(x, 3, 2), (2, 2, 7, 9)),
        ("avgpool-2x3-s1x2", AvgPool2d((2, 3), (1, 2)), lambda x, P: F.avg_pool2d(x, (2, 3), (1, 2)), (1, 2, 5, 7)),
        ("global-avgpool", GlobalAvgPool2d(), lambda x, P: x.mean(dim=(2, 3)), (2, 3, 5, 4)),
        ("relu", ReLU(), lambda x, P: F.relu(x), (2, 3, 4, 5)),
        ("leaky-relu", LeakyReLU(0.1), lambda x, P: F.leaky_relu(x, 0.1), (2, 3, 4, 5)),
        ("tanh", Tanh(), lambda x, P: torch.tanh(x), (2, 3, 4, 5)),
        ("sigmoid", Sigmoid(), lambda x, P: torch.sigmoid(x), (2, 3, 4, 5)),
        ("flatten", Flatten(), lambda x, P: x.flatten(1), (2, 3, 4, 5)),
    ]
    lin = Linear(7, 5, rng=RNG, dtype=np.float64)
    lin.params["bias"] = RNG.standard_normal(5)
    cases.append(("linear", lin, lambda x, P: F.linear(x, P["weight"], P["bias"]), (4, 7)))
    return cases


CASES = layer_cases()


@pytest.mark.parametrize("name,layer,torch_fn,shape", CASES, ids=[c[0] for c in CASES])
def test_backward_agrees_with_finite_differences_and_autograd(name, layer, torch_fn, shape):
    x = RNG.standard_normal(shape)
    y = layer.forward(x)
    upstream = RNG.standard_normal(y.shape)
    dx, dparams = analytic_gradients(layer, x, upstream)

    num_dx, num_dparams = numerical_gradients(layer, x, upstream)
    assert relative_error(dx, num_dx) < 1e-6
    for k in layer.params:
        assert relative_error(dparams[k], num_dparams[k]) < 1e-6, k

    tx = torch.tensor(x, requires_grad=True)
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in layer.params.items()}
    ty = torch_fn(tx, tp)
    np.testing.assert_allclose(layer.forward(x), ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    ty.backward(torch.tensor(upstream))
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    for k in layer.params:
        np.testing.assert_allclose(dparams[k], tp[k].grad.numpy(), rtol=1e-10, atol=1e-12)


def test_direct_loops_and_im2col_compute_the_same_convolution():
    x = RNG.standard_normal((2, 3, 8, 7))
    fast, _ = conv(3, 4, (3, 2), (2, 1), (1, 0))
    slow = Conv2d(3, 4, (3, 2), stride=(2, 1), padding=(1, 0), method="direct", dtype=np.float64)
    slow.params = {k: v.copy() for k, v in fast.params.items()}
    np.testing.assert_allclose(fast.forward(x), slow.forward(x), atol=1e-12)
    np.testing.assert_allclose(conv2d_direct(x, fast.params["weight"], fast.params["bias"], (2, 1), (1, 0)),
                               fast.forward(x), atol=1e-12)
    g = RNG.standard_normal(fast.forward(x).shape)
    np.testing.assert_allclose(fast.backward(g), slow.backward(g), atol=1e-12)
    for k in fast.params:
        np.testing.assert_allclose(fast.grads[k], slow.grads[k], atol=1e-12)


def test_col2im_is_the_adjoint_of_im2col():
    x = RNG.standard_normal((2, 3, 7, 6))
    cols = im2col(x, (3, 2), (2, 1), (1, 1))
    assert cols.shape == (3 * 3 * 2, 2 * 4 * 7)
    y = RNG.standard_normal(cols.shape)
    assert np.isclose(np.sum(cols * y), np.sum(x * col2im(y, x.shape, (3, 2), (2, 1), (1, 1))))


def test_softmax_cross_entropy_against_torch_and_finite_differences():
    logits, labels = RNG.standard_normal((5, 4)) * 3, np.array([0, 3, 1, 1, 2])
    loss_fn = SoftmaxCrossEntropy()
    loss = loss_fn(logits, labels)
    grad = loss_fn.backward()
    t = torch.tensor(logits, requires_grad=True)
    tl = F.cross_entropy(t, torch.tensor(labels))
    tl.backward()
    assert np.isclose(loss, tl.item(), rtol=1e-12)
    np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-10, atol=1e-14)
    num = np.zeros_like(logits)
    for i in np.ndindex(logits.shape):
        e = np.zeros_like(logits)
        e[i] = 1e-6
        num[i] = (SoftmaxCrossEntropy()(logits + e, labels) - SoftmaxCrossEntropy()(logits - e, labels)) / 2e-6
    assert relative_error(grad, num) < 1e-6
    assert np.isfinite(SoftmaxCrossEntropy()(np.array([[1e4, -1e4]]), np.array([1])))  # no overflow


@pytest.mark.slow
def test_a_whole_network_and_sgd_momentum_match_torch():
    net = Sequential(Conv2d(2, 3, 3, padding=1, rng=RNG, dtype=np.float64), LeakyReLU(0.1), MaxPool2d(2),
                     Conv2d(3, 4, (2, 3), stride=(1, 2), rng=RNG, dtype=np.float64), Tanh(), Flatten(),
                     Linear(4 * 2 * 1, 3, rng=RNG, dtype=np.float64))
    tnet = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.LeakyReLU(0.1), torch.nn.MaxPool2d(2),
                               torch.nn.Conv2d(3, 4, (2, 3), stride=(1, 2)), torch.nn.Tanh(), torch.nn.Flatten(),
                               torch.nn.Linear(8, 3)).double()
    with torch.no_grad():
        for (layer, name), p in zip(net.parameters(), tnet.parameters()):
            p.copy_(torch.from_numpy(layer.params[name]))
    x, labels = RNG.standard_normal((4, 2, 6, 8)), np.array([0, 2, 1, 2])
    opt = SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    topt = torch.optim.SGD(tnet.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    loss_fn = SoftmaxCrossEntropy()
    for _ in range(3):
        loss = loss_fn(net.forward(x), labels)
        net.backward(loss_fn.backward())
        opt.step()
        topt.zero_grad()
        tloss = F.cross_entropy(tnet(torch.from_numpy(x)), torch.from_numpy(labels))
        tloss.backward()
        topt.step()
        assert np.isclose(loss, tloss.item(), rtol=1e-10)
    for (layer, name), p in zip(net.parameters(), tnet.parameters()):
        np.testing.assert_allclose(layer.params[name], p.detach().numpy(), rtol=1e-9, atol=1e-12)
    assert net.num_parameters() == sum(p.numel() for p in tnet.parameters())


def _independent_pool_matrix(x, k, s, op):
    h, w = x.shape
    ho, wo = (h - k) // s + 1, (w - k) // s + 1
    a = np.zeros((ho * wo, h * w))
    for i in range(ho):
        for j in range(wo):
            cells = [(i * s + p, j * s + q) for p in range(k) for q in range(k)]
            if op == "max":
                p, q = max(cells, key=lambda c: x[c])
                a[i * wo + j, p * w + q] = 1
            else:
                for p, q in cells:
                    a[i * wo + j, p * w + q] = 1 / (k * k)
    return a


@pytest.mark.parametrize("op", ["max", "avg"])
@pytest.mark.parametrize("k,s,shape", [(2, 2, (4, 4)), (3, 2, (7, 5)), (2, 1, (3, 4))])
def test_pool_jacobian_reproduces_forward_and_backward(op, k, s, shape):
    x = RNG.standard_normal(shape)
    a = pool_jacobian(x, k, s, op)
    np.testing.assert_array_equal(a, _independent_pool_matrix(x, k, s, op))
    layer = MaxPool2d(k, s) if op == "max" else AvgPool2d(k, s)
    y = layer.forward(x[None, None])[0, 0]
    np.testing.assert_allclose(a @ x.ravel(), y.ravel(), atol=1e-12)
    g = RNG.standard_normal(y.shape)
    np.testing.assert_allclose(a.T @ g.ravel(), layer.backward(g[None, None])[0, 0].ravel(), atol=1e-12)
    if op == "max":
        assert set(np.unique(a)) == {0.0, 1.0} and (a.sum(axis=1) == 1).all()
    else:
        assert set(np.unique(a)) == {0.0, 1 / (k * k)}


def test_pool_jacobian_lecture_example_and_channels():
    x = np.array([[1, 1, 2, 4], [5, 6, 7, 8], [3, 2, 1, 0], [1, 2, 3, 4]], dtype=float)
    a = pool_jacobian(x, 2)
    assert (a @ x.ravel()).tolist() == [6, 8, 3, 4]
    assert [int(np.argmax(row)) for row in a] == [5, 7, 8, 15]  # x[1,1]=6, x[1,3]=8, x[2,0]=3, x[3,3]=4
    vol = RNG.standard_normal((2, 3, 4, 4))  # block-diagonal: one block per map
    big = pool_jacobian(vol, 2, op="avg")
    assert big.shape == (6 * 4, 6 * 16)
    np.testing.assert_allclose(big @ vol.ravel(), AvgPool2d(2).forward(vol).ravel(), atol=1e-12)


def test_layer_mistakes_are_one_sentence_errors():
    with pytest.raises(CnnlabError, match="expects 3 input channels"):
        Conv2d(3, 2, 3).forward(np.zeros((1, 2, 5, 5), np.float32))
    with pytest.raises(CnnlabError, match="does not fit"):
        Conv2d(1, 2, 7, padding=1).forward(np.zeros((1, 1, 4, 4), np.float32))
    with pytest.raises(CnnlabError, match="N x C x H x W"):
        MaxPool2d(2).forward(np.zeros((4, 4)))
    with pytest.raises(CnnlabError, match="Flatten"):
        Linear(10, 2).forward(np.zeros((1, 2, 5)))
    with pytest.raises(CnnlabError, match="'max' or 'avg'"):
        pool_jacobian(np.zeros((4, 4)), 2, op="min")


def test_mnist_reader_reads_the_embedded_files(tmp_path):
    x, y = load_mnist("test")
    assert x.shape == (10_000, 28, 28) and x.dtype == np.uint8 and y.shape == (10_000,)
    assert sorted(np.unique(y)) == list(range(10)) and y[:5].tolist() == [7, 2, 1, 0, 4]
    (tmp_path / "bad.gz").write_bytes(b"not gzip")
    with pytest.raises(CnnlabError, match="bad.gz is corrupt or truncated .*download it again"):
        read_idx(tmp_path / "bad.gz")
    with pytest.raises(CnnlabError, match="--data-dir"):
        load_mnist("train", tmp_path)


@pytest.mark.slow
def test_scratch_lenet_learns_mnist_deterministically():
    a = train_mnist(train_images=600, epochs=1, test_images=500, seed=3)
    b = train_mnist(train_images=600, epochs=1, test_images=500, seed=3)
    assert a.history[0]["loss"] == b.history[0]["loss"] and a.test_accuracy == b.test_accuracy
    assert a.parameters == 6 * 25 + 6 + 16 * 150 + 16 + 256 * 120 + 120 + 120 * 84 + 84 + 84 * 10 + 10


@pytest.mark.slow
def test_scratch_lenet_reaches_95_percent_on_the_real_test_set():
    # 10,000 training images, 2 epochs, every one of the 10,000 official test images: about 10 s on 2 cores.
    result = train_mnist(train_images=10_000, epochs=2, seed=0)
    assert result.test_images == 10_000
    assert result.test_accuracy >= 0.95, result.history
