"""The N-back model of the course (chapter 3.2): a recurrent network reading one-hot symbols and a
linear classifier at every position, with dll_ext's fused LSTM."""
from typing import Optional

import torch.nn as nn
from torch import Tensor
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from dll_ext.models.layers import lstm

__all__ = ["NBackLSTM"]


class NBackLSTM(nn.Module):
    """linear(dropout(LSTM(inputs))) per position: dll_ext.nn.LSTM (native: nn.LSTM) over one-hot
    inputs of k symbols, num_classes logits at every position (2: "same as n back" or not).

    dropout applies to the LSTM's output and, with num_layers > 1, between its layers.
    """

    def __init__(self, k: int = 4, hidden_size: int = 64, num_layers: int = 1, num_classes: int = 2,
                 dropout: float = 0.0, batch_first: bool = True, native: bool = False) -> None:
        super().__init__()
        self.batch_first = batch_first
        # Between-layer dropout only exists with two layers or more (torch warns otherwise).
        self.lstm = lstm(k, hidden_size, num_layers, batch_first=batch_first,
                         dropout=dropout if num_layers > 1 else 0.0, native=native)
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(hidden_size, num_classes)

    def forward(self, inputs: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        """inputs (B, T, k) (batch_first) or (T, B, k), padded after each sequence's lengths[b]
        steps (lengths: int64 (B,), any order; None: no padding) -> logits (B, T, num_classes) or
        (T, B, num_classes). The LSTM runs over the valid steps only, as a PackedSequence; the
        logits at padded positions are those of a zero LSTM output, for a loss to ignore."""
        if lengths is None:
            output, _ = self.lstm(inputs)
        else:
            packed = pack_padded_sequence(inputs, lengths.cpu(), batch_first=self.batch_first, enforce_sorted=False)
            output, _ = self.lstm(packed)
            steps = inputs.size(1 if self.batch_first else 0)
            output, _ = pad_packed_sequence(output, batch_first=self.batch_first, total_length=steps)
        return self.linear(self.dropout(output))
