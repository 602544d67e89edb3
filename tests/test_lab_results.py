"""The result page (/result) and the compare page (/compare): their endpoints against independent references
(`cnnlab eval`'s confusion matrix, the model run directly on the dataset's bytes, the library's gradcam and
saliency, `cnnlab fidelity --run`'s rows, metrics.jsonl read here), the evaluation cached in the run folder, the
settings' differences, the CSV, ids that are not the server's own refused with a 404; and both pages in a real
Chromium."""

import csv
import io
import json
import shutil
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from starlette.testclient import TestClient

from cnnlab.lab import create_app

BASE = "http://127.0.0.1:8000"
EDITED = {"seed": 1, "lr": 0.01, "batch_size": 64}  # what run B's config.json says differently from run A's


@pytest.fixture(scope="module")
def runs(lab_runs, tmp_path_factory):
    """Copies of the session's LeNet-5 run (this module's evaluation cache stays out of the session's folder):
    A as trained, B with three settings edited and its metrics cut to a first line; and two CIFAR-10 runs of the
    degradation pair that are only a config.json (listed as in progress), for the one-click selection."""
    root = tmp_path_factory.mktemp("result-runs")
    a, b = root / "lenet5-mnist", root / "lenet5-mnist-b"
    fresh = shutil.ignore_patterns("lab")  # the session's run may hold another server's caches: not these runs'
    shutil.copytree(lab_runs / "lenet5-mnist", a, ignore=fresh)
    shutil.copytree(lab_runs / "lenet5-mnist", b, ignore=fresh)
    config = json.loads((b / "config.json").read_text())
    (b / "config.json").write_text(json.dumps({**config, **EDITED}, indent=2))
    for model in ("plain20", "resnet20"):
        pair = root / "pair" / f"{model}-cifar10-20990101-000000"
        pair.mkdir(parents=True)
        (pair / "config.json").write_text(json.dumps({**config, "model": model, "data": "cifar10"}))
    return root


@pytest.fixture(scope="module")
def client(runs):
    with TestClient(create_app(runs), base_url=BASE) as c:
        yield c


@pytest.fixture(scope="module")
def lab_server(runs):
    """The browser tests' server, on this module's runs."""
    from conftest import LabServer

    server = LabServer(runs)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def ids(client):
    return {e["label"]: e["id"] for e in client.get("/api/sources").json()["runs"]}


@pytest.fixture(scope="module")
def rid(ids):
    return ids["lenet5-mnist"]


@pytest.fixture(scope="module")
def run(runs):
    from cnnlab.runs import open_run

    return open_run(runs / "lenet5-mnist")


@pytest.fixture(scope="module")
def mnist_test():
    from cnnlab.data.memory import load

    return load("mnist", "test")


def reference_input(ds, i: int) -> torch.Tensor:
    """MNIST test image i as LeNet-5 reads it, built here from the dataset's bytes: padded 28 -> 32, normalised."""
    x = F.pad(ds.images[i:i + 1].float(), (2, 2, 2, 2))
    return (x / 255 - ds.mean[0]) / ds.std[0]


def finished(client, path: str, params: dict) -> dict:
    """An answer that may be a running job: polled until done, then asked again (as the page does)."""
    r = client.get(path, params=params)
    assert r.status_code == 200, r.text
    t = time.time()
    while r.json()["state"] == "running":
        assert time.time() - t < 120, "the job did not finish"
        time.sleep(0.1)
        job = client.get(f"/api/jobs/{r.json()['job']['id']}").json()
        assert job["state"] != "failed", job["message"]
        if job["state"] == "done":
            r = client.get(path, params=params)
    return r.json()["result"]


@pytest.fixture(scope="module")
def matrix(client, rid):
    return finished(client, "/api/result/confusion", {"source": rid})


@pytest.fixture(scope="module")
def worst_cell(matrix):
    """The mistake cell with the most images (true, predicted)."""
    m = np.array(matrix["confusion"])
    np.fill_diagonal(m, -1)
    t, p = np.unravel_index(int(m.argmax()), m.shape)
    assert m[t, p] >= 2, "a 98% LeNet-5 still confuses some pair at least twice"
    return int(t), int(p)


# --------------------------------------------------------------------------------------------- the result

def test_confusion_matrix_is_cnnlab_evals(matrix, runs, capsys):
    from cnnlab.cli import main

    capsys.readouterr()
    assert main(["eval", str(runs / "lenet5-mnist"), "--format", "json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert matrix["confusion"] == cli["confusion"]
    assert matrix["top1"] == cli["top1"] and matrix["images"] == cli["images"] == 10000
    assert matrix["top5"] == pytest.approx(cli["top5"], abs=1e-9)
    assert matrix["per_class"] == pytest.approx(list(cli["per_class"].values()))
    assert matrix["split"] == cli["split"] == "test"
    assert matrix["command"].startswith("cnnlab eval ") and matrix["command"].endswith("lenet5-mnist")


def test_the_evaluation_is_kept_in_the_run_folder_and_not_made_again(matrix, runs, monkeypatch):
    """A new server (nothing in memory) answers from the run folder's file: an evaluation would fail here."""
    from cnnlab.lab import results

    [cache] = (runs / "lenet5-mnist" / "lab").glob("eval-test-*.npz")
    with np.load(cache) as z:
        assert set(z.files) >= {"labels", "predicted", "p_predicted", "p_true", "top5", "meta"}

    def no(*a, **k):
        raise AssertionError("evaluated again")

    monkeypatch.setattr(results, "predictions", no)
    with TestClient(create_app(runs), base_url=BASE) as fresh:
        rid = fresh.get("/api/sources").json()["runs"][0]["id"]
        r = fresh.get("/api/result/confusion", params={"source": rid}).json()
    assert r["state"] == "done" and r["result"]["cached"] is True
    assert r["result"]["confusion"] == matrix["confusion"]


def test_a_read_only_run_folder_keeps_the_evaluation_in_memory(runs, ids, monkeypatch):
    """Where the run folder cannot be written, the evaluation is made once and kept in memory."""
    import cnnlab.fileio
    from cnnlab.lab import results

    def read_only(path, mode="wb"):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(cnnlab.fileio, "atomic_open", read_only)
    calls = []
    real = results.predictions
    monkeypatch.setattr(results, "predictions", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(results, "WAIT", 0)  # a long evaluation (CIFAR's): the answer is the job to poll
    with TestClient(create_app(runs), base_url=BASE) as c:
        r = c.get("/api/result/confusion", params={"source": ids["lenet5-mnist-b"]}).json()
        assert r["state"] == "running" and r["job"]["kind"] == "evaluate"
        first = finished(c, "/api/result/confusion", {"source": ids["lenet5-mnist-b"]})
        again = c.get("/api/result/confusion", params={"source": ids["lenet5-mnist-b"]}).json()["result"]
    assert calls == [1] and again["cached"]  # evaluated once
    assert again["confusion"] == first["confusion"]
    assert not (runs / "lenet5-mnist-b" / "lab").exists()


def test_a_cells_images_are_its_mistakes_most_confident_first(client, rid, worst_cell, matrix, run, mnist_test):
    t, p = worst_cell
    r = client.get("/api/result/errors", params={"source": rid, "true": t, "pred": p, "count": 60}).json()
    assert r["total"] == matrix["confusion"][t][p] == len(r["items"])
    conf = [it["p_predicted"] for it in r["items"]]
    assert conf == sorted(conf, reverse=True) and r["order"] == "most confident first"
    x = torch.cat([reference_input(mnist_test, it["index"]) for it in r["items"]])
    with torch.no_grad():
        probs = F.softmax(run.model(x).float(), 1)
    assert [int(mnist_test.labels[it["index"]]) for it in r["items"]] == [t] * r["total"]
    assert probs.argmax(1).tolist() == [p] * r["total"]
    np.testing.assert_allclose(conf, probs[:, p].numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose([it["p_true"] for it in r["items"]], probs[:, t].numpy(), rtol=1e-4, atol=1e-6)
    second = client.get("/api/result/errors", params={"source": rid, "true": t, "pred": p, "offset": 1,
                                                      "count": 1}).json()
    assert [it["index"] for it in second["items"]] == [r["items"][1]["index"]]
    diag = client.get("/api/result/errors", params={"source": rid, "true": 3, "pred": 3, "count": 5}).json()
    assert diag["total"] == matrix["confusion"][3][3] and diag["order"] == "least confident first"
    low = [it["p_predicted"] for it in diag["items"]]
    assert low == sorted(low)


def test_why_is_the_librarys_gradcam_and_saliency_for_true_and_predicted(client, rid, worst_cell, run, mnist_test):
    from cnnlab.visualize.attribution import gradcam, saliency

    t, p = worst_cell
    first = client.get("/api/result/errors", params={"source": rid, "true": t, "pred": p, "count": 1}).json()
    i = first["items"][0]["index"]
    r = client.get("/api/result/why", params={"source": rid, "image": i}).json()
    assert (r["true"], r["predicted"]) == (t, p) and r["layer"] == "c3"
    assert [(q["role"], q["target"]) for q in r["panels"]] == [("true", t), ("predicted", p)]
    x = reference_input(mnist_test, i)[0]
    for panel in r["panels"]:
        cam = gradcam(run.model, x, "c3", panel["target"])
        np.testing.assert_allclose(panel["gradcam_raw"], cam.raw, rtol=1e-4, atol=1e-6)
        assert panel["probability"] == pytest.approx(float(cam.probability), rel=1e-4, abs=1e-7)
        sal = saliency(run.model, x, panel["target"], normalize="max")
        assert sal.map.max() > 0 and panel["saliency"].startswith("data:image/png;base64,")
        assert panel["commands"]["gradcam"].endswith(f"mnist-test-{i}.png --layer c3 --target {panel['target']}")
    # the explorer's endpoint on the same image and class says the same (the page could use either)
    ex = client.get("/api/explorer/attribution", params={"source": rid, "image": i, "target": t}).json()
    np.testing.assert_allclose(ex["gradcam_raw"], r["panels"][0]["gradcam_raw"], rtol=1e-5, atol=1e-7)
    right = client.get("/api/result/why", params={"source": rid, "image": 0}).json()
    assert len(right["panels"]) == 1 and right["true"] == right["predicted"] == int(mnist_test.labels[0])


# -------------------------------------------------------------------------------------------- the compare

def epochs_of(folder) -> list[dict]:
    lines = [json.loads(s) for s in (folder / "metrics.jsonl").read_text().splitlines() if s.strip()]
    return [rec for rec in lines if rec["kind"] == "epoch"]


def test_settings_differences_are_exactly_the_edited_keys(client, ids):
    a, b = ids["lenet5-mnist"], ids["lenet5-mnist-b"]
    r = client.get("/api/compare", params={"runs": f"{a},{b}"}).json()
    assert sorted(r["differ"]) == sorted(EDITED)
    sa, sb = (run["settings"] for run in r["runs"])
    assert all(sb[k] == v and sa[k] != v for k, v in EDITED.items())
    assert "recipe_settings.lr" in r["keys"] and "out" not in r["keys"]  # nested flattened; server paths not sent
    assert not any(str(v).startswith("/") for v in sa.values())
    assert r["runs"][0]["metrics"]["epoch"] == r["runs"][1]["metrics"]["epoch"]
    assert r["runs"][0]["command"] == "cnnlab train lenet5 --data mnist --recipe lenet5_mnist --epochs 1 --seed 0"
    assert r["runs"][1]["command"].endswith("--epochs 1 --batch-size 64 --lr 0.01 --seed 1")


def test_csv_rows_are_metrics_jsonl_epoch_lines(client, ids, runs):
    labels = ["lenet5-mnist", "lenet5-mnist-b"]
    r = client.get("/api/compare/csv", params={"runs": ",".join(ids[x] for x in labels)})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"].startswith("attachment;")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    expected = [(x, rec) for x in labels for rec in epochs_of(runs / x)]
    assert len(rows) == len(expected) == 2
    for row, (label, rec) in zip(rows, expected):
        assert row["run"] == label and row["run_id"] == ids[label]
        for k, v in rec.items():
            if k != "kind":
                assert (float(row[k]) == v) if isinstance(v, (int, float)) else row[k] == str(v), k
        assert row["setting:seed"] == ("1" if label.endswith("-b") else "0")


def test_fidelity_rows_are_cnnlab_fidelitys(client, rid, runs, capsys):
    from cnnlab.cli import main

    got = finished(client, "/api/compare/fidelity", {"source": rid})
    capsys.readouterr()
    assert main(["fidelity", "--run", str(runs / "lenet5-mnist"), "--format", "json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert got["rows"] == cli
    assert any(row["trained"] and row["metric"] == "test_err" for row in got["rows"])
    assert str(runs) not in got["note"] and got["command"].startswith("cnnlab fidelity --run ")


@pytest.mark.parametrize("path,params", [
    ("/api/result/confusion", {"source": "r-0000000000"}),
    ("/api/result/confusion", {"source": "../lenet5-mnist"}),
    ("/api/result/errors", {"source": "/etc/passwd", "true": 0, "pred": 1}),
    ("/api/result/why", {"source": "tv-resnet18", "image": 0}),
    ("/api/compare", {"runs": "r-0000000000"}),
    ("/api/compare/csv", {"runs": "lenet5-mnist"}),
    ("/api/compare/fidelity", {"source": "model-lenet5"}),
])
def test_ids_that_are_not_the_servers_own_are_404_and_open_no_path(client, path, params, monkeypatch):
    import builtins

    opened = []
    real = builtins.open

    def spy(file, *a, **k):
        name = str(file)
        if "passwd" in name or ".." in name or any(name == str(v) for v in params.values()):
            opened.append(name)
        return real(file, *a, **k)

    monkeypatch.setattr(builtins, "open", spy)
    monkeypatch.setattr(io, "open", spy)
    r = client.get(path, params=params)
    assert r.status_code == 404, r.text
    msg = r.json()["error"]
    assert "\n" not in msg and len(msg) < 300
    assert not opened


def test_out_of_range_is_one_sentence(client, rid):
    r = client.get("/api/result/errors", params={"source": rid, "true": 10, "pred": 1})
    assert r.status_code == 400 and "between 0 and 9" in r.json()["error"]
    r = client.get("/api/result/why", params={"source": rid, "image": 10000})
    assert r.status_code == 400 and "between 0 and 9999" in r.json()["error"]
    r = client.get("/api/compare", params={"runs": ""})
    assert r.status_code == 400 and "runs" in r.json()["error"]


# ------------------------------------------------------------------------------------------------ browser

@pytest.mark.slow
def test_result_page_matrix_cell_and_why(page, rid, worst_cell, matrix):
    t, p = worst_cell
    page.goto(f"{page.lab}/result?source={rid}")
    page.wait_for_selector("table.cm td.cell")
    assert page.locator("table.cm td.cell").count() == 100
    assert f"top-1 {matrix['top1']:.2f}%" in page.locator("#headline").inner_text()
    page.locator(f'table.cm td.cell[data-t="{t}"][data-p="{p}"]').click()
    page.wait_for_selector("#thumbs figure")
    assert page.locator("#thumbs figure").count() == matrix["confusion"][t][p]
    page.locator("#thumbs figure").first.click()
    page.wait_for_selector("#why .role img.gradcam")
    assert page.locator("#why .role").count() == 2
    assert page.locator("#why .command").count() == 4
    assert f"t={t}" in page.url and f"p={p}" in page.url and "image=" in page.url
    page.wait_for_selector("#curves .uplot")
    page.shot("result")
    page.goto(page.url)  # the linked view comes back as it was
    page.wait_for_selector("#why .role img.gradcam")
    assert page.locator("#thumbs figure.sel").count() == 1


@pytest.mark.slow
def test_compare_page_curves_differences_csv(page, ids, runs):
    a, b = ids["lenet5-mnist"], ids["lenet5-mnist-b"]
    page.goto(f"{page.lab}/compare?runs={a},{b}")
    page.wait_for_selector("#curves .uplot")
    assert page.locator("#curves .uplot").count() == 5  # 4 epoch metrics and the step loss
    assert page.locator("#curves .uplot").first.locator(".u-legend .u-series").count() == 3  # x and two runs
    diff = page.locator("#settings tr.diff").evaluate_all("rows => rows.map(r => r.dataset.key)")
    assert sorted(diff) == sorted(EDITED)
    page.wait_for_selector("#fidelity table.fid")
    page.locator("input[name=axis][value=time]").check()
    assert "x=time" in page.url
    with page.expect_download() as dl:
        page.locator("#csv").click()
    rows = list(csv.DictReader(io.StringIO(open(dl.value.path()).read())))
    assert [r["run_id"] for r in rows] == [a, b]
    page.shot("compare")


@pytest.mark.slow
def test_the_degradation_pair_selects_or_starts_both(page, ids):
    page.goto(f"{page.lab}/compare")
    page.wait_for_selector("#picks input")
    page.locator("#pair-resnet").click()  # both are under --runs: selected, nothing started
    page.wait_for_function("location.search.includes('runs=')")
    pair = {ids["pair/plain20-cifar10-20990101-000000"], ids["pair/resnet20-cifar10-20990101-000000"]}
    assert set(page.evaluate("new URLSearchParams(location.search).get('runs')").split(",")) == pair
    started = []

    def start(route):  # the training page's endpoint, as the contract fixes it
        body = route.request.post_data_json
        started.append(body)
        route.fulfill(status=200, content_type="application/json",
                      body=json.dumps({"id": ids["lenet5-mnist" if len(started) == 1 else "lenet5-mnist-b"],
                                       "label": "x", "state": "queued"}))

    page.route("**/api/train/start", start)
    page.locator("#pair-deep").click()  # plain56 is not here: both trainings are started
    page.wait_for_function("location.search.includes('" + ids["lenet5-mnist-b"] + "')")
    from cnnlab.lab.training import datasets

    here = datasets()  # the official CIFAR-10 when it is here, else the JPEG copy
    data = next((d for d in ("cifar10", "cifar10_jpeg") if d in here), "cifar10")
    assert [(s["model"], s["data"], s["epochs"], s["seed"]) for s in started] == [
        ("plain20", data, 10, 0), ("plain56", data, 10, 0)]
    page.unroute("**/api/train/start")
    missing = json.dumps({"error": "no such endpoint: /api/train/start"})  # the lab before the training page
    page.route("**/api/train/start", lambda r: r.fulfill(status=404, content_type="application/json", body=missing))
    page.expect_http_errors = True
    page.locator("#pair-deep").click()
    page.wait_for_selector(".error:has-text('cannot start trainings')")
