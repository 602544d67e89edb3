"""The lab's server, whatever its pages: the guard (DNS rebinding, cross-site requests, no CORS), sources named
only by the server's own ids (path traversal, symlinks out of --runs), broken run folders listed with their
problem, `cnnlab serve`'s flags, and pages that load nothing from outside."""

import re
import shutil

import pytest
from starlette.testclient import TestClient

from cnnlab.cli import main
from cnnlab.lab import create_app
from cnnlab.lab.app import PAGES, STATIC, host_name
from cnnlab.lab.sources import run_id

BASE = "http://127.0.0.1:8000"
ORIGIN = {"origin": BASE}


@pytest.fixture(scope="module")
def runs(lab_runs, tmp_path_factory):
    """A --runs folder: the trained LeNet-5, a run still writing its first epoch, a corrupt checkpoint, and links
    out of the folder (a run folder and a checkpoint elsewhere)."""
    root = tmp_path_factory.mktemp("runs")
    good = root / "mnist" / "lenet5"
    shutil.copytree(lab_runs / "lenet5-mnist", good)
    (root / "writing").mkdir()
    (root / "writing" / "config.json").write_text('{"model": "lenet5", "data": "mnist"}')
    (root / "corrupt").mkdir()
    (root / "corrupt" / "config.json").write_text('{"model": "lenet5", "data": "mnist"}')
    (root / "corrupt" / "last.pt").write_bytes(b"PK\x03\x04 not really a checkpoint")
    outside = tmp_path_factory.mktemp("outside")
    shutil.copytree(lab_runs / "lenet5-mnist", outside / "secret-run")
    (root / "linked-folder").symlink_to(outside / "secret-run", target_is_directory=True)
    (root / "linked-file").mkdir()
    (root / "linked-file" / "config.json").write_text('{"model": "lenet5"}')
    (root / "linked-file" / "last.pt").symlink_to(outside / "secret-run" / "last.pt")
    return root


@pytest.fixture(scope="module")
def client(runs):
    with TestClient(create_app(runs), base_url=BASE) as c:
        yield c


def by_label(client) -> dict:
    return {e["label"]: e for e in client.get("/api/sources").json()["runs"]}


def test_runs_are_listed_with_their_problems_not_a_crash(client):
    runs = by_label(client)
    assert runs["mnist/lenet5"]["problem"] is None and runs["mnist/lenet5"]["epochs"] == 1
    assert runs["mnist/lenet5"]["top1"] > 95
    assert "no checkpoint yet" in runs["writing"]["problem"]
    assert "link out of --runs" in runs["linked-file"]["problem"]
    assert "linked-folder" not in runs and not any("secret" in label for label in runs)
    # the corrupt checkpoint is found when opened: a sentence, then the listing says so
    r = client.get(f"/api/sources/{runs['corrupt']['id']}")
    assert r.status_code == 400 and "cannot be opened" in r.json()["error"], r.text
    assert "Traceback" not in r.text
    assert "failed to open" in by_label(client)["corrupt"]["problem"]
    for label in ("writing", "linked-file"):
        r = client.get(f"/api/sources/{runs[label]['id']}")
        assert r.status_code == 409 and runs[label]["problem"] in r.json()["error"]


def test_a_listed_run_opens_and_says_what_it_is(client):
    rid = by_label(client)["mnist/lenet5"]["id"]
    assert rid == run_id("mnist/lenet5")
    info = client.get(f"/api/sources/{rid}").json()
    assert info["model"] == "lenet5" and info["classes"] == [str(i) for i in range(10)]
    assert info["input_size"] == [1, 32, 32] and info["history"][0]["epoch"] == 1
    assert "path" not in info and "lenet5-mnist" not in str(info)  # no server path goes to the client


@pytest.mark.parametrize("bad", ["../x", "..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "r-..%2F..%2Fsecret-run",
                                 "tv-..%2F..%2Fetc", "model-..%2Flenet5", "r-0000000000", "linked-folder",
                                 "mnist%2Flenet5", "%252e%252e%252f", "tv-lenet5"])
def test_sources_are_ids_never_paths(client, bad):
    r = client.get(f"/api/sources/{bad}")
    assert r.status_code == 404, (bad, r.status_code, r.text)
    assert set(r.json()) == {"error"}  # nothing of what lies behind


def test_host_header_must_be_the_labs_own_dns_rebinding(runs):
    with TestClient(create_app(runs), base_url="http://127.0.0.1:8000") as c:
        assert c.get("/api/about").status_code == 200
        for host in ("localhost:8000", "[::1]:8000", "127.0.0.1"):
            assert c.get("/api/about", headers={"host": host}).status_code == 200, host
        for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", "", "localhost.:8000"):
            r = c.get("/api/about", headers={"host": host})
            assert r.status_code == 403 and "DNS rebinding" in r.json()["error"], host
    public = TestClient(create_app(runs, host="0.0.0.0"), base_url="http://192.168.1.20:8000")
    assert public.get("/api/about").status_code == 200  # an address: fine
    assert public.get("/api/about", headers={"host": "attacker.example:8000"}).status_code == 403


def test_state_changes_only_from_the_labs_own_origin(client):
    for headers in ({}, {"origin": "http://evil.example"}, {"origin": "null"}, {"origin": BASE + ".evil"},
                    {"origin": "https://127.0.0.1:8000"}):
        r = client.post("/api/about", headers=headers, content=b"{}")
        assert r.status_code == 403 and "Origin" in r.json()["error"], headers
    assert client.post("/api/about", headers=ORIGIN).status_code == 405  # past the guard: GET-only endpoint


def test_no_cors_other_sites_cannot_read_answers(client):
    r = client.get("/api/sources", headers={"origin": "http://evil.example"})
    assert r.status_code == 200 and not any(k.lower().startswith("access-control") for k in r.headers)
    r = client.options("/api/sources", headers={"origin": "http://evil.example",
                                                 "access-control-request-method": "POST"})
    assert r.status_code in (403, 405) and "access-control-allow-origin" not in r.headers


def test_every_page_is_served_and_unknown_ones_are_one_sentence(client):
    for path in PAGES:
        r = client.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), path
    r = client.get("/nope")
    assert r.status_code == 404 and "/zoo" in r.json()["error"]
    assert client.get("/api/nope").status_code == 404
    assert client.get("/api/jobs/123").status_code == 404
    assert client.get("/static/../app.py").status_code == 404


def test_pages_load_nothing_from_outside():
    """Offline means no CDN: no script, stylesheet, image or fetch in the pages points off this server."""
    outside = re.compile(r"""(src|href)\s*=\s*["'](https?:)?//|fetch\(\s*["'`]https?:|@import\s+url\(["']?https?:""")
    files = [f for f in STATIC.rglob("*") if f.suffix in (".html", ".js", ".css")]
    assert len(files) >= 8
    for f in files:
        text = f.read_text()
        assert not outside.search(text), f"{f.name} loads something from outside: {outside.search(text)[0]}"


def test_host_names_are_parsed_as_browsers_send_them():
    assert host_name("127.0.0.1:8000") == "127.0.0.1"
    assert host_name("[::1]:8000") == "::1"
    assert host_name("localhost") == "localhost"


def test_serve_flags_are_checked_before_anything_listens(tmp_path, capsys, monkeypatch):
    import socket

    code = main(["serve", "--runs", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "is not a folder" in err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        code = main(["serve", "--port", str(busy.getsockname()[1])])
        err = capsys.readouterr().err
        assert code == 2 and "--port" in err and "Traceback" not in err
    import uvicorn

    seen = {}
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: seen.update(sockets=sockets))
    assert main(["serve", "--port", "0"]) == 0
    out, err = capsys.readouterr()
    port = seen["sockets"][0].getsockname()
    assert port[0] == "127.0.0.1" and f"http://127.0.0.1:{port[1]}/" in out and err == ""
    seen["sockets"][0].close()
    assert main(["serve", "--host", "0.0.0.0", "--port", "0"]) == 0
    out, err = capsys.readouterr()
    assert "warning" in err and "not only this machine" in err
    seen["sockets"][0].close()


def test_models_are_opened_once_and_the_cache_is_bounded(tmp_path, monkeypatch):
    from cnnlab.lab import sources as src

    s = src.Sources(tmp_path)
    loads = []
    real = s._load
    monkeypatch.setattr(s, "_load", lambda e: loads.append(e.id) or real(e))
    first = s.open("model-lenet5")
    assert s.open("model-lenet5") is first and loads == ["model-lenet5"]
    for name in ("lenet5_modern", "resnet20", "plain20", "nin_cifar"):
        s.open(f"model-{name}")
    assert len(s.cached()) == src.CACHE_MODELS and "model-lenet5" not in s.cached()  # least recently used went
    monkeypatch.setattr(src, "CACHE_BYTES", 1)  # a budget of bytes: only the newest stays
    s.open("model-resnet20")
    s.open("model-lenet5")
    assert s.cached() == ["model-lenet5"]


def test_jsonl_being_written_is_read_up_to_its_last_whole_line(tmp_path):
    """metrics.jsonl, health.jsonl and snapshot indexes are read while a training appends to them: a line cut
    short (or not an object) is skipped, not the whole file, and no file is no records."""
    from cnnlab.fileio import read_jsonl

    f = tmp_path / "metrics.jsonl"
    f.write_text('{"kind": "step", "step": 1}\n[1, 2]\n{"kind": "epoch", "epoch": 1}\n{"kind": "st')
    assert read_jsonl(f) == [{"kind": "step", "step": 1}, {"kind": "epoch", "epoch": 1}]
    assert read_jsonl(tmp_path / "none.jsonl") == []
