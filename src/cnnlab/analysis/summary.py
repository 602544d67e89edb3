"""Per-layer summary: output shape, parameters, multiply-adds, activation memory and receptive field.

Everything is measured on one forward pass of one image in eval mode:

* **Multiply-adds** are counted at the dispatcher from the operations that actually run (convolutions,
  matrix products, functional calls included), with PyTorch's own formulas in ``torch.utils.flop_counter``;
  1 MAC = 2 FLOPs. Each operation is charged to the innermost module running when it is called.
* **Activations** are the elements of each layer's output. The forward total adds the outputs of leaf
  layers and of functional operations written in a container's ``forward`` (a residual addition, a
  concatenation), but not outputs that reuse their input's memory (in-place ReLU, views such as flatten,
  dropout in eval mode). The input image is reported separately.
* **Training estimate** = 3 x parameter memory (weights, gradients, SGD momentum) + 2 x batch x forward
  activation memory (values kept for backward, and their gradients).
* **Receptive fields** are propagated through the graph operation by operation (see ``receptive_field``),
  so branches and shortcuts are exact, not guessed from the module order.

When a model is given by name it is built on PyTorch's "meta" device: shapes and counts without
allocating or computing anything, so even VGG-19 is summarised in a fraction of a second.
"""

from __future__ import annotations

import csv
import io
import json
import re
from html import escape
from contextlib import contextmanager
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry
from torch.utils.weak import WeakIdKeyDictionary

from cnnlab.analysis.receptive_field import RF
from cnnlab.errors import CnnlabError
from cnnlab.models.layers import LocalResponseNorm, textbook_ops

aten = torch.ops.aten

# Modules whose inside is computed with reshapes the graph rules cannot read, but whose spatial effect is
# known: the output field equals the input field.
_POINTWISE_MODULES = (nn.LocalResponseNorm, LocalResponseNorm, nn.CrossMapLRN2d)


@dataclass
class LayerRow:
    name: str
    type: str
    depth: int
    parent: int | None
    is_leaf: bool
    repeat: bool = False  # a module called more than once: parameters counted at its first call
    output_shape: list = field(default_factory=list)  # per image (batch axis removed)
    weights: int = 0
    biases: int = 0
    trainable: int = 0
    own_macs: int = 0
    macs: int = 0
    activation_elements: int = 0
    activation_bytes: int = 0
    # Elements newly allocated: a leaf's output (0 if in-place or a view); for a container, the outputs of
    # the functional operations in its own forward (a residual addition, a concatenation).
    new_elements: int = 0
    new_bytes: int = 0
    rf: RF | None = None

    @property
    def params(self) -> int:
        return self.weights + self.biases

    def as_dict(self) -> dict:
        return {
            "name": self.name, "type": self.type, "depth": self.depth,
            "output_shape": self.output_shape, "weights": self.weights, "biases": self.biases,
            "params": self.params, "macs": self.macs, "activation_elements": self.activation_elements,
            "activation_bytes": self.activation_bytes,
            "receptive_field": self.rf.as_dict() if self.rf else None,
        }


@dataclass
class Summary:
    model: str
    input_size: tuple
    rows: list[LayerRow]
    total_params: int
    trainable_params: int
    param_bytes: int
    total_macs: int
    activation_elements: int
    activation_bytes: int
    input_elements: int
    receptive_field: RF | None
    receptive_field_layer: str | None
    untracked_ops: list[str] = field(default_factory=list)
    depth: int | None = None  # rows shown by table(): None = every leaf layer
    batch_size: int = 1  # the batch asked for (torchinfo style); every count above is for one image

    @property
    def total_flops(self) -> int:
        """Floating-point operations of one image: two per multiply-add (the papers' "FLOPs" are often MACs)."""
        return 2 * self.total_macs

    flops = total_flops  # the earlier name

    @property
    def batch_macs(self) -> int:
        """Multiply-adds of the whole batch (torchinfo's "Total mult-adds" for an input with a batch of N)."""
        return self.batch_size * self.total_macs

    total_mult_adds = batch_macs  # torchinfo's name, for code written for it (its count adds biases and BN terms)

    def training_bytes(self, batch_size: int = 1) -> int:
        return 3 * self.param_bytes + 2 * batch_size * self.activation_bytes

    def visible_rows(self, depth: int | None = None) -> list[LayerRow]:
        """Leaf layers, or with ``depth`` the modules at that depth (and shallower leaves)."""
        depth = self.depth if depth is None else depth
        if depth is None:
            return [r for r in self.rows if r.is_leaf and r.depth > 0]
        return [r for r in self.rows if 0 < r.depth <= depth and (r.depth == depth or r.is_leaf)]

    def row(self, name: str) -> LayerRow:
        """The row of the module ``name`` (as in ``model.named_modules()``)."""
        found = next((r for r in self.rows if r.name == name), None)
        if found is None:
            import difflib

            near = difflib.get_close_matches(name, [r.name for r in self.rows if r.name], n=3)
            hint = f"; did you mean {', '.join(near)}?" if near else "; the names are those of model.named_modules()"
            raise CnnlabError(f"{self.model} has no layer {name!r}{hint}")
        return found

    # -- renderings ------------------------------------------------------------------------------------
    def as_dict(self, depth: int | None = None) -> dict:
        return {
            "model": self.model,
            "input_size": list(self.input_size),
            "total_params": self.total_params,
            "trainable_params": self.trainable_params,
            "param_bytes": self.param_bytes,
            "total_macs": self.total_macs,
            "total_flops": self.flops,
            "activation_elements": self.activation_elements,
            "activation_bytes": self.activation_bytes,
            "input_elements": self.input_elements,
            "training_bytes_batch1": self.training_bytes(1),
            "receptive_field": (dict(self.receptive_field.as_dict(), layer=self.receptive_field_layer)
                                if self.receptive_field else None),
            "layers": [r.as_dict() for r in self.visible_rows(depth)],
        }

    to_dict = as_dict

    def _repr_markdown_(self) -> str:  # a notebook shows the CLI's table
        return self.markdown()

    def _repr_html_(self) -> str:  # Jupyter shows the richest form it is given: HTML before markdown
        return self.html()

    def to_dataframe(self, depth: int | None = None):
        """The rows as a pandas DataFrame, one per layer, with the columns of :meth:`csv` (numbers as numbers;
        a receptive field not known is None). pandas is optional: ``pip install pandas``."""
        try:
            import pandas as pd
        except ImportError:
            raise CnnlabError("to_dataframe() needs pandas, which is not installed: pip install pandas") from None
        return pd.DataFrame(self._records(depth), columns=list(self._FIELDS))

    def to_json(self, depth: int | None = None) -> str:
        return json.dumps(self.as_dict(depth), indent=2)

    _COLUMNS = ("Layer", "Type", "Output", "Weights", "Biases", "MACs", "Activations", "Memory",
                "RF", "Jump", "Start")

    def _cells(self, depth: int | None) -> list[list[str]]:
        out = []
        for r in self.visible_rows(depth):
            name = r.name
            rf = r.rf
            out.append([
                name, r.type, shape_text(r.output_shape),
                "-" if r.repeat else f"{r.weights:,}", "-" if r.repeat else f"{r.biases:,}",
                f"{r.macs:,}", f"{r.activation_elements:,}", human_bytes(r.activation_bytes),
                rf.size_text if rf else "?", rf.jump_text if rf else "?", rf.start_text if rf else "?",
            ])
        return out

    def totals_lines(self) -> list[str]:
        lines = [
            f"Input: {shape_text(self.input_size)} = {self.input_elements:,} elements",
            f"Parameters: {self.total_params:,} (trainable {self.trainable_params:,}), "
            f"{human_bytes(self.param_bytes)}",
            f"Multiply-adds: {self.total_macs:,} ({si(self.total_macs)}MACs) = {si(self.flops)}FLOPs "
            f"(1 MAC = 2 FLOPs)",
            f"Forward activations per image: {self.activation_elements:,} elements, "
            f"{human_bytes(self.activation_bytes)}",
            f"Training estimate, batch 1: {human_bytes(self.training_bytes(1))} "
            f"(3 x parameters + 2 x activations)",
        ]
        if self.receptive_field is not None:
            lines.append(f"Receptive field of {self.receptive_field_layer}: {self.receptive_field}")
        if self.untracked_ops:
            lines.append(f"Receptive field{' of the output unknown:' if self.receptive_field is None else ''} "
                         f"not tracked through: " + ", ".join(self.untracked_ops))
        return lines

    def table(self, depth: int | None = None) -> str:
        from rich import box
        from rich.console import Console
        from rich.table import Table

        t = Table(title=f"{self.model} on {shape_text(self.input_size)}", box=box.SIMPLE_HEAD,
                  title_justify="left", show_edge=False, pad_edge=False)
        for i, col in enumerate(self._COLUMNS):
            t.add_column(col, justify="left" if i < 3 else "right", no_wrap=True)
        for cells in self._cells(depth):
            t.add_row(*cells)
        # force_jupyter=False: in a notebook rich would display the table itself and leave the string empty
        console = Console(width=400, file=io.StringIO(), color_system=None, force_jupyter=False,
                          legacy_windows=False)
        console.print(t)
        text = "\n".join(line.rstrip() for line in console.file.getvalue().splitlines())
        return text + "\n\n" + "\n".join(self.totals_lines()) + "\n"

    def markdown(self, depth: int | None = None) -> str:
        lines = ["| " + " | ".join(self._COLUMNS) + " |",
                 "|" + "|".join("---" if i < 3 else "---:" for i in range(len(self._COLUMNS))) + "|"]
        for cells in self._cells(depth):
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        return "\n".join(lines) + "\n\n" + "\n".join(f"- {x}" for x in self.totals_lines()) + "\n"

    def html(self, depth: int | None = None) -> str:
        """The table of :meth:`table` as an HTML table, and its totals as a list (every text escaped)."""
        head = "".join(f"<th style=\"text-align: {'left' if i < 3 else 'right'}\">{escape(c)}</th>"
                       for i, c in enumerate(self._COLUMNS))
        body = "\n".join("<tr>" + "".join(f"<td style=\"text-align: {'left' if i < 3 else 'right'}\">{escape(c)}</td>"
                                          for i, c in enumerate(cells)) + "</tr>" for cells in self._cells(depth))
        totals = "".join(f"<li>{escape(line)}</li>" for line in self.totals_lines())
        return (f"<table>\n<caption style=\"text-align: left\">{escape(self.model)} on "
                f"{escape(shape_text(self.input_size))}</caption>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n"
                f"</tbody>\n</table>\n<ul>{totals}</ul>\n")

    _FIELDS = ("name", "type", "output_shape", "weights", "biases", "params", "macs", "activation_elements",
               "activation_bytes", "rf_size", "rf_jump", "rf_start")

    def _records(self, depth: int | None) -> list[tuple]:
        """The rows of :meth:`csv` and :meth:`to_dataframe`, in the order of ``_FIELDS``."""
        out = []
        for r in self.visible_rows(depth):
            rf = r.rf
            out.append((r.name, r.type, shape_text(r.output_shape), r.weights, r.biases, r.params, r.macs,
                        r.activation_elements, r.activation_bytes, rf.size_text if rf else None,
                        rf.jump_text if rf else None, rf.start_text if rf else None))
        return out

    def csv(self, depth: int | None = None) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(self._FIELDS)
        w.writerows(self._records(depth))  # a field not known (None) is written empty
        return buf.getvalue()

    def render(self, fmt: str = "table", depth: int | None = None) -> str:
        fmts = {"table": self.table, "md": self.markdown, "csv": self.csv, "json": self.to_json}
        if fmt not in fmts:
            raise CnnlabError(f"unknown format {fmt!r}; choose one of {', '.join(fmts)}")
        return fmts[fmt](depth)

    def __str__(self) -> str:
        return self.table()


def shape_text(shape) -> str:
    if shape and isinstance(shape[0], (list, tuple)):
        return ", ".join(shape_text(s) for s in shape)
    return "x".join(str(int(s)) for s in shape)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError


def si(n: float) -> str:
    """15470264320 -> '15.47 G' (decimal prefixes, as papers print them)."""
    for value, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= value:
            return f"{n / value:.2f} {prefix}"
    return f"{n:.0f} "


# ---------------------------------------------------------------------------------------------------------
# The recorder: module hooks give the rows, a dispatch mode sees every operation.


def _tensors(obj) -> list[torch.Tensor]:
    return [t for t in tree_flatten(obj)[0] if isinstance(t, torch.Tensor)]


def _pair(v, n=2) -> tuple:
    if isinstance(v, int):
        return (v,) * n
    v = tuple(v)
    return v * n if len(v) == 1 else v


def _aliases(func) -> bool:
    """Whether an operation's output reuses an input's memory (a view or an in-place operation)."""
    return any(r.alias_info is not None for r in func._schema.returns)


class _Recorder(TorchDispatchMode):
    def __init__(self, names: dict[int, str]):
        super().__init__()
        self.names = names
        self.rows: list[LayerRow] = []
        self.stack: list[int] = []  # indices into rows of the modules now running
        self.seen: set[int] = set()
        self.rf = WeakIdKeyDictionary()
        self.lost = WeakIdKeyDictionary()  # tensors computed from one whose field is not known
        self.fresh = WeakIdKeyDictionary()  # tensor -> produced by a non-aliasing operation
        self.suppress = 0
        self.untracked: dict[str, None] = {}
        self.last_spatial: tuple[RF, str | None] | None = None

    # -- module hooks ----------------------------------------------------------------------------------
    def pre_hook(self, module: nn.Module, args):
        name = self.names[id(module)]
        depth = 0 if name == "" else name.count(".") + 1
        parent = self.stack[-1] if self.stack else None
        # A row is a leaf until a module is called inside it (a ParameterDict child does not count).
        row = LayerRow(name=name or type(module).__name__, type=type(module).__name__, depth=depth,
                       parent=parent, is_leaf=True)
        if parent is not None:
            self.rows[parent].is_leaf = False
        if id(module) in self.seen:
            row.repeat = True
        else:
            self.seen.add(id(module))
            for pname, p in module.named_parameters():
                n = p.numel()
                if pname.rsplit(".", 1)[-1] == "bias":
                    row.biases += n
                else:
                    row.weights += n
                if p.requires_grad:
                    row.trainable += n
        self.rows.append(row)
        self.stack.append(len(self.rows) - 1)
        if isinstance(module, _POINTWISE_MODULES):
            self.suppress += 1

    def post_hook(self, module: nn.Module, args, output):
        index = self.stack.pop()
        row = self.rows[index]
        ins, outs = _tensors(args), _tensors(output)
        if isinstance(module, _POINTWISE_MODULES):
            self.suppress -= 1
            fields = [self.rf[t] for t in ins if t in self.rf]
            for t in outs:
                if any(i in self.lost for i in ins):
                    self.lost[t] = True
                elif fields:
                    self.rf[t] = RF.union(fields)
                    if self.rf[t].spatial:
                        self.last_spatial = (self.rf[t], row.name)
        shapes = [list(t.shape[1:]) for t in outs]
        row.output_shape = shapes[0] if len(shapes) == 1 else shapes
        row.activation_elements = sum(t.numel() for t in outs)  # the batch is one image
        row.activation_bytes = sum(t.numel() * t.element_size() for t in outs)
        if row.is_leaf:  # a leaf's memory is its output, unless that reuses the input's memory
            new = [t for t in outs if not any(t is i for i in ins) and self.fresh.get(t, True)]
            row.new_elements = sum(t.numel() for t in new)
            row.new_bytes = sum(t.numel() * t.element_size() for t in new)
        if outs and outs[0] in self.rf:
            row.rf = self.rf[outs[0]]

    # -- every operation -------------------------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        outs = _tensors(out)
        aliasing = _aliases(func)
        for t in outs:
            if not aliasing:
                self.fresh[t] = True
            elif t not in self.fresh:
                self.fresh[t] = False
        if self.stack:
            row = self.rows[self.stack[-1]]
            packet = func._overloadpacket
            if packet in flop_registry:
                row.own_macs += flop_registry[packet](*args, **kwargs, out_val=out) // 2
            if not aliasing and outs:  # kept for containers: functional ops written in their forward
                # The first output is the result; others are bookkeeping (pooling indices, BN statistics).
                row.new_elements += outs[0].numel()
                row.new_bytes += outs[0].numel() * outs[0].element_size()
        if not self.suppress:
            self._propagate(func, args, kwargs, outs)
        return out

    def _propagate(self, func, args, kwargs, outs):
        tensors = _tensors((args, kwargs))
        if any(t in self.lost for t in tensors):  # a field built on an unknown one is unknown too
            for t in outs:
                self.lost[t] = True
            return
        ins = [t for t in tensors if t in self.rf]
        if not ins or not outs:
            return
        x = args[0] if args and isinstance(args[0], torch.Tensor) else None
        packet = func._overloadpacket
        result = None
        if x is not None and x in self.rf and self.rf[x].spatial and x.dim() == 4:
            src = self.rf[x]
            if packet is aten.convolution and not args[6]:
                result = src.layer(args[1].shape[2:], _pair(args[3]), _pair(args[4]), _pair(args[5]))
            elif packet in (aten.max_pool2d_with_indices, aten.max_pool2d, aten.avg_pool2d):
                k = _pair(args[1])
                s = _pair(args[2]) if len(args) > 2 and args[2] else k
                p = _pair(args[3]) if len(args) > 3 else (0, 0)
                d = _pair(args[4]) if packet is not aten.avg_pool2d and len(args) > 4 else (1, 1)
                result = src.layer(k, s, p, d)
            elif packet in (aten._adaptive_avg_pool2d, aten.adaptive_max_pool2d, aten.adaptive_avg_pool2d):
                result = self._adaptive(src, x.shape[2:], _pair(args[1]))
            elif packet in (aten.mean, aten.sum, aten.amax, aten.max, aten.amin) and len(args) > 1 \
                    and isinstance(args[1], (list, tuple)) and {d % 4 for d in args[1]} >= {2, 3}:
                result = src.globalise(x.shape[2:])
            elif packet is aten.constant_pad_nd:
                pad = list(args[1]) + [0] * (4 - len(args[1]))
                result = src.shift((-pad[2], -pad[0]))
            elif packet is aten.slice and (args[1] if len(args) > 1 else 0) % 4 in (2, 3):
                axis = args[1] % 4 - 2
                begin = (args[2] if len(args) > 2 and args[2] is not None else 0)
                step = args[4] if len(args) > 4 else 1
                offsets, steps = [0, 0], [1, 1]
                offsets[axis], steps[axis] = max(begin, 0), step
                result = src.shift(offsets, steps)
        if result is None:
            result = self._generic(func, args, ins, outs)
        if result is None:
            for t in outs:
                self.lost[t] = True
        else:
            for t in outs:
                self.rf[t] = result
            if result.spatial:  # the deepest spatial field so far, and the module that produced it
                self.last_spatial = (result, self.rows[self.stack[-1]].name if self.stack else None)

    @staticmethod
    def _adaptive(src: RF, in_size, out_size) -> RF:
        out_size = tuple(i if o is None else o for i, o in zip(in_size, out_size))
        if tuple(out_size) == (1, 1):
            return src.globalise(in_size)
        k, s = [], []
        for i, o in zip(in_size, out_size):
            # window j covers [floor(j*i/o), ceil((j+1)*i/o)); take the widest one and the mean stride.
            k.append(max(-(-(j + 1) * i // o) - (j * i // o) for j in range(o)))
            s.append(Fraction(i, o))
        return src.layer(k, s, (0, 0), (1, 1))

    def _generic(self, func, args, ins, outs) -> RF | None:
        fields = [self.rf[t] for t in ins]
        out = outs[0]
        spatial_in = [t for t in ins if self.rf[t].spatial]
        if not spatial_in:
            return RF.union(fields)  # e.g. linear layers after flatten
        if out.dim() == 4 and all(t.dim() == 4 and t.shape[2:] == out.shape[2:] for t in spatial_in):
            return RF.union(fields)  # elementwise ops, normalisation, concatenation, residual addition
        if out.dim() < 4:  # flatten, view to vectors: every position is read
            return RF.union([self.rf[t].globalise(t.shape[2:]) if self.rf[t].spatial else self.rf[t]
                             for t in ins if t.dim() == 4 or not self.rf[t].spatial])
        transposed = func._overloadpacket is aten.convolution and len(args) > 6 and args[6]
        self.untracked[f"{func._overloadpacket}{' (transposed)' if transposed else ''}"] = None
        return None


@contextmanager
def _recording(model: nn.Module):
    names = {id(m): n for n, m in model.named_modules()}
    rec = _Recorder(names)
    handles = []
    try:
        for m in model.modules():
            handles.append(m.register_forward_pre_hook(rec.pre_hook))
            handles.append(m.register_forward_hook(rec.post_hook))
        with textbook_ops():  # layers run the operation they stand for, e.g. C5 as a convolution
            yield rec
    finally:
        for h in handles:
            h.remove()


# The largest input the summary takes: channels, and pixels per side. The model runs on the meta device (no
# memory), but its counts must stay within 64-bit tensor sizes.
MAX_INPUT = (10_000, 1_000_000)


def parse_input_size(text: str) -> tuple[int, ...]:
    """'3x224x224' -> (3, 224, 224)."""
    parts = text.lower().replace("×", "x").split("x")
    if len(text) > 60 or not all(re.fullmatch(r"[+-]?[0-9]+", p.strip()) for p in parts):
        raise CnnlabError(f"input size {text[:60]!r} is not of the form CxHxW, e.g. 3x224x224")
    dims = tuple(int(p) for p in parts)
    if len(dims) != 3:
        raise CnnlabError(f"input size {text!r} needs three numbers, channels x height x width (e.g. 3x224x224)")
    if min(dims) < 1:
        raise CnnlabError(f"input size {text!r} has a size below 1; every dimension must be positive")
    return dims


def check_input_size(input_size: tuple) -> None:
    if len(input_size) != 3 or min(input_size) < 1:
        raise CnnlabError(f"input size {input_size} must be three positive numbers (channels, height, width)")
    if input_size[0] > MAX_INPUT[0] or max(input_size[1:]) > MAX_INPUT[1]:
        raise CnnlabError(f"input size {'x'.join(map(str, input_size))} is larger than the summary takes (at most "
                          f"{MAX_INPUT[0]:,} channels and {MAX_INPUT[1]:,} pixels a side); give a smaller one")


def summary(model: nn.Module | str, input_size: tuple[int, ...] | str | None = None, *,
            input_data: torch.Tensor | None = None, batch_size: int | None = None, depth: int | None = None,
            dtype: torch.dtype = torch.float32, **model_kwargs: Any) -> Summary:
    """Inspect ``model`` (a module or a registered name, then built with ``model_kwargs``) on one image of
    ``input_size``: (C, H, W), or torchinfo's (N, C, H, W) with the batch first, or the shape of
    ``input_data``. Every count is for one image; ``batch_size`` (or N) is kept for what grows with it.
    A module built by :func:`cnnlab.create_model` brings its name and input size (its ``cnnlab_config``)."""
    from cnnlab.models.registry import create_model, model_card, model_config

    if input_data is not None:
        if input_size is not None:
            raise CnnlabError("give `input_size` or `input_data`, not both", params=("input_size", "input_data"))
        input_size = tuple(input_data.shape)
    if isinstance(input_size, str):
        input_size = parse_input_size(input_size)
    if input_size is not None and len(input_size) == 4:  # torchinfo's (batch, C, H, W)
        if batch_size is not None and batch_size != input_size[0]:
            raise CnnlabError(f"`batch_size` {batch_size} differs from the batch of `input_size` {tuple(input_size)}",
                              params=("batch_size", "input_size"))
        batch_size, input_size = input_size[0], tuple(input_size[1:])
    batch_size = 1 if batch_size is None else batch_size
    if not isinstance(batch_size, int) or batch_size < 1:
        raise CnnlabError(f"`batch_size` must be 1 or more, got {batch_size!r}", params=("batch_size",))
    if not isinstance(model, str) and model_kwargs:
        raise CnnlabError(f"{', '.join(map(repr, model_kwargs))}: model options apply when the model is given by "
                          f"name (cnnlab.summary('resnet20', shortcut='A')); a module is already built")
    if input_size is not None:
        check_input_size(tuple(input_size))
    if isinstance(model, str):
        name = model
        card = model_card(name)
        input_size = tuple(input_size or card.input_size)
        if "in_chans" not in model_kwargs:
            model_kwargs["in_chans"] = input_size[0]
        with torch.device("meta"):
            module = create_model(name, **model_kwargs)
        device = torch.device("meta")
    else:
        # a model cnnlab built knows its name and input size; any other module is named by its class
        config = model_config(model)
        module, name = model, config.name if config else type(model).__name__
        input_size = input_size or (config.input_size if config else None)
        if input_size is None:
            raise CnnlabError("input_size is required when summarising a module; e.g. (3, 224, 224)")
        input_size = tuple(input_size)
        first = next(module.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    check_input_size(input_size)

    x = torch.zeros((1, *input_size), dtype=dtype, device=device)
    was_training = module.training
    module.eval()
    try:
        with _recording(module) as rec, torch.no_grad():
            rec.rf[x] = RF.input(2)
            with rec:
                try:
                    output = module(x)
                except RuntimeError as e:
                    raise CnnlabError(
                        f"{name} cannot run on a {'x'.join(map(str, input_size))} input: {first_line(e)}; "
                        f"try its default input {default_input(name)}") from None
    finally:
        module.train(was_training)

    rows = rec.rows
    for row in reversed(rows):  # children's MACs into their parents
        row.macs += row.own_macs
        if row.parent is not None:
            rows[row.parent].macs += row.macs
    params = list(module.parameters())
    rf, rf_layer = rec.last_spatial or (None, None)
    if any(t in rec.lost for t in _tensors(output)):  # the deepest known field is not the network's
        rf, rf_layer = None, None
    return Summary(
        model=name, input_size=input_size, rows=rows,
        total_params=sum(p.numel() for p in params),
        trainable_params=sum(p.numel() for p in params if p.requires_grad),
        param_bytes=sum(p.numel() * p.element_size() for p in params),
        total_macs=rows[0].macs if rows else 0,
        activation_elements=sum(r.new_elements for r in rows),
        activation_bytes=sum(r.new_bytes for r in rows),
        input_elements=x.numel(),
        receptive_field=rf,
        receptive_field_layer=rf_layer,
        untracked_ops=list(rec.untracked),
        depth=depth,
        batch_size=batch_size,
    )


def first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0].rstrip(".") if str(e).strip() else type(e).__name__


def default_input(name: str) -> str:
    from cnnlab.models.registry import is_model, model_card
    return "x".join(map(str, model_card(name).input_size)) if is_model(name) else "(see its model card)"
