"""The LSTM ops: lstm_cell, lstm_layer and lstm_layer_packed over torch.ops.dll_ext, and the
fake kernels of those ops and of their internal forward and backward ops.

The fakes state only shapes and dtypes; the argument checks live once, in C++
(csrc/ops/lstm/lstm.cpp, lstm_cell.cpp, lstm_layer.cpp), and run when the real kernel
does. The functions are scriptable: dll_ext.nn.LSTMCell and LSTM call them from forward.
"""
import math
from typing import Optional, Tuple

import torch
from torch import Tensor

import dll_ext._loader  # noqa: F401  (the C++ library must be loaded to register fakes)


def lstm_cell(input: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
              b_hh: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """One step: (h', c') from input (B, input_size) and h, c (B, hidden_size), or from an
    unbatched input (input_size,) and h, c (hidden_size,)."""
    if input.dim() == 1:
        hy, cy = torch.ops.dll_ext.lstm_cell(input.unsqueeze(0), h.unsqueeze(0), c.unsqueeze(0), w_ih, w_hh, b_ih,
                                             b_hh)
        return hy.squeeze(0), cy.squeeze(0)
    hy, cy = torch.ops.dll_ext.lstm_cell(input, h, c, w_ih, w_hh, b_ih, b_hh)
    return hy, cy


def lstm_layer(input: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
               b_hh: Optional[Tensor], lengths: Optional[Tensor], reverse: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """One layer and direction over padded (T, B, input_size) input with optional lengths
    (CPU int64, any order): (output, h_n, c_n)."""
    output, hy, cy = torch.ops.dll_ext.lstm_layer(input, h, c, w_ih, w_hh, b_ih, b_hh, lengths, reverse)
    return output, hy, cy


def lstm_layer_packed(input: Tensor, batch_sizes: Tensor, h: Tensor, c: Tensor, w_ih: Tensor, w_hh: Tensor,
                      b_ih: Optional[Tensor], b_hh: Optional[Tensor], reverse: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """One layer and direction over a PackedSequence's data and batch_sizes: (output, h_n, c_n)."""
    output, hy, cy = torch.ops.dll_ext.lstm_layer_packed(input, batch_sizes, h, c, w_ih, w_hh, b_ih, b_hh, reverse)
    return output, hy, cy


def _state_like(input, w_hh):
    return input.new_empty((input.shape[0], w_hh.shape[1]))


@torch.library.register_fake("dll_ext::lstm_cell")
def _lstm_cell_fake(input, hx, cx, w_ih, w_hh, b_ih, b_hh):
    return _state_like(input, w_hh), _state_like(input, w_hh)


@torch.library.register_fake("dll_ext::_lstm_cell_forward")
def _lstm_cell_forward_fake(input, hx, cx, w_ih, w_hh, b_ih, b_hh):
    gates = input.new_empty((input.shape[0], 4 * w_hh.shape[1]))
    return _state_like(input, w_hh), _state_like(input, w_hh), gates


def _grads(output_mask, input, hx, cx, w_ih, w_hh, has_bias):
    # Gradients of input, hx, cx, w_ih, w_hh and the bias, as both backward ops return them.
    def grad_if(wanted, like):
        return like.new_empty(like.shape) if wanted else None

    grad_bias = w_hh.new_empty((w_hh.shape[0],)) if has_bias else None
    return (
        grad_if(output_mask[0], input),
        grad_if(output_mask[1], hx),
        cx.new_empty(cx.shape),
        grad_if(output_mask[2], w_ih),
        grad_if(output_mask[3], w_hh),
        grad_bias,
    )


@torch.library.register_fake("dll_ext::lstm_cell_backward")
def _lstm_cell_backward_fake(grad_hy, grad_cy, workspace, input, hx, cx, cy, w_ih, w_hh, has_bias,
                             output_mask=(True, True, True, True)):
    return _grads(output_mask, input, hx, cx, w_ih, w_hh, has_bias)


def _layer_outputs(input, hx, w_hh):
    hidden = w_hh.shape[1]
    return input.new_empty((*input.shape[:-1], hidden)), hx.new_empty(hx.shape), hx.new_empty(hx.shape)


@torch.library.register_fake("dll_ext::lstm_layer")
def _lstm_layer_fake(input, hx, cx, w_ih, w_hh, b_ih, b_hh, lengths=None, reverse=False):
    return _layer_outputs(input, hx, w_hh)


@torch.library.register_fake("dll_ext::lstm_layer_packed")
def _lstm_layer_packed_fake(input, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, reverse=False):
    return _layer_outputs(input, hx, w_hh)


@torch.library.register_fake("dll_ext::_lstm_layer_forward")
def _lstm_layer_forward_fake(input, lengths, batch_sizes, hx, cx, w_ih, w_hh, b_ih, b_hh, reverse):
    # The workspace has a row per input position (padded or packed), whatever the lengths.
    positions = math.prod(input.shape[:-1])
    hidden = w_hh.shape[1]
    gates = input.new_empty((positions, 4 * hidden))
    cells = input.new_empty((positions, hidden))
    return (*_layer_outputs(input, hx, w_hh), gates, cells)


@torch.library.register_fake("dll_ext::lstm_layer_backward")
def _lstm_layer_backward_fake(grad_output, grad_hy, grad_cy, input, lengths, batch_sizes, hx, cx, w_ih, w_hh,
                              output, gates, cells, has_bias, reverse, output_mask=(True, True, True, True)):
    return _grads(output_mask, input, hx, cx, w_ih, w_hh, has_bias)
