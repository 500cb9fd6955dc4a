"""Datasets: images as in-memory uint8 tensors (images.py); text splits and tokenisation (text.py)."""
from __future__ import annotations

from pathlib import Path

from dllab.core import environ


def data_root(root: str = "") -> Path:
    """Where datasets live: ``--set data.root=...``, else ``$DLLAB_DATA``, else ``./data`` (every dataset)."""
    return Path(root) if root else environ.data_root()


def class_quotas(sizes: list[int], n: int) -> list[tuple[int, int]]:
    """How a class-balanced subset of ``n`` rows splits over classes of ``sizes`` rows: ``(class, rows)``
    pairs, smallest class first (ties in class order), each as close to an equal share as its size allows; a
    class too small for its share leaves the rest to the larger ones. Images and text subsets both use it;
    each draws the rows with its own seeded generator."""
    order = sorted(range(len(sizes)), key=lambda c: sizes[c])
    quotas, left = [], n
    for i, c in enumerate(order):
        take = min(sizes[c], left // (len(order) - i))
        quotas.append((c, take))
        left -= take
    return quotas
