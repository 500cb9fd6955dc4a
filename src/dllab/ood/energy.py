"""Energy score.

    E(x; T) = -T * logsumexp_k(f(x)_k / T)

The free energy of the logits; in-distribution inputs get lower energy, so E itself is the OOD
score. As T -> 0 it tends to -max logit; T = 1 is the paper's (and pytorch-ood's) default.

Liu, Wang, Owens & Li, "Energy-based Out-of-distribution Detection", NeurIPS 2020.
https://arxiv.org/abs/2010.03759
"""
from __future__ import annotations

import torch

from dllab import DllabError
from dllab.core.registry import register
from dllab.ood.base import LogitDetector
from dllab.ood.msp import as_logits


def energy_scores(logits, T: float = 1.0) -> torch.Tensor:
    """(N, K) logits -> (N,) OOD scores = -T * logsumexp(logits / T) (larger = more OOD)."""
    if not T > 0:
        raise DllabError(f"energy temperature T must be > 0, got {T}")
    return -T * torch.logsumexp(as_logits(logits) / T, dim=1)


@register("detector", "energy")
class Energy(LogitDetector):
    """Energy score: score(x) = -T * logsumexp_k(f(x)_k / T) (larger = more OOD); T = 1 by default.

    Liu, Wang, Owens & Li, "Energy-based Out-of-distribution Detection", NeurIPS 2020.
    https://arxiv.org/abs/2010.03759
    """

    label = "energy"

    def __init__(self, T: float = 1.0, batch_size: int = 256):
        super().__init__(batch_size)
        self.T = T

    def score_logits(self, logits) -> torch.Tensor:
        return energy_scores(logits, self.T)

    def settings(self) -> dict:
        return {"T": self.T}
