"""What every OOD detector object is, as in pytorch-ood: ``fit(model, x_train) -> self`` learns whatever
the detector needs from in-distribution training images (most need nothing), ``score(model, x)`` gives one
CPU float32 score per image, **larger = more likely OOD**.

Detectors that read nothing but the logits are ``LogitDetector``s: ``score_logits`` lets one forward pass
over a dataset serve all of them (``analysis.ood.evaluate.score_images``).
"""
from __future__ import annotations

import torch

from . import logits_of


class Detector:
    """Base detector. ``batch_size``: images per forward pass when scoring; ``label``: its name in figures."""

    label = "detector"
    learns = False        # whether ``fit`` needs ID training images (the autoencoder's decoder)

    def __init__(self, batch_size: int = 256):
        self.batch_size = batch_size

    def fit(self, model: torch.nn.Module, x_train=None) -> "Detector":
        """Nothing to learn; returns self."""
        return self

    def fit_note(self) -> str:
        """A line for the report about what ``fit`` did ("" when it did nothing)."""
        return ""

    def score(self, model: torch.nn.Module, x) -> torch.Tensor:
        raise NotImplementedError


class LogitDetector(Detector):
    """A detector that is a function of the logits alone."""

    def score(self, model: torch.nn.Module, x) -> torch.Tensor:
        return self.score_logits(logits_of(model, x, self.batch_size))

    def score_logits(self, logits) -> torch.Tensor:
        raise NotImplementedError
