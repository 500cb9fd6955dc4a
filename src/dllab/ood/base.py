"""What every OOD detector object is, as in pytorch-ood: ``fit(model, x, y) -> self`` learns whatever the
detector needs from in-distribution training data (images ``x``, uint8 or float in [0, 1], and their labels
``y``; most detectors need nothing), ``score(model, x)`` gives one CPU float32 score per image, **larger = more
likely OOD**.

A detector is one file: a ``Detector`` subclass registered with ``@register("detector", "<name>")``. The
name is its config name (``ood.detectors``) and its summary keys' (``<name>.auroc``...); ``from_settings``
builds it from the experiment's settings. Detectors that read nothing but the logits are ``LogitDetector``s:
``score_logits`` lets one forward pass over a dataset serve all of them
(``analysis.ood.evaluate.score_images``).
"""
from __future__ import annotations

import torch

from dllab.train.inference import logits_of


class Detector:
    """Base detector. ``batch_size``: images per forward pass when scoring; ``label``: its name in figures."""

    label = ""            # its name in figures ("" = its registered name)

    def __init__(self, batch_size: int = 256):
        self.batch_size = batch_size

    @classmethod
    def from_settings(cls, batch_size: int = 256, **settings) -> "Detector":
        """The detector as an experiment sets it up. ``settings`` holds the experiment's detector sections by
        name (``odin``, ``autoencoder``), ``seed`` and ``progress``; a detector takes what it needs (this
        default: nothing but the batch size)."""
        return cls(batch_size=batch_size)

    def fit(self, model: torch.nn.Module, x=None, y=None) -> "Detector":
        """Nothing to learn from the ID training images ``x`` and labels ``y``; returns self."""
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
