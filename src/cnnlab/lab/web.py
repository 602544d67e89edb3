"""What every endpoint of the lab shares: :func:`api` (a plain function ``(lab, request) -> dict`` as a
Starlette endpoint returning JSON), the error a request cannot be served with (:class:`LabError`: one sentence
and an HTTP status), query and body parsing with bounds, and the background jobs heavy views run in.

Every endpoint runs in a worker thread (PyTorch releases the GIL in its kernels, so a heavy view never freezes
the other pages); a user's mistake (:class:`~cnnlab.errors.CnnlabError`) becomes ``{"error": sentence}`` with a
4xx, and anything else a 500 with one line, the traceback going to the server's console only.
"""

from __future__ import annotations

import functools
import json
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from typing import Callable

from cnnlab.errors import CnnlabError

MAX_BODY = 10 * 1024 * 1024  # uploads and JSON bodies: 10 MB


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
