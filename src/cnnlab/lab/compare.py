"""The compare page's endpoints (/compare?runs=r-a,r-b,...): several runs side by side. Their curves from
metrics.jsonl (the page overlays them by epoch, step or wall time), their settings from config.json flattened
to one table (the keys whose values differ are named), their final figures beside the paper's (what
``cnnlab fidelity --run RUN`` prints, from the same library function), and everything as one CSV file.

Only the run folders' own files are read (config.json, metrics.jsonl): a run still training, or one without a
checkpoint yet, compares as far as it has come. Runs are named by the ids of the lab's list, never by path.
"""

from __future__ import annotations

import csv
import io
import json
import os
import threading
import time

from cnnlab.lab.web import LabError, query

MAX_RUNS = 12
# config.json keys the table leaves out: paths on the server (never sent to a page) and what says nothing
# about the training (the console's verbosity, the class names: the data says which)
HIDDEN = {"out", "resume", "data_dir", "quiet", "overwrite", "classes", "recipe_settings.note",
          "recipe_settings.source", "recipe_settings.models"}
METRIC_KINDS = ("epoch", "step", "lr_change")


def run_ids(request) -> list[str]:
    """The ``runs`` query parameter: comma-separated ids, each once, in order."""
    raw = query(request, "runs", "")
    ids = list(dict.fromkeys(s.strip() for s in raw.split(",") if s.strip()))
    if not ids:
        raise LabError("say which runs to compare (`runs`: ids from the lab's list, separated by commas)")
    if len(ids) > MAX_RUNS:
        raise LabError(f"compare at most {MAX_RUNS} runs at once; {len(ids)} were given")
    return ids


def run_entry(lab, source_id: str):
    entry = lab.sources.entry(source_id)
    if entry.kind != "run":
        raise LabError(f"{source_id!r} is not a run; only runs trained here (r-... ids) have curves to compare", 404)
    return entry


def read_metrics(folder) -> dict[str, list[dict]]:
    """metrics.jsonl by kind (epoch, step, lr_change); a line cut short by a training being written is skipped."""
    from cnnlab.fileio import read_jsonl

    out = {k: [] for k in METRIC_KINDS}
    for rec in read_jsonl(folder / "metrics.jsonl"):
        if rec.get("kind") in out:
            out[rec["kind"]].append(rec)
    return out


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested settings as one level (``model_options.depth``); lists as JSON text so they compare as values."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if key in HIDDEN:
            continue
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        elif isinstance(v, (list, dict)):
            out[key] = json.dumps(v)
        else:
            out[key] = v
    return out


def settings(folder) -> dict:
    """A run's config.json flattened; a folder path as data (``folder:/x/y``) shown by its last name."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(config, dict):
        return {}
    flat = flatten(config)
    for k, v in flat.items():
        if isinstance(v, str) and (v.startswith("folder:") or os.path.isabs(v)):  # a path of the server: its name
            flat[k] = ("folder:" if v.startswith("folder:") else "") + os.path.basename(v.rstrip("/").split(":")[-1])
    return flat


def differing(all_settings: list[dict]) -> list[str]:
    """The keys whose value is not the same in every run (missing counts as a value of its own)."""
    keys = list(dict.fromkeys(k for s in all_settings for k in s))
    missing = object()
    return [k for k in keys if len({json.dumps(s.get(k, missing), default=str) for s in all_settings}) > 1]


def train_command(config: dict) -> str | None:
    """The `cnnlab train` line that trains this run again (its given settings; None ones are the recipe's)."""
    import shlex

    if not isinstance(config.get("model"), str):
        return None
    parts = ["cnnlab", "train", config["model"]]
    for key, flag in (("data", "--data"), ("recipe", "--recipe"), ("epochs", "--epochs"),
                      ("batch_size", "--batch-size"), ("lr", "--lr"), ("precision", "--precision"), ("seed", "--seed"),
                      ("train_limit", "--train-limit")):
        value = config.get(key)
        if value is not None and not (key == "precision" and value == "fp32"):
            parts += [flag, str(value)]
    if config.get("deterministic") is True:
        parts.append("--deterministic")
    for k, v in (config.get("model_options") or {}).items():
        parts += ["--model-option", f"{k}={v}"]
    return " ".join(shlex.quote(p) for p in parts)


def describe(lab, source_id: str) -> dict:
    entry = run_entry(lab, source_id)
    metrics = read_metrics(entry.path)
    flat = settings(entry.path)
    try:
        config = json.loads((entry.path / "config.json").read_text())
    except (OSError, ValueError):
        config = {}
    config = config if isinstance(config, dict) else {}
    try:
        age = time.time() - (entry.path / "metrics.jsonl").stat().st_mtime
    except OSError:
        age = None
    return {"id": entry.id, "label": entry.label, "model": entry.model, "data": entry.data, "problem": entry.problem,
            "metrics": metrics, "settings": flat, "updated_s": age, "command": train_command(config)}


# -------------------------------------------------------------------------------------------------- endpoints

def _compare(lab, request) -> dict:
    """Each run's curves and settings, the union of setting keys, and those that differ."""
    runs = [describe(lab, i) for i in run_ids(request)]
    keys = list(dict.fromkeys(k for r in runs for k in r["settings"]))
    return {"runs": runs, "keys": keys, "differ": differing([r["settings"] for r in runs])}


def csv_text(runs: list[dict]) -> str:
    """One row per (run, epoch): the run, every epoch metric, then every setting (``setting:KEY``)."""
    metric_keys = list(dict.fromkeys(k for r in runs for rec in r["metrics"]["epoch"] for k in rec if k != "kind"))
    setting_keys = list(dict.fromkeys(k for r in runs for k in r["settings"]))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["run_id", "run"] + metric_keys + [f"setting:{k}" for k in setting_keys])
    for r in runs:
        for rec in r["metrics"]["epoch"]:
            w.writerow([r["id"], r["label"]] + [_cell(rec.get(k)) for k in metric_keys]
                       + [_cell(r["settings"].get(k)) for k in setting_keys])
    return buf.getvalue()


def _cell(v) -> str:
    if v is None:
        return ""
    return repr(v) if isinstance(v, float) else str(v)  # repr: floats written exactly, read back equal


def _csv(lab, request):
    from starlette.responses import Response

    runs = [describe(lab, i) for i in run_ids(request)]
    name = "cnnlab-compare.csv" if len(runs) > 1 else f"cnnlab-{runs[0]['model']}-{runs[0]['data']}.csv"
    return Response(csv_text(runs), media_type="text/csv; charset=utf-8",
                    headers={"content-disposition": f'attachment; filename="{name}"'})


class State:
    """Fidelity reports already measured, by (run id, checkpoint stamp)."""

    def __init__(self):
        self.fidelity: dict[tuple, dict] = {}
        self.lock = threading.Lock()


def state(lab) -> State:
    return lab.__dict__.setdefault("compare", State())


def fidelity_report(entry) -> dict:
    """`cnnlab fidelity --run RUN` as JSON: the library's rows (as_dict) and its note, the server's paths taken out."""
    from cnnlab.analysis.fidelity import fidelity_of_run
    from cnnlab.errors import CnnlabError

    try:
        rows, note = fidelity_of_run(str(entry.path))
    except CnnlabError as e:
        raise LabError(str(e).replace(str(entry.path), entry.label)) from None
    note = note.replace(str(entry.path / "last.pt"), entry.label).replace(str(entry.path), entry.label)
    return {"rows": [r.as_dict() for r in rows], "note": note}


def _fidelity(lab, request) -> dict:
    """One run's fidelity rows (a job: the test set is evaluated; the page polls it)."""
    from cnnlab.lab.explorer import cli_source

    entry = run_entry(lab, query(request, "source", ""))
    if entry.problem:
        lab.sources.scan()
        entry = lab.sources.entry(entry.id)
        if entry.problem:
            raise LabError(f"{entry.label} has no figures yet: {entry.problem}", 409)
    key = (entry.id, entry.stamp)
    st = state(lab)
    command = f"cnnlab fidelity --run {cli_source(lab, entry)}"
    if key in st.fidelity:
        return {"state": "done", "result": {**st.fidelity[key], "source": entry.id, "command": command}}

    def work(job):
        report = fidelity_report(entry)
        st.fidelity[key] = report
        return {"source": entry.id}

    job = lab.jobs.start("fidelity", f"fidelity:{entry.id}:{entry.stamp}", work)
    deadline = time.time() + 3.0
    while job.state == "running" and time.time() < deadline:
        time.sleep(0.05)
    if job.state == "failed":
        raise LabError(job.message)
    if job.state == "done":
        return {"state": "done", "result": {**st.fidelity[key], "source": entry.id, "command": command}}
    return {"state": "running", "job": job.as_dict()}


def routes():
    from starlette.routing import Route

    from cnnlab.lab.web import api

    return [Route("/api/compare", api(_compare)),
            Route("/api/compare/csv", api(_csv)),
            Route("/api/compare/fidelity", api(_fidelity))]
