"""The registry as text a reader reads: the models table (``cnnlab models``) and a model's card (``cnnlab card``).

What a card shows that the models package does not own (the default Grad-CAM layer, the default training
recipe) is passed in by the caller, so that models never import visualize or train.
"""

from __future__ import annotations

from cnnlab.errors import CnnlabError
from cnnlab.models.registry import (METRICS, ModelCard, create_model, list_models, matching, meta_without_init,
                                    model_card, model_options)


def models_row(name: str) -> tuple[str, int, str, int, str]:
    """``cnnlab models``'s row of a model: name, parameters at its defaults, default input, paper year,
    description. Builds the model (without weights) to count its parameters."""
    card = model_card(name)
    with meta_without_init():
        params = sum(p.numel() for p in create_model(name).parameters())
    return name, params, "x".join(map(str, card.input_size)), card.paper.year, card.summary


def render_models(pattern: str | None = None, rows: list[tuple] | None = None) -> str:
    """One line per model matching ``pattern``: name, parameters, default input, paper year, description.
    ``rows`` are every model's :func:`models_row`, sorted by name, where the caller has them (the command line's
    cached table); without them the matching models are built to count their parameters."""
    if rows is None:
        rows = [models_row(n) for n in list_models(pattern)]
    else:
        chosen = set(matching([r[0] for r in rows], pattern))
        rows = [r for r in rows if r[0] in chosen]
    if not rows:
        raise CnnlabError(f"no model matches {pattern!r}; `cnnlab models` lists them all")
    rows = [(n, f"{params:,}", size, str(year), text) for n, params, size, year, text in rows]
    head = ("model", "params", "input", "year", "description")
    widths = [max(len(r[i]) for r in rows + [head[:4] + ("",)]) for i in range(4)]
    fmt = lambda r: f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]:<{widths[3]}}  {r[4]}"
    return "\n".join([fmt(head)] + [fmt(r) for r in rows]) + "\n"


def render_card(card: ModelCard, *, gradcam_layer: str, recipe=None) -> str:
    """The card's text: paper, input, published figures, options; ``gradcam_layer`` is the model's default
    Grad-CAM layer and ``recipe`` its default training recipe (a :class:`cnnlab.train.Recipe`, or None)."""
    c = card
    lines = [
        f"{c.name}: {c.summary}",
        f"  paper:   {c.paper.title}",
        f"           {c.paper.authors} ({c.paper.year})",
        f"           {c.paper.url}",
        f"  input:   {'x'.join(map(str, c.input_size))}, {c.num_classes} classes",
    ]
    if c.figures:
        lines.append("  published figures:")
        for f in c.figures:
            opts = f" [{', '.join(f'{k}={v}' for k, v in f.options.items())}]" if f.options else ""
            value = f"{f.value:,.0f}" if f.metric in ("params", "macs", "neurons") else f"{f.value}"
            lines.append(f"    {METRICS[f.metric]}{opts}: {value}  ({f.source}{'; ' + f.note if f.note else ''})")
    lines.append(f"  Grad-CAM layer: {gradcam_layer} (`cnnlab visualize gradcam`'s default)")
    options = model_options(c.name)
    if options:
        lines.append(f"  options: {', '.join(f'{k}={v!r}' for k, v in options.items())}")
        lines.append("           (set with --model-option KEY=VALUE on summary, train and transfer)")
    if recipe is not None:
        lines.append(f"  recipe:  {recipe.name} ({recipe.source}); `cnnlab recipes` shows its settings")
    else:
        lines.append("  recipe:  none by default; pick one with `cnnlab train --recipe`")
    return "\n".join(lines) + "\n"
