"""What the sequence-to-sequence models of issue 6 (Seq2SeqTransformer, AttentionLSTM) share: the
special token ids, the checks of their inputs, and greedy decoding as a TorchScript method.

Conventions (batch-first, int64 token ids): source (B, S) right-padded, with source_lengths (B,)
saying how many positions of each row are real (the padding is found from the lengths, never
from the token values); target_input `<sos> a b` (B, T) and target_output `a b <eos>`, both
right-padded with pad_id.

Each model provides three TorchScript methods, the decoding interface that greedy here and
dll_ext.models.decoding.beam_search build on (a model's state is one tuple type of tensors, all
with the batch as their first dimension):

- encode(source, source_lengths) -> state: runs the encoder once; the state the decoder starts from,
- decode_step(state, tokens (N,)) -> (log_probs (N, vocab), state): feeds each row's last token
  and returns the distribution of the next one,
- reorder_state(state, index (M,)) -> state: the rows index picks, in its order (beam search
  keeps, drops and copies hypotheses with it).
"""
from typing import List, Tuple

import torch
import torch.nn as nn
from torch import Tensor

__all__ = ["Seq2SeqModel", "check_source", "check_target", "next_greedy_tokens"]


def _describe(x: Tensor) -> str:
    # TorchScript formats a dtype as its enum number, so the scripted message leaves it out.
    if torch.jit.is_scripting():
        return f"shape {list(x.shape)}"
    return f"shape {list(x.shape)} and dtype {x.dtype}"


def _check_token_ids(tokens: Tensor, name: str, vocab_size: int) -> None:
    if tokens.numel() > 0:
        low, high = int(tokens.min()), int(tokens.max())
        if low < 0 or high >= vocab_size:
            raise ValueError(f"{name} holds token ids in [{low}, {high}], outside the vocabulary [0, {vocab_size})")


def check_source(source: Tensor, source_lengths: Tensor, vocab_size: int, max_length: int) -> None:
    """ValueError unless source is int64 (B, S) with 1 <= S <= max_length, B >= 1, ids in the
    vocabulary, and source_lengths int64 (B,) with every length in [1, S]."""
    if source.dtype != torch.int64 or source.dim() != 2 or source.size(0) == 0 or source.size(1) == 0:
        raise ValueError(f"source must be a non-empty 2-D int64 tensor (batch, S) of token ids, got "
                         f"{_describe(source)}")
    batch, steps = source.size(0), source.size(1)
    if steps > max_length:
        raise ValueError(f"source has {steps} positions, more than the model's max_length ({max_length})")
    if source_lengths.dtype != torch.int64 or list(source_lengths.shape) != [batch]:
        raise ValueError(f"source_lengths must be an int64 tensor of shape [{batch}] (one length per source row), "
                         f"got {_describe(source_lengths)}")
    shortest, longest = int(source_lengths.min()), int(source_lengths.max())
    if shortest < 1 or longest > steps:
        raise ValueError(f"source_lengths must be in [1, {steps}] (source has {steps} positions), got lengths in "
                         f"[{shortest}, {longest}]")
    _check_token_ids(source, "source", vocab_size)


def check_target(target_input: Tensor, batch: int, vocab_size: int, max_length: int) -> None:
    """ValueError unless target_input is int64 (batch, T) with 1 <= T <= max_length and ids in the
    vocabulary."""
    if target_input.dtype != torch.int64 or target_input.dim() != 2 or target_input.size(1) == 0:
        raise ValueError(f"target_input must be a 2-D int64 tensor (batch, T) of token ids with T >= 1, got "
                         f"{_describe(target_input)}")
    if target_input.size(0) != batch:
        raise ValueError(f"target_input has {target_input.size(0)} rows but source has {batch}")
    if target_input.size(1) > max_length:
        raise ValueError(f"target_input has {target_input.size(1)} positions, more than the model's max_length "
                         f"({max_length})")
    _check_token_ids(target_input, "target_input", vocab_size)


def next_greedy_tokens(log_probs: Tensor, finished: Tensor, eos_id: int, pad_id: int) -> Tuple[Tensor, Tensor]:
    """(tokens (N,), finished (N,)) after one greedy step: each row's most likely token, pad_id
    for rows that had already produced <eos>, and which rows have produced it now."""
    tokens = log_probs.argmax(-1).masked_fill(finished, pad_id)
    return tokens, finished | (tokens == eos_id)


class Seq2SeqModel(nn.Module):
    """The frame of a sequence-to-sequence model: vocab_size, pad_id, sos_id, eos_id (three
    different ids in the vocabulary), max_length (the longest source, target_input and decoded
    answer it takes), the input checks, and greedy decoding over the subclass's encode and
    decode_step (see the module docstring)."""

    def __init__(self, vocab_size: int, pad_id: int, sos_id: int, eos_id: int, max_length: int) -> None:
        super().__init__()
        name = type(self).__name__
        ids = (pad_id, sos_id, eos_id)
        if any(not 0 <= i < vocab_size for i in ids) or len(set(ids)) != 3:
            raise ValueError(f"{name}: pad_id, sos_id and eos_id must be three different ids in [0, {vocab_size}), "
                             f"got {ids}")
        if max_length < 1:
            raise ValueError(f"{name}: max_length must be at least 1, got {max_length}")
        self.vocab_size = vocab_size
        self.pad_id = pad_id
        self.sos_id = sos_id
        self.eos_id = eos_id
        self.max_length = max_length

    def check_source(self, source: Tensor, source_lengths: Tensor) -> None:
        check_source(source, source_lengths, self.vocab_size, self.max_length)

    def check_target(self, target_input: Tensor, batch: int) -> None:
        check_target(target_input, batch, self.vocab_size, self.max_length)

    @staticmethod
    def source_padding(source: Tensor, source_lengths: Tensor) -> Tensor:
        """bool (B, S), True at the padded positions (those at or after each row's length)."""
        positions = torch.arange(source.size(1), device=source.device)
        return positions.unsqueeze(0) >= source_lengths.to(source.device).unsqueeze(1)

    @torch.jit.export
    def greedy(self, source: Tensor, source_lengths: Tensor, max_length: int) -> Tensor:
        """int64 (B, L) answer ids, without <sos>: at each step the most likely token, fed back in.

        A row keeps its first <eos>; after it come pad_id. The encoder runs once; decoding stops
        when every row has produced <eos> or after max_length tokens (L <= max_length; a row
        without <eos> was cut there). No gradients; call it in eval mode (dropout stays on in
        training mode). max_length must be in [0, the model's max_length].
        """
        if max_length < 0 or max_length > self.max_length:
            raise ValueError(f"greedy: max_length must be in [0, {self.max_length}] (the model's max_length), got "
                             f"{max_length}")
        with torch.no_grad():
            state = self.encode(source, source_lengths)
            batch = source.size(0)
            tokens = torch.full([batch], self.sos_id, dtype=torch.int64, device=source.device)
            finished = torch.zeros([batch], dtype=torch.bool, device=source.device)
            answer: List[Tensor] = []
            for _ in range(max_length):
                log_probs, state = self.decode_step(state, tokens)
                tokens, finished = next_greedy_tokens(log_probs, finished, self.eos_id, self.pad_id)
                answer.append(tokens)
                if bool(finished.all()):
                    break
        if len(answer) == 0:
            return torch.empty([source.size(0), 0], dtype=torch.int64, device=source.device)
        return torch.stack(answer, 1)
