"""Issue 15: every image and dataset a user can give is read, or refused with one sentence that names it; never a
traceback, a hang, or a run that fails after an epoch. The bad inputs are made here, small, with Pillow."""

import gc
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.cli import main
from cnnlab.data.folder import folder_datasets
from cnnlab.data.idx import EMBEDDED
from cnnlab.data.images import EXTENSIONS, read_image
from cnnlab.data.memory import load, split_train_val
from cnnlab.data.view import DataView, load_image, open_data
from cnnlab.errors import CnnlabError, CnnlabNote

RUN = Path(__file__).parent / "fixtures" / "run-format-1"  # a LeNet-5 MNIST run (10 classes "0".."9"), read-only


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_sentence(code: int, err: str, *names) -> str:
    """The command failed with exit 2 and one line ``cnnlab: error: ...`` that names each of ``names``."""
    assert code == 2, err
    assert "Traceback" not in err and "DataLoader worker" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cnnlab: error: "), err
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    return lines[0]


def _rgb(h=20, w=24, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


# --- single images: predict, visualize -----------------------------------------------------------------------

def _write(kind: str, folder: Path) -> Path:
    """An image of ``kind``, one of each mode and container the readers meet."""
    rgb = _rgb()
    if kind == "animated.gif":  # frame 0 white, frame 1 black
        frames = [Image.new("P", (24, 20), 0), Image.new("P", (24, 20), 1)]
        for f in frames:
            f.putpalette([255, 255, 255, 0, 0, 0] + [0] * 762)
        frames[0].save(folder / kind, save_all=True, append_images=frames[1:], duration=100, loop=0)
    elif kind == "pages.tiff":
        Image.new("RGB", (24, 20), "white").save(folder / kind, save_all=True,
                                                 append_images=[Image.new("RGB", (24, 20), "black")])
    elif kind == "palette.png":
        rgb.convert("P").save(folder / kind)
    elif kind == "palette-transparent.png":  # index 0 transparent, every pixel index 0
        p = Image.new("P", (24, 20), 0)
        p.putpalette([0, 0, 0] + [0] * 765)
        p.save(folder / kind, transparency=0)
    elif kind == "rgba.png":  # fully transparent black
        Image.new("RGBA", (24, 20), (0, 0, 0, 0)).save(folder / kind)
    elif kind == "la.png":
        Image.new("LA", (24, 20), (0, 0)).save(folder / kind)
    elif kind == "cmyk.jpg":  # pure cyan
        Image.new("CMYK", (24, 20), (255, 0, 0, 0)).save(folder / kind, quality=95)
    elif kind == "gray16.png":  # left half 65535, right half 32768
        a = np.full((20, 24), 32768, dtype=np.uint16)
        a[:, :12] = 65535
        Image.fromarray(a).save(folder / kind)
    elif kind == "bilevel.png":
        rgb.convert("1").save(folder / kind)
    else:  # image.bmp, image.tif, image.webp, image.jpg, image.png, image.ppm
        rgb.save(folder / kind)
    return folder / kind


KINDS = ["animated.gif", "pages.tiff", "palette.png", "palette-transparent.png", "rgba.png", "la.png", "cmyk.jpg",
         "gray16.png", "bilevel.png", "image.bmp", "image.tif", "image.webp", "image.jpg", "image.png", "image.ppm"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_image_kind_is_read_for_gray_and_colour_networks(tmp_path, kind):
    path = _write(kind, tmp_path)
    assert path.suffix.lower() in EXTENSIONS  # an image folder takes it too
    gray = load_image(path, DataView("mnist", 1, 32, {"pad_to": 32}))
    colour = load_image(path, DataView("folder:x", 3, 32))
    assert gray.shape == (1, 1, 32, 32) and colour.shape == (1, 3, 32, 32)
    assert torch.isfinite(gray).all() and torch.isfinite(colour).all()


def test_what_each_mode_becomes(tmp_path):
    px = lambda kind, mode="RGB": np.asarray(read_image(_write(kind, tmp_path), mode)).astype(int)
    assert (px("animated.gif") == 255).all()  # the first frame (white), not the second or both
    assert (px("pages.tiff") == 255).all()
    assert (px("rgba.png") == 255).all() and (px("palette-transparent.png") == 255).all()  # over white
    assert (px("la.png", "L") == 255).all()
    gray16 = px("gray16.png", "L")
    assert (gray16[:, :12] == 255).all() and (gray16[:, 12:] == 128).all()  # scaled, not clipped to 255
    assert set(np.unique(px("bilevel.png", "L"))) <= {0, 255}
    cyan = px("cmyk.jpg").reshape(-1, 3).mean(0)
    assert cyan[0] < 30 and cyan[1] > 225 and cyan[2] > 225


@pytest.mark.parametrize("kind", ["image.bmp", "image.tif", "animated.gif", "image.webp", "cmyk.jpg"])
def test_predict_reads_what_image_folders_read(capsys, tmp_path, kind):
    path = _write(kind, tmp_path)
    code, out, err = cli(capsys, "predict", RUN, path)
    assert code == 0, err
    assert out.splitlines()[0] == str(path) and len(out.splitlines()) == 6  # the file, then its top 5


def _bad(kind: str, folder: Path) -> Path:
    path = folder / kind
    if kind == "truncated.png":
        _rgb().save(path)
        path.write_bytes(path.read_bytes()[:200])
    elif kind == "truncated.jpg":
        _rgb(64, 64).save(path)
        path.write_bytes(path.read_bytes()[:400])
    elif kind == "random.jpg":
        path.write_bytes(np.random.default_rng(0).bytes(500))
    elif kind == "empty.png":
        path.write_bytes(b"")
    elif kind == "dangling.png":
        path.symlink_to(folder / "gone.png")
    elif kind == "float.tif":
        Image.fromarray(np.zeros((8, 8), np.float32), "F").save(path)
    elif kind == "a-folder.jpg":
        path.mkdir()
    elif kind == "fifo.png":  # opening it for reading would wait for a writer
        os.mkfifo(path)
    return path


BAD = ["truncated.png", "truncated.jpg", "random.jpg", "empty.png", "dangling.png", "float.tif", "a-folder.jpg",
       "fifo.png"]


@pytest.mark.parametrize("kind", BAD + ["missing.png"])
def test_a_bad_image_given_to_predict_is_one_sentence_naming_it(capsys, tmp_path, kind):
    path = _bad(kind, tmp_path)
    line = one_sentence(*cli(capsys, "predict", RUN, path)[::2], path)
    if kind == "a-folder.jpg":
        assert "is a folder" in line and "does not exist" not in line
    elif kind == "dangling.png":
        assert "symbolic link" in line and "gone.png" in line
    elif kind == "missing.png":
        assert "does not exist" in line


@pytest.mark.parametrize("command", [["visualize", "saliency"], ["visualize", "gradcam"],
                                     ["visualize", "features"]])
def test_visualize_refuses_a_bad_image_with_one_sentence(capsys, tmp_path, command):
    path = _bad("truncated.png", tmp_path)
    one_sentence(*cli(capsys, *command, RUN, path, "--out", tmp_path / "x.png")[::2], path)
    assert not (tmp_path / "x.png").exists()


# --- image folders ----------------------------------------------------------------------------------------------

def _folder(root: Path, per_class: int = 4, classes=("cat", "dog")) -> Path:
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            _rgb(36, 36, seed=hash((c, i)) % 1000).save(root / c / f"{i}.png")
    return root


def test_an_image_folder_takes_every_extension_predict_reads(tmp_path):
    root = tmp_path / "flat"
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for kind in ("image.bmp", "image.tif", "animated.gif", "image.webp", "image.jpg"):
            _write(kind, root / c)
    train, val, classes, _ = folder_datasets(str(root), 32, 0.2, 0)
    assert classes == ["cat", "dog"] and len(train) + len(val) == 10
    assert all(train[i][0].shape == (3, 32, 32) for i in range(len(train)))


@pytest.mark.parametrize("workers, kind", [(0, "truncated.png"), (0, "random.jpg"), (0, "dangling.png"),
                                           (1, "truncated.png")])
def test_a_bad_file_in_an_image_folder_is_one_sentence_across_the_worker_boundary(tmp_path, kind, workers):
    """A worker's exception comes back as "Caught ... in DataLoader worker process 0" and its traceback; the
    sentence naming the file must come back alone."""
    root = _folder(tmp_path / "split" / "train")
    _folder(tmp_path / "split" / "val", 1)
    bad = _bad(kind, root / "cat")
    loader = open_data(DataView(f"folder:{tmp_path / 'split'}", 3, 32), "train", train=True, batch_size=2,
                       workers=workers, skip_bad_images=False).loader
    message, params = None, None
    try:
        for _ in loader:
            pass
    except CnnlabError as e:
        message, params = str(e), e.params
    del loader  # its worker goes now, not in a later test
    gc.collect()
    assert message is not None and str(bad) in message and "\n" not in message and "Traceback" not in message
    assert message.startswith(str(bad)) and "skip_bad_images" in message and params == ("skip_bad_images",)


def test_skip_bad_images_leaves_them_out_and_counts_them(tmp_path):
    root = _folder(tmp_path / "split" / "train", 3)
    _folder(tmp_path / "split" / "val", 2)
    bad = [_bad("truncated.png", root / "cat"), _bad("random.jpg", root / "dog")]
    view = DataView(f"folder:{tmp_path / 'split'}", 3, 32)
    opened = open_data(view, "train", train=True, batch_size=3, workers=0, skip_bad_images=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seen = sum(len(y) for _, y in opened.loader)
    assert len(opened) == 8 and seen == 6  # 8 files, 2 left out
    notes = [w.message for w in caught if isinstance(w.message, CnnlabNote)]
    assert len(notes) == 1 and "left out 2 images" in str(notes[0])
    assert len(opened.loader.skipped) == 2
    assert all(any(str(b) in m for m in opened.loader.skipped) for b in bad)
    with warnings.catch_warnings(record=True) as caught:  # a second pass meets no new ones: no second note
        warnings.simplefilter("always")
        assert sum(len(y) for _, y in opened.loader) == 6
    assert not [w for w in caught if isinstance(w.message, CnnlabNote)]


def test_commands_without_the_skip_option_do_not_offer_it(tmp_path):
    """top9 picks images by their index in the stream: it cannot skip, so its sentence offers no flag."""
    root = _folder(tmp_path / "split" / "train", 2)
    _folder(tmp_path / "split" / "val", 2)
    bad = _bad("random.jpg", tmp_path / "split" / "val" / "dog")
    with pytest.raises(CnnlabError) as e:
        list(open_data(DataView(f"folder:{tmp_path / 'split'}", 3, 32), "val", workers=0).loader)
    assert str(e.value).startswith(str(bad)) and "skip_bad_images" not in str(e.value) and root.is_dir()


@pytest.mark.slow
def test_training_on_a_folder_with_a_truncated_image_is_one_sentence_and_skip_trains_on(capsys, tmp_path):
    """Through the command line, with the DataLoader's default workers (which wrapped the decoder's error in a
    40-line traceback naming no file)."""
    root = _folder(tmp_path / "flat", 6)
    bad = _bad("truncated.png", root / "dog")
    argv = ["train", "lenet5", "--data", f"folder:{root}", "--epochs", "1", "--batch-size", "2", "--quiet"]
    line = one_sentence(*cli(capsys, *argv, "--out", tmp_path / "run1")[::2], bad, "--skip-bad-images")
    assert "skip_bad_images" not in line
    code, out, err = cli(capsys, *argv, "--out", tmp_path / "run2", "--skip-bad-images")
    assert code == 0, err
    assert "cnnlab: note: left out 1 image that cannot be read" in err and str(bad) in err and "Traceback" not in err


def test_folders_of_the_wrong_kind_are_one_sentence(capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    line = one_sentence(*cli(capsys, "train", "lenet5", "--data", f"folder:{tmp_path / 'file'}")[::2])
    assert "is a file, not a folder" in line and "--data folder:PATH" in line
    data = tmp_path / "data"
    shutil.copytree(EMBEDDED, data)
    line = one_sentence(*cli(capsys, "train", "lenet5", "--data", f"folder:{data}")[::2], data)
    assert "--data mnist" in line and "--data-dir" in line
    (tmp_path / "none" / "cat").mkdir(parents=True)
    one_sentence(*cli(capsys, "train", "lenet5", "--data", f"folder:{tmp_path / 'none'}")[::2], "holds no images")


def test_a_folder_too_small_to_split_is_refused_before_training(tmp_path):
    root = tmp_path / "flat"
    (root / "cat").mkdir(parents=True)
    _rgb().save(root / "cat" / "0.png")
    with pytest.raises(CnnlabError, match="holds 1 image: holding out 0.2 of them for validation leaves none"):
        folder_datasets(str(root), 32, 0.2, 0)


def test_eval_on_a_folder_of_other_classes_names_both(capsys, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(RUN, run)
    root = _folder(tmp_path / "flat", 2)
    line = one_sentence(*cli(capsys, "eval", run, "--data", f"folder:{root}")[::2])
    assert "10 classes (0, 1, 2, 3, 4, ...)" in line and "2 classes (cat, dog)" in line
    root = _folder(tmp_path / "ten", 1, classes=[str(i) for i in range(9)] + ["nine"])
    line = one_sentence(*cli(capsys, "eval", run, "--data", f"folder:{root}")[::2])
    assert "class 9 is '9' in the run, 'nine' there" in line


# --- data folders and the in-memory datasets ---------------------------------------------------------------------

def test_data_dir_that_is_a_file_says_so(capsys, tmp_path):
    f = tmp_path / "data.txt"
    f.write_text("x")
    for argv in (["train", "lenet5", "--epochs", "1"], ["scratch-train", "--epochs", "1"]):
        line = one_sentence(*cli(capsys, *argv, "--data-dir", f)[::2], f)
        assert "--data-dir" in line and "is a file, not a folder" in line
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "cifar-10").write_text("x")
    line = one_sentence(*cli(capsys, "eval", RUN, "--data", "cifar10", "--data-dir", tmp_path / "d")[::2])
    assert "cifar-10 is a file" in line


def _mnist_copy(tmp_path: Path, damaged: str | None = None) -> Path:
    """tmp_path/mnist: the four MNIST files (links to the package's copy), ``damaged`` with bytes flipped
    in the middle of its deflate stream."""
    d = tmp_path / "mnist"
    d.mkdir()
    for f in EMBEDDED.joinpath("mnist").iterdir():
        if f.name == damaged:
            b = bytearray(f.read_bytes())
            b[len(b) // 2:len(b) // 2 + 50] = bytes(x ^ 0xFF for x in b[len(b) // 2:len(b) // 2 + 50])
            (d / f.name).write_bytes(bytes(b))
        else:
            (d / f.name).symlink_to(f)
    return d


def test_a_corrupt_gz_is_one_sentence_naming_it(capsys, tmp_path):
    d = _mnist_copy(tmp_path, "t10k-labels-idx1-ubyte.gz")
    bad = d / "t10k-labels-idx1-ubyte.gz"
    line = one_sentence(*cli(capsys, "scratch-train", "--data-dir", d, "--train-images", "10", "--test-images", "10",
                             "--epochs", "1")[::2], bad)
    assert "download it again" in line and "cnnlab data verify" in line
    line = one_sentence(*cli(capsys, "eval", RUN, "--data-dir", tmp_path)[::2], bad)  # MD5-checked first
    assert "cnnlab data prepare mnist" in line


def test_a_damaged_decoded_cache_is_decoded_again(tmp_path):
    _mnist_copy(tmp_path)
    good = load("mnist", "test", tmp_path)
    cache = next((tmp_path / "mnist").glob(".cnnlab-mnist-test-*.pt"))
    blob = torch.load(cache, weights_only=True)
    assert len(blob["sha256"]) == 64
    blob["images"][0, 0, 14, 14] ^= 0xFF  # a changed pixel in a cache that still reads back
    torch.save(blob, cache)
    again = load("mnist", "test", tmp_path)
    assert torch.equal(again.images, good.images) and torch.equal(again.labels, good.labels)
    assert torch.equal(torch.load(cache, weights_only=True)["images"], good.images)  # and written anew
    raw = bytearray(cache.read_bytes())  # bytes flipped inside the file
    raw[len(raw) // 2:len(raw) // 2 + 64] = bytes(64)
    cache.write_bytes(bytes(raw))
    assert torch.equal(load("mnist", "test", tmp_path).images, good.images)


# --- empty splits -------------------------------------------------------------------------------------------------

def test_a_val_split_that_holds_out_nothing_gives_the_smallest_that_works(capsys):
    line = one_sentence(*cli(capsys, "train", "lenet5", "--train-limit", "20", "--val-split", "0.01",
                             "--epochs", "1", "--batch-size", "2")[::2])
    assert "--val-split 0.01 holds out none of 20 mnist training images" in line and "--val-split 0.26" in line
    ds = load("mnist", "test")
    two_each = ds.subset(torch.cat([(ds.labels == c).nonzero().flatten()[:2] for c in range(10)]), "train")
    with pytest.raises(CnnlabError, match="use val_split 0.26 or more"):
        split_train_val(two_each, 0.25, 0)  # round(2 * 0.25) = 0: nothing held out
    train, val = split_train_val(two_each, 0.26, 0)  # the suggestion works
    assert len(val) == 10 and len(train) == 10
    with pytest.raises(CnnlabError, match="too few to hold out a validation split"):
        split_train_val(ds.subset(torch.arange(3), "train"), 0.1, 0)


def test_a_train_limit_below_the_number_of_classes_is_refused(capsys):
    line = one_sentence(*cli(capsys, "train", "lenet5", "--train-limit", "3", "--epochs", "1")[::2])
    assert "--train-limit 3 is fewer than mnist's 10 classes" in line
    one_sentence(*cli(capsys, "train", "lenet5", "--train-limit", "0")[::2], "--train-limit")
