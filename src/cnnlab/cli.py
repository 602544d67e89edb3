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


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} must be {minimum} or more")
        return value
    return parse


_positive_int, _nonneg_int = _int_at_least(1), _int_at_least(0)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def _fraction(text: str) -> float:
    value = _positive_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be between 0 and 1, e.g. 0.1")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="cnnlab", description="Classic CNNs, faithful to the papers, with every number explained.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    p.subcommands = sub  # its .choices: the parser of each command

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
    _option_flag(s)

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

    t = sub.add_parser("train", help="train a model on real data with its paper's recipe")
    t.add_argument("model", help="a model name (see `cnnlab models`)")
    _train_flags(t)
    t.add_argument("--resume", help="a run folder or checkpoint to continue")
    t.add_argument("--nproc", type=_positive_int, metavar="N",
                   help="train data-parallel in N processes on this machine (runs torchrun for you; "
                        "--batch-size is the global batch); see docs/distributed.md")
    t.add_argument("--max-restarts", type=_nonneg_int, default=0, metavar="K",
                   help="with --nproc: restart the workers up to K times after a failure, from the last checkpoint")
    t.add_argument("--sync-bn", action="store_true", help="data parallel on GPUs: BatchNorm over the global batch")

    tr = sub.add_parser("transfer", help="reuse trained weights on new data: feature extraction or fine-tuning")
    tr.add_argument("--from", dest="source", required=True, metavar="WEIGHTS",
                    help="a cnnlab run folder or checkpoint, a state_dict file, or a torchvision weights name "
                         "(IMAGENET1K_V1) for the torchvision-compatible models")
    tr.add_argument("--model", help="the architecture (default: the checkpoint's)")
    tr.add_argument("--mode", choices=("features", "finetune"), default="features",
                    help="features: frozen backbone in eval mode, new head; finetune: the whole network")
    tr.add_argument("--unfreeze", type=int, default=0, metavar="N", help="features: also train the last N blocks")
    tr.add_argument("--lr-backbone", type=float, help="finetune: the backbone's learning rate (default lr / 10)")
    _train_flags(tr)

    em = sub.add_parser("embed", help="penultimate-layer features of every image of a dataset, with labels")
    em.add_argument("checkpoint", help="a run folder or checkpoint")
    em.add_argument("--data", help="the dataset (default: the run's)")
    em.add_argument("--split", choices=("train", "test"), default="test")
    em.add_argument("--out", required=True, help="an .npz file: features, labels, classes")
    em.add_argument("--data-dir")

    sub.add_parser("recipes", help="the training recipes, one per paper")

    e = sub.add_parser("eval", help="top-1/top-5, per-class accuracy, confusion matrix of a trained run")
    e.add_argument("checkpoint", help="a run folder or checkpoint")
    e.add_argument("--data", help="evaluate on this dataset instead of the run's")
    e.add_argument("--tta", choices=("flip", "crops10"), help="test-time augmentation")
    e.add_argument("--ensemble", nargs="+", default=[], metavar="CKPT", help="more checkpoints to average")
    e.add_argument("--data-dir")
    e.add_argument("--format", choices=("text", "json"), default="text")

    pr = sub.add_parser("predict", help="top-5 classes of image files")
    pr.add_argument("checkpoint")
    pr.add_argument("images", nargs="+")

    d = sub.add_parser("data", help="datasets: list, verify, prepare")
    dsub = d.add_subparsers(dest="data_command", metavar="WHAT", parser_class=_Parser)
    dl = dsub.add_parser("list", help="known datasets and whether their files are here")
    dl.add_argument("--data-dir")
    for name, what in (("verify", "check every file's MD5"), ("prepare", "download what is missing, then decode")):
        dp = dsub.add_parser(name, help=what)
        dp.add_argument("names", nargs="*", help="datasets (default: all present)")
        dp.add_argument("--data-dir")

    vis = sub.add_parser("visualize", help="what a network learned: filters, feature maps, top-9, saliency, Grad-CAM")
    vsub = vis.add_subparsers(dest="visualize", metavar="WHAT", parser_class=_Parser)
    ckpt = "a run folder, a checkpoint, or a model name (its untrained weights)"
    vf = vsub.add_parser("filters", help="a layer's kernels as a grid of small images")
    vf.add_argument("checkpoint", help=ckpt)
    vf.add_argument("--layer", help="a convolution (default: the first); see `cnnlab summary MODEL`")
    vfe = vsub.add_parser("features", help="the feature maps of one image")
    vfe.add_argument("checkpoint", help=ckpt)
    vfe.add_argument("image")
    vfe.add_argument("--layer", nargs="+", dest="layers", metavar="NAME", help="default: up to four convolutions")
    vt = vsub.add_parser("top9", help="the images that excite each channel most, cropped to its receptive field")
    vt.add_argument("checkpoint", help=ckpt)
    vt.add_argument("--layer", required=True)
    vt.add_argument("--data", help="mnist, cifar10, ... or folder:PATH (default: the run's)")
    vt.add_argument("--split", default="test", help="split of an in-memory dataset (default: test)")
    vt.add_argument("--channels", nargs="+", type=_nonneg_int, metavar="C", help="default: the first 16")
    vt.add_argument("--data-dir")
    for name, what in (("saliency", "gradient of the class score w.r.t. the pixels (Simonyan et al.)"),
                       ("gradcam", "Grad-CAM heat map over the image (Selvaraju et al.)")):
        va = vsub.add_parser(name, help=what)
        va.add_argument("checkpoint", help=ckpt)
        va.add_argument("image")
        va.add_argument("--target", metavar="CLASS", help="class index or name (default: the predicted class)")
        if name == "gradcam":
            va.add_argument("--layer", help="default: the architecture's last spatial layer")
    for vp in (vf, vfe, vt, *[vsub.choices[n] for n in ("saliency", "gradcam")]):
        vp.add_argument("--out", help="PNG file (default: COMMAND.png here)")

    f = sub.add_parser("fidelity", help="our numbers beside the papers'")
    f.add_argument("name", nargs="?", help="one model (default: all with published figures)")
    f.add_argument("--run", metavar="RUN", help="a run folder or checkpoint: also measure its accuracy on the test "
                   "set and set it beside the published one")
    f.add_argument("--data-dir", help="where datasets live (default: $CNNLAB_DATA_DIR, else ~/.cache/cnnlab)")
    f.add_argument("--format", choices=("table", "md", "json"), default="table")

    arr = "rows 'a b c; d e f' (channels split by '|') or a .csv, .txt or .npy file"
    ex = sub.add_parser("explain", help="worked examples that print every step: conv, pool, backprop, params")
    exsub = ex.add_subparsers(dest="explain", metavar="WHAT", parser_class=_Parser)
    xc = exsub.add_parser("conv", help="each output entry of a convolution as its products and their sum")
    xc.add_argument("--example", choices=("5x5", "7x7x3"), default="5x5",
                    help="the lecture's 5x5 binary image, or the 7x7x3 padded volume with two filters and stride 2")
    xc.add_argument("--input", help=f"the input: {arr}")
    xc.add_argument("--kernel", action="append", help="one filter, same forms (repeat for more filters)")
    xc.add_argument("--bias", help="one number per filter, e.g. 1,0")
    xc.add_argument("--stride", type=_positive_int)
    xc.add_argument("--pad", type=_nonneg_int)
    xpo = exsub.add_parser("pool", help="max- or average-pooling entry by entry, and as the matrix A")
    xpo.add_argument("--input", help=f"one channel: {arr} (default: the lecture's 4x4)")
    xpo.add_argument("--size", type=_positive_int, default=2)
    xpo.add_argument("--stride", type=_positive_int, help="default: the window size")
    xpo.add_argument("--op", choices=("max", "avg"), default="max")
    xpo.add_argument("--grad", help="the upstream gradient dL/dy, one value per output entry")
    xb = exsub.add_parser("backprop", help="a conv layer's backward pass: shared weights sum their gradients")
    xb.add_argument("--input", help=f"one channel: {arr} (default: the lecture's 5x5 image)")
    xb.add_argument("--kernel", help="one filter, same forms (default: the lecture's 3x3 X)")
    xb.add_argument("--grad", help="the upstream gradient dL/do, one value per output entry")
    xb.add_argument("--stride", type=_positive_int, default=1)
    xb.add_argument("--pad", type=_nonneg_int, default=0)
    xq = exsub.add_parser("params", help="7x7 vs three 3x3, the 1x1 bottleneck, inception multiply-adds")
    xq.add_argument("--channels", type=_positive_int, default=64, help="C for the 7x7 against 3x3 comparison")

    sc = sub.add_parser("scratch-train", help="train a LeNet-style network on MNIST with the NumPy engine alone")
    sc.add_argument("--train-images", type=_positive_int, default=20_000, help="from a seeded shuffle of the 60,000")
    sc.add_argument("--test-images", type=_positive_int, default=10_000, help="the first N of the 10,000 test images")
    sc.add_argument("--epochs", type=_positive_int, default=3)
    sc.add_argument("--batch-size", type=_positive_int, default=32)
    sc.add_argument("--lr", type=_positive_float, default=0.02)
    sc.add_argument("--seed", type=int, default=0)
    sc.add_argument("--threads", type=_positive_int, default=1, help="NumPy BLAS threads (small products: 1 is best)")
    sc.add_argument("--data-dir", help="a folder with the four MNIST .gz files (default: the copy inside cnnlab)")
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
    import torch

    from cnnlab.models import create_model, model_card
    from cnnlab.models.registry import METRICS, model_options
    from cnnlab.train.recipes import recipe_for
    from cnnlab.visualize.layers import gradcam_layer

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
    with torch.device("meta"):
        probe = create_model(args.name)
    lines.append(f"  Grad-CAM layer: {gradcam_layer(probe, c.input_size)} (`cnnlab visualize gradcam`'s default)")
    options = model_options(args.name)
    if options:
        lines.append(f"  options: {', '.join(f'{k}={v!r}' for k, v in options.items())}")
        lines.append("           (set with --model-option KEY=VALUE on summary, train and transfer)")
    try:
        recipe = recipe_for(args.name)
        lines.append(f"  recipe:  {recipe.name} ({recipe.source}); `cnnlab recipes` shows its settings")
    except CnnlabError:
        lines.append("  recipe:  none by default; pick one with `cnnlab train --recipe`")
    return "\n".join(lines) + "\n"


def _summary(args) -> str:
    from cnnlab.analysis.summary import summary
    from cnnlab.models import model_card

    kwargs = {"num_classes": args.num_classes} if args.num_classes else {}
    kwargs.update(parse_model_options(args.name, args.model_option))
    s = summary(args.name, args.input, depth=args.depth, **kwargs)
    text = s.render(args.format, args.depth)
    card = model_card(args.name)
    if card.paper_table and args.format == "table" and not args.input and not kwargs:
        from cnnlab.analysis.paper_tables import render_paper_table

        text = text.rstrip("\n") + "\n\n" + render_paper_table(args.name) + "\n"
    return text


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
    from cnnlab.analysis.fidelity import fidelity, fidelity_of_run, published_figures, render

    if args.run:
        rows, note = fidelity_of_run(args.run, args.data_dir, args.name)
        return render(rows, args.format, note)
    if args.name:
        published_figures(args.name)
    return render(fidelity(args.name), args.format)


def _explain(args) -> str:
    from cnnlab.scratch import explain as ex

    if args.explain == "conv":
        return ex.explain_conv(args.input, args.kernel, args.bias, args.stride, args.pad, args.example)
    if args.explain == "pool":
        return ex.explain_pool(args.input, args.size, args.stride, args.op, args.grad)
    if args.explain == "backprop":
        return ex.explain_backprop(args.input, args.kernel, args.grad, args.stride, args.pad)
    if args.explain == "params":
        return ex.explain_params(args.channels)
    raise CnnlabError("say what to explain: `cnnlab explain conv`, `pool`, `backprop` or `params`")


def _scratch_train(args) -> str:
    from cnnlab.scratch.train import train_mnist

    def log(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    result = train_mnist(args.train_images, args.epochs, args.seed, args.batch_size, args.lr,
                         test_images=args.test_images, data_dir=args.data_dir, threads=args.threads, log=log)
    return result.text()


def _train_flags(t) -> None:
    t.add_argument("--data", help="mnist, fashion_mnist, kmnist, cifar10, cifar100, cifar10_jpeg or folder:PATH "
                                  "(default: the recipe's)")
    t.add_argument("--epochs", type=_positive_int, help="default: the recipe's")
    t.add_argument("--batch-size", type=_positive_int, help="images per step (default: the recipe's)")
    t.add_argument("--lr", type=_positive_float,
                   help="peak learning rate (default: the recipe's); the recipe's schedule is kept")
    t.add_argument("--recipe", help="see `cnnlab recipes` (default: the model's)")
    t.add_argument("--out", help="run folder (default: runs/MODEL-DATA-TIME)")
    t.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto",
                   help="auto: a CUDA GPU if there is one, else the CPU")
    t.add_argument("--precision", choices=("fp32", "bf16", "fp16", "fp64", "auto"), default="auto",
                   help="auto: bf16 (fp16 without bf16) on GPUs; on CPUs bf16 for networks of 10M+ multiply-adds "
                        "where it measured faster (AMX, or 1.3x on a probe convolution), else fp32. fp64 is "
                        "for checking numerics (e.g. data parallel against one process), not for speed")
    t.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC memory layout (default: on CPUs always, on GPUs with bf16/fp16)")
    t.add_argument("--compile", action="store_true", help="torch.compile the model")
    t.add_argument("--seed", type=int, default=0, help="weights, data order and augmentation (default 0)")
    t.add_argument("--deterministic", action="store_true", help="deterministic kernels (exact resume)")
    t.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    t.add_argument("--data-dir", help="where datasets live (default: $CNNLAB_DATA_DIR, else ~/.cache/cnnlab)")
    t.add_argument("--val-split", type=_fraction, help="hold out this fraction of the training set as 'val'")
    t.add_argument("--train-limit", type=_positive_int, metavar="N",
                   help="train on a class-balanced random subset of N images (a labelled budget)")
    t.add_argument("--log-every", type=_positive_int, default=50, help="steps between metrics.jsonl lines")
    _option_flag(t)


def _option_flag(p) -> None:
    p.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a model option (repeatable), e.g. shortcut=A, drop_path_rate=0.2, head=linear; "
                        "`cnnlab card MODEL` lists them")


def parse_model_options(name: str, items: list[str]) -> dict:
    """``["shortcut=A", "drop_path_rate=0.2"]`` -> ``{"shortcut": "A", "drop_path_rate": 0.2}``, checked
    against the options the model's builder accepts and the types of their defaults."""
    import ast

    from cnnlab.models.registry import model_options

    if not items:
        return {}
    accepted = model_options(name)
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise CnnlabError(f"--model-option {item!r} is not KEY=VALUE, e.g. --model-option drop_path_rate=0.2")
        if key not in accepted:
            listed = ", ".join(accepted) or "no options"
            raise CnnlabError(f"model {name!r} has no option {key!r}; it accepts: {listed}")
        try:
            value = ast.literal_eval(text.strip())  # numbers, True/False/None, tuples; never runs code
        except (ValueError, SyntaxError):
            value = text.strip()  # a bare word: a string, e.g. shortcut=A
        default = accepted[key]
        if isinstance(default, bool) or isinstance(value, bool):
            ok = isinstance(value, bool) and (default is None or isinstance(default, bool))
        elif isinstance(default, float) and isinstance(value, int):
            value, ok = float(value), True
        elif isinstance(default, (list, tuple)) and isinstance(value, (list, tuple)):
            value, ok = type(default)(value), True
        else:
            ok = default is None or isinstance(value, type(default))
        if not ok:
            raise CnnlabError(f"--model-option {key}={text} is not a {type(default).__name__} like the default "
                              f"{key}={default!r}")
        out[key] = value
    return out


def _strip(argv: list[str], flags: tuple[str, ...]) -> list[str]:
    """argv without ``flags`` and their values (``--flag V`` or ``--flag=V``)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in flags:
            skip = True
        elif a.split("=", 1)[0] not in flags:
            out.append(a)
    return out


# what `train --resume` may change: where and how verbosely the run goes on, and for how long
RESUME_FLAGS = {"resume", "epochs", "device", "out", "quiet", "data_dir", "nproc", "max_restarts"}


def _check_resume_flags(args) -> None:
    """A resumed run continues with its own settings: flags that would change them are refused, not ignored."""
    fresh = build_parser().subcommands.choices[args.command]
    changed = sorted(f"--{d.replace('_', '-')}" for d, v in vars(args).items()
                     if d not in RESUME_FLAGS | {"command", "argv", "model"} and v != fresh.get_default(d))
    if changed:
        raise CnnlabError(f"{', '.join(changed)} cannot change a run being resumed: it goes on with its own "
                          f"settings (with --resume give only --epochs, --device, --out, --data-dir, --quiet or "
                          f"--nproc); start a new run to change them, or `cnnlab transfer --from RUN` for other "
                          f"data")


def _train(args) -> str:
    from cnnlab.models import model_card
    from cnnlab.train import TrainConfig, train

    if getattr(args, "resume", None):
        _check_resume_flags(args)
    if getattr(args, "nproc", None):
        from cnnlab.train import distributed

        if distributed.launched_by_torchrun():
            raise CnnlabError("--nproc starts torchrun; this process already runs under torchrun, so leave it out")
        if not (args.out or args.resume):
            raise CnnlabError("data-parallel training needs --out (or --resume): every worker, and workers that "
                              "torchrun restarts, must find the same run folder")
        model_card(args.model)
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if args.device == "cuda" and not gpus:
            raise CnnlabError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
        if args.device != "cpu" and gpus and args.nproc > gpus:
            raise CnnlabError(f"--nproc {args.nproc} needs a GPU per process and this machine has {gpus}; "
                              f"use --nproc {gpus} or less, or --device cpu")
        code = distributed.launch(args.nproc, _strip(args.argv, ("--nproc", "--max-restarts")), args.max_restarts)
        if code:
            raise CnnlabError(f"the data-parallel run failed (torchrun exit code {code}); the workers' messages "
                              f"are above")
        return ""  # rank 0 has printed what a single-process run prints

    extra = {}
    if args.command == "transfer":
        from cnnlab.transfer.weights import pretrained_options

        model = args.model or _checkpoint_model(args.source)
        extra = {"pretrained": args.source, "transfer": args.mode, "unfreeze": args.unfreeze,
                     "lr_backbone": args.lr_backbone, "model_options": pretrained_options(model, args.source)}
    else:
        model = args.model
    model_card(model)  # unknown model: the registry's message, before any data is touched
    extra["model_options"] = {**extra.get("model_options", {}), **parse_model_options(model, args.model_option)}
    cfg = TrainConfig(model=model, data=args.data, recipe=args.recipe, epochs=args.epochs,
                      batch_size=args.batch_size, lr=args.lr, out=args.out, resume=getattr(args, "resume", None),
                      device=args.device, precision=args.precision, channels_last=args.channels_last,
                      compile=args.compile, seed=args.seed, deterministic=args.deterministic, quiet=args.quiet,
                      data_dir=args.data_dir, val_split=args.val_split, log_every=args.log_every,
                      train_limit=args.train_limit, sync_bn=getattr(args, "sync_bn", False), **extra)
    result = train(cfg)
    return f"{result.run_dir}\n" if args.quiet and result.rank == 0 else ""


def _checkpoint_model(source: str) -> str:
    from pathlib import Path

    from cnnlab.train.checkpoint import load_checkpoint

    if not Path(source).expanduser().exists():
        raise CnnlabError(f"--from {source} is not a file or run folder; for torchvision weights name the "
                          f"architecture with --model")
    try:
        return load_checkpoint(source)["model_name"]
    except CnnlabError:
        raise CnnlabError(f"{source} is not a cnnlab checkpoint, so name its architecture with --model") from None


def _embed(args) -> str:
    from cnnlab.transfer.embedding import embed_dataset

    path = embed_dataset(args.checkpoint, args.out, data=args.data, split=args.split, data_dir=args.data_dir)
    return f"{path}\n"


def _recipes(args) -> str:
    from cnnlab.train import list_recipes

    lines = []
    for r in list_recipes():
        sched = r.schedule
        if r.milestones:
            unit = "iterations" if r.milestone_unit == "steps" else "epochs"
            sched += f" x{r.gamma:g} at {unit} {', '.join(map(str, r.milestones))}"
        if r.schedule == "exp":
            sched += f" x{r.gamma:g} every {r.decay_every:g} epochs"
        if r.warmup_steps or r.warmup_epochs:
            span = f"{r.warmup_steps} iterations" if r.warmup_steps else f"{r.warmup_epochs:g} epochs"
            sched += f", warm-up {span}" + (f" at {r.warmup_factor:g} x lr" if r.warmup_factor else "")
        aug = ", ".join(f"{k}={v}" for k, v in r.augment.as_dict().items() if v) or "none"
        lines += [f"{r.name}  (default for {', '.join(r.models)})",
                  (f"  data {r.data}; {r.epochs} epochs, batch {r.batch_size}, {r.optimizer} lr {r.lr}"
                  f"{f' momentum {r.momentum}' if r.optimizer in ('sgd', 'nesterov', 'rmsprop') else ''}, "
                  f"weight decay {r.weight_decay}, schedule {sched}"
                  f"{f', label smoothing {r.label_smoothing}' if r.label_smoothing else ''}"
                  f"{f', gradient norm clipped at {r.clip_grad_norm}' if r.clip_grad_norm else ''}"
                  f"{f', loss on logits x {r.logit_scale:g}' if r.logit_scale != 1.0 else ''}; augmentation {aug}"),
                  f"  source: {r.source}"] + ([f"  note: {r.note}"] if r.note else []) + [""]
    return "\n".join(lines)


def _eval(args) -> str:
    from pathlib import Path

    from cnnlab.train.checkpoint import resolve
    from cnnlab.train.evaluate import evaluate

    report = evaluate([args.checkpoint] + args.ensemble, args.data, args.tta, args.data_dir)
    if args.format == "json":
        return json.dumps(report.as_dict(), indent=2) + "\n"
    folder = Path(args.checkpoint) if Path(args.checkpoint).is_dir() else resolve(args.checkpoint).parent
    png = folder / f"confusion-{report.split}{'-' + args.tta if args.tta else ''}.png"
    report.plot(png)
    return report.text() + f"\nconfusion matrix: {png}\n"


def _visualize(args) -> str:
    from cnnlab.visualize import figures

    what = args.visualize
    if what == "filters":
        path = figures.filters_png(args.checkpoint, args.layer, args.out)
    elif what == "features":
        path = figures.features_png(args.checkpoint, args.image, args.layers, args.out)
    elif what == "top9":
        path = figures.top9_png(args.checkpoint, args.layer, args.data, args.channels, args.split, args.data_dir,
                                args.out)
    elif what == "saliency":
        path = figures.saliency_png(args.checkpoint, args.image, args.target, args.out)
    elif what == "gradcam":
        path = figures.gradcam_png(args.checkpoint, args.image, args.layer, args.target, args.out)
    else:
        raise CnnlabError("say what to draw: `cnnlab visualize filters|features|top9|saliency|gradcam`")
    return f"{path}\n"


def _predict(args) -> str:
    from cnnlab.train.evaluate import predict

    lines = []
    for path, top in predict(args.checkpoint, args.images):
        lines.append(path)
        lines += [f"  {p * 100:6.2f}%  {c}" for c, p in top]
    return "\n".join(lines) + "\n"


def _data(args) -> str:
    from cnnlab.data.memory import load
    from cnnlab.data.sources import DATASETS, candidate_dirs, locate, require

    if args.data_command == "list":
        lines = []
        for name, s in DATASETS.items():
            status = locate(s, args.data_dir, check=False)
            here = sum(st.path is not None for st in status)
            where = next((str(st.path.parent) for st in status if st.path), str(candidate_dirs(s, args.data_dir)[0]))
            lines.append(f"{name:<14} {len(s.classes) or 100:>3} classes  {s.channels}x{s.size}x{s.size}  "
                         f"{here}/{len(status)} files  {where}" + (f"  ({s.note.split(':')[0]})" if s.note else ""))
        return "\n".join(lines) + "\n"
    if args.data_command not in ("verify", "prepare"):
        raise CnnlabError("say what to do: `cnnlab data list`, `cnnlab data verify` or `cnnlab data prepare`")
    names = args.names or [n for n, s in DATASETS.items()
                           if any(st.path for st in locate(s, args.data_dir, check=False))]
    lines = []
    for name in names:
        from cnnlab.data.sources import spec
        s = spec(name)
        if args.data_command == "verify":
            for st in locate(s, args.data_dir):
                lines.append(f"{name:<14} {st.state:<8} {st.file.name}" + (f"  ({st.path})" if st.path else "")
                             + (f"  MD5 {st.actual_md5}, expected {st.file.md5}" if st.state == "corrupt" else ""))
        else:
            require(s, args.data_dir, download=True)
            sizes = [f"{split} {len(load(name, split, args.data_dir)):,}" for split in s.files]
            lines.append(f"{name:<14} ready: {', '.join(sizes)} images")
    out = "\n".join(lines) + "\n"
    if args.data_command == "verify" and any(" corrupt " in l or " missing " in l for l in lines):
        sys.stdout.write(out)
        raise CnnlabError("some files are missing or corrupt (listed above); `cnnlab data prepare NAME` fetches them")
    return out


COMMANDS = {"train": _train, "transfer": _train, "embed": _embed, "recipes": _recipes, "eval": _eval,
            "predict": _predict, "data": _data, "visualize": _visualize,
            "models": _models, "card": _card, "summary": _summary, "calc": _calc, "fidelity": _fidelity,
            "explain": _explain, "scratch-train": _scratch_train}


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)
        if not args.command:
            parser.print_help()
            return 2
        out = COMMANDS[args.command](args)
    except CnnlabError as e:
        print(f"cnnlab: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path that cannot be written or read: a folder that is a file, no permission, disk full
        if isinstance(e, BrokenPipeError):
            return 0
        if isinstance(e, FileExistsError) and e.filename:
            why = f"{e.filename} is a file, but a folder is needed there; choose another path"
        elif isinstance(e, NotADirectoryError) and e.filename:
            why = f"{e.filename}: part of this path is a file, not a folder; choose another path"
        else:
            where = f"{e.filename}: " if e.filename else ""
            why = f"{where}{e.strerror or e}; check the path, its permissions and the free space"
        print(f"cnnlab: error: {why}", file=sys.stderr)
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
