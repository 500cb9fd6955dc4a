"""The run folder: everything a run leaves behind, written atomically, never overwritten.

runs/<experiment>/<timestamp>-<profile>/
    config.yaml    resolved config              env.json     versions, device, git commit, command, data
    history.csv    one row per epoch per variant
    metrics.json   {"summary": {flat headline numbers}, "variants": {...}}
    results/<variant>.json   a finished variant (resume skips it)
    checkpoints/<variant>.pt end-of-epoch training state (resume continues it)
    *.png, report.md, report.html
"""
from __future__ import annotations

import csv
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable

from . import DllabError
from .config import dump_yaml, load_yaml


def atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """``write(f)`` fills a temp file beside ``path``, which is then renamed onto it: a reader never sees
    half a file, and a failure (in ``write`` too) leaves ``path`` as it was. E.g.
    ``atomic_write(p, lambda f: torch.save(state, f))`` or ``lambda f: np.savez(f, **arrays)``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def default_runs_root() -> Path:
    return Path(os.environ.get("DLLAB_RUNS", "runs"))


class Run:
    """A run folder plus the bookkeeping experiments do in it."""

    def __init__(self, path: Path, experiment: str, cfg, quiet: bool = False):
        self.path = Path(path)
        self.experiment = experiment
        self.cfg = cfg
        self.quiet = quiet
        self.history: list[dict[str, Any]] = []
        self.env: dict[str, Any] = {}
        self.notes: list[str] = []          # lines the report prints under "Notes" (fallbacks, skips...)
        self.figures: list[tuple[str, str]] = []  # (caption, file name)
        self.tables: list[tuple[str, list[str], list[list[Any]]]] = []  # (title, header, rows)
        hist = self.path / "history.csv"
        if hist.exists():
            with open(hist, newline="") as f:
                self.history = [_parse_row(r) for r in csv.DictReader(f)]
        state = self.path / "report_state.json"
        if state.exists():
            s = json.loads(state.read_text())
            self.notes, self.tables = s["notes"], [tuple(t) for t in s["tables"]]
            self.figures = [tuple(f) for f in s["figures"]]

    # --- creation -----------------------------------------------------------------------------------
    @classmethod
    def create(cls, experiment: str, cfg, out: str | None = None, quiet: bool = False) -> "Run":
        if out:
            path = Path(out)
            if path.exists():
                raise DllabError(f"--out {out} already exists; choose a new folder (runs are never overwritten)"
                                 f" or continue it with --resume {out}")
        else:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            base = default_runs_root() / experiment / f"{stamp}-{cfg.profile}"
            path, i = base, 1
            while path.exists():
                i += 1
                path = base.with_name(f"{base.name}-{i}")
        try:
            path.mkdir(parents=True)
        except OSError as e:
            raise DllabError(f"cannot create run folder {path}: {e.strerror}") from None
        run = cls(path, experiment, cfg, quiet)
        atomic_write_text(path / "config.yaml", dump_yaml(cfg))
        return run

    @classmethod
    def open_for_resume(cls, path: str, registry_lookup, quiet: bool = False) -> "Run":
        p = Path(path)
        if not (p / "config.yaml").is_file() or not (p / "env.json").is_file():
            raise DllabError(f"--resume {path}: not a run folder (no config.yaml/env.json); "
                             "pass a folder that `dllab run` created")
        try:
            env = json.loads((p / "env.json").read_text())
        except json.JSONDecodeError:
            raise DllabError(f"--resume {path}: env.json is corrupt; the run cannot be resumed") from None
        exp = registry_lookup(env["experiment"])
        cfg = load_yaml(exp.config_cls, (p / "config.yaml").read_text())
        run = cls(p, exp.name, cfg, quiet)
        run.env = env
        return run

    def write_env(self, **extra) -> None:
        self.env.update(extra)
        atomic_write_json(self.path / "env.json", self.env)

    # --- logging ------------------------------------------------------------------------------------
    def log(self, msg: str, echo: bool = True) -> None:
        if echo and not self.quiet:
            print(msg, file=sys.stderr, flush=True)
        with open(self.path / "log.txt", "a") as f:
            f.write(msg + "\n")

    def note(self, msg: str) -> None:
        """A line for the report (and the console): fallbacks, skipped variants, substitutions."""
        if msg not in self.notes:
            self.notes.append(msg)
            self.log(f"note: {msg}")
            self._save_report_state()

    # --- history and results ------------------------------------------------------------------------
    def add_history(self, rows: list[dict[str, Any]], variant: str) -> None:
        """Replace the rows of ``variant`` (a resumed variant rewrites its own rows) and save."""
        self.history = [r for r in self.history if r.get("variant") != variant] + rows
        keys: list[str] = []
        for r in self.history:
            keys += [k for k in r if k not in keys]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        w.writerows(self.history)
        atomic_write_text(self.path / "history.csv", buf.getvalue())

    def variant_history(self, variant: str) -> list[dict[str, Any]]:
        return [r for r in self.history if r.get("variant") == variant]

    def result(self, variant: str) -> dict | None:
        p = self.path / "results" / f"{variant}.json"
        return json.loads(p.read_text()) if p.exists() else None

    def save_result(self, variant: str, result: dict) -> None:
        atomic_write_json(self.path / "results" / f"{variant}.json", result)

    def checkpoint_path(self, variant: str) -> Path:
        return self.path / "checkpoints" / f"{variant}.pt"

    # --- artefacts ----------------------------------------------------------------------------------
    def save_figure(self, fig, name: str, caption: str) -> Path:
        import matplotlib.pyplot as plt
        atomic_write(self.path / name, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
        plt.close(fig)
        self.figures = [f for f in self.figures if f[1] != name] + [(caption, name)]
        self._save_report_state()
        return self.path / name

    def cached_arrays(self, name: str, key: str, compute: Callable[[], dict]) -> tuple[dict, bool]:
        """``name`` (.npz) in the run folder: ``compute()``'s arrays, computed once and reused while ``key``
        (a string that changes with whatever they depend on) matches; a stale or damaged file is computed
        again, with a note. Returns (arrays, reused)."""
        import numpy as np

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

    def add_table(self, title: str, header: list[str], rows: list[list[Any]]) -> None:
        self.tables = [t for t in self.tables if t[0] != title] + [(title, header, rows)]
        self._save_report_state()

    def _save_report_state(self) -> None:
        atomic_write_json(self.path / "report_state.json",
                          {"notes": self.notes, "tables": self.tables, "figures": self.figures})

    def write_metrics(self, summary: dict[str, float], **extra) -> None:
        atomic_write_json(self.path / "metrics.json", {"summary": summary, **extra})

    def metrics(self) -> dict:
        return json.loads((self.path / "metrics.json").read_text())


def _parse_row(row: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in row.items():
        if v == "":
            continue
        try:
            out[k] = int(v) if v.lstrip("-").isdigit() else float(v)
        except ValueError:
            out[k] = v
    return out
