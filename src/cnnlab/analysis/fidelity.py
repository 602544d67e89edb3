"""The fidelity report: every figure a paper (or torchvision) publishes for a model, beside ours.

Parameters, multiply-adds and neuron counts follow from the architecture, so cnnlab computes them and says
whether they agree within the rounding of the source ("133M" agrees with anything from 132.5M to 133.5M).
Accuracies need trained weights: with a run (``cnnlab fidelity --run RUN``) the run's checkpoint is
evaluated on the test set of the figure's dataset and set beside the published error, for every figure
measured on that dataset with the run's model options; the others are listed for reference.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import torch

from cnnlab.analysis.summary import summary
from cnnlab.errors import CnnlabError
from cnnlab.models.registry import (COMPUTABLE, METRICS, Figure, create_model, list_models, model_card,
                                    model_options)

# the cnnlab datasets that stand in for a figure's dataset (the same images, stored differently)
STAND_INS = {"cifar10_jpeg": "cifar10"}


def agrees(ours: float, printed: float, precision: float, tolerance: float = 0.0) -> bool:
    """Whether our figure agrees with a printed one: it rounds to it, i.e. lies within half of ``precision``,
    the unit of the last digit printed ("133M" agrees with 132.5M to 133.5M), or within ``tolerance`` (a
    fraction of the printed figure) where the source declares its figures loose.

    The one rule of the fidelity report and of the paper tables under `cnnlab summary`. Published figures
    carry no tolerance. GoogLeNet's Table 1 declares 1% (see ``googlenet.PAPER_TABLE``): its figures are
    rounded loosely (inception4e's 840K is 847K by the table's own layers), so it marks only the larger
    gaps. Its former rule, within 1 unit or 1%, and this one give the same verdict on every figure of the
    table: none lies more than half a unit and less than 1 unit away without also being within 1%.
    """
    diff = abs(ours - printed)
    # 1e-9: a value exactly half a unit away (159.5 against 159) still rounds to the figure in floating point
    return diff <= precision / 2 * (1 + 1e-9) or diff <= tolerance * abs(printed)


@dataclass
class FidelityRow:
    model: str
    figure: Figure
    ours: float | None
    trained: bool = False  # ours measured on a run's trained weights, not computed from the architecture
    images: int = 0  # how many test images the measurement counted

    @property
    def noise(self) -> float | None:
        """Two standard errors, in points, of a rate like the published one measured on ``images`` images
        (sqrt(p(1-p)/n)): measured differences smaller than this are within the test set's sampling noise."""
        if not self.trained or not self.images:
            return None
        q = min(max(self.figure.value / 100, 0.0), 1.0)
        return 200 * math.sqrt(q * (1 - q) / self.images)

    @property
    def diff(self) -> float | None:
        return None if self.ours is None else self.ours - self.figure.value

    @property
    def relative(self) -> float | None:
        return None if self.ours is None or not self.figure.value else self.diff / self.figure.value

    @property
    def agrees(self) -> bool | None:
        """Whether a computed figure rounds to the published one; None for measured and missing ones."""
        if self.ours is None or self.trained:
            return None
        return agrees(self.ours, self.figure.value, self.figure.precision)

    @property
    def verdict(self) -> str:
        if self.trained:
            if self.diff == 0:
                return "equal"
            if self.noise is not None and abs(self.diff) <= self.noise:
                return "within noise"
            lower_is_better = self.figure.metric.endswith("_err")
            return "better" if (self.diff < 0) == lower_is_better else "worse"
        return {True: "agrees", False: "differs", None: "needs trained weights"}[self.agrees]

    def as_dict(self) -> dict:
        f = self.figure
        return {"model": self.model, "metric": f.metric, "paper": f.value, "precision": f.precision,
                "ours": self.ours, "diff": self.diff, "agrees": self.agrees, "trained": self.trained,
                "images": self.images or None, "noise": self.noise,
                "verdict": self.verdict, "source": f.source, "note": f.note, "options": f.options,
                "dataset": f.dataset or None}


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


def published_figures(name: str) -> tuple[Figure, ...]:
    """The figures on a model's card; a model without any is a mistake worth one sentence."""
    figures = model_card(name).figures
    if not figures:
        raise CnnlabError(f"{name} has no published figures on its card; `cnnlab fidelity` lists all that do")
    return figures


def _measured(metric: str, top1: float, top5: float) -> float:
    return {"test_err": 100 - top1, "top1_err": 100 - top1, "top5_err": 100 - top5, "top1_acc": top1,
            "top5_acc": top5}[metric]


def fidelity_of_run(run: str, data_dir=None, name: str | None = None) -> tuple[list[FidelityRow], str]:
    """The fidelity rows of a run's model with its accuracies measured: the checkpoint is evaluated on the
    test set of its data (one centre view) and compared with every published accuracy measured on that
    dataset for the same model options. Returns the rows and a sentence saying what was measured, or why
    nothing could be. ``name``, if given, must be the run's model."""
    from cnnlab.analysis.evaluate import evaluate
    from cnnlab.runs import load_checkpoint, resolve

    info = load_checkpoint(run)["info"]
    if name and name != info.model:
        raise CnnlabError(f"{run} is a {info.model} run, not {name}; leave the model name out")
    name, data = info.model, info.data
    figures = published_figures(name)
    defaults = model_options(name)
    options = {**defaults, **info.model_options}
    accuracies = [f for f in figures if f.metric not in COMPUTABLE]
    on_data = [f for f in accuracies if f.dataset and f.dataset == STAND_INS.get(data, data)]
    comparable = [f for f in on_data if {**defaults, **f.options} == options]
    rows, note = [], ""
    if comparable:
        report = evaluate([str(run)], data_dir=data_dir, split="test")
        stand_in = f"; {data} is a lossy copy of {STAND_INS[data]}" if data in STAND_INS else ""
        note = (f"Trained weights: {resolve(run)}, scored on the {data} test set ({report.n:,} images, one centre "
                f"view){stand_in}.")
    for f in figures:
        if any(f is c for c in comparable):
            rows.append(FidelityRow(name, f, _measured(f.metric, report.top1, report.top5), trained=True,
                                    images=report.n))
        else:
            rows.append(FidelityRow(name, f, ours(name, f)))
    if not comparable:
        if not accuracies:
            note = f"{name}'s card has no published accuracy to compare a run with."
        elif on_data:
            changed = ", ".join(f"{k}={v!r}" for k, v in options.items() if defaults.get(k) != v)
            note = f"The run's model options ({changed}) are not those of the published {data} figures."
        else:
            where = sorted({f.dataset or "data cnnlab does not ship (ImageNet)" for f in accuracies})
            note = (f"The run is on {data}; {name}'s published accuracies are on {' and '.join(where)}, so "
                    f"none is measured.")
    return rows, note


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
    return f"{row.ours:,.0f}" if row.figure.metric in COMPUTABLE else f"{row.ours:.2f}"


def _diff_text(row: FidelityRow) -> str:
    if row.ours is None:
        return ""
    if row.trained:
        return f"{row.diff:+.2f} points"
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


def render(rows: list[FidelityRow], fmt: str = "table", note: str = "") -> str:
    """The rows as a table, Markdown or JSON; ``note`` (what a run's measurement was) ends the text forms."""
    if fmt == "json":
        return json.dumps([r.as_dict() for r in rows], indent=2) + "\n"
    cells = _cells(rows)
    if fmt == "md":
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join(["---"] * len(COLUMNS)) + "|"]
        lines += ["| " + " | ".join(c) + " |" for c in cells]
        return "\n".join(lines) + (f"\n\n{note}" if note else "") + "\n"
    import io

    from rich import box
    from rich.console import Console
    from rich.table import Table

    t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    for i, col in enumerate(COLUMNS):
        t.add_column(col, justify="right" if 2 <= i <= 4 else "left", no_wrap=True)
    for c in cells:
        t.add_row(*c)
    # force_jupyter=False: in a notebook rich would display the table itself and leave the string empty
    console = Console(width=400, file=io.StringIO(), color_system=None, force_jupyter=False)
    console.print(t)
    text = "\n".join(line.rstrip() for line in console.file.getvalue().splitlines())
    computed = [r for r in rows if r.agrees is not None]
    agree = sum(r.agrees for r in computed)
    measured = [r for r in rows if r.trained]
    text += f"\n\n{agree} of {len(computed)} computable figures agree within the source's rounding."
    if measured:
        pairs = [f"{METRICS[r.figure.metric]} {r.ours:.2f} against {_fmt(r.figure.value, r.figure.precision)}, "
                 f"{r.verdict} (2 standard errors on {r.images:,} images: ±{r.noise:.2f} points)" for r in measured]
        text += "\nMeasured: " + "; ".join(pairs) + "."
    elif not note:
        measurable = sorted({r.figure.dataset for r in rows if r.ours is None and r.figure.dataset})
        if measurable:
            text += (f"\nAccuracies on {' and '.join(measurable)}: `cnnlab fidelity --run RUN` measures a trained "
                     f"run's beside them.")
    return text + (f"\n{note}" if note else "") + "\n"
