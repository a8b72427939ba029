"""Functions over the dll_ext ops, in torch.nn.functional's style."""
import operator
from typing import List, Optional, Tuple, Union

import torch
import torch.nn.functional as F

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
        raise ValueError(f"conv2d_relu: {name} must be an int or a pair of ints, but got {value}")
    return values


def _same_padding(input: torch.Tensor, weight: torch.Tensor, dilation: List[int]) -> Tuple[torch.Tensor, List[int]]:
    """Padding that keeps the spatial size at stride 1, as torch's padding='same'.

    An odd total is split with the extra row/column at the bottom/right, which a symmetric
    padding cannot express, so that part is padded onto the input explicitly.
    """
    padding: List[int] = []
    extra: List[int] = [0, 0, 0, 0]  # F.pad order: left, right, top, bottom
    for d in range(2):
        total = dilation[d] * (weight.shape[2 + d] - 1)
        padding.append(total // 2)
        if total % 2:
            extra[3 - 2 * d] = 1
    if any(extra):
        input = F.pad(input, extra)
    return input, padding


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
    (C, H, W) input. Runs torch.ops.dll_ext.conv2d_relu; differentiable in input, weight and bias.
    """
    stride_ = _pair(stride, "stride")
    dilation_ = _pair(dilation, "dilation")
    if isinstance(padding, str):
        if padding == "valid":
            padding_ = [0, 0]
        elif padding == "same":
            if stride_ != [1, 1]:
                raise ValueError(f"conv2d_relu: padding='same' is not supported for strided convolutions (stride={stride_})")
            if weight.dim() != 4:
                raise ValueError(f"conv2d_relu: weight must be a 4-D tensor (C_out, C_in / groups, kH, kW), but got shape {tuple(weight.shape)}")
            input, padding_ = _same_padding(input, weight, dilation_)
        else:
            raise ValueError(f"conv2d_relu: padding must be 'same', 'valid', an int or a pair of ints, but got {padding!r}")
    else:
        padding_ = _pair(padding, "padding")
    if input.dim() == 3:
        out = torch.ops.dll_ext.conv2d_relu(input.unsqueeze(0), weight, bias, stride_, padding_, dilation_, groups)
        return out.squeeze(0)
    return torch.ops.dll_ext.conv2d_relu(input, weight, bias, stride_, padding_, dilation_, groups)


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
    or (hidden_size,). Gate order i, f, g, o as torch.nn. Runs torch.ops.dll_ext.lstm_cell;
    differentiable in every tensor argument.
    """
    h, c = hx
    if input.dim() == 1:
        hy, cy = torch.ops.dll_ext.lstm_cell(
            input.unsqueeze(0), h.unsqueeze(0), c.unsqueeze(0), weight_ih, weight_hh, bias_ih, bias_hh
        )
        return hy.squeeze(0), cy.squeeze(0)
    hy, cy = torch.ops.dll_ext.lstm_cell(input, h, c, weight_ih, weight_hh, bias_ih, bias_hh)
    return hy, cy


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
    torch.ops.dll_ext.lstm_layer; differentiable in input, hx and the weights.
    """
    if input.dim() != 3:
        raise ValueError(f"lstm_layer: input must be a 3-D tensor (seq_len, batch, input_size), but got shape {tuple(input.shape)}")
    if batch_first:
        input = input.transpose(0, 1)
    if hx is None:
        zeros = input.new_zeros((input.size(1), weight_hh.size(1)))
        hx = (zeros, zeros)
    if lengths is not None and not isinstance(lengths, torch.Tensor):
        lengths = torch.tensor(lengths, dtype=torch.int64)
    output, h, c = torch.ops.dll_ext.lstm_layer(input, hx[0], hx[1], weight_ih, weight_hh, bias_ih, bias_hh,
                                                lengths, reverse)
    if batch_first:
        output = output.transpose(0, 1)
    return output, (h, c)


def scaled_dot_product_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: Optional[torch.Tensor] = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: Optional[float] = None,
    key_padding_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """softmax(query key^T * scale + mask) value, fused and tiled (memory linear in the
    sequence length): F.scaled_dot_product_attention's arguments, plus key_padding_mask.

    query (..., L, E), key (..., S, E), value (..., S, Ev) with the same leading (batch,
    heads) dimensions, 3-D or 4-D. The two mask conventions, as in PyTorch:

    ================  =====================================  ==============================
    mask              True means                             float values
    ================  =====================================  ==============================
    attn_mask         may attend (F.scaled_dot_product_...)  added to the scores
    key_padding_mask  padded: never attended (nn.MHA)         added to the scores
    ================  =====================================  ==============================

    attn_mask broadcasts to (B, H, L, S); key_padding_mask is (B, S). is_causal masks keys
    after the query's position (top-left aligned). A query row whose keys are all masked
    returns zeros and zero gradients (PyTorch returns NaN there). The gradient of a
    floating-point attn_mask that requires grad is returned, summed over its broadcast
    dimensions. dropout_p drops attention probabilities (scaling the kept ones by
    1 / (1 - dropout_p)) whenever it is > 0, as F.scaled_dot_product_attention does: pass
    0.0 in evaluation. Runs torch.ops.dll_ext.attention.
    """
    if query.dim() != 3 and query.dim() != 4:
        raise ValueError(f"scaled_dot_product_attention: query must be 3-D or 4-D, but got shape {list(query.shape)}")
    unbatched_heads = query.dim() == 3
    if unbatched_heads:
        query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
        if attn_mask is not None and attn_mask.dim() == 3:
            attn_mask = attn_mask.unsqueeze(1)
    if attn_mask is not None and attn_mask.is_floating_point() and attn_mask.dtype != query.dtype:
        attn_mask = attn_mask.to(query.dtype)
    if key_padding_mask is not None and key_padding_mask.dtype != torch.bool:
        # An additive key-padding mask joins the additive attn_mask.
        padding = key_padding_mask.to(query.dtype)[:, None, None, :]
        if attn_mask is None:
            attn_mask = padding
        elif attn_mask.dtype == torch.bool:
            attn_mask = torch.zeros_like(attn_mask, dtype=query.dtype).masked_fill(~attn_mask, float("-inf")) + padding
        else:
            attn_mask = attn_mask + padding
        key_padding_mask = None
    # The dropout mask is a hash of this seed (drawn from torch's default generator, so
    # torch.manual_seed makes runs repeat); the backward sees the same mask from it.
    seed: Optional[torch.Tensor] = None
    if dropout_p > 0.0:
        seed = torch.randint(0, 1 << 62, [1], dtype=torch.int64)
    out = torch.ops.dll_ext.attention(query, key, value, attn_mask, key_padding_mask, is_causal, scale, dropout_p, seed)
    return out.squeeze(1) if unbatched_heads else out
