"""Fake (meta) kernels of the dll_ext ops, and the list of ops.

Importing this registers, for every op, the shape-and-layout function that torch.compile,
torch.export and opcheck run on fake tensors. C++ (csrc/library.cpp) names this module, so
torch imports it by itself when an op is met without it.
"""
from dll_ext.ops import conv_relu

# Each public op of torch.ops.dll_ext, with its backward op.
OPS = {"conv2d_relu": "conv2d_relu_backward"}

__all__ = ["OPS", "conv_relu"]
