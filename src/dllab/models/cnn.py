"""The Lab 1 CNN (spec Ex. 1.3): a stem, ``depth`` BasicConvBlocks at one width, global pooling."""
from __future__ import annotations

from torch import Tensor, nn

from dllab.core.registry import register
from dllab.models.common import DATASET_STATS, Classifier, Normalize


class BasicConvBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN (+ identity when residual), then ReLU — ResNet's basic block."""

    def __init__(self, channels: int, residual: bool = True):
        super().__init__()
        self.residual = residual
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out = out + x
        return self.relu(out)


def classifier_head(width: int, num_classes: int, hidden: int = 0) -> nn.Module:
    """Linear(width, k), or with ``hidden`` Linear(width, hidden) + ReLU + Linear(hidden, k)."""
    if not hidden:
        return nn.Linear(width, num_classes)
    return nn.Sequential(nn.Linear(width, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))


class CNN(Classifier):
    """Stem, ``depth`` BasicConvBlocks, global average pool, classifier.

    ``head_hidden > 0`` makes the classifier Linear(C, h) + ReLU + Linear(h, k): the head that transfer
    learning's ``head`` variant trains (the spec's otherwise unused ``fc`` layer), so its saved weights
    rebuild from the spec alone.
    """

    num_features: int   # the width of ``forward_features(x)``, the classifier's input

    def __init__(self, in_channels=3, base_channels=64, depth=5, residual=False, num_classes=10, stats="cifar10",
                 head_hidden=0):
        super().__init__()
        self.normalize = Normalize(*DATASET_STATS[stats]) if stats else nn.Identity()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, base_channels, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(base_channels), nn.ReLU(inplace=True))
        self.blocks = nn.Sequential(*[BasicConvBlock(base_channels, residual) for _ in range(depth)])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.num_features = base_channels
        self.classifier = classifier_head(base_channels, num_classes, head_hidden)

    def reset_classifier(self, num_classes: int, hidden: int = 0) -> None:
        """A new, randomly initialised classifier for ``num_classes`` classes (timm's ``reset_classifier``;
        ``hidden`` as ``head_hidden``). The build spec follows, so the saved model rebuilds from it."""
        self.classifier = classifier_head(self.num_features, num_classes, hidden)
        spec = getattr(self, "dllab_spec", None) or {"name": "cnn", "kwargs": {}}
        self.dllab_spec = {"name": spec["name"],
                           "kwargs": {**spec["kwargs"], "num_classes": num_classes, "head_hidden": hidden}}

    def feature_maps(self, x: Tensor) -> Tensor:
        """(N, C, H, W) after the last block: the encoder of the OOD autoencoder."""
        return self.blocks(self.stem(self.normalize(x)))

    def forward_features(self, x: Tensor) -> Tensor:
        return self.pool(self.feature_maps(x))


@register("model", "cnn")
def cnn(num_classes=10, in_channels=3, base_channels=64, depth=5, residual=False, stats="cifar10", head_hidden=0,
        **_):
    """A CNN of ``depth`` conv blocks of ``base_channels``, plain or residual."""
    return CNN(in_channels, base_channels, depth, residual, num_classes, stats, head_hidden)
