"""The lab's web application: its pages, its JSON endpoints (each module's ``routes(lab)``), errors as one
sentence in JSON, and the guard in front of everything (Host and Origin checks, bounded bodies).

Every endpoint is a plain function ``(lab, request) -> dict`` wrapped by :func:`api`: it runs in a worker
thread (PyTorch releases the GIL in its kernels, so a heavy view never freezes the other pages), a user's
mistake (:class:`~cnnlab.errors.CnnlabError`) becomes ``{"error": sentence}`` with a 4xx, and anything else a
500 with one line, the traceback going to the server's console only.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
import socket
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from cnnlab.errors import CnnlabError

STATIC = Path(__file__).with_name("static")
PAGES = {"/": "index.html", "/zoo": "zoo.html", "/model": "model.html", "/rf": "rf.html",
         "/playground": "playground.html", "/explorer": "explorer.html", "/draw": "draw.html"}
MAX_BODY = 10 * 1024 * 1024  # uploads and JSON bodies: 10 MB
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
log = logging.getLogger("cnnlab.lab")


class LabError(CnnlabError):
    """A request the lab cannot serve, as one sentence, with its HTTP status (400 unless said)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass
class Job:
    """A long computation (top-9 over a test set, a training) running beside the app: the page polls it."""

    id: str
    kind: str
    done: int = 0
    total: int = 0
    state: str = "running"  # running | done | failed
    message: str = ""
    result: dict | None = None
    started: float = field(default_factory=time.time)

    def as_dict(self) -> dict:
        return {"id": self.id, "kind": self.kind, "done": self.done, "total": self.total, "state": self.state,
                "message": self.message, "result": self.result, "seconds": round(time.time() - self.started, 1)}


class Jobs:
    """Background jobs, one thread each; the same key (e.g. a run's top-9 of one layer) runs once at a time."""

    def __init__(self):
        self._jobs: dict[str, Job] = {}
        self._by_key: dict[str, str] = {}
        self._lock = threading.Lock()

    def start(self, kind: str, key: str, work: Callable[[Job], dict]) -> Job:
        """``work(job)`` in a thread: it may update ``job.done``/``job.total``; its dict is the result."""
        with self._lock:
            running = self._jobs.get(self._by_key.get(key, ""))
            if running is not None and running.state == "running":
                return running
            job = Job(uuid.uuid4().hex[:12], kind)
            self._jobs[job.id], self._by_key[key] = job, job.id

        def run():
            try:
                job.result = work(job)
                job.state = "done"
            except CnnlabError as e:
                job.state, job.message = "failed", str(e)
            except Exception as e:  # noqa: BLE001 - reported on the page, traceback on the console
                traceback.print_exc()
                job.state, job.message = "failed", f"the lab failed on this job ({type(e).__name__}: {e})"

        threading.Thread(target=run, name=f"cnnlab-job-{kind}", daemon=True).start()
        return job

    def get(self, job_id: str) -> Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise LabError(f"no job {job_id!r}: it finished before the server restarted, or never was", 404)
        return job


@dataclass
class Lab:
    """The server's state: what it can open, its jobs, where it listens."""

    runs: Path | None
    host: str = "127.0.0.1"
    port: int = 8000
    jobs: Jobs = field(default_factory=Jobs)
    sources: object = None  # cnnlab.lab.sources.Sources

    def __post_init__(self):
        from cnnlab.lab.sources import Sources

        if self.sources is None:
            self.sources = Sources(self.runs)


# ---------------------------------------------------------------------------------------------------- endpoints

def api(fn: Callable) -> Callable:
    """An endpoint ``fn(lab, request, **body)`` -> dict, as a Starlette endpoint returning JSON."""

    @functools.wraps(fn)
    async def endpoint(request):
        from starlette.concurrency import run_in_threadpool
        from starlette.responses import JSONResponse

        lab = request.app.state.lab
        try:
            kwargs = {}
            if request.method == "POST" and request.headers.get("content-type", "").startswith("application/json"):
                kwargs["body"] = await json_body(request)
            elif request.method == "POST":
                kwargs["body"] = await read_body(request)
            result = await run_in_threadpool(fn, lab, request, **kwargs)
        except LabError as e:
            return JSONResponse({"error": str(e)}, status_code=e.status)
        except CnnlabError as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        except Exception as e:  # noqa: BLE001 - one line to the page, the traceback to the console
            traceback.print_exc()
            return JSONResponse({"error": f"the lab failed on this request ({type(e).__name__}); the server's "
                                          f"console has the details"}, status_code=500)
        if not isinstance(result, dict) and hasattr(result, "body"):  # a Response of its own (e.g. a PNG)
            return result
        return JSONResponse(result)

    return endpoint


async def read_body(request, limit: int = MAX_BODY) -> bytes:
    """The request's body, refused with a 413 past ``limit`` bytes (whatever Content-Length claims)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise LabError(f"the upload is {int(declared) / 2**20:.1f} MB; the lab takes files up to "
                       f"{limit // 2**20} MB", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise LabError(f"the upload is over {limit // 2**20} MB; the lab takes files up to that size", 413)
        chunks.append(chunk)
    return b"".join(chunks)


async def json_body(request) -> dict:
    raw = await read_body(request, 1024 * 1024)
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise LabError("the request's body is not JSON") from None
    if not isinstance(body, dict):
        raise LabError("the request's body must be a JSON object")
    return body


def query(request, name: str, default=None, kind: type = str, *, low=None, high=None):
    """A query parameter, converted; a 400 with one sentence when it is malformed or out of range."""
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        if default is None and kind is not str:
            raise LabError(f"the request needs `{name}`")
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise LabError(f"`{name}` must be a {kind.__name__}, got {raw!r}") from None
    if (low is not None and value < low) or (high is not None and value > high):
        raise LabError(f"`{name}` must be between {low} and {high}, got {value}")
    return value


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

def create_app(runs=None, host: str = "127.0.0.1", port: int = 8000):
    """The lab as an ASGI application (``runs``: the folder whose run folders it lists)."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.responses import FileResponse, JSONResponse
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    from cnnlab.lab import digits, explorer, playground, sources, zoo

    runs = Path(runs).expanduser().resolve() if runs else None
    if runs is not None and not runs.is_dir():
        raise CnnlabError(f"--runs {runs} is not a folder; give the folder your runs are written to (e.g. runs)")
    lab = Lab(runs, host, port)

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
    for module in (zoo, playground, sources, explorer, digits):
        routes += module.routes()
    routes.append(Mount("/static", StaticFiles(directory=STATIC), name="static"))
    app = Starlette(routes=routes, middleware=[Middleware(Guard, host=host)],
                    exception_handlers={404: not_found, 405: not_found})
    app.state.lab = lab
    return app


def serve(runs=None, host: str = "127.0.0.1", port: int = 8000, open_browser: bool = False) -> None:
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
    port = sock.getsockname()[1]
    app = create_app(runs, host, port)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    shown = f"[{host}]" if ":" in host else ("127.0.0.1" if host in ("0.0.0.0", "") else host)
    url = f"http://{shown}:{port}/"
    print(f"cnnlab lab at {url}  (Ctrl-C stops it)", flush=True)
    if open_browser:
        import webbrowser

        threading.Timer(0.5, webbrowser.open, (url,)).start()
    server.run(sockets=[sock])
