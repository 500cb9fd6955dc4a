"""A small convolutional decoder: classifier feature maps (N, C, H, W) -> images (N, 3, H, W) in [0, 1].

Paired with a frozen classifier trunk (normalize + stem + blocks, i.e. ``model.feature_maps``) it makes
the reconstruction-error OOD detector in ``dllab.ood.autoencoder``. The CNN keeps the 32x32
resolution through its blocks, so no upsampling is needed: three 3x3 convs, the last one into a
sigmoid so the output is a valid image in [0, 1] and is compared with the un-normalised input.
"""
from __future__ import annotations

import torch
from torch import nn

from dllab.core.registry import register


class ConvDecoder(nn.Module):
    def __init__(self, in_channels: int = 64, hidden: int = 32, out_channels: int = 3):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_channels, 3, padding=1), nn.Sigmoid(),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


@register("model", "conv_decoder")
def conv_decoder(in_channels: int = 64, hidden: int = 32, out_channels: int = 3) -> ConvDecoder:
    """Feature maps with ``in_channels`` channels -> ``out_channels``-channel images in [0, 1]."""
    return ConvDecoder(in_channels, hidden, out_channels)
