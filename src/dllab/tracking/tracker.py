"""The tracker: a run's numbers and figures, also sent to its sinks, TensorBoard (always) and MLflow / W&B
(optional), one module each (``tensorboard_sink``, ``mlflow_sink``, ``wandb_sink``).

The runner's ``Run`` owns one ``Tracker``, which its records (``store.records``) feed with what they record
(history rows, figures, metrics), so no experiment knows about it; the training loop adds the loss every
``log.every_steps`` steps. Every sink works offline: TensorBoard event files in the run folder (so
``tensorboard --logdir runs/`` shows every run), MLflow in a local ``./mlruns`` store (unless
``MLFLOW_TRACKING_URI`` says otherwise), W&B in offline mode (``wandb sync`` uploads later, if ever).
A sink's module (and its library) is imported only when a run writes to it (``registry.get``).

A sink is a class registered as a ``sink`` with the module it needs (``requires=``): ``log.sinks`` is checked
against the registered names, each once, with its library installed (``config.LogConfig``), before any run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from dllab.core import registry
from dllab.core.config import flatten, to_dict


def _numbers(row: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in row.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("epoch",)}


def flat_config(cfg) -> dict[str, Any]:
    """Every config key (dotted) with a value the sinks accept as a hyperparameter (lists as text)."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flatten(to_dict(cfg)).items()}


# What a run records of its own parts (env.json's dataset and model names), shown beside the config's keys in the
# hparams: the config only says data.name=imagefolder, or a factory's import path under model.factory.
LABELS = ("dataset", "model")


class Tracker:
    """The sinks of one run folder, opened on first use (a run that logs nothing opens nothing)."""

    def __init__(self, path: Path, experiment: str, cfg):
        self.path, self.experiment, self.cfg = Path(path), experiment, cfg
        log = getattr(cfg, "log", None)
        self.names: list[str] = list(log.sinks) if log is not None else []
        self.every_steps: int = log.every_steps if log is not None else 0
        self._sinks: list | None = None
        self.labels: dict[str, str] = {}

    def label(self, **env) -> None:
        """Keep the ``LABELS`` among ``env`` (what the run writes to env.json) for the hparams; the data and
        model are known before the first epoch opens the sinks."""
        self.labels.update({k: str(v) for k, v in env.items() if k in LABELS})

    @property
    def sinks(self) -> list:
        if self._sinks is None:   # a Run without a config (benchmarks, tests) has no sinks
            hparams = {**flat_config(self.cfg), **self.labels} if self.names else {}
            self._sinks = [registry.get("sink", n)(self.path, self.experiment, hparams) for n in self.names]
        return self._sinks

    def epoch_rows(self, variant: str, rows: list[dict[str, Any]]) -> None:
        """History rows as ``<variant>/<column>`` scalars at step = epoch (the numbers of history.csv)."""
        for row in rows:
            values = {f"{variant}/{k}": v for k, v in _numbers(row).items()}
            for s in self.sinks:
                s.scalars(values, int(row.get("epoch", 0)))
        self.flush()

    def step(self, variant: str, step: int, loss) -> None:
        """The training loss (a tensor) of step ``step``, every ``log.every_steps`` steps: only then is it
        read from the device (``float()`` waits for it)."""
        if self.every_steps and self.names and step % self.every_steps == 0:
            self.step_loss(variant, step, float(loss))

    def step_loss(self, variant: str, step: int, loss: float) -> None:
        for s in self.sinks:
            s.scalars({f"{variant}/step_loss": loss}, step)

    def figure(self, file: Path) -> None:
        if self.names:
            png = file.read_bytes()
            for s in self.sinks:
                s.image(file.stem, file, png)
            self.flush()

    def finish(self, summary: dict[str, float]) -> None:
        numbers = _numbers(summary)
        for s in self.sinks:
            s.finish(numbers)
        self.close()

    def flush(self) -> None:
        for s in self._sinks or []:
            s.flush()

    def close(self) -> None:
        for s in self._sinks or []:
            s.close()
        self._sinks = None
