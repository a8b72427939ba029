"""The layers a model builds from dll_ext.nn, or with native=True from torch.nn alone, under the same
parameter names and the same initialisation (so state_dicts load both ways and one seed gives
the same weights)."""
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

import dll_ext.nn

__all__ = ["NativeConv2dReLU", "conv2d_relu", "lstm"]


class NativeConv2dReLU(nn.Conv2d):
    """relu(conv2d(x)) as two torch ops: nn.Conv2d, then F.relu. The counterpart of
    dll_ext.nn.Conv2dReLU (both are nn.Conv2d's parameters and initialisation); nn.Sequential(
    Conv2d, ReLU) would move the parameters to other state_dict keys."""

    def forward(self, input: Tensor) -> Tensor:
        return F.relu(super().forward(input))


def conv2d_relu(*args, native: bool = False, **kwargs) -> nn.Conv2d:
    """relu(conv2d(x)) with nn.Conv2d's arguments: one fused dll_ext op, or with native the torch ops."""
    return (NativeConv2dReLU if native else dll_ext.nn.Conv2dReLU)(*args, **kwargs)


def lstm(*args, native: bool = False, **kwargs) -> nn.Module:
    """dll_ext.nn.LSTM, or with native nn.LSTM, with nn.LSTM's arguments."""
    return (nn.LSTM if native else dll_ext.nn.LSTM)(*args, **kwargs)
