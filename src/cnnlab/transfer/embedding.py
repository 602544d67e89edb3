"""``cnnlab embed``: penultimate-layer features of a whole dataset, saved with their labels."""

from __future__ import annotations

import io
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from cnnlab.data.view import open_data
from cnnlab.errors import CnnlabError
from cnnlab.fileio import atomic_open
from cnnlab.runs import open_run
from cnnlab.transfer.weights import embed


def embed_dataset(checkpoint: str, out: str, data: str | None = None, split: str = "test", data_dir=None,
                  batch_size: int = 256) -> Path:
    """Write ``out`` (.npz): ``features`` (N x D float32, the input of the main classifier head),
    ``labels`` (N), ``classes``. Images are preprocessed as the run evaluated them (training images too:
    no augmentation)."""
    run = open_run(checkpoint)
    view = run.info.view.with_data(data)
    if view.is_folder:  # the run's own split of the folder: its training images, or its evaluation images
        split = "train" if split == "train" else "val"
    else:  # the whole official split
        view = replace(view, val_split=None, train_limit=None)
    images = open_data(view, split, batch_size=batch_size, data_dir=data_dir)
    if images.channels != view.channels:
        raise CnnlabError(f"{view.data} has {images.channels}-channel images but the model takes "
                          f"{view.channels}; embed a dataset like the one it was trained on")
    labels = []

    def batches():
        for x, y in images.loader:
            labels.append(y)
            yield x

    features = embed(run.model, run.info.model, batches(), **run.info.model_options)
    buf = io.BytesIO()
    np.savez(buf, features=features, labels=torch.cat(labels).numpy(), classes=np.array(images.classes))
    path = Path(out)
    with atomic_open(path, "wb") as f:
        f.write(buf.getvalue())
    return path
