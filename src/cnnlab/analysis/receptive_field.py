"""Receptive fields: the analytic recurrence for one layer and the rules that carry it through any graph.

For every tensor with spatial axes we keep, per axis, three numbers (Araujo, Norris & Sim 2019, "Computing
receptive fields of convolutional neural networks", Distill):

* ``size``  — how many input pixels one output unit sees,
* ``jump``  — how many input pixels apart two neighbouring output units are (the product of strides),
* ``start`` — the input coordinate of the centre of the first output unit's field (pixel centres at 0, 1, ...;
  padding makes it negative, even kernels make it fractional).

A layer with kernel k, stride s, padding p and dilation d maps them as

    size  += (k - 1) * d * jump
    start += ((k - 1) * d / 2 - p) * jump
    jump  *= s

Where branches meet (addition, concatenation) the field of an output unit is the union of the fields of the
units it reads, so the intervals are merged. Once the spatial layout is gone (flatten, global pooling) a
unit sees the union over all positions: the field is "global" and has no jump.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence


def _num(x) -> int | float:
    """Show 3.0 as 3 and 1/2 as 0.5."""
    x = Fraction(x)
    return int(x) if x.denominator == 1 else float(x)


@dataclass(frozen=True)
class RF:
    size: tuple  # per spatial axis (height, width)
    jump: tuple
    start: tuple
    spatial: bool = True  # False once the spatial layout is gone

    @classmethod
    def input(cls, ndim: int = 2) -> "RF":
        return cls((Fraction(1),) * ndim, (Fraction(1),) * ndim, (Fraction(0),) * ndim)

    def layer(self, kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int],
              dilation: Sequence[int]) -> "RF":
        """The field after a convolution or pooling window, axis by axis."""
        size, jump, start = [], [], []
        for r, j, s0, k, s, p, d in zip(self.size, self.jump, self.start, kernel, stride, padding, dilation):
            size.append(r + (k - 1) * d * j)
            start.append(s0 + (Fraction((k - 1) * d, 2) - p) * j)
            jump.append(j * s)
        return RF(tuple(size), tuple(jump), tuple(start), self.spatial)

    def shift(self, offsets: Sequence, steps: Sequence[int] = None) -> "RF":
        """Drop ``offsets`` units at the start of each axis (negative: pad), then keep every ``steps``-th."""
        steps = steps or (1,) * len(self.size)
        start = tuple(s + o * j for s, o, j in zip(self.start, offsets, self.jump))
        jump = tuple(j * st for j, st in zip(self.jump, steps))
        return RF(self.size, jump, start, self.spatial)

    def interval(self, axis: int) -> tuple:
        half = (self.size[axis] - 1) / Fraction(2)
        return self.start[axis] - half, self.start[axis] + half

    def globalise(self, extent: Sequence[int]) -> "RF":
        """The field of a unit that reads every position of a map with ``extent`` positions per axis."""
        if not self.spatial:
            return self
        size = tuple(r + (n - 1) * j for r, n, j in zip(self.size, extent, self.jump))
        start = tuple(s + Fraction(n - 1, 2) * j for s, n, j in zip(self.start, extent, self.jump))
        return RF(size, self.jump, start, spatial=False)

    @staticmethod
    def union(fields: Sequence["RF"]) -> "RF":
        fields = list(dict.fromkeys(fields))
        if len(fields) == 1:
            return fields[0]
        ndim = len(fields[0].size)
        size, start = [], []
        for a in range(ndim):
            lo = min(f.interval(a)[0] for f in fields)
            hi = max(f.interval(a)[1] for f in fields)
            size.append(hi - lo + 1)
            start.append((lo + hi) / 2)
        spatial = [f for f in fields if f.spatial]
        jump = spatial[0].jump if spatial else fields[0].jump
        return RF(tuple(size), jump, tuple(start), spatial=bool(spatial))

    # -- display ---------------------------------------------------------------------------------------
    def as_dict(self) -> dict:
        return {
            "size": [_num(x) for x in self.size],
            "jump": [_num(x) for x in self.jump] if self.spatial else None,
            "start": [_num(x) for x in self.start],
            "global": not self.spatial,
        }

    @staticmethod
    def _pair(values) -> str:
        vals = [_num(v) for v in values]
        return str(vals[0]) if len(set(vals)) == 1 else "x".join(str(v) for v in vals)

    @property
    def size_text(self) -> str:
        return self._pair(self.size)

    @property
    def jump_text(self) -> str:
        return self._pair(self.jump) if self.spatial else "-"

    @property
    def start_text(self) -> str:
        return self._pair(self.start)

    def __str__(self) -> str:
        sz = "x".join(str(_num(s)) for s in self.size)
        if not self.spatial:
            return f"{sz} (global)"
        return f"{sz}, jump {self.jump_text}, start {self.start_text}"


def stack_rf(layers: Sequence[tuple[int, int, int, int]], limit: int | None = None) -> list[RF]:
    """The analytic recurrence over a sequential stack of (kernel, stride, padding, dilation) layers,
    one axis; returns the field after each layer (the input's first). With ``limit``, it stops after the first
    layer whose field, jump or start passes ``limit`` pixels (the list is then shorter than the stack + 1)."""
    out = [RF.input(1)]
    for k, s, p, d in layers:
        out.append(out[-1].layer((k,), (s,), (p,), (d,)))
        if limit is not None and max(out[-1].size[0], out[-1].jump[0], abs(out[-1].start[0])) > limit:
            out.pop()
            break
    return out
