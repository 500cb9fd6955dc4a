"""Tracking sinks: a run's numbers and figures, also sent to TensorBoard (always) and MLflow / W&B (optional).

``runs.Run`` owns one ``Tracker``, which its records (``run_records``) feed with what they record (history
rows, figures, metrics), so no experiment knows about it; the two training loops add the loss every
``log.every_steps`` steps. Every sink works offline: TensorBoard event files in the run folder (so
``tensorboard --logdir runs/`` shows every run), MLflow in a local ``./mlruns`` store (unless
``MLFLOW_TRACKING_URI`` says otherwise), W&B in offline mode (``wandb sync`` uploads later, if ever).
The libraries are imported only when a run writes to them: registering experiments stays torch-free.

A sink is a class registered as a ``sink`` with the module it needs (``requires=``): ``log.sinks`` is checked
against the registered names, each once, with its library installed (``config.LogConfig``), before any run.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

from dllab.core import registry
from dllab.core.registry import register


def _numbers(row: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in row.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("epoch",)}


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk: the image summary needs them, and decoding is not needed."""
    return struct.unpack(">II", png[16:24])


def flat_config(cfg) -> dict[str, Any]:
    """Every config key (dotted) with a value the sinks accept as a hyperparameter (lists as text)."""
    from dllab.core.config import flatten, to_dict

    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flatten(to_dict(cfg)).items()}


@register("sink", "tensorboard", requires="tensorboard")
class TensorBoardSink:
    """Event files in the run folder, written with torch's SummaryWriter; hparams go in the same file."""

    def __init__(self, path: Path, experiment: str, hparams: dict[str, Any]):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(path), flush_secs=30)
        self.hparams = hparams

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, v in values.items():
            self.writer.add_scalar(tag, v, step)

    def image(self, tag: str, file: Path, png: bytes) -> None:
        # The PNG the run just saved goes in as is: no second rendering of the figure.
        from tensorboard.compat.proto.summary_pb2 import Summary

        width, height = png_size(png)
        img = Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=png)
        self.writer.file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=img)]))

    def finish(self, summary: dict[str, float]) -> None:
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        metrics = {f"summary/{k}": v for k, v in summary.items()}
        for part in hparams_summary(self.hparams, metrics):
            self.writer.file_writer.add_summary(part)
        self.scalars(metrics, 0)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


@register("sink", "mlflow", requires="mlflow")
class MLflowSink:
    """One MLflow run per dllab run, in ``./mlruns`` unless MLFLOW_TRACKING_URI names another store."""

    def __init__(self, path: Path, experiment: str, hparams: dict[str, Any]):
        import mlflow

        if not os.environ.get("MLFLOW_TRACKING_URI"):
            mlflow.set_tracking_uri(Path("mlruns").resolve().as_uri())
        mlflow.set_experiment(experiment)
        self.mlflow = mlflow
        mlflow.start_run(run_name=path.name)
        mlflow.log_params({k: str(v)[:500] for k, v in hparams.items()})

    def scalars(self, values: dict[str, float], step: int) -> None:
        self.mlflow.log_metrics(values, step=step)

    def image(self, tag: str, file: Path, png: bytes) -> None:
        self.mlflow.log_artifact(str(file))

    def finish(self, summary: dict[str, float]) -> None:
        self.mlflow.log_metrics({f"summary/{k}": v for k, v in summary.items()})

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.mlflow.end_run()


@register("sink", "wandb", requires="wandb")
class WandbSink:
    """A W&B run in offline mode, its files in the run folder (``wandb sync`` uploads them, if ever)."""

    def __init__(self, path: Path, experiment: str, hparams: dict[str, Any]):
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project=experiment, name=path.name, dir=str(path), mode="offline", config=hparams)

    def scalars(self, values: dict[str, float], step: int) -> None:
        # W&B wants one rising step per run; each variant's epochs restart at 1, so the epoch is a field.
        self.run.log({**values, "epoch": step})

    def image(self, tag: str, file: Path, png: bytes) -> None:
        self.run.log({tag: self.wandb.Image(str(file))})

    def finish(self, summary: dict[str, float]) -> None:
        self.run.summary.update({f"summary/{k}": v for k, v in summary.items()})

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.run.finish()


class Tracker:
    """The sinks of one run folder, opened on first use (a run that logs nothing opens nothing)."""

    def __init__(self, path: Path, experiment: str, cfg):
        self.path, self.experiment, self.cfg = Path(path), experiment, cfg
        log = getattr(cfg, "log", None)
        self.names: list[str] = list(log.sinks) if log is not None else []
        self.every_steps: int = log.every_steps if log is not None else 0
        self._sinks: list | None = None

    @property
    def sinks(self) -> list:
        if self._sinks is None:   # a Run without a config (benchmarks, tests) has no sinks
            hparams = flat_config(self.cfg) if self.names else {}
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
