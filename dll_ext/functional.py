"""Functions over the dll_ext ops, in torch.nn.functional's style."""
import operator
from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F

from dll_ext.ops import conv_relu as _conv_relu
from dll_ext.ops import lstm as _lstm
from dll_ext.ops.attention import scaled_dot_product_attention

__all__ = ["conv2d_relu", "lstm_cell", "lstm_layer", "scaled_dot_product_attention"]


def _int(value, name: str, given) -> int:
    # Integers only, as F.conv2d: a float or bool would otherwise be truncated silently.
    if not isinstance(value, bool):
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise TypeError(f"conv2d_relu: {name} must be an int or a pair of ints, but got {given!r}")


def _pair(value: Union[int, List[int], Tuple[int, ...]], name: str) -> List[int]:
    if isinstance(value, (list, tuple)):
        values = [_int(v, name, value) for v in value]
    else:
        return [_int(value, name, value)] * 2
    if len(values) == 1:
        return values * 2
    if len(values) != 2:
        raise RuntimeError(f"conv2d_relu: {name} must be an int or a pair of ints, but got {value}")
    return values


def conv2d_relu(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    stride: Union[int, List[int], Tuple[int, int]] = 1,
    padding: Union[int, List[int], Tuple[int, int], str] = 0,
    dilation: Union[int, List[int], Tuple[int, int]] = 1,
    groups: int = 1,
) -> torch.Tensor:
    """relu(conv2d(input, weight, bias, stride, padding, dilation, groups)), fused.

    Arguments as F.conv2d, including padding='same' | 'valid' and an unbatched
    (C, H, W) input. Runs dll_ext.ops.conv_relu.conv2d_relu; differentiable in input, weight and bias.
    """
    stride_ = _pair(stride, "stride")
    dilation_ = _pair(dilation, "dilation")
    if isinstance(padding, str):
        if padding == "valid":
            padding_ = [0, 0]
        elif padding == "same":
            if stride_ != [1, 1]:
                raise RuntimeError(
                    f"conv2d_relu: padding='same' is not supported for strided convolutions (stride={stride_})")
            if weight.dim() != 4:
                raise RuntimeError("conv2d_relu: weight must be a 4-D tensor (C_out, C_in / groups, kH, kW), "
                                   f"but got shape {tuple(weight.shape)}")
            padding_, input_padding = _conv_relu.same_padding(list(weight.shape[2:]), dilation_)
            if any(input_padding):
                input = F.pad(input, input_padding)
        else:
            raise RuntimeError(
                f"conv2d_relu: padding must be 'same', 'valid', an int or a pair of ints, but got {padding!r}")
    else:
        padding_ = _pair(padding, "padding")
    return _conv_relu.conv2d_relu(input, weight, bias, stride_, padding_, dilation_, groups)


def lstm_cell(
    input: torch.Tensor,
    hx: Tuple[torch.Tensor, torch.Tensor],
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias_ih: Optional[torch.Tensor] = None,
    bias_hh: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """One LSTM step, fused: returns (h, c) as nn.LSTMCell does with these parameters.

    input is (B, input_size) or unbatched (input_size,); hx = (h, c), each (B, hidden_size)
    or (hidden_size,). Gate order i, f, g, o as torch.nn. Runs dll_ext.ops.lstm.lstm_cell;
    differentiable in every tensor argument.
    """
    return _lstm.lstm_cell(input, hx[0], hx[1], weight_ih, weight_hh, bias_ih, bias_hh)


def lstm_layer(
    input: torch.Tensor,
    hx: Optional[Tuple[torch.Tensor, torch.Tensor]],
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias_ih: Optional[torch.Tensor] = None,
    bias_hh: Optional[torch.Tensor] = None,
    lengths: Optional[Union[torch.Tensor, List[int]]] = None,
    reverse: bool = False,
    batch_first: bool = False,
) -> Tuple[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """A whole sequence through one LSTM layer and direction, fused: returns
    (output, (h_n, c_n)).

    input is (T, B, input_size), or (B, T, input_size) with batch_first; hx = (h_0, c_0),
    each (B, hidden_size), or None for zeros. lengths (B,), a CPU int64 tensor or a list, in
    any order: sequence b is input[:lengths[b], b]; output is zero past it, and (h_n, c_n)[b]
    is its state at its last valid step. reverse runs each sequence from its last valid step
    to its first, as the reverse direction of a bidirectional nn.LSTM does. Runs
    dll_ext.ops.lstm.lstm_layer; differentiable in input, hx and the weights.
    """
    if input.dim() != 3:
        raise RuntimeError("lstm_layer: input must be a 3-D tensor (seq_len, batch, input_size), "
                           f"but got shape {tuple(input.shape)}")
    if batch_first:
        input = input.transpose(0, 1)
    if hx is None:
        zeros = input.new_zeros((input.size(1), weight_hh.size(1)))
        hx = (zeros, zeros)
    if lengths is not None and not isinstance(lengths, torch.Tensor):
        lengths = torch.tensor(lengths, dtype=torch.int64)
    output, h, c = _lstm.lstm_layer(input, hx[0], hx[1], weight_ih, weight_hh, bias_ih, bias_hh, lengths, reverse)
    if batch_first:
        output = output.transpose(0, 1)
    return output, (h, c)
