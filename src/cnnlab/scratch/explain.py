"""Worked examples that print every step: ``cnnlab explain conv|pool|backprop|params``.

Each function returns the text; the numbers come from the NumPy layers of ``cnnlab.scratch`` and every
worked example ends with a check against the fast version (im2col, the pooling matrix, finite differences).

Arrays are given inline or as a file. Inline: rows separated by ``;``, values by commas or spaces, channels by
``|``, e.g. ``"1 0 1; 0 1 0; 1 0 1"``. A ``.csv``/``.txt`` file: one row per line, channels separated by a
blank line. A ``.npy`` file: H x W, C x H x W (channels first) or, for kernels, F x C x kh x kw.
The printed notation is the lecture's (CS231n's demo): volumes are H x W x C, x[:,:,c] is channel c of the
input, w0 the first filter, b0 its bias and o[i,j,f] an output entry.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from cnnlab.errors import CnnlabError
from cnnlab.scratch.gradcheck import numerical_gradient
from cnnlab.scratch.layers import AvgPool2d, Conv2d, MaxPool2d, pool_jacobian

# The lecture's 5x5 binary image and 3x3 "X" kernel: the output is [[4,3,4],[2,4,3],[2,3,4]].
IMAGE_5X5 = [[1, 1, 1, 0, 0], [0, 1, 1, 1, 0], [0, 0, 1, 1, 1], [0, 0, 1, 1, 0], [0, 1, 1, 0, 0]]
KERNEL_X = [[1, 0, 1], [0, 1, 0], [1, 0, 1]]
# The CS231n demo: a 5x5x3 input padded by 1 (7x7x3), two 3x3x3 filters with biases 1 and 0, stride 2 ->
# 3x3x2. The demo draws new values on every page load; these were drawn once the same way (inputs 0..2,
# weights -1..1) and fixed. Channels first: VOLUME[c] is x[:,:,c], FILTERS[f][c] is wf[:,:,c].
VOLUME_5X5X3 = [[[0, 1, 0, 2, 1], [0, 0, 1, 0, 1], [2, 1, 2, 1, 2], [0, 1, 2, 2, 0], [2, 1, 1, 2, 0]],
                [[0, 0, 0, 0, 2], [0, 1, 0, 0, 1], [2, 2, 1, 2, 2], [1, 2, 1, 1, 2], [0, 2, 0, 2, 1]],
                [[0, 1, 1, 2, 0], [2, 0, 1, 2, 1], [1, 1, 2, 1, 2], [2, 1, 2, 1, 1], [2, 1, 1, 0, 1]]]
FILTERS_3X3X3 = [[[[1, 0, 0], [1, 1, 0], [0, 1, 1]], [[0, 1, 0], [1, 1, 0], [-1, 1, 1]],
                  [[0, 0, 0], [0, 1, 1], [1, -1, -1]]],
                 [[[0, 1, 1], [0, 1, 0], [0, -1, 0]], [[0, -1, -1], [-1, 1, 0], [-1, 0, 1]],
                  [[-1, -1, -1], [0, 0, 1], [0, 0, 0]]]]
CONV_EXAMPLES = {
    "5x5": {"x": [IMAGE_5X5], "w": [[KERNEL_X]], "b": None, "stride": 1, "pad": 0},
    "7x7x3": {"x": VOLUME_5X5X3, "w": FILTERS_3X3X3, "b": [1, 0], "stride": 2, "pad": 1},
}
POOL_4X4 = [[1, 1, 2, 4], [5, 6, 7, 8], [3, 2, 1, 0], [1, 2, 3, 4]]  # 2x2 max-pool, stride 2 -> [[6,8],[3,4]]
BACKPROP_GRAD = [[1, 0, 2], [0, 1, 0], [-1, 0, 1]]

# A worked example prints every step, so its size is bounded: at most this many numbers in an array given, and
# this many steps written out or computed (products, window entries, finite-difference forwards x their size);
# an MNIST digit (28x28) with a 5x5 filter is well inside, and each example prints in well under a second.
MAX_VALUES = 100_000
MAX_STEPS = 1_000_000
MAX_CHANNELS = 1_000_000  # `explain params`: C of the 7x7 against 3x3 comparison


def _bounded(steps: int, what: str, fix: str) -> None:
    if steps > MAX_STEPS:
        raise CnnlabError(f"this example would write out {steps:,} {what}, more than the {MAX_STEPS:,} a worked "
                          f"example prints; {fix}")


# ---------------------------------------------------------------- input: inline text, CSV/TXT or .npy files

def _number(text: str, what: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise CnnlabError(f"{what}: {text!r} ({where}) is not a number; write numbers like 1, -0.5 or 2e-3") from None
    if not np.isfinite(value):
        raise CnnlabError(f"{what}: {text!r} ({where}) is not a finite number")
    return value


def _parse_channels(blocks: list[list[str]], what: str) -> np.ndarray:
    channels = []
    for c, rows in enumerate(blocks):
        matrix = []
        for r, row in enumerate(rows):
            values = [v for v in re.split(r"[,\s]+", row.strip()) if v]
            where = f"row {r + 1}" + (f" of channel {c + 1}" if len(blocks) > 1 else "")
            matrix.append([_number(v, what, f"{where}, value {i + 1}") for i, v in enumerate(values)])
            if len(matrix[-1]) != len(matrix[0]):
                got = len(matrix[-1])
                raise CnnlabError(f"{what}: {where} has {got} value{'s' * (got != 1)} but row 1 has "
                                  f"{len(matrix[0])}; every row needs the same number of values")
        if not matrix or not matrix[0]:
            raise CnnlabError(f"{what} is empty; give rows like '1 0 1; 0 1 0'")
        channels.append(matrix)
    shapes = {(len(m), len(m[0])) for m in channels}
    if len(shapes) > 1:
        raise CnnlabError(f"{what}: the channels have different sizes ({', '.join(f'{h}x{w}' for h, w in shapes)}); "
                          "every channel needs the same height and width")
    return np.array(channels, dtype=np.float64)


def parse_array(text: str, what: str = "--input") -> np.ndarray:
    """An array from inline text or a file (see the module docstring); C x H x W, or as stored in a .npy file."""
    path = Path(text)
    looks_like_file = path.suffix.lower() in (".npy", ".csv", ".txt")
    if looks_like_file or (len(text) < 4096 and path.is_file()):
        if not path.is_file():
            raise CnnlabError(f"{what}: there is no file {text}")
        if path.suffix.lower() == ".npy":
            try:
                a = np.load(path, allow_pickle=False, mmap_mode="r")  # its shape, before reading it
                if a.size > MAX_VALUES:
                    raise CnnlabError(f"{what}: {text} holds {a.size:,} numbers (shape {a.shape}); a worked example "
                                      f"takes at most {MAX_VALUES:,}, so crop it")
                a = np.array(a)
            except (OSError, ValueError) as e:
                if isinstance(e, CnnlabError):
                    raise
                raise CnnlabError(f"{what}: {text} is not a NumPy .npy file of numbers ({e})") from None
            if a.dtype.kind not in "biuf" or a.size == 0 or not np.all(np.isfinite(a)):
                raise CnnlabError(f"{what}: {text} must hold finite real numbers, not {a.dtype} of shape {a.shape}")
            return a.astype(np.float64)
        if path.stat().st_size > 40 * MAX_VALUES:
            raise CnnlabError(f"{what}: {text} is {path.stat().st_size:,} bytes; a worked example takes at most "
                              f"{MAX_VALUES:,} numbers, so crop it")
        try:
            content = path.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise CnnlabError(f"{what}: {text} cannot be read as text ({e})") from None
        lines = [line for line in content.splitlines() if not line.lstrip().startswith("#")]
        blocks, current = [], []
        for line in lines + [""]:
            if line.strip():
                current.append(line)
            elif current:
                blocks.append(current)
                current = []
        return _parse_channels(blocks or [[]], what)
    return _parse_channels([[r for r in re.split(r"[;\n]", block) if r.strip()] for block in text.split("|")], what)


def _as_chw(a: np.ndarray, what: str) -> np.ndarray:
    if a.ndim == 2:
        return a[None]
    if a.ndim != 3:
        raise CnnlabError(f"{what} must be H x W or C x H x W, not of shape {a.shape}")
    return a


def _parse_kernels(texts: list[str], channels: int) -> np.ndarray:
    """F x C x kh x kw from one entry per filter (or one .npy holding all of them)."""
    filters = []
    for text in texts:
        k = parse_array(text, "--kernel")
        if k.ndim == 4:
            filters += list(k)
        elif k.ndim in (2, 3):
            filters.append(_as_chw(k, "--kernel"))
        else:
            raise CnnlabError(f"--kernel must be kh x kw, C x kh x kw or F x C x kh x kw, not of shape {k.shape}")
    shapes = {f.shape for f in filters}
    if len(shapes) > 1:
        raise CnnlabError("--kernel: the filters have different shapes "
                          f"({', '.join(_shape_hwc(s) for s in shapes)}); every filter needs the same one")
    w = np.array(filters)
    if w.shape[1] != channels:
        raise CnnlabError(f"--kernel has {w.shape[1]} channel{'s' * (w.shape[1] != 1)} but the input has {channels}; "
                          "a filter needs one channel per input channel (separate them with '|')")
    return w


def _parse_bias(text: str | None, filters: int) -> np.ndarray | None:
    if text is None:
        return None
    values = [_number(v, "--bias", f"value {i + 1}") for i, v in enumerate(v for v in re.split(r"[,\s]+", text) if v)]
    if len(values) != filters:
        raise CnnlabError(f"--bias has {len(values)} value{'s' * (len(values) != 1)} but there "
                          f"{'are' if filters != 1 else 'is'} {filters} filter{'s' * (filters != 1)}; "
                          "give one bias per filter, e.g. --bias 1,0")
    return np.array(values)


# ---------------------------------------------------------------- formatting

def _n(v) -> str:
    """A number as short as it can be written exactly: 4, -1, 0.5, 0.333333."""
    v = float(v) + 0.0  # no "-0"
    return str(int(v)) if v.is_integer() and abs(v) < 1e15 else f"{v:.6g}"


def _p(v) -> str:
    """A factor in a product: negative numbers in parentheses."""
    s = _n(v)
    return f"({s})" if s.startswith("-") else s


def _matrix(a: np.ndarray, indent: str = "  ") -> list[str]:
    cells = [[_n(v) for v in row] for row in np.atleast_2d(a)]
    width = max(len(c) for row in cells for c in row)
    return [indent + " ".join(c.rjust(width) for c in row) for row in cells]


def _shape_hwc(shape) -> str:
    *_, c, h, w = shape
    return f"{h}x{w}x{c}"


def _size_line(n: int, k: int, s: int, p: int | None, label: str, unit: str) -> tuple[str, int, str | None]:
    """'(W - F + 2P)/S + 1' with numbers (without the 2P term when p is None), the size, and a note if inexact."""
    exact = (n - k + 2 * (p or 0)) / s + 1
    out = (n - k + 2 * (p or 0)) // s + 1
    line = f"{label}({n} - {k}{'' if p is None else f' + 2*{p}'})/{s} + 1 = {_n(round(exact, 2))}"
    p = p or 0
    note = None
    if not exact.is_integer():
        left = n + 2 * p - ((out - 1) * s + k)
        units = unit if left == 1 else " and ".join(u + "s" for u in unit.split(" and "))
        note = (f"{_n(round(exact, 2))} is not a whole number: like PyTorch we round down to {out}, and the last "
                f"{left} {units} of the {'padded ' if p else ''}input {'is' if left == 1 else 'are'} never covered")
    return line, out, note


def _check_fits(h: int, w: int, kh: int, kw: int, pad: int, kind: str = "kernel") -> None:
    if kh > h + 2 * pad or kw > w + 2 * pad:
        raise CnnlabError(f"the {kh}x{kw} {kind} does not fit the {h}x{w} input padded by {pad} "
                          f"({h + 2 * pad}x{w + 2 * pad}); use a smaller {kind} or more padding")


# ---------------------------------------------------------------- explain conv

def explain_conv(input: str | None = None, kernel: list[str] | None = None, bias: str | None = None,
                 stride: int | None = None, pad: int | None = None, example: str = "5x5") -> str:
    """Every output entry of a convolution as its element-wise products and their sum.

    ``example`` ("5x5" or "7x7x3") supplies whatever of input, kernel, bias, stride and pad is not given."""
    return _explain_conv(input, kernel, bias, stride, pad, example)[0]


def conv_output(input: str | None = None, kernel: list[str] | None = None, bias: str | None = None,
                stride: int | None = None, pad: int | None = None, example: str = "5x5") -> np.ndarray:
    """The output volume that ``explain_conv`` prints, F x Ho x Wo."""
    return _explain_conv(input, kernel, bias, stride, pad, example)[1]


def _explain_conv(input, kernel, bias, stride, pad, example) -> tuple[str, np.ndarray]:
    if example not in CONV_EXAMPLES:
        raise CnnlabError(f"unknown example {example!r}; choose one of {', '.join(CONV_EXAMPLES)}")
    ex = CONV_EXAMPLES[example]
    x = _as_chw(parse_array(input), "--input") if input is not None else np.array(ex["x"], dtype=np.float64)
    if kernel:
        w = _parse_kernels(kernel, x.shape[0])
    elif input is not None and x.shape[0] != np.shape(ex["w"])[1]:
        raise CnnlabError(f"the input has {x.shape[0]} channels; give filters with as many channels with --kernel")
    else:
        w = np.array(ex["w"], dtype=np.float64)
    b = _parse_bias(bias, len(w)) if bias is not None else (
        None if kernel or ex["b"] is None else np.array(ex["b"], dtype=np.float64))
    stride = ex["stride"] if stride is None else stride
    pad = ex["pad"] if pad is None else pad
    if stride < 1 or pad < 0:
        raise CnnlabError("the stride must be 1 or more and the padding 0 or more")
    c, h, wd = x.shape
    f, _, kh, kw = w.shape
    _check_fits(h, wd, kh, kw, pad)
    ho, wo = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    # each output entry: its products, and a line or two of its own (worth about 20 products' time)
    _bounded(f * ho * wo * (c * kh * kw + 20) + c * (h + 2 * pad) * (wd + 2 * pad), "products and values",
             "use a smaller input, fewer or smaller filters, or a larger stride")

    square = (h, kh) == (wd, kw)
    line_h, ho, note_h = _size_line(h, kh, stride, pad, "height: ", "row and column" if square else "row")
    line_w, wo, note_w = _size_line(wd, kw, stride, pad, "width:  ", "row and column" if square else "column")
    multi = c > 1 or f > 1 or b is not None
    lines = [f"convolution: {_shape_hwc(x.shape)} input, {f} filter{'s' * (f > 1)} of {_shape_hwc(w.shape[1:])}, "
             f"stride {stride}, pad {pad}" + (f", biases {', '.join(_n(v) for v in b)}" if b is not None else ""),
             "  output size = (W - F + 2P)/S + 1"]
    lines += [f"  {line_h}", f"  {line_w}"] if not square else [f"  {line_h.replace('height: ', '')}"]
    lines += [f"  {note}" for note in dict.fromkeys(n for n in (note_h, note_w) if n)]
    lines.append(f"  output volume: {ho}x{wo}x{f}")
    lines.append("")
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    padded = f" (+pad {pad}: {_shape_hwc(xp.shape)})" if pad else ""
    for ch in range(c):
        lines += [f"input x[:,:,{ch}]{padded}:" if c > 1 else f"input x{padded}:"] + _matrix(xp[ch])
    lines.append("")
    for i_f in range(f):
        for ch in range(c):
            lines += [f"filter w{i_f}[:,:,{ch}]:" if c > 1 else f"filter w{i_f}:"] + _matrix(w[i_f, ch])
        if b is not None:
            lines.append(f"bias b{i_f} = {_n(b[i_f])}")
    lines.append("")

    out = np.zeros((f, ho, wo))
    for i_f in range(f):
        for i in range(ho):
            for j in range(wo):
                r0, c0 = i * stride, j * stride
                window = xp[:, r0:r0 + kh, c0:c0 + kw]
                where = f"rows {r0}-{r0 + kh - 1}, cols {c0}-{c0 + kw - 1}" + (" of the padded input" if pad else "")
                name = f"o[{i},{j},{i_f}]" if multi else f"o[{i},{j}]"
                sums = []
                if multi:
                    lines.append(f"{name}   ({where})")
                for ch in range(c):
                    terms = " + ".join(f"{_p(a)}*{_p(k)}" for a, k in zip(window[ch].ravel(), w[i_f, ch].ravel()))
                    sums.append(float(np.sum(window[ch] * w[i_f, ch])))
                    if not multi:
                        lines.append(f"{name} = {terms} = {_n(sums[-1])}   ({where})")
                    else:
                        pair = f"x[:,:,{ch}] * w{i_f}[:,:,{ch}]" if c > 1 else f"x * w{i_f}"
                        lines.append(f"  {pair}: {terms} = {_n(sums[-1])}")
                total = sum(sums) + (b[i_f] if b is not None else 0.0)
                if multi:
                    parts = [_p(v) for v in sums] + ([f"{_p(b[i_f])} (b{i_f})"] if b is not None else [])
                    lines.append(f"  {name} = {' + '.join(parts)} = {_n(total)}" if len(parts) > 1
                                 else f"  {name} = {_n(total)}")
                out[i_f, i, j] = total
    lines.append("")
    for i_f in range(f):
        lines += [f"output o[:,:,{i_f}]:" if f > 1 else "output o:"] + _matrix(out[i_f])

    layer = Conv2d(c, f, (kh, kw), stride=stride, padding=pad, bias=b is not None, dtype=np.float64)
    layer.params["weight"] = w
    if b is not None:
        layer.params["bias"] = b
    fast = layer.forward(x[None])[0]
    lines += ["", f"check: the im2col Conv2d gives the same output: {'yes' if np.allclose(fast, out) else 'NO'}"]
    return "\n".join(lines) + "\n", out


# ---------------------------------------------------------------- explain pool

def _fraction(v: float, k: int) -> str:
    return "0" if v == 0 else ("1" if v == 1 else f"1/{k}")


def explain_pool(input: str | None = None, size: int = 2, stride: int | None = None, op: str = "max",
                 grad: str | None = None) -> str:
    """Pooling entry by entry, then as the lecture's matrix: vec(y) = A vec(x) and dL/dx = A^T dL/dy."""
    if op not in ("max", "avg"):
        raise CnnlabError(f"--op must be max or avg, not {op!r}")
    x = parse_array(input) if input is not None else np.array(POOL_4X4, dtype=np.float64)
    if x.ndim == 3 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 2:
        raise CnnlabError(f"explain pool takes one channel (an H x W array), not shape {_shape_hwc(x.shape)}")
    stride = size if stride is None else stride
    if size < 1 or stride < 1:
        raise CnnlabError("the pooling size and stride must be 1 or more")
    h, w = x.shape
    _check_fits(h, w, size, size, 0, "pooling window")
    ho, wo = (h - size) // stride + 1, (w - size) // stride + 1
    _bounded(ho * wo * h * w, "entries of the pooling matrix", "use a smaller input or a larger stride")
    line, ho, note = _size_line(h, size, stride, None, "height: ", "row" if h != w else "row and column")
    line_w, wo, note_w = _size_line(w, size, stride, None, "width:  ", "column" if h != w else "row and column")
    name = "max" if op == "max" else "average"
    lines = [f"{name}-pooling {size}x{size}, stride {stride}, on a {h}x{w} input", "  output size = (W - F)/S + 1"]
    lines += [f"  {line}", f"  {line_w}"] if h != w else [f"  {line.replace('height: ', '')}"]
    lines += [f"  {n}" for n in dict.fromkeys(n for n in (note, note_w) if n)]
    lines += [f"  output: {ho}x{wo}", "", "input x:"] + _matrix(x) + [""]
    y = np.zeros((ho, wo))
    for i in range(ho):
        for j in range(wo):
            window = x[i * stride:i * stride + size, j * stride:j * stride + size].ravel()
            where = f"rows {i * stride}-{i * stride + size - 1}, cols {j * stride}-{j * stride + size - 1}"
            if op == "max":
                y[i, j] = window.max()
                lines.append(f"y[{i},{j}] = max({', '.join(_n(v) for v in window)}) = {_n(y[i, j])}   ({where})")
            else:
                y[i, j] = window.mean()
                lines.append(f"y[{i},{j}] = ({' + '.join(_n(v) for v in window)})/{size * size} = {_n(y[i, j])}"
                             f"   ({where})")
    lines += ["", "output y:"] + _matrix(y) + [""]

    a = pool_jacobian(x, size, stride, op)
    tag = "A_maxpool" if op == "max" else "A_avgpool"
    wide = max(h, w) > 10
    col_names = [f"x{p},{q}" if wide else f"x{p}{q}" for p in range(h) for q in range(w)]
    row_names = [f"y{i},{j}" if wide else f"y{i}{j}" for i in range(ho) for j in range(wo)]
    lines.append(f"As a matrix: vec(y) = {tag} . vec(x), vec reading row by row ({col_names[0]}, {col_names[1]}, "
                 f"..., {col_names[-1]}).")
    what = ("one 1 per row, at the window's maximum" if op == "max"
            else f"1/{size * size} at each of the window's {size * size} positions")
    lines.append(f"{tag} is {a.shape[0]}x{a.shape[1]}, {what}:")
    if a.shape[1] <= 64:
        cells = [[_fraction(v, size * size) for v in row] for row in a]
        width = max(len(s) for s in col_names + [c for row in cells for c in row])
        rw = max(len(r) for r in row_names)
        lines.append(" " * (rw + 3) + " ".join(s.rjust(width) for s in col_names))
        lines += [f"  {r.ljust(rw)} " + " ".join(c.rjust(width) for c in row) for r, row in zip(row_names, cells)]
    else:
        lines.append("  (too wide to print; cnnlab.scratch.pool_jacobian returns it)")
    lines.append(f"{tag} . vec(x) = ({', '.join(_n(v) for v in a @ x.ravel())}) = vec(y)")
    lines.append("")

    g = parse_array(grad, "--grad") if grad is not None else np.arange(1, ho * wo + 1, dtype=np.float64)
    g = g.reshape(-1) if g.size == ho * wo else None
    if g is None:
        raise CnnlabError(f"--grad must have {ho * wo} values, one per output entry ({ho}x{wo})")
    dx = (a.T @ g).reshape(h, w)
    lines += [f"Backprop is the transposed product: dL/dx = {tag}^T . dL/dy."
              + ("" if grad is not None else " With the example dL/dy (choose yours with --grad):")]
    lines += _matrix(g.reshape(ho, wo))
    lines += ["dL/dx:"] + _matrix(dx)
    lines.append("only each window's maximum receives its gradient; every other input gets 0" if op == "max"
                 else f"every input of a window receives 1/{size * size} of the window's gradient"
                 + (" (summed where windows overlap)" if stride < size else ""))
    layer = (MaxPool2d if op == "max" else AvgPool2d)(size, stride)
    same = np.allclose(layer.forward(x[None, None])[0, 0], y) and np.allclose(
        layer.backward(g.reshape(1, 1, ho, wo))[0, 0], dx)
    lines += ["", (f"check: the {type(layer).__name__} layer's forward and backward give the same: "
                   f"{'yes' if same else 'NO'}")]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- explain backprop

def explain_backprop(input: str | None = None, kernel: str | None = None, grad: str | None = None,
                     stride: int = 1, pad: int = 0) -> str:
    """The backward pass of one conv filter: a shared weight's gradient sums over every position it touched."""
    x = parse_array(input) if input is not None else np.array(IMAGE_5X5, dtype=np.float64)
    k = parse_array(kernel, "--kernel") if kernel is not None else np.array(KERNEL_X, dtype=np.float64)
    x, k = (a[0] if a.ndim == 3 and a.shape[0] == 1 else a for a in (x, k))
    if x.ndim != 2 or k.ndim != 2:
        raise CnnlabError("explain backprop takes one channel and one filter (H x W arrays); "
                          "`cnnlab explain conv` shows several channels and filters")
    if stride < 1 or pad < 0:
        raise CnnlabError("the stride must be 1 or more and the padding 0 or more")
    h, w = x.shape
    kh, kw = k.shape
    _check_fits(h, w, kh, kw, pad)
    ho, wo = (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1
    # each weight and each input: a sum over the outputs (written out), and two finite-difference forwards
    _bounded((h * w + kh * kw) * (ho * wo + 50) + (h + 2 * pad) * (w + 2 * pad), "products and values",
             "use a smaller input or filter, or a larger stride")
    if grad is not None:
        g = parse_array(grad, "--grad")
        if g.size != ho * wo:
            raise CnnlabError(f"--grad must have {ho * wo} values, one per output entry ({ho}x{wo})")
        g = g.reshape(ho, wo)
    elif (ho, wo) == (3, 3):
        g = np.array(BACKPROP_GRAD, dtype=np.float64)
    else:
        g = np.arange(1, ho * wo + 1, dtype=np.float64).reshape(ho, wo)
    xp = np.pad(x, pad)
    s, p = stride, pad
    lines = [(f"backprop through a convolution: {h}x{w} input x, {kh}x{kw} filter w, stride {s}, pad {p} "
              f"-> {ho}x{wo} output o"),
             f"  forward: o[i,j] = b + sum over u,v of x{'_pad' if p else ''}[i*{s} + u, j*{s} + v] * w[u,v]", ""]
    lines += [f"input x{f' (+pad {p})' if p else ''}:"] + _matrix(xp) + ["filter w:"] + _matrix(k)
    lines += ["upstream gradient dL/do" + ("" if grad is not None else " (an example; choose yours with --grad)")
              + ":"] + _matrix(g) + [""]

    lines += [(f"Weight sharing: w[u,v] multiplies a different input at each of the {ho * wo} output positions, "
               "so its gradient"),
              "is the sum over every position it touched:",
              f"  dL/dw[u,v] = sum over i,j of dL/do[i,j] * x{'_pad' if p else ''}[i*{s} + u, j*{s} + v]", ""]
    dw = np.zeros_like(k)
    for a in range(kh):
        for b in range(kw):
            pairs = [(g[i, j], xp[i * s + a, j * s + b]) for i in range(ho) for j in range(wo)]
            dw[a, b] = sum(gv * xv for gv, xv in pairs)
            lines.append(f"dL/dw[{a},{b}] = {' + '.join(f'{_p(gv)}*{_p(xv)}' for gv, xv in pairs)} = {_n(dw[a, b])}")
    db = g.sum()
    lines += ["dL/dw:"] + _matrix(dw)
    lines += [f"dL/db = sum of dL/do = {_n(db)}   (the bias is shared by every position too)", ""]

    lines += ["Each input collects from every output whose window covered it:",
              (f"  dL/dx[p,q] = sum over the i,j whose window holds (p,q) of dL/do[i,j] * "
               f"w[p{f' + {p}' if p else ''} - i*{s}, q{f' + {p}' if p else ''} - j*{s}]"), ""]
    dxp = np.zeros_like(xp)
    for r in range(p, p + h):
        for q in range(p, p + w):
            terms = [(g[i, j], k[r - i * s, q - j * s]) for i in range(ho) for j in range(wo)
                     if 0 <= r - i * s < kh and 0 <= q - j * s < kw]
            dxp[r, q] = sum(gv * kv for gv, kv in terms)
            body = " + ".join(f"{_p(gv)}*{_p(kv)}" for gv, kv in terms) if terms else "(no window covers it)"
            lines.append(f"dL/dx[{r - p},{q - p}] = {body} = {_n(dxp[r, q])}")
    dx = dxp[p:p + h, p:p + w]
    lines += ["dL/dx:"] + _matrix(dx) + [""]

    layer = Conv2d(1, 1, (kh, kw), stride=s, padding=p, dtype=np.float64)
    layer.params["weight"] = k[None, None].copy()
    layer.forward(x[None, None])
    fast_dx = layer.backward(g[None, None])
    weight = layer.params["weight"]
    xin = x[None, None].copy()

    def loss():
        return float(np.sum(layer.forward(xin) * g))

    num_dw, num_dx = numerical_gradient(loss, weight)[0, 0], numerical_gradient(loss, xin)[0, 0]
    ours = np.concatenate([dw.ravel(), [db], dx.ravel()])
    fast = np.concatenate([layer.grads["weight"].ravel(), layer.grads["bias"], fast_dx.ravel()])
    numeric = np.concatenate([num_dw.ravel(), num_dx.ravel()])
    agree = lambda u, v: "yes" if np.allclose(u, v, rtol=1e-6, atol=1e-6) else "NO"
    lines.append(f"check: Conv2d.backward (im2col) gives the same dL/dw, dL/db and dL/dx: {agree(fast, ours)}")
    lines.append(f"check: central finite differences agree: {agree(numeric, np.concatenate([dw.ravel(), dx.ravel()]))}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- explain params

# The lecture's inception module (GoogLeNet 3a-like) on a 28x28x256 input: (branch, kernel, input depth, filters).
INCEPTION_INPUT = (28, 28, 256)
INCEPTION_NAIVE = [("1x1 conv, 128", 1, 256, 128), ("3x3 conv, 192", 3, 256, 192), ("5x5 conv, 96", 5, 256, 96)]
INCEPTION_REDUCED = [("1x1 conv, 64 (before 3x3)", 1, 256, 64), ("1x1 conv, 64 (before 5x5)", 1, 256, 64),
                     ("1x1 conv, 128", 1, 256, 128), ("3x3 conv, 192", 3, 64, 192), ("5x5 conv, 96", 5, 64, 96),
                     ("1x1 conv, 64 (after pool)", 1, 256, 64)]
LECTURE_PRINTS = {"naive": 854_000_000, "reduced": 358_000_000}


def _macs_block(title: str, layers, outputs: list[int], printed: int) -> tuple[list[str], int]:
    h, w, _ = INCEPTION_INPUT
    lines = [f"   {title}"]
    rows = [(name, f"{h}*{w}*{f} * {k}*{k}*{cin}", h * w * f * k * k * cin) for name, k, cin, f in layers]
    nw, fw = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    lines += [f"     {name + ':':<{nw + 1}}  {formula:<{fw}} = {macs:>12,}" for name, formula, macs in rows]
    total = sum(r[2] for r in rows)
    lines.append(f"     {'total:':<{nw + 1}}  {'':<{fw}} = {total:>12,}  ({total / 1e6:.0f}M)")
    printed_m = f"{printed / 1e6:.0f}M"
    if round(total / 1e6) == printed / 1e6:
        lines.append(f"     the lecture prints {printed_m}: the sum of its own layer list agrees")
    else:
        gap = abs(printed - total)
        lines.append(f"     the lecture prints {printed_m}, which does not follow from its own layer list: "
                     f"the lines above add up to {total / 1e6:.0f}M")
        same = [(name, macs) for name, _, macs in rows if abs(macs - gap) < 0.5e6]
        if same:
            lines.append(f"     (the gap, about {gap / 1e6:.0f}M, is the '{same[0][0]}' line, {same[0][1]:,}, "
                         "counted a second time)")
    lines.append(f"     output depth: {' + '.join(map(str, outputs))} = {sum(outputs)}, "
                 f"so the module outputs {h}x{w}x{sum(outputs)}")
    return lines, total


def explain_params(channels: int = 64) -> str:
    """The lecture's parameter and multiply-add questions, computed from the layer lists."""
    if not 1 <= channels <= MAX_CHANNELS:
        raise CnnlabError(f"`channels` must be between 1 and {MAX_CHANNELS:,} (no layer has more), got {channels:,}",
                          params=("channels",))
    cc = channels * channels
    w7, w3 = 49 * cc, 27 * cc
    lines = [f"1. One 7x7 conv or three stacked 3x3 convs, C = {channels} channels in and out (weights; biases aside)",
             f"   one 7x7:     7*7*C*C   = 49C^2 = {w7:>9,}",
             f"   three 3x3:   3*3*3*C*C = 27C^2 = {w3:>9,}   ({(1 - w3 / w7) * 100:.0f}% fewer)",
             "   receptive field: 7x7 for both (each 3x3 adds 2: 1 + 2 + 2 + 2 = 7), and the stack puts three",
             "   nonlinearities where the 7x7 has one", ""]
    rows = [("1x1 conv, 256 -> 64", 1, 256, 64), ("3x3 conv, 64 -> 64", 3, 64, 64), ("1x1 conv, 64 -> 256", 1, 64, 256)]
    bottleneck = sum(k * k * i * o for _, k, i, o in rows)
    plain = 3 * 3 * 256 * 256
    lines.append("2. Bottleneck: 1x1 256 -> 64, 3x3 64 -> 64, 1x1 64 -> 256, against one 3x3 conv 256 -> 256")
    lines += [f"   {name + ':':<23} {f'{k}*{k}*{i}*{o}':<12} = {k * k * i * o:>9,}" for name, k, i, o in rows]
    lines.append(f"   {'bottleneck total:':<36} = {bottleneck:>9,}   (about {bottleneck / 1e3:.0f}K)")
    lines.append(f"   {'3x3 conv, 256 -> 256:':<23} {'3*3*256*256':<12} = {plain:>9,}   (about {plain / 1e3:.0f}K, "
                 f"{plain / bottleneck:.1f}x more)")
    lines.append("")
    h, w, c = INCEPTION_INPUT
    lines.append(f"3. Inception module on a {h}x{w}x{c} input, multiply-adds per conv:")
    lines.append("   output height*width*filters * kernel k*k*input depth (same padding; the pooling has none)")
    naive, naive_total = _macs_block("naive: 1x1 128, 3x3 192, 5x5 96, 3x3 max-pool", INCEPTION_NAIVE,
                                     [128, 192, 96, c], LECTURE_PRINTS["naive"])
    reduced, reduced_total = _macs_block("with 1x1 reductions: 64 before the 3x3 and the 5x5, 64 after the pool",
                                         INCEPTION_REDUCED, [128, 192, 96, 64], LECTURE_PRINTS["reduced"])
    lines += naive + [""] + reduced
    lines.append(f"   the reductions cut the multiply-adds {naive_total / reduced_total:.1f}x "
                 f"({naive_total / 1e6:.0f}M -> {reduced_total / 1e6:.0f}M)")
    return "\n".join(lines) + "\n"
