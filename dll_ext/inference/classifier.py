"""The image classifiers of `dll-ext train classify`: normalisation and the network in one module."""
import argparse
from typing import Any, Dict, List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.export import Dim

from dll_ext.training.pipelines.classify import _classifier

KIND = "classifier"


def load_model(config: Dict[str, Any], options: Dict[str, Any]) -> nn.Module:
    # The saved options are the parsed command line the run was built from.
    shape = config["image_shape"]
    return _classifier(argparse.Namespace(**options), shape, len(config["classes"]))


class ClassifierInference(nn.Module):
    """forward(images float (N, C, H, W) in [0, 1], a pixel over its maximum value) -> logits
    (N, classes), the run's channel normalisation applied first, as the pipeline does;
    classify(pixels uint8 (N, C, H, W)) -> probabilities (N, classes)."""

    kind: str
    classes: List[str]
    channels: int
    height: int
    width: int

    def __init__(self, model: nn.Module, config: Dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.kind = KIND
        self.classes = [str(c) for c in config["classes"]]
        self.channels, self.height, self.width = (int(s) for s in config["image_shape"])
        # float32 and shaped as dll_ext.data.Normalize holds them, so the arithmetic is the same.
        self.register_buffer("mean", torch.tensor(config["mean"], dtype=torch.float32).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(config["std"], dtype=torch.float32).view(-1, 1, 1))

    def forward(self, images: Tensor) -> Tensor:
        return self.model((images - self.mean) / self.std)

    @torch.jit.export
    def classify(self, pixels: Tensor) -> Tensor:
        return F.softmax(self.forward(pixels.float() / 255), dim=1)


def inference_module(model: nn.Module, config: Dict[str, Any]) -> nn.Module:
    return ClassifierInference(model, config)


def export_inputs(config: Dict[str, Any]) -> Tuple[Tuple[Tensor, ...], Any]:
    # Two images: torch.export specialises a dimension of size 1.
    images = torch.rand(2, *config["image_shape"])
    return (images,), ({0: Dim("batch", min=1, max=65536)},)
