"""The course's two-layer feed-forward network (chapter 2, the MNIST full example)."""
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ["FeedForward"]


class FeedForward(nn.Module):
    """fc2(dropout(relu(fc1(x)))) on images flattened to input_size values: the course's FFModel
    (input_size 784, hidden_size 512, num_classes 10 for MNIST), with a dropout option.

    native is taken so that every model takes it; this network has no layer that dll_ext
    replaces (there is no fused linear layer), so both builds are the same torch.nn layers.
    """

    def __init__(self, input_size: int, num_classes: int, hidden_size: int = 512, dropout: float = 0.0,
                 native: bool = False) -> None:
        super().__init__()
        self.fc1 = nn.Linear(input_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden_size, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        """images (B, C, H, W) with C * H * W = input_size -> logits (B, num_classes)."""
        return self.fc2(self.dropout(F.relu(self.fc1(images.flatten(1)))))
