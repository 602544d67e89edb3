"""The network as a graph, for the Model page: nodes are layers, edges carry the tensor that flows between them,
and every module with children (a BasicBlock, an Inception module, a dense block, a Sequential) is a group the
page can collapse into one node.

Built generically, from one forward pass on PyTorch's "meta" device (no memory, no arithmetic), the way
:mod:`cnnlab.analysis.summary` measures a model: forward hooks on every module give the layers (one node per
*call*, so a ReLU module used twice in a block is two nodes, as the summary has two rows), and a dispatch mode
sees each operation a container runs between its children (the residual ``+``, Inception's ``torch.cat``,
DenseNet's concatenations, a ``flatten``). Following each tensor by identity, we know which node produced it:
an addition or a concatenation of tensors from different producers is where branches merge, so the branching
is the model's own, never guessed from the module order.

A node's ``row`` is its index among the summary's rows (both are numbered by module call, in call order): the
page joins the graph and the table on it, and the tests check each edge's shape against that row's output.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

# Operations that only re-label a tensor (a copy, a detach, a dtype or layout change): the tensor keeps its
# producer, so the graph does not grow a node per bookkeeping call.
_PASS_THROUGH = {"clone", "detach", "alias", "lift_fresh", "_to_copy", "contiguous", "lift_fresh_copy"}
# Names the page shows for the operations it most often meets.
_LABELS = {"add": "add", "cat": "concat", "mul": "mul", "view": "reshape", "_unsafe_view": "reshape",
           "mean": "mean", "relu": "relu", "sub": "sub", "stack": "stack", "div": "div"}


def _tensors(obj) -> list[torch.Tensor]:
    return [t for t in tree_flatten(obj)[0] if isinstance(t, torch.Tensor)]


def shape_text(t: torch.Tensor) -> list[int]:
    return [int(s) for s in t.shape[1:]]  # per image: the batch axis dropped, as the summary writes shapes


def _short(name: str) -> str:
    """A node's label: its own name, with its parent's where it is a number (``downsample.0``, not ``0``)."""
    parts = name.split(".")
    label = parts.pop()
    while label.isdigit() and parts:
        label = f"{parts.pop()}.{label}"
    return label


def _aliases(func) -> bool:
    return any(r.alias_info is not None for r in func._schema.returns)


@dataclass
class Graph:
    model: str
    input_size: tuple
    # id, kind (input|layer|op|output), name, label, type, row, group, shapes
    nodes: list[dict] = field(default_factory=list)
    groups: dict[int, dict] = field(default_factory=dict)  # by row: name, label, type, parent, depth, inputs, outputs
    edges: list[dict] = field(default_factory=list)  # from, to (node ids), shape

    def as_dict(self) -> dict:
        return {"model": self.model, "input_size": list(self.input_size), "nodes": self.nodes,
                "groups": [dict(g, id=k) for k, g in sorted(self.groups.items())], "edges": self.edges}


class _Tracer(TorchDispatchMode):
    """Hooks for the modules, the dispatch mode for the operations between them; ``producer`` maps each live
    tensor to the node that made it."""

    def __init__(self, names: dict[int, str], graph: Graph):
        super().__init__()
        self.names, self.graph = names, graph
        self.calls = 0  # module calls so far: a call's number is its row in the summary
        self.stack: list[tuple] = []  # (row, is_leaf, inputs as [(producer, shape)], module, active)
        self.inside_leaf = 0  # > 0 while a leaf module runs: its own operations are its business
        self.producer = WeakIdKeyDictionary()
        self.seen_edges: set = set()

    # -- nodes and edges ---------------------------------------------------------------------------------
    def node(self, kind: str, name: str, label: str, type_: str, row: int | None, shapes: list) -> int:
        group = self._group()
        self.graph.nodes.append({"id": len(self.graph.nodes), "kind": kind, "name": name, "label": label,
                                 "type": type_, "row": row, "group": group, "shapes": shapes})
        return len(self.graph.nodes) - 1

    def edge(self, source: int | None, target: int, shape: list) -> None:
        key = (source, target, tuple(shape))
        if source is None or key in self.seen_edges:  # a constant (no producer), or the same tensor read twice
            return
        self.seen_edges.add(key)
        self.graph.edges.append({"from": source, "to": target, "shape": shape})

    def _group(self) -> int | None:
        """The innermost container running now (None: the model itself, which is no group of its own)."""
        return self.stack[-1][0] if len(self.stack) > 1 else None

    # -- module hooks --------------------------------------------------------------------------------------
    def pre_hook(self, module: nn.Module, args):
        row = self.calls
        self.calls += 1
        leaf = next(module.children(), None) is None
        active = not self.inside_leaf  # a module called from inside a leaf is part of that leaf
        inputs = [(self.producer.get(t), shape_text(t)) for t in _tensors(args)] if active else []
        self.stack.append((row, leaf, inputs, module, active))
        self.inside_leaf += leaf

    def post_hook(self, module: nn.Module, args, output):
        entry = self.stack.pop()
        self.inside_leaf -= entry[1]
        if not entry[4]:
            return
        row, leaf, inputs = entry[:3]
        outs = _tensors(output)
        name = self.names[id(module)]
        if leaf:
            node = self.node("layer", name, _short(name), type(module).__name__, row,
                             [shape_text(t) for t in outs])
            for producer, shape in inputs:
                self.edge(producer, node, shape)
            for t in outs:
                self.producer[t] = node
        elif self.stack:  # a container inside the model: a group
            self.graph.groups[row] = {"name": name, "label": name.rsplit(".", 1)[-1], "type": type(module).__name__,
                                      "parent": self._group(), "depth": name.count(".") + 1,
                                      "inputs": [s for _, s in inputs], "outputs": [shape_text(t) for t in outs]}
        else:  # the model returned: its outputs flow into the output node
            node = self.node("output", "output", "output", "", None, [shape_text(t) for t in outs])
            for t in outs:
                self.edge(self.producer.get(t), node, shape_text(t))

    # -- the operations a container runs itself ---------------------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self.inside_leaf or not self.stack:
            return out
        ins = [t for t in _tensors((args, kwargs)) if t in self.producer]
        outs = _tensors(out)
        if not ins or not outs:
            return out
        op = func._overloadpacket.__name__
        inplace = op.endswith("_") and not op.startswith("_")
        producers = list(dict.fromkeys(self.producer[t] for t in ins))
        same_shape = all(o.shape == ins[0].shape for o in outs)
        if len(producers) == 1 and (op in _PASS_THROUGH or (_aliases(func) and not inplace and same_shape)):
            for t in outs:
                self.producer[t] = producers[0]
            return out
        base = op.rstrip("_")
        label = _LABELS.get(base, base)
        container = self.names[id(self.stack[-1][3])]
        node = self.node("op", f"{container}:{label}" if container else label, label, "op", None,
                         [shape_text(t) for t in outs])
        for t in ins:
            self.edge(self.producer[t], node, shape_text(t))
        for t in outs:
            self.producer[t] = node
        return out


def graph(name: str, input_size: tuple | None = None, **options) -> Graph:
    """The graph of the registered model ``name`` built with ``options`` on a ``input_size`` (C, H, W) image
    (default: its card's), as :func:`cnnlab.analysis.summary.summary` builds and runs it."""
    from cnnlab.analysis.summary import check_input_size, default_input, first_line
    from cnnlab.errors import CnnlabError
    from cnnlab.models.layers import textbook_ops
    from cnnlab.models.registry import create_model, model_card

    input_size = tuple(input_size or model_card(name).input_size)
    check_input_size(input_size)
    options.setdefault("in_chans", input_size[0])
    with torch.device("meta"):
        model = create_model(name, **options)
    model.eval()
    result = Graph(name, input_size)
    tracer = _Tracer({id(m): n for n, m in model.named_modules()}, result)
    x = torch.zeros((1, *input_size), device="meta")
    tracer.producer[x] = tracer.node("input", "input", "input", "", None, [shape_text(x)])
    handles = []
    try:
        for m in model.modules():
            handles.append(m.register_forward_pre_hook(tracer.pre_hook))
            handles.append(m.register_forward_hook(tracer.post_hook))
        with textbook_ops(), torch.no_grad(), tracer:  # the layers run as the summary runs them
            try:
                model(x)
            except RuntimeError as e:
                raise CnnlabError(f"{name} cannot run on a {'x'.join(map(str, input_size))} input: {first_line(e)}; "
                                  f"try its default input {default_input(name)}") from None
    finally:
        for h in handles:
            h.remove()
    return result
