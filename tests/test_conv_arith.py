"""Conv arithmetic on the lecture's worked questions, and against what PyTorch actually computes."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from cnnlab import CnnlabError
from cnnlab.analysis import conv_arith


def test_alexnet_conv1():
    r = conv_arith.conv("227x227x3", filters=96, kernel=11, stride=4)
    assert r.output == (55, 55, 96)
    assert (r.weights, r.biases, r.params) == (34_848, 96, 34_944)
    assert r.macs == 55 * 55 * 96 * 11 * 11 * 3
    assert "(227 - 11 + 2*0)/4 + 1 = 55" in r.text()


def test_alexnet_pool1():
    r = conv_arith.pool("55x55x96", kernel=3, stride=2)
    assert r.output == (27, 27, 96) and r.params == 0


def test_ten_5x5_filters_with_padding_2():
    r = conv_arith.conv("32x32x3", filters=10, kernel=5, stride=1, pad=2)
    assert r.output == (32, 32, 10) and r.params == 760  # (5*5*3 + 1) * 10


def test_filter_that_does_not_fit():
    r = conv_arith.conv("7x7x1", filters=1, kernel=3, stride=3)
    assert not r.height.fits and float(r.height.exact) == pytest.approx(7 / 3)
    assert r.output[:2] == (2, 2)  # PyTorch floors
    text = r.text()
    assert "2.33" in text and "does not fit" in text and "rounds down to 2" in text
    assert "never covered" in text
    # every suggested fix really fits
    assert r.height.fits_pad == [1] and 1 in r.height.fits_stride and 2 in r.height.fits_stride
    for p in r.height.fits_pad:
        assert conv_arith.conv("7x7x1", 1, 3, 3, pad=p).height.fits
    for s in r.height.fits_stride:
        assert conv_arith.conv("7x7x1", 1, 3, s).height.fits


def test_ceil_mode_rounds_up():
    r = conv_arith.pool("7x7x1", kernel=3, stride=3, ceil_mode=True)
    assert r.output[:2] == (3, 3) and "rounds up to 3" in r.text()


GEOMETRIES = list(itertools.product([5, 7, 12], [1, 2, 3, 5], [1, 2, 3], [0, 1, 2], [1, 2]))


@pytest.mark.parametrize("size,kernel,stride,pad,dilation", GEOMETRIES)
def test_output_size_equals_pytorch(size, kernel, stride, pad, dilation):
    eff = dilation * (kernel - 1) + 1
    if size + 2 * pad < eff:
        with pytest.raises(CnnlabError, match="output would be empty"):
            conv_arith.conv((size, size + 1, 2), 2, kernel, stride, pad, dilation)
        return
    r = conv_arith.conv((size, size + 1, 2), 4, kernel, stride, pad, dilation, groups=2)
    y = F.conv2d(torch.zeros(1, 2, size, size + 1), torch.zeros(4, 1, kernel, kernel), stride=stride,
                 padding=pad, dilation=dilation, groups=2)
    assert r.output == (y.shape[2], y.shape[3], 4)
    assert r.weights == 4 * 1 * kernel * kernel
    assert r.macs == y.numel() * kernel * kernel  # each output reads k*k*(C/groups) = k*k inputs


@pytest.mark.parametrize("size,kernel,stride,pad,ceil", list(itertools.product([6, 7, 13], [2, 3], [1, 2, 3], [0, 1],
                                                                          [False, True])))
def test_pool_output_size_equals_pytorch(size, kernel, stride, pad, ceil):
    if 2 * pad > kernel:
        return
    r = conv_arith.pool((size, size, 3), kernel, stride, pad, ceil_mode=ceil)
    y = F.max_pool2d(torch.zeros(1, 3, size, size), kernel, stride, pad, ceil_mode=ceil)
    assert r.output == (y.shape[2], y.shape[3], 3)


def test_receptive_field_of_three_3x3_convs():
    r = conv_arith.receptive_field(["conv3", "conv3", "conv3"])
    assert r.size == 7
    assert conv_arith.receptive_field("conv3*3").size == 7
    assert "receptive field: 7x7" in r.text()


def test_receptive_field_build_up_with_strides_and_dilation():
    r = conv_arith.receptive_field(["conv7s2p3", "pool3s2p1", "conv3d2"], input_size=224)
    d = r.as_dict()
    assert [row["rf"] for row in d["layers"]] == [7, 7 + 2 * 2, 11 + 2 * 2 * 4]
    assert [row["jump"] for row in d["layers"]] == [2, 4, 4]
    assert [row["output"] for row in d["layers"]] == [112, 56, 52]


@pytest.mark.parametrize("bad,message", [
    (lambda: conv_arith.conv("227x227", 0, 3), "filters must be positive"),
    (lambda: conv_arith.conv("a x b x c", 3, 3), "HxWxC"),
    (lambda: conv_arith.conv("0x5x3", 3, 3), "must be positive"),
    (lambda: conv_arith.conv("5x5x3", 3, 7), "output would be empty"),
    (lambda: conv_arith.conv("5x5x3", 4, 3, groups=2), "groups=2 must divide"),
    (lambda: conv_arith.conv("5x5x3", 3, 3, stride=0), "stride must be positive"),
    (lambda: conv_arith.pool("5x5x3", 2, pad=2), "more than half"),
    (lambda: conv_arith.receptive_field(["conv"]), "not understood"),
    (lambda: conv_arith.receptive_field(["conv3s0"]), "stride"),
])
def test_user_mistakes_are_clear_errors(bad, message):
    with pytest.raises(CnnlabError, match=message):
        bad()
