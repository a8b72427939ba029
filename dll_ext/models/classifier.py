"""One constructor for the image classifiers, so a pipeline can pick one by name."""
from typing import Tuple

import torch.nn as nn

from dll_ext.models.convnet import ConvNet
from dll_ext.models.feedforward import FeedForward
from dll_ext.models.resnet import ResNet

__all__ = ["CLASSIFIERS", "build_classifier"]

CLASSIFIERS = ("feedforward", "convnet", "resnet")


def build_classifier(name: str, image_shape: Tuple[int, int, int], num_classes: int, dropout: float = 0.0,
                     native: bool = False) -> nn.Module:
    """The classifier `name` (one of CLASSIFIERS) with its default sizes, for square images of
    image_shape (C, H, W) (an ImageDataset's image_shape) and num_classes classes."""
    channels, height, width = image_shape
    if height != width:
        raise ValueError(f"build_classifier: the models take square images, got {height}x{width}")
    if name == "feedforward":
        return FeedForward(channels * height * width, num_classes, dropout=dropout, native=native)
    if name == "convnet":
        return ConvNet(channels, height, num_classes, dropout=dropout, native=native)
    if name == "resnet":
        return ResNet(channels, num_classes, dropout=dropout, native=native)
    raise ValueError(f"build_classifier: unknown model {name!r}; choose one of {', '.join(CLASSIFIERS)}")
