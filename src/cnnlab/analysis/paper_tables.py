"""A paper's per-layer table, recomputed from the model and printed beside the paper's figures.

A model card's ``paper_table`` holds the table as the paper prints it (GoogLeNet's Table 1: per row, the
parameters as weights without biases in K = 1024, and the operations as millions of multiply-adds);
:func:`paper_table_rows` computes the same two columns from the model with the inspector, and
:func:`render_paper_table` prints them side by side, marking with '<-' each printed figure that does not
agree with ours by the fidelity report's rule (:func:`cnnlab.analysis.fidelity.agrees`). `cnnlab summary`
prints it under the model's summary.
"""

from __future__ import annotations

from decimal import Decimal

from cnnlab.analysis.fidelity import agrees
from cnnlab.analysis.summary import summary
from cnnlab.errors import CnnlabError
from cnnlab.models.registry import PaperTable, model_card


def printed_precision(value: float) -> float:
    """The unit of the last digit a figure was printed with: 2.7 -> 0.1, 112 -> 1."""
    return 10.0 ** min(0, Decimal(str(value)).as_tuple().exponent)


def _table(name: str) -> PaperTable:
    table = model_card(name).paper_table
    if table is None:
        raise CnnlabError(f"{name}'s card has no paper table; GoogLeNet's (googlenet_paper) is the one cnnlab "
                          f"recomputes")
    return table


def paper_table_rows(name: str) -> list[dict]:
    """Per row of the card's table: the paper's params (K) and ops (M), ours, and whether each agrees."""
    table = _table(name)
    rows = {r.name: r for r in summary(name, **table.options).rows}
    out = []
    for row, (paper_k, paper_m) in table.rows.items():
        modules = table.modules.get(row, (row,))
        params_k = sum(rows[m].weights for m in modules) / 1024
        ops_m = sum(rows[m].macs for m in modules) / 1e6
        out.append({"row": row, "paper_params_k": paper_k, "params_k": params_k,
                    "paper_ops_m": paper_m, "ops_m": ops_m,
                    "params_agree": agrees(params_k, paper_k, printed_precision(paper_k), table.tolerance),
                    "ops_agree": agrees(ops_m, paper_m, printed_precision(paper_m), table.tolerance)})
    return out


def render_paper_table(name: str) -> str:
    table = _table(name)
    lines = [
        f"{table.source}, recomputed from the layers (params: weights without biases, in K = 1024",
        "weights, as the paper counts them; ops: multiply-adds). '<-' marks a printed figure that does not",
        f"follow from the paper's own layer list (off by more than {table.tolerance:.0%} and more than rounding).",
        "",
        f"{'row':<12} {'params (paper)':>14} {'params (ours)':>14} {'ops (paper)':>12} {'ops (ours)':>11}",
    ]
    for r in paper_table_rows(name):
        off = [what for what in ("params", "ops") if not r[f"{what}_agree"]]
        flag = f"  <- {' and '.join(off)}" if off else ""
        lines.append(f"{r['row']:<12} {r['paper_params_k']:>13g}K {r['params_k']:>13.1f}K "
                     f"{r['paper_ops_m']:>11g}M {r['ops_m']:>10.1f}M{flag}")
    return "\n".join(lines)


def with_paper_table(text: str, name: str) -> str:
    """A summary's table followed by the paper's own per-layer table, when the model's card has one."""
    if model_card(name).paper_table is None:
        return text
    return text.rstrip("\n") + "\n\n" + render_paper_table(name) + "\n"
