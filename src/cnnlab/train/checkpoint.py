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


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    p = resolve(path)
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CnnlabError(f"{p} is not a readable checkpoint ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CnnlabError(f"{p} is not a cnnlab checkpoint (it has no {FORMAT!r} marker)")
    return state


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str) + "\n")
