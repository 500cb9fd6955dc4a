"""Maximum logit.

    score(x) = -max_k f(x)_k

Unlike MSP it is not squashed by the softmax normalisation, which discards how large the logits
are; on many-class problems this ranks OOD inputs better.

Hendrycks, Basart, Mazeika, Zou, Kwon, Mostajabi, Steinhardt & Song, "Scaling Out-of-Distribution
Detection for Real-World Settings", ICML 2022. https://arxiv.org/abs/1911.11132
"""
from __future__ import annotations

import torch

from dllab.core.registry import register
from dllab.ood.base import LogitDetector
from dllab.ood.msp import as_logits


def max_logit_scores(logits) -> torch.Tensor:
    """(N, K) logits -> (N,) OOD scores = -max logit (larger = more OOD)."""
    return -as_logits(logits).amax(dim=1)


@register("detector", "max_logit")
class MaxLogit(LogitDetector):
    """Maximum logit: score(x) = -max_k f(x)_k (larger = more OOD).

    Hendrycks, Basart, Mazeika, Zou, Kwon, Mostajabi, Steinhardt & Song, "Scaling Out-of-Distribution
    Detection for Real-World Settings", ICML 2022. https://arxiv.org/abs/1911.11132
    """

    label = "max logit"

    def score_logits(self, logits) -> torch.Tensor:
        return max_logit_scores(logits)
