"""ASH-S: activation shaping (prune, then scale), then the energy score.

For each image separately, on its penultimate activations f(x) (non-negative: they come out of a ReLU):

    t        = the p-th percentile of the D values of f(x)         (p = 90: keep the top 10%)
    s1, s2   = sum_j f_j(x),  sum_j f_j(x) [f_j(x) >= t]           the sum before and after pruning
    f'(x)    = f(x) [f(x) >= t] * exp(s1 / s2)                     prune all but the largest, scale the rest up
    score(x) = -logsumexp_k h(f'(x))_k                             the energy of the head's logits of f'(x)

As in the authors' code, "the largest" are the top round(D (1 - p/100)) values (ties broken by ``topk``). Of the
paper's three variants this is ASH-S (prune, then scale); ASH-P (prune only) and ASH-B
(binarise) are not offered. It learns nothing from ID data. Applied, as OpenOOD does for CIFAR models, to the
pooled penultimate vector. At p = 0 nothing is pruned, s1 / s2 = 1 and the score is the energy of h(e f(x)).

Djurisic, Bozanic, Ashok & Liu, "Extremely Simple Activation Shaping for Out-of-Distribution Detection",
ICLR 2023. https://arxiv.org/abs/2209.09858
"""
from __future__ import annotations

import torch

from dllab import DllabError
from dllab.core.registry import register
from dllab.ood.base import FeatureDetector, head_logits
from dllab.ood.energy import energy_scores


def ash_s(features: torch.Tensor, percentile: float) -> torch.Tensor:
    """ASH-S of each row of (N, D) ``features``: keep its top round(D (1 - p/100)) values (at least one),
    zero the rest, multiply by exp(sum before / sum after)."""
    d = features.shape[1]
    keep = max(1, d - round(d * percentile / 100))
    values, index = features.topk(keep, dim=1)
    pruned = torch.zeros_like(features).scatter_(1, index, values)
    before, after = features.sum(dim=1), pruned.sum(dim=1)
    # An all-zero row stays all zero (0/0); scaling is only defined where something is left.
    scale = torch.where(after != 0, before / after.where(after != 0, torch.ones_like(after)), 1.0)
    return pruned * torch.exp(scale)[:, None]


@register("detector", "ash")
class ASH(FeatureDetector):
    """ASH-S: energy of the logits of pruned and rescaled penultimate activations (Djurisic et al. 2023).

    score(x) = energy(h(f'(x))), f' = f's top (100 - p)% values, scaled by exp(sum f / sum of those)
    (larger = more OOD); p = 90 by default (``ood.ash.percentile``). See the module docstring.

    Djurisic, Bozanic, Ashok & Liu, ICLR 2023. https://arxiv.org/abs/2209.09858
    """

    fits = False

    def __init__(self, percentile: float = 90.0, batch_size: int = 256):
        super().__init__(batch_size)
        if not 0 <= percentile < 100:
            raise DllabError(f"ash: percentile must be in [0, 100), got {percentile}")
        self.percentile = percentile
        self.label = f"ASH-S (p={percentile:g})"

    @classmethod
    def from_settings(cls, batch_size: int = 256, ash=None, **_) -> "ASH":
        """``ash``: the experiment's ``ood.ash`` section (``percentile``); 90 when absent."""
        return cls(batch_size=batch_size) if ash is None else cls(ash.percentile, batch_size)

    def score_features(self, model, features: torch.Tensor) -> torch.Tensor:
        return energy_scores(head_logits(model, ash_s(features.float(), self.percentile), self.batch_size))

    def settings(self) -> dict:
        return {"percentile": self.percentile}
