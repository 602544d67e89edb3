"""Training from the lab (``/train``): a real ``cnnlab train`` in a process of its own, queued, paused, resumed
and stopped from the page, its run folder streamed to the page as it grows.

The web server never trains. Each training is ``python -m cnnlab train ... --out RUNS/MODEL-DATA-TIME --quiet``
(``cnnlab transfer`` for a run that starts from another run's weights) in a new session, so killing the server
(Ctrl-C, a crash, kill -9) never reaches it; its output goes to ``lab-train.log`` in the run folder. The server
keeps what it knows of each training in the run folder too, in ``lab-process.json`` (pid, process group, argv,
state, exit code), so a restarted server finds every training again: a live one by its pid (checked against
``/proc/PID/cmdline``, which must name the run folder, so a reused pid is not mistaken for it), a dead one that
was running (killed with -9, the machine rebooted) as *stopped*, resumable.

Pause and stop both send SIGTERM to the training's process group: the trainer stops between two writes, its
last.pt being the end of the last complete epoch, and ``cnnlab train MODEL --resume RUN`` goes on from there
(with ``--deterministic``, to the same weights as a run never interrupted). They differ in what the page says.
At most ``--max-trainings`` (default 1: one training uses every CPU core) run at once; the others wait in a
queue, started by a small watcher thread as each running one ends.

A learning rate changed on the fly is written to ``control.json`` (atomically, with an increasing id); the
trainer applies it at its next step and records it (metrics.jsonl's ``lr_change`` line, config.json's
``lr_changes``).

The stream (``GET /api/train/{id}/stream``) is server-sent events: every line of metrics.jsonl, health.jsonl
and snapshots/index.jsonl from the start of each file, then the new ones as they are written (only the new
bytes are read, every quarter second), and the training's state when it changes.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cnnlab.lab.web import LabError

PROCESS_FILE = "lab-process.json"
LOG_FILE = "lab-train.log"
CONTROL_FILE = "control.json"
STATES = ("queued", "running", "paused", "stopped", "finished", "failed")
LIVE = ("queued", "running")
MAX_QUEUED = 32  # trainings waiting at once: a form clicked a hundred times does not queue a hundred runs
MAX_VIEWERS = 16  # live streams at once (each polls four files four times a second)
POLL_S = 0.25
CHUNK = 1 << 20  # bytes of a file sent per poll: a long run's metrics arrive in pieces, the loop stays free
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "fp64")
STREAMS = (("metrics", "metrics.jsonl"), ("health", "health.jsonl"), ("snapshot", "snapshots/index.jsonl"))


# ------------------------------------------------------------------------------------------------- processes

def _alive(pid: int | None, folder: Path) -> bool:
    """Whether ``pid`` is a live process training in ``folder``: it exists and its command line names the folder
    (a pid reused by another program after a reboot is not ours; a zombie has an empty command line)."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        if Path("/proc/self").exists():
            return False
        try:  # no /proc (macOS): the pid alone
            os.kill(pid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False
    except OSError:
        return False
    return str(folder).encode() in cmdline


def _read_json(path: Path) -> dict | None:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


@dataclass
class Training:
    """One training the lab started (or found again), as its ``lab-process.json`` records it."""

    folder: Path
    id: str
    label: str
    argv: list[str]  # what runs next: the first command, or its --resume
    first_argv: list[str] = field(default_factory=list)  # the command that started the run (kept for a restart)
    state: str = "queued"
    pid: int | None = None
    pgid: int | None = None
    started: float | None = None
    returncode: int | None = None
    queued: float = field(default_factory=time.time)
    note: str = ""
    wanted: str | None = None  # paused | stopped: what the SIGTERM sent was for
    process: subprocess.Popen | None = field(default=None, repr=False)  # None: found again after a restart

    def record(self) -> dict:
        return {"pid": self.pid, "pgid": self.pgid, "started": self.started, "argv": self.argv,
                "state": self.state, "returncode": self.returncode, "first_argv": self.first_argv,
                "queued": self.queued, "note": self.note}

    def save(self) -> None:
        from cnnlab.fileio import atomic_write_json

        atomic_write_json(self.folder / PROCESS_FILE, self.record())

    @classmethod
    def load(cls, folder: Path, run_id: str, label: str) -> Training | None:
        rec = _read_json(folder / PROCESS_FILE)
        if rec is None or rec.get("state") not in STATES or not isinstance(rec.get("argv"), list):
            return None
        t = cls(folder, run_id, label, [str(a) for a in rec["argv"]],
                [str(a) for a in rec.get("first_argv") or rec["argv"]], rec["state"], rec.get("pid"),
                rec.get("pgid"), rec.get("started"), rec.get("returncode"), rec.get("queued") or time.time(),
                str(rec.get("note") or ""))
        return t

    @property
    def resumable(self) -> bool:
        return self.state in ("paused", "stopped", "failed")

    def alive(self) -> bool:
        if self.process is not None:
            return self.process.poll() is None
        return _alive(self.pid, self.folder)


class Trainings:
    """Every training of one server: started, queued, watched; found again from the run folders at start."""

    def __init__(self, runs: Path | None, max_running: int = 1, watch: bool = True):
        """``watch=False``: find the trainings and report them, but start and record nothing (a second look at
        a folder another server manages)."""
        self.runs, self.max_running = runs, max(1, int(max_running))
        self._all: dict[str, Training] = {}
        self._lock = threading.RLock()
        self._watcher: threading.Thread | None = None
        self._closed = not watch
        self.viewers = 0
        self.discover()

    # ------------------------------------------------------------------------------------------ finding again
    def discover(self) -> None:
        """The trainings that earlier servers started, from their ``lab-process.json``: a live one is watched
        again, a dead one that was running shows as stopped (resumable), a queued one waits again."""
        if self.runs is None:
            return
        from cnnlab.lab.sources import run_id

        for process_file in sorted(self.runs.glob(f"*/{PROCESS_FILE}")):
            folder = process_file.parent
            label = folder.relative_to(self.runs).as_posix()
            t = Training.load(folder, run_id(label), label)
            if t is None:
                continue
            if t.state == "running" and not _alive(t.pid, folder):  # it ended while no server watched
                self._ended(t, "its process is gone (killed, or the machine restarted); resume it")
            self._all[t.id] = t
        self._schedule()

    def close(self) -> None:
        """Stop watching (the trainings go on: they are not the server's children in any way that matters)."""
        self._closed = True

    # ------------------------------------------------------------------------------------------------ queries
    def get(self, run_id: str) -> Training:
        with self._lock:
            t = self._all.get(run_id)
        if t is None:
            raise LabError(f"no training with id {run_id!r} was started from this lab (a run trained from the "
                           f"command line can be watched, not paused or resumed here)", 404)
        return t

    def known(self) -> list[Training]:
        with self._lock:
            return list(self._all.values())

    def counts(self) -> dict:
        with self._lock:
            states = [t.state for t in self._all.values()]
        return {"running": states.count("running"), "queued": states.count("queued"), "max": self.max_running}

    # ------------------------------------------------------------------------------------------------ changes
    def add(self, folder: Path, run_id: str, label: str, argv: list[str]) -> Training:
        with self._lock:
            if sum(t.state == "queued" for t in self._all.values()) >= MAX_QUEUED:
                raise LabError(f"{MAX_QUEUED} trainings are already waiting; stop some before queueing more", 429)
            folder.mkdir(parents=True)
            t = Training(folder, run_id, label, argv, list(argv))
            t.save()
            self._all[run_id] = t
            self._schedule()
            return t

    def pause(self, run_id: str, wanted: str = "paused") -> Training:
        """SIGTERM to the training's process group (it stops between two writes); a queued one leaves the queue."""
        t = self.get(run_id)
        with self._lock:
            if t.state == "queued":
                t.state, t.note = wanted, ""
                t.save()
                return t
            if t.state != "running":
                raise LabError(f"{t.label} is {t.state}, not running: there is nothing to {wanted[:-2]}", 409)
            t.wanted, t.state, t.note = wanted, wanted, ""
            t.save()
        self._signal(t)
        return t

    def _signal(self, t: Training) -> None:
        try:
            if t.pgid and t.alive():
                os.killpg(t.pgid, signal.SIGTERM)
            elif t.pid and t.alive():
                os.kill(t.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass  # it ended on its own meanwhile: the watcher records how
        self._watch()

    def resume(self, run_id: str) -> Training:
        """Queue ``cnnlab train MODEL --resume RUN`` (or the first command again when no epoch finished)."""
        t = self.get(run_id)
        deadline = time.time() + 20
        while t.alive() and t.state not in LIVE and time.time() < deadline:  # still stopping after a pause
            time.sleep(0.1)
        with self._lock:
            if t.state in LIVE:
                raise LabError(f"{t.label} is already {t.state}", 409)
            if t.alive():
                raise LabError(f"{t.label} is still stopping; try again in a moment", 409)
            if t.state == "finished":
                raise LabError(f"{t.label} has finished; start a new run (or transfer from this one) to train more",
                               409)
            t.argv = resume_argv(t) if (t.folder / "last.pt").is_file() else list(t.first_argv)
            t.state, t.returncode, t.pid, t.pgid, t.note, t.wanted = "queued", None, None, None, "", None
            t.queued = time.time()
            t.save()
            self._schedule()
            return t

    def _schedule(self) -> None:
        """Start queued trainings (oldest first) while fewer than ``max_running`` run."""
        if self._closed:
            return
        with self._lock:
            self._schedule_locked()
        self._watch()

    def _schedule_locked(self) -> None:
        running = sum(t.state == "running" for t in self._all.values())
        for t in sorted((t for t in self._all.values() if t.state == "queued"), key=lambda t: t.queued):
            if running >= self.max_running:
                break
            self._launch(t)
            running += t.state == "running"

    def _launch(self, t: Training) -> None:
        log = open(t.folder / LOG_FILE, "ab")
        try:
            log.write(f"\n$ {' '.join(t.argv)}\n".encode())
            log.flush()
            t.process = subprocess.Popen(t.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True, env=os.environ.copy())
        except OSError as e:
            t.state, t.note = "failed", f"the training could not start ({e})"
            t.save()
            return
        finally:
            log.close()
        t.pid = t.pgid = t.process.pid  # a new session: its own process group, led by it
        t.started, t.state, t.returncode = time.time(), "running", None
        t.save()

    # ------------------------------------------------------------------------------------------------ watcher
    def _watch(self) -> None:
        with self._lock:
            if self._closed or (self._watcher is not None and self._watcher.is_alive()):
                return
            if not any(t.state == "running" or t.alive() for t in self._all.values() if t.pid):
                return
            self._watcher = threading.Thread(target=self._loop, name="cnnlab-trainings", daemon=True)
            self._watcher.start()

    def _loop(self) -> None:
        """Record how each training ended and start the next in the queue; ends when nothing runs."""
        while not self._closed:
            with self._lock:
                live = [t for t in self._all.values() if t.pid and (t.state == "running" or t.wanted)]
                for t in live:
                    if not t.alive():
                        self._ended(t)
                if any(t.state == "queued" for t in self._all.values()):
                    self._schedule_locked()
                if not any(t.pid and t.alive() for t in self._all.values()):
                    self._watcher = None
                    return
            time.sleep(0.2)

    def _ended(self, t: Training, gone: str = "its process was stopped from outside the lab; resume it") -> None:
        """The process is gone: finished, failed, or stopped by a signal (ours or someone's)."""
        code = t.process.returncode if t.process is not None else None
        if t.process is None:  # found again after a restart: no exit code; summary.md is what a finished run writes
            summary = t.folder / "summary.md"
            code = 0 if summary.is_file() and summary.stat().st_mtime >= (t.started or 0) else None
        t.returncode = code
        if t.wanted:
            t.state = t.wanted
        elif code == 0:
            t.state = "finished"
        elif code is None or code in (143, 137, -9, -15, 130):
            t.state, t.note = "stopped", gone
        else:
            t.state, t.note = "failed", last_line(t.folder / LOG_FILE) or f"exit code {code}"
        t.wanted, t.process = None, None
        if not self._closed:
            t.save()

    # ------------------------------------------------------------------------------------------------ lr
    def set_lr(self, run_id: str, lr: float) -> dict:
        """control.json with the new value and the next id (the trainer applies each id once)."""
        from cnnlab.fileio import atomic_write_json

        t = self.get(run_id)
        if t.state != "running":
            raise LabError(f"{t.label} is {t.state}; the learning rate changes only while it trains", 409)
        with self._lock:
            old = _read_json(t.folder / CONTROL_FILE) or {}
            previous = old.get("lr", {}).get("id", 0) if isinstance(old.get("lr"), dict) else 0
            control = {**old, "lr": {"value": lr, "id": int(previous) + 1 if isinstance(previous, int) else 1}}
            atomic_write_json(t.folder / CONTROL_FILE, control)
        return control["lr"]


def resume_argv(t: Training) -> list[str]:
    """``cnnlab train MODEL --resume RUN --quiet``: the run's own settings come from its checkpoint."""
    config = _read_json(t.folder / "config.json") or {}
    model = config.get("model") or _flag_model(t.first_argv)
    return [sys.executable, "-m", "cnnlab", "train", str(model), "--resume", str(t.folder), "--quiet"]


def _flag_model(argv: list[str]) -> str:
    if "train" in argv:
        return argv[argv.index("train") + 1]
    return argv[argv.index("--model") + 1]


def last_line(path: Path, size: int = 4096) -> str:
    """The last line a failed training printed (its error), for the page."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - size))
            lines = [line.strip() for line in f.read().decode("utf-8", "replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def trainings(lab) -> Trainings:
    """The lab's training manager, made the first time it is asked for (app.py may make it at start)."""
    if getattr(lab, "trainings", None) is None:
        lab.trainings = Trainings(lab.runs, getattr(lab, "max_trainings", 1))
    return lab.trainings


# ------------------------------------------------------------------------------------------------ the form

def _int(body: dict, name: str, low: int, high: int) -> int | None:
    value = body.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise LabError(f"`{name}` must be a whole number from {low} to {high}, got {value!r}")
    try:
        number = int(value) if not isinstance(value, float) or value.is_integer() else None
    except ValueError:
        number = None
    if number is None or not low <= number <= high:
        raise LabError(f"`{name}` must be a whole number from {low} to {high}, got {value!r}")
    return number


def _float(body: dict, name: str, low: float, high: float) -> float | None:
    value = body.get(name)
    if value is None or value == "":
        return None
    try:
        number = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or not low < number <= high:
        raise LabError(f"`{name}` must be a number above {low} and at most {high}, got {value!r}")
    return number


def datasets() -> list[str]:
    """The datasets a training can read here: those of ``cnnlab data list`` with their files present."""
    from cnnlab.data.sources import present

    return present()


def command_for(lab, body: dict) -> tuple[list[str], str, str]:
    """The ``cnnlab train`` (or ``cnnlab transfer``) arguments for the form, checked as the CLI checks them, with
    the model and data it trains (for the run folder's name). A mistake is one sentence."""
    from cnnlab.models.registry import canonical_name, coerce_model_options, is_model, model_card
    from cnnlab.train.recipes import RECIPES, default_recipe

    model = body.get("model")
    if not isinstance(model, str) or not is_model(model):
        raise LabError(f"unknown model {model!r}; pick one of `cnnlab models`")
    model = canonical_name(model)
    args: list[str] = []
    source = body.get("transfer_from")
    if source:
        entry = lab.sources.entry(source)
        if entry.kind == "run":
            if not (entry.path / "last.pt").is_file():
                raise LabError(f"{entry.label} has no checkpoint yet to transfer from")
            args = ["transfer", "--from", str(entry.path), "--model", model]
        elif entry.kind == "torchvision":
            from cnnlab.transfer.weights import TORCHVISION_WEIGHTS

            if entry.model != model:
                raise LabError(f"{source} holds {entry.model}'s weights; pick {entry.model} as the model")
            args = ["transfer", "--from", "IMAGENET1K_V1", "--model", model]
            assert model in TORCHVISION_WEIGHTS
        else:
            raise LabError("`transfer_from` must be a trained run (r-...) or torchvision weights (tv-MODEL)")
        mode = body.get("transfer_mode") or "features"
        if mode not in ("features", "finetune"):
            raise LabError(f"`transfer_mode` must be features or finetune, got {mode!r}")
        args += ["--mode", mode]
    else:
        args = ["train", model]
    recipe = body.get("recipe") or None
    if recipe is not None and recipe not in RECIPES:
        raise LabError(f"unknown recipe {recipe!r}; `cnnlab recipes` lists {', '.join(RECIPES)}")
    default = RECIPES[recipe] if recipe else default_recipe(model)
    data = body.get("data") or (default.data if default else None)
    if not data:
        raise LabError(f"{model} has no default recipe, so pick a dataset and a recipe")
    if data not in datasets():
        raise LabError(f"the dataset {data!r} is not on this machine; `cnnlab data list` shows "
                       f"{', '.join(datasets()) or 'none'} (fetch others with `cnnlab data prepare`)")
    if body.get("data"):
        args += ["--data", data]
    if recipe:
        args += ["--recipe", recipe]
    for name, flag, low, high in (("epochs", "--epochs", 1, 10_000), ("batch_size", "--batch-size", 1, 65_536),
                                  ("train_limit", "--train-limit", 1, 10_000_000), ("log_every", "--log-every", 1,
                                                                                    100_000),
                                  ("seed", "--seed", 0, 2**32 - 1)):
        value = _int(body, name, low, high)
        if value is not None:
            args += [flag, str(value)]
    lr = _float(body, "lr", 0.0, 10.0)
    if lr is not None:
        args += ["--lr", repr(lr)]
    val_split = _float(body, "val_split", 0.0, 0.5)
    if val_split is not None:
        args += ["--val-split", repr(val_split)]
    precision = body.get("precision") or "auto"
    if precision not in PRECISIONS:
        raise LabError(f"`precision` must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        args += ["--precision", precision]
    if body.get("deterministic"):
        args.append("--deterministic")
    for name, flag in (("health_every", "--health-every"), ("snapshot_every", "--snapshot-every")):
        value = _int(body, name, 0 if name == "health_every" else 1, 1_000_000)
        if value is not None:
            args += [flag, str(value)]
    if body.get("snapshots") is False:
        args.append("--no-snapshots")
    options = body.get("model_options") or {}
    if not isinstance(options, dict):
        raise LabError("`model_options` must be an object of option: value")
    items = [f"{k}={v}" for k, v in options.items()]
    model_card(model)
    coerce_model_options(model, items)  # checked as the CLI checks --model-option
    for item in items:
        args += ["--model-option", item]
    return args, model, data


def _start(lab, request, body: dict) -> dict:
    from cnnlab.lab.sources import run_id

    if lab.runs is None:
        raise LabError("the lab was started without --runs, so a training has nowhere to go: restart it with "
                       "`cnnlab serve --runs runs`")
    args, model, data = command_for(lab, body)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = f"{model}-{data}-{stamp}"
    folder, n = lab.runs / base, 1
    while folder.exists():
        n += 1
        folder = lab.runs / f"{base}-{n}"
    argv = [sys.executable, "-m", "cnnlab", *args, "--out", str(folder), "--quiet"]
    label = folder.relative_to(lab.runs).as_posix()
    t = trainings(lab).add(folder, run_id(label), label, argv)
    return {"id": t.id, "label": t.label, "state": t.state, "command": shown_command(t.argv, lab.runs)}


def shown_command(argv: list[str], runs: Path | None) -> str:
    """The command as a user would type it: ``cnnlab train ...`` with the run folder under --runs' own name."""
    words = ["cnnlab", *argv[3:]]
    if runs is not None:
        words = [w.replace(str(runs), runs.name) for w in words]
    return " ".join(words)


# ------------------------------------------------------------------------------------------------ listing

def progress(folder: Path) -> dict:
    """Where a run stands, from its files: epochs done of all, the last step, the last evaluation top-1."""
    config = _read_json(folder / "config.json") or {}
    total = (config.get("recipe_settings") or {}).get("epochs")
    done, top1, step = 0, None, None
    try:
        with open(folder / "metrics.jsonl", "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 65536))
            tail = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        tail = []
    for line in reversed(tail):
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        step = rec.get("step") if step is None else step
        if rec.get("kind") == "epoch":
            done, top1 = rec.get("epoch", 0), rec.get("eval_top1")
            break
    return {"model": config.get("model"), "data": config.get("data"), "epochs": done, "epochs_total": total,
            "step": step, "top1": top1, "checkpoint": (folder / "last.pt").is_file()}


def describe(t: Training, runs: Path | None) -> dict:
    return {"id": t.id, "label": t.label, "state": t.state, "lab": True, "resumable": t.resumable,
            "note": t.note, "returncode": t.returncode, "started": t.started, "pid": t.pid,
            "command": shown_command(t.argv, runs), "first_command": shown_command(t.first_argv, runs),
            **progress(t.folder)}


def _list(lab, request) -> dict:
    """Every run under --runs: those the lab started with their live state, the others as the CLI left them."""
    manager = trainings(lab)
    out = {t.id: describe(t, lab.runs) for t in manager.known()}
    for e in lab.sources.scan():
        if e.id not in out and e.path is not None:
            state = "finished" if (e.path / "summary.md").is_file() else "external"
            out[e.id] = {"id": e.id, "label": e.label, "state": state, "lab": False, "resumable": False,
                         "note": e.problem or "", "returncode": None, "started": None, "pid": None, "command": "",
                         **progress(e.path)}
    runs = sorted(out.values(), key=lambda r: r["label"])
    return {"runs": runs, **manager.counts(), "has_runs": lab.runs is not None,
            "datasets": datasets() if request.query_params.get("form") else None}


def folder_of(lab, run_id: str) -> Path:
    """A run's folder from its id (one the lab started, or one under --runs); never a path from the client."""
    try:
        return trainings(lab).get(run_id).folder
    except LabError:
        e = lab.sources.entry(run_id)
        if e.kind != "run" or e.path is None:
            raise LabError(f"{run_id!r} is not a run folder under --runs", 404) from None
        return e.path


def _action(name: str):
    def endpoint(lab, request, body=None) -> dict:
        run_id = request.path_params["id"]
        manager = trainings(lab)
        if name == "resume":
            t = manager.resume(run_id)
        else:
            t = manager.pause(run_id, "paused" if name == "pause" else "stopped")
        return describe(t, lab.runs)

    endpoint.__name__ = f"_{name}"
    return endpoint


def _lr(lab, request, body: dict) -> dict:
    if not isinstance(body, dict):
        raise LabError("send {\"lr\": a number}")
    lr = _float(body, "lr", 0.0, 10.0)
    if lr is None:
        raise LabError("the request needs `lr`, the new learning rate")
    return {"lr": trainings(lab).set_lr(request.path_params["id"], lr)}


# ------------------------------------------------------------------------------------------------ snapshots

def snapshot_index(folder: Path) -> list[dict]:
    from cnnlab.fileio import read_jsonl

    return [rec for rec in read_jsonl(folder / "snapshots" / "index.jsonl")
            if isinstance(rec.get("file"), str) and isinstance(rec.get("step"), int)]


def filter_urls(w: np.ndarray) -> list[str]:
    """The first convolution's kernels, each scaled to 0..1 on its own as ``cnnlab visualize filters`` draws
    them: RGB when it reads 3 channels, grey for 1, else the first input channel's slice."""
    from cnnlab.lab.pictures import image_url

    w = w.astype(np.float32)
    lo = w.min(axis=(1, 2, 3), keepdims=True)
    span = w.max(axis=(1, 2, 3), keepdims=True) - lo
    w = np.where(span > 0, (w - lo) / np.maximum(span, 1e-12), 0.5)
    scale = max(1, 48 // max(w.shape[2:]))
    if w.shape[1] == 3:
        return [image_url(k.transpose(1, 2, 0), scale) for k in w]
    return [image_url(k[0], scale) for k in w]


def _snapshot(lab, request) -> dict:
    """One snapshot's pictures: the first layer's filters, each stage's activations on one probe image (all on
    the stage's one colour scale), the probe images, and the confusion matrix at epoch ends."""
    from cnnlab.lab.pictures import heat_url, image_url
    from cnnlab.lab.web import query

    folder = folder_of(lab, request.path_params["id"])
    index = snapshot_index(folder)
    if not index:
        raise LabError("this run has no snapshots (yet): they are written by `cnnlab train --snapshots`", 404)
    step = query(request, "step", index[-1]["step"], int, low=0)
    image = query(request, "image", 0, int, low=0, high=63)
    entry = min(index, key=lambda r: (abs(r["step"] - step), -r["step"]))
    name = Path(entry["file"]).name  # the index names a file of snapshots/, nothing else
    try:
        with np.load(folder / "snapshots" / name, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise LabError(f"the snapshot {name} cannot be read ({type(e).__name__}); it may still be being written",
                       409) from None
    out = {"step": entry["step"], "epoch": entry.get("epoch"), "file": name, "steps": [r["step"] for r in index],
           "image": image}
    if "filters" in arrays:
        out["filters"] = filter_urls(arrays["filters"])
        out["filters_shape"] = list(arrays["filters"].shape)
    stages = []
    for key, a in arrays.items():
        if not key.startswith("act__") or a.ndim != 4:
            continue
        a = a.astype(np.float32)
        i = min(image, a.shape[0] - 1)
        lo, hi = float(a.min()), float(a.max())
        cmap = "RdBu_r" if lo < 0 < hi else "viridis"
        if cmap == "RdBu_r":
            lo, hi = -max(-lo, hi), max(-lo, hi)
        scale = max(1, math.ceil(56 / max(a.shape[2:])))
        stages.append({"layer": key[5:], "shape": list(a.shape[1:]), "lo": lo, "hi": hi, "cmap": cmap,
                       "maps": [heat_url(m, lo, hi, cmap, scale) for m in a[i]]})
    out["stages"] = stages
    if "confusion" in arrays:
        out["confusion"] = arrays["confusion"].astype(np.int64).tolist()
    probe = folder / "snapshots" / "probe.npz"
    if probe.is_file():
        try:
            with np.load(probe, allow_pickle=False) as z:
                images, labels = z["images"], z["labels"]
            scale = max(1, 64 // images.shape[1])
            out["probe"] = [image_url(im.astype(np.float32) / 255, scale) for im in images]
            out["probe_labels"] = [int(v) for v in labels]
        except (OSError, ValueError, KeyError):
            pass
    classes = _classes(folder)
    if classes:
        out["classes"] = classes
    return out


def _classes(folder: Path) -> list[str] | None:
    config = _read_json(folder / "config.json") or {}
    try:
        from cnnlab.data.sources import spec

        return list(spec(config.get("data") or "").classes)
    except Exception:  # noqa: BLE001 - a nicety: the matrix is labelled by index without it
        return None


# ------------------------------------------------------------------------------------------------ the stream

class Tail:
    """A file read from the start, then only its new bytes; a file replaced or cut shorter (a resumed run
    rewrites metrics.jsonl up to its checkpoint) is read again from the start, which the page is told."""

    def __init__(self, path: Path):
        self.path, self.offset, self.inode, self.rest = path, 0, None, b""

    def read(self) -> tuple[bool, list[str]]:
        """(reset, the new complete lines)."""
        try:
            st = self.path.stat()
        except OSError:
            return False, []
        reset = False
        if (self.inode is not None and st.st_ino != self.inode) or st.st_size < self.offset:
            self.offset, self.rest, reset = 0, b"", self.inode is not None
        self.inode = st.st_ino
        if st.st_size == self.offset:
            return reset, []
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read(CHUNK)
        except OSError:
            return reset, []
        self.offset += len(data)
        data = self.rest + data
        *lines, self.rest = data.split(b"\n")
        return reset, [line.decode("utf-8", "replace") for line in lines if line.strip()]


def _state_of(lab, run_id: str, folder: Path) -> dict:
    try:
        return describe(trainings(lab).get(run_id), lab.runs)
    except LabError:
        return {"id": run_id, "state": "finished" if (folder / "summary.md").is_file() else "external",
                "lab": False, **progress(folder)}


def _poll(lab, run_id: str, folder: Path, tails: dict) -> list[str]:
    """The events since the last poll, as SSE text (a thread runs it: files are never read on the event loop)."""
    events = []
    for name, tail in tails.items():
        if not isinstance(tail, Tail):
            continue
        reset, lines = tail.read()
        if reset:
            events.append(f"event: reset\ndata: {json.dumps({'stream': name})}\n\n")
        events += [f"event: {name}\ndata: {line}\n\n" for line in lines]
    tails["_polls"] = tails.get("_polls", 0) + 1
    if not events and tails["_polls"] % 4 != 1:
        return events  # the state (a few small reads) is looked at once a second, or when a file moved
    state = _state_of(lab, run_id, folder)
    key = json.dumps(state, sort_keys=True)
    if key != tails.get("_state_key"):
        tails["_state_key"] = key
        events.append(f"event: state\ndata: {key}\n\n")
    return events


async def _stream(request):
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import JSONResponse, StreamingResponse

    lab = request.app.state.lab
    run_id = request.path_params["id"]
    try:
        folder = await run_in_threadpool(folder_of, lab, run_id)
    except LabError as e:
        return JSONResponse({"error": str(e)}, status_code=e.status)
    manager = trainings(lab)
    if manager.viewers >= MAX_VIEWERS:
        return JSONResponse({"error": f"{MAX_VIEWERS} pages are already watching trainings; close one"}, 429)

    async def events():
        tails: dict = {name: Tail(folder / file) for name, file in STREAMS}
        last = time.monotonic()
        manager.viewers += 1  # counted once the stream runs, so a stream never started is never counted
        try:
            yield "retry: 2000\n\n"
            while not await request.is_disconnected():
                out = await run_in_threadpool(_poll, lab, run_id, folder, tails)
                if out:
                    last = time.monotonic()
                    yield "".join(out)
                elif time.monotonic() - last > 15:
                    last = time.monotonic()
                    yield ": still here\n\n"  # a comment: keeps proxies from closing an idle stream
                await asyncio.sleep(POLL_S)
        finally:
            manager.viewers -= 1

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"cache-control": "no-cache", "x-accel-buffering": "no"})


def _form(lab, request) -> dict:
    """What the form offers: every registered model, the datasets present, the recipes, the precisions."""
    from cnnlab.models.registry import list_models
    from cnnlab.train.recipes import list_recipes

    return {"models": list_models(), "datasets": datasets(),
            "recipes": [{"name": r.name, "data": r.data, "epochs": r.epochs, "batch_size": r.batch_size,
                         "lr": r.lr, "models": list(r.models)} for r in list_recipes()],
            "precisions": list(PRECISIONS), "has_runs": lab.runs is not None,
            "runs_name": lab.runs.name if lab.runs else None, **trainings(lab).counts()}


def routes():
    from starlette.routing import Route

    from cnnlab.lab.web import api

    return [Route("/api/train", api(_list), methods=["GET"]),
            Route("/api/train/form", api(_form), methods=["GET"]),
            Route("/api/train/start", api(_start), methods=["POST"]),
            Route("/api/train/{id}/pause", api(_action("pause")), methods=["POST"]),
            Route("/api/train/{id}/resume", api(_action("resume")), methods=["POST"]),
            Route("/api/train/{id}/stop", api(_action("stop")), methods=["POST"]),
            Route("/api/train/{id}/lr", api(_lr), methods=["POST"]),
            Route("/api/train/{id}/snapshot", api(_snapshot), methods=["GET"]),
            Route("/api/train/{id}/stream", _stream, methods=["GET"])]
