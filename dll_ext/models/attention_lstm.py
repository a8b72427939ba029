"""The LSTM encoder-decoder with attention of chapter 4 for sequence-to-sequence tasks (issue 6): a
bidirectional dll_ext.nn.LSTM encoder, a dll_ext.nn.LSTMCell decoder with input feeding (native:
the torch.nn layers), and greedy decoding in TorchScript."""
from typing import List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import dll_ext.nn
from dll_ext.models.layers import lstm
from dll_ext.models.seq2seq import Seq2SeqModel

__all__ = ["AttentionLSTM", "SCORINGS"]

SCORINGS = ("dot", "scaled_dot", "general")

# (memory (B, S, H): the projected encoder states, keys and values of the attention; source
# padding bool (B, S); the decoder's h and c (B, H); the last attention context (B, H))
LSTMState = Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]


class AttentionLSTM(Seq2SeqModel):
    """An attention encoder-decoder (hidden size H = hidden_size):

    - encoder: one embedding for source and target (one vocabulary), then a bidirectional
      dll_ext.nn.LSTM (native: nn.LSTM) of encoder_layers layers over the valid source positions
      only (a PackedSequence); its outputs (2H) are projected to H, the memory the decoder attends to;
    - bridge: the decoder starts from the encoder's final states, h0 = tanh(W_h [h_fwd; h_bwd] + b_h)
      and c0 = W_c [c_fwd; c_bwd] + b_c (the last layer's forward state after each row's last valid
      position and backward state after its first), and from a zero context. Learned, so the
      decoder can take what it needs from the summary of the whole source; c0 has no tanh, as
      an LSTM's cell state is not bounded;
    - decoder, one dll_ext.nn.LSTMCell (native: nn.LSTMCell) step per target token, fed
      [embedding of the previous token; previous context] (input feeding: the decoder knows
      where it attended last), then attention of its new h over the memory: score(h, m_s) =
      h.m_s ("dot"), h.m_s / sqrt(H) ("scaled_dot") or h W m_s ("general", a learned W),
      padded positions masked out, softmax over source positions, context = the weighted sum of
      the memory;
    - output: a linear layer on dropout([h; context]) to the vocabulary's logits.

    dropout applies to the embeddings, the decoder's output features and, with encoder_layers > 1,
    between encoder layers. max_length bounds the source, target_input and decoded answers.
    """

    def __init__(self, vocab_size: int, pad_id: int, sos_id: int, eos_id: int, embedding_dim: int = 64,
                 hidden_size: int = 256, encoder_layers: int = 1, scoring: str = "dot", dropout: float = 0.1,
                 max_length: int = 512, native: bool = False) -> None:
        super().__init__(vocab_size, pad_id, sos_id, eos_id, max_length)
        if scoring not in SCORINGS:
            raise ValueError(f"AttentionLSTM: scoring must be one of {SCORINGS}, got {scoring!r}")
        self.scoring = scoring
        self.score_scale = hidden_size ** -0.5 if scoring == "scaled_dot" else 1.0
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_id)
        self.encoder = lstm(embedding_dim, hidden_size, encoder_layers, batch_first=True, bidirectional=True,
                            dropout=dropout if encoder_layers > 1 else 0.0, native=native)
        self.memory_projection = nn.Linear(2 * hidden_size, hidden_size)
        self.bridge_h = nn.Linear(2 * hidden_size, hidden_size)
        self.bridge_c = nn.Linear(2 * hidden_size, hidden_size)
        cell = nn.LSTMCell if native else dll_ext.nn.LSTMCell
        self.decoder = cell(embedding_dim + hidden_size, hidden_size)
        # "general" scores h W m as (W^T h) . m; the other two use h itself.
        self.query_projection = (nn.Linear(hidden_size, hidden_size, bias=False) if scoring == "general"
                                 else nn.Identity())
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(2 * hidden_size, vocab_size)

    @torch.jit.export
    def encode(self, source: Tensor, source_lengths: Tensor) -> LSTMState:
        """The decoder's initial state (memory, source padding, h0, c0, zero context)."""
        self.check_source(source, source_lengths)
        embedded = self.dropout(self.embedding(source))
        packed = pack_padded_sequence(embedded, source_lengths.cpu(), batch_first=True, enforce_sorted=False)
        outputs, (h_n, c_n) = self.encoder(packed)
        outputs, _ = pad_packed_sequence(outputs, batch_first=True, total_length=source.size(1))
        # h_n, c_n: (layers * 2, B, H); the last two are the last layer's forward and backward states.
        h0 = torch.tanh(self.bridge_h(torch.cat([h_n[-2], h_n[-1]], -1)))
        c0 = self.bridge_c(torch.cat([c_n[-2], c_n[-1]], -1))
        return (self.memory_projection(outputs), self.source_padding(source, source_lengths), h0, c0,
                torch.zeros_like(h0))

    def _attend(self, h: Tensor, memory: Tensor, source_padding: Tensor) -> Tuple[Tensor, Tensor]:
        """(context (B, H), attention weights (B, S)) of the decoder state h (B, H)."""
        query = self.query_projection(h)
        scores = torch.bmm(memory, query.unsqueeze(2)).squeeze(2) * self.score_scale
        weights = F.softmax(scores.masked_fill(source_padding, float("-inf")), -1)
        return torch.bmm(weights.unsqueeze(1), memory).squeeze(1), weights

    def _step(self, state: LSTMState, embedded: Tensor) -> Tuple[Tensor, Tensor, LSTMState]:
        """One decoder step on the previous tokens' embeddings (B, E): (logits (B, vocab_size),
        attention weights (B, S), the new state)."""
        memory, source_padding, h, c, context = state
        h, c = self.decoder(torch.cat([embedded, context], -1), (h, c))
        context, weights = self._attend(h, memory, source_padding)
        logits = self.output(self.dropout(torch.cat([h, context], -1)))
        return logits, weights, (memory, source_padding, h, c, context)

    def _teacher_forced(self, source: Tensor, source_lengths: Tensor, target_input: Tensor) -> Tuple[Tensor, Tensor]:
        """(logits (B, T, vocab_size), attention weights (B, T, S)) with target_input fed step by step."""
        state = self.encode(source, source_lengths)
        self.check_target(target_input, source.size(0))
        embedded = self.dropout(self.embedding(target_input))
        logits: List[Tensor] = []
        weights: List[Tensor] = []
        for t in range(target_input.size(1)):
            step_logits, step_weights, state = self._step(state, embedded[:, t])
            logits.append(step_logits)
            weights.append(step_weights)
        return torch.stack(logits, 1), torch.stack(weights, 1)

    def forward(self, source: Tensor, source_lengths: Tensor, target_input: Tensor) -> Tensor:
        """Logits (B, T, vocab_size) of the next token at every target position (teacher forcing)."""
        return self._teacher_forced(source, source_lengths, target_input)[0]

    @torch.jit.export
    def attention_weights(self, source: Tensor, source_lengths: Tensor, target_input: Tensor) -> Tensor:
        """The attention distribution of every decoder step over the source, (B, T, S) (0 on padding)."""
        return self._teacher_forced(source, source_lengths, target_input)[1]

    @torch.jit.export
    def decode_step(self, state: LSTMState, tokens: Tensor) -> Tuple[Tensor, LSTMState]:
        """(log-probabilities (N, vocab_size) of the token after `tokens` (N,), the state after it)."""
        logits, _, state = self._step(state, self.dropout(self.embedding(tokens)))
        return F.log_softmax(logits, -1), state

    @torch.jit.export
    def reorder_state(self, state: LSTMState, index: Tensor) -> LSTMState:
        memory, source_padding, h, c, context = state
        return (memory.index_select(0, index), source_padding.index_select(0, index), h.index_select(0, index),
                c.index_select(0, index), context.index_select(0, index))
