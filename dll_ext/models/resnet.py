"""A small residual network (He et al., 2016) for small images, its convolution+ReLU pairs fused."""
from typing import Sequence

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from dll_ext.models.layers import conv2d_relu

__all__ = ["ResNet", "ResidualBlock"]


class ResidualBlock(nn.Module):
    """relu(conv2(conv1+ReLU(x)) + shortcut(x)), 3x3 convolutions. conv1 and its ReLU are one fused
    dll_ext.nn.Conv2dReLU; conv2's ReLU comes after the addition, so conv2 stays an nn.Conv2d.
    The shortcut is the identity, or a strided 1x1 convolution where the block changes the
    resolution or the number of channels."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, native: bool = False) -> None:
        super().__init__()
        self.conv1 = conv2d_relu(in_channels, out_channels, 3, stride=stride, padding=1, native=native)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        reshaped = stride != 1 or in_channels != out_channels
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride) if reshaped else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


class ResNet(nn.Module):
    """stem (3x3 conv+ReLU, fused) -> stages of residual blocks -> global average pool ->
    dropout -> linear. Stage i has blocks_per_stage blocks of widths[i] channels; every stage
    after the first halves the resolution in its first block. There is no batch normalisation,
    which would sit between each convolution and its ReLU and so prevent their fusion.

    Global average pooling lets it take images of any size.
    """

    def __init__(self, in_channels: int, num_classes: int, widths: Sequence[int] = (16, 32, 64),
                 blocks_per_stage: int = 2, dropout: float = 0.0, native: bool = False) -> None:
        super().__init__()
        self.stem = conv2d_relu(in_channels, widths[0], 3, padding=1, native=native)
        blocks = []
        channels = widths[0]
        for stage, width in enumerate(widths):
            for index in range(blocks_per_stage):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(ResidualBlock(channels, width, stride, native=native))
                channels = width
        self.blocks = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        """images (B, in_channels, H, W) -> logits (B, num_classes)."""
        features = self.blocks(self.stem(images)).mean((2, 3))
        return self.fc(self.dropout(features))
