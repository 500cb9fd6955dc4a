"""What a run has measured and what its report shows, kept in its run folder:

    history.csv              one row per epoch per variant
    results/<name>.json      a finished variant or step (a resume reuses it)
    metrics.json             {"summary": {flat headline numbers}, ...}
    report_state.json        the report's notes, tables and figures (captions and PNG file names)
    *.png, *.npz             the figures, and arrays worth keeping (the numbers behind a figure, caches)

The tracker (``tracking.Tracker``) receives what is recorded: the new epochs' rows, each figure as it is
saved, the final summary. Under torchrun only rank 0 writes; the other ranks keep the same state in memory
(what rank 0 reads, ``runner.run.Run`` hands to them).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from dllab import RunFolderError
from dllab.core import untrusted
from dllab.core.files import atomic_write, atomic_write_json, save_png, write_csv
from dllab.core.items import Figure, Item, Note, Table
from dllab.store.folder import RunFolder, read_json
from dllab.tracking.tracker import Tracker


class RunRecords:
    """The records of one run folder, read back when a run is reopened (history.csv, report_state.json)."""

    def __init__(self, folder: RunFolder, tracker: Tracker):
        self.folder = folder
        self.tracker = tracker
        self.history: list[dict[str, Any]] = read_history(self.path / "history.csv")
        self.notes: list[str] = []                                      # lines the report prints under "Notes"
        self.tables: list[tuple[str, list[str], list[list[Any]]]] = []  # (title, header, rows)
        self.figures: list[tuple[str, str]] = []                        # (caption, file name)
        state = self.path / "report_state.json"
        if state.exists():
            self.notes, self.tables, self.figures = read_report_state(state)

    @property
    def path(self) -> Path:
        return self.folder.path

    # --- history, results, metrics -----------------------------------------------------------------
    def add_history(self, rows: list[dict[str, Any]], variant: str) -> None:
        """Replace the rows of ``variant`` (a resumed variant rewrites its own rows) and save; the epochs not
        saved before also go to the tracking sinks (a resume does not send the earlier ones twice)."""
        logged = {r.get("epoch") for r in self.history if r.get("variant") == variant}
        self.history = [r for r in self.history if r.get("variant") != variant] + rows
        if not self.folder.writes:
            return
        write_csv(self.path / "history.csv", self.history)
        self.tracker.epoch_rows(variant, [r for r in rows if r.get("epoch") not in logged])

    def variant_history(self, variant: str) -> list[dict[str, Any]]:
        return [r for r in self.history if r.get("variant") == variant]

    def result(self, name: str) -> dict | None:
        p = self.path / "results" / f"{name}.json"
        return read_json(p, f"; delete it to train {name} again") if p.exists() else None

    def save_result(self, name: str, result: dict) -> None:
        if self.folder.writes:
            atomic_write_json(self.path / "results" / f"{name}.json", result)

    def write_metrics(self, summary: dict[str, float], **extra) -> None:
        if not self.folder.writes:
            return
        atomic_write_json(self.path / "metrics.json", {"summary": summary, **extra})
        self.tracker.finish(summary)   # hparams beside the final numbers; closes the event files

    def metrics(self) -> dict:
        return read_metrics(self.path / "metrics.json")

    # --- the report: notes, tables, figures --------------------------------------------------------
    def add(self, *items: Item) -> None:
        """Put the report functions' items into the report, in order: a note is logged once (a repeated
        one is dropped), a table or figure replaces the one with the same title or file name, a figure is
        saved as a PNG and sent to the tracking sinks."""
        changed = False
        for item in items:
            if isinstance(item, Note):
                changed |= self._add_note(item.text)
            elif isinstance(item, Table):
                self.tables = [t for t in self.tables if t[0] != item.title] + [(item.title, item.header, item.rows)]
                changed = True
            elif isinstance(item, Figure):
                self._add_figure(item)
                changed = True
            else:
                raise TypeError(f"not a report item (Table, Figure or Note): {type(item).__name__}")
        if changed:
            self._save_report_state()

    def note(self, msg: str) -> None:
        self.add(Note(msg))

    def _add_note(self, msg: str) -> bool:
        if msg in self.notes:
            return False
        self.notes.append(msg)
        self.folder.log(f"note: {msg}")
        return True

    def _add_figure(self, figure: Figure) -> None:
        path = self.path / figure.file
        if self.folder.writes:
            save_png(figure.fig, path)
        self.figures = [f for f in self.figures if f[1] != figure.file] + [(figure.caption, figure.file)]
        if self.folder.writes:
            self.tracker.figure(path)

    def copy_report(self, other: RunRecords, prefix: str) -> None:
        """``other``'s notes, tables and figures as this report's (a multi-seed run shows its first seed's);
        ``prefix`` leads from this folder to ``other``'s figures."""
        self.notes, self.tables = list(other.notes), list(other.tables)
        self.figures = [(caption, f"{prefix}{file}") for caption, file in other.figures]
        self._save_report_state()

    def _save_report_state(self) -> None:
        if self.folder.writes:
            atomic_write_json(self.path / "report_state.json",
                              {"notes": self.notes, "tables": self.tables, "figures": self.figures})

    # --- arrays --------------------------------------------------------------------------------------
    def save_arrays(self, name: str, arrays: dict) -> Path:
        """``name`` (.npz) in the run folder, compressed and written atomically (a reader never sees half a
        file): the numbers behind a figure, so it can be redrawn without rerunning."""
        if self.folder.writes:
            atomic_write(self.path / name, lambda f: np.savez_compressed(f, **arrays))
        return self.path / name

    def cached_arrays(self, name: str, key: str, compute: Callable[[], dict]) -> tuple[dict, bool]:
        """``name`` (.npz) in the run folder: ``compute()``'s arrays, computed once and reused while ``key``
        (a string that changes with whatever they depend on) matches; a stale or damaged file is computed
        again, with a note. Returns (arrays, reused)."""
        path = self.path / name
        if path.exists():
            try:
                with np.load(path, allow_pickle=False) as z:
                    if str(z["key"]) == key:
                        return {k: z[k] for k in z.files if k != "key"}, True
                self.note(f"{name} was computed from other inputs (model, data or settings); computed again")
            except Exception as e:  # a damaged cache is rebuilt, never trusted
                self.note(f"{name} could not be read ({type(e).__name__}); computed again")
        arrays = compute()
        atomic_write(path, lambda f: np.savez(f, key=np.array(key), **arrays))
        return arrays, False


def read_metrics(path: Path) -> dict[str, Any]:
    """A run folder's metrics.json, whose ``summary`` must be an object of headline numbers."""
    m = read_json(path)
    if not isinstance(m.get("summary"), dict):
        raise RunFolderError(f"{path} is damaged: 'summary' is not an object")
    return m


def read_report_state(path: Path) -> tuple[list[str], list[tuple], list[tuple]]:
    """(notes, tables, figures) of report_state.json, checked: a damaged file is one line, not a traceback."""
    s = read_json(path)
    notes, tables, figures = s.get("notes", []), s.get("tables", []), s.get("figures", [])
    ok = (isinstance(notes, list) and all(isinstance(n, str) for n in notes)
          and isinstance(tables, list) and all(isinstance(t, list) and len(t) == 3 and isinstance(t[0], str)
                                                and isinstance(t[1], list) and isinstance(t[2], list)
                                                and all(isinstance(r, list) for r in t[2]) for t in tables)
          and isinstance(figures, list) and all(isinstance(f, list) and len(f) == 2
                                                 and all(isinstance(x, str) for x in f) for f in figures))
    if not ok:
        raise RunFolderError(f"{path} is damaged (expected notes, tables and figures lists); delete it to rebuild "
                             "the report from a resumed run")
    return list(notes), [tuple(t) for t in tables], [tuple(f) for f in figures]


def read_history(path: Path) -> list[dict[str, Any]]:
    """A history.csv as rows of numbers (strings where a cell is not one; empty cells left out); [] if absent."""
    if not path.exists():
        return []
    return [_parse_row(r) for r in untrusted.read_csv(path)]


def _parse_row(row: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in row.items():
        if v == "":
            continue
        try:
            out[k] = int(v) if v.lstrip("-").isdigit() and len(v) < 20 else float(v)
        except ValueError:   # a word (the variant's name); a number too long for int() stays its float
            out[k] = v
    return out
