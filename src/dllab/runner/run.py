"""A run: its folder, what it records, its trained state and its tracking sinks, behind one small facade.

runs/<experiment>/<timestamp>-<profile>/
    config.yaml    resolved config              env.json     versions, device, git commit, command, data
    history.csv    one row per epoch per variant
    metrics.json   {"summary": {flat headline numbers}, "variants": {...}}
    results/<variant>.json   a finished variant (resume skips it)
    checkpoints/<variant>.pt end-of-epoch training state (resume continues it)
    models/<variant>.pt      a finished variant's weights
    models/<variant>/        the same as a usable model: model.safetensors, model.json, MODEL.md
    *.png, report_state.json, report.md, report.html

``Run`` holds the parts and is what the runner and the experiments use; the code below them never sees it
(they return values and report through ``dllab.core.events``):
    run.folder       run_folder.RunFolder: created atomically, reopened and locked, env.json, log.txt
    run.records      run_records.RunRecords: history, results, metrics, report state, arrays
    run.checkpoints  run_checkpoints.RunCheckpoints: checkpoints/ and models/
    run.tracker      tracking.Tracker: TensorBoard and the other sinks of log.sinks, fed by the records
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator

from dllab.core import distributed, machine
from dllab.core.events import CheckpointIO, TrainingHooks
from dllab.core.items import Item
from dllab.store.checkpoints import RunCheckpoints
from dllab.store.folder import RunFolder
from dllab.store.records import RunRecords
from dllab.tracking.tracker import Tracker
from dllab.train.checkpoint import FileCheckpoint
from dllab.train.saved_model import ModelContext, SavedModelIO


class Run:
    """A run folder plus the bookkeeping experiments do in it.

    Under torchrun every rank holds a Run (rank 0's, broadcast by the runner), but only rank 0 touches the
    folder: on the other ranks the writing methods update the in-memory state and write nothing, ``log``
    prints nothing, and what is read (a finished variant's result, a cached array) is read by rank 0 and
    handed to the others.
    """

    def __init__(self, path: Path, experiment: str, cfg, quiet: bool = False, env: dict[str, Any] | None = None):
        self.experiment = experiment
        self.cfg = cfg
        self.folder = RunFolder(path, quiet, env)
        self.tracker = Tracker(self.folder.path, experiment, cfg, quiet, log=self.folder.log)
        self.records = RunRecords(self.folder, self.tracker)
        self.checkpoints = RunCheckpoints(self.folder.path)
        self._device = None

    @classmethod
    def create(cls, experiment: str, cfg, out: str | None = None, quiet: bool = False,
               env: dict[str, Any] | None = None, on_created: Callable[[Path], Any] | None = None) -> Run:
        """A new run folder (``RunFolder.create``: atomic, locked, ``on_created(path)`` right after)."""
        folder = RunFolder.create(experiment, cfg, out, quiet, env, on_created)
        return cls(folder.path, experiment, cfg, quiet, folder.env)

    @classmethod
    def open_for_resume(cls, path: str, registry_lookup, quiet: bool = False) -> Run:
        """The run folder ``path`` to continue (``RunFolder.open_for_resume``: checked, then locked)."""
        folder, exp, cfg = RunFolder.open_for_resume(path, registry_lookup, quiet)
        return cls(folder.path, exp.name, cfg, quiet, folder.env)

    # --- what the folder is --------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self.folder.path

    @property
    def env(self) -> dict[str, Any]:
        return self.folder.env

    @property
    def quiet(self) -> bool:
        return self.folder.quiet

    @property
    def writes(self) -> bool:
        """Whether this process writes the run folder: always, except on torchrun's ranks other than 0."""
        return self.folder.writes

    @property
    def device(self):
        """The torch.device of this run (``cfg.device`` resolved once; under torchrun on CUDA, this rank's
        GPU); experiments and loops use it."""
        if self._device is None:
            self._device = distributed.device_for(machine.resolve_device(self.cfg.device))
        return self._device

    def write_env(self, **extra) -> None:
        self.folder.write_env(**extra)
        self.tracker.label(**extra)

    def check_source(self, key: str, source: str) -> None:
        self.folder.check_source(key, source)

    # --- events.Reporter: the log and the report's notes ---------------------------------------------
    def log(self, msg: str, echo: bool = True) -> None:
        self.folder.log(msg, echo)

    def note(self, msg: str) -> None:
        """A line for the report (and the console): fallbacks, skipped variants, substitutions."""
        self.records.note(msg)

    # --- the report ----------------------------------------------------------------------------------
    def add(self, *items: Item) -> None:
        """The tables, figures and notes the report functions returned, into this run's report."""
        self.records.add(*items)

    @property
    def notes(self) -> list[str]:
        return self.records.notes

    @property
    def tables(self) -> list[tuple[str, list[str], list[list[Any]]]]:
        return self.records.tables

    @property
    def figures(self) -> list[tuple[str, str]]:
        return self.records.figures

    # --- history, results, arrays, metrics -----------------------------------------------------------
    @property
    def history(self) -> list[dict[str, Any]]:
        return self.records.history

    def add_history(self, rows: list[dict[str, Any]], variant: str) -> None:
        self.records.add_history(rows, variant)

    def variant_history(self, variant: str) -> list[dict[str, Any]]:
        return self.records.variant_history(variant)

    def result(self, variant: str) -> dict | None:
        return distributed.on_main(self.records.result, variant)

    def save_result(self, variant: str, result: dict) -> None:
        self.records.save_result(variant, result)

    def save_arrays(self, name: str, arrays: dict) -> Path:
        return self.records.save_arrays(name, arrays)

    def cached_arrays(self, name: str, key: str, compute: Callable[[], dict]) -> tuple[dict, bool]:
        """``records.cached_arrays``: under torchrun rank 0 reads or computes the arrays, and hands them to the
        other ranks."""
        return distributed.on_main(self.records.cached_arrays, name, key, compute)

    def write_metrics(self, summary: dict[str, float], **extra) -> None:
        self.records.write_metrics(summary, **extra)

    def metrics(self) -> dict:
        return distributed.on_main(self.records.metrics)

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
                self.checkpoints.discard_checkpoint(name)
        return result, False

    # --- what training code gets instead of the run (dllab.core.events) ------------------------------------
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
        return FileCheckpoint(self.checkpoint_path(variant))

    def model_io(self, variant: str) -> CheckpointIO:
        """models/<variant>.pt, and the models/<variant>/ folder of the same weights (``SavedModelIO``)."""
        return SavedModelIO(self.checkpoints.model(variant), self.checkpoints.model_folder(variant),
                            ModelContext.of(self.experiment, self.cfg))

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

    @contextlib.contextmanager
    def tracking(self) -> Iterator[None]:
        """The tracking sinks open as the work starts (one that cannot start is a warning, or with
        log.on_sink_error=fail a DllabError before any work) and close when it ends, saying how it ended."""
        if not self.writes:
            yield
            return
        self.tracker.start(self.history)
        ok = False
        try:
            yield
            ok = True
        finally:
            self.tracker.close(ok)

    # --- training: checkpoints and the step loss -----------------------------------------------------
    def checkpoint_path(self, variant: str) -> Path:
        return self.checkpoints.checkpoint(variant)

    def log_step(self, variant: str, step: int, loss) -> None:
        """The training loss (a tensor) of step ``step`` to the sinks, every ``log.every_steps`` steps: only
        then is it read from the device (``.item()`` waits for it)."""
        if self.writes:
            self.tracker.step(variant, step, loss)
