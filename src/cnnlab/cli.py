"""The ``cnnlab`` command: argument parsing only; every command calls the library."""

from __future__ import annotations

import argparse
import json
import sys

from cnnlab.errors import CnnlabError


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one sentence and exit code 2, like every other user mistake."""

    def error(self, message: str):
        raise CnnlabError(f"{message} (see `{self.prog} --help`)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be 1 or more")
    return value


def _nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="cnnlab", description="Classic CNNs, faithful to the papers, with every number explained.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    m = sub.add_parser("models", help="list the models (params, default input, paper year)")
    m.add_argument("pattern", nargs="?", help="wildcard or substring, e.g. 'vgg*'")

    c = sub.add_parser("card", help="a model's card: paper, input, published figures")
    c.add_argument("name")

    s = sub.add_parser("summary", help="per-layer shapes, parameters, MACs, memory, receptive field")
    s.add_argument("name", help="a model name (see `cnnlab models`)")
    s.add_argument("--input", help="input size CxHxW, e.g. 3x224x224 (default: the paper's)")
    s.add_argument("--depth", type=_positive_int, help="show modules down to this depth (default: every layer)")
    s.add_argument("--format", choices=("table", "md", "csv", "json"), default="table")
    s.add_argument("--num-classes", type=_positive_int, help="classes of the output layer")

    calc = sub.add_parser("calc", help="convolution arithmetic: conv, pool, rf")
    csub = calc.add_subparsers(dest="calc", metavar="WHAT", parser_class=_Parser)
    cc = csub.add_parser("conv", help="output volume, parameters and MACs of one conv layer")
    cc.add_argument("--input", required=True, help="HxWxC, e.g. 227x227x3")
    cc.add_argument("--filters", type=_positive_int, required=True)
    cc.add_argument("--kernel", type=_positive_int, required=True)
    cc.add_argument("--stride", type=_positive_int, default=1)
    cc.add_argument("--pad", type=_nonneg_int, default=0)
    cc.add_argument("--dilation", type=_positive_int, default=1)
    cc.add_argument("--groups", type=_positive_int, default=1)
    cc.add_argument("--format", choices=("text", "json"), default="text")
    cp = csub.add_parser("pool", help="output volume of one pooling layer")
    cp.add_argument("--input", required=True, help="HxWxC, e.g. 55x55x96")
    cp.add_argument("--kernel", type=_positive_int, required=True)
    cp.add_argument("--stride", type=_positive_int, help="default: the window size")
    cp.add_argument("--pad", type=_nonneg_int, default=0)
    cp.add_argument("--ceil-mode", action="store_true", help="round the output size up, as Caffe did")
    cp.add_argument("--op", choices=("max", "avg"), default="max")
    cp.add_argument("--format", choices=("text", "json"), default="text")
    cr = csub.add_parser("rf", help="receptive field of a stack of layers, e.g. conv3 conv3 conv3")
    cr.add_argument("layers", nargs="+", help="conv<k>[s<stride>][p<pad>][d<dilation>][*<n>] or pool<k>...")
    cr.add_argument("--input", type=_positive_int, help="input width, to show each layer's output size")
    cr.add_argument("--format", choices=("text", "json"), default="text")

    f = sub.add_parser("fidelity", help="our numbers beside the papers'")
    f.add_argument("name", nargs="?", help="one model (default: all with published figures)")
    f.add_argument("--format", choices=("table", "md", "json"), default="table")
    return p


def _models(args) -> str:
    import torch

    from cnnlab.models import create_model, list_models, model_card

    names = list_models(args.pattern)
    if not names:
        raise CnnlabError(f"no model matches {args.pattern!r}; `cnnlab models` lists them all")
    rows = []
    for n in names:
        card = model_card(n)
        with torch.device("meta"):
            params = sum(p.numel() for p in create_model(n).parameters())
        rows.append((n, f"{params:,}", "x".join(map(str, card.input_size)), str(card.paper.year), card.summary))
    widths = [max(len(r[i]) for r in rows + [("model", "params", "input", "year", "")]) for i in range(4)]
    head = ("model", "params", "input", "year", "description")
    fmt = lambda r: f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]:<{widths[3]}}  {r[4]}"
    return "\n".join([fmt(head)] + [fmt(r) for r in rows]) + "\n"


def _card(args) -> str:
    from cnnlab.models import model_card
    from cnnlab.models.registry import METRICS

    c = model_card(args.name)
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
    return "\n".join(lines) + "\n"


def _summary(args) -> str:
    from cnnlab.analysis.summary import summary

    kwargs = {"num_classes": args.num_classes} if args.num_classes else {}
    s = summary(args.name, args.input, depth=args.depth, **kwargs)
    return s.render(args.format, args.depth)


def _calc(args) -> str:
    from cnnlab.analysis import conv_arith

    if args.calc == "conv":
        r = conv_arith.conv(args.input, args.filters, args.kernel, args.stride, args.pad, args.dilation, args.groups)
    elif args.calc == "pool":
        r = conv_arith.pool(args.input, args.kernel, args.stride, args.pad, args.ceil_mode, args.op)
    elif args.calc == "rf":
        r = conv_arith.receptive_field(args.layers, args.input)
    else:
        raise CnnlabError("say what to calculate: `cnnlab calc conv`, `cnnlab calc pool` or `cnnlab calc rf`")
    return json.dumps(r.as_dict(), indent=2) + "\n" if args.format == "json" else r.text()


def _fidelity(args) -> str:
    from cnnlab.analysis.fidelity import fidelity, render
    from cnnlab.models import model_card

    if args.name and not model_card(args.name).figures:
        raise CnnlabError(f"{args.name} has no published figures on its card; `cnnlab fidelity` lists all that do")
    return render(fidelity(args.name), args.format)


COMMANDS = {"models": _models, "card": _card, "summary": _summary, "calc": _calc, "fidelity": _fidelity}


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not args.command:
            parser.print_help()
            return 2
        out = COMMANDS[args.command](args)
    except CnnlabError as e:
        print(f"cnnlab: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cnnlab: interrupted", file=sys.stderr)
        return 130
    try:
        sys.stdout.write(out)
        sys.stdout.flush()
    except BrokenPipeError:  # `cnnlab summary vgg16 | head`
        sys.stderr.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
