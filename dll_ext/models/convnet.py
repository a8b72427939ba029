"""The course's ConvNet (chapter 3.1): two convolution-ReLU-max-pool stages, then three linear layers."""
from typing import Optional, Sequence

import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from dll_ext.models.layers import conv2d_relu

__all__ = ["ConvNet"]

_KERNEL = 5


def _side_after_stages(image_size: int, padding: int) -> int:
    """The side of the feature map after two 5x5 convolutions, each followed by a 2x2 pool."""
    side = image_size
    for _ in range(2):
        side = (side + 2 * padding - (_KERNEL - 1)) // 2
    return side


class ConvNet(nn.Module):
    """pool(conv1+ReLU) -> pool(conv2+ReLU) -> fc1+ReLU -> fc2+ReLU -> fc3, the course's ConvNet
    (for 3x32x32 CIFAR images: 6 and 16 channels, 5x5 kernels, fc sizes 400-128-64-10), with each
    convolution and its ReLU one fused dll_ext.nn.Conv2dReLU (native: nn.Conv2d, then ReLU) and
    dropout after the two hidden linear layers.

    padding: of both convolutions; None picks the course's 0 when the image is large enough for
    two unpadded stages (16 pixels or more), else 2, which keeps the size through each
    convolution (8x8 digits: 8 -> 4 -> 2).
    """

    def __init__(self, in_channels: int, image_size: int, num_classes: int, channels: Sequence[int] = (6, 16),
                 hidden_sizes: Sequence[int] = (128, 64), padding: Optional[int] = None, dropout: float = 0.0,
                 native: bool = False) -> None:
        super().__init__()
        if padding is None:
            padding = 0 if _side_after_stages(image_size, 0) >= 1 else (_KERNEL - 1) // 2
        side = _side_after_stages(image_size, padding)
        if side < 1:
            raise ValueError(f"ConvNet: {image_size}x{image_size} images are too small for two 5x5 convolution "
                             f"and 2x2 pooling stages with padding {padding}")
        self.conv1 = conv2d_relu(in_channels, channels[0], _KERNEL, padding=padding, native=native)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = conv2d_relu(channels[0], channels[1], _KERNEL, padding=padding, native=native)
        self.fc1 = nn.Linear(channels[1] * side * side, hidden_sizes[0])
        self.fc2 = nn.Linear(hidden_sizes[0], hidden_sizes[1])
        self.fc3 = nn.Linear(hidden_sizes[1], num_classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, images: Tensor) -> Tensor:
        """images (B, in_channels, image_size, image_size) -> logits (B, num_classes)."""
        x = self.pool(self.conv1(images))
        x = self.pool(self.conv2(x)).flatten(1)
        x = self.dropout(F.relu(self.fc1(x)))
        x = self.dropout(F.relu(self.fc2(x)))
        return self.fc3(x)
