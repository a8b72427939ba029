"""LSTMCell: nn.LSTMCell with the fused dll_ext::lstm_cell op."""
from typing import Optional, Tuple

import torch
import torch.nn as nn

__all__ = ["LSTMCell"]


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
            with torch.no_grad():
                forget = slice(hidden_size, 2 * hidden_size)
                self.bias_ih[forget] = forget_bias
                self.bias_hh[forget] = 0.0

    def forward(self, input: torch.Tensor, hx: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        if input.dim() not in (1, 2):
            raise ValueError(f"LSTMCell: expected input to be 1-D or 2-D but received {input.dim()}-D tensor")
        batched = input.dim() == 2
        if not batched:
            input = input.unsqueeze(0)
        if hx is None:
            zeros = torch.zeros(input.size(0), self.hidden_size, dtype=input.dtype, device=input.device)
            h, c = zeros, zeros
        else:
            h, c = hx
            if not batched:
                h, c = h.unsqueeze(0), c.unsqueeze(0)
        hy, cy = torch.ops.dll_ext.lstm_cell(input, h, c, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        if not batched:
            return hy.squeeze(0), cy.squeeze(0)
        return hy, cy
