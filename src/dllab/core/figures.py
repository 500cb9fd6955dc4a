"""Matplotlib figures leaving memory: saved as a PNG at the reports' resolution, written atomically
(``files.atomic_write``), then closed. Imports pyplot: the modules that save or drop figures import this one,
not ``files``, so that writing other files never loads matplotlib."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt

from dllab.core.files import atomic_write


def save_png(fig, path: Path) -> Path:
    """``fig`` as a PNG at ``path``, written atomically, then closed."""
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
    finally:
        plt.close(fig)
    return path


def close_figure(fig) -> None:
    """``fig`` dropped unsaved (pyplot keeps every figure it made until it is closed)."""
    plt.close(fig)
