"""The image explorer (/explorer): its endpoints against independent references (the model run directly, a
forward hook, the library's gradcam and top_images, `cnnlab predict` on the same file), its cache of top-9
results in the run folder, uploads that are not whole images refused in one sentence, ids that are not the
server's own refused with a 404; and the page in a real Chromium."""

import base64
import io
import re
import shutil
import struct
import time
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from starlette.testclient import TestClient

from cnnlab.lab import create_app

BASE = "http://127.0.0.1:8000"
ORIGIN = {"origin": BASE}


@pytest.fixture(scope="module")
def runs(lab_runs, tmp_path_factory):
    """A copy of the session's LeNet-5 run: the explorer writes its top-9 cache into the run folder."""
    root = tmp_path_factory.mktemp("explorer-runs")
    shutil.copytree(lab_runs / "lenet5-mnist", root / "lenet5-mnist")
    return root


@pytest.fixture(scope="module")
def client(runs):
    with TestClient(create_app(runs), base_url=BASE) as c:
        yield c


@pytest.fixture(scope="module")
def lab_server(runs):
    """The browser tests' server, on this module's copy of the run (its top-9 cache stays out of the session's)."""
    from conftest import LabServer

    server = LabServer(runs)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def rid(client):
    return client.get("/api/sources").json()["runs"][0]["id"]


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


def png_of(img) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "PNG")
    return buf.getvalue()


def upload(client, raw: bytes, name="x.png", type="image/png", source=None):
    params = {"name": name, **({"source": source} if source else {})}
    return client.post("/api/explorer/upload", params=params, content=raw, headers={**ORIGIN, "content-type": type})


def one_sentence(r) -> str:
    msg = r.json()["error"]
    assert "\n" not in msg and "Traceback" not in msg and 10 < len(msg) < 300, msg
    return msg


# ------------------------------------------------------------------------------------------------- endpoints

def test_top5_is_the_models_own_softmax(client, rid, run, mnist_test):
    r = client.get("/api/explorer/predict", params={"source": rid, "image": 7})
    assert r.status_code == 200, r.text
    got = r.json()
    with torch.no_grad():
        p = F.softmax(run.model(reference_input(mnist_test, 7)), 1)[0]
    top = p.topk(5)
    assert [t["index"] for t in got["top5"]] == top.indices.tolist()
    np.testing.assert_allclose([t["p"] for t in got["top5"]], top.values.numpy(), rtol=1e-5, atol=1e-7)
    assert got["image"]["truth"] == mnist_test.classes[int(mnist_test.labels[7])]
    assert got["gradcam_layer"] == "c3" and {"c1", "c3", "s4"} <= {lay["name"] for lay in got["layers"]}
    assert got["command"].startswith("cnnlab predict ") and got["command"].endswith(" mnist-test-7.png")


def test_the_saved_test_image_and_an_upload_predict_as_cnnlab_predict_does(client, rid, runs, tmp_path):
    """The page's "save this image" file, given to `cnnlab predict` (its command), gives the page's top-5; the
    same file uploaded gives it too."""
    from cnnlab.analysis.evaluate import predict

    page = client.get("/api/explorer/predict", params={"source": rid, "image": 11}).json()
    file = tmp_path / page["image"]["file"]
    file.write_bytes(base64.b64decode(page["image"]["download"].split(",", 1)[1]))
    [(_, cli)] = predict(str(runs / "lenet5-mnist"), [str(file)])
    assert [c for c, _ in cli] == [t["class"] for t in page["top5"]]
    np.testing.assert_allclose([p for _, p in cli], [t["p"] for t in page["top5"]], rtol=1e-5, atol=1e-7)
    up = upload(client, file.read_bytes(), file.name).json()
    again = client.get("/api/explorer/predict", params={"source": rid, "image": up["id"]}).json()
    np.testing.assert_allclose([t["p"] for t in again["top5"]], [p for _, p in cli], rtol=1e-5, atol=1e-7)
    assert again["image"]["note"] == ""  # a grey 28x28 PNG is what LeNet-5 reads: nothing was converted


def test_feature_maps_share_the_layers_min_max(client, rid, run, mnist_test):
    from PIL import Image

    seen = {}
    handle = run.model.s2.register_forward_hook(lambda m, a, out: seen.setdefault("out", out.detach().clone()))
    try:
        with torch.no_grad():
            run.model(reference_input(mnist_test, 3))
    finally:
        handle.remove()
    f = client.get("/api/explorer/features", params={"source": rid, "image": 3, "layer": "s2"}).json()
    a = seen["out"][0]
    assert f["shape"] == list(a.shape) and len(f["maps"]) == a.shape[0] == 6
    assert f["lo"] == pytest.approx(float(a.min()), abs=1e-5) and f["hi"] == pytest.approx(float(a.max()), abs=1e-5)
    # one scale: the channel holding the layer's maximum reaches the colour map's top, the others stay below
    top = int(a.flatten(1).amax(1).argmax())
    brightest = [np.asarray(Image.open(io.BytesIO(base64.b64decode(u.split(",", 1)[1])))).sum(2).max()
                 for u in f["maps"]]
    assert int(np.argmax(brightest)) == top
    assert f["command"].endswith("visualize features " + f["command"].split()[3] + " mnist-test-3.png --layer s2")


def test_gradcam_is_the_librarys(client, rid, run, mnist_test):
    from cnnlab.visualize import gradcam, saliency

    x = reference_input(mnist_test, 5)[0]
    a = client.get("/api/explorer/attribution", params={"source": rid, "image": 5, "target": 3}).json()
    ref = gradcam(run.model, x, "c3", 3)
    assert a["layer"] == "c3" and a["target"] == 3 and a["class"] == "3"
    np.testing.assert_allclose(np.array(a["gradcam_raw"]), ref.raw, rtol=1e-4, atol=1e-6)
    assert a["probability"] == pytest.approx(ref.probability, rel=1e-5)
    assert a["commands"]["gradcam"].endswith("mnist-test-5.png --layer c3 --target 3")
    # the default class is the predicted one, another layer is taken when asked
    d = client.get("/api/explorer/attribution", params={"source": rid, "image": 5, "layer": "c1"}).json()
    assert d["target"] == d["predicted"] == saliency(run.model, x).predicted and d["layer"] == "c1"
    assert client.get("/api/explorer/attribution", params={"source": rid, "image": 5, "target": 10}).status_code == 400


def test_filters_are_the_librarys_kernels(client, rid, run):
    f = client.get("/api/explorer/filters", params={"source": rid}).json()
    assert f["layer"] == "c1" and f["weight_shape"] == list(run.model.c1.weight.shape) and f["kind"] == "grey"
    assert f["command"].endswith("--layer c1")
    r = client.get("/api/explorer/filters", params={"source": rid, "layer": "s2"})
    assert r.status_code == 400 and "not a convolution" in one_sentence(r)


@pytest.mark.slow
def test_top9_is_a_job_equal_to_top_images_then_served_from_the_run_folder(client, rid, run, runs):
    from cnnlab.data.view import open_data
    from cnnlab.visualize import top_images

    cache = runs / "lenet5-mnist" / "lab" / "top9-c3.npz"
    assert not cache.exists()
    r = client.post("/api/explorer/top9", json={"source": rid, "layer": "c3", "channel": 5}, headers=ORIGIN).json()
    assert r["state"] == "running"
    t = time.time()
    while (job := client.get(f"/api/jobs/{r['job']['id']}").json())["state"] == "running":
        assert time.time() - t < 60
        time.sleep(0.1)
    assert job["state"] == "done", job["message"]
    assert job["done"] == job["total"] == 10000
    data = open_data(run.info.view, "test", batch_size=500)
    ref = top_images(run.model, (x for x, _ in data.loader), "c3", [5], 9)
    got = job["result"]
    assert got["indices"] == ref.indices[0].tolist() and not got["cached"]
    np.testing.assert_allclose(got["values"], ref.values[0], rtol=1e-5)
    assert len(got["patches"]) == 9 and got["command"].endswith("--layer c3 --channels 5")
    assert cache.is_file()
    # a second request (any channel of the layer) comes from the run folder's cache, without a job
    fresh = TestClient(create_app(runs), base_url=BASE)  # a new server: nothing in memory
    t = time.time()
    again = fresh.post("/api/explorer/top9", json={"source": rid, "layer": "c3", "channel": 5}, headers=ORIGIN).json()
    assert time.time() - t < 2 and again["state"] == "done" and again["result"]["cached"]
    assert again["result"]["indices"] == got["indices"]
    other = fresh.post("/api/explorer/top9", json={"source": rid, "layer": "c3", "channel": 0}, headers=ORIGIN).json()
    assert other["state"] == "done" and other["result"]["indices"] == top_images(
        run.model, (x for x, _ in data.loader), "c3", [0], 9).indices[0].tolist()
    bad = fresh.post("/api/explorer/top9", json={"source": rid, "layer": "c3", "channel": 16}, headers=ORIGIN)
    assert bad.status_code == 400 and "out of range" in one_sentence(bad)


# --------------------------------------------------------------------------------------------------- uploads

def test_a_file_that_is_not_an_image_is_one_sentence(client, rid):
    r = upload(client, b"%PDF-1.4 not a picture", "report.pdf", "application/octet-stream")
    assert r.status_code == 400 and "not an image" in one_sentence(r) and "report.pdf" in r.json()["error"]
    r = upload(client, b"", "empty.png")
    assert r.status_code == 400 and "empty" in one_sentence(r)
    import pickle

    r = upload(client, pickle.dumps({"a": 1}), "evil.pkl")  # never unpickled: just not an image
    assert r.status_code == 400 and "not an image" in one_sentence(r)


def test_a_truncated_png_is_refused(client, mnist_test):
    raw = png_of(mnist_test.images[0, 0].numpy())
    r = upload(client, raw[: len(raw) // 2])
    assert r.status_code == 400 and "truncated or corrupt" in one_sentence(r)


def test_a_decompression_bomb_is_refused_before_it_is_decoded(client):
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    # 100 bytes that declare 100,000 x 100,000 grey pixels (10 GB decoded)
    bomb = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b""))
    r = upload(client, bomb, "bomb.png")
    assert 400 <= r.status_code < 500 and "megapixels" in one_sentence(r)
    # under Pillow's own limit but over the lab's 40 MP
    big = bomb.replace(struct.pack(">II", 100_000, 100_000), struct.pack(">II", 8_000, 6_000))
    big = big[:8] + chunk(b"IHDR", struct.pack(">IIBBBBB", 8_000, 6_000, 8, 0, 0, 0, 0)) + big[33:]
    r = upload(client, big, "big.png")
    assert r.status_code == 400 and "8,000 x 6,000" in one_sentence(r)
    # between Pillow's warning (89 MP) and its error (179 MP): the warning is a refusal too
    warned = big[:8] + chunk(b"IHDR", struct.pack(">IIBBBBB", 12_000, 9_000, 8, 0, 0, 0, 0)) + big[33:]
    r = upload(client, warned, "warned.png")
    assert r.status_code == 400 and "108 megapixels" in one_sentence(r)


def test_rgba_and_colour_are_converted_with_a_note(client, rid, run):
    from PIL import Image

    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[10:30, 10:30] = (255, 0, 0, 255)  # a red square on a transparent ground
    up = upload(client, png_of(rgba), "square.png", source=rid)
    assert up.status_code == 200, up.text
    note = up.json()["note"]
    assert "transparent" in note and "grey" in note and "40x40 to 28x28" in note
    got = client.get("/api/explorer/predict", params={"source": rid, "image": up.json()["id"]}).json()
    assert got["image"]["note"] == note
    # what it became: the RGBA over white, then grey, then LeNet-5's preprocessing (as `cnnlab predict` would)
    from cnnlab.data.view import prepare_image

    flat = Image.alpha_composite(Image.new("RGBA", (40, 40), "white"), Image.fromarray(rgba)).convert("L")
    with torch.no_grad():
        p = F.softmax(run.model(prepare_image(flat, run.info.view)), 1)[0]
    assert got["top5"][0]["p"] == pytest.approx(float(p.max()), rel=1e-5)


def test_uploads_over_10_mb_are_refused_with_413(client):
    r = upload(client, b"\x89PNG" + b"\x00" * (10 * 2**20 + 10))
    assert r.status_code == 413 and "MB" in one_sentence(r)


def test_uploads_are_kept_by_id_only_and_bounded(client, rid, mnist_test):
    from cnnlab.lab.images import KEEP

    ids = [upload(client, png_of(mnist_test.images[i, 0].numpy())).json()["id"] for i in range(KEEP + 1)]
    assert all(re.fullmatch(r"u-[0-9a-f]{16}", i) for i in ids)
    first = client.get("/api/explorer/predict", params={"source": rid, "image": ids[0]})
    assert first.status_code == 404 and "upload the image again" in one_sentence(first)
    assert client.get("/api/explorer/predict", params={"source": rid, "image": ids[-1]}).status_code == 200


@pytest.mark.parametrize("source", ["nope", "r-0000000000", "../x", "/etc/passwd", "..%2F..%2Fetc%2Fpasswd",
                                    "tv-../../x", "model-/etc/passwd", "r-../lenet5-mnist"])
def test_sources_that_are_not_the_servers_ids_are_404(client, source):
    for path in ("/api/explorer/predict?image=0&source=", "/api/explorer/images?source=",
                 "/api/explorer/filters?source="):
        r = client.get(path + source)
        assert r.status_code == 404, (path, source, r.text)
        one_sentence(r)
    r = client.post("/api/explorer/top9", json={"source": source, "layer": "c3"}, headers=ORIGIN)
    assert r.status_code == 404


def test_images_that_are_not_an_index_or_upload_are_refused(client, rid):
    for image, status in (("../../etc/passwd", 400), ("10000", 400), ("-1", 400), ("u-0123456789abcdef", 404)):
        r = client.get("/api/explorer/predict", params={"source": rid, "image": image})
        assert r.status_code == status, (image, r.text)
        one_sentence(r)


def test_the_strip_pages_through_the_test_set(client, rid, mnist_test):
    from PIL import Image

    r = client.get("/api/explorer/images", params={"source": rid, "offset": 9990, "count": 24}).json()
    assert r["total"] == 10000 and [im["index"] for im in r["images"]] == list(range(9990, 10000))
    pic = np.asarray(Image.open(io.BytesIO(base64.b64decode(r["images"][0]["url"].split(",", 1)[1]))))
    assert pic.shape == (32, 32) and (pic[2:30, 2:30] == mnist_test.images[9990, 0].numpy()).all()


def test_a_model_without_test_images_takes_uploads_and_names_itself_in_the_commands(client, mnist_test):
    r = client.get("/api/explorer/images", params={"source": "model-lenet5"}).json()
    assert r["total"] == 0 and "upload an image" in r["note"]
    up = upload(client, png_of(mnist_test.images[0, 0].numpy()), "digit.png", source="model-lenet5").json()
    f = client.get("/api/explorer/features", params={"source": "model-lenet5", "image": up["id"], "layer": "c1"})
    assert f.status_code == 200 and f.json()["command"] == "cnnlab visualize features lenet5 digit.png --layer c1"


def test_torchvision_weights_missing_offline_is_the_librarys_sentence(client, monkeypatch):
    import urllib.error

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: "/nonexistent-hub")  # not this machine's cache
    r = client.get("/api/explorer/images", params={"source": "tv-alexnet"})
    assert r.status_code == 400 and "offline, put the file at /nonexistent-hub/checkpoints/" in one_sentence(r)


# --------------------------------------------------------------------------------------------------- browser

@pytest.mark.slow
def test_the_page_shows_a_test_image_through_lenet5(page):
    page.goto(page.lab + "/explorer")
    page.wait_for_selector("#strip img")
    page.locator("#strip img").nth(3).click()
    page.wait_for_function("new URLSearchParams(location.search).get('image') === '3'")
    page.wait_for_function("document.getElementById('image-name').textContent.startsWith('test image 3')")
    page.wait_for_function("document.getElementById('cmd-features').textContent.endsWith('-3.png --layer c1')")
    assert page.locator("#top5 .bar").count() == 5
    assert page.locator("#maps figure").count() == 6  # c1: 6 maps
    assert page.locator("#top5 .bar").first.locator("span").first.inner_text() == "0"  # test image 3 is a 0
    assert page.locator("#cmd-features").inner_text().endswith("mnist-test-3.png --layer c1")
    page.select_option("#layer", "c3")
    page.wait_for_function("document.querySelectorAll('#maps figure').length === 16")
    page.wait_for_function("document.getElementById('gradcam').src.startsWith('data:')")
    assert "layer=c3" in page.url
    page.select_option("#layer", "s4")
    page.wait_for_function("document.querySelectorAll('#maps figure').length === 16")
    page.locator("#maps figure").nth(2).click()  # a map's top-9: a job (no cache for s4 yet), then its patches
    page.wait_for_function("document.querySelectorAll('#patches figure').length === 9", timeout=30000)
    assert "unit=2" in page.url and "t9l=s4" in page.url and "layer=s4" in page.url
    assert "cache" not in page.locator("#t9-what").inner_text()
    page.shot("explorer")
    # the URL is the view: reloading it shows the same layer and unit, the top-9 now from the run's cache
    page.reload()
    page.wait_for_function("document.querySelectorAll('#maps figure').length === 16")
    page.wait_for_function("document.querySelectorAll('#patches figure').length === 9")
    assert page.locator("#layer").input_value() == "s4" and page.locator("#unit").input_value() == "2"
    assert "from the run's cache" in page.locator("#t9-what").inner_text()


@pytest.mark.slow
def test_an_upload_that_is_not_an_image_shows_the_pages_error(page):
    page.expect_http_errors = True
    page.goto(page.lab + "/explorer")
    page.wait_for_selector("#strip img")
    page.set_input_files("#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"hello"}])
    page.wait_for_function("document.getElementById('error').textContent.length > 0")
    assert "notes.txt is not an image the lab reads" in page.locator("#error").inner_text()
