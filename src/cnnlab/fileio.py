"""Files written atomically: to a temporary file in the same folder, flushed and fsynced, then renamed over
the target. A crash at any moment leaves the old file or the new one, never half of either; a failed write (a
full disk) removes its temporary file and names the file asked for. And torch files read safely
(:func:`load_torch`: ``weights_only=True``, every record's CRC-32 checked first, and one sentence when a file
cannot be read). And the matplotlib figures that those writes save (:func:`figure`), made without pyplot."""

from __future__ import annotations

import functools
import io
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from cnnlab.errors import CnnlabError


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb"):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:  # name the file the caller asked for, not the temporary one
        raise type(e)(e.errno, e.strerror, str(path)) from None
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files private; give them the usual mode
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno and e.filename in (None, tmp):  # name the file asked for
            raise type(e)(e.errno, e.strerror, str(path)) from None
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    import json

    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def atomic_save(obj, path: str | os.PathLike) -> None:
    """torch.save, atomically. torch's zip writer turns a failed write (a full disk) into a RuntimeError
    ("unexpected pos"); the OSError behind it is raised instead."""
    import torch

    with atomic_open(path) as f:
        writer = _Writes(f)
        try:
            torch.save(obj, writer)
        except RuntimeError:
            if writer.error is not None:
                raise writer.error from None
            raise


class _Writes:
    """A file for torch.save that keeps the OSError of a failed write."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


@functools.cache
def _figure_class():
    from matplotlib.figure import Figure

    class NotebookFigure(Figure):
        def _repr_png_(self) -> bytes:  # Jupyter's own Figure formatter, where loaded, is used first
            return png_bytes(self)

    NotebookFigure.__qualname__ = "NotebookFigure"  # pickled as cnnlab.fileio.NotebookFigure: see __getattr__
    return NotebookFigure


def __getattr__(name: str):
    # the class is made on first use, so that importing cnnlab does not import matplotlib
    if name == "NotebookFigure":
        return _figure_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def figure(**kwargs):
    """A matplotlib Figure (``Figure(**kwargs)``) made without pyplot: no backend is chosen or switched (saving
    draws with Agg), nothing global is left to close, a notebook does not show it twice (pyplot's figures show
    themselves and then the returned one again), and Jupyter shows it inline even where pyplot's inline
    backend was never loaded."""
    return _figure_class()(**kwargs)


def png_bytes(fig, dpi: float | None = None) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def atomic_savefig(fig, path: str | os.PathLike, **kwargs) -> None:
    with atomic_open(path) as f:
        fig.savefig(f, format=Path(path).suffix.lstrip(".") or "png", **kwargs)


def load_torch(p: Path, what: str = "checkpoint", map_location="cpu"):
    """``torch.load(p, weights_only=True)``; a file it cannot read becomes one sentence saying why: not a
    torch.save file at all, a damaged one, or one holding objects that only an unsafe unpickling would build
    (which cnnlab never does: opening a file must not run code from it)."""
    import re
    import warnings
    import zipfile

    import torch

    _check_crc(p)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. the unpickler's note on a foreign pickle protocol
            return torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - every failure to read is explained below
        text, eof, kind = str(e), isinstance(e, EOFError), type(e).__name__
    if p.stat().st_size == 0:
        why = "it is empty; copy it again"
    elif "Weights only load failed" in text:
        found = re.search(r"GLOBAL (\S+) was not an allowed global", text)
        if found:
            why = (f"it holds a Python object ({found.group(1)}) beyond tensors and plain containers, and "
                   f"cnnlab opens files with torch.load(weights_only=True), which never runs code from them; if "
                   f"you trust it, load it yourself and torch.save its tensors")
        elif not zipfile.is_zipfile(p):
            why = ("it is not a PyTorch file (torch.save writes a zip archive; this is not one); give a run folder "
                   "or a .pt file")
        else:
            why = "it holds data that torch.load(weights_only=True) does not read"
    elif not _starts_like_torch_file(p):
        why = ("it is not a PyTorch file (torch.save writes a zip archive; this is not one); give a run folder "
               "or a .pt file")
    elif "zip archive" in text or "central directory" in text or eof:
        why = "it is damaged or cut short (an interrupted copy or download?); copy it again"
    else:
        why = f"{kind}: {text.splitlines()[0][:200] if text else 'unreadable'}"
    raise CnnlabError(f"{p} is not a readable {what}: {why}")


def _starts_like_torch_file(p: Path) -> bool:
    """Whether ``p`` starts as torch.save's files do: a zip archive, or (before torch 1.6) a pickle."""
    with open(p, "rb") as f:
        head = f.read(4)
    return head == b"PK\x03\x04" or head[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def _check_crc(p: Path) -> None:
    """torch.save writes a zip archive whose records each carry a CRC-32 of their bytes, but torch.load never
    checks them: a flipped bit in a weight loads silently. Check them all (about 4 ms per MB)."""
    import zipfile

    try:
        with zipfile.ZipFile(p) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError):
        return  # not a zip (or unreadable): torch.load's failure is explained below
    if bad is not None:
        raise CnnlabError(f"{p} is damaged: its record {bad} fails its CRC-32 check, so its bytes changed after "
                          f"cnnlab wrote them (a failing disk or a bad copy); copy it again from a good source, or "
                          f"use another checkpoint of the run (best.pt, or resume from it)")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The records of a JSON-lines file another process may be writing (metrics.jsonl, health.jsonl, a snapshot
    index): a line cut short or not an object is skipped, a missing or unreadable file is no records."""
    import json

    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out
