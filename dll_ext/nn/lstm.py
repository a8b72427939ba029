"""LSTMCell and LSTM: nn.LSTMCell and nn.LSTM on the fused dll_ext LSTM ops."""
from typing import List, Optional, Tuple, overload

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence

from dll_ext.ops.lstm import lstm_cell, lstm_layer, lstm_layer_packed

__all__ = ["LSTMCell", "LSTM"]


def _init_forget_bias(bias_ih: Tensor, bias_hh: Tensor, hidden_size: int, value: float) -> None:
    # The forget gate is the second quarter ([i | f | g | o]); the sum of both biases is
    # what the gate sees, so one carries the value and the other none.
    with torch.no_grad():
        forget = slice(hidden_size, 2 * hidden_size)
        bias_ih[forget] = value
        bias_hh[forget] = 0.0


class LSTMCell(nn.LSTMCell):
    """A drop-in nn.LSTMCell (a subclass: same constructor, parameters, initialisation and
    state_dict) whose step is one fused op, forward and backward.

    forget_bias: when given (requires bias=True), the forget-gate quarter of bias_ih is set to
    it and that of bias_hh to 0 at initialisation, so the cell starts by remembering.
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None,
                 forget_bias: Optional[float] = None) -> None:
        super().__init__(input_size, hidden_size, bias, device=device, dtype=dtype)
        if forget_bias is not None:
            if not bias:
                raise ValueError("LSTMCell: forget_bias needs bias=True")
            _init_forget_bias(self.bias_ih, self.bias_hh, hidden_size, forget_bias)

    def forward(self, input: torch.Tensor, hx: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        if input.dim() not in (1, 2):
            raise ValueError(f"LSTMCell: expected input to be 1-D or 2-D but received {input.dim()}-D tensor")
        if hx is not None:
            for name, state in (("hx[0]", hx[0]), ("hx[1]", hx[1])):
                if state.dim() not in (1, 2):
                    raise ValueError(f"LSTMCell: expected {name} to be 1-D or 2-D but received {state.dim()}-D tensor")
        if hx is None:
            batch: List[int] = [input.size(0)] if input.dim() == 2 else []
            zeros = torch.zeros(batch + [self.hidden_size], dtype=input.dtype, device=input.device)
            hx = (zeros, zeros)
        return lstm_cell(input, hx[0], hx[1], self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)


class LSTM(nn.RNNBase):
    """A drop-in nn.LSTM (same constructor, parameter names, initialisation and state_dict,
    same forward and return values, padded or PackedSequence input) whose every layer and
    direction is one fused op over the whole sequence, forward and backward:
    dll_ext::lstm_layer for padded input, dll_ext::lstm_layer_packed for a PackedSequence.

    It derives from nn.RNNBase in mode "LSTM", as nn.LSTM does, and not from nn.LSTM itself:
    torch.compile refuses to trace any instance of nn.LSTM.

    proj_size > 0 is not supported. forget_bias: when given (requires bias=True), every
    layer's forget-gate bias starts at it (in bias_ih; bias_hh's forget quarter at 0).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None, forget_bias: Optional[float] = None) -> None:
        if proj_size != 0:
            raise ValueError(f"dll_ext.nn.LSTM: proj_size > 0 is not supported (got proj_size={proj_size}); "
                             "use torch.nn.LSTM for projected LSTMs")
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size, device=device, dtype=dtype)
        if forget_bias is not None:
            if not bias:
                raise ValueError("LSTM: forget_bias needs bias=True")
            for name in self._flat_weights_names:
                if name.startswith("bias_ih"):
                    _init_forget_bias(getattr(self, name), getattr(self, name.replace("bias_ih", "bias_hh")),
                                      hidden_size, forget_bias)

    # nn.LSTM's checks and state permutation, for its (h, c) pair.
    check_forward_args = nn.LSTM.check_forward_args
    get_expected_cell_size = nn.LSTM.get_expected_cell_size
    permute_hidden = nn.LSTM.permute_hidden

    def _layers(self, input: Tensor, hx: Tuple[Tensor, Tensor],
                batch_sizes: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
        """Every layer and direction over time-major padded (T, B, ·) or packed (N, ·) input;
        hx and the returned states are (num_layers * num_directions, B, hidden_size)."""
        num_directions = 2 if self.bidirectional else 1
        per_direction = 4 if self.bias else 2
        weights = self._flat_weights
        h_n: List[Tensor] = []
        c_n: List[Tensor] = []
        output = input
        for layer in range(self.num_layers):
            if layer > 0 and self.dropout > 0.0:
                output = F.dropout(output, self.dropout, self.training)
            outputs: List[Tensor] = []
            for direction in range(num_directions):
                k = layer * num_directions + direction
                w = weights[k * per_direction:(k + 1) * per_direction]
                b_ih: Optional[Tensor] = w[2] if self.bias else None
                b_hh: Optional[Tensor] = w[3] if self.bias else None
                if batch_sizes is None:
                    out, h, c = lstm_layer(output, hx[0][k], hx[1][k], w[0], w[1], b_ih, b_hh, None, direction == 1)
                else:
                    out, h, c = lstm_layer_packed(output, batch_sizes, hx[0][k], hx[1][k], w[0], w[1], b_ih, b_hh,
                                                  direction == 1)
                outputs.append(out)
                h_n.append(h)
                c_n.append(c)
            output = outputs[0] if num_directions == 1 else torch.cat(outputs, -1)
        return output, torch.stack(h_n), torch.stack(c_n)

    def _zero_state(self, input: Tensor, batch: int) -> Tuple[Tensor, Tensor]:
        num_directions = 2 if self.bidirectional else 1
        zeros = torch.zeros(self.num_layers * num_directions, batch, self.hidden_size,
                            dtype=input.dtype, device=input.device)
        return zeros, zeros

    @overload  # type: ignore[override]
    @torch._jit_internal._overload_method  # noqa: F811
    def forward(self, input: Tensor,
                hx: Optional[Tuple[Tensor, Tensor]] = None) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        pass

    @overload
    @torch._jit_internal._overload_method  # noqa: F811
    def forward(self, input: PackedSequence,
                hx: Optional[Tuple[Tensor, Tensor]] = None) -> Tuple[PackedSequence, Tuple[Tensor, Tensor]]:
        pass

    def forward(self, input, hx=None):  # noqa: F811
        self._update_flat_weights()
        # The isinstance checks stay in conditionals: TorchScript compiles one overload each.
        if isinstance(input, PackedSequence):
            data, batch_sizes, sorted_indices, unsorted_indices = input
            if hx is None:
                hx = self._zero_state(data, int(batch_sizes[0]))
            else:
                self.check_forward_args(data, hx, batch_sizes)
                hx = self.permute_hidden(hx, sorted_indices)
            output, h_n, c_n = self._layers(data, hx, batch_sizes)
            packed = PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices)
            return packed, self.permute_hidden((h_n, c_n), unsorted_indices)
        if input.dim() not in (2, 3):
            raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {input.dim()}D instead")
        batched = input.dim() == 3
        batch_dim = 0 if self.batch_first else 1
        if not batched:
            input = input.unsqueeze(batch_dim)
            if hx is not None:
                if hx[0].dim() != 2 or hx[1].dim() != 2:
                    raise RuntimeError("For unbatched 2-D input, hx and cx should also be 2-D but got "
                                       f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors")
                hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
        elif hx is not None and (hx[0].dim() != 3 or hx[1].dim() != 3):
            raise RuntimeError("For batched 3-D input, hx and cx should also be 3-D but got "
                               f"({hx[0].dim()}-D, {hx[1].dim()}-D) tensors")
        if hx is None:
            hx = self._zero_state(input, input.size(batch_dim))
        self.check_forward_args(input, hx, None)
        time_major = input.transpose(0, 1) if self.batch_first else input
        output, h_n, c_n = self._layers(time_major, hx, None)
        if self.batch_first:
            output = output.transpose(0, 1).contiguous()  # contiguous, as nn.LSTM returns it
        if not batched:
            return output.squeeze(batch_dim), (h_n.squeeze(1), c_n.squeeze(1))
        return output, (h_n, c_n)
