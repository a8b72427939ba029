"""Fake kernels of the attention ops (dll_ext::attention, _attention_forward,
attention_backward).

They state only shapes and dtypes; the argument checks live once, in C++
(csrc/ops/attention/attention.cpp), and run when the real kernel does.
"""
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
