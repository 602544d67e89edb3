"""``cnnlab embed``: penultimate-layer features of a whole dataset, saved with their labels."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from cnnlab.errors import CnnlabError
from cnnlab.fileio import atomic_open
from cnnlab.train.evaluate import model_from_checkpoint
from cnnlab.transfer.weights import embed


def embed_dataset(checkpoint: str, out: str, data: str | None = None, split: str = "test", data_dir=None,
                  batch_size: int = 256) -> Path:
    """Write ``out`` (.npz): ``features`` (N x D float32, the input of the main classifier head),
    ``labels`` (N), ``classes``. Images are preprocessed as the run evaluated them."""
    from cnnlab.data.memory import Augment, MemoryLoader, load

    model, state = model_from_checkpoint(checkpoint)
    data = data or state["data"]
    if data.startswith("folder:"):
        from cnnlab.data.folder import folder_loader, run_folder_datasets

        train, evald, classes, _ = run_folder_datasets(state, data, augment_train=False)
        loader = folder_loader(train if split == "train" else evald, batch_size, False, 0)
    else:
        ds = load(data, split, data_dir)
        if ds.channels != state["in_chans"]:
            raise CnnlabError(f"{data} has {ds.channels}-channel images but the model takes "
                              f"{state['in_chans']}; embed a dataset like the one it was trained on")
        classes = ds.classes
        loader = MemoryLoader(ds, batch_size, False, Augment(**state["recipe"]["augment"]))
    labels = []

    def images():
        for x, y in loader:
            labels.append(y)
            yield x

    features = embed(model, state["model_name"], images(), **state.get("model_options", {}))
    buf = io.BytesIO()
    np.savez(buf, features=features, labels=torch.cat(labels).numpy(),
             classes=np.array(list(classes)))
    path = Path(out)
    with atomic_open(path, "wb") as f:
        f.write(buf.getvalue())
    return path
