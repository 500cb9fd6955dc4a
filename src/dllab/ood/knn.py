"""Deep nearest neighbours: the distance to the k-th nearest ID training feature.

    z(x)     = f(x) / ||f(x)||                    the penultimate features, L2-normalised
    score(x) = || z(x) - z_(k)(x) ||              z_(k)(x): the k-th nearest of the ID training z's

No model of the ID features at all, only the training set itself: an OOD input lies far from its neighbours.
For unit vectors ||a - b|| = sqrt(2 - 2 a.b), so the k-th nearest neighbour is the k-th largest dot product;
those are found by a chunked matrix product and ``topk`` (a few hundred test points at a time, so memory stays
at one chunk times the training set). Sun et al. use k = 50 with all 50,000 CIFAR-10 training images.

Sun, Ming, Zhu & Li, "Out-of-Distribution Detection with Deep Nearest Neighbors", ICML 2022.
https://arxiv.org/abs/2204.06507
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dllab import DllabError
from dllab.core.registry import register
from dllab.ood.base import FeatureDetector, expect_keys

CHUNK_ELEMENTS = 1 << 25   # similarities per chunk (128 MB of float32): chunk rows = this / training images


def kth_neighbour_distance(queries: torch.Tensor, bank: torch.Tensor, k: int) -> torch.Tensor:
    """(N,) Euclidean distance from each row of ``queries`` to its k-th nearest row of ``bank``; both (., D)
    and L2-normalised."""
    rows = max(1, CHUNK_ELEMENTS // max(1, len(bank)))
    out = torch.empty(len(queries))
    for i in range(0, len(queries), rows):
        similarity = queries[i:i + rows] @ bank.T
        kth = similarity.topk(k, dim=1, sorted=False).values.amin(dim=1)
        out[i:i + rows] = (2 - 2 * kth).clamp_min(0).sqrt()
    return out


@register("detector", "knn")
class KNN(FeatureDetector):
    """KNN: distance to the k-th nearest ID training feature, features L2-normalised (Sun et al. 2022).

    score(x) = || z(x) - z_(k)(x) ||, z = f / ||f||, z_(k) the k-th nearest normalised ID training feature
    (larger = more OOD); k = 50 by default (``ood.knn.k``). See the module docstring.

    Sun, Ming, Zhu & Li, ICML 2022. https://arxiv.org/abs/2204.06507
    """

    def __init__(self, k: int = 50, batch_size: int = 256):
        super().__init__(batch_size)
        if k < 1:
            raise DllabError(f"knn: k must be >= 1, got {k}")
        self.k = k
        self.label = f"KNN (k={k})"

    @classmethod
    def from_settings(cls, batch_size: int = 256, knn=None, **_) -> "KNN":
        """``knn``: the experiment's ``ood.knn`` section (``k``); k = 50 when absent."""
        return cls(batch_size=batch_size) if knn is None else cls(knn.k, batch_size)

    def fit_features(self, model, features: torch.Tensor, y=None) -> "KNN":
        if len(features) < self.k:
            raise DllabError(f"knn: k = {self.k} needs at least {self.k} ID training images, got {len(features)}; "
                             "set ood.knn.k lower (or fit on more images)")
        self.bank = F.normalize(features.float(), dim=1)
        return self

    def fit_note(self) -> str:
        return f"k = {self.k} of {len(self.bank)} normalised ID training features (D = {self.bank.shape[1]})"

    def score_features(self, model, features: torch.Tensor) -> torch.Tensor:
        if not hasattr(self, "bank"):
            raise DllabError("the knn detector is not fitted: call fit(model, x) first")
        return kth_neighbour_distance(F.normalize(features.float(), dim=1), self.bank, self.k)

    def settings(self) -> dict:
        return {"k": self.k}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"bank": self.bank} if hasattr(self, "bank") else {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> "KNN":
        bank = expect_keys(self, state, ("bank",))["bank"]
        if bank.ndim != 2 or len(bank) < self.k:
            raise DllabError(f"knn state: the bank holds {len(bank)} features, fewer than k = {self.k}")
        self.bank = bank.float()
        return self

    def state_shapes(self, dims: dict[str, int]) -> dict[str, tuple[int, ...]]:
        return {"bank": (-1, dims["features"])}
