"""The Zoo and Model pages' endpoints: every registered model with its card, and one model's per-layer
summary and graph, with the numbers `cnnlab models`, `cnnlab card` and `cnnlab summary` print.

Endpoints (JSON; a user's mistake is ``{"error": sentence}`` with a 4xx):

``GET /api/models?q=TEXT``
    ``{"models": [{name, description, family, paper, authors, year, url, params, input}], "count"}``: every
    registered model, or those whose name, family, paper, authors, year or description contain TEXT (any case).
    From the cached table (:mod:`cnnlab.catalog`) and the registry's cards: no model is built.
``GET /api/models/{name}``
    the row above plus ``card`` (the text of `cnnlab card NAME`), ``options`` (``{key: default as Python
    writes it}``, what ``--model-option`` accepts), ``input_size``, ``num_classes`` and ``command``.
``GET /api/models/{name}/summary?input=CxHxW&depth=D&opts=K=V;K=V``
    ``{model, input_size, options, command, totals_lines, totals: {...}, max_depth, rows: [{row, name, type,
    depth, is_leaf, repeat, output_shape, shape, weights, biases, params, macs, activation_elements,
    activation_bytes, memory, rf, jump, start}]}``: the summary of `cnnlab summary NAME --input CxHxW --depth D
    --model-option K=V ...`; ``totals_lines`` are its totals, line for line. ``row`` numbers a module call (the
    summary's own row index), which the graph's nodes and groups carry too.
``GET /api/models/{name}/graph?input=CxHxW&opts=K=V;K=V``
    ``{model, input_size, nodes: [{id, kind: input|layer|op|output, name, label, type, row, group, shapes}],
    groups: [{id (= row), name, label, type, parent, depth, inputs, outputs}], edges: [{from, to, shape}]}``
    (see :mod:`cnnlab.lab.graph`).

``opts`` are the ``--model-option`` items joined by ``;`` and read by :func:`registry.coerce_model_options`,
as the command line reads them; a bad one is the same sentence the command line prints.
"""

from __future__ import annotations

import functools
import shlex
import threading

from cnnlab.errors import CnnlabError
from cnnlab.lab.web import LabError, api, query

_lock = threading.Lock()  # builds on the meta device are quick; one at a time keeps the cache simple


# ------------------------------------------------------------------------------------------------- the zoo

@functools.lru_cache(maxsize=1)
def _zoo() -> dict[str, dict]:
    """Every registered model's row: the cached table's numbers and the card's paper and family."""
    from cnnlab.catalog import entry, read_table
    from cnnlab.models.registry import list_models, model_card

    table = read_table() or {}
    out = {}
    for name in list_models():
        e = table.get(name) or entry(name)  # a model added since the table was written: computed once
        card = model_card(name)
        out[name] = {"name": name, "description": e["description"], "family": card.family,
                     "paper": card.paper.title, "authors": card.paper.authors, "year": card.paper.year,
                     "url": card.paper.url, "params": e["params"], "input": e["input"], "card": e["card"]}
    return out


def _search_text(m: dict) -> str:
    return " ".join(str(m[k]) for k in ("name", "family", "paper", "authors", "year", "description")).lower()


def _known(name: str) -> str:
    """The registered name of ``name`` (an old name gives today's), or a 404 with the registry's sentence."""
    from cnnlab.models.registry import canonical_name, model_card

    try:
        model_card(name)
    except CnnlabError as e:
        raise LabError(str(e), 404) from None
    return canonical_name(name)


def _models(lab, request) -> dict:
    q = (query(request, "q", "") or "").strip().lower()
    rows = [{k: v for k, v in m.items() if k != "card"} for m in _zoo().values()]
    if q:
        rows = [m for m in rows if all(word in _search_text(m) for word in q.split())]
    return {"models": rows, "count": len(rows)}


def _card(lab, request) -> dict:
    from cnnlab.models.registry import model_card, model_options

    name = _known(request.path_params["name"])
    card = model_card(name)
    m = _zoo()[name]
    return {**{k: v for k, v in m.items() if k != "card"}, "card": "\n".join(m["card"]),
            "options": {k: repr(v) for k, v in model_options(name).items()},
            "input_size": list(card.input_size), "num_classes": card.num_classes, "command": f"cnnlab card {name}"}


# ------------------------------------------------------------------------------------------- one model

def _option_items(request) -> list[str]:
    text = query(request, "opts", "") or ""
    if len(text) > 2000:
        raise LabError("the model options are too long (2,000 characters at most)")
    return [item.strip() for item in text.split(";") if item.strip()]


def _command(name: str, input_text: str | None, depth: int | None, items: list[str]) -> str:
    """The `cnnlab summary` line that prints the same numbers."""
    parts = ["cnnlab", "summary", name]
    if input_text:
        parts += ["--input", input_text]
    if depth:
        parts += ["--depth", str(depth)]
    for item in items:
        parts += ["--model-option", item]
    return " ".join(shlex.quote(p) for p in parts)


def _request(request) -> tuple[str, tuple | None, str | None, list[str], dict]:
    """The model, input size, option items and options a summary or graph request asks for (checked)."""
    from cnnlab.analysis.summary import parse_input_size
    from cnnlab.models.registry import coerce_model_options

    name = _known(request.path_params["name"])
    input_text = (query(request, "input", "") or "").strip() or None
    size = parse_input_size(input_text) if input_text else None
    items = _option_items(request)
    return name, size, input_text, items, coerce_model_options(name, items)


def _built(fn, name: str, *args):
    """``fn(name, *args)``, where a builder's own complaint about an option (a ValueError, an assertion) becomes
    one sentence for the page instead of a 500."""
    try:
        with _lock:
            return fn(name, *args)
    except CnnlabError:
        raise
    except (ValueError, TypeError, AssertionError, KeyError) as e:
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LabError(f"{name} cannot be built with these options ({text}); `cnnlab card {name}` lists its "
                       f"options and their defaults") from None


@functools.lru_cache(maxsize=16)
def _summary_cached(name: str, size: tuple | None, key: str):
    from cnnlab.analysis.summary import summary
    from cnnlab.models.registry import coerce_model_options

    return summary(name, size, **coerce_model_options(name, key.split(";") if key else []))


@functools.lru_cache(maxsize=16)
def _graph_cached(name: str, size: tuple | None, key: str):
    from cnnlab.lab.graph import graph
    from cnnlab.models.registry import coerce_model_options

    return graph(name, size, **coerce_model_options(name, key.split(";") if key else [])).as_dict()


def _row(index: int, r) -> dict:
    from cnnlab.analysis.summary import human_bytes, shape_text

    rf = r.rf
    return {"row": index, "name": r.name, "type": r.type, "depth": r.depth, "is_leaf": r.is_leaf,
            "repeat": r.repeat, "output_shape": r.output_shape, "shape": shape_text(r.output_shape),
            "weights": r.weights, "biases": r.biases, "params": r.params, "macs": r.macs,
            "activation_elements": r.activation_elements, "activation_bytes": r.activation_bytes,
            "memory": human_bytes(r.activation_bytes), "rf": rf.size_text if rf else "?",
            "jump": rf.jump_text if rf else "?", "start": rf.start_text if rf else "?"}


def _summary(lab, request) -> dict:
    name, size, input_text, items, options = _request(request)
    depth = query(request, "depth", 0, int, low=1, high=100) or None
    s = _built(_summary_cached, name, size, ";".join(items))
    index = {id(r): i for i, r in enumerate(s.rows)}
    rows = [_row(index[id(r)], r) for r in s.visible_rows(depth)]
    return {"model": s.model, "input_size": list(s.input_size), "options": {k: repr(v) for k, v in options.items()},
            "command": _command(name, input_text, depth, items), "totals_lines": s.totals_lines(),
            "totals": {"params": s.total_params, "trainable_params": s.trainable_params, "macs": s.total_macs,
                       "flops": s.total_flops, "param_bytes": s.param_bytes,
                       "activation_elements": s.activation_elements, "activation_bytes": s.activation_bytes},
            "max_depth": max((r.depth for r in s.rows), default=0), "depth": depth, "rows": rows}


def _graph(lab, request) -> dict:
    name, size, input_text, items, _ = _request(request)
    g = _built(_graph_cached, name, size, ";".join(items))
    return dict(g, command=_command(name, input_text, None, items))


def routes():
    from starlette.routing import Route

    return [Route("/api/models", api(_models)), Route("/api/models/{name}", api(_card)),
            Route("/api/models/{name}/summary", api(_summary)), Route("/api/models/{name}/graph", api(_graph))]
