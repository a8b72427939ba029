"""attention: scaled_dot_product_attention over torch.ops.dll_ext.attention, and the fake
kernels of the attention ops (dll_ext::attention, _attention_forward, attention_backward).

The fakes state only shapes and dtypes; the argument checks live once, in C++
(csrc/ops/attention/attention.cpp), and run when the real kernel does.
"""
from typing import List, Optional

import torch
from torch import Tensor

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


def _broadcast_shapes(shapes: List[List[int]], what: str) -> List[int]:
    # torch.broadcast_shapes, which TorchScript lacks.
    rank = 0
    for shape in shapes:
        rank = max(rank, len(shape))
    result: List[int] = []
    for d in range(rank):
        size = 1
        for shape in shapes:
            i = d - rank + len(shape)
            if i >= 0 and shape[i] != 1:
                if size != 1 and shape[i] != size:
                    raise RuntimeError(f"scaled_dot_product_attention: the {what} of query, key and value, "
                                       f"{shapes}, do not broadcast")
                size = shape[i]
        result.append(size)
    return result


def _as_heads(t: Tensor, batch: List[int], heads: int) -> Tensor:
    # t (..., heads or 1, rows, features) broadcast to batch + [heads] and viewed as the op's
    # (B, heads, rows, features): a view unless several batch dimensions must merge.
    t = t.expand(batch + [heads, t.shape[-2], t.shape[-1]])
    return t if len(batch) == 1 else t.reshape([-1, heads, t.shape[-2], t.shape[-1]])


def scaled_dot_product_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Optional[Tensor] = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: Optional[float] = None,
    enable_gqa: bool = False,
    key_padding_mask: Optional[Tensor] = None,
) -> Tensor:
    """softmax(query key^T * scale + mask) value, fused and tiled (memory linear in the
    sequence length): F.scaled_dot_product_attention's arguments, plus key_padding_mask.

    query (..., L, E), key (..., S, E), value (..., S, Ev): the leading dimensions broadcast
    as in F.scaled_dot_product_attention, and dimension -3 holds the heads. enable_gqa=True is
    grouped-query attention: key and value have Hkv heads, a divisor of query's Hq, and query
    head h reads key/value head h // (Hq / Hkv); the kernels read them so (no copies) and sum
    each group's key and value gradients. Key and value with one head serve every query head
    the same way. The two mask conventions, as in PyTorch:

    ================  =====================================  ==============================
    mask              True means                             float values
    ================  =====================================  ==============================
    attn_mask         may attend (F.scaled_dot_product_...)  added to the scores
    key_padding_mask  padded: never attended (nn.MHA)         added to the scores
    ================  =====================================  ==============================

    attn_mask broadcasts to (..., L, S); key_padding_mask is (B, S), B the batch of the op's
    (B, H, L, S) view: the first dimension of 4-D inputs, and of 3-D inputs without
    enable_gqa (one head per batch row). is_causal masks keys after the query's position
    (top-left aligned). A query row whose keys are all masked returns zeros and zero
    gradients (PyTorch returns NaN there). The gradient of a floating-point attn_mask that
    requires grad is returned, summed over its broadcast dimensions. dropout_p drops attention
    probabilities (scaling the kept ones by 1 / (1 - dropout_p)) whenever it is > 0, as
    F.scaled_dot_product_attention does: pass 0.0 in evaluation. Runs
    torch.ops.dll_ext.attention; dll_ext.functional exports it and
    dll_ext.nn.MultiheadAttention calls it (it is scriptable).
    """
    if query.dim() < 2 or key.dim() < 2 or value.dim() < 2:
        raise RuntimeError(f"scaled_dot_product_attention: query, key and value must be at least 2-D, but got shapes "
                           f"{list(query.shape)}, {list(key.shape)} and {list(value.shape)}")
    if enable_gqa:
        if query.dim() < 3 or key.dim() < 3 or value.dim() < 3:
            # IndexError, as F.scaled_dot_product_attention raises here.
            raise IndexError("scaled_dot_product_attention: enable_gqa needs a head dimension (-3) in query, key "
                             "and value")
        heads, kv_heads = query.size(-3), key.size(-3)
        for t in (key, value):
            if t.size(-3) == 0 or heads % t.size(-3) != 0:
                raise RuntimeError(f"scaled_dot_product_attention: with enable_gqa, the heads of key and value must "
                                   f"divide query's; got query {heads}, key {key.size(-3)} and value {value.size(-3)}")
        if value.size(-3) != kv_heads:
            # Groups of two sizes: the rare case PyTorch allows too, run with both repeated.
            key = key.repeat_interleave(heads // kv_heads, dim=-3)
            value = value.repeat_interleave(heads // value.size(-3), dim=-3)
            kv_heads = heads
        batch = _broadcast_shapes([query.shape[:-3], key.shape[:-3], value.shape[:-3]], "batch dimensions")
        lead = batch + [heads]
    else:
        lead = _broadcast_shapes([query.shape[:-2], key.shape[:-2], value.shape[:-2]], "leading dimensions")
        if len(lead) <= 1:
            # No head dimension: each batch row is one head.
            query, key, value = query.unsqueeze(-3), key.unsqueeze(-3), value.unsqueeze(-3)
            batch, heads = lead, 1
        else:
            batch, heads = lead[:-1], lead[-1]
        # Key and value that share their heads stay unexpanded (one head: one group of all).
        kv_heads = key.size(-3) if key.dim() >= 3 and key.size(-3) == value.size(-3) else heads
    L, S = query.shape[-2], key.shape[-2]
    q, k, v = _as_heads(query, batch, heads), _as_heads(key, batch, kv_heads), _as_heads(value, batch, kv_heads)
    if attn_mask is not None:
        if attn_mask.dim() > len(lead) + 2:
            raise RuntimeError(f"scaled_dot_product_attention: attn_mask of shape {list(attn_mask.shape)} does not "
                               f"broadcast to {lead + [L, S]}")
        if len(lead) == 1 and not enable_gqa and attn_mask.dim() == 3:
            attn_mask = attn_mask.unsqueeze(1)
        elif len(batch) != 1 and attn_mask.dim() > 2:
            attn_mask = attn_mask.expand(lead + [L, S]).reshape([-1, heads, L, S])
        if attn_mask.is_floating_point() and attn_mask.dtype != query.dtype:
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
    out = torch.ops.dll_ext.attention(q, k, v, attn_mask, key_padding_mask, is_causal, scale, dropout_p, seed)
    return out.reshape(lead + [L, out.shape[-1]])
