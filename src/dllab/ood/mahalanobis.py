"""Mahalanobis distance to the nearest class mean, on the penultimate features f(x).

    mu_c     = mean of f over the ID training images of class c
    Sigma    = 1/N sum_c sum_{i in c} (f_i - mu_c)(f_i - mu_c)^T       one covariance shared by the classes (tied)
    score(x) = min_c (f(x) - mu_c)^T Sigma^+ (f(x) - mu_c)

A class-conditional Gaussian model with tied covariance (linear discriminant analysis) fitted on the ID
training features and labels; the score is the squared Mahalanobis distance to the closest class, i.e. minus
the paper's confidence score M(x). Sigma^+ is the pseudo-inverse (directions with no ID variance are ignored,
as when there are fewer images than feature dimensions). This is the paper's detector on the last layer alone:
without its input preprocessing (a gradient step as in ODIN) and without its feature ensemble over layers.

Lee, Lee, Lee & Shin, "A Simple Unified Framework for Detecting Out-of-Distribution Samples and Adversarial
Attacks", NeurIPS 2018. https://arxiv.org/abs/1807.03888
"""
from __future__ import annotations

import torch

from dllab import DllabError
from dllab.core.registry import register
from dllab.ood.base import FeatureDetector, expect_keys


def class_means_and_whitening(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(class means (C, D), L (D, r)) in float64 with L L^T = Sigma^+, Sigma the tied covariance: the
    Mahalanobis distance is then the Euclidean distance after ``@ L``. The classes are those in ``labels``."""
    f = features.double()
    classes = torch.unique(labels)
    means = torch.stack([f[labels == c].mean(dim=0) for c in classes])
    centred = f - means[torch.searchsorted(classes, labels)]
    cov = centred.T @ centred / len(f)
    eigvals, eigvecs = torch.linalg.eigh(cov)
    # torch.linalg.pinv's cut-off: eigenvalues below max * D * eps count as zero (no ID variance there).
    keep = eigvals > eigvals.max() * len(eigvals) * torch.finfo(eigvals.dtype).eps
    return means, eigvecs[:, keep] / eigvals[keep].sqrt()


def mahalanobis_scores(features: torch.Tensor, means: torch.Tensor, whitening: torch.Tensor) -> torch.Tensor:
    """min over classes of the squared Mahalanobis distance: (N,) float32."""
    z, m = features.double() @ whitening, means @ whitening
    return (torch.cdist(z, m, compute_mode="donot_use_mm_for_euclid_dist") ** 2).amin(dim=1).float()


@register("detector", "mahalanobis")
class Mahalanobis(FeatureDetector):
    """Mahalanobis: squared distance of the penultimate features to the nearest class mean (Lee et al. 2018).

    score(x) = min_c (f(x) - mu_c)^T Sigma^+ (f(x) - mu_c), with class means mu_c and tied covariance Sigma
    fitted on the ID training features and labels (larger = more OOD); no input preprocessing, no layer
    ensemble. See the module docstring.

    Lee, Lee, Lee & Shin, NeurIPS 2018. https://arxiv.org/abs/1807.03888
    """

    label = "Mahalanobis"

    def fit_features(self, model, features: torch.Tensor, y=None) -> "Mahalanobis":
        if y is None:
            raise DllabError("the mahalanobis detector needs the ID training labels (y) to fit its class means")
        labels = torch.as_tensor(y).long().cpu()
        if len(labels) != len(features):
            raise DllabError(f"mahalanobis: {len(features)} training images but {len(labels)} labels")
        self.means, self.whitening = class_means_and_whitening(features, labels)
        self.note = (f"{len(self.means)} class means and a tied covariance (rank {self.whitening.shape[1]} of "
                     f"{features.shape[1]}) from {len(features)} ID training images")
        return self

    def fit_note(self) -> str:
        return self.note

    def score_features(self, model, features: torch.Tensor) -> torch.Tensor:
        if not hasattr(self, "means"):
            raise DllabError("the mahalanobis detector is not fitted: call fit(model, x, y) first")
        return mahalanobis_scores(features, self.means, self.whitening)

    def state_dict(self) -> dict[str, torch.Tensor]:
        # the whitening L (L L^T = the precision Sigma^+) is kept rather than Sigma^+ itself: it is what scores
        return {"means": self.means, "whitening": self.whitening} if hasattr(self, "means") else {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> "Mahalanobis":
        state = expect_keys(self, state, ("means", "whitening"))
        if len(state["means"]) == 0:
            raise DllabError("mahalanobis state: no class means")
        self.means, self.whitening = state["means"].double(), state["whitening"].double()
        self.note = f"{len(self.means)} class means and a tied covariance, loaded"
        return self

    def state_shapes(self, dims: dict[str, int]) -> dict[str, tuple[int, ...]]:
        return {"means": (-1, dims["features"]), "whitening": (dims["features"], -1)}
