"""The Transformer encoder-decoder of chapter 4 for sequence-to-sequence tasks (issue 6), on
dll_ext.nn.Transformer (native: torch.nn.Transformer), with greedy decoding in TorchScript."""
import math
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

import dll_ext.nn
from dll_ext.models.seq2seq import Seq2SeqModel

__all__ = ["Seq2SeqTransformer", "sinusoidal_positions"]

# (memory (B, S, d_model), source padding bool (B, S), the tokens fed so far (B, t) from <sos> on)
TransformerState = Tuple[Tensor, Tensor, Tensor]


def sinusoidal_positions(length: int, d_model: int) -> Tensor:
    """float32 (length, d_model): row i is e(i), e(i)_{2k} = sin(i / 10000^(2k / d_model)) and
    e(i)_{2k+1} = cos(i / 10000^(2k / d_model)) (computed in float64, then rounded)."""
    positions = torch.arange(length, dtype=torch.float64).unsqueeze(1)
    frequencies = torch.pow(10000.0, -torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    angles = positions * frequencies
    table = torch.empty(length, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(angles)
    table[:, 1::2] = torch.cos(angles)[:, :d_model // 2]  # an odd d_model has one sine more than cosines
    return table.float()


def causal_mask(length: int, device: torch.device) -> Tensor:
    """bool (length, length), True above the diagonal: position t may not attend to later ones."""
    return torch.ones(length, length, dtype=torch.bool, device=device).triu(1)


class Seq2SeqTransformer(Seq2SeqModel):
    """output(Transformer(embed(source), embed(target_input))): one embedding for source and
    target (one vocabulary), scaled by sqrt(d_model), plus the sinusoidal positional encoding
    (a computed buffer of max_length rows, not in the state_dict), dropout, a post-norm
    dll_ext.nn.Transformer (native: torch.nn.Transformer) with batch_first=True, and a linear
    layer to the vocabulary's logits.

    The embedding starts at N(0, 1 / d_model) (pad_id's row 0, never trained), so that the
    scaled embeddings have unit variance like the positional encoding they are added to.
    Masks: padded source positions (from source_lengths) are masked as keys in the encoder's
    self-attention and the decoder's cross-attention; target positions holding pad_id as keys
    in the decoder's self-attention, together with the causal mask (tgt_is_causal=True).

    Decoding (greedy, beam search) recomputes the decoder over the whole prefix at each step
    (no key/value cache): simple and exact, quadratic in the answer's length.
    """

    def __init__(self, vocab_size: int, pad_id: int, sos_id: int, eos_id: int, d_model: int = 256, nhead: int = 8,
                 num_encoder_layers: int = 3, num_decoder_layers: int = 3, dim_feedforward: int = 1024,
                 dropout: float = 0.1, max_length: int = 512, native: bool = False) -> None:
        super().__init__(vocab_size, pad_id, sos_id, eos_id, max_length)
        if num_decoder_layers < 1:
            raise ValueError(f"Seq2SeqTransformer: num_decoder_layers must be at least 1, got {num_decoder_layers}")
        self.embedding_scale = math.sqrt(d_model)
        self.embedding = nn.Embedding(vocab_size, d_model, padding_idx=pad_id)
        with torch.no_grad():
            self.embedding.weight.normal_(0.0, d_model ** -0.5)
            self.embedding.weight[pad_id].zero_()
        self.register_buffer("positions", sinusoidal_positions(max_length, d_model), persistent=False)
        self.dropout = nn.Dropout(dropout)
        transformer = nn.Transformer if native else dll_ext.nn.Transformer
        self.transformer = transformer(d_model, nhead, num_encoder_layers, num_decoder_layers, dim_feedforward,
                                       dropout, batch_first=True)
        self.output = nn.Linear(d_model, vocab_size)

    def _embed(self, tokens: Tensor) -> Tensor:
        """dropout(embedding * sqrt(d_model) + positions), (B, L, d_model)."""
        positions = self.positions[:tokens.size(1)]
        return self.dropout(self.embedding(tokens) * self.embedding_scale + positions)

    def _decode(self, memory: Tensor, source_padding: Tensor, target: Tensor) -> Tensor:
        """The decoder stack's output (B, T, d_model) for target tokens (B, T)."""
        mask = causal_mask(target.size(1), target.device)
        return self.transformer.decoder(self._embed(target), memory, tgt_mask=mask,
                                        tgt_key_padding_mask=target == self.pad_id,
                                        memory_key_padding_mask=source_padding, tgt_is_causal=True)

    @torch.jit.export
    def encode(self, source: Tensor, source_lengths: Tensor) -> TransformerState:
        """The decoder's initial state: (memory (B, S, d_model), source padding (B, S), no tokens yet (B, 0))."""
        self.check_source(source, source_lengths)
        source_padding = self.source_padding(source, source_lengths)
        memory = self.transformer.encoder(self._embed(source), src_key_padding_mask=source_padding)
        return memory, source_padding, source.new_empty([source.size(0), 0])

    def forward(self, source: Tensor, source_lengths: Tensor, target_input: Tensor) -> Tensor:
        """Logits (B, T, vocab_size) of the next token at every target position (teacher forcing)."""
        memory, source_padding, _ = self.encode(source, source_lengths)
        self.check_target(target_input, source.size(0))
        return self.output(self._decode(memory, source_padding, target_input))

    @torch.jit.export
    def decode_step(self, state: TransformerState, tokens: Tensor) -> Tuple[Tensor, TransformerState]:
        """(log-probabilities (N, vocab_size) of the token after `tokens` (N,), the state with them appended)."""
        memory, source_padding, prefix = state
        prefix = torch.cat([prefix, tokens.unsqueeze(1)], 1)
        if prefix.size(1) > self.max_length:
            raise ValueError(f"decode_step: the answer would be longer than the model's max_length ({self.max_length})")
        hidden = self._decode(memory, source_padding, prefix)[:, -1]
        return F.log_softmax(self.output(hidden), -1), (memory, source_padding, prefix)

    @torch.jit.export
    def reorder_state(self, state: TransformerState, index: Tensor) -> TransformerState:
        memory, source_padding, prefix = state
        return memory.index_select(0, index), source_padding.index_select(0, index), prefix.index_select(0, index)

    @torch.jit.export
    def attention_weights(self, source: Tensor, source_lengths: Tensor, target_input: Tensor) -> Tensor:
        """The last decoder layer's cross-attention, averaged over heads, (B, T, S): row t is the
        distribution over source positions when predicting the token after target position t (0 on
        padding). Its own pass through the decoder, with the weights asked for in the last layer;
        in training mode, attention dropout applies to them too, so call it in eval mode."""
        memory, source_padding, _ = self.encode(source, source_lengths)
        self.check_target(target_input, source.size(0))
        x = self._embed(target_input)
        mask = causal_mask(target_input.size(1), target_input.device)
        target_padding = target_input == self.pad_id
        last = len(self.transformer.decoder.layers) - 1
        weights: Optional[Tensor] = None
        for i, layer in enumerate(self.transformer.decoder.layers):
            if i < last:
                x = layer(x, memory, tgt_mask=mask, tgt_key_padding_mask=target_padding,
                          memory_key_padding_mask=source_padding, tgt_is_causal=True)
            else:
                # The post-norm layer's first block (what TransformerDecoderLayer does with
                # norm_first=False), then its cross-attention's weights.
                attended = layer.self_attn(x, x, x, key_padding_mask=target_padding, need_weights=False,
                                           attn_mask=mask, is_causal=True)[0]
                x = layer.norm1(x + layer.dropout1(attended))
                weights = layer.multihead_attn(x, memory, memory, key_padding_mask=source_padding,
                                               need_weights=True, average_attn_weights=True)[1]
        assert weights is not None  # the constructor asks for a decoder layer at least
        return weights
