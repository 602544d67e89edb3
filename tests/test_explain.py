"""`cnnlab explain ...` and `cnnlab scratch-train`: every worked example's numbers against values computed
independently here, the exact text against golden files, and one-sentence errors for bad input."""

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnlab.cli import main
from cnnlab.scratch import explain as ex


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def matrix_after(text: str, header: str) -> np.ndarray:
    """The numbers printed on the indented lines under a header line such as 'dL/dw:'."""
    lines = text.splitlines()
    i = lines.index(header)
    rows = []
    for line in lines[i + 1:]:
        if not line.startswith("  ") or not re.fullmatch(r"[\s\d.eE+-]+", line):
            break
        rows.append([float(v) for v in line.split()])
    return np.array(rows)


def naive_conv(x, w, b, s, p):
    """Written out again here, independently of cnnlab: x C x H x W, w F x C x k x k."""
    x = np.pad(x, ((0, 0), (p, p), (p, p)))
    f, _, k, _ = w.shape
    ho, wo = (x.shape[1] - k) // s + 1, (x.shape[2] - k) // s + 1
    return np.array([[[sum(x[c, i * s + a, j * s + bb] * w[n, c, a, bb] for c in range(x.shape[0])
                           for a in range(k) for bb in range(k)) + b[n] for j in range(wo)] for i in range(ho)]
                     for n in range(f)])


def test_explain_conv_lecture_5x5(capsys, golden):
    image = np.array([[1, 1, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 1, 1], [0, 0, 1, 1, 0], [0, 1, 1, 0, 0]])
    kernel = np.array([[1, 0, 1], [0, 1, 0], [1, 0, 1]])
    expected = naive_conv(image[None], kernel[None, None], [0], 1, 0)[0]
    assert expected.tolist() == [[4, 3, 4], [2, 4, 3], [2, 3, 4]]
    code, out, err = run(capsys, "explain", "conv")
    assert code == 0 and err == ""
    np.testing.assert_array_equal(matrix_after(out, "output o:"), expected)
    assert "o[0,0] = 1*1 + 1*0 + 1*1 + 0*0 + 1*1 + 1*0 + 0*1 + 0*0 + 1*1 = 4   (rows 0-2, cols 0-2)" in out
    assert "(5 - 3 + 2*0)/1 + 1 = 3" in out and out.rstrip().endswith("gives the same output: yes")
    golden("explain_conv.txt", out)


def test_explain_conv_lecture_7x7x3_volume(capsys, golden):
    x, w = np.array(ex.VOLUME_5X5X3), np.array(ex.FILTERS_3X3X3)
    expected = F.conv2d(torch.tensor(x[None], dtype=torch.float64), torch.tensor(w, dtype=torch.float64),
                        torch.tensor([1.0, 0.0], dtype=torch.float64), stride=2, padding=1)[0].numpy()
    assert expected.shape == (2, 3, 3)
    np.testing.assert_array_equal(naive_conv(x, w, [1, 0], 2, 1), expected)
    np.testing.assert_array_equal(ex.conv_output(example="7x7x3"), expected)
    code, out, _ = run(capsys, "explain", "conv", "--example", "7x7x3")
    assert code == 0 and "input x[:,:,0] (+pad 1: 7x7x3):" in out and "output volume: 3x3x2" in out
    np.testing.assert_array_equal(matrix_after(out, "output o[:,:,1]:"), expected[1])
    sums = (np.pad(x, ((0, 0), (1, 1), (1, 1)))[:, :3, :3] * w[0]).sum(axis=(1, 2))  # one per channel
    terms = " + ".join(f"{v:.0f}" if v >= 0 else f"({v:.0f})" for v in sums)
    assert f"  o[0,0,0] = {terms} + 1 (b0) = {expected[0, 0, 0]:.0f}" in out
    golden("explain_conv_7x7x3.txt", out)


def test_explain_conv_from_files_with_channels_filters_and_biases(capsys, tmp_path):
    x = np.arange(2 * 4 * 5, dtype=float).reshape(2, 4, 5) % 7 - 3
    w = np.array([[[[1, 0], [0, -1]], [[0.5, 0], [0, 0.5]]], [[[0, 1], [1, 0]], [[-1, -1], [2, 0]]]])
    csv = tmp_path / "x.csv"
    csv.write_text("\n\n".join("\n".join(",".join(f"{v:g}" for v in row) for row in ch) for ch in x) + "\n")
    np.save(tmp_path / "w.npy", w)
    code, out, err = run(capsys, "explain", "conv", "--input", str(csv), "--kernel", str(tmp_path / "w.npy"),
                         "--bias", "0.5,-1", "--stride", "2", "--pad", "1")
    assert code == 0, err
    expected = naive_conv(x, w, [0.5, -1], 2, 1)
    for f in range(2):
        np.testing.assert_allclose(matrix_after(out, f"output o[:,:,{f}]:"), expected[f])
    # the same filters inline, one --kernel per filter, channels split by '|'
    inline = ["1 0; 0 -1 | 0.5 0; 0 0.5", "0 1; 1 0 | -1 -1; 2 0"]
    np.testing.assert_allclose(ex.conv_output(str(csv), inline, "0.5 -1", 2, 1), expected)
    assert "is not a whole number" in out  # (4 - 2 + 2)/2 + 1 = 3 but (5 - 2 + 2)/2 + 1 = 3.5


def test_explain_pool_lecture_4x4_and_its_matrix(capsys, golden):
    x = np.array([[1, 1, 2, 4], [5, 6, 7, 8], [3, 2, 1, 0], [1, 2, 3, 4]])
    expected = x.reshape(2, 2, 2, 2).max(axis=(1, 3))
    assert expected.tolist() == [[6, 8], [3, 4]]
    code, out, _ = run(capsys, "explain", "pool")
    assert code == 0
    np.testing.assert_array_equal(matrix_after(out, "output y:"), expected)
    rows = [line.split()[1:] for line in out.splitlines() if re.match(r"  y\d\d ", line)]
    a = np.array(rows, dtype=float)
    assert a.shape == (4, 16) and [int(np.argmax(r)) for r in a] == [5, 7, 8, 15] and (a.sum(axis=1) == 1).all()
    g = np.array([[1, 2], [3, 4]])
    np.testing.assert_array_equal(matrix_after(out, "dL/dx:"), (a.T @ g.ravel()).reshape(4, 4))
    assert "y[0,0] = max(1, 1, 5, 6) = 6" in out and out.rstrip().endswith("give the same: yes")
    golden("explain_pool.txt", out)

    code, out, _ = run(capsys, "explain", "pool", "--op", "avg", "--grad", "4 0; 0 -8")
    assert code == 0 and "y[0,0] = (1 + 1 + 5 + 6)/4 = 3.25" in out and "1/4" in out
    np.testing.assert_array_equal(matrix_after(out, "dL/dx:"), np.kron([[4, 0], [0, -8]], np.ones((2, 2))) / 4)


def test_explain_backprop_sums_the_shared_weight_over_every_position(capsys, golden):
    x = torch.tensor(np.array(ex.IMAGE_5X5, dtype=float)[None, None], requires_grad=True)
    w = torch.tensor(np.array(ex.KERNEL_X, dtype=float)[None, None], requires_grad=True)
    b = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    g = np.array(ex.BACKPROP_GRAD, dtype=float)
    F.conv2d(x, w, b).backward(torch.tensor(g[None, None]))
    code, out, _ = run(capsys, "explain", "backprop")
    assert code == 0
    np.testing.assert_array_equal(matrix_after(out, "dL/dw:"), w.grad[0, 0].numpy())
    np.testing.assert_array_equal(matrix_after(out, "dL/dx:"), x.grad[0, 0].numpy())
    assert f"dL/db = sum of dL/do = {int(b.grad.item())}" in out
    # the corner weight touched 9 positions: one product per output entry
    assert out.count("dL/dw[0,0] = ") == 1 and re.search(r"dL/dw\[0,0\] = (.*) = ", out).group(1).count("*") == 9
    assert "finite differences agree: yes" in out and "dL/db and dL/dx: yes" in out
    golden("explain_backprop.txt", out)

    code, out, _ = run(capsys, "explain", "backprop", "--stride", "2", "--pad", "1", "--grad", "1 2 3; 4 5 6; 7 8 9")
    x.grad = w.grad = None
    F.conv2d(x, w, stride=2, padding=1).backward(torch.arange(1.0, 10, dtype=torch.float64).reshape(1, 1, 3, 3))
    assert code == 0
    np.testing.assert_array_equal(matrix_after(out, "dL/dw:"), w.grad[0, 0].numpy())
    np.testing.assert_array_equal(matrix_after(out, "dL/dx:"), x.grad[0, 0].numpy())


def test_explain_params_numbers_come_from_the_layer_lists(capsys, golden):
    code, out, _ = run(capsys, "explain", "params")
    assert code == 0
    c = 64
    assert f"49C^2 = {49 * c * c:>9,}" in out and f"27C^2 = {27 * c * c:>9,}" in out
    bottleneck = 256 * 64 + 9 * 64 * 64 + 64 * 256
    assert f"= {bottleneck:>9,}   (about 70K)" in out and f"= {9 * 256 * 256:>9,}" in out
    hw = 28 * 28
    naive = hw * 128 * 256 + hw * 192 * 9 * 256 + hw * 96 * 25 * 256
    reduced = hw * 64 * 256 * 3 + hw * 128 * 256 + hw * 192 * 9 * 64 + hw * 96 * 25 * 64
    assert round(naive / 1e6) == 854 and round(reduced / 1e6) == 271
    assert f"= {naive:>12,}  (854M)" in out and f"= {reduced:>12,}  (271M)" in out
    assert "the lecture prints 854M: the sum of its own layer list agrees" in out
    assert "the lecture prints 358M, which does not follow from its own layer list" in out
    assert "672" in out and "480" in out
    golden("explain_params.txt", out)
    code, out, _ = run(capsys, "explain", "params", "--channels", "10")
    assert code == 0 and "=     4,900" in out and "=     2,700" in out


def test_scratch_train_command(capsys):
    code, out, err = run(capsys, "scratch-train", "--train-images", "300", "--test-images", "200", "--epochs", "1")
    assert code == 0, err
    assert out.startswith("epoch 1/1  loss ") and "test accuracy" in out and "on 200 MNIST test images" in out


@pytest.mark.parametrize("argv,message", [
    (["explain", "conv", "--input", "1 2 3; 4 5"], "row 2 has 2 values but row 1 has 3"),
    (["explain", "conv", "--input", "1 2 3; 4 five 6; 7 8 9", "--kernel", "1"], "'five' (row 2, value 2) is not"),
    (["explain", "conv", "--input", "1 2; 3 4"], "the 3x3 kernel does not fit the 2x2 input padded by 0"),
    (["explain", "conv", "--input", "1 2 3; 4 5 6; 7 8 9", "--kernel", "1 0; 0 1", "--bias", "1,2"],
     "--bias has 2 values but there is 1 filter"),
    (["explain", "conv", "--input", "1 2; 3 4 | 5 6; 7 8", "--kernel", "1"], "--kernel has 1 channel but the input"),
    (["explain", "conv", "--input", "1 2; 3 4 | 5 6 7; 8 9 1"], "the channels have different sizes"),
    (["explain", "conv", "--input", "missing.csv"], "there is no file missing.csv"),
    (["explain", "conv", "--stride", "0"], "must be 1 or more"),
    (["explain", "pool", "--size", "5"], "the 5x5 pooling window does not fit the 4x4 input"),
    (["explain", "pool", "--grad", "1 2 3"], "--grad must have 4 values"),
    (["explain", "pool", "--input", "1 2; 3 4 | 5 6; 7 8"], "takes one channel"),
    (["explain", "backprop", "--kernel", "1 0 1; 0 1"], "row 2 has 2 values but row 1 has 3"),
    (["explain", "backprop", "--grad", "1 2"], "--grad must have 9 values"),
    (["explain"], "say what to explain"),
    (["scratch-train", "--train-images", "70000"], "--train-images must be between 1 and 60,000"),
    (["scratch-train", "--epochs", "0"], "must be 1 or more"),
])
def test_bad_input_is_one_sentence_and_exit_2(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_bad_files(capsys, tmp_path):
    (tmp_path / "ragged.csv").write_text("1,2,3\n4,5\n")
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    np.save(tmp_path / "text.npy", np.array(["a", "b"]))
    for name, message in (("ragged.csv", "row 2 has 2 values"), ("bad.npy", "is not a NumPy .npy file"),
                          ("text.npy", "must hold finite real numbers")):
        code, _, err = run(capsys, "explain", "pool", "--input", str(tmp_path / name))
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1
