"""Weights & Biases: one W&B run per dllab run, in offline mode (the optional sink ``log.sinks=[...,wandb]``,
``pip install 'dllab[wandb]'``).

Every row carries its ``epoch``: a history row its epoch, a step-loss row the epoch it was trained in (and
its ``step``, numbered on across epochs). W&B wants one rising step per run while each variant's epochs
restart at 1, so W&B's own step just counts rows and the charts use ``epoch`` (or ``step``) as x-axis.
A sweep's points are one W&B group, named after the sweep folder (``WANDB_RUN_GROUP``, which W&B reads).
``--quiet`` silences W&B's own output; W&B never captures the console (dllab keeps log.txt).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import wandb

from dllab.core.registry import register

GROUP_VARIABLE = "WANDB_RUN_GROUP"


def drop_links(folder: Path) -> None:
    """Remove the links W&B leaves in the run folder (``logs/debug-core.log`` points to its log in the user's
    cache): a run folder holds only regular files and folders, or its report and resume refuse it."""
    for p in folder.rglob("*"):
        if p.is_symlink():
            p.unlink()


@dataclass
class WandbSweep:
    """A sweep's W&B side: its points join one group; nothing to close (a group is only a name)."""
    env: dict[str, str] = field(default_factory=dict)

    def close(self, ok: bool) -> None:
        pass


@register("sink", "wandb", requires="wandb")
class WandbSink:
    """A W&B run in offline mode, its files in the run folder (``wandb sync`` uploads them, if ever)."""

    def __init__(self, path: Path, experiment: str, hparams: dict[str, Any], quiet: bool = False):
        self.wandb = wandb
        # no latest-run link: a run folder holds only regular files and folders (untrusted.check_tree)
        settings = wandb.Settings(silent=quiet, console="off", symlink=False)
        self.folder = Path(path) / "wandb"
        self.run = wandb.init(project=experiment, name=Path(path).name, dir=str(path), mode="offline",
                              config=hparams, settings=settings)
        drop_links(self.folder)

    @classmethod
    def open_sweep(cls, folder: Path, experiment: str, hparams: dict[str, Any], quiet: bool) -> WandbSweep:
        return WandbSweep({GROUP_VARIABLE: f"{experiment}/{Path(folder).name}"})

    def params(self, values: dict[str, Any]) -> None:
        self.run.config.update(values, allow_val_change=True)

    def epoch(self, variant: str, numbers: dict[str, float], epoch: int) -> None:
        self.run.log({**{f"{variant}/{k}": v for k, v in numbers.items()}, "epoch": epoch})

    def step_loss(self, variant: str, loss: float, step: int, epoch: int) -> None:
        self.run.log({f"{variant}/step_loss": loss, "epoch": epoch, "step": step})

    def image(self, tag: str, file: Path, png: bytes) -> None:
        self.run.log({tag: self.wandb.Image(str(file))})

    def finish(self, summary: dict[str, float]) -> None:
        self.run.summary.update({f"summary/{k}": v for k, v in summary.items()})

    def flush(self) -> None:
        pass

    def close(self, ok: bool = True) -> None:
        self.run.finish(exit_code=0 if ok else 1)
        if self.wandb.run is None:
            # finish() returns before W&B's service has written the run's file (offline, it can still be
            # empty): tearing the service down waits for it, so the run folder is whole when the run ends.
            # Not while another W&B run of this process (a caller's own) is open: it would end it.
            self.wandb.teardown()
        drop_links(self.folder)
