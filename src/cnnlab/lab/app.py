"""The lab's web application, where it is put together: its pages, every module's endpoints (``routes()``),
the server's state (:class:`Lab`), and the guard in front of everything (Host and Origin checks). What the
endpoints share (``api``, ``LabError``, query and body parsing, jobs) is in ``web.py``; ``serve`` runs it all on
uvicorn.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from cnnlab.errors import CnnlabError
from cnnlab.lab.web import Jobs, api

STATIC = Path(__file__).with_name("static")
PAGES = {"/": "index.html", "/zoo": "zoo.html", "/model": "model.html", "/rf": "rf.html",
         "/playground": "playground.html", "/explorer": "explorer.html", "/draw": "draw.html",
         "/train": "train.html", "/result": "result.html", "/compare": "compare.html"}
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
log = logging.getLogger("cnnlab.lab")


@dataclass
class Lab:
    """The server's state: what it can open, its jobs, where it listens."""

    runs: Path | None
    host: str = "127.0.0.1"
    port: int = 8000
    jobs: Jobs = field(default_factory=Jobs)
    sources: object = None  # cnnlab.lab.sources.Sources
    max_trainings: int = 1  # trainings running at once; the others queue (lab/training.py)
    trainings: object = None  # cnnlab.lab.training.Trainings, made by create_app

    def __post_init__(self):
        from cnnlab.lab.sources import Sources

        if self.sources is None:
            self.sources = Sources(self.runs)


def _about(lab: Lab, request) -> dict:
    import platform

    from cnnlab.platform import cnnlab_version, cpu_model

    return {"cnnlab": cnnlab_version(), "python": platform.python_version(), "cpu": cpu_model(),
            "runs": str(lab.runs) if lab.runs else None}


def _job(lab: Lab, request) -> dict:
    return lab.jobs.get(request.path_params["job"]).as_dict()


# ------------------------------------------------------------------------------------------------------- guard

def allowed_hosts(host: str) -> set[str] | None:
    """Host names a request may carry (None: any IP literal or this machine's names, for a public bind)."""
    if host in ("0.0.0.0", "::", ""):
        return None
    return {host.strip("[]")} | (LOOPBACK if host.strip("[]") in LOOPBACK else set())


def host_name(header: str) -> str:
    """``example.com:8000`` -> ``example.com``; ``[::1]:8000`` -> ``::1``."""
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


class Guard:
    """ASGI middleware in front of everything. DNS rebinding: a page on evil.example whose name resolves to
    127.0.0.1 sends ``Host: evil.example``, refused unless it is a name the server listens under. Cross-site
    requests: anything that is not a GET or HEAD must come from the lab's own origin (``Origin`` equal to
    ``http://`` + the Host). No CORS headers are ever sent, so other sites cannot read the answers."""

    def __init__(self, app, host: str):
        self.app, self.hosts = app, allowed_hosts(host)
        self.public = {socket.gethostname().lower(), socket.getfqdn().lower(), "localhost"}

    def host_ok(self, name: str) -> bool:
        name = name.lower()
        if self.hosts is None:
            return _is_ip(name) or name in self.public
        return name in self.hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        if not self.host_ok(host_name(host)):
            return await _refuse(send, 403, f"this lab does not answer to the host {host!r} (a guard against DNS "
                                            f"rebinding); open it at the address `cnnlab serve` printed")
        method = scope.get("method", "GET")
        if scope["type"] == "websocket" or method not in ("GET", "HEAD"):
            origin = headers.get("origin")
            if origin != f"http://{host}":
                return await _refuse(send, 403, "this request must come from the lab's own page (its Origin header "
                                                f"is {origin!r}); other sites cannot change anything here")
        return await self.app(scope, receive, send)


async def _refuse(send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


# --------------------------------------------------------------------------------------------------------- app

def create_app(runs=None, host: str = "127.0.0.1", port: int = 8000, max_trainings: int = 1):
    """The lab as an ASGI application (``runs``: the folder whose run folders it lists; ``max_trainings``: how
    many trainings started from the page run at once)."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import FileResponse, JSONResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    from cnnlab.lab import compare, digits, explorer, playground, results, sources, training, zoo

    runs = Path(runs).expanduser().resolve() if runs else None
    if runs is not None and not runs.is_dir():
        raise CnnlabError(f"--runs {runs} is not a folder; give the folder your runs are written to (e.g. runs)")
    lab = Lab(runs, host, port, max_trainings=max_trainings)
    training.trainings(lab)  # finds the trainings an earlier server started (live ones, and killed ones)

    def page(file: str):
        async def endpoint(request):
            return FileResponse(STATIC / file, headers={"cache-control": "no-cache"})
        return endpoint

    async def not_found(request, exc):
        status = getattr(exc, "status_code", 404)
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": f"no such endpoint: {request.url.path}"}, status_code=status)
        return JSONResponse({"error": f"no such page: {request.url.path}; the lab's pages are "
                                      f"{', '.join(PAGES)}"}, status_code=status)

    routes = [Route(path, page(file)) for path, file in PAGES.items()]
    routes += [Route("/api/about", api(_about)), Route("/api/jobs/{job}", api(_job))]
    for module in (zoo, playground, sources, explorer, digits, training, results, compare):
        routes += module.routes()
    routes.append(Mount("/static", StaticFiles(directory=STATIC), name="static"))
    app = Starlette(routes=routes, middleware=[Middleware(Guard, host=host)],
                    exception_handlers={404: not_found, 405: not_found})
    app.state.lab = lab
    return app


def serve(runs=None, host: str = "127.0.0.1", port: int = 8000, open_browser: bool = False,
          max_trainings: int = 1) -> None:
    """Run the lab until Ctrl-C, printing its URL."""
    import uvicorn

    if host not in LOOPBACK:
        print(f"warning: the lab listens on {host}, not only this machine: anyone who can reach it on the network "
              f"can open your runs and use its CPU; use the default 127.0.0.1 unless you mean it", file=sys.stderr)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise CnnlabError(f"cannot listen on {host}:{port} ({e.strerror or e}); pick another port with --port, "
                          f"or stop what uses it") from None
    sock.listen(2048)  # from the moment the URL is printed, connections wait for the app instead of being refused
    port = sock.getsockname()[1]
    app = create_app(runs, host, port, max_trainings)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    shown = f"[{host}]" if ":" in host else ("127.0.0.1" if host in ("0.0.0.0", "") else host)
    url = f"http://{shown}:{port}/"
    print(f"cnnlab lab at {url}  (Ctrl-C stops it)", flush=True)
    if open_browser:
        import webbrowser

        threading.Timer(0.5, webbrowser.open, (url,)).start()
    server.run(sockets=[sock])
