"""Weights & Biases: one W&B run per dllab run, in offline mode (the optional sink ``log.sinks=[...,wandb]``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import wandb

from dllab.core.registry import register


@register("sink", "wandb", requires="wandb")
class WandbSink:
    """A W&B run in offline mode, its files in the run folder (``wandb sync`` uploads them, if ever)."""

    def __init__(self, path: Path, experiment: str, hparams: dict[str, Any]):
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
