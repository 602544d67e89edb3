"""Training from the lab (/train): real `cnnlab train` processes started, queued, paused, resumed and stopped by
the server; lab-process.json; a restarted server finding a live training and a killed one; the SSE stream
against the run folder's own files; control.json for the learning rate; the snapshot pictures against values
computed by hand; and the page: a 3-epoch LeNet-5 started from the form, its curves growing, paused and resumed,
ending with exactly the weights of an uninterrupted `cnnlab train --deterministic` run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx  # Starlette's TestClient asks for httpx2 (the test extra); same API
import numpy as np
import pytest
import torch
from starlette.testclient import TestClient

from cnnlab.lab import create_app
from cnnlab.lab.sources import run_id

pytestmark = pytest.mark.slow

TINY = {"model": "lenet5", "train_limit": 512, "batch_size": 32, "val_split": 0.02, "log_every": 1,
        "deterministic": True, "health_every": 5}
CLI_TINY = ["--train-limit", "512", "--batch-size", "32", "--log-every", "1", "--val-split", "0.02",
            "--deterministic", "--health-every", "5"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("train-runs")


@pytest.fixture(scope="module")
def lab_server(runs):
    """This file's own lab (the `page` fixture uses it) on a fresh --runs folder: the trainings it starts never
    land in the shared lab_runs."""
    from conftest import LabServer

    server = LabServer(runs)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def http(lab_server):
    with httpx.Client(base_url=lab_server.url, headers={"origin": lab_server.url}, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same 3-epoch run as the page's, uninterrupted, from the command line (started at once, in parallel)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    proc = subprocess.Popen([sys.executable, "-m", "cnnlab", "train", "lenet5", "--epochs", "3", *CLI_TINY,
                             "--out", str(out), "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    yield proc, out
    if proc.poll() is None:
        proc.kill()


def wait(fn, timeout=90, every=0.2, what="the condition"):
    end = time.time() + timeout
    while time.time() < end:
        got = fn()
        if got:
            return got
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def listing(http) -> dict:
    return {r["id"]: r for r in http.get("/api/train").json()["runs"]}


def process(runs: Path, label: str) -> dict:
    return json.loads((runs / label / "lab-process.json").read_text())


# ------------------------------------------------------------------------------------------------ refusals

def test_mistakes_are_one_sentence(tmp_path):
    origin = {"origin": "http://127.0.0.1:8000"}
    c = TestClient(create_app(tmp_path), base_url="http://127.0.0.1:8000")
    for body, words in [({"model": "nope"}, "unknown model"), ({"model": "lenet5", "epochs": 0}, "`epochs`"),
                        ({"model": "lenet5", "lr": -1}, "`lr`"), ({"model": "lenet5", "data": "nowhere"}, "nowhere"),
                        ({"model": "lenet5", "model_options": {"zz": 1}}, "no option"),
                        ({"model": "lenet5", "precision": "fp8"}, "`precision`"),
                        ({"model": "lenet5", "transfer_from": "r-0000000000"}, "no run")]:
        r = c.post("/api/train/start", json=body, headers=origin)
        assert 400 <= r.status_code < 500 and words in r.json()["error"], (body, r.json())
        assert r.json()["error"].count(". ") == 0
    assert not any(tmp_path.iterdir()), "a refused start wrote nothing"
    r = TestClient(create_app(None), base_url="http://127.0.0.1:8000").post(
        "/api/train/start", json={"model": "lenet5"}, headers=origin)
    assert r.status_code == 400 and "--runs" in r.json()["error"]
    assert c.post("/api/train/r-0000000000/pause", headers=origin).status_code == 404
    assert c.post("/api/train/start", json={"model": "lenet5"}).status_code == 403  # no Origin: the guard
    assert c.get("/api/train/start").status_code in (404, 405)  # a GET never starts anything
    (tmp_path / "cli-run").mkdir()  # a run from the command line can be watched
    (tmp_path / "cli-run" / "config.json").write_text(json.dumps({"model": "lenet5", "data": "mnist"}))
    manager = c.app.state.lab.trainings
    manager.viewers = 16  # the bound on live streams
    r = c.get(f"/api/train/{run_id('cli-run')}/stream")
    assert r.status_code == 429 and "close one" in r.json()["error"]
    assert c.get("/api/train/r-0000000000/stream").status_code == 404
    assert c.post(f"/api/train/{run_id('cli-run')}/pause", headers=origin).status_code == 404  # not the lab's

    from cnnlab.cli import main

    assert main(["serve", "--max-trainings", "0"]) == 2


# ------------------------------------------------------------------------------------------------ restart

def _sleeper(folder: Path) -> subprocess.Popen:
    """A process standing in for a training: its command line names the run folder, as `cnnlab train` does."""
    return subprocess.Popen([sys.executable, "-c", "import time, sys; time.sleep(120)", "--out", str(folder)],
                            start_new_session=True)


def test_restart_finds_a_live_training_and_a_killed_one_and_lr_goes_to_control_json(tmp_path):
    origin = {"origin": "http://127.0.0.1:8000"}
    procs = {}
    for name in ("live", "killed"):
        folder = tmp_path / name
        folder.mkdir()
        procs[name] = _sleeper(folder)
        (folder / "lab-process.json").write_text(json.dumps({
            "pid": procs[name].pid, "pgid": procs[name].pid, "started": time.time(), "state": "running",
            "returncode": None, "argv": [sys.executable, "-m", "cnnlab", "train", "lenet5", "--out", str(folder)]}))
    os.kill(procs["killed"].pid, signal.SIGKILL)
    procs["killed"].wait()
    ended = tmp_path / "ended"  # finished while no server watched: its summary.md is newer than its start
    ended.mkdir()
    (ended / "lab-process.json").write_text(json.dumps({
        "pid": procs["killed"].pid, "pgid": procs["killed"].pid, "started": time.time() - 60, "state": "running",
        "returncode": None, "argv": [sys.executable, "-m", "cnnlab", "train", "lenet5", "--out", str(ended)]}))
    (ended / "summary.md").write_text("done\n")
    try:
        c = TestClient(create_app(tmp_path), base_url="http://127.0.0.1:8000")
        found = {r["label"]: r for r in c.get("/api/train").json()["runs"]}
        assert found["live"]["state"] == "running" and found["live"]["pid"] == procs["live"].pid
        assert found["killed"]["state"] == "stopped" and found["killed"]["resumable"]
        assert json.loads((tmp_path / "killed" / "lab-process.json").read_text())["state"] == "stopped"
        assert found["ended"]["state"] == "finished" and not found["ended"]["resumable"]

        live = run_id("live")
        for n, lr in enumerate([0.01, 0.002], start=1):
            r = c.post(f"/api/train/{live}/lr", json={"lr": lr}, headers=origin)
            assert r.json() == {"lr": {"value": lr, "id": n}}
            assert json.loads((tmp_path / "live" / "control.json").read_text()) == {"lr": {"value": lr, "id": n}}
        assert c.post(f"/api/train/{live}/lr", json={"lr": "fast"}, headers=origin).status_code == 400
        assert c.post(f"/api/train/{run_id('killed')}/lr", json={"lr": 0.1}, headers=origin).status_code == 409

        r = c.post(f"/api/train/{live}/stop", headers=origin).json()  # SIGTERM to its process group
        assert r["state"] == "stopped"
        procs["live"].wait(10)
        assert procs["live"].returncode == -signal.SIGTERM
        assert process(tmp_path, "live")["state"] == "stopped"
        c.app.state.lab.trainings.close()
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()


# ------------------------------------------------------------------------------------------------ real runs

def test_queue_of_one_stream_and_learning_rate(http, runs, lab_server, reference):
    """Two real trainings with --max-trainings 1: the second waits, then runs; each ends finished with its
    lab-process.json; the stream gives every line of metrics.jsonl; an lr sent while the first trains lands in
    control.json with increasing ids."""
    a = http.post("/api/train/start", json={**TINY, "epochs": 1}).json()
    b = http.post("/api/train/start", json={**TINY, "epochs": 1, "train_limit": 256}).json()
    assert a["state"] == "running" and b["state"] == "queued", (a, b)
    assert "cnnlab train lenet5 --epochs 1" in a["command"]
    pa = process(runs, a["label"])
    assert pa["state"] == "running" and pa["pid"] == pa["pgid"] and str(runs / a["label"]) in pa["argv"]
    assert os.getpgid(pa["pid"]) == pa["pgid"] != os.getpgid(0), "its own process group (a new session)"

    wait(lambda: listing(http)[a["id"]]["step"], what="the first step line")
    assert listing(http)[b["id"]]["state"] == "queued"
    # a second look at the folder, as a restarted server finds it: the live one running (by pid and cmdline)
    from cnnlab.lab.training import Trainings

    states = {t.id: t.state for t in Trainings(runs, watch=False).known()}
    assert states[a["id"]] == "running" and states[b["id"]] == "queued"

    sent = 0
    for n in (1, 2):
        r = http.post(f"/api/train/{a['id']}/lr", json={"lr": 0.05 / n})
        if r.status_code == 409:
            break  # it finished meanwhile (a loaded machine): the ids were checked in the restart test
        assert r.json()["lr"] == {"value": 0.05 / n, "id": n}

        def applied():
            return any('"lr_change"' in line and f'"lr": {0.05 / n}' in line for line in
                       (runs / a["label"] / "metrics.jsonl").read_text().splitlines())

        wait(lambda: applied() or listing(http)[a["id"]]["state"] != "running", timeout=30, what="the lr change")
        if not applied():
            break  # the run ended before its next step (a loaded machine): this change never applied
        sent = n

    wait(lambda: listing(http)[a["id"]]["state"] == "finished", what="the first run to finish")
    wait(lambda: listing(http)[b["id"]]["state"] != "queued", timeout=5, what="the queue to move")
    pa = process(runs, a["label"])
    assert pa["state"] == "finished" and pa["returncode"] == 0
    assert process(runs, b["label"])["started"] >= pa["started"]
    wait(lambda: listing(http)[b["id"]]["state"] == "finished", what="the second run to finish")
    assert process(runs, b["label"])["returncode"] == 0

    lines = (runs / a["label"] / "metrics.jsonl").read_text().splitlines()
    got, states = [], []
    with http.stream("GET", f"/api/train/{a['id']}/stream") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event == "metrics":
                got.append(line[6:])
            elif line.startswith("data: ") and event == "state":
                states.append(json.loads(line[6:]))
            if len(got) >= len(lines) and states:
                break
    assert got == lines
    assert states[0]["state"] == "finished" and states[0]["epochs"] == 1
    changes = [json.loads(x) for x in lines if json.loads(x)["kind"] == "lr_change"]
    if sent:  # the trainer applied each id once, at its next step, and said so in metrics.jsonl
        assert [c["lr"] for c in changes] == pytest.approx([0.05 / n for n in range(1, sent + 1)])


def test_page_trains_pauses_resumes_to_the_uninterrupted_weights(page, http, runs, reference):
    proc, ref_out = reference
    page.goto(page.lab + "/train")
    page.wait_for_selector("#f-model option[value=lenet5]", state="attached")
    page.select_option("#f-model", "lenet5")
    page.fill("#f-epochs", "3")
    page.fill("#f-batch", "32")
    page.fill("#f-limit", "512")
    page.fill("#f-val", "0.02")
    page.fill("#f-log", "1")
    page.check("#f-det")
    page.fill("#f-health", "5")
    shown = page.inner_text("#cmd-start")
    page.click("#start")
    page.wait_for_function("location.search.includes('run=r-')")
    rid = page.evaluate("new URLSearchParams(location.search).get('run')")
    started = listing(http)[rid]["first_command"]  # what the server runs is what the form showed
    assert re.sub(r"\d{8}-\d{6}", "TIME", started) == shown.strip()
    assert all(f"{flag} {value}" in started for flag, value in zip(CLI_TINY[:-3:2], CLI_TINY[1:-3:2]))
    assert "--deterministic --health-every 5" in started

    length = "() => window.labTrain && window.labTrain.charts.loss.data[0].length"
    page.wait_for_function(f"({length})() >= 3", timeout=60_000)
    first = page.evaluate(length)
    page.wait_for_function(f"({length})() > {first}", timeout=30_000)  # the curve grows while it trains
    page.wait_for_selector("#epoch-rows tr", timeout=60_000)  # epoch 1's line
    page.click("#v-pause")
    page.wait_for_selector("#v-state:text('paused')", timeout=30_000)
    label = listing(http)[rid]["label"]
    wait(lambda: process(runs, label)["returncode"] is not None or not listing(http)[rid]["pid"] or
         listing(http)[rid]["state"] == "paused", what="the pause")
    assert "last complete epoch" in page.inner_text("#v-pause-note")
    page.click("#v-resume")
    page.wait_for_selector("#v-state:text('finished')", timeout=90_000)
    assert "--resume" in " ".join(process(runs, label)["argv"])
    page.wait_for_function("document.querySelectorAll('#epoch-rows tr').length === 3")
    # the health panel: one bar per learnable layer of health.jsonl
    health = [json.loads(x) for x in (runs / label / "health.jsonl").read_text().splitlines()]
    assert page.locator("#h-ratio .bar").count() == len(health[-1]["layers"]) >= 4
    assert page.evaluate("window.labTrain.health.charts.ratio.data[0].length") == len({h["step"] for h in health})
    # the scrubber: every snapshot of the index, back to step 0 (before training), in the URL
    index = [json.loads(x) for x in (runs / label / "snapshots" / "index.jsonl").read_text().splitlines()]
    assert page.eval_on_selector("#scrub", "s => Number(s.max)") == len(index) - 1 >= 4
    page.eval_on_selector("#scrub", "s => { s.value = 0; s.dispatchEvent(new Event('input')); }")
    page.wait_for_function("location.search.includes('step=0')")
    page.wait_for_selector("#snap-card[data-step='0']")
    assert page.inner_text("#snap-where").startswith("step 0,")
    assert page.locator("#filters img").count() == 6  # LeNet-5's C1
    assert page.locator("#confusion-box table").count() == 0  # step 0 is no epoch end
    last_epoch = max(i for i, r in enumerate(index) if r["has_confusion"])
    page.eval_on_selector("#scrub", f"s => {{ s.value = {last_epoch}; s.dispatchEvent(new Event('input')); }}")
    page.wait_for_selector(f"#snap-card[data-step='{index[last_epoch]['step']}'] #confusion-box table.cm")
    page.wait_for_timeout(300)
    page.shot("train")

    assert proc.wait(120) == 0, proc.stderr.read().decode()
    ours = torch.load(runs / label / "last.pt", weights_only=True)["model"]
    theirs = torch.load(ref_out / "last.pt", weights_only=True)["model"]
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert torch.equal(ours[k], theirs[k]), k


# ------------------------------------------------------------------------------------------------ snapshots

def _snapshot_run(runs: Path) -> Path:
    """A finished run folder written by hand with three snapshots, as the trainer's contract describes them."""
    folder = runs / "handmade"
    (folder / "snapshots").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model": "lenet5", "data": "mnist",
                                                    "recipe_settings": {"epochs": 1}}))
    (folder / "metrics.jsonl").write_text(json.dumps({"kind": "step", "epoch": 1, "step": 1, "loss": 2.3, "lr": 0.1,
                                                      "images_per_s": 100.0}) + "\n")
    rng = np.random.default_rng(0)
    np.savez(folder / "snapshots" / "probe.npz", images=rng.integers(0, 255, (8, 28, 28, 1), dtype=np.uint8),
             labels=np.arange(8), indices=np.arange(8))
    index = []
    for n, step in enumerate([0, 10, 20]):
        arrays = {"filters": (rng.standard_normal((6, 1, 5, 5)) * (n + 1)).astype(np.float16),
                  "act__c1": rng.standard_normal((8, 6, 28, 28)).astype(np.float16),
                  "act__s4": np.abs(rng.standard_normal((8, 16, 5, 5))).astype(np.float16)}
        if step == 20:
            arrays["confusion"] = np.diag(np.arange(10, 20)).astype(np.int64)
        name = f"step-{step:08d}.npz"
        np.savez(folder / "snapshots" / name, **arrays)
        index.append({"step": step, "epoch": 1, "file": name, "has_confusion": step == 20})
    (folder / "snapshots" / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in index))
    return folder


def test_snapshot_pictures_and_the_scrubber(page, http, runs):
    from PIL import Image

    folder = _snapshot_run(runs)
    rid = run_id("handmade")
    r = http.get(f"/api/train/{rid}/snapshot", params={"step": 10, "image": 2}).json()
    assert r["step"] == 10 and r["steps"] == [0, 10, 20] and "confusion" not in r
    with np.load(folder / "snapshots" / "step-00000010.npz") as z:
        w, act = z["filters"].astype(np.float32), z["act__c1"].astype(np.float32)
    import base64
    import io

    def pixels(url):
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))))

    k = w[3, 0]
    expected = np.clip((k - k.min()) * (255.0 / (k.max() - k.min())), 0, 255).astype(np.uint8)
    got = pixels(r["filters"][3])
    scale = got.shape[0] // 5
    assert np.array_equal(got[::scale, ::scale], expected)  # each kernel scaled 0..1 on its own
    (c1,) = [s for s in r["stages"] if s["layer"] == "c1"]
    assert len(c1["maps"]) == 6 and c1["hi"] == -c1["lo"] == pytest.approx(float(np.abs(act).max()))
    assert http.get(f"/api/train/{rid}/snapshot", params={"step": 20}).json()["confusion"][3][3] == 13

    page.goto(page.lab + f"/train?run={rid}&step=0")
    page.wait_for_selector("#snap-card:visible")
    page.wait_for_function("document.querySelectorAll('#filters img').length === 6")
    assert page.eval_on_selector("#scrub", "s => [s.max, s.value]") == ["2", "0"]
    page.eval_on_selector("#scrub", "s => { s.value = 2; s.dispatchEvent(new Event('input')); }")
    page.wait_for_selector("#confusion-box table.cm")
    assert "step=20" in page.url
    assert page.locator("#stages .stage").count() == 2


def test_the_learning_rate_changed_from_the_page_reaches_metrics_and_config(page, http, runs):
    """The page's learning-rate box on a live run: the trainer applies it at its next step, metrics.jsonl and
    config.json record it (so --resume does it again), and the page's lr curve marks the change."""
    page.goto(page.lab + "/train")
    page.wait_for_selector("#f-model option[value=lenet5]", state="attached")
    page.select_option("#f-model", "lenet5")
    for field, value in (("#f-epochs", "6"), ("#f-batch", "32"), ("#f-limit", "512"), ("#f-val", "0.02"),
                         ("#f-log", "1"), ("#f-health", "5")):
        page.fill(field, value)
    page.click("#start")
    page.wait_for_function("location.search.includes('run=r-')")
    rid = page.evaluate("new URLSearchParams(location.search).get('run')")
    label = listing(http)[rid]["label"]
    page.wait_for_function("() => window.labTrain && window.labTrain.charts.lr.data[0].length >= 2",
                           timeout=60_000)
    page.fill("#v-lr", "0.0123")
    page.click("#v-lr-go")
    page.wait_for_selector("#v-note:has-text('0.0123 sent')")
    metrics = runs / label / "metrics.jsonl"
    wait(lambda: '"lr_change"' in metrics.read_text(), timeout=60, what="the lr_change line")
    change = next(json.loads(x) for x in metrics.read_text().splitlines() if '"lr_change"' in x)
    assert change["lr"] == pytest.approx(0.0123)
    config = json.loads((runs / label / "config.json").read_text())
    assert [c["factor"] for c in config["lr_changes"]] == [pytest.approx(change["factor"])]
    page.wait_for_function("() => window.labTrain.charts.lr.data[2].some(v => v != null)", timeout=30_000)
    http.post(f"/api/train/{rid}/stop")
    wait(lambda: listing(http)[rid]["state"] in ("stopped", "finished"), what="the stop")
