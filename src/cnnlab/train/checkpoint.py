"""Checkpoints that survive a crash: written to a temporary file, fsynced, then renamed over the old one,
so a kill at any moment leaves either the previous checkpoint or the new one, never half of either. They
are loaded with ``weights_only=True``: no code runs when a checkpoint is opened."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from cnnlab.fileio import atomic_save, atomic_write_text
from cnnlab.errors import CnnlabError

FORMAT = "cnnlab-checkpoint-1"


def save_checkpoint(state: dict, path: Path) -> None:
    atomic_save(dict(state, format=FORMAT), path)


def resolve(path: str | os.PathLike) -> Path:
    """A run folder (its last.pt) or a checkpoint file."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "last.pt"
    if not p.is_file():
        raise CnnlabError(f"no checkpoint at {p}; give a run folder (with last.pt) or a .pt file")
    return p


def safe_load(p: Path, what: str = "checkpoint", map_location="cpu"):
    """``torch.load(p, weights_only=True)``; a file it cannot read becomes one sentence saying why: not a
    torch.save file at all, a damaged one, or one holding objects that only an unsafe unpickling would build
    (which cnnlab never does: opening a file must not run code from it)."""
    import re
    import warnings
    import zipfile

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
    elif "zip archive" in text or "central directory" in text or eof:
        why = "it is damaged or cut short (an interrupted copy or download?); copy it again"
    else:
        why = f"{kind}: {text.splitlines()[0][:200] if text else 'unreadable'}"
    raise CnnlabError(f"{p} is not a readable {what}: {why}")


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    p = resolve(path)
    state = safe_load(p, "checkpoint", map_location)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CnnlabError(f"{p} is not a cnnlab checkpoint (it has no {FORMAT!r} marker)")
    return state


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")
