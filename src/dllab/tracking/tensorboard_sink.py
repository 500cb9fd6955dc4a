"""TensorBoard: the run's event files in ``<run>/tb/`` (``tensorboard --logdir runs/`` shows every run), written
with torch's SummaryWriter.

One writer per variant (``tb/<variant>/``) with the same tags in every variant and every run (``train/loss``,
``train/acc``, ``val/loss``, ``val/acc``, ``train/lr``, ``time/seconds``, ``step/loss``), so TensorBoard overlays
SGD and Adam, or two runs, in one chart. The run's own writer (``tb/``) holds the figures (the PNGs the run
saved), the summary numbers (``summary/<key>``) and the hparams: the config, and the experiment's name as the
``experiment`` hparam, without the hparams "experiment" record that torch writes (TensorBoard reads the first
such record it finds as the only one, so the runs of other experiments in the same logdir lost their columns);
without it TensorBoard builds the table from every run's own hparams and metrics.
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import metadata as hparams_metadata
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summary

from dllab.core.registry import register

TB_FOLDER = "tb"
# A history column's tag: the part before the first "_" is the section (train_loss -> train/loss).
SECTIONS = ("train", "val", "test")
OTHER_COLUMNS = {"lr": "train/lr", "seconds": "time/seconds"}


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk: the image summary needs them, and decoding is not needed."""
    return struct.unpack(">II", png[16:24])


def tag(column: str) -> str:
    """The TensorBoard tag of a history column: ``train_loss`` -> ``train/loss``, ``lr`` -> ``train/lr``; any
    other column under ``epoch/``."""
    section, _, rest = column.partition("_")
    if section in SECTIONS and rest:
        return f"{section}/{rest}"
    return OTHER_COLUMNS.get(column, f"epoch/{column}")


@register("sink", "tensorboard", requires="tensorboard")
class TensorBoardSink:
    """Event files in ``<run>/tb/`` (the run's) and ``<run>/tb/<variant>/`` (each variant's curves)."""

    def __init__(self, path: Path, experiment: str, hparams: dict[str, Any], quiet: bool = False):
        self.folder = Path(path) / TB_FOLDER
        self.writer = SummaryWriter(log_dir=str(self.folder), flush_secs=30)
        self.variants: dict[str, SummaryWriter] = {}
        self.hparams = {"experiment": experiment, **hparams}

    def params(self, values: dict[str, Any]) -> None:
        self.hparams.update(values)   # written with the final metrics (finish)

    def variant(self, name: str) -> SummaryWriter:
        if name not in self.variants:
            self.variants[name] = SummaryWriter(log_dir=str(self.folder / name), flush_secs=30)
        return self.variants[name]

    def epoch(self, variant: str, numbers: dict[str, float], epoch: int) -> None:
        writer = self.variant(variant)
        for column, value in numbers.items():
            writer.add_scalar(tag(column), value, epoch)

    def step_loss(self, variant: str, loss: float, step: int, epoch: int) -> None:
        self.variant(variant).add_scalar("step/loss", loss, step)

    def image(self, tag: str, file: Path, png: bytes) -> None:
        # The PNG the run just saved goes in as is: no second rendering of the figure.
        width, height = png_size(png)
        img = Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=png)
        self.writer.file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=img)]))

    def finish(self, summary: dict[str, float]) -> None:
        metrics = {f"summary/{k}": v for k, v in summary.items()}
        for part in hparams_summary(self.hparams, metrics):
            if part.value[0].tag != hparams_metadata.EXPERIMENT_TAG:   # (see the module's docstring)
                self.writer.file_writer.add_summary(part)
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, 0)

    def flush(self) -> None:
        for writer in (self.writer, *self.variants.values()):
            writer.flush()

    def close(self, ok: bool = True) -> None:
        for writer in (self.writer, *self.variants.values()):
            writer.close()
