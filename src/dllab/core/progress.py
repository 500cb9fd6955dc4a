"""The one progress bar every loop shows (image training, text training, feature extraction)."""
from __future__ import annotations

import sys
from typing import Iterable

from tqdm.auto import tqdm

from dllab.core import ranks


def progress_bar(iterable: Iterable | None = None, total: int | None = None, desc: str = "", show: bool = True):
    """A tqdm bar on stderr that clears itself when done; shown only when ``show`` (not ``--quiet``) and stderr
    is a terminal, so logs and captured output never fill with bar redraws; under torchrun, by rank 0 only.
    ``bar.disable`` says whether it is shown (a caller skips work, such as reading a loss off the GPU, that only
    the bar needs)."""
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True,
                disable=not show or not sys.stderr.isatty() or not ranks.is_main())


def mmss(seconds: float) -> str:
    return f"{int(seconds // 60)}:{int(round(seconds % 60)):02d}" if seconds == seconds else "-"
