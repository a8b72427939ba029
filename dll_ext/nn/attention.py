"""MultiheadAttention: nn.MultiheadAttention on the fused dll_ext::attention op."""
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from dll_ext.ops.attention import scaled_dot_product_attention

__all__ = ["MultiheadAttention"]


def _pad_one_key(mask: Optional[Tensor]) -> Optional[Tensor]:
    # One more key (bias_k/bias_v or the zero key) that every query may attend: False in
    # nn.MultiheadAttention's bool convention (True = masked), 0 in the additive one.
    return None if mask is None else F.pad(mask, (0, 1))


class MultiheadAttention(nn.MultiheadAttention):
    """A drop-in nn.MultiheadAttention (a subclass: same constructor, parameters,
    initialisation, state_dict, forward arguments and return values) whose attention is the
    fused, tiled dll_ext::attention op.

    The fused op runs when need_weights=False, with its own dropout in training (the same
    distribution as nn.MultiheadAttention's, drawn from a seed of torch's generator, but not the
    same mask). need_weights=True (nn.MultiheadAttention's default) returns the weights
    PyTorch returns (after dropout in training) and the output is computed from them, as
    nn.MultiheadAttention does. With is_causal=True, attn_mask is taken to be the causal mask
    it hints at (as nn.MultiheadAttention does) and the fused op skips the tiles above the
    diagonal, also together with a key_padding_mask (when no bias_k or zero key is
    appended). A query whose keys are all masked gives zeros (output and weights) where
    nn.MultiheadAttention gives NaN.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 add_bias_kv: bool = False, add_zero_attn: bool = False, kdim: Optional[int] = None,
                 vdim: Optional[int] = None, batch_first: bool = False, device=None, dtype=None) -> None:
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"MultiheadAttention: dropout must be in [0, 1), but got {dropout}")
        super().__init__(embed_dim, num_heads, dropout, bias, add_bias_kv, add_zero_attn, kdim, vdim, batch_first,
                         device=device, dtype=dtype)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Optional[Tensor] = None,
                need_weights: bool = True, attn_mask: Optional[Tensor] = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
        batched = query.dim() == 3
        if self.batch_first and batched:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        if not batched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        L, N, E = query.shape
        if E != self.embed_dim:
            raise ValueError(f"MultiheadAttention: query has embed_dim {E} but the module expects {self.embed_dim}")
        if key_padding_mask is not None and list(key_padding_mask.shape) != [N, key.shape[0]]:
            raise ValueError(f"MultiheadAttention: key_padding_mask must have shape (batch, S) = {[N, key.shape[0]]}, "
                             f"but got {list(key_padding_mask.shape)}")
        if is_causal and attn_mask is None:
            raise RuntimeError("MultiheadAttention: is_causal is a hint that attn_mask is causal and needs attn_mask; "
                               "Transformer.generate_square_subsequent_mask makes one")
        heads, head_dim = self.num_heads, self.head_dim

        # Projections (optional attributes bound to locals, as TorchScript refines only those).
        in_proj = self.in_proj_weight
        if in_proj is not None:
            w_q, w_k, w_v = in_proj.chunk(3)
        else:
            q_w, k_w, v_w = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
            assert q_w is not None and k_w is not None and v_w is not None
            w_q, w_k, w_v = q_w, k_w, v_w
        b_q: Optional[Tensor] = None
        b_k: Optional[Tensor] = None
        b_v: Optional[Tensor] = None
        in_bias = self.in_proj_bias
        if in_bias is not None:
            b_q, b_k, b_v = in_bias.chunk(3)
        q = F.linear(query, w_q, b_q)
        k = F.linear(key, w_k, b_k)
        v = F.linear(value, w_v, b_v)
        bias_k, bias_v = self.bias_k, self.bias_v
        if bias_k is not None and bias_v is not None:
            k = torch.cat([k, bias_k.repeat(1, N, 1)])
            v = torch.cat([v, bias_v.repeat(1, N, 1)])
            attn_mask = _pad_one_key(attn_mask)
            key_padding_mask = _pad_one_key(key_padding_mask)

        # (length, N, E) -> (N, heads, length, head_dim)
        q = q.reshape(L, N, heads, head_dim).permute(1, 2, 0, 3)
        k = k.reshape(k.shape[0], N, heads, head_dim).permute(1, 2, 0, 3)
        v = v.reshape(v.shape[0], N, heads, head_dim).permute(1, 2, 0, 3)
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(N, heads, 1, head_dim)], 2)
            v = torch.cat([v, v.new_zeros(N, heads, 1, head_dim)], 2)
            attn_mask = _pad_one_key(attn_mask)
            key_padding_mask = _pad_one_key(key_padding_mask)
        S = k.shape[2]

        # Masks in the op's convention: bool True = may attend, (L, S) or (N, heads, L, S).
        mask: Optional[Tensor] = None
        if attn_mask is not None:
            shape = list(attn_mask.shape)
            if attn_mask.dim() == 3:
                if shape != [N * heads, L, S]:
                    raise RuntimeError(f"MultiheadAttention: the 3-D attn_mask must have shape {[N * heads, L, S]}, "
                                       f"but got {shape}")
                attn_mask = attn_mask.view(N, heads, L, S)
            elif shape != [L, S]:
                raise RuntimeError(f"MultiheadAttention: attn_mask must have shape {[L, S]} or {[N * heads, L, S]}, "
                                   f"but got {shape}")
            mask = ~attn_mask if attn_mask.dtype == torch.bool else attn_mask
        # nn.MultiheadAttention takes the hint (and masks an appended bias_k or zero key like
        # any later key) only without a key_padding_mask; with one, its explicit mask, padded
        # to allow the appended key, is what counts. The hint is taken wherever that agrees.
        appended_key = bias_k is not None or self.add_zero_attn
        causal = is_causal and not need_weights and (key_padding_mask is None or not appended_key)
        if causal:
            mask = None  # the hint says it is causal: tiles above the diagonal are then skipped

        # The fused op when the weights are not wanted; when they are, the output is computed
        # from those same weights rather than a second time.
        dropout = self.dropout if self.training else 0.0
        weights: Optional[Tensor] = None
        if need_weights:
            probabilities = F.dropout(self._weights(q, k, mask, key_padding_mask), dropout)
            out = probabilities @ v
            weights = probabilities
        else:
            out = scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=causal,
                                               key_padding_mask=key_padding_mask)

        out = F.linear(out.permute(2, 0, 1, 3).reshape(L, N, E), self.out_proj.weight, self.out_proj.bias)
        if self.batch_first and batched:
            out = out.transpose(0, 1)
        if not batched:
            out = out.squeeze(1)
        if not need_weights or weights is None:
            return out, None
        if average_attn_weights:
            weights = weights.mean(1)
        return out, (weights if batched else weights.squeeze(0))

    def _weights(self, q: Tensor, k: Tensor, mask: Optional[Tensor], key_padding_mask: Optional[Tensor]) -> Tensor:
        """softmax(q k^T / sqrt(head_dim) + masks), (N, heads, L, S); rows with every key
        masked are zeros."""
        scores = q @ k.transpose(-2, -1) * (1.0 / float(self.head_dim) ** 0.5)
        if mask is not None:
            if mask.dtype == torch.bool:
                scores = scores.masked_fill(~mask, float("-inf"))
            else:
                scores = scores + mask
        if key_padding_mask is not None:
            padding = key_padding_mask[:, None, None, :]
            if padding.dtype == torch.bool:
                scores = scores.masked_fill(padding, float("-inf"))
            else:
                scores = scores + padding
        return torch.softmax(scores, -1).nan_to_num(0.0)
