"""attention: scaled_dot_product_attention over torch.ops.dll_ext.attention, and the fake
kernels of the attention ops (dll_ext::attention, _attention_forward, attention_backward).

The fakes state only shapes and dtypes; the argument checks live once, in C++
(csrc/ops/attention/attention.cpp), and run when the real kernel does.
"""
from typing import Optional

import torch

import dll_ext._loader  # noqa: F401  (the C++ library must be loaded to register fakes)


def _out(query, value):
    return query.new_empty((*query.shape[:3], value.shape[3]))


def _lse(query):
    # The accumulation type: float32 for float16/bfloat16 queries (as lse_dtype in C++).
    dtype = torch.float32 if query.dtype in (torch.float16, torch.bfloat16) else query.dtype
    return query.new_empty(query.shape[:3], dtype=dtype)


@torch.library.register_fake("dll_ext::attention")
def _attention_fake(query, key, value, attn_mask=None, key_padding_mask=None, is_causal=False, scale=None,
                    dropout_p=0.0, dropout_seed=None):
    return _out(query, value)


@torch.library.register_fake("dll_ext::_attention_forward")
def _attention_forward_fake(query, key, value, attn_mask, key_padding_mask, is_causal, scale, dropout_p, dropout_seed):
    return _out(query, value), _lse(query)


@torch.library.register_fake("dll_ext::attention_backward")
def _attention_backward_fake(grad_out, query, key, value, out, lse, attn_mask, key_padding_mask, is_causal, scale,
                             dropout_p, dropout_seed, mask_grad):
    grad_mask = attn_mask.new_empty(attn_mask.shape) if mask_grad else None
    return query.new_empty(query.shape), key.new_empty(key.shape), value.new_empty(value.shape), grad_mask


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
    0.0 in evaluation. Runs torch.ops.dll_ext.attention; dll_ext.functional exports it and
    dll_ext.nn.MultiheadAttention calls it (it is scriptable).
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
