"""Datasets: official files with checksums, in-memory batches with batch augmentation, image folders."""

from cnnlab.data.memory import ArrayDataset, Augment, MemoryLoader, load, split_train_val
from cnnlab.data.sources import DATASETS, data_root, locate, require, spec

__all__ = ["ArrayDataset", "Augment", "MemoryLoader", "load", "split_train_val", "DATASETS", "data_root",
           "locate", "require", "spec"]
