"""The lab's Zoo and Model pages: their endpoints against the command line's own output and the summary, the
graph's branching against what the architectures are (a residual sum of two tensors, Inception's four-way
concatenation, DenseNet's growing ones), and the pages in a real browser."""

from __future__ import annotations

import contextlib
import io

import pytest
from starlette.testclient import TestClient

from cnnlab.analysis.summary import summary
from cnnlab.lab.app import create_app


@pytest.fixture(scope="module")
def client():
    return TestClient(create_app(None), base_url="http://localhost")


def cli(*argv: str) -> str:
    """What `cnnlab ARGV` prints, run in this process (the command's own code path, without a second start-up)."""
    from cnnlab.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(list(argv)) == 0
    return out.getvalue()


def graph_of(client, name: str, **params) -> dict:
    r = client.get(f"/api/models/{name}/graph", params=params)
    assert r.status_code == 200, r.text
    return r.json()


# ------------------------------------------------------------------------------------------------- the zoo

def test_models_list_matches_the_cli_table_and_searches_papers(client):
    every = client.get("/api/models").json()
    table = cli("models")
    assert every["count"] == len(table.strip().splitlines()) - 1  # one line per model under the header
    row = next(m for m in every["models"] if m["name"] == "resnet20")
    line = next(x for x in table.splitlines() if x.split()[0] == "resnet20").split()
    assert line[1:4] == [f"{row['params']:,}", row["input"], str(row["year"])]
    # the search reads the paper and the year, not only the name: He et al.'s title names no model
    found = {m["name"] for m in client.get("/api/models", params={"q": "deep residual 2016"}).json()["models"]}
    assert {"resnet20", "resnet50", "plain20"} <= found and "vgg16" not in found and "googlenet" not in found
    assert {m["name"] for m in client.get("/api/models", params={"q": "densenet"}).json()["models"]} == \
        {n for n in (m["name"] for m in every["models"]) if n.startswith("densenet")}


def test_card_is_the_cli_card(client):
    c = client.get("/api/models/googlenet").json()
    assert c["card"] + "\n" == cli("card", "googlenet")
    assert c["options"] == {"aux_logits": "True", "dropout": "0.2", "transform_input": "False"}
    assert c["command"] == "cnnlab card googlenet" and c["year"] == 2014


def test_unknown_model_and_bad_options_are_one_sentence(client):
    for url, status, words in [
        ("/api/models/resnet2000", 404, "unknown model 'resnet2000'"),
        ("/api/models/resnet2000/summary", 404, "unknown model"),
        ("/api/models/resnet2000/graph", 404, "unknown model"),
        ("/api/models/resnet20/summary?opts=shortcut=B", 400, "has no option 'shortcut'"),
        ("/api/models/resnet18/graph?opts=shortcut=Q", 400, "shortcut must be one of A, B, C, none"),
        ("/api/models/googlenet/summary?opts=aux_logits=1", 400, "is not a bool"),
        ("/api/models/resnet18/summary?opts=drop_path_rate=2", 400, "a rate in [0, 1)"),
        ("/api/models/resnet18/summary?input=3x224", 400, "three numbers"),
        ("/api/models/lenet5/summary?input=1x8x8", 400, "cannot run on a 1x8x8 input"),
    ]:
        r = client.get(url)
        assert r.status_code == status, (url, r.text)
        error = r.json()["error"]
        assert words in error and "\n" not in error and "Traceback" not in error, (url, error)


# ------------------------------------------------------------------------------------------- the summary

@pytest.mark.parametrize("name, argv, params", [
    ("lenet5", [], {}),
    ("resnet18", ["--model-option", "shortcut=A"], {"opts": "shortcut=A"}),
    ("resnet20", ["--input", "3x64x64", "--model-option", "drop_path_rate=0.1"],
     {"input": "3x64x64", "opts": "drop_path_rate=0.1"}),
    ("googlenet", ["--model-option", "aux_logits=False"], {"opts": "aux_logits=False"}),
])
def test_summary_totals_are_the_cli_totals(client, name, argv, params):
    r = client.get(f"/api/models/{name}/summary", params=params).json()
    printed = cli("summary", name, *argv)
    lines = r["totals_lines"]
    assert "\n".join(lines) in printed  # the CLI's totals, line for line
    options = dict(item.split("=") for item in params.get("opts", "").split(";") if item)
    from cnnlab.models.registry import coerce_model_options

    s = summary(name, params.get("input"), **coerce_model_options(name, [f"{k}={v}" for k, v in options.items()]))
    assert lines == s.totals_lines() and r["totals"]["params"] == s.total_params
    assert r["command"] == "cnnlab summary " + " ".join([name, *argv])
    # every row of the table, as the CLI prints it (its columns: the name, type and output, the numbers)
    assert len(r["rows"]) == len(s.visible_rows())
    for row in r["rows"]:
        assert row["name"] in printed and f"{row['macs']:,}" in printed


def test_option_changes_the_numbers_and_depth_the_rows(client):
    a = client.get("/api/models/resnet18/summary", params={"opts": "shortcut=A"}).json()
    b = client.get("/api/models/resnet18/summary").json()
    # option A pads with zeros where option B projects: three 1x1 convolutions + BN fewer
    projections = sum(c * 2 * c + 2 * 2 * c for c in (64, 128, 256))
    assert b["totals"]["params"] - a["totals"]["params"] == projections
    deep = client.get("/api/models/resnet18/summary", params={"depth": 1}).json()
    assert [r["name"] for r in deep["rows"]] == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3",
                                                 "layer4", "avgpool", "fc"]
    assert deep["totals_lines"] == b["totals_lines"] and deep["command"] == "cnnlab summary resnet18 --depth 1"


# ---------------------------------------------------------------------------------------------- the graph

def _check_edges_against_summary(g: dict, s) -> None:
    """Every edge out of a layer carries that layer's output shape as the summary has it."""
    nodes = {n["id"]: n for n in g["nodes"]}
    checked = 0
    for e in g["edges"]:
        assert e["shape"], e
        source = nodes[e["from"]]
        if source["row"] is not None:
            row = s.rows[source["row"]]
            assert row.name == source["name"] and row.output_shape == e["shape"], (row.name, e)
            checked += 1
    assert checked > len(g["edges"]) // 2


def _inputs(g: dict, node_id: int) -> list[dict]:
    return [e for e in g["edges"] if e["to"] == node_id]


def test_resnet_graph_has_its_skip_connections(client):
    g = graph_of(client, "resnet20")
    _check_edges_against_summary(g, summary("resnet20"))
    adds = [n for n in g["nodes"] if n["label"] == "add"]
    assert len(adds) == 9  # one residual sum per block, 3 stages x 3 blocks
    nodes = {n["id"]: n for n in g["nodes"]}
    groups = {gr["id"]: gr for gr in g["groups"]}
    for add in adds:
        ins = _inputs(g, add["id"])
        assert len(ins) == 2 and ins[0]["shape"] == ins[1]["shape"]
        block = groups[add["group"]]
        assert block["type"] == "CifarBlock"
        sources = [nodes[e["from"]] for e in ins]
        # one input is the block's second BN; the other comes from outside the block (the identity), or from
        # its zero-padding shortcut where the shape changes (option A)
        assert any(s["name"] == block["name"] + ".bn2" for s in sources)
        other = next(s for s in sources if s["name"] != block["name"] + ".bn2")
        assert other["group"] != add["group"] or other["type"] == "ZeroPadShortcut"


def test_inception_concatenates_four_branches(client):
    g = graph_of(client, "googlenet")
    _check_edges_against_summary(g, summary("googlenet"))
    cats = [n for n in g["nodes"] if n["label"] == "concat"]
    groups = {gr["id"]: gr for gr in g["groups"]}
    assert len(cats) == 9 and all(groups[c["group"]]["type"] == "Inception" for c in cats)
    inception3a = next(c for c in cats if groups[c["group"]]["name"] == "inception3a")
    # Table 1 of the paper: 64 + 128 + 32 + 32 maps at 28x28 come in, 256 go out
    assert sorted(e["shape"][0] for e in _inputs(g, inception3a["id"])) == [32, 32, 64, 128]
    assert all(e["shape"][1:] == [28, 28] for e in _inputs(g, inception3a["id"]))
    assert inception3a["shapes"] == [[256, 28, 28]]
    assert groups[inception3a["group"]]["inputs"] == [[192, 28, 28]]


def test_densenet_concatenates_every_earlier_layer(client):
    g = graph_of(client, "densenet40")
    nodes = {n["id"]: n for n in g["nodes"]}
    groups = {gr["id"]: gr for gr in g["groups"]}
    cats = [n for n in g["nodes"] if n["label"] == "concat"]
    # each DenseLayer l of a block reads the block's input and its l-1 predecessors: 1, 2, ..., 12 inputs
    block1 = [c for c in cats if groups[c["group"]]["name"].startswith("features.denseblock1.")]
    assert sorted(len(_inputs(g, c["id"])) for c in block1) == list(range(1, 13))
    last = next(c for c in block1 if groups[c["group"]]["name"].endswith("denselayer12"))
    sources = {nodes[e["from"]]["name"] for e in _inputs(g, last["id"])}
    assert {f"features.denseblock1.denselayer{i}.conv1" for i in range(1, 12)} <= sources


def test_groups_nest(client):
    g = graph_of(client, "resnet50")
    groups = {gr["id"]: gr for gr in g["groups"]}
    block = next(gr for gr in groups.values() if gr["name"] == "layer2.0")
    assert groups[block["parent"]]["name"] == "layer2" and groups[block["parent"]]["parent"] is None
    down = next(gr for gr in groups.values() if gr["name"] == "layer2.0.downsample")
    assert down["parent"] == block["id"]
    assert block["inputs"] == [[256, 56, 56]] and block["outputs"] == [[512, 28, 28]]
    # every node and group points at a group that exists; every group holds something
    held = {n["group"] for n in g["nodes"]} | {gr["parent"] for gr in groups.values()}
    assert held - {None} <= set(groups) and set(groups) <= held


# --------------------------------------------------------------------------------------------- the pages

def test_zoo_page_searches_and_opens_a_card(page):
    page.goto(page.lab + "/zoo")
    page.wait_for_selector("#list tr[data-name='resnet20']")
    total = page.locator("#list tbody tr").count()
    page.fill("#q", "dense")
    page.wait_for_function("document.querySelectorAll('#list tbody tr').length < 10")
    names = page.locator("#list tbody tr td.name").all_inner_texts()
    assert names and all(n.startswith("densenet") for n in names) and len(names) < total
    page.click("#list tr[data-name='densenet121'] td.name")
    page.wait_for_selector("#card-text")
    assert "DenseNet-BC-121" in page.inner_text("#card-text")
    assert "q=dense" in page.url and "open=densenet121" in page.url
    page.reload()  # the view comes back from the URL
    page.wait_for_selector("#card-text")
    assert page.input_value("#q") == "dense"
    page.fill("#q", "")
    page.wait_for_function(f"document.querySelectorAll('#list tbody tr').length == {total}")
    page.click("#list tr[data-name='resnet20'] td.name")
    page.wait_for_selector("#card-pane h2:text('resnet20')")
    page.shot("zoo")


def _url_state(page) -> dict:
    from urllib.parse import parse_qsl, urlsplit

    return dict(parse_qsl(urlsplit(page.url).query))


def _nodes(page) -> int:
    return int(page.get_attribute("#graph", "data-nodes"))


def test_model_page_table_graph_and_options(page):
    page.goto(page.lab + "/model?name=resnet18&opts=shortcut=A")
    page.wait_for_selector("#graph svg .node")
    page.wait_for_selector("#table tr[data-row]")
    totals = page.inner_text("#totals")
    assert "Parameters: 11,515,688" in totals
    assert page.inner_text("#cmd").endswith("cnnlab summary resnet18 --model-option shortcut=A")
    # the shapes ride on the edges
    assert "64x56x56" in page.text_content("#graph svg")
    # collapse all: one node per stage; expand a stage: its blocks appear
    page.click("#collapse")
    collapsed = _nodes(page)
    page.click("#graph .node.group[data-key] [data-toggle]")  # the first collapsed block: layer1
    assert _nodes(page) > collapsed
    page.click("#expand")
    assert _nodes(page) > collapsed + 20 and "open=all" in page.url
    # a node finds its row, a row its node
    page.click("#graph .node.layer[data-row] >> nth=3")
    assert page.locator("#table tr.sel").count() == 1
    row = page.locator("#table tr[data-row] >> nth=10")
    row.click()
    assert page.locator("#graph .node.sel").count() == 1
    assert page.get_attribute("#graph .node.sel", "data-row") == row.get_attribute("data-row")
    # an option recomputes the totals: shortcut B projects where option A padded
    page.fill("#options input[data-opt='shortcut']", "B")
    page.press("#options input[data-opt='shortcut']", "Enter")
    page.wait_for_function("document.querySelector('#totals').textContent.includes('11,689,512')")
    assert _url_state(page)["opts"] == "shortcut=B" and page.inner_text("#cmd").endswith("--model-option shortcut=B")


def test_model_page_bad_option_is_one_sentence(page):
    page.expect_http_errors = True
    page.goto(page.lab + "/model?name=resnet18&opts=shortcut=Q")
    page.wait_for_selector("#error:not(:empty)")
    assert page.inner_text("#error").startswith("shortcut must be one of A, B, C, none")


def test_model_page_googlenet_renders_fast(page):
    page.goto(page.lab + "/model?name=googlenet")
    page.wait_for_selector("#graph svg .node")
    collapsed = _nodes(page)
    assert collapsed <= 90  # collapsed by default: the inception modules are single nodes or their branches
    assert page.locator("#graph .box", has_text="inception4a").count() == 1  # open: its branches side by side
    assert page.locator("#graph .node.group", has_text="inception4a.branch2").count() == 1  # a branch: closed
    page.click("#table tr:has-text('inception3a.branch2.1.conv')")  # opens its branch and finds its node
    assert page.get_attribute("#graph .node.sel", "data-key").startswith("n")
    page.shot("model")
    ms = page.evaluate("""() => { const t = performance.now(); document.querySelector('#expand').click();
                                   return performance.now() - t; }""")
    assert _nodes(page) > collapsed and ms < 1000, ms
    page.click("#collapse")
    assert _nodes(page) < collapsed
