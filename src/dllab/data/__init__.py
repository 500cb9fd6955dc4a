"""Datasets: images as in-memory uint8 tensors (images.py); text splits and tokenisation (text.py)."""
from __future__ import annotations

import os
from pathlib import Path


def data_root(root: str = "") -> Path:
    """Where datasets live: ``--set data.root=...``, else ``$DLLAB_DATA``, else ``./data`` (every dataset)."""
    return Path(root or os.environ.get("DLLAB_DATA") or "data")


def cache_dir() -> Path:
    """Where decoded datasets are cached: ``$DLLAB_CACHE``, else ``./.cache/dllab`` (never the home folder)."""
    return Path(os.environ.get("DLLAB_CACHE") or Path(".cache") / "dllab")
