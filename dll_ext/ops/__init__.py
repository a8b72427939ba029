"""The dll_ext ops: one module per op family with its callable functions (which
dll_ext.functional and dll_ext.nn call) and its fake (meta) kernels; the list of ops and
their supported dtypes.

Importing this registers, for every op, the shape-and-layout function that torch.compile,
torch.export and opcheck run on fake tensors. C++ (csrc/library.cpp) names this module, so
torch imports it by itself when an op is met without it.
"""
import torch

from dll_ext.ops import attention, conv_relu, lstm

# Each public op of torch.ops.dll_ext, with its internal ops (forward with saved state, backward).
OPS = {
    "conv2d_relu": ["conv2d_relu_backward"],
    "lstm_cell": ["_lstm_cell_forward", "lstm_cell_backward"],
    "lstm_layer": ["_lstm_layer_forward", "lstm_layer_backward"],
    "lstm_layer_packed": ["_lstm_layer_forward", "lstm_layer_backward"],
    "attention": ["_attention_forward", "attention_backward"],
}



def supported_dtypes(op: str, device: str) -> tuple:
    """The dtypes the kernels of public op `op` take on `device` ('cpu' or 'cuda'), from the
    op's table in C++ (the one its argument checks read)."""
    return tuple(getattr(torch, name) for name in torch.ops.dll_ext._supported_dtypes(op, device))


__all__ = ["OPS", "attention", "conv_relu", "lstm", "supported_dtypes"]
