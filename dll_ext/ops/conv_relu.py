"""Fake kernels of dll_ext::conv2d_relu and dll_ext::conv2d_relu_backward.

They state only shapes, dtypes and layouts; the argument checks live once, in C++
(csrc/ops/conv_relu/conv_relu.cpp), and run when the real kernel does.
"""
import torch

import dll_ext._loader  # noqa: F401  (the C++ library must be loaded to register fakes)


def is_channels_last(t):
    """The C++ rule (csrc/common/checks.h): laid out channels-last and not plain contiguous."""
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def _format(input, weight):
    return torch.channels_last if is_channels_last(input) or is_channels_last(weight) else torch.contiguous_format


def output_size(input, weight, stride, padding, dilation):
    n, _, h, w = input.shape
    sizes = [n, weight.shape[0]]
    for d, extent in enumerate((h, w)):
        effective = dilation[d] * (weight.shape[2 + d] - 1) + 1
        sizes.append((extent + 2 * padding[d] - effective) // stride[d] + 1)
    return sizes


@torch.library.register_fake("dll_ext::conv2d_relu")
def _conv2d_relu_fake(input, weight, bias, stride, padding, dilation, groups):
    torch._check(input.dim() == 4 and weight.dim() == 4, lambda: "conv2d_relu: input and weight must be 4-D")
    out = input.new_empty(output_size(input, weight, stride, padding, dilation))
    return out.contiguous(memory_format=_format(input, weight))


@torch.library.register_fake("dll_ext::conv2d_relu_backward")
def _conv2d_relu_backward_fake(grad_output, output, input, weight, stride, padding, dilation, groups, output_mask):
    fmt = _format(input, weight)
    grad_input = torch.empty_like(input, memory_format=fmt) if output_mask[0] else None
    weight_fmt = torch.channels_last if is_channels_last(weight) else torch.contiguous_format
    grad_weight = torch.empty_like(weight, memory_format=weight_fmt) if output_mask[1] else None
    grad_bias = output.new_empty(output.shape[1]) if output_mask[2] else None
    return grad_input, grad_weight, grad_bias
