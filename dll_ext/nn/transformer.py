"""Transformer layers and stacks: the torch.nn classes with their attention on dll_ext's
MultiheadAttention (the fused dll_ext::attention op).

Differences from torch.nn: there is no nested-tensor / fast path, so eval mode computes
what training does: a query whose keys are all masked (by the attention mask and the key
padding mask together) gives zeros, as torch.nn gives in training, where torch.nn's eval-mode
fast path gives NaN; and padded positions hold computed values where the fast path of
torch.nn's TransformerEncoder leaves zeros. Errors torch.nn raises as AssertionError are
RuntimeError (input shapes), ValueError (key padding mask shapes, d_model not divisible by
nhead) or TypeError (mask dtypes) here.
"""
from typing import Callable, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from dll_ext.nn.attention import MultiheadAttention

__all__ = ["Transformer", "TransformerDecoder", "TransformerDecoderLayer", "TransformerEncoder",
           "TransformerEncoderLayer"]


def _check_layer_args(owner: str, d_model: int, nhead: int, dropout: float,
                      activation: Union[str, Callable[[Tensor], Tensor]]) -> None:
    # Before torch.nn's constructor, whose own checks are bare assertions or name other arguments.
    if d_model % nhead != 0:
        raise ValueError(f"{owner}: d_model ({d_model}) must be divisible by nhead ({nhead})")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"{owner}: dropout must be in [0, 1), but got {dropout}")
    if isinstance(activation, str) and activation not in ("relu", "gelu"):
        raise RuntimeError(f"{owner}: activation must be 'relu', 'gelu' or a callable, but got {activation!r}")


def _sequence(x: Tensor, name: str, d_model: int, batch_first: bool) -> Tuple[int, int, bool]:
    """(length, batch size, batched) of a (L, E), (L, N, E) or batch-first (N, L, E) input."""
    if x.dim() != 2 and x.dim() != 3:
        raise RuntimeError(f"{name} must be 2-D (unbatched) or 3-D, but got shape {list(x.shape)}")
    if x.size(-1) != d_model:
        raise RuntimeError(f"{name} has {x.size(-1)} features, but d_model is {d_model}")
    if x.dim() == 2:
        return x.size(0), 1, False
    return (x.size(1), x.size(0), True) if batch_first else (x.size(0), x.size(1), True)


def _check_mask_dtype(mask: Tensor, name: str) -> None:
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise TypeError(f"{name} must be a bool or floating-point tensor, but got {mask.dtype}")


def _check_attn_mask(mask: Optional[Tensor], name: str, is_causal: bool, hint: str, L: int, S: int, N: int,
                     nhead: int) -> None:
    if mask is None:
        if is_causal:
            raise RuntimeError(f"{hint} is a hint that {name} is causal and needs {name}; "
                               "Transformer.generate_square_subsequent_mask makes one")
        return
    _check_mask_dtype(mask, name)
    shape = list(mask.shape)
    if shape != [L, S] and shape != [N * nhead, L, S]:
        raise RuntimeError(f"{name} must have shape {[L, S]} or (batch * nhead, L, S) = {[N * nhead, L, S]}, "
                           f"but got {shape}")


def _check_padding_mask(mask: Optional[Tensor], name: str, S: int, N: int, batched: bool) -> None:
    if mask is None:
        return
    _check_mask_dtype(mask, name)
    expected = [N, S] if batched else [S]
    if list(mask.shape) != expected:
        raise ValueError(f"{name} must have shape {expected}, but got {list(mask.shape)}")


def _is_causal(mask: Optional[Tensor], hint: Optional[bool]) -> bool:
    """The hint if given; otherwise whether mask is the square causal mask (bool, True
    above the diagonal, or float, -inf there and 0 elsewhere), as torch.nn detects it."""
    if hint is not None:
        return hint
    # Comparing values is data-dependent control flow, which torch.compile cannot trace; the
    # hint only lets the op skip masked tiles, so a compiled model just applies the mask.
    if mask is None or mask.dim() != 2 or mask.size(0) != mask.size(1) or torch.compiler.is_compiling():
        return False
    above = torch.ones_like(mask, dtype=torch.bool).triu(1)
    if mask.dtype == torch.bool:
        return torch.equal(mask, above)
    return torch.equal(mask, torch.zeros_like(mask).masked_fill(above, float("-inf")))


class _Layer:
    """What both layers add to torch.nn's: checked arguments, dll_ext's attention, and the
    sub-blocks of their forwards (whose attributes torch.nn's constructors make)."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: Union[str, Callable[[Tensor], Tensor]] = F.relu, layer_norm_eps: float = 1e-5,
                 batch_first: bool = False, norm_first: bool = False, bias: bool = True, device=None,
                 dtype=None) -> None:
        _check_layer_args(type(self).__name__, d_model, nhead, dropout, activation)
        super().__init__(d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps, batch_first,
                         norm_first, bias, device=device, dtype=dtype)
        for module in self.children():
            if type(module) is nn.MultiheadAttention:
                # dll_ext's MultiheadAttention is a subclass that adds no state, so the module
                # torch.nn built becomes ours in place: its parameters, device, dtype and the
                # random numbers drawn to initialise them stay exactly torch.nn's.
                module.__class__ = MultiheadAttention

    def _self_attention(self, x: Tensor, mask: Optional[Tensor], padding: Optional[Tensor],
                        is_causal: bool) -> Tensor:
        out = self.self_attn(x, x, x, key_padding_mask=padding, need_weights=False, attn_mask=mask,
                             is_causal=is_causal)[0]
        return self.dropout1(out)

    def _feedforward(self, x: Tensor) -> Tensor:
        # Without the block's final dropout: dropout2 in the encoder layer, dropout3 in the decoder's.
        return self.linear2(self.dropout(self.activation(self.linear1(x))))


class TransformerEncoderLayer(_Layer, nn.TransformerEncoderLayer):
    """A drop-in nn.TransformerEncoderLayer (a subclass: same constructor, submodules,
    initialisation, state_dict and forward) whose self-attention is dll_ext's fused
    MultiheadAttention.

    Masks: src_mask bool (True = may not attend) or float (added), (L, L) or
    (batch * nhead, L, L); src_key_padding_mask bool (True = padded) or float, (batch, L).
    is_causal=True says src_mask is the causal mask: the fused op then skips the tiles
    above the diagonal.
    A query whose keys are all masked gives zeros where torch.nn's eval-mode fast path gives
    NaN (see the module docstring for all differences).
    """

    def forward(self, src: Tensor, src_mask: Optional[Tensor] = None, src_key_padding_mask: Optional[Tensor] = None,
                is_causal: bool = False) -> Tensor:
        attn = self.self_attn
        L, N, batched = _sequence(src, "src", attn.embed_dim, attn.batch_first)
        _check_attn_mask(src_mask, "src_mask", is_causal, "is_causal", L, L, N, attn.num_heads)
        _check_padding_mask(src_key_padding_mask, "src_key_padding_mask", L, N, batched)
        x = src
        if self.norm_first:
            x = x + self._self_attention(self.norm1(x), src_mask, src_key_padding_mask, is_causal)
            return x + self.dropout2(self._feedforward(self.norm2(x)))
        x = self.norm1(x + self._self_attention(x, src_mask, src_key_padding_mask, is_causal))
        return self.norm2(x + self.dropout2(self._feedforward(x)))


class TransformerDecoderLayer(_Layer, nn.TransformerDecoderLayer):
    """A drop-in nn.TransformerDecoderLayer (a subclass: same constructor, submodules,
    initialisation, state_dict and forward) whose self- and cross-attention are dll_ext's
    fused MultiheadAttention.

    Masks as in TransformerEncoderLayer: tgt_mask (T, T) or (batch * nhead, T, T),
    memory_mask (T, S) or (batch * nhead, T, S), key padding masks (batch, T) and
    (batch, S); tgt_is_causal / memory_is_causal say the mask is causal (top-left aligned).
    A query whose keys are all masked gives zeros where torch.nn's eval-mode fast path gives
    NaN (see the module docstring for all differences).
    """

    def forward(self, tgt: Tensor, memory: Tensor, tgt_mask: Optional[Tensor] = None,
                memory_mask: Optional[Tensor] = None, tgt_key_padding_mask: Optional[Tensor] = None,
                memory_key_padding_mask: Optional[Tensor] = None, tgt_is_causal: bool = False,
                memory_is_causal: bool = False) -> Tensor:
        attn = self.self_attn
        T, N, batched = _sequence(tgt, "tgt", attn.embed_dim, attn.batch_first)
        S, memory_N, _ = _sequence(memory, "memory", attn.embed_dim, attn.batch_first)
        if memory.dim() != tgt.dim() or memory_N != N:
            raise RuntimeError(f"memory and tgt must have the same batch size (or both be unbatched), but got "
                               f"shapes {list(memory.shape)} and {list(tgt.shape)}")
        _check_attn_mask(tgt_mask, "tgt_mask", tgt_is_causal, "tgt_is_causal", T, T, N, attn.num_heads)
        _check_attn_mask(memory_mask, "memory_mask", memory_is_causal, "memory_is_causal", T, S, N, attn.num_heads)
        _check_padding_mask(tgt_key_padding_mask, "tgt_key_padding_mask", T, N, batched)
        _check_padding_mask(memory_key_padding_mask, "memory_key_padding_mask", S, N, batched)
        x = tgt
        if self.norm_first:
            x = x + self._self_attention(self.norm1(x), tgt_mask, tgt_key_padding_mask, tgt_is_causal)
            x = x + self._cross_attention(self.norm2(x), memory, memory_mask, memory_key_padding_mask,
                                          memory_is_causal)
            return x + self.dropout3(self._feedforward(self.norm3(x)))
        x = self.norm1(x + self._self_attention(x, tgt_mask, tgt_key_padding_mask, tgt_is_causal))
        x = self.norm2(x + self._cross_attention(x, memory, memory_mask, memory_key_padding_mask, memory_is_causal))
        return self.norm3(x + self.dropout3(self._feedforward(x)))

    def _cross_attention(self, x: Tensor, memory: Tensor, mask: Optional[Tensor], padding: Optional[Tensor],
                         is_causal: bool) -> Tensor:
        out = self.multihead_attn(x, memory, memory, key_padding_mask=padding, need_weights=False, attn_mask=mask,
                                  is_causal=is_causal)[0]
        return self.dropout2(out)


class TransformerEncoder(nn.TransformerEncoder):
    """A drop-in nn.TransformerEncoder: num_layers copies of encoder_layer (give it a
    dll_ext TransformerEncoderLayer for the fused attention), then norm if given.

    enable_nested_tensor and mask_check are kept as attributes only: there is no
    nested-tensor path (use_nested_tensor is False). is_causal=None detects whether mask is
    the causal mask, as torch.nn does (not under torch.compile, which cannot trace that
    test; pass is_causal there to skip the masked tiles).
    A query whose keys are all masked gives zeros where torch.nn's eval-mode fast path gives
    NaN (see the module docstring for all differences).
    """

    def __init__(self, encoder_layer: nn.Module, num_layers: int, norm: Optional[nn.Module] = None,
                 enable_nested_tensor: bool = True, mask_check: bool = True) -> None:
        # enable_nested_tensor=False to torch.nn: it would otherwise warn about its fast path's conditions.
        super().__init__(encoder_layer, num_layers, norm, enable_nested_tensor=False, mask_check=mask_check)
        self.enable_nested_tensor = enable_nested_tensor

    def forward(self, src: Tensor, mask: Optional[Tensor] = None, src_key_padding_mask: Optional[Tensor] = None,
                is_causal: Optional[bool] = None) -> Tensor:
        causal = _is_causal(mask, is_causal)
        out = src
        for layer in self.layers:
            out = layer(out, src_mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=causal)
        if self.norm is not None:
            out = self.norm(out)
        return out


class TransformerDecoder(nn.TransformerDecoder):
    """A drop-in nn.TransformerDecoder: num_layers copies of decoder_layer (give it a
    dll_ext TransformerDecoderLayer for the fused attention), then norm if given.
    tgt_is_causal=None detects a causal tgt_mask as TransformerEncoder does.
    A query whose keys are all masked gives zeros where torch.nn's eval-mode fast path gives
    NaN (see the module docstring for all differences).
    """

    def forward(self, tgt: Tensor, memory: Tensor, tgt_mask: Optional[Tensor] = None,
                memory_mask: Optional[Tensor] = None, tgt_key_padding_mask: Optional[Tensor] = None,
                memory_key_padding_mask: Optional[Tensor] = None, tgt_is_causal: Optional[bool] = None,
                memory_is_causal: bool = False) -> Tensor:
        causal = _is_causal(tgt_mask, tgt_is_causal)
        out = tgt
        for layer in self.layers:
            out = layer(out, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                        tgt_key_padding_mask=tgt_key_padding_mask, memory_key_padding_mask=memory_key_padding_mask,
                        tgt_is_causal=causal, memory_is_causal=memory_is_causal)
        if self.norm is not None:
            out = self.norm(out)
        return out


class Transformer(nn.Transformer):
    """A drop-in nn.Transformer (a subclass: same constructor, submodules, state_dict,
    forward and, for the same seed, the same xavier_uniform_ initialisation) built of
    dll_ext's TransformerEncoder/Decoder and layers, unless custom_encoder/custom_decoder
    are given. generate_square_subsequent_mask is torch.nn's.
    A query whose keys are all masked gives zeros where torch.nn's eval-mode fast path gives
    NaN (see the module docstring for all differences).
    """

    def __init__(self, d_model: int = 512, nhead: int = 8, num_encoder_layers: int = 6, num_decoder_layers: int = 6,
                 dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: Union[str, Callable[[Tensor], Tensor]] = F.relu,
                 custom_encoder: Optional[nn.Module] = None, custom_decoder: Optional[nn.Module] = None,
                 layer_norm_eps: float = 1e-5, batch_first: bool = False, norm_first: bool = False, bias: bool = True,
                 device=None, dtype=None) -> None:
        layer_args = (d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps, batch_first, norm_first,
                      bias)
        factory = dict(device=device, dtype=dtype)

        def final_norm() -> nn.LayerNorm:
            return nn.LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **factory)

        # Built in torch.nn's order (encoder, then decoder), which torch.nn's constructor then
        # takes as custom modules and initialises with xavier_uniform_ as its own.
        if custom_encoder is None:
            custom_encoder = TransformerEncoder(TransformerEncoderLayer(*layer_args, **factory), num_encoder_layers,
                                                final_norm())
        if custom_decoder is None:
            custom_decoder = TransformerDecoder(TransformerDecoderLayer(*layer_args, **factory), num_decoder_layers,
                                                final_norm())
        super().__init__(d_model, nhead, num_encoder_layers, num_decoder_layers, dim_feedforward, dropout, activation,
                         custom_encoder, custom_decoder, layer_norm_eps, batch_first, norm_first, bias, **factory)

    def forward(self, src: Tensor, tgt: Tensor, src_mask: Optional[Tensor] = None, tgt_mask: Optional[Tensor] = None,
                memory_mask: Optional[Tensor] = None, src_key_padding_mask: Optional[Tensor] = None,
                tgt_key_padding_mask: Optional[Tensor] = None, memory_key_padding_mask: Optional[Tensor] = None,
                src_is_causal: Optional[bool] = None, tgt_is_causal: Optional[bool] = None,
                memory_is_causal: bool = False) -> Tensor:
        # RuntimeError, as torch.nn raises for these two.
        if src.dim() == 3 and tgt.dim() == 3:
            batch = 0 if self.batch_first else 1
            if src.size(batch) != tgt.size(batch):
                raise RuntimeError(f"the batch size of src ({src.size(batch)}) and tgt ({tgt.size(batch)}) must be "
                                   "equal")
        if src.size(-1) != self.d_model or tgt.size(-1) != self.d_model:
            raise RuntimeError(f"src and tgt must have d_model = {self.d_model} features, but have {src.size(-1)} "
                               f"and {tgt.size(-1)}")
        memory = self.encoder(src, mask=src_mask, src_key_padding_mask=src_key_padding_mask, is_causal=src_is_causal)
        return self.decoder(tgt, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                            tgt_key_padding_mask=tgt_key_padding_mask,
                            memory_key_padding_mask=memory_key_padding_mask, tgt_is_causal=tgt_is_causal,
                            memory_is_causal=memory_is_causal)
