"""Readers for the file formats the image datasets arrive in, each checking what it reads.

A damaged or hostile file is refused with one ``DllabError`` line that names the file and the check it
failed, never a traceback, and nothing in a file is ever run: MNIST's IDX files are parsed with numpy,
CIFAR's pickled batches go through an unpickler that only builds dicts, lists, strings, numbers and numpy
arrays (``pickle.load``, as torchvision uses it, would call whatever a crafted file names).
"""
from __future__ import annotations

import codecs
import gzip
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from dllab import DataError


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


# --- image files (ImageFolder trees) ---------------------------------------------------------------

def decode_image(path: Path, mode: str = "RGB") -> np.ndarray:
    """An image file as uint8 (H, W, 3). Grey, palette, CMYK and RGBA images are converted to RGB (alpha is
    dropped), as torchvision's ImageFolder loader does, so one tree may mix them. ``mode="L"``: grey, (H, W)."""
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert(mode))
    except Exception as e:  # not an image, truncated, a decompression bomb...: PIL raises many types
        raise DataError(f"{path}: not a readable image ({_first_line(e)})") from e


# --- MNIST's IDX files ----------------------------------------------------------------------------

IDX_LABELS, IDX_IMAGES = 2049, 2051      # magic numbers: unsigned bytes, 1 resp. 3 dimensions


def read_idx(path: Path, magic: int) -> np.ndarray:
    """An IDX file of unsigned bytes (``path`` or ``path.gz``) as a uint8 array of the header's shape.

    Checks the magic number, that the header's dimensions are non-zero and that the file holds exactly
    the bytes they announce (a truncated or padded file is refused, not cut or read short)."""
    if not path.exists() and path.with_name(path.name + ".gz").exists():
        path = path.with_name(path.name + ".gz")
    try:
        data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: could not be read ({_first_line(e)})") from e
    ndim = {IDX_LABELS: 1, IDX_IMAGES: 3}[magic]
    header = 4 * (1 + ndim)
    if len(data) < header:
        raise DataError(f"{path}: {len(data)} bytes, shorter than an IDX header; the file is truncated")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DataError(f"{path}: magic number {found}, expected {magic} (an IDX file of "
                        f"{'labels' if magic == IDX_LABELS else 'images'}); the file is damaged or another file")
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims, dtype=np.int64))
    if 0 in dims or len(data) != expected:
        raise DataError(f"{path}: the header announces {' x '.join(map(str, dims))} bytes of data "
                        f"({expected} bytes in all) but the file has {len(data)}; it is truncated or damaged")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def read_idx_pair(images_path: Path, labels_path: Path, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W) and labels (N,) from an IDX pair, checked to match and to be ``< num_classes``."""
    x = read_idx(images_path, IDX_IMAGES)
    y = read_idx(labels_path, IDX_LABELS)
    if len(x) != len(y):
        raise DataError(f"{images_path} holds {len(x)} images but {labels_path} holds {len(y)} labels")
    bad = np.flatnonzero(y >= num_classes)
    if len(bad):
        raise DataError(f"{labels_path}: label {y[bad[0]]} at position {bad[0]} is outside 0..{num_classes - 1} "
                        f"({len(bad)} such labels); the file is damaged")
    return x, y


# --- CIFAR's pickled batches ----------------------------------------------------------------------

# Everything the genuine batches (pickled by Python 2's cPickle) and numpy's own pickles of arrays refer to.
_ARRAY = np.ndarray(0)
_SAFE_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _ARRAY.__reduce__()[0],
    ("numpy._core.multiarray", "_reconstruct"): _ARRAY.__reduce__()[0],
    ("numpy.core.numeric", "_frombuffer"): _ARRAY.__reduce_ex__(5)[0],
    ("numpy._core.numeric", "_frombuffer"): _ARRAY.__reduce_ex__(5)[0],
    ("numpy.core.multiarray", "scalar"): np.int64(0).__reduce__()[0],    # numpy scalars (labels made with numpy)
    ("numpy._core.multiarray", "scalar"): np.int64(0).__reduce__()[0],
    ("_codecs", "encode"): codecs.encode,       # how Python 3 pickles bytes at protocol 2
}


class _Refused(pickle.UnpicklingError):
    pass


class _DataUnpickler(pickle.Unpickler):
    """Builds containers, strings, numbers and numpy arrays; refuses every other callable a file names."""

    def find_class(self, module: str, name: str):
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError as e:
            raise _Refused(f"{module}.{name}") from e


def load_pickled_data(path: Path):
    """Unpickle a data file with ``_DataUnpickler`` (Python 2 strings decoded as latin-1, as torchvision does)."""
    try:
        with open(path, "rb") as f:
            return _DataUnpickler(f, encoding="latin1").load()
    except _Refused as e:
        raise DataError(f"{path}: refused to unpickle: the file asks to call {e}, which a data file never "
                        "needs (it may be crafted to run code); replace it with the original file") from e
    except Exception as e:  # truncated, garbled, not a pickle at all: pickle raises many types
        raise DataError(f"{path}: not a readable pickled data file ({_first_line(e)})") from e


def read_cifar_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """A CIFAR "python version" batch: uint8 images (N, 32, 32, 3) and int64 labels (N,), checked."""
    batch = load_pickled_data(path)
    if not isinstance(batch, dict) or "data" not in batch or label_key not in batch:
        raise DataError(f"{path}: not a CIFAR batch (expected a dict with 'data' and '{label_key}')")
    data, labels = batch["data"], batch[label_key]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        what = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' is {what}, expected uint8 (N, 3072)")
    try:
        y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as e:
        raise DataError(f"{path}: '{label_key}' is not a list of integers") from e
    if y.shape != (len(data),):
        raise DataError(f"{path}: {len(data)} images but '{label_key}' has shape {y.shape}")
    bad = np.flatnonzero((y < 0) | (y >= num_classes))
    if len(bad):
        raise DataError(f"{path}: label {y[bad[0]]} at position {bad[0]} is outside 0..{num_classes - 1}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), y


def read_cifar_meta(path: Path, key: str, num_classes: int) -> list[str]:
    """The class names (``label_names`` / ``fine_label_names``) of a CIFAR meta file, checked."""
    meta = load_pickled_data(path)
    names = meta.get(key) if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != num_classes or not all(isinstance(n, str) for n in names):
        raise DataError(f"{path}: expected a dict whose '{key}' lists {num_classes} class names")
    return names
