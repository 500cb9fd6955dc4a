"""The near/far OOD benchmark table (OpenOOD style), built from a run's summary numbers alone.

lab4.ood with ``ood.benchmark=true`` puts ``ood.evaluate.benchmark_keys`` in its summary:
``<near|far>.<set>.<detector>.<auroc|fpr95>`` per OOD set and ``<near|far>.<detector>.<metric>``, the mean over
the group's sets. A run over several ``--seeds`` has the mean over seeds under those keys and the std under
``<key>.std`` (``runner.experiment.aggregate``), so one builder serves a single seed and many: the report shows
mean ± std, and the best detector of each column (highest AUROC, lowest FPR95; every tied one) in bold. The
same cells go to ``ood_benchmark.csv`` in the run folder, one row per (group, set, detector, metric).
Torch-free: ``dllab report`` builds the table of any finished run.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path

from dllab.core.files import atomic_write_text

GROUPS = ("near", "far")
METRICS = {"auroc": "AUROC", "fpr95": "FPR95"}   # the table's metrics and their column names
HIGHER_IS_BETTER = {"auroc": True, "fpr95": False}
MEAN = "mean"                                      # the ``set`` of a group's mean over its sets
CSV_FILE = "ood_benchmark.csv"
TITLE = "Near/far OOD benchmark (AUROC, FPR95; mean ± std over seeds; best per column in bold)"


@dataclass(frozen=True)
class Cell:
    """One number of the table: ``group`` near|far, ``set`` an OOD set or MEAN, its mean and std over seeds
    (None with one seed)."""
    group: str
    set: str
    detector: str
    metric: str
    mean: float
    std: float | None

    @property
    def column(self) -> tuple[str, str, str]:
        return self.group, self.set, self.metric


def _parse_key(key: str) -> tuple[str, str, str, str] | None:
    """(group, set, detector, metric) of a benchmark key, or None for any other summary key."""
    parts = key.split(".")
    if parts[0] not in GROUPS or parts[-1] not in METRICS or len(parts) not in (3, 4):
        return None
    return (parts[0], MEAN if len(parts) == 3 else parts[1], parts[-2], parts[-1])


def is_benchmark_key(key: str) -> bool:
    """Whether ``key`` (or the std key ``<key>.std``) is one of the benchmark's numbers."""
    return _parse_key(key.removesuffix(".std")) is not None


def benchmark_cells(summary: dict[str, float]) -> list[Cell]:
    """The benchmark's numbers in ``summary`` (empty when the run has no benchmark), in the summary's order."""
    cells = []
    for key, value in summary.items():
        parsed = _parse_key(key)
        if parsed is not None and isinstance(value, (int, float)):
            std = summary.get(f"{key}.std")
            cells.append(Cell(*parsed, float(value), float(std) if isinstance(std, (int, float)) else None))
    return cells


def columns(cells: list[Cell]) -> list[tuple[str, str, str]]:
    """(group, set, metric) per column: near's sets, near's mean, far's sets, far's mean; AUROC before FPR95."""
    sets = {g: list(dict.fromkeys(c.set for c in cells if c.group == g and c.set != MEAN)) for g in GROUPS}
    return [(g, s, m) for g in GROUPS if any(c.group == g for c in cells)
            for s in [*sets[g], MEAN] for m in METRICS]


def best_cells(cells: list[Cell]) -> set[Cell]:
    """The best cell of each column by its mean (every one tied for best); NaN is never best."""
    best: set[Cell] = set()
    for col in dict.fromkeys(c.column for c in cells):
        finite = [c for c in cells if c.column == col and not math.isnan(c.mean)]
        if finite:
            pick = max if HIGHER_IS_BETTER[col[2]] else min
            top = pick(c.mean for c in finite)
            best.update(c for c in finite if c.mean == top)
    return best


def column_name(col: tuple[str, str, str]) -> str:
    group, s, metric = col
    return f"{group} {s} {METRICS[metric]}" if s == MEAN else f"{group}: {s} {METRICS[metric]}"


def table_rows(cells: list[Cell]) -> tuple[list[str], list[tuple[str, list[Cell | None]]]]:
    """(header, rows): one row (detector, its cells) per detector, one column per (group, set, metric); a cell
    the run lacks is None."""
    cols = columns(cells)
    by_key = {(c.detector, *c.column): c for c in cells}
    detectors = list(dict.fromkeys(c.detector for c in cells))
    return (["detector", *map(column_name, cols)],
            [(d, [by_key.get((d, *col)) for col in cols]) for d in detectors])


def groups_used(cells: list[Cell]) -> dict[str, list[str]]:
    """{"near": [sets], "far": [sets]}: the OOD sets of each group, as the report names them."""
    return {g: list(dict.fromkeys(c.set for c in cells if c.group == g and c.set != MEAN)) for g in GROUPS}


def benchmark_csv(cells: list[Cell]) -> str:
    """The table as CSV text: group, set, detector, metric, mean, std (empty with one seed), best (1 or 0)."""
    best = best_cells(cells)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["group", "set", "detector", "metric", "mean", "std", "best"])
    for c in cells:
        writer.writerow([c.group, c.set, c.detector, c.metric, repr(c.mean),
                         "" if c.std is None else repr(c.std), int(c in best)])
    return out.getvalue()


def write_benchmark_csv(folder: Path, summary: dict[str, float]) -> Path | None:
    """``ood_benchmark.csv`` in ``folder`` (written atomically) when ``summary`` holds the benchmark, else None."""
    cells = benchmark_cells(summary)
    if not cells:
        return None
    path = Path(folder) / CSV_FILE
    atomic_write_text(path, benchmark_csv(cells))
    return path
