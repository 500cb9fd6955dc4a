"""MLflow: one MLflow run per dllab run (the optional sink ``log.sinks=[...,mlflow]``, ``pip install
'dllab[mlflow]'``, MLflow 3).

The store is ``$MLFLOW_TRACKING_URI``, else MLflow 3's own default, a local sqlite store: ``sqlite:///<the
current folder>/mlflow.db`` with the artifacts in ``./mlruns/`` (named here, so that an old ``./mlruns`` file
store, which MLflow would keep using, is never picked). The run gets the config as params, tags (experiment,
profile, seed, run folder), each history row's numbers as ``<variant>/<column>`` at step = epoch, the step
loss as ``<variant>/step_loss`` at its step, the summary as ``summary/<key>``, and as artifacts the figures as
they are saved, then, at the end, config.yaml, env.json, metrics.json, report.md, report.html and the saved
models as plain files under ``models/`` (dllab's models are weights plus a spec, read back with
``dllab.load``: MLflow's pytorch flavour would pickle the model's class instead, and dllab never loads pickles).

A sweep is one parent MLflow run (its sweep.json, sweep.csv and report as artifacts) with one nested run per
point: the points are other processes, so the sweep hands them the parent's id (``DLLAB_MLFLOW_PARENT_RUN_ID``)
and its store (``MLFLOW_TRACKING_URI``), and each point's run carries MLflow's ``mlflow.parentRunId`` tag,
which is what nesting is in MLflow. The same sweep run again continues under the same parent.
"""
from __future__ import annotations

import hashlib
import logging
import re
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from dllab.core import environ
from dllab.core.registry import register

RUN_FILES = ("config.yaml", "env.json", "metrics.json", "report.md", "report.html")
SWEEP_FILES = ("sweep.json", "sweep.csv", "report.md", "report.html")
BATCH = 100                       # MLflow takes at most 100 params (1000 metrics) per log_batch
PARAM_CHARS = 6000                # MLflow's longest param value
NOT_IN_A_KEY = re.compile(r"[^\w./\- :]")   # what MLflow refuses in a metric or param name


def tracking_uri() -> str:
    return environ.mlflow_tracking_uri() or f"sqlite:///{Path.cwd() / 'mlflow.db'}"


def key(name: str) -> str:
    return NOT_IN_A_KEY.sub("_", name)


def quieten(quiet: bool) -> None:
    """Under --quiet, MLflow's and its database migrations' INFO lines (a new sqlite store) are not shown."""
    if quiet:
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)


def experiment_id(client: MlflowClient, name: str) -> str:
    """The MLflow experiment named after the dllab experiment, made on first use (two points may race)."""
    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return client.create_experiment(name)
        except MlflowException:   # another point made it meanwhile
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
    return found.experiment_id


def log_params(client: MlflowClient, run_id: str, hparams: dict[str, Any]) -> None:
    params = [Param(key(k), str(v)[:PARAM_CHARS]) for k, v in hparams.items()]
    for i in range(0, len(params), BATCH):
        client.log_batch(run_id, params=params[i:i + BATCH])


def log_files(client: MlflowClient, run_id: str, folder: Path, names: tuple[str, ...]) -> None:
    for name in names:
        if (folder / name).is_file():
            client.log_artifact(run_id, str(folder / name))


@register("sink", "mlflow", requires="mlflow")
class MLflowSink:
    """One MLflow run per dllab run, nested under the sweep's run when the run is a sweep's point."""

    def __init__(self, path: Path, experiment: str, hparams: dict[str, Any], quiet: bool = False):
        quieten(quiet)
        self.path = Path(path)
        self.client = MlflowClient(tracking_uri())   # the store is reached here: an unreachable one fails now
        tags = {"dllab.experiment": experiment, "dllab.profile": str(hparams.get("profile", "")),
                "dllab.seed": str(hparams.get("seed", "")), "dllab.folder": str(self.path.resolve())}
        parent = environ.mlflow_parent_run_id()
        if parent:
            tags[MLFLOW_PARENT_RUN_ID] = parent
        run = self.client.create_run(experiment_id(self.client, experiment), run_name=self.path.name, tags=tags)
        self.run_id = run.info.run_id
        log_params(self.client, self.run_id, hparams)

    def params(self, values: dict[str, Any]) -> None:
        log_params(self.client, self.run_id, values)

    @classmethod
    def open_sweep(cls, folder: Path, experiment: str, hparams: dict[str, Any], quiet: bool) -> MLflowSweep:
        return MLflowSweep(Path(folder), experiment, hparams, quiet)

    def _metrics(self, values: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        metrics = [Metric(key(k), v, now, step) for k, v in values.items()]
        for i in range(0, len(metrics), BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + BATCH])

    def epoch(self, variant: str, numbers: dict[str, float], epoch: int) -> None:
        self._metrics({f"{variant}/{k}": v for k, v in numbers.items()}, epoch)

    def step_loss(self, variant: str, loss: float, step: int, epoch: int) -> None:
        self._metrics({f"{variant}/step_loss": loss}, step)

    def image(self, tag: str, file: Path, png: bytes) -> None:
        self.client.log_artifact(self.run_id, str(file))

    def finish(self, summary: dict[str, float]) -> None:
        self._metrics({f"summary/{k}": v for k, v in summary.items()}, 0)

    def flush(self) -> None:
        pass

    def close(self, ok: bool = True) -> None:
        """The run's files and models as artifacts, then the run ends (FAILED when its work did not finish)."""
        log_files(self.client, self.run_id, self.path, RUN_FILES)
        models = self.path / "models"
        if models.is_dir() and any(models.iterdir()):
            self.client.log_artifacts(self.run_id, str(models), "models")
        self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")


class MLflowSweep:
    """A sweep's parent MLflow run: found again by the sweep folder's tag when the same sweep continues."""

    def __init__(self, folder: Path, experiment: str, hparams: dict[str, Any], quiet: bool):
        quieten(quiet)
        self.folder, uri = folder, tracking_uri()
        self.client = MlflowClient(uri)
        exp_id = experiment_id(self.client, experiment)
        sweep_id = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
        found = self.client.search_runs([exp_id], f"tags.`dllab.sweep_id` = '{sweep_id}'", max_results=1)
        if found:
            self.run_id = found[0].info.run_id
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            tags = {"dllab.experiment": experiment, "dllab.sweep_id": sweep_id, "dllab.folder": str(folder.resolve())}
            self.run_id = self.client.create_run(exp_id, run_name=f"sweep {folder.name}", tags=tags).info.run_id
            log_params(self.client, self.run_id, hparams)
        self.env = {"MLFLOW_TRACKING_URI": uri, environ.MLFLOW_PARENT_RUN: self.run_id}

    def close(self, ok: bool) -> None:
        log_files(self.client, self.run_id, self.folder, SWEEP_FILES)
        for png in sorted(self.folder.glob("sweep_*.png")):
            self.client.log_artifact(self.run_id, str(png))
        self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")
