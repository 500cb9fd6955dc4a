"""Pieces every image model shares."""
from __future__ import annotations

import torch
from torch import nn

# Per-channel statistics of the training sets (canonical values; dllab never recomputes them per run,
# so a checkpoint behaves the same whatever subset it was trained on).
DATASET_STATS = {
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


class Normalize(nn.Module):
    """(x - mean) / std as the model's first layer.

    Keeping normalisation inside the model means every caller (training, attacks, OOD detectors)
    feeds images in [0, 1], so an attack's epsilon is in pixel units, as in the papers.
    """

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """Base: ``forward(x) = forward_head(forward_features(x))``, so transfer and OOD code reuse any model.

    The two halves carry timm's names. ``forward_features(x)`` is the penultimate representation, one (N, D)
    vector per image (unlike timm's, already pooled), and ``forward_head(f)`` maps it to the logits: the
    feature-space OOD detectors (ood/mahalanobis.py, knn.py, vim.py, react.py, ash.py) read the one and edit
    what goes into the other.
    """

    classifier: nn.Module

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.classifier(features)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``forward_features(x)``, by the name the feature extraction of lab1.transfer calls."""
        return self.forward_features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def freeze(self, prefixes: tuple[str, ...] = ()) -> None:
        """Parameters whose name starts with one of ``prefixes`` stop training (requires_grad off), the rest
        train. The training loop keeps modules with no trainable parameter in eval mode, so a frozen
        BatchNorm keeps its running statistics too."""
        for name, p in self.named_parameters():
            p.requires_grad = not name.startswith(tuple(prefixes))

    def weight_layers(self) -> list[tuple[str, nn.Module]]:
        """Linear/Conv layers in forward order: the x-axis of the gradient-norm plots."""
        return [(n, m) for n, m in self.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``model.weight_layers()``, or for a user's model that has none, its Linear/Conv layers in definition order
    (``train.grad_norms`` records one gradient norm per layer)."""
    if callable(getattr(model, "weight_layers", None)):
        return model.weight_layers()
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Parameters of ``model`` (only those that train, with ``trainable_only``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
