"""The result page's endpoints (/result?source=r-...): a finished (or live) run understood. Its confusion matrix on
its evaluation split, with per-class accuracy and the top-1 that ``cnnlab eval`` prints; the images of one cell,
the most confident mistakes first; and for one image, why: saliency and Grad-CAM for its true class and for the
class the network predicted.

The evaluation runs once per checkpoint: every image's prediction, the probability of that prediction and of the
true class are kept in the run folder (``lab/eval-<split>-<checkpoint mtime>.npz``, written atomically; in memory
when the folder is read-only), so clicking cells costs nothing. It is a background job on a copy of the model (a
CIFAR-10 test set is 10,000 images); the endpoint waits a moment for it, so a small evaluation answers at once.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from pathlib import Path

import numpy as np

from cnnlab.lab.sources import model_lock, on_model
from cnnlab.lab.web import LabError, query

WAIT = 3.0  # seconds an endpoint waits for a fresh evaluation before answering with the job to poll
PAGE_MAX = 60  # thumbnails per page of a cell's images


class State:
    """Evaluations of this server's runs kept in memory: (source id, checkpoint stamp, split) -> arrays."""

    def __init__(self):
        self.evals: dict[tuple, dict] = {}
        self.lock = threading.Lock()


def state(lab) -> State:
    return lab.__dict__.setdefault("results", State())


# ------------------------------------------------------------------------------------------------ evaluation

def run_entry(lab, source_id: str):
    """A run of the lab's list (r-...) with a checkpoint: the result page is about trained runs only."""
    entry = lab.sources.entry(source_id)
    if entry.kind != "run":
        raise LabError(f"{source_id!r} is not a run; the result page shows runs trained here (r-... ids from the "
                       f"list)", 404)
    return entry


def eval_split(run) -> str:
    """The split the run was evaluated on while training: the one `cnnlab eval RUN` scores by default."""
    return run.info.eval_split or "test"


def _cache_file(entry, split: str) -> Path | None:
    if entry.path is None:
        return None
    return entry.path / "lab" / f"eval-{split}-{int(entry.stamp)}.npz"


def _meta(entry, data) -> dict:
    return {"stamp": entry.stamp, "data": data.view.data, "split": data.split, "images": len(data)}


def _load(lab, entry, data) -> dict | None:
    """The run's evaluation from memory or its folder, if it was made for this checkpoint and these images."""
    meta = _meta(entry, data)
    key = (entry.id, entry.stamp, data.split)
    hit = state(lab).evals.get(key)
    if hit is not None:
        return {**hit, "cached": True}
    path = _cache_file(entry, data.split)
    if path is None or not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        if json.loads(str(arrays.pop("meta"))) != meta:
            return None
        if not {"labels", "predicted", "p_predicted", "p_true", "top5"} <= set(arrays):
            return None
    except (OSError, ValueError, KeyError):
        return None  # a cut or foreign file: evaluated again
    found = {**arrays, "meta": meta, "cached": True}
    state(lab).evals[key] = found
    return found


def _save(lab, entry, data, found: dict) -> None:
    from cnnlab.fileio import atomic_open

    state(lab).evals[(entry.id, entry.stamp, data.split)] = found
    path = _cache_file(entry, data.split)
    if path is None:
        return
    arrays = {k: v for k, v in found.items() if isinstance(v, np.ndarray)}
    try:
        with atomic_open(path, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(found["meta"])), **arrays)
        for old in path.parent.glob(f"eval-{data.split}-*.npz"):  # an older checkpoint's: never read again
            if old != path:
                old.unlink(missing_ok=True)
    except OSError:
        pass  # a read-only run folder: the evaluation stays in memory


def predictions(model, data, job=None) -> dict:
    """Every image of ``data`` through ``model`` as `cnnlab eval` scores it (softmax of one centre view, in the
    loader's order): the predicted class, its probability, the true class's probability, top-5 hits."""
    import torch

    from cnnlab.analysis.evaluate import probabilities

    if job is not None:
        job.total, job.done = len(data), 0
    labels, predicted, p_pred, p_true, top5 = [], [], [], [], []
    for x, y in data.loader:
        p = probabilities([model], on_model(model, x), None, x.shape[-1]).cpu()
        y = y.long()
        best = p.max(1)
        k = min(5, p.shape[1])
        labels.append(y), predicted.append(best.indices), p_pred.append(best.values)
        p_true.append(p.gather(1, y[:, None])[:, 0])
        top5.append((p.topk(k, 1).indices == y[:, None]).any(1))
        if job is not None:
            job.done += len(y)
    cat = lambda parts, dtype: torch.cat(parts).numpy().astype(dtype)  # noqa: E731
    return {"labels": cat(labels, np.int64), "predicted": cat(predicted, np.int64),
            "p_predicted": cat(p_pred, np.float32), "p_true": cat(p_true, np.float32), "top5": cat(top5, bool)}


def evaluation(lab, entry, wait: float | None = None) -> tuple[dict | None, object, object]:
    """(the evaluation or None while its job runs, the job or None, the data). Started once per checkpoint."""
    run = lab.sources.open(entry.id)
    entry = lab.sources.entry(entry.id)  # the stamp of the checkpoint just opened
    data = lab.sources.images(entry.id, eval_split(run))
    found = _load(lab, entry, data)
    if found is not None:
        return found, None, data

    def work(job):
        with model_lock(run.model):
            model = copy.deepcopy(run.model)  # the page's other views keep using the original meanwhile
        found = {**predictions(model, data, job), "meta": _meta(entry, data), "cached": False}
        _save(lab, entry, data, found)
        return {"source": entry.id}

    job = lab.jobs.start("evaluate", f"evaluate:{entry.id}:{entry.stamp}:{data.split}", work)
    deadline = time.time() + (WAIT if wait is None else wait)
    while job.state == "running" and time.time() < deadline:
        time.sleep(0.05)
    if job.state == "failed":
        raise LabError(job.message, 500)
    if job.state == "done":
        return state(lab).evals[(entry.id, entry.stamp, data.split)], None, data
    return None, job, data


def confusion(found: dict, k: int) -> np.ndarray:
    """K x K counts, rows the true class, columns the predicted one (as `cnnlab eval` prints it)."""
    return np.bincount(found["labels"] * k + found["predicted"], minlength=k * k).reshape(k, k)


# -------------------------------------------------------------------------------------------------- endpoints

def _confusion(lab, request) -> dict:
    """The confusion matrix, per-class accuracy, top-1 and top-5; or the running evaluation's job."""
    from cnnlab.lab.explorer import command

    entry = run_entry(lab, query(request, "source", ""))
    found, job, data = evaluation(lab, entry)
    if found is None:
        return {"state": "running", "job": job.as_dict()}
    run = lab.sources.open(entry.id)
    classes = list(data.classes)
    m = confusion(found, len(classes))
    n = int(m.sum())
    support = m.sum(1)
    per_class = [100.0 * float(m[i, i]) / int(support[i]) if support[i] else None for i in range(len(classes))]
    split = "" if data.split == "test" else f" --split {data.split}"
    return {"state": "done", "result": {
        "source": entry.id, "label": entry.label, "name": run.name, "data": run.info.data, "split": data.split,
        "images": n, "classes": classes, "confusion": m.tolist(), "support": support.tolist(),
        "per_class": per_class, "top1": 100.0 * float(np.trace(m)) / n, "top5": 100.0 * float(found["top5"].mean()),
        "cached": bool(found.get("cached")), "command": command(lab, entry, "eval") + split}}


def _errors(lab, request) -> dict:
    """The images of one cell (true class ``true``, predicted ``pred``): a mistake cell with the most confident
    mistakes first, the diagonal with the least confident hits first; a page of thumbnails."""
    from cnnlab.lab.pictures import image_url

    entry = run_entry(lab, query(request, "source", ""))
    found, job, data = evaluation(lab, entry, wait=0.5)
    if found is None:
        raise LabError("the run is still being evaluated; its confusion matrix shows when it is done", 409)
    classes = list(data.classes)
    k = len(classes)
    t = query(request, "true", None, int, low=0, high=k - 1)
    p = query(request, "pred", None, int, low=0, high=k - 1)
    idx = np.flatnonzero((found["labels"] == t) & (found["predicted"] == p))
    conf = found["p_predicted"][idx]
    # stable sorts: ties keep the dataset's order, so a page is the same on every request
    order = np.argsort(-conf, kind="stable") if t != p else np.argsort(conf, kind="stable")
    idx = idx[order]
    offset = query(request, "offset", 0, int, low=0, high=max(len(idx) - 1, 0))
    count = query(request, "count", 24, int, low=1, high=PAGE_MAX)
    items = [{"index": int(i), "url": image_url(data.image(int(i))), "p_predicted": float(found["p_predicted"][i]),
              "p_true": float(found["p_true"][i])} for i in idx[offset:offset + count]]
    return {"true": t, "pred": p, "true_class": classes[t], "pred_class": classes[p], "total": int(len(idx)),
            "offset": offset, "count": count, "split": data.split,
            "order": "most confident first" if t != p else "least confident first", "items": items}


def _why(lab, request) -> dict:
    """One image of the evaluation split: saliency and Grad-CAM for its true class and for the predicted one."""
    from cnnlab.data.view import display
    from cnnlab.lab.explorer import _slug, command, test_input, twin
    from cnnlab.lab.pictures import data_url, heat_url, image_url, overlay_url, png
    from cnnlab.visualize.attribution import gradcam, saliency
    from cnnlab.visualize.layers import gradcam_layer

    entry = run_entry(lab, query(request, "source", ""))
    run = lab.sources.open(entry.id)
    data = lab.sources.images(entry.id, eval_split(run))
    n = len(data)
    i = query(request, "image", None, int, low=0, high=n - 1)
    x, label = test_input(data, i)
    view, classes = run.info.view, list(run.info.classes)
    layer = gradcam_layer(twin(lab, entry, run), tuple(x.shape[1:]))
    file = f"{_slug(view.data)}-{data.split}-{i}.png"
    image = display(x, view)
    if not view.is_folder:  # the file at its own size: `cnnlab visualize` prepares it as the loader did
        raw = data.dataset.images[i].permute(1, 2, 0).numpy()
        download = data_url(png(raw[..., 0] if raw.shape[2] == 1 else raw))
    else:
        download = image_url(image)
    with model_lock(run.model):
        first = gradcam(run.model, x[0], layer, label)
        predicted = int(first.predicted)
        targets = [label] + ([predicted] if predicted != label else [])
        panels = []
        for role, t in zip(("true", "predicted"), targets):
            cam = first if t == label else gradcam(run.model, x[0], layer, t)
            sal = saliency(run.model, x[0], t, normalize="max")
            panels.append({"role": role, "target": t, "class": classes[t], "probability": float(cam.probability),
                           "saliency": heat_url(sal.map, 0.0, 1.0, "inferno"),
                           "gradcam": overlay_url(image, cam.map), "gradcam_raw": np.asarray(cam.raw).tolist(),
                           "commands": {
                               "saliency": command(lab, entry, "visualize saliency", file, "--target", str(t)),
                               "gradcam": command(lab, entry, "visualize gradcam", file, "--layer", layer,
                                                  "--target", str(t))}})
    return {"index": i, "split": data.split, "url": image_url(image), "download": download, "file": file,
            "true": label, "true_class": classes[label], "predicted": predicted,
            "predicted_class": classes[predicted], "layer": layer, "panels": panels}


def routes():
    from starlette.routing import Route

    from cnnlab.lab.web import api

    return [Route("/api/result/confusion", api(_confusion)),
            Route("/api/result/errors", api(_errors)),
            Route("/api/result/why", api(_why))]
