"""MLPs of Lab 1 (spec Ex. 1.1 and 1.2)."""
from __future__ import annotations

import torch
from torch import nn

from dllab.core.registry import register
from dllab.models.common import DATASET_STATS, Classifier, Normalize


class LinearBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.fc = nn.Linear(width, width)

    def forward(self, x):
        return torch.relu(self.fc(x))


class ResMLPBlock(nn.Module):
    """Two LinearBlocks plus an identity skip: x + relu(fc2(relu(fc1(x))))."""

    def __init__(self, width: int):
        super().__init__()
        self.network = nn.Sequential(LinearBlock(width), LinearBlock(width))

    def forward(self, x):
        return self.network(x) + x


class MLP(Classifier):
    """Flatten -> Linear(in, width) -> ReLU -> ``depth`` blocks -> Linear(width, classes)."""

    def __init__(self, input_size=28 * 28, width=64, depth=1, residual=False, num_classes=10,
                 in_channels=1, stats="mnist"):
        super().__init__()
        self.normalize = Normalize(*DATASET_STATS[stats]) if stats else nn.Identity()
        block = ResMLPBlock if residual else LinearBlock
        self.stem = nn.Sequential(nn.Flatten(), nn.Linear(input_size * in_channels, width), nn.ReLU())
        self.blocks = nn.Sequential(*[block(width) for _ in range(depth)])
        self.classifier = nn.Linear(width, num_classes)

    def forward_features(self, x):
        return self.blocks(self.stem(self.normalize(x)))


class BasicMLP(Classifier):
    """The spec's BasicMLP: 784-64-64-10 with ReLU (fc1, fc2, out)."""

    def __init__(self, input_size=28 * 28, width=64, num_classes=10, in_channels=1, stats="mnist"):
        super().__init__()
        self.normalize = Normalize(*DATASET_STATS[stats]) if stats else nn.Identity()
        self.fc1 = nn.Linear(input_size * in_channels, width)
        self.fc2 = nn.Linear(width, width)
        self.classifier = nn.Linear(width, num_classes)

    def forward_features(self, x):
        x = self.normalize(x).flatten(1)
        return torch.relu(self.fc2(torch.relu(self.fc1(x))))


@register("model", "basic_mlp")
def basic_mlp(num_classes=10, in_channels=1, image_size=28, width=64, stats="mnist", **_):
    """The spec's BasicMLP: input-width-width-classes with ReLU."""
    return BasicMLP(image_size * image_size, width, num_classes, in_channels, stats)


@register("model", "mlp")
def mlp(num_classes=10, in_channels=1, image_size=28, width=64, depth=1, residual=False, stats="mnist", **_):
    """An MLP of ``depth`` blocks of ``width``, plain or residual."""
    return MLP(image_size * image_size, width, depth, residual, num_classes, in_channels, stats)
