"""ViM, Virtual-logit Matching: the features' part outside the ID principal subspace, as an extra logit.

With the linear head logits l(x) = W f(x) + b on the penultimate features f:

    u        = -W^+ b                          the origin of the feature space for which the logits are 0
    P        = the top-``dim`` eigenvectors of 1/N sum_i (f_i - u)(f_i - u)^T over the ID training features
    r(x)     = || (I - P P^T)(f(x) - u) ||     the residual: the norm of f(x) - u outside the principal subspace
    alpha    = mean_i max_k l_k(f_i) / mean_i r(f_i)       over the ID training features
    v(x)     = alpha r(x)                      the virtual logit, matched to the scale of the real ones
    ViM(x)   = exp(v) / (sum_k exp(l_k) + exp(v))          the paper's score: softmax of the virtual logit
    score(x) = v(x) - logsumexp_k l_k(x) = log ViM(x) - log(1 - ViM(x))

The score is a monotone function of the paper's ViM(x), so it ranks images (and gives AUROC, FPR95) the same,
and it is minus the score the authors' code computes (energy - v); it is used because ViM(x) itself rounds to
0 or 1 in float32 for large logits. ``dim`` defaults to the authors' rule (their benchmark code): 1000 for
D >= 2048 feature dimensions, else 512; where 512 leaves no residual (D <= 512, CIFAR-size models) it is D/2,
OpenOOD's choice for ResNet-18 on CIFAR-10 (256 of 512).

Wang, Li, Feng & Zhang, "ViM: Out-Of-Distribution with Virtual-logit Matching", CVPR 2022.
https://arxiv.org/abs/2203.10807
"""
from __future__ import annotations

import torch
from torch import nn

from dllab import ConfigError, DllabError
from dllab.core.registry import register
from dllab.ood.base import FeatureDetector, expect_keys


def paper_dim(feature_dim: int) -> int:
    """The principal subspace's dimension for ``feature_dim`` (D) features: the authors' 1000 or 512, D/2 where
    512 would leave no residual (see the module docstring)."""
    return 1000 if feature_dim >= 2048 else 512 if feature_dim > 512 else feature_dim // 2


def linear_head(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, b) in float64 of the model's head (timm's ``get_classifier()``, else ``classifier``), which must be one
    nn.Linear: ViM's offset u = -W^+ b needs logits that are an affine function of the features."""
    getter = getattr(model, "get_classifier", None)
    head = getter() if callable(getter) else getattr(model, "classifier", None)
    if not isinstance(head, nn.Linear):
        raise ConfigError(f"the vim detector needs a model whose head is one nn.Linear (the cnn without "
                          f"head_hidden); {type(model).__name__}'s is {type(head).__name__}")
    w = head.weight.detach().double().cpu()
    b = head.bias.detach().double().cpu() if head.bias is not None else torch.zeros(len(w), dtype=torch.float64)
    return w, b


class ViMFit:
    """ViM fitted for the head (W, b): u, the residual basis, alpha (``fit`` learns them from the ID training
    features; the constructor takes them as saved, float64)."""

    STATE = ("w", "b", "u", "residual_basis", "alpha")

    def __init__(self, w: torch.Tensor, b: torch.Tensor, u: torch.Tensor, residual_basis: torch.Tensor,
                 alpha: float):
        self.w, self.b, self.u, self.residual_basis, self.alpha = w, b, u, residual_basis, alpha

    @classmethod
    def fit(cls, features: torch.Tensor, w: torch.Tensor, b: torch.Tensor, dim: int) -> "ViMFit":
        """Fitted on the ID training ``features`` (N, D), keeping the top ``dim`` principal directions."""
        f = features.double()
        u = -torch.linalg.pinv(w) @ b
        centred = f - u
        eigvals, eigvecs = torch.linalg.eigh(centred.T @ centred / len(f))   # ascending eigenvalues
        fitted = cls(w, b, u, eigvecs[:, :f.shape[1] - dim], 0.0)            # the basis: all but the top ``dim``
        residual_mean = fitted.residual(f).mean()
        if not residual_mean > 0:
            raise DllabError(f"vim: the ID training features lie inside the {dim}-dimensional principal subspace "
                             "(no residual to match); set ood.vim.dim lower")
        fitted.alpha = float(fitted.logits(f).amax(dim=1).mean() / residual_mean)
        return fitted

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"w": self.w, "b": self.b, "u": self.u, "residual_basis": self.residual_basis,
                "alpha": torch.tensor(self.alpha, dtype=torch.float64)}

    def logits(self, f: torch.Tensor) -> torch.Tensor:
        return f @ self.w.T + self.b

    def residual(self, f: torch.Tensor) -> torch.Tensor:
        return ((f - self.u) @ self.residual_basis).norm(dim=1)

    def scores(self, features: torch.Tensor) -> torch.Tensor:
        f = features.double()
        return (self.alpha * self.residual(f) - torch.logsumexp(self.logits(f), dim=1)).float()


@register("detector", "vim")
class ViM(FeatureDetector):
    """ViM: a virtual logit from the features' residual outside the ID principal subspace (Wang et al. 2022).

    score(x) = alpha ||(I - P P^T)(f(x) - u)|| - logsumexp_k l_k(x): the virtual logit against the real ones
    (larger = more OOD; a monotone function of the paper's ViM probability). ``dim`` (``ood.vim.dim``, 0 = the
    authors' rule) is P's dimension. See the module docstring.

    Wang, Li, Feng & Zhang, CVPR 2022. https://arxiv.org/abs/2203.10807
    """

    label = "ViM"

    def __init__(self, dim: int = 0, batch_size: int = 256):
        super().__init__(batch_size)
        if dim < 0:
            raise DllabError(f"vim: dim must be >= 0 (0 = the authors' rule), got {dim}")
        self.dim = dim

    @classmethod
    def from_settings(cls, batch_size: int = 256, vim=None, **_) -> "ViM":
        """``vim``: the experiment's ``ood.vim`` section (``dim``); the authors' rule when absent."""
        return cls(batch_size=batch_size) if vim is None else cls(vim.dim, batch_size)

    def fit_features(self, model, features: torch.Tensor, y=None) -> "ViM":
        d = features.shape[1]
        dim = self.dim or paper_dim(d)
        if dim >= d:
            raise DllabError(f"vim: dim = {dim} must be below the feature dimension {d}; set ood.vim.dim lower")
        self.fitted = ViMFit.fit(features, *linear_head(model), dim)
        return self

    def fit_note(self) -> str:
        f = self.fitted
        return (f"principal subspace of dimension {len(f.u) - f.residual_basis.shape[1]} of {len(f.u)}, "
                f"alpha = {f.alpha:.4g}")

    def score_features(self, model, features: torch.Tensor) -> torch.Tensor:
        if not hasattr(self, "fitted"):
            raise DllabError("the vim detector is not fitted: call fit(model, x) first")
        return self.fitted.scores(features)

    def settings(self) -> dict:
        return {"dim": self.dim}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.fitted.state_dict() if hasattr(self, "fitted") else {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> "ViM":
        s = {k: v.double() for k, v in expect_keys(self, state, ViMFit.STATE).items()}
        self.fitted = ViMFit(s["w"], s["b"], s["u"], s["residual_basis"], float(s["alpha"]))
        return self

    def state_shapes(self, dims: dict[str, int]) -> dict[str, tuple[int, ...]]:
        k, d = dims["classes"], dims["features"]
        return {"w": (k, d), "b": (k,), "u": (d,), "residual_basis": (d, -1), "alpha": ()}
