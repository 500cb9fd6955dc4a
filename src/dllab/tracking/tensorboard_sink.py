"""TensorBoard: the run's event files in its folder (``tensorboard --logdir runs/`` shows every run), written
with torch's SummaryWriter; the figures the run saves go in as PNG images, hparams beside the summary."""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summary
from tensorboard.compat.proto.summary_pb2 import Summary

from dllab.core.registry import register


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk: the image summary needs them, and decoding is not needed."""
    return struct.unpack(">II", png[16:24])


@register("sink", "tensorboard", requires="tensorboard")
class TensorBoardSink:
    """Event files in the run folder, written with torch's SummaryWriter; hparams go in the same file."""

    def __init__(self, path: Path, experiment: str, hparams: dict[str, Any]):
        self.writer = SummaryWriter(log_dir=str(path), flush_secs=30)
        self.hparams = hparams

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, v in values.items():
            self.writer.add_scalar(tag, v, step)

    def image(self, tag: str, file: Path, png: bytes) -> None:
        # The PNG the run just saved goes in as is: no second rendering of the figure.
        width, height = png_size(png)
        img = Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=png)
        self.writer.file_writer.add_summary(Summary(value=[Summary.Value(tag=tag, image=img)]))

    def finish(self, summary: dict[str, float]) -> None:
        metrics = {f"summary/{k}": v for k, v in summary.items()}
        for part in hparams_summary(self.hparams, metrics):
            self.writer.file_writer.add_summary(part)
        self.scalars(metrics, 0)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
