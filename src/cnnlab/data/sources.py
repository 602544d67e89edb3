"""Where datasets live, what their official files are, and how to check and fetch them.

Files keep their official names and formats: the MNIST family as IDX ``.gz`` files, CIFAR as the python
pickle batches of the official archive. File lists, mirrors and MD5s are the official ones, written out here
so that the main command does not pay for importing torchvision (timing: docs/benchmarks.md); a test checks
them against the ones torchvision's dataset classes publish.

Data are looked for in ``--data-dir``, else ``$CNNLAB_DATA_DIR``, else the per-user cache folder
(``~/.cache/cnnlab``, or ``$XDG_CACHE_HOME/cnnlab``). MNIST also ships inside the package, so the main
command needs no network.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cnnlab.data.idx import EMBEDDED
from cnnlab.errors import CnnlabError
from cnnlab.fileio import atomic_open



@dataclass(frozen=True)
class FileSpec:
    name: str  # path relative to the dataset folder
    md5: str
    urls: tuple[str, ...] = ()  # where to download it from (empty: comes inside an archive)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    folder: str  # sub-folder of the data root
    kind: str  # "idx", "cifar" or "jpeg-tar"
    classes: tuple[str, ...]
    channels: int
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    files: dict[str, tuple[FileSpec, ...]]  # split -> files
    homepage: str
    licence: str
    archive: FileSpec | None = None  # downloaded and extracted to make ``files``
    note: str = ""
    embedded: bool = False
    extra: dict = field(default_factory=dict, compare=False)


# The official files: (mirrors, {file: MD5}) for the MNIST family; the CIFAR archives and their batches.
MNIST_FAMILY = {
    "mnist": (("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"), {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}),
    "fashion_mnist": (("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",), {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"}),
    "kmnist": (("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",), {
        "train-images-idx3-ubyte.gz": "bdb82020997e1d708af4cf47b453dcf7",
        "train-labels-idx1-ubyte.gz": "e144d726b3acfaa3e44228e80efcd344",
        "t10k-images-idx3-ubyte.gz": "5c965bf0a639b31b8f53240b1b52f4d7",
        "t10k-labels-idx1-ubyte.gz": "7320c461ea6c1c855c0b718fb2a4b134"}),
}
CIFAR = {
    "cifar10": {
        "folder": "cifar-10-batches-py", "url": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "filename": "cifar-10-python.tar.gz", "md5": "c58f30108f718f92721af3b95e74349a",
        "train": (("data_batch_1", "c99cafc152244af753f735de768cd75f"),
                  ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
                  ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
                  ("data_batch_4", "634d18415352ddfa80567beed471001a"),
                  ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb")),
        "test": (("test_batch", "40351d587109b95175f43aff81a1287e"),),
        "meta": ("batches.meta", "5ff9c542aee3614f3951f8cda6e48888")},
    "cifar100": {
        "folder": "cifar-100-python", "url": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "filename": "cifar-100-python.tar.gz", "md5": "eb9058c3a382ffc7106e4002c42a8d85",
        "train": (("train", "16019d7e3df5f24257cddd939b257f8d"),),
        "test": (("test", "f0ef6b0ae62326f3e7ffdfab6717acfc"),),
        "meta": ("meta", "7973b15100ade9c7d40fb424638fde48")},
}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
KMNIST_CLASSES = ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")


def _idx(name: str, classes, mean, std, homepage, licence, embedded=False) -> DatasetSpec:
    mirrors, md5 = MNIST_FAMILY[name]
    files = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        files[split] = tuple(
            FileSpec(f"{prefix}-{kind}-idx{n}-ubyte.gz", md5[f"{prefix}-{kind}-idx{n}-ubyte.gz"],
                     tuple(m + f"{prefix}-{kind}-idx{n}-ubyte.gz" for m in mirrors))
            for kind, n in (("images", 3), ("labels", 1)))
    return DatasetSpec(name, name.replace("_", "-"), "idx", tuple(classes), 1, 28, mean, std, files,
                       homepage, licence, embedded=embedded)


def _cifar(name: str, classes, mean, std) -> DatasetSpec:
    c = CIFAR[name]
    files = {split: tuple(FileSpec(f"{c['folder']}/{f}", m) for f, m in c[split]) for split in ("train", "test")}
    archive = FileSpec(c["filename"], c["md5"], (c["url"],))
    return DatasetSpec(name, name.replace("cifar", "cifar-"), "cifar", tuple(classes), 3, 32, mean, std, files,
                       "https://www.cs.toronto.edu/~kriz/cifar.html", "no licence stated by the authors",
                       archive=archive, extra={"meta": FileSpec(f"{c['folder']}/{c['meta'][0]}", c["meta"][1])})


CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

DATASETS: dict[str, DatasetSpec] = {
    "mnist": _idx("mnist", [str(i) for i in range(10)], (0.1307,), (0.3081,),
                  "http://yann.lecun.com/exdb/mnist/", "no licence stated (LeCun, Cortes, Burges)", embedded=True),
    "fashion_mnist": _idx("fashion_mnist", FASHION_MNIST_CLASSES, (0.2860,), (0.3530,),
                          "https://github.com/zalandoresearch/fashion-mnist", "MIT"),
    "kmnist": _idx("kmnist", KMNIST_CLASSES, (0.1918,), (0.3483,),
                   "https://github.com/rois-codh/kmnist", "CC BY-SA 4.0"),
    "cifar10": _cifar("cifar10", CIFAR10_CLASSES, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": _cifar("cifar100", (), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "cifar10_jpeg": DatasetSpec(
        "cifar10_jpeg", "cifar-10", "jpeg-tar", CIFAR10_CLASSES, 3, 32,
        (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
        {"train": (FileSpec("cifar-10-jpg.tar.gz", "97a885386ac940ec95312e53cd0d3606"),),
         "test": (FileSpec("cifar-10-jpg.tar.gz", "97a885386ac940ec95312e53cd0d3606"),)},
        "https://www.cs.toronto.edu/~kriz/cifar.html", "no licence stated by the authors",
        note="all 60,000 CIFAR-10 images re-encoded as JPEG quality 75 (lossy): for tests and speed work, "
             "not for matching published accuracies; use cifar10 for those"),
}


def spec(name: str) -> DatasetSpec:
    if name.startswith("folder:"):
        raise CnnlabError("folder datasets have no fixed specification")  # handled by the folder loader
    try:
        return DATASETS[name]
    except KeyError:
        import difflib
        close = difflib.get_close_matches(name, list(DATASETS), n=2)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise CnnlabError(f"unknown dataset {name!r}; {hint}known: {', '.join(DATASETS)} and folder:PATH") from None


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """--data-dir, else $CNNLAB_DATA_DIR, else the per-user cache folder; refused if it is a file."""
    if data_dir or os.environ.get("CNNLAB_DATA_DIR"):
        root = Path(data_dir or os.environ["CNNLAB_DATA_DIR"]).expanduser()
        if root.exists() and not root.is_dir():
            name = "`data_dir`" if data_dir else "$CNNLAB_DATA_DIR"
            raise CnnlabError(f"{name} {root} is a file, not a folder; point it at the folder that holds the "
                              f"datasets (mnist/, cifar-10/, ...)", params=("data_dir",))
        return root
    return cache_root()


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cnnlab"


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@dataclass
class FileStatus:
    file: FileSpec
    path: Path | None  # where it was found (None: missing)
    actual_md5: str | None = None

    @property
    def ok(self) -> bool:
        return self.path is not None and self.actual_md5 == self.file.md5

    @property
    def state(self) -> str:
        if self.path is None:
            return "missing"
        return "ok" if self.ok else "corrupt"


def candidate_dirs(s: DatasetSpec, data_dir=None) -> list[Path]:
    dirs = [data_root(data_dir) / s.folder]
    if s.embedded:
        dirs.append(EMBEDDED / s.folder)
    return dirs


def locate(s: DatasetSpec, data_dir=None, check: bool = True) -> list[FileStatus]:
    """Find every file of every split (first folder that has it), with its MD5 if ``check``."""
    out, seen = [], set()
    for files in s.files.values():
        for f in files:
            if f.name in seen:
                continue
            seen.add(f.name)
            path = next((d / f.name for d in candidate_dirs(s, data_dir) if (d / f.name).is_file()), None)
            out.append(FileStatus(f, path, md5sum(path) if (path and check) else None))
    return out


def require(s: DatasetSpec, data_dir=None, download: bool = False) -> dict[str, Path]:
    """Paths of all files, verified; downloads what is missing when asked (and online)."""
    status = locate(s, data_dir)
    for st in status:
        if st.path is not None and not st.ok:
            raise CnnlabError(f"{st.path} is corrupt or truncated: MD5 {st.actual_md5}, expected {st.file.md5}; "
                              f"delete it and run `cnnlab data prepare {s.name}` (or copy a good one there)")
    missing = [st.file for st in status if st.path is None]
    if missing and download:
        fetch(s, data_dir, missing)
        return require(s, data_dir, download=False)
    if missing:
        for d in candidate_dirs(s, data_dir):
            if d.exists() and not d.is_dir():
                raise CnnlabError(f"{d} is a file, but {s.name}'s files belong in a folder of that name; move the "
                                  f"file away and run `cnnlab data prepare {s.name}` (or copy the files there)")
        where = " or ".join(str(d) for d in candidate_dirs(s, data_dir))
        names = ", ".join(f.name for f in missing)
        if not s.archive and not missing[0].urls:  # a local copy with no official download
            raise CnnlabError(f"{s.name}: missing {names} in {where}; this copy cannot be downloaded "
                              f"({s.note}); copy it there, or use the official dataset instead")
        source = s.archive.urls[0] if s.archive else missing[0].urls[0].rsplit("/", 1)[0] + "/"
        raise CnnlabError(f"{s.name}: missing {names} in {where}; run `cnnlab data prepare {s.name}` online, "
                          f"or download from {source} into {data_root(data_dir) / s.folder}")
    return {st.file.name: st.path for st in status}


def fetch(s: DatasetSpec, data_dir, missing: list[FileSpec]) -> None:
    """Download into a temporary folder, check the MD5, then move into place: never a half-written file."""
    from torchvision.datasets.utils import download_url, extract_archive

    target = data_root(data_dir) / s.folder
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target, prefix=".download-") as tmp:
        tmp = Path(tmp)
        try:
            if s.archive is not None:
                _download(download_url, s.archive, tmp)
                extract_archive(str(tmp / s.archive.name), str(tmp / "x"))
                for f in missing:
                    src = tmp / "x" / f.name
                    if not src.is_file() or md5sum(src) != f.md5:
                        raise CnnlabError(f"{s.archive.name} does not hold a good {f.name}")
                    _move(src, target / f.name)
            else:
                for f in missing:
                    _download(download_url, f, tmp)
                    _move(tmp / f.name, target / f.name)
        except CnnlabError:
            raise
        except Exception as e:  # network errors: say which file and where to get it
            raise CnnlabError(f"could not download {s.name} ({type(e).__name__}: {e}); "
                              f"get the files from {s.homepage} into {target}") from None


def _download(download_url, f: FileSpec, tmp: Path) -> None:
    errors = []
    for url in f.urls:
        try:
            download_url(url, str(tmp), filename=Path(f.name).name, md5=f.md5)
            if (tmp / Path(f.name).name) != (tmp / f.name):
                (tmp / f.name).parent.mkdir(parents=True, exist_ok=True)
                shutil.move(tmp / Path(f.name).name, tmp / f.name)
            return
        except Exception as e:
            errors.append(f"{url}: {e}")
    raise OSError("; ".join(errors) or "no URL")


def _move(src: Path, dst: Path) -> None:
    with atomic_open(dst) as out, open(src, "rb") as f:
        shutil.copyfileobj(f, out)


def present(data_dir=None) -> list[str]:
    """The known datasets that have at least one of their files here."""
    return [n for n, s in DATASETS.items() if any(st.path for st in locate(s, data_dir, check=False))]


def render_status(data_dir=None) -> str:
    """The table of ``cnnlab data list``: every known dataset, its classes and image size, how many of its
    files are here and where (the folder they would go to when none are)."""
    lines = []
    for name, s in DATASETS.items():
        status = locate(s, data_dir, check=False)
        here = sum(st.path is not None for st in status)
        where = next((str(st.path.parent) for st in status if st.path), str(candidate_dirs(s, data_dir)[0]))
        lines.append(f"{name:<14} {len(s.classes) or 100:>3} classes  {s.channels}x{s.size}x{s.size}  "
                     f"{here}/{len(status)} files  {where}" + (f"  ({s.note.split(':')[0]})" if s.note else ""))
    return "\n".join(lines) + "\n"


def verify(names: list[str] | None = None, data_dir=None) -> dict[str, list[FileStatus]]:
    """Every file of the datasets ``names`` (default: those present) with its MD5 checked."""
    names = names or present(data_dir)
    return {name: locate(spec(name), data_dir) for name in names}


def render_verify(checked: dict[str, list[FileStatus]]) -> str:
    """The table of ``cnnlab data verify``: one line per file, ok, missing or corrupt."""
    lines = [f"{name:<14} {st.state:<8} {st.file.name}" + (f"  ({st.path})" if st.path else "")
             + (f"  MD5 {st.actual_md5}, expected {st.file.md5}" if st.state == "corrupt" else "")
             for name, status in checked.items() for st in status]
    return "\n".join(lines) + "\n"
