"""Maximum softmax probability (MSP).

    score(x) = -max_k softmax(f(x))_k

A confident prediction (high max probability) means in-distribution, so its negation is an OOD score.

Hendrycks & Gimpel, "A Baseline for Detecting Misclassified and Out-of-Distribution Examples in
Neural Networks", ICLR 2017. https://arxiv.org/abs/1610.02136
"""
from __future__ import annotations

import torch

from dllab import DllabError
from dllab.core.registry import register
from dllab.ood.base import LogitDetector


def as_logits(logits) -> torch.Tensor:
    """Logits as a floating (N, K) tensor; a one-line error for anything else."""
    t = torch.as_tensor(logits)
    if t.ndim != 2 or not t.is_floating_point():
        raise DllabError(f"expected float logits of shape (N, K), got {tuple(t.shape)} {t.dtype}")
    return t


def msp_scores(logits) -> torch.Tensor:
    """(N, K) logits -> (N,) OOD scores = -max softmax probability (larger = more OOD)."""
    return -torch.softmax(as_logits(logits), dim=1).amax(dim=1)


@register("detector", "msp")
class MSP(LogitDetector):
    """Maximum softmax probability: score(x) = -max_k softmax(f(x))_k (larger = more OOD).

    Hendrycks & Gimpel, "A Baseline for Detecting Misclassified and Out-of-Distribution Examples in
    Neural Networks", ICLR 2017. https://arxiv.org/abs/1610.02136
    """

    label = "MSP"

    def score_logits(self, logits) -> torch.Tensor:
        return msp_scores(logits)
