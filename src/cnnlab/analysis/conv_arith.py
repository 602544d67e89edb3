"""Convolution arithmetic that explains itself (Dumoulin & Visin 2016, "A guide to convolution arithmetic
for deep learning"; the lecture's formula).

For an input of width W, a filter of size F with dilation D (effective size D(F-1)+1), padding P and
stride S, the output width is

    (W - F + 2P) / S + 1

When that is not a whole number the filter "does not fit": PyTorch (like most frameworks) rounds down and
the last rows or columns of the input are never covered; pooling with ``ceil_mode`` rounds up instead.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from fractions import Fraction

from cnnlab.analysis.receptive_field import RF, _num, stack_rf
from cnnlab.errors import CnnlabError

# Every size and count a user gives is at most this (no image, layer or network comes near it), so that the
# arithmetic stays instant and its numbers printable; and a stack for `calc rf` has at most MAX_LAYERS layers
# (ResNet-1202, the deepest classic network, has 1202), one row each.
MAX_SIZE = 10**9
MAX_LAYERS = 10_000
# A receptive field or jump past this many pixels (10^18) describes no image; the stack is refused there.
MAX_FIELD = 10**18


def _at_most(what: str, value: int, limit: int = MAX_SIZE) -> None:
    if value > limit:
        raise CnnlabError(f"{what} is {value:,}, more than this calculator takes ({limit:,}); no real layer comes "
                          f"near it, so give a smaller number")


def _whole(text: str, what: str) -> int:
    """A decimal whole number of at most 19 digits (int() would take 4,300 and a long time to multiply)."""
    text = text.strip()
    if not text.isascii() or not re.fullmatch(r"[+-]?\d+", text):
        raise ValueError(text)
    if len(text.lstrip("+-0")) > 19:
        raise CnnlabError(f"{what} has {len(text.lstrip('+-0'))} digits; this calculator takes sizes up to "
                          f"{MAX_SIZE:,}")
    return int(text)


def parse_hwc(text: str) -> tuple[int, int, int]:
    """'227x227x3' -> (227, 227, 3); 'HxW' means one channel."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        dims = [_whole(p, "input size") for p in parts]
    except CnnlabError:
        raise
    except ValueError:
        raise CnnlabError(f"input {text[:60]!r} is not of the form HxWxC, e.g. 227x227x3") from None
    if len(dims) == 2:
        dims.append(1)
    if len(dims) != 3:
        raise CnnlabError(f"input {text!r} needs height x width x channels, e.g. 227x227x3")
    if min(dims) < 1:
        raise CnnlabError(f"input {text!r} has a size below 1; height, width and channels must be positive")
    for name, d in zip(("height", "width", "channels"), dims):
        _at_most(f"the input's {name}", d)
    return dims[0], dims[1], dims[2]


def _positive(what: str, value: int, minimum: int = 1) -> None:
    if value < minimum:
        word = "positive" if minimum == 1 else f"at least {minimum}"
        raise CnnlabError(f"{what} must be {word}, got {value}")
    _at_most(what, value)


def _fitting_pads(size: int, k: int, stride: int, limit: int = 3) -> list[int]:
    """The smallest paddings p < k with size + 2p - k >= 0 and divisible by the stride: 2p = k - size (mod
    stride), solved directly (the stride and k may be large)."""
    g = math.gcd(2, stride)
    r = (k - size) % stride
    if r % g:
        return []
    period = stride // g
    p0 = (r // g) * pow(2 // g, -1, period) % period if period > 1 else 0
    lowest = max(0, -(-(k - size) // 2))
    first = p0 + max(0, -(-(lowest - p0) // period)) * period
    return [p for p in range(first, first + limit * period, period) if p < k]


def _fitting_strides(span: int, k: int, stride: int, limit: int = 3) -> list[int]:
    """The largest strides s <= k (other than ``stride``) that divide ``span``: divisors, by trial up to its
    square root."""
    if span == 0:
        return [s for s in range(max(1, k - limit), k + 1) if s != stride][-limit:]
    divisors = set()
    for d in range(1, math.isqrt(span) + 1):
        if span % d == 0:
            divisors.update((d, span // d))
    return sorted(s for s in divisors if s <= k and s != stride)[-limit:]


@dataclass
class Axis:
    """The output size along one axis, with its working."""

    name: str
    size: int  # W
    kernel: int  # effective F
    stride: int
    pad: int
    exact: Fraction
    out: int
    ceil_mode: bool = False
    fits_pad: list[int] = field(default_factory=list)
    fits_stride: list[int] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return self.exact.denominator == 1

    @property
    def formula(self) -> str:
        value = int(self.exact) if self.fits else f"{float(self.exact):.2f}"
        return f"({self.size} - {self.kernel} + 2*{self.pad})/{self.stride} + 1 = {value}"

    def explain_misfit(self, label: str | None = None, what: str = "filter") -> list[str]:
        if self.fits:
            return []
        label = label or self.name
        lines_word = "row" if self.name == "height" else "column"
        if label != self.name:
            lines_word = "row and column"
        span = self.size + 2 * self.pad - self.kernel
        left = span % self.stride
        if self.ceil_mode:
            what = (f"  {label}: the {what} does not fit ({float(self.exact):.2f} is not a whole number); "
                    f"ceil mode rounds up to {self.out}, so the last window hangs over the edge by "
                    f"{self.stride - left} and reads only what is inside")
        else:
            plural = "s" if left > 1 else ""
            what = (f"  {label}: the {what} does not fit ({float(self.exact):.2f} is not a whole number); "
                    f"PyTorch rounds down to {self.out}, so the last {left} {lines_word}{plural} of the "
                    f"{'padded ' if self.pad else ''}input {'are' if left > 1 else 'is'} never covered")
        fixes = [f"pad {p} -> {(self.size - self.kernel + 2 * p) // self.stride + 1}" for p in self.fits_pad]
        fixes += [f"stride {s} -> {(self.size - self.kernel + 2 * self.pad) // s + 1}" for s in self.fits_stride]
        lines = [what]
        if fixes:
            lines.append(f"    would fit: {', '.join(fixes)}")
        return lines


def output_axis(name: str, size: int, kernel: int, stride: int, pad: int, dilation: int = 1,
                ceil_mode: bool = False, what: str = "filter") -> Axis:
    _positive("stride", stride)
    _positive("kernel size", kernel)
    _positive("dilation", dilation)
    if pad < 0:
        raise CnnlabError(f"padding must be 0 or more, got {pad}")
    _at_most("padding", pad)
    _at_most(f"the input's {name}", size)
    k = dilation * (kernel - 1) + 1
    span = size + 2 * pad - k
    if span < 0:
        raise CnnlabError(
            f"the {k}x{k} {what} is larger than the {size + 2 * pad}-wide {'padded ' if pad else ''}{name} "
            f"of the input, so the output would be empty; use a smaller {what}, more padding, or a larger input")
    exact = Fraction(span, stride) + 1
    out = math.ceil(exact) if ceil_mode else math.floor(exact)
    if ceil_mode and (out - 1) * stride >= size + pad:  # PyTorch drops a window that starts in the padding
        out -= 1
    axis = Axis(name, size, k, stride, pad, exact, out, ceil_mode)
    if not axis.fits:
        axis.fits_pad = _fitting_pads(size, k, stride)
        axis.fits_stride = _fitting_strides(span, k, stride)
    return axis


@dataclass
class ConvReport:
    kind: str  # "conv" or "pool"
    input: tuple[int, int, int]  # H, W, C
    filters: int
    kernel: int
    stride: int
    pad: int
    dilation: int
    groups: int
    height: Axis
    width: Axis
    op: str = "max"

    @property
    def output(self) -> tuple[int, int, int]:
        return self.height.out, self.width.out, self.filters

    @property
    def weights(self) -> int:
        if self.kind == "pool":
            return 0
        return self.kernel * self.kernel * (self.input[2] // self.groups) * self.filters

    @property
    def biases(self) -> int:
        return self.filters if self.kind == "conv" else 0

    @property
    def params(self) -> int:
        return self.weights + self.biases

    @property
    def outputs(self) -> int:
        h, w, c = self.output
        return h * w * c

    @property
    def macs(self) -> int:
        """Multiply-adds for a convolution; for pooling, the values each output compares or averages."""
        per_output = self.kernel * self.kernel * (self.input[2] // self.groups if self.kind == "conv" else 1)
        return self.outputs * per_output

    def as_dict(self) -> dict:
        return {
            "kind": self.kind, "input": list(self.input), "output": list(self.output),
            "kernel": self.kernel, "stride": self.stride, "pad": self.pad, "dilation": self.dilation,
            "groups": self.groups, "fits": self.height.fits and self.width.fits,
            "exact_output": [_num(self.height.exact), _num(self.width.exact)],
            "weights": self.weights, "biases": self.biases, "params": self.params, "macs": self.macs,
        }

    def text(self) -> str:
        h, w, c = self.input
        k = self.kernel
        if self.kind == "conv":
            head = (f"conv: {self.filters} filter{'s' if self.filters > 1 else ''} of {k}x{k}x{c // self.groups}, "
                    f"stride {self.stride}, pad {self.pad}"
                    + (f", dilation {self.dilation}" if self.dilation > 1 else "")
                    + (f", {self.groups} groups" if self.groups > 1 else "") + f", on a {h}x{w}x{c} input")
        else:
            head = (f"{self.op} pool: {k}x{k} window, stride {self.stride}, pad {self.pad}"
                    + (", ceil mode" if self.height.ceil_mode else "") + f", on a {h}x{w}x{c} input")
        lines = [head]
        if self.dilation > 1:
            lines.append(f"  effective filter size F = D*(K-1)+1 = {self.dilation}*({k}-1)+1 = {self.height.kernel}")
        lines.append("  output size = (W - F + 2P)/S + 1")
        lines.append(f"  height: {self.height.formula}")
        lines.append(f"  width:  {self.width.formula}")
        what = "filter" if self.kind == "conv" else "window"
        if self.width.size == self.height.size:
            lines += self.height.explain_misfit("height and width", what)
        else:
            lines += self.height.explain_misfit(what=what) + self.width.explain_misfit(what=what)
        oh, ow, oc = self.output
        lines.append(f"  output volume: {oh}x{ow}x{oc} = {self.outputs:,} values")
        if self.kind == "conv":
            cin = c // self.groups
            lines.append(f"  weights: {k}*{k}*{cin}*{self.filters} = {self.weights:,}"
                         + (f"  (each filter sees {cin} of {c} channels)" if self.groups > 1 else ""))
            lines.append(f"  biases:  {self.biases:,}")
            lines.append(f"  parameters: {self.weights:,} + {self.biases:,} = {self.params:,}")
            lines.append(f"  multiply-adds: {oh}*{ow}*{oc} outputs x {k}*{k}*{cin} = {self.macs:,}")
        else:
            lines.append("  parameters: 0")
            lines.append(f"  work: {oh}*{ow}*{oc} outputs x {k}*{k} values = {self.macs:,} "
                         f"{'comparisons' if self.op == 'max' else 'additions'}")
        return "\n".join(lines) + "\n"


def conv(input_hwc: tuple[int, int, int] | str, filters: int, kernel: int, stride: int = 1, pad: int = 0,
         dilation: int = 1, groups: int = 1) -> ConvReport:
    """Explain one convolution layer on an H x W x C input."""
    h, w, c = parse_hwc(input_hwc) if isinstance(input_hwc, str) else input_hwc
    _positive("the number of filters", filters)
    _positive("groups", groups)
    if c % groups or filters % groups:
        raise CnnlabError(f"groups={groups} must divide both the input channels ({c}) and the filters ({filters})")
    return ConvReport("conv", (h, w, c), filters, kernel, stride, pad, dilation, groups,
                      output_axis("height", h, kernel, stride, pad, dilation),
                      output_axis("width", w, kernel, stride, pad, dilation))


def pool(input_hwc: tuple[int, int, int] | str, kernel: int, stride: int | None = None, pad: int = 0,
         ceil_mode: bool = False, op: str = "max") -> ConvReport:
    """Explain one pooling layer; ``stride`` defaults to the window size, as in PyTorch."""
    h, w, c = parse_hwc(input_hwc) if isinstance(input_hwc, str) else input_hwc
    stride = kernel if stride is None else stride
    if pad * 2 > kernel:
        raise CnnlabError(f"pooling padding {pad} is more than half the {kernel}x{kernel} window; "
                          f"PyTorch allows at most {kernel // 2}")
    if op not in ("max", "avg"):
        raise CnnlabError(f"pooling must be 'max' or 'avg', got {op!r}")
    return ConvReport("pool", (h, w, c), c, kernel, stride, pad, 1, 1,
                      output_axis("height", h, kernel, stride, pad, 1, ceil_mode, "window"),
                      output_axis("width", w, kernel, stride, pad, 1, ceil_mode, "window"), op=op)


# -- receptive field of a stack ------------------------------------------------------------------------

_LAYER = re.compile(r"^(conv|pool)([0-9]+)(?:s([0-9]+))?(?:p([0-9]+))?(?:d([0-9]+))?(?:\*([0-9]+))?$")


def parse_layers(specs: list[str]) -> list[tuple[str, int, int, int, int]]:
    """'conv3' 'conv7s2p3' 'pool2s2' 'conv3*3' (three of them) 'conv3d2' (dilation 2) -> layers."""
    layers = []
    for raw in specs:
        for spec in filter(None, re.split(r"[,\s]+", raw)):
            m = _LAYER.match(spec.lower())
            if not m:
                raise CnnlabError(
                    f"layer {spec[:40]!r} is not understood; write conv or pool, the kernel size, then optional "
                    f"s<stride> p<pad> d<dilation> *<repeat>, e.g. conv3 conv7s2p3 pool2s2 conv3*3")
            spec = spec[:40] + ("..." if len(spec) > 40 else "")
            kind, k = m.group(1), _whole(m.group(2), f"the kernel size in {spec!r}")
            s = _whole(m.group(3), f"the stride in {spec!r}") if m.group(3) else (k if kind == "pool" else 1)
            p = _whole(m.group(4) or "0", f"the padding in {spec!r}")
            d = _whole(m.group(5) or "1", f"the dilation in {spec!r}")
            n = _whole(m.group(6) or "1", f"the repeat count in {spec!r}")
            for what, v in (("kernel size", k), ("stride", s), ("dilation", d), ("repeat count", n)):
                _positive(f"{what} in {spec!r}", v)
            _at_most(f"the padding in {spec!r}", p)
            if len(layers) + n > MAX_LAYERS:
                raise CnnlabError(f"the stack has {len(layers) + n:,} layers with {spec!r}; `calc rf` takes at most "
                                  f"{MAX_LAYERS:,} (one row each), so use fewer or a smaller repeat count")
            layers += [(f"{kind}{k}" + (f"s{s}" if s != 1 else "") + (f"p{p}" if p else "")
                        + (f"d{d}" if d != 1 else ""), k, s, p, d)] * n
    if not layers:
        raise CnnlabError("give at least one layer, e.g. cnnlab calc rf conv3 conv3 conv3")
    return layers


@dataclass
class RFReport:
    layers: list[tuple[str, int, int, int, int]]
    fields: list[RF]
    input_size: int | None = None

    @property
    def size(self):
        return _num(self.fields[-1].size[0])

    def sizes(self) -> list[int | None]:
        if self.input_size is None:
            return [None] * len(self.fields)
        out = [self.input_size]
        for _, k, s, p, d in self.layers:
            n = out[-1]
            out.append(None if n is None or n + 2 * p - d * (k - 1) - 1 < 0
                       else (n + 2 * p - d * (k - 1) - 1) // s + 1)
        return out

    def as_dict(self) -> dict:
        return {
            "receptive_field": self.size,
            "layers": [{"layer": name, "kernel": k, "stride": s, "pad": p, "dilation": d,
                        "rf": _num(f.size[0]), "jump": _num(f.jump[0]), "start": _num(f.start[0]),
                        "output": n}
                       for (name, k, s, p, d), f, n in zip(self.layers, self.fields[1:], self.sizes()[1:])],
        }

    def text(self) -> str:
        sizes = self.sizes()
        head = f"{'layer':<12}{'k':>4}{'s':>4}{'p':>4}{'d':>4}{'rf':>7}{'jump':>7}{'start':>8}"
        if self.input_size is not None:
            head += f"{'output':>8}"
        lines = ["rf += (k-1)*d*jump;  start += ((k-1)*d/2 - p)*jump;  jump *= s", "", head]
        f0 = self.fields[0]
        first = f"{'input':<12}{'':>16}{_num(f0.size[0]):>7}{_num(f0.jump[0]):>7}{_num(f0.start[0]):>8}"
        lines.append(first + (f"{sizes[0]:>8}" if self.input_size is not None else ""))
        for (name, k, s, p, d), f, n in zip(self.layers, self.fields[1:], sizes[1:]):
            row = (f"{name:<12}{k:>4}{s:>4}{p:>4}{d:>4}{_num(f.size[0]):>7}{_num(f.jump[0]):>7}"
                   f"{_num(f.start[0]):>8}")
            if self.input_size is not None:
                row += f"{'empty' if n is None else n:>8}"
            lines.append(row)
        rf = self.size
        lines += ["", f"receptive field: {rf}x{rf}"]
        return "\n".join(lines) + "\n"


def receptive_field(specs: list[str] | str, input_size: int | None = None) -> RFReport:
    layers = parse_layers([specs] if isinstance(specs, str) else specs)
    if input_size is not None:
        _positive("input size", input_size)
    fields = stack_rf([(k, s, p, d) for _, k, s, p, d in layers], limit=MAX_FIELD)
    if len(fields) <= len(layers):
        name = layers[len(fields) - 1][0]
        raise CnnlabError(f"the receptive field grows past {MAX_FIELD:.0e} pixels at layer {len(fields)} ({name}); "
                          f"no image is that large, so use fewer layers or smaller strides")
    return RFReport(layers, fields, input_size)
