"""The N-back model of `dll-ext train nback`: symbols in, one prediction per position out."""
from typing import Any, Dict

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from dll_ext.models import NBackLSTM

KIND = "nback"


def load_model(config: Dict[str, Any], options: Dict[str, Any]) -> nn.Module:
    return NBackLSTM(config["k"], config["hidden_size"], config["layers"], native=options.get("native", False))


class NBackInference(nn.Module):
    """forward(symbols int64 (B, T) in [0, k), lengths int64 (B,)) -> predictions int64 (B, T):
    1 where the symbol equals the one n positions back, 0 where not, -1 after each sequence's
    length. The one-hot inputs are zero at padded positions, as dll_ext.data.NBackCollate makes them."""

    kind: str
    k: int
    n: int

    def __init__(self, model: nn.Module, config: Dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.kind = KIND
        self.k, self.n = int(config["k"]), int(config["n"])

    def forward(self, symbols: Tensor, lengths: Tensor) -> Tensor:
        if symbols.dim() != 2 or lengths.dim() != 1 or lengths.size(0) != symbols.size(0):
            raise ValueError("nback: expected symbols (B, T) and lengths (B,)")
        valid = torch.arange(symbols.size(1)).unsqueeze(0) < lengths.unsqueeze(1)
        # Whatever fills the padding, it is not a symbol.
        symbols = symbols.masked_fill(~valid, 0)
        if symbols.numel() > 0 and (int(symbols.min()) < 0 or int(symbols.max()) >= self.k):
            raise ValueError("nback: symbols must be in [0, k)")
        one_hot = F.one_hot(symbols, self.k).float() * valid.unsqueeze(2).float()
        predictions = self.model(one_hot, lengths).argmax(2)
        return predictions.masked_fill(~valid, -1)


def inference_module(model: nn.Module, config: Dict[str, Any]) -> nn.Module:
    return NBackInference(model, config)

# Tried with torch 2.14: torch.export stops at pack_padded_sequence, whose batch sizes are
# computed from the values of `lengths` (a data-dependent shape), after a guard on the symbol
# check's values; so there is no export_inputs and no .pt2 for this model.
AOTI_UNSUPPORTED = ("torch.export cannot trace pack_padded_sequence: its output shape depends on the "
                    "values of lengths (a data-dependent shape)")
