"""MLflow: one MLflow run per dllab run (the optional sink ``log.sinks=[...,mlflow]``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow

from dllab.core import environ
from dllab.core.registry import register


@register("sink", "mlflow", requires="mlflow")
class MLflowSink:
    """One MLflow run per dllab run, in ``./mlruns`` unless MLFLOW_TRACKING_URI names another store."""

    def __init__(self, path: Path, experiment: str, hparams: dict[str, Any]):
        if not environ.mlflow_tracking_uri():
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
