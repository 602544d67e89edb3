"""The conv-arithmetic playground (/playground) and the receptive-field page (/rf).

References are independent of the lab: `cnnlab calc` and `cnnlab explain pool` run through cnnlab.cli.main, the
lecture's max-pool example worked by hand, the inspector's Summary rows (built from the model's name, not the lab's
opened copy), and the first layer's effective field written out from its weights.
"""

from __future__ import annotations

import contextlib
import io
import json
from fractions import Fraction

import numpy as np
import pytest

pytest.importorskip("starlette")


def cli(*argv: str) -> str:
    from cnnlab.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(list(argv)) == 0
    return out.getvalue()


@pytest.fixture(scope="module")
def client(lab_runs):
    from starlette.testclient import TestClient

    from cnnlab.lab import create_app

    return TestClient(create_app(lab_runs, host="testserver"))


@pytest.fixture(scope="module")
def run_id(client):
    runs = client.get("/api/sources").json()["runs"]
    return next(e["id"] for e in runs if e["label"] == "lenet5-mnist")


def expected_box(rf, cell):
    """The inspector's field of unit (i, j) as pixel edges: centre = start + index * jump, size around it."""
    out = {}
    for axis, (pos, size_key) in enumerate((("y", "height"), ("x", "width"))):
        centre = Fraction(rf.start[axis]) + cell[axis] * Fraction(rf.jump[axis])
        lo = centre - (Fraction(rf.size[axis]) - 1) / 2
        out[pos], out[size_key] = float(lo), float(rf.size[axis])
    return out


def clip(box, h, w):
    y0, x0 = max(box["y"], 0), max(box["x"], 0)
    y1, x1 = min(box["y"] + box["height"], h), min(box["x"] + box["width"], w)
    return {"x": x0, "y": y0, "width": x1 - x0, "height": y1 - y0}


CONV_CASES = [
    ("224x224x3", "96", "11", "4", "0", "1", "1"),  # AlexNet's 224 input: does not fit (54.25)
    ("227x227x3", "96", "11", "4", "0", "1", "1"),  # the 227 that fits (55)
    ("5x5x3", "2", "3", "2", "1", "1", "1"),  # the CS231n demo: 3x3x2
    ("32x40x16", "32", "3", "2", "1", "2", "4"),  # dilation and groups, not square
]


# ---------------------------------------------------------------------------------------------- endpoints

@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_equals_calc_conv(client, case):
    size, filters, kernel, stride, pad, dilation, groups = case
    flags = ["--input", size, "--filters", filters, "--kernel", kernel, "--stride", stride, "--pad", pad,
             "--dilation", dilation, "--groups", groups]
    r = client.get("/api/playground/conv", params={"input": size, "filters": filters, "kernel": kernel,
                                                   "stride": stride, "pad": pad, "dilation": dilation,
                                                   "groups": groups})
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["report"] == json.loads(cli("calc", "conv", *flags, "--format", "json"))
    assert got["text"] == cli("calc", "conv", *flags)
    assert cli(*got["command"].split()[1:]) == got["text"]  # the command shown prints these numbers


def test_alexnet_misfit_is_explained_with_sizes_that_fit(client):
    got = client.get("/api/playground/conv", params={"input": "224x224x3", "filters": 96, "kernel": 11,
                                                     "stride": 4}).json()
    h = got["height"]
    assert (h["exact"], h["out"], h["fits"]) == (54.25, 54, False)
    # (224 - 11)/4 = 53.25: 53 steps reach row 4*53 + 11 = 223, so row 223 (the last) is never covered
    assert h["uncovered_from"] == 223
    assert {f["stride"]: f["out"] for f in h["fits_stride"]} == {1: 214, 3: 72}
    assert h["fits_pad"] == []  # 213 + 2P is odd: no padding makes stride 4 fit
    assert "does not fit" in got["misfit"][0] and "stride 3 -> 72" in got["misfit"][1]


@pytest.mark.parametrize("flags", [["--input", "55x55x96", "--kernel", "3", "--stride", "2"],
                                   ["--input", "7x7x1", "--kernel", "2", "--ceil-mode", "--op", "avg"]])
def test_pool_equals_calc_pool(client, flags):
    params = {"input": flags[1], "kernel": flags[3], "stride": flags[5] if "--stride" in flags else "",
              "ceil_mode": int("--ceil-mode" in flags), "op": "avg" if "avg" in flags else "max"}
    got = client.get("/api/playground/pool", params=params).json()
    assert got["report"] == json.loads(cli("calc", "pool", *flags, "--format", "json"))
    assert got["text"] == cli("calc", "pool", *flags)


@pytest.mark.parametrize("path,params,words", [
    ("conv", {"input": "5x5x3", "filters": 1, "kernel": 11}, "larger than"),
    ("conv", {"input": "5x5x3", "filters": 1, "kernel": 3, "stride": 0}, "stride must be positive"),
    ("pool", {"input": "5x5x3", "kernel": 2, "stride": 0}, "stride must be positive"),
    ("conv", {"input": "5x5", "filters": 1}, "kernel"),
    ("conv", {"input": "five", "filters": 1, "kernel": 3}, "HxWxC"),
    ("explain-pool", {"size": 9}, "between"),
])
def test_bad_input_is_one_sentence(client, path, params, words):
    r = client.get(f"/api/playground/{path}", params=params)
    assert 400 <= r.status_code < 500
    error = r.json()["error"]
    assert words in error and "\n" not in error and "Traceback" not in error


def test_explain_pool_is_the_lecture_example(client):
    got = client.get("/api/playground/explain-pool").json()
    x = np.array([[1, 1, 2, 4], [5, 6, 7, 8], [3, 2, 1, 0], [1, 2, 3, 4]], dtype=float)
    assert got["x"] == x.tolist()
    assert got["y"] == [[6, 8], [3, 4]]  # by hand: the max of each 2x2 block
    assert got["argmax"] == [[1, 1], [1, 3], [2, 0], [3, 3]]
    a = np.array(got["jacobian"])
    assert a.shape == (4, 16) and (a.sum(1) == 1).all()
    assert [int(c) for c in a.argmax(1)] == [5, 7, 8, 15]  # x11, x13, x20, x33 in row-major order
    assert (a @ x.ravel()).tolist() == [6, 8, 3, 4]
    # the gradient 1, 2, 3, 4 lands on each maximum, nothing elsewhere
    assert got["dx"] == [[0, 0, 0, 0], [0, 1, 0, 2], [3, 0, 0, 0], [0, 0, 0, 4]]
    assert got["text"] == cli("explain", "pool")
    avg = client.get("/api/playground/explain-pool", params={"op": "avg", "size": 2, "stride": 1}).json()
    assert avg["text"] == cli("explain", "pool", "--op", "avg", "--stride", "1")
    assert np.allclose(avg["y"], [[3.25, 4, 5.25], [4, 4, 4], [2, 2, 2]])


@pytest.mark.parametrize("model,layer,cell", [
    ("lenet5", "s4", (0, 4)),
    ("resnet20", "layer2.0", (0, 0)),  # a residual block: the union of both paths, reaching into the padding
    ("resnet20", "layer3.2.conv2", (7, 3)),
    ("googlenet", "inception3a", (27, 0)),  # four branches concatenated
])
def test_unit_box_is_the_inspectors(client, model, layer, cell):
    from cnnlab.analysis.summary import summary

    s = summary(model)
    row = s.row(layer)
    _, h, w = s.input_size
    got = client.get("/api/rf/unit", params={"source": f"model-{model}", "layer": layer,
                                             "cell": f"{cell[0]},{cell[1]}"}).json()
    box = expected_box(row.rf, cell)
    assert got["box"] == box
    assert got["clipped"] == clip(box, h, w)
    assert got["in_padding"] == (got["box"] != got["clipped"])
    listed = {r["key"]: r for r in client.get("/api/rf/layers", params={"source": f"model-{model}"}).json()["layers"]}
    assert listed[layer]["rf"] == row.rf.as_dict() and listed[layer]["output_shape"] == row.output_shape


def test_lenet_box_by_hand(client):
    # c1 5x5 -> s2 2x2/2 -> c3 5x5 -> s4 2x2/2: field 16, jump 4, first centre 7.5; unit (0, 4) sees columns
    # 23.5 +- 7.5, i.e. 16..31, and rows 0..15
    got = client.get("/api/rf/unit", params={"source": "model-lenet5", "layer": "s4", "cell": "0,4"}).json()
    assert got["box"] == {"x": 16, "y": 0, "width": 16, "height": 16} and not got["in_padding"]


def test_rf_bad_requests(client):
    r = client.get("/api/rf/unit", params={"source": "model-lenet5", "layer": "s4", "cell": "5,0"})
    assert r.status_code == 400 and "outside the layer's 5x5 output" in r.json()["error"]
    r = client.get("/api/rf/unit", params={"source": "model-lenet5", "layer": "s5", "cell": "0,0"})
    assert r.status_code == 404 and "did you mean" in r.json()["error"]
    assert client.get("/api/rf/layers", params={"source": "model-nonet"}).status_code == 404
    r = client.get("/api/rf/unit", params={"source": "model-lenet5", "layer": "s4", "cell": "a"})
    assert r.status_code == 400 and "i,j" in r.json()["error"]


def test_first_layer_effective_field_is_its_summed_kernel():
    """For a convolution on the input, d(sum_c y_c[i, j]) / dx is sum_c w_c placed at the unit's window,
    whatever the image: the effective field is |that|, exactly, and zero elsewhere."""
    import torch

    from cnnlab.lab.playground import effective_rf
    from cnnlab.models.registry import create_model

    torch.manual_seed(0)
    model = create_model("lenet5").eval()
    erf = effective_rf(model, "c1", (3, 20), torch.randn(4, 1, 32, 32))
    expected = np.zeros((32, 32))
    expected[3:8, 20:25] = model.c1.weight.detach().double()[:, 0].sum(0).abs().numpy()
    assert np.allclose(erf, expected, atol=1e-6)
    one = effective_rf(model, "c1", (3, 20), torch.randn(4, 1, 32, 32), channel=2)
    assert np.allclose(one[3:8, 20:25], model.c1.weight.detach().double()[2, 0].abs().numpy(), atol=1e-6)


@pytest.mark.parametrize("source,layer,cell", [("model-resnet20", "layer2.0", "0,0"),
                                               ("model-resnet20", "layer2.2", "8,15"),
                                               ("model-lenet5", "act@3", "9,2")])
def test_effective_field_fills_exactly_the_theoretical_box(client, source, layer, cell):
    """Autograd on the real network against the inspector's arithmetic: the gradient is zero outside the
    theoretical field (no path reaches those pixels), and with random weights, nonzero everywhere, it reaches
    every pixel inside, so its support is the clipped box itself; a box one pixel off fails."""
    got = client.get("/api/rf/effective", params={"source": source, "layer": layer, "cell": cell}).json()
    unit = client.get("/api/rf/unit", params={"source": source, "layer": layer, "cell": cell}).json()
    assert got["inside_fraction"] == 1.0
    assert got["support"] == unit["clipped"]
    assert "noise" in got["images"] and got["url"].startswith("data:image/png;base64,")


def test_trained_run_effective_field_uses_test_images(client, run_id):
    got = client.get("/api/rf/effective", params={"source": run_id, "layer": "s4", "cell": "2,2"}).json()
    assert got["images"] == "the first 32 test images" and got["inside_fraction"] == 1.0
    unit = client.get("/api/rf/unit", params={"source": run_id, "layer": "s4", "cell": "2,2"}).json()
    assert got["support"] == unit["clipped"] == {"x": 8, "y": 8, "width": 16, "height": 16}
    assert "the sum of its 16 channels" in got["what"]
    image = client.get("/api/rf/image", params={"source": run_id, "k": 3}).json()
    assert image["count"] == 10000 and image["label"].startswith("test image 3")


# ---------------------------------------------------------------------------------------------- browser

def test_playground_page_shows_calc_numbers_and_slides(page):
    page.expect_http_errors = True  # the last step asks for a filter that does not fit
    page.goto(page.lab + "/playground?mode=conv&h=224&w=224&c=3&k=11&s=4&p=0&f=96")
    page.wait_for_selector("#numbers [data-key=macs]")
    expected = json.loads(cli("calc", "conv", "--input", "224x224x3", "--filters", "96", "--kernel", "11",
                              "--stride", "4", "--format", "json"))
    shown = {el.get_attribute("data-key"): el.query_selector("b").inner_text().replace(",", "")
             for el in page.query_selector_all("#numbers [data-key]")}
    assert shown["output_h"] == shown["output_w"] == str(expected["output"][0])
    assert shown["output_c"] == str(expected["output"][2])
    assert shown["exact_h"] == str(expected["exact_output"][0])
    for key in ("weights", "biases", "params", "macs"):
        assert shown[key] == str(expected[key]), key
    assert "does not fit" in page.inner_text("#misfit")
    assert page.inner_text("#fixes").count("→") == 2  # stride 1 -> 214, stride 3 -> 72
    assert page.inner_text("#cmd") == "cnnlab calc conv --input 224x224x3 --filters 96 --kernel 11 --stride 4"

    # the CS231n demo: 5x5 padded by 1, stride 2: output (i, j) starts at input row 2i - 1, column 2j - 1
    page.click("text=CS231n 5x5x3")
    page.wait_for_function("document.querySelector('#numbers [data-key=output_h] b')?.textContent === '3'")
    win = page.locator("#window")
    assert (win.get_attribute("data-i"), win.get_attribute("data-j"), win.get_attribute("data-row")) == ("0", "0", "-1")
    for _ in range(4):
        page.click("#step")
    assert (win.get_attribute("data-i"), win.get_attribute("data-j")) == ("1", "1")
    assert (win.get_attribute("data-row"), win.get_attribute("data-col")) == ("1", "1")
    assert "i=1" in page.url and "j=1" in page.url
    page.click("#back")
    assert (win.get_attribute("data-i"), win.get_attribute("data-j"), win.get_attribute("data-col")) == ("1", "0", "-1")

    # the lecture's max-pool: the library's values, the Jacobian's ones at the maxima
    ys = [float(td.get_attribute("data-value")) for td in page.query_selector_all("#pool-y td")]
    assert ys == [6, 8, 3, 4]
    ones = [i for i, td in enumerate(page.query_selector_all("#pool-a td")) if td.get_attribute("data-value") == "1"]
    assert ones == [5, 16 + 7, 32 + 8, 48 + 15]
    page.click("#pool-y td[data-i='0'][data-j='1']")
    assert page.locator("#pool-x td.hl").count() == 4
    page.shot("playground")

    page.fill("#k", "11")
    page.wait_for_function("document.querySelector('#error').textContent.includes('larger than')")
    assert "\n" not in page.inner_text("#error")


def test_rf_click_draws_the_inspectors_box(page, run_id):
    from cnnlab.analysis.summary import summary

    s = summary("lenet5", (1, 32, 32))
    page.goto(page.lab + f"/rf?source={run_id}&layer=s4")
    page.wait_for_selector("#rf-box")
    page.wait_for_selector("#erf-svg")
    grid = page.locator("#grid")
    size = float(grid.get_attribute("data-cell-size"))
    for cell, layer in (((1, 4), "s4"), ((0, 0), "s4")):
        page.click("#grid", position={"x": (cell[1] + 0.5) * size, "y": (cell[0] + 0.5) * size})
        box = expected_box(s.row(layer).rf, cell)
        want = {k: f"{v:g}" for k, v in box.items()}
        page.wait_for_function(
            "w => { const r = document.querySelector('#rf-box'); return r && "
            "['x','y','width','height'].every(k => r.getAttribute(k) === w[k]); }", arg=want)
        clipped = clip(box, 32, 32)
        drawn = {k: float(page.locator("#rf-clip").get_attribute(k)) for k in clipped}
        assert drawn == clipped
        assert f"cell={cell[0]}%2C{cell[1]}" in page.url or f"cell={cell[0]},{cell[1]}" in page.url
    page.wait_for_selector("#erf-svg")
    assert "test images" in page.inner_text("#erf-what")
    # a row of the table picks another layer; its box is that layer's
    page.click("#layers tr[data-key='c3']")
    page.wait_for_function("document.querySelector('#layer-name').textContent === 'c3'")
    box = expected_box(s.row("c3").rf, (4, 4))  # the centre cell of its 10x10 output
    page.wait_for_function("w => document.querySelector('#rf-box')?.getAttribute('x') === w",
                           arg=f"{box['x']:g}")
    page.wait_for_selector("#erf-svg")
    page.shot("rf")
