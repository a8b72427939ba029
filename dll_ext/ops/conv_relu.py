"""conv2d_relu: the callable op over torch.ops.dll_ext.conv2d_relu, the 'same' padding of
its callers, and the fake kernels of dll_ext::conv2d_relu and dll_ext::conv2d_relu_backward.

The fakes state only shapes, dtypes and layouts; the argument checks live once, in C++
(csrc/ops/conv_relu/conv_relu.cpp), and run when the real kernel does. The functions here
are scriptable: dll_ext.nn.Conv2dReLU calls them from its forward.
"""
from typing import List, Optional, Tuple

import torch

import dll_ext._loader  # noqa: F401  (the C++ library must be loaded to register fakes)


def same_padding(kernel_size: List[int], dilation: List[int]) -> Tuple[List[int], List[int]]:
    """The padding that keeps the spatial size at stride 1, as torch's padding='same': the
    symmetric padding the op gets, and what must be padded onto the input first (F.pad
    order: left, right, top, bottom). An odd total puts its extra row/column at the
    bottom/right, which a symmetric padding cannot express."""
    op_padding: List[int] = [0, 0]
    input_padding: List[int] = [0, 0, 0, 0]
    for d in range(2):
        total = dilation[d] * (kernel_size[d] - 1)
        op_padding[d] = total // 2
        input_padding[3 - 2 * d] = total % 2
    return op_padding, input_padding


def conv2d_relu(input: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], stride: List[int],
                padding: List[int], dilation: List[int], groups: int) -> torch.Tensor:
    """relu(conv2d(...)) of a batched (N, C, H, W) or unbatched (C, H, W) input, with the
    op's explicit arguments (dll_ext.functional.conv2d_relu takes F.conv2d's forms)."""
    if input.dim() == 3:
        return torch.ops.dll_ext.conv2d_relu(input.unsqueeze(0), weight, bias, stride, padding, dilation,
                                             groups).squeeze(0)
    return torch.ops.dll_ext.conv2d_relu(input, weight, bias, stride, padding, dilation, groups)


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
