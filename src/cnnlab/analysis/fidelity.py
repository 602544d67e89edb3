"""The fidelity report: every figure a paper (or torchvision) publishes for a model, beside ours.

Parameters, multiply-adds and neuron counts follow from the architecture, so cnnlab computes them and says
whether they agree within the rounding of the source ("133M" agrees with anything from 132.5M to 133.5M).
Accuracies need trained weights; they are listed for reference.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import torch

from cnnlab.analysis.summary import summary
from cnnlab.models.registry import COMPUTABLE, METRICS, Figure, create_model, list_models, model_card


@dataclass
class FidelityRow:
    model: str
    figure: Figure
    ours: float | None

    @property
    def diff(self) -> float | None:
        return None if self.ours is None else self.ours - self.figure.value

    @property
    def relative(self) -> float | None:
        return None if self.ours is None or not self.figure.value else self.diff / self.figure.value

    @property
    def agrees(self) -> bool | None:
        if self.ours is None:
            return None
        return abs(self.diff) <= self.figure.precision / 2 * (1 + 1e-9)

    @property
    def verdict(self) -> str:
        return {True: "agrees", False: "differs", None: "needs trained weights"}[self.agrees]

    def as_dict(self) -> dict:
        f = self.figure
        return {"model": self.model, "metric": f.metric, "paper": f.value, "precision": f.precision,
                "ours": self.ours, "diff": self.diff, "agrees": self.agrees, "source": f.source,
                "note": f.note, "options": f.options}


def ours(name: str, figure: Figure) -> float | None:
    """Compute a figure from the architecture, or None if it needs trained weights."""
    if figure.metric not in COMPUTABLE:
        return None
    if figure.metric == "params":
        with torch.device("meta"):
            model = create_model(name, **figure.options)
        return sum(p.numel() for p in model.parameters())
    s = summary(name, **figure.options)
    if figure.metric == "macs":
        return s.total_macs
    # neurons: the units of the convolutional and fully connected layers, as AlexNet's paper counts them
    return sum(r.activation_elements for r in s.rows if r.is_leaf and r.type in ("Conv2d", "Linear"))


def fidelity(names: list[str] | str | None = None) -> list[FidelityRow]:
    if isinstance(names, str):
        names = [names]
    names = names if names else list_models()
    rows = []
    for name in names:
        for f in model_card(name).figures:
            rows.append(FidelityRow(name, f, ours(name, f)))
    return rows


def _fmt(value: float | None, precision: float) -> str:
    """Print a published figure the way its source rounds it: 133e6 with precision 1e6 -> '133 M'."""
    if value is None:
        return "-"
    if precision <= 1:
        return f"{value:,.{max(0, -math.floor(math.log10(precision) + 1e-9))}f}"
    scale, suffix = next(((s, x) for s, x in ((1e9, " G"), (1e6, " M"), (1e3, " K")) if abs(value) >= s),
                         (1, ""))
    decimals = max(0, round(math.log10(scale / precision)))
    return f"{value / scale:,.{decimals}f}{suffix}"


def _ours_text(row: FidelityRow) -> str:
    if row.ours is None:
        return "-"
    return f"{row.ours:,.0f}" if row.figure.metric in COMPUTABLE else f"{row.ours}"


def _diff_text(row: FidelityRow) -> str:
    if row.ours is None:
        return ""
    if row.diff == 0:
        return "0"
    return f"{row.diff:+,.0f} ({row.relative * 100:+.2f}%)"


COLUMNS = ("Model", "Figure", "Published", "Ours", "Difference", "Verdict", "Source")


def _cells(rows: list[FidelityRow]) -> list[list[str]]:
    out = []
    for r in rows:
        f = r.figure
        what = METRICS[f.metric] + (f" [{', '.join(f'{k}={v}' for k, v in f.options.items())}]" if f.options else "")
        source = f.source + (f"; {f.note}" if f.note and not f.options else "")
        out.append([r.model, what, _fmt(f.value, f.precision), _ours_text(r), _diff_text(r), r.verdict, source])
    return out


def render(rows: list[FidelityRow], fmt: str = "table") -> str:
    if fmt == "json":
        return json.dumps([r.as_dict() for r in rows], indent=2) + "\n"
    cells = _cells(rows)
    if fmt == "md":
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join(["---"] * len(COLUMNS)) + "|"]
        lines += ["| " + " | ".join(c) + " |" for c in cells]
        return "\n".join(lines) + "\n"
    import io

    from rich import box
    from rich.console import Console
    from rich.table import Table

    t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for i, col in enumerate(COLUMNS):
        t.add_column(col, justify="right" if 2 <= i <= 4 else "left", no_wrap=True)
    for c in cells:
        t.add_row(*c)
    console = Console(width=400, file=io.StringIO(), color_system=None)
    console.print(t)
    text = "\n".join(line.rstrip() for line in console.file.getvalue().splitlines())
    computed = [r for r in rows if r.agrees is not None]
    agree = sum(r.agrees for r in computed)
    return text + f"\n\n{agree} of {len(computed)} computable figures agree within the source's rounding.\n"
