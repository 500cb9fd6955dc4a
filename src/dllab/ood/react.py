"""ReAct: rectified activations, then the energy score.

    c        = the p-th percentile of every activation f_j(x_i) of the ID training features (p = 90)
    f'(x)    = min(f(x), c)                    elementwise: the penultimate activations clipped at c
    score(x) = -logsumexp_k h(f'(x))_k         the energy of the logits of the clipped features (h: the head)

OOD inputs drive a few penultimate units abnormally high, and those inflate the logits (and the confidence) of
the classifier; clipping them at a level that ID activations seldom pass removes most of that, while ID
logits barely change. With c = +inf nothing is clipped and the score is the energy score (T = 1).

Sun, Guo & Li, "ReAct: Out-of-distribution Detection With Rectified Activations", NeurIPS 2021.
https://arxiv.org/abs/2111.12797
"""
from __future__ import annotations

import numpy as np
import torch

from dllab import DllabError
from dllab.core.registry import register
from dllab.ood.base import FeatureDetector, expect_keys, head_logits
from dllab.ood.energy import energy_scores


@register("detector", "react")
class ReAct(FeatureDetector):
    """ReAct: energy of the logits of the penultimate activations clipped at an ID percentile (Sun et al. 2021).

    score(x) = energy(h(min(f(x), c))), c the ``percentile``-th percentile (90 by default,
    ``ood.react.percentile``) of the ID training activations (larger = more OOD). See the module docstring.

    Sun, Guo & Li, NeurIPS 2021. https://arxiv.org/abs/2111.12797
    """

    def __init__(self, percentile: float = 90.0, batch_size: int = 256):
        super().__init__(batch_size)
        if not 0 <= percentile <= 100:
            raise DllabError(f"react: percentile must be in [0, 100], got {percentile}")
        self.percentile = percentile
        self.label = f"ReAct (p={percentile:g})"

    @classmethod
    def from_settings(cls, batch_size: int = 256, react=None, **_) -> "ReAct":
        """``react``: the experiment's ``ood.react`` section (``percentile``); 90 when absent."""
        return cls(batch_size=batch_size) if react is None else cls(react.percentile, batch_size)

    def fit_features(self, model, features: torch.Tensor, y=None) -> "ReAct":
        # numpy, not torch.quantile: that refuses more than 2^24 values (33,000 images of 512 features).
        self.clip = float(np.percentile(features.float().numpy(), self.percentile))
        self.fitted_on = features.shape
        return self

    def fit_note(self) -> str:
        n, d = self.fitted_on
        return f"activations clipped at {self.clip:.4g}, the {self.percentile:g}th percentile of {n} x {d} ID ones"

    def score_features(self, model, features: torch.Tensor) -> torch.Tensor:
        if not hasattr(self, "clip"):
            raise DllabError("the react detector is not fitted: call fit(model, x) first")
        return energy_scores(head_logits(model, features.clamp(max=self.clip), self.batch_size))

    def settings(self) -> dict:
        return {"percentile": self.percentile}

    def state_dict(self) -> dict[str, torch.Tensor]:
        # float64: the clip is numpy's float64 percentile, kept exactly
        return {"clip": torch.tensor(self.clip, dtype=torch.float64)} if hasattr(self, "clip") else {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> "ReAct":
        self.clip = float(expect_keys(self, state, ("clip",))["clip"])
        return self

    def state_shapes(self, dims: dict[str, int]) -> dict[str, tuple[int, ...]]:
        return {"clip": ()}
