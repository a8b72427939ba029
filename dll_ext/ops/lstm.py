"""Fake kernels of the LSTM ops (dll_ext::lstm_cell, _lstm_cell_forward, lstm_cell_backward).

They state only shapes and dtypes; the argument checks live once, in C++
(csrc/ops/lstm/lstm_cell.cpp), and run when the real kernel does.
"""
import torch

import dll_ext._loader  # noqa: F401  (the C++ library must be loaded to register fakes)


def _state_like(input, w_hh):
    return input.new_empty((input.shape[0], w_hh.shape[1]))


@torch.library.register_fake("dll_ext::lstm_cell")
def _lstm_cell_fake(input, hx, cx, w_ih, w_hh, b_ih, b_hh):
    return _state_like(input, w_hh), _state_like(input, w_hh)


@torch.library.register_fake("dll_ext::_lstm_cell_forward")
def _lstm_cell_forward_fake(input, hx, cx, w_ih, w_hh, b_ih, b_hh):
    gates = input.new_empty((input.shape[0], 4 * w_hh.shape[1]))
    return _state_like(input, w_hh), _state_like(input, w_hh), gates


@torch.library.register_fake("dll_ext::lstm_cell_backward")
def _lstm_cell_backward_fake(grad_hy, grad_cy, workspace, input, hx, cx, cy, w_ih, w_hh, has_bias,
                             output_mask=(True, True, True, True)):
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
