"""The ``cnnlab`` command: argument parsing only; every command calls the library.

Each command is a function that declares its arguments and names its handler (``set_defaults(handler=...)``);
a handler turns the arguments into one library call and returns the text to print. Library errors name the
library's parameters; :func:`flag` says them as this command line's flags."""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import warnings

from cnnlab.errors import CnnlabError, CnnlabNote


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is one sentence and exit code 2, like every other user mistake. A command that
    needs a sub-command (``calc conv``) and has none says ``missing``: what there is to choose."""

    missing = ""

    def error(self, message: str):
        if self.missing and message == "the following arguments are required: WHAT":
            raise CnnlabError(self.missing)
        raise CnnlabError(f"{message} (see `{self.prog} --help`)")


def _shown(text: str) -> str:
    """A value as a message quotes it: at most 40 characters."""
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{_shown(text)} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{_shown(text)} must be {minimum} or more")
        return value
    return parse


_positive_int, _nonneg_int = _int_at_least(1), _int_at_least(0)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{_shown(text)} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{_shown(text)} must be positive")
    if value == float("inf"):
        raise argparse.ArgumentTypeError(f"{_shown(text)} must be a finite number")
    return value


def _fraction(text: str) -> float:
    value = _positive_float(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be between 0 and 1, e.g. 0.1")
    return value



# --- what the library's parameters are called on the command line ---------------------------------------------

# A library error names the parameters a Python caller passed (``batch_size``); the command line says the flag it
# took them as: ``--`` and the name with dashes, except for these.
FLAG_NAMES = {"pretrained": "--from", "source": "--from", "transfer": "--mode", "model_options": "--model-option",
              "layers": "--layer"}


def flag(param: str) -> str:
    """The flag of the library parameter ``param`` (``batch_size`` -> ``--batch-size``)."""
    return FLAG_NAMES.get(param, "--" + param.replace("_", "-"))


# --- the commands: each declares its arguments and names its handler ------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="cnnlab", description="Classic CNNs, faithful to the papers, with every number explained.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for declare in (models_command, card_command, summary_command, calc_command, train_command, transfer_command,
                    embed_command, recipes_command, eval_command, predict_command, data_command,
                    visualize_command, fidelity_command, explain_command, scratch_train_command, serve_command):
        declare(sub)
    return p


def _choose(parser: _Parser, missing: str):
    """Sub-commands of ``parser``, one of which must be given; ``missing`` is the sentence when none is."""
    parser.missing = missing
    return parser.add_subparsers(dest="what", metavar="WHAT", required=True, parser_class=_Parser)


def _option_flag(p) -> None:
    p.add_argument("--model-option", action="append", default=[], metavar="KEY=VALUE",
                   help="a model option (repeatable), e.g. shortcut=A, drop_path_rate=0.2, head=linear; "
                        "`cnnlab card MODEL` lists them")


def _text_or_json(r, format: str) -> str:
    return json.dumps(r.as_dict(), indent=2) + "\n" if format == "json" else r.text()


def models_command(sub) -> None:
    m = sub.add_parser("models", help="list the models (params, default input, paper year)")
    m.add_argument("pattern", nargs="?", help="wildcard or substring, e.g. 'vgg*'")
    m.set_defaults(handler=_models)


def _models(args) -> str:
    from cnnlab.catalog import models  # the cached table: no torch, no model built

    return models(args.pattern)


def card_command(sub) -> None:
    c = sub.add_parser("card", help="a model's card: paper, input, published figures")
    c.add_argument("name")
    c.set_defaults(handler=_card)


def _card(args) -> str:
    from cnnlab.catalog import card

    return card(args.name)


def summary_command(sub) -> None:
    s = sub.add_parser("summary", help="per-layer shapes, parameters, MACs, memory, receptive field")
    s.add_argument("name", help="a model name (see `cnnlab models`)")
    s.add_argument("--input", help="input size CxHxW, e.g. 3x224x224 (default: the paper's)")
    s.add_argument("--depth", type=_positive_int, help="show modules down to this depth (default: every layer)")
    s.add_argument("--format", choices=("table", "md", "csv", "json"), default="table")
    s.add_argument("--num-classes", type=_positive_int, help="classes of the output layer")
    _option_flag(s)
    s.set_defaults(handler=_summary)


def _summary(args) -> str:
    from cnnlab.analysis.paper_tables import with_paper_table
    from cnnlab.analysis.summary import summary
    from cnnlab.models.registry import coerce_model_options

    kwargs = {"num_classes": args.num_classes} if args.num_classes else {}
    kwargs.update(coerce_model_options(args.name, args.model_option))
    text = summary(args.name, args.input, depth=args.depth, **kwargs).render(args.format, args.depth)
    if args.format == "table" and not args.input and not kwargs:  # the paper's own layer table, if it has one
        text = with_paper_table(text, args.name)
    return text


def calc_command(sub) -> None:
    calc = sub.add_parser("calc", help="convolution arithmetic: conv, pool, rf")
    what = _choose(calc, "say what to calculate: `cnnlab calc conv`, `cnnlab calc pool` or `cnnlab calc rf`")
    cc = what.add_parser("conv", help="output volume, parameters and MACs of one conv layer")
    cc.add_argument("--input", required=True, help="HxWxC, e.g. 227x227x3")
    cc.add_argument("--filters", type=_positive_int, required=True)
    cc.add_argument("--kernel", type=_positive_int, required=True)
    cc.add_argument("--stride", type=_positive_int, default=1)
    cc.add_argument("--pad", type=_nonneg_int, default=0)
    cc.add_argument("--dilation", type=_positive_int, default=1)
    cc.add_argument("--groups", type=_positive_int, default=1)
    cp = what.add_parser("pool", help="output volume of one pooling layer")
    cp.add_argument("--input", required=True, help="HxWxC, e.g. 55x55x96")
    cp.add_argument("--kernel", type=_positive_int, required=True)
    cp.add_argument("--stride", type=_positive_int, help="default: the window size")
    cp.add_argument("--pad", type=_nonneg_int, default=0)
    cp.add_argument("--ceil-mode", action="store_true", help="round the output size up, as Caffe did")
    cp.add_argument("--op", choices=("max", "avg"), default="max")
    cr = what.add_parser("rf", help="receptive field of a stack of layers, e.g. conv3 conv3 conv3")
    cr.add_argument("layers", nargs="+", help="conv<k>[s<stride>][p<pad>][d<dilation>][*<n>] or pool<k>...")
    cr.add_argument("--input", type=_positive_int, help="input width, to show each layer's output size")
    for p, handler in ((cc, _calc_conv), (cp, _calc_pool), (cr, _calc_rf)):
        p.add_argument("--format", choices=("text", "json"), default="text")
        p.set_defaults(handler=handler)


def _calc_conv(args) -> str:
    from cnnlab.analysis.conv_arith import conv

    r = conv(args.input, args.filters, args.kernel, args.stride, args.pad, args.dilation, args.groups)
    return _text_or_json(r, args.format)


def _calc_pool(args) -> str:
    from cnnlab.analysis.conv_arith import pool

    return _text_or_json(pool(args.input, args.kernel, args.stride, args.pad, args.ceil_mode, args.op), args.format)


def _calc_rf(args) -> str:
    from cnnlab.analysis.conv_arith import receptive_field

    return _text_or_json(receptive_field(args.layers, args.input), args.format)


def _train_flags(t) -> None:
    t.add_argument("--data", help="mnist, fashion_mnist, kmnist, cifar10, cifar100, cifar10_jpeg or folder:PATH "
                                  "(default: the recipe's)")
    t.add_argument("--epochs", type=_positive_int, help="default: the recipe's")
    t.add_argument("--batch-size", type=_positive_int, help="images per step (default: the recipe's)")
    t.add_argument("--lr", type=_positive_float,
                   help="peak learning rate (default: the recipe's); the recipe's schedule is kept")
    t.add_argument("--recipe", help="see `cnnlab recipes` (default: the model's)")
    t.add_argument("--out", help="run folder (default: runs/MODEL-DATA-TIME); a folder that holds a run is refused "
                                 "(continue it with --resume, or replace it with --overwrite)")
    t.add_argument("--overwrite", action="store_true", help="let --out replace the run that folder holds")
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
    t.add_argument("--health-every", type=_nonneg_int, default=50, metavar="N",
                   help="per-layer gradient and weight norms, update ratios and dead ReLUs into health.jsonl "
                        "every N steps (default 50; 0: off)")
    t.add_argument("--snapshots", action=argparse.BooleanOptionalAction, default=True,
                   help="keep snapshots/ of the first filters, a fixed probe batch's activations and the "
                        "confusion matrix at a schedule of steps (default: on)")
    t.add_argument("--snapshot-every", type=_positive_int, metavar="N",
                   help="also snapshot every N steps (default: about 4 times an epoch)")
    t.add_argument("--skip-bad-images", action="store_true",
                   help="folder:PATH: leave out the image files that cannot be read (a note counts them)")
    _option_flag(t)


def _train_config(args, model: str, model_options: dict | None = None, **settings):
    """The TrainConfig of a train or transfer command line, for ``model``."""
    from cnnlab.models import model_card
    from cnnlab.models.registry import coerce_model_options
    from cnnlab.train import TrainConfig

    model_card(model)  # unknown model: the registry's message, before any data is touched
    options = {**(model_options or {}), **coerce_model_options(model, args.model_option)}
    return TrainConfig(model=model, data=args.data, recipe=args.recipe, epochs=args.epochs,
                       batch_size=args.batch_size, lr=args.lr, out=args.out, device=args.device,
                       precision=args.precision, channels_last=args.channels_last, compile=args.compile,
                       seed=args.seed, deterministic=args.deterministic, quiet=args.quiet, data_dir=args.data_dir,
                       val_split=args.val_split, log_every=args.log_every, train_limit=args.train_limit,
                       health_every=args.health_every, snapshots=args.snapshots, snapshot_every=args.snapshot_every,
                       overwrite=args.overwrite, skip_bad_images=args.skip_bad_images, model_options=options,
                       **settings)


def _run(cfg) -> str:
    from cnnlab.train import train

    result = train(cfg)
    return f"{result.run_dir}\n" if cfg.quiet and result.rank == 0 else ""


def train_command(sub) -> None:
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
    t.set_defaults(handler=_train)


def _train(args) -> str:
    # --nproc and --max-restarts are the command line's own: they start the run, they are not its settings
    from cnnlab.train import distributed

    if not args.nproc and not distributed.launched_by_torchrun():
        for name, given in (("max_restarts", args.max_restarts), ("sync_bn", args.sync_bn)):
            if given:
                raise CnnlabError(f"`{name}` applies to a data-parallel run only: add `nproc` N, or leave it out",
                                  params=(name, "nproc"))
    cfg = _train_config(args, args.model, resume=args.resume, sync_bn=args.sync_bn)
    if not args.nproc:
        return _run(cfg)

    distributed.check_launch(args.nproc, cfg)
    code = distributed.launch(args.nproc, _strip(args.argv, ("--nproc", "--max-restarts")), args.max_restarts)
    if code:
        raise CnnlabError(f"the data-parallel run failed (torchrun exit code {code}); the workers' messages "
                          f"are above")
    return ""  # rank 0 has printed what a single-process run prints


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


def transfer_command(sub) -> None:
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
    tr.set_defaults(handler=_transfer)


def _transfer(args) -> str:
    from cnnlab.transfer.weights import pretrained_options, source_model

    model = args.model or source_model(args.source)
    return _run(_train_config(args, model, pretrained_options(model, args.source), pretrained=args.source,
                              transfer=args.mode, unfreeze=args.unfreeze, lr_backbone=args.lr_backbone))


def embed_command(sub) -> None:
    em = sub.add_parser("embed", help="penultimate-layer features of every image of a dataset, with labels")
    em.add_argument("checkpoint", help="a run folder or checkpoint")
    em.add_argument("--data", help="the dataset (default: the run's)")
    em.add_argument("--split", choices=("train", "test"), default="test")
    em.add_argument("--out", required=True, help="an .npz file: features, labels, classes")
    em.add_argument("--data-dir")
    em.set_defaults(handler=_embed)


def _embed(args) -> str:
    from cnnlab.transfer.embedding import embed_dataset

    return f"{embed_dataset(args.checkpoint, args.out, data=args.data, split=args.split, data_dir=args.data_dir)}\n"


def recipes_command(sub) -> None:
    sub.add_parser("recipes", help="the training recipes, one per paper").set_defaults(handler=_recipes)


def _recipes(args) -> str:
    from cnnlab.train.recipes import render_recipes

    return render_recipes()


def eval_command(sub) -> None:
    e = sub.add_parser("eval", help="top-1/top-5, per-class accuracy, confusion matrix of a trained run")
    e.add_argument("checkpoint", help="a run folder or checkpoint")
    e.add_argument("--data", help="evaluate on this dataset instead of the run's")
    e.add_argument("--tta", choices=("flip", "crops10"), help="test-time augmentation")
    e.add_argument("--ensemble", nargs="+", default=[], metavar="CKPT", help="more checkpoints to average")
    e.add_argument("--data-dir")
    e.add_argument("--skip-bad-images", action="store_true",
                   help="folder:PATH: leave out the image files that cannot be read (a note counts them)")
    e.add_argument("--format", choices=("text", "json"), default="text")
    e.set_defaults(handler=_eval)


def _eval(args) -> str:
    from cnnlab.analysis.evaluate import evaluate

    report = evaluate([args.checkpoint] + args.ensemble, args.data, args.tta, args.data_dir,
                      skip_bad_images=args.skip_bad_images)
    if args.format == "json":
        return json.dumps(report.as_dict(), indent=2) + "\n"
    try:
        where = report.plot_beside(args.checkpoint)
    except OSError as e:  # a read-only run folder: the figures are what was asked for, the picture is extra
        where = f"not written ({_os_error(e)})"
    return report.text() + f"\nconfusion matrix: {where}\n"


def predict_command(sub) -> None:
    pr = sub.add_parser("predict", help="top-5 classes of image files")
    pr.add_argument("checkpoint")
    pr.add_argument("images", nargs="+")
    pr.set_defaults(handler=_predict)


def _predict(args) -> str:
    from cnnlab.analysis.evaluate import predict, render_predictions

    return render_predictions(predict(args.checkpoint, args.images))


def data_command(sub) -> None:
    d = sub.add_parser("data", help="datasets: list, verify, prepare")
    what = _choose(d, "say what to do: `cnnlab data list`, `cnnlab data verify` or `cnnlab data prepare`")
    dl = what.add_parser("list", help="known datasets and whether their files are here")
    dl.add_argument("--data-dir")
    dl.set_defaults(handler=_data_list)
    for name, help, handler in (("verify", "check every file's MD5", _data_verify),
                                ("prepare", "download what is missing, then decode", _data_prepare)):
        dp = what.add_parser(name, help=help)
        dp.add_argument("names", nargs="*", help="datasets (default: all present)")
        dp.add_argument("--data-dir")
        dp.set_defaults(handler=handler)


def _data_list(args) -> str:
    from cnnlab.data.sources import render_status

    return render_status(args.data_dir)


def _data_verify(args) -> str:
    from cnnlab.data.sources import render_verify, verify

    checked = verify(args.names, args.data_dir)
    out = render_verify(checked)
    if any(st.state != "ok" for status in checked.values() for st in status):
        sys.stdout.write(out)
        raise CnnlabError("some files are missing or corrupt (listed above); `cnnlab data prepare NAME` fetches them")
    return out


def _data_prepare(args) -> str:
    from cnnlab.data.memory import prepare

    return prepare(args.names, args.data_dir)


def visualize_command(sub) -> None:
    vis = sub.add_parser("visualize", help="what a network learned: filters, feature maps, top-9, saliency, Grad-CAM")
    what = _choose(vis, "say what to draw: `cnnlab visualize filters|features|top9|saliency|gradcam`")
    ckpt = "a run folder, a checkpoint, or a model name (its untrained weights)"
    vf = what.add_parser("filters", help="a layer's kernels as a grid of small images")
    vf.add_argument("checkpoint", help=ckpt)
    vf.add_argument("--layer", help="a convolution (default: the first); see `cnnlab summary MODEL`")
    vfe = what.add_parser("features", help="the feature maps of one image")
    vfe.add_argument("checkpoint", help=ckpt)
    vfe.add_argument("image")
    vfe.add_argument("--layer", nargs="+", dest="layers", metavar="NAME", help="default: up to four convolutions")
    vt = what.add_parser("top9", help="the images that excite each channel most, cropped to its receptive field")
    vt.add_argument("checkpoint", help=ckpt)
    vt.add_argument("--layer", required=True)
    vt.add_argument("--data", help="mnist, cifar10, ... or folder:PATH (default: the run's)")
    vt.add_argument("--split", default="test", help="split of an in-memory dataset (default: test)")
    vt.add_argument("--channels", nargs="+", type=_nonneg_int, metavar="C", help="default: the first 16")
    vt.add_argument("--data-dir")
    attribution = []
    for name, help in (("saliency", "gradient of the class score w.r.t. the pixels (Simonyan et al.)"),
                       ("gradcam", "Grad-CAM heat map over the image (Selvaraju et al.)")):
        va = what.add_parser(name, help=help)
        va.add_argument("checkpoint", help=ckpt)
        va.add_argument("image")
        va.add_argument("--target", metavar="CLASS", help="class index or name (default: the predicted class)")
        attribution.append(va)
    attribution[1].add_argument("--layer", help="default: the architecture's last spatial layer")
    for vp, handler in zip((vf, vfe, vt, *attribution), (_filters, _features, _top9, _saliency, _gradcam)):
        vp.add_argument("--out", help="PNG file (default: COMMAND.png here)")
        vp.set_defaults(handler=handler)


def _filters(args) -> str:
    from cnnlab.visualize.figures import filters_png

    return f"{filters_png(args.checkpoint, args.layer, args.out)}\n"


def _features(args) -> str:
    from cnnlab.visualize.figures import features_png

    return f"{features_png(args.checkpoint, args.image, args.layers, args.out)}\n"


def _top9(args) -> str:
    from cnnlab.visualize.figures import top9_png

    path = top9_png(args.checkpoint, args.layer, args.data, args.channels, args.split, args.data_dir, args.out)
    return f"{path}\n"


def _saliency(args) -> str:
    from cnnlab.visualize.figures import saliency_png

    return f"{saliency_png(args.checkpoint, args.image, args.target, args.out)}\n"


def _gradcam(args) -> str:
    from cnnlab.visualize.figures import gradcam_png

    return f"{gradcam_png(args.checkpoint, args.image, args.layer, args.target, args.out)}\n"


def fidelity_command(sub) -> None:
    f = sub.add_parser("fidelity", help="our numbers beside the papers'")
    f.add_argument("name", nargs="?", help="one model (default: all with published figures)")
    f.add_argument("--run", metavar="RUN", help="a run folder or checkpoint: also measure its accuracy on the test "
                   "set and set it beside the published one")
    f.add_argument("--data-dir", help="where datasets live (default: $CNNLAB_DATA_DIR, else ~/.cache/cnnlab)")
    f.add_argument("--format", choices=("table", "md", "json"), default="table")
    f.set_defaults(handler=_fidelity)


def _fidelity(args) -> str:
    from cnnlab.analysis.fidelity import fidelity, fidelity_of_run, published_figures, render

    if args.run:
        rows, note = fidelity_of_run(args.run, args.data_dir, args.name)
        return render(rows, args.format, note)
    if args.name:
        published_figures(args.name)
    return render(fidelity(args.name), args.format)


ARRAY = "rows 'a b c; d e f' (channels split by '|') or a .csv, .txt or .npy file"


def explain_command(sub) -> None:
    ex = sub.add_parser("explain", help="worked examples that print every step: conv, pool, backprop, params")
    what = _choose(ex, "say what to explain: `cnnlab explain conv`, `pool`, `backprop` or `params`")
    xc = what.add_parser("conv", help="each output entry of a convolution as its products and their sum")
    xc.add_argument("--example", choices=("5x5", "7x7x3"), default="5x5",
                    help="the lecture's 5x5 binary image, or the 7x7x3 padded volume with two filters and stride 2")
    xc.add_argument("--input", help=f"the input: {ARRAY}")
    xc.add_argument("--kernel", action="append", help="one filter, same forms (repeat for more filters)")
    xc.add_argument("--bias", help="one number per filter, e.g. 1,0")
    xc.add_argument("--stride", type=_positive_int)
    xc.add_argument("--pad", type=_nonneg_int)
    xc.set_defaults(handler=_explain_conv)
    xpo = what.add_parser("pool", help="max- or average-pooling entry by entry, and as the matrix A")
    xpo.add_argument("--input", help=f"one channel: {ARRAY} (default: the lecture's 4x4)")
    xpo.add_argument("--size", type=_positive_int, default=2)
    xpo.add_argument("--stride", type=_positive_int, help="default: the window size")
    xpo.add_argument("--op", choices=("max", "avg"), default="max")
    xpo.add_argument("--grad", help="the upstream gradient dL/dy, one value per output entry")
    xpo.set_defaults(handler=_explain_pool)
    xb = what.add_parser("backprop", help="a conv layer's backward pass: shared weights sum their gradients")
    xb.add_argument("--input", help=f"one channel: {ARRAY} (default: the lecture's 5x5 image)")
    xb.add_argument("--kernel", help="one filter, same forms (default: the lecture's 3x3 X)")
    xb.add_argument("--grad", help="the upstream gradient dL/do, one value per output entry")
    xb.add_argument("--stride", type=_positive_int, default=1)
    xb.add_argument("--pad", type=_nonneg_int, default=0)
    xb.set_defaults(handler=_explain_backprop)
    xq = what.add_parser("params", help="7x7 vs three 3x3, the 1x1 bottleneck, inception multiply-adds")
    xq.add_argument("--channels", type=_positive_int, default=64, help="C for the 7x7 against 3x3 comparison")
    xq.set_defaults(handler=_explain_params)


def _explain_conv(args) -> str:
    from cnnlab.scratch.explain import explain_conv

    return explain_conv(args.input, args.kernel, args.bias, args.stride, args.pad, args.example)


def _explain_pool(args) -> str:
    from cnnlab.scratch.explain import explain_pool

    return explain_pool(args.input, args.size, args.stride, args.op, args.grad)


def _explain_backprop(args) -> str:
    from cnnlab.scratch.explain import explain_backprop

    return explain_backprop(args.input, args.kernel, args.grad, args.stride, args.pad)


def _explain_params(args) -> str:
    from cnnlab.scratch.explain import explain_params

    return explain_params(args.channels)


def scratch_train_command(sub) -> None:
    sc = sub.add_parser("scratch-train", help="train a LeNet-style network on MNIST with the NumPy engine alone")
    sc.add_argument("--train-images", type=_positive_int, default=20_000, help="from a seeded shuffle of the 60,000")
    sc.add_argument("--test-images", type=_positive_int, default=10_000, help="the first N of the 10,000 test images")
    sc.add_argument("--epochs", type=_positive_int, default=3)
    sc.add_argument("--batch-size", type=_positive_int, default=32)
    sc.add_argument("--lr", type=_positive_float, default=0.02)
    sc.add_argument("--seed", type=int, default=0)
    sc.add_argument("--threads", type=_positive_int, default=1, help="NumPy BLAS threads (small products: 1 is best)")
    sc.add_argument("--data-dir", help="a folder with the four MNIST .gz files (default: the copy inside cnnlab)")
    sc.set_defaults(handler=_scratch_train)


def serve_command(sub) -> None:
    sv = sub.add_parser("serve", help="the web lab: zoo, layers, receptive fields, conv arithmetic, images, digits")
    sv.add_argument("--runs", help="a folder of run folders to explore (e.g. runs); none: models and weights only")
    sv.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default 127.0.0.1: this machine only; another is a warning)")
    sv.add_argument("--port", type=_nonneg_int, default=8000, help="default 8000; 0 picks a free one")
    sv.add_argument("--open", action="store_true", help="open the lab in the default browser")
    sv.add_argument("--max-trainings", type=_positive_int, default=1, metavar="N",
                    help="trainings started from the page that run at once (default 1: one uses every CPU core); "
                         "the others wait in a queue")
    sv.set_defaults(handler=_serve)


def _serve(args) -> str:
    from cnnlab.lab import serve

    if args.port > 65535:
        raise CnnlabError(f"--port must be at most 65535, got {args.port}")
    serve(args.runs, args.host, args.port, args.open, args.max_trainings)
    return ""


def _scratch_train(args) -> str:
    from cnnlab.scratch.train import train_mnist

    def log(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    result = train_mnist(args.train_images, args.epochs, args.seed, args.batch_size, args.lr,
                         test_images=args.test_images, data_dir=args.data_dir, threads=args.threads, log=log)
    return result.text()


# --- running a command -------------------------------------------------------------------------------------------

def _show_note(message, category, filename, lineno, file=None, line=None):
    """Library notes (CnnlabNote) as one line on stderr, in flags; other warnings as Python shows them."""
    if isinstance(message, CnnlabNote):
        print(f"cnnlab: note: {message.speak(flag)}", file=sys.stderr)
    else:
        (file or sys.stderr).write(warnings.formatwarning(message, category, filename, lineno, line))


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, so that it stops as after Ctrl-C (a training run between two
    writes, its checkpoints whole); the exit code is then 128 + 15 = 143, as the shell reports a SIGTERM."""


# The signal that stopped the command, if one did. A signal raised inside an import or a library's clean-up can
# come out as another error (a SIGTERM in the middle of torch importing sympy left sympy half-imported, and the
# next use of it raised AttributeError): the signal, not that error, is what the user is told.
_received: list[KeyboardInterrupt] = []


def _terminate(signum, frame):
    _received.append(Terminated())
    raise _received[-1]


def _interrupt(signum, frame):
    _received.append(KeyboardInterrupt())
    raise _received[-1]


def main(argv: list[str] | None = None) -> int:
    import signal

    for name in ("stdout", "stderr"):  # started with the stream closed (`cnnlab models >&-`): Python gives None
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w"))
    _received.clear()
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
        # Ctrl-C as Python raises it, but remembered; a caller that ignores SIGINT keeps ignoring it
        previous_int = signal.signal(signal.SIGINT, _interrupt) \
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler else None
    except ValueError:  # not the main thread (a caller's thread): it keeps its own handling
        previous = previous_int = None
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_note
            return _main(argv)
    except KeyboardInterrupt as e:  # between two statements of _main, or while printing
        return _interrupted(e)
    except Exception:
        if _received:  # another error that the signal caused on its way out
            return _interrupted(_received[-1])
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if previous_int is not None:
            signal.signal(signal.SIGINT, previous_int)


def _interrupted(e: KeyboardInterrupt) -> int:
    terminated = isinstance(e, Terminated)
    try:
        print(f"cnnlab: {'terminated (SIGTERM)' if terminated else 'interrupted'}", file=sys.stderr)
    except (OSError, ValueError):
        pass
    return 143 if terminated else 130


def _main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        args.argv = list(sys.argv[1:] if argv is None else argv)
        if not args.command:
            parser.print_help()
            return 2
        out = args.handler(args)
    except (CnnlabError, OSError) as e:
        if _received:  # an error that a signal caused on its way out: the signal stopped the command
            return _interrupted(_received[-1])
        if isinstance(e, CnnlabError):
            print(f"cnnlab: error: {e.speak(flag)}", file=sys.stderr)
            return 2
        # a path that cannot be written or read: a folder that is a file, no permission, disk full
        if isinstance(e, BrokenPipeError):
            return 0
        print(f"cnnlab: error: {_os_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        return _interrupted(e)
    try:
        sys.stdout.write(out)
        sys.stdout.flush()
    except BrokenPipeError:  # `cnnlab summary vgg16 | head`
        sys.stderr.close()
    except (OSError, ValueError) as e:  # a full disk, a closed stream
        print(f"cnnlab: error: the output could not be written ({getattr(e, 'strerror', None) or e})",
              file=sys.stderr)
        return 2
    return 0


def _os_error(e: OSError) -> str:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" writing {e.filename}" if e.filename else ""
        return (f"disk full{where}: free some space and run again (files written before are intact, and a run "
                f"resumes from its last checkpoint)")
    if isinstance(e, IsADirectoryError):  # an atomic write's os.replace(temporary, path): path is filename2
        path = e.filename2 or e.filename
        return f"{path} is a folder, but a file is written there; give the path of a file (a new name, or one in it)"
    if isinstance(e, FileExistsError) and e.filename:
        return f"{e.filename} is a file, but a folder is needed there; choose another path"
    if isinstance(e, NotADirectoryError) and e.filename:
        return f"{e.filename}: part of this path is a file, not a folder; choose another path"
    where = f"{e.filename}: " if e.filename else ""
    return f"{where}{e.strerror or e}; check the path, its permissions and the free space"


if __name__ == "__main__":
    sys.exit(main())
