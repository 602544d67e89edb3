"""Datasets: official files and facts, corruption handling, the CIFAR parser, batch augmentation."""

import gzip
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnlab import CnnlabError
from cnnlab.data import Augment, MemoryLoader, load, locate, spec, split_train_val
from cnnlab.data.memory import augment_batch, pad_to
from cnnlab.data.readers import read_cifar_batch, read_idx
from cnnlab.data.sources import EMBEDDED, md5sum

SHARED = Path(os.environ.get("CNNLAB_DATA_DIR", "../shared/data"))


def test_mnist_ships_inside_the_package_with_official_checksums():
    status = locate(spec("mnist"), data_dir="/nonexistent")
    assert [s.state for s in status] == ["ok"] * 4
    assert all(EMBEDDED in s.path.parents for s in status)


@pytest.mark.slow
def test_official_file_lists_match_torchvisions():
    """Our written-out URLs, file names and MD5s agree with the ones torchvision's dataset classes publish."""
    import torchvision.datasets as tvd

    for name, cls in (("mnist", tvd.MNIST), ("fashion_mnist", tvd.FashionMNIST), ("kmnist", tvd.KMNIST)):
        s = spec(name)
        files = [f for split in ("train", "test") for f in s.files[split]]
        assert sorted((f.name, f.md5) for f in files) == sorted(cls.resources)
        assert all(f.urls == tuple(m + f.name for m in cls.mirrors) for f in files)
    assert list(spec("fashion_mnist").classes) == tvd.FashionMNIST.classes
    assert list(spec("kmnist").classes) == tvd.KMNIST.classes
    for name, cls in (("cifar10", tvd.CIFAR10), ("cifar100", tvd.CIFAR100)):
        s = spec(name)
        assert (s.archive.name, s.archive.md5, s.archive.urls) == (cls.filename, cls.tgz_md5, (cls.url,))
        for split, listed in (("train", cls.train_list), ("test", cls.test_list)):
            assert [(f.name, f.md5) for f in s.files[split]] == [(f"{cls.base_folder}/{f}", m) for f, m in listed]
        meta = s.extra["meta"]
        assert (meta.name, meta.md5) == (f"{cls.base_folder}/{cls.meta['filename']}", cls.meta["md5"])


@pytest.mark.slow
def test_the_main_command_does_not_import_torchvision():
    """Importing torchvision costs 1-3 s (it pulls in torch._dynamo); MNIST training does not need it."""
    import subprocess
    import sys

    code = ("import sys, cnnlab.cli, cnnlab.train.trainer, cnnlab.data, cnnlab.models; "
            "cnnlab.data.load('mnist', 'test', data_dir='/nonexistent'); "
            "print('torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_mnist_facts():
    test = load("mnist", "test", data_dir="/nonexistent")
    assert test.images.shape == (10_000, 1, 28, 28) and test.images.dtype == torch.uint8
    assert torch.bincount(test.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    train = load("mnist", "train", data_dir="/nonexistent")
    assert torch.bincount(train.labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert 0.12 < train.images.float().mean().item() / 255 < 0.14  # the usual mean 0.1307


def _copy_mnist(tmp_path) -> Path:
    d = tmp_path / "mnist"
    d.mkdir()
    for f in EMBEDDED.joinpath("mnist").iterdir():
        shutil.copy(f, d / f.name)
    return d


def test_truncated_file_is_named_with_both_checksums_and_nothing_else_is_touched(tmp_path):
    d = _copy_mnist(tmp_path)
    victim = d / "t10k-labels-idx1-ubyte.gz"
    victim.write_bytes(victim.read_bytes()[:1000])
    before = {f.name: (f.read_bytes(), f.stat().st_mtime_ns) for f in d.iterdir()}
    with pytest.raises(CnnlabError) as e:
        load("mnist", "test", data_dir=tmp_path)
    msg = str(e.value)
    assert "t10k-labels-idx1-ubyte.gz" in msg and "ec29112dd5afa0611ce80d1b7f02629c" in msg
    assert md5sum(victim) in msg
    assert {f.name: (f.read_bytes(), f.stat().st_mtime_ns) for f in d.iterdir()} == before


def test_missing_files_offline_say_what_where_and_how(tmp_path):
    with pytest.raises(CnnlabError) as e:
        load("fashion_mnist", "train", data_dir=tmp_path)
    msg = str(e.value)
    assert "train-images-idx3-ubyte.gz" in msg and str(tmp_path / "fashion-mnist") in msg
    assert "cnnlab data prepare fashion_mnist" in msg and "http" in msg


def test_unknown_dataset():
    with pytest.raises(CnnlabError, match="unknown dataset 'mnsit'; did you mean mnist"):
        spec("mnsit")


def test_idx_reader_rejects_a_bad_header(tmp_path):
    p = tmp_path / "x.gz"
    with gzip.open(p, "wb") as f:
        f.write(b"\x00\x00\x08\x01\x00\x00\x00\x05abc")
    with pytest.raises(CnnlabError, match="truncated"):
        read_idx(p)


def _write_cifar_batch(path, images, labels, key=b"labels"):
    """A batch in the official format: a python-2 pickle of a dict with bytes keys."""
    d = {b"batch_label": b"testing batch 1 of 1", key: list(labels),
         b"data": images.reshape(len(labels), -1), b"filenames": [b"x.png"] * len(labels)}
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=2)


def test_cifar_parser_reads_the_official_layout(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(3, 3, 32, 32), dtype=np.uint8)  # N, C, H, W
    _write_cifar_batch(tmp_path / "b", imgs, [3, 1, 4])
    x, y = read_cifar_batch(tmp_path / "b")
    assert y.tolist() == [3, 1, 4]
    # the official row is 1024 red, then 1024 green, then 1024 blue values, each plane row-major
    row = imgs[1].reshape(-1)
    assert x[1, 0, 0, 0] == row[0] and x[1, 0, 0, 1] == row[1] and x[1, 0, 1, 0] == row[32]
    assert x[1, 1, 0, 0] == row[1024] and x[1, 2, 31, 31] == row[3071]
    assert torch.equal(x, torch.from_numpy(imgs))


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/cnnlab-pwned",))


def test_cifar_parser_never_runs_code_from_a_pickle(tmp_path):
    p = tmp_path / "evil"
    with open(p, "wb") as f:
        pickle.dump({b"data": _Evil(), b"labels": [0]}, f, protocol=2)
    with pytest.raises(CnnlabError, match="not a CIFAR python batch"):
        read_cifar_batch(p)
    assert not Path("/tmp/cnnlab-pwned").exists()


def test_cifar10_checks_checksums_before_parsing(tmp_path):
    folder = tmp_path / "cifar-10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    imgs = np.zeros((2, 3, 32, 32), dtype=np.uint8)
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]:
        _write_cifar_batch(folder / name, imgs, [0, 1])
    with pytest.raises(CnnlabError, match="data_batch_1 is corrupt or truncated: MD5"):
        load("cifar10", "train", data_dir=tmp_path)


def test_pad_to_centres_digits():
    x = torch.full((2, 1, 28, 28), 7, dtype=torch.uint8)
    y = pad_to(x, 32)
    assert y.shape == (2, 1, 32, 32) and y[:, :, 2:30, 2:30].eq(7).all() and y.sum() == x.sum()


def _ramp(n=16, c=3, h=8, w=8):
    return (torch.arange(n * c * h * w) % 251 + 1).to(torch.uint8).view(n, c, h, w)


def test_random_crop_is_a_per_sample_translation():
    x = _ramp()
    y = augment_batch(x, Augment(crop_pad=2), torch.Generator().manual_seed(0))
    shifts = set()
    for i in range(len(x)):
        padded = torch.nn.functional.pad(x[i], (2, 2, 2, 2))
        match = [(dy, dx) for dy in range(5) for dx in range(5) if torch.equal(padded[:, dy:dy + 8, dx:dx + 8], y[i])]
        assert match, "every augmented image is a shifted copy of its original"
        shifts.add(match[0])
    assert len(shifts) > 3  # per-sample randomness, not one shift for the batch
    # the shifts are the generator's first two draws, rows then columns: a run resumed with a cnnlab of another
    # version (or another way of cropping) sees the same images
    g = torch.Generator().manual_seed(0)
    dy, dx = torch.randint(0, 5, (len(x),), generator=g), torch.randint(0, 5, (len(x),), generator=g)
    for i in range(len(x)):
        padded = torch.nn.functional.pad(x[i], (2, 2, 2, 2))
        assert torch.equal(y[i], padded[:, dy[i]:dy[i] + 8, dx[i]:dx[i] + 8])


def test_flip_and_cutout():
    x = torch.full((64, 1, 8, 8), 200, dtype=torch.uint8)
    x[:, :, :, :4] = 100  # left half darker, so a flip is visible
    y = augment_batch(x, Augment(flip=True), torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(y[i], x[i].flip(2)) for i in range(64)])
    same = torch.tensor([torch.equal(y[i], x[i]) for i in range(64)])
    assert (flipped | same).all() and 16 < flipped.sum() < 48
    z = augment_batch(torch.full((64, 1, 16, 16), 9, dtype=torch.uint8), Augment(cutout=4),
                      torch.Generator().manual_seed(1))
    holes = (z == 0).sum((1, 2, 3))
    assert holes.max() == 16 and (holes > 0).all() and (holes <= 16).all()


@pytest.mark.slow
def test_loader_is_reproducible_from_the_seed_and_normalises():
    ds = load("mnist", "test", data_dir="/nonexistent").subset(torch.arange(1000), "test")
    a = MemoryLoader(ds, 100, True, Augment(crop_pad=2, pad_to=32), seed=5)
    b = MemoryLoader(ds, 100, True, Augment(crop_pad=2, pad_to=32), seed=5)
    xa, ya = next(iter(a))
    xb, yb = next(iter(b))
    assert torch.equal(xa, xb) and torch.equal(ya, yb) and xa.shape == (100, 1, 32, 32)
    b.epoch = 1
    xc, _ = next(iter(b))
    assert not torch.equal(xa, xc)
    # resuming at batch 3 of an epoch gives what the uninterrupted epoch gives there
    full = list(MemoryLoader(ds, 100, True, Augment(crop_pad=2, pad_to=32), seed=5))
    resumed = list(MemoryLoader(ds, 100, True, Augment(crop_pad=2, pad_to=32), seed=5, start_batch=3))
    assert all(torch.equal(f[0], r[0]) for f, r in zip(full[3:], resumed))
    ev = next(iter(MemoryLoader(ds, 1000, False, Augment(pad_to=32))))[0]
    mean = (0 - 0.1307) / 0.3081
    assert torch.allclose(ev[:, :, :2], torch.tensor(mean))  # the padding is black, normalised like MNIST's background
    assert abs(ev[:, :, 2:30, 2:30].mean().item()) < 0.1


def test_val_split_is_stratified_and_disjoint():
    ds = load("mnist", "test", data_dir="/nonexistent")
    train, val = split_train_val(ds, 0.1, seed=0)
    assert len(train) + len(val) == len(ds) and abs(len(val) - 1000) <= 10
    assert (torch.bincount(val.labels) - torch.bincount(ds.labels) // 10).abs().max() <= 1
    with pytest.raises(CnnlabError, match="between 0 and 1"):
        split_train_val(ds, 1.5, 0)


@pytest.mark.skipif(not (SHARED / "cifar-10" / "cifar-10-jpg.tar.gz").exists(), reason="no local CIFAR-10 JPEG copy")
def test_cifar10_jpeg_copy():
    test = load("cifar10_jpeg", "test", data_dir=SHARED)
    assert test.images.shape == (10_000, 3, 32, 32)
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert test.classes[0] == "airplane" and test.classes[9] == "truck"


def test_folder_with_an_empty_class_is_a_clear_error(tmp_path):
    from cnnlab.data.folder import folder_datasets

    (tmp_path / "cat").mkdir()
    (tmp_path / "dog").mkdir()
    from torchvision.io import write_png
    write_png(torch.zeros(3, 8, 8, dtype=torch.uint8), str(tmp_path / "cat" / "a.png"))
    with pytest.raises(CnnlabError, match="dog holds no images"):
        folder_datasets(str(tmp_path), 32, 0.5, 0)


@pytest.mark.skipif(not (SHARED / "imagenette-subset").exists(), reason="no local Imagenette subset")
def test_folder_dataset_with_train_and_val():
    from cnnlab.data.folder import folder_datasets

    train, val, classes, split = folder_datasets(str(SHARED / "imagenette-subset"), 64, None, 0)
    assert len(classes) == 10 and len(train) == 300 and len(val) == 100 and split == "val"
    x, y = val[0]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32


def test_download_checks_the_md5_and_moves_files_into_place(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tvu

    fetched = []

    def fake_download(url, root, filename=None, md5=None):  # a mirror that serves the official bytes
        src = EMBEDDED / "mnist" / filename
        shutil.copy(src, Path(root) / filename)
        fetched.append(url)
        if md5 and md5sum(Path(root) / filename) != md5:
            raise RuntimeError("File not found or corrupted.")

    monkeypatch.setattr(tvu, "download_url", fake_download)
    from cnnlab.data.sources import require
    paths = require(spec("mnist"), data_dir=tmp_path, download=True)
    assert all(EMBEDDED in p.parents for p in paths.values()) and not fetched  # mnist ships in the package
    # fashion-mnist: the "mirror" serves MNIST's bytes, which fail fashion-mnist's checksums
    with pytest.raises(CnnlabError, match="could not download fashion_mnist"):
        require(spec("fashion_mnist"), data_dir=tmp_path, download=True)
    assert fetched and fetched[0].startswith("http://fashion-mnist")
    assert not any((tmp_path / "fashion-mnist").glob("*.gz"))  # nothing half-written left behind
    assert not any((tmp_path / "fashion-mnist").glob(".download-*"))
