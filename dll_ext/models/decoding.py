"""Beam search (chapter 4) over any model with the decoding interface of dll_ext.models.seq2seq
(encode, decode_step, reorder_state; sos_id, eos_id, max_length), eager or scripted: the live
beams go through the model together, one decode_step per step, and an N-best list comes out."""
from typing import List, NamedTuple, Protocol, Tuple

import torch
from torch import Tensor

__all__ = ["DecodingModel", "Hypothesis", "beam_search", "length_penalty_term"]


class DecodingModel(Protocol):
    """What beam_search needs of a model (Seq2SeqTransformer and AttentionLSTM have it)."""

    sos_id: int
    eos_id: int
    max_length: int
    training: bool

    def encode(self, source: Tensor, source_lengths: Tensor) -> Tuple[Tensor, ...]: ...

    def decode_step(self, state: Tuple[Tensor, ...], tokens: Tensor) -> Tuple[Tensor, Tuple[Tensor, ...]]: ...

    def reorder_state(self, state: Tuple[Tensor, ...], index: Tensor) -> Tuple[Tensor, ...]: ...

    def train(self, mode: bool = True) -> "DecodingModel": ...


class Hypothesis(NamedTuple):
    """One answer of the N-best list. tokens: its ids without <sos>, ending with <eos> unless the
    search reached max_length first; log_prob: the sum of their log-probabilities; score:
    log_prob / length_penalty_term(len(tokens), alpha), what the list is sorted by."""

    tokens: List[int]
    score: float
    log_prob: float


def length_penalty_term(length: int, alpha: float) -> float:
    """GNMT's length penalty ((5 + length) / 6) ** alpha (Wu et al. 2016), the divisor of a
    hypothesis's log-probability: alpha = 0 scores raw log-probabilities, larger alphas favour
    longer answers."""
    return ((5.0 + length) / 6.0) ** alpha


def _best_reachable(log_prob: float, length: int, max_length: int, alpha: float) -> float:
    """The highest score a live hypothesis of `length` tokens and this log-probability can still
    reach: it ends with length + 1 to max_length tokens, its log-probability can only fall, and
    the penalty term is monotonic in the length, so one of the two ends bounds it."""
    return max(log_prob / length_penalty_term(length + 1, alpha), log_prob / length_penalty_term(max_length, alpha))


def _check_arguments(model: DecodingModel, source: Tensor, beam_size: int, max_length: int) -> None:
    if source.dim() != 2 or source.size(0) != 1:
        raise ValueError(f"beam_search: source must be one row, shape (1, S), got shape {list(source.shape)}")
    if beam_size < 1:
        raise ValueError(f"beam_search: beam_size must be at least 1, got {beam_size}")
    if not 1 <= max_length <= model.max_length:
        raise ValueError(f"beam_search: max_length must be in [1, {model.max_length}] (the model's max_length), "
                         f"got {max_length}")


class _Beams(NamedTuple):
    """The live hypotheses after a step: which old beam each extends, its tokens and log-probability."""

    parents: List[int]
    tokens: List[List[int]]
    log_probs: List[float]


def _expand(beams: _Beams, step_log_probs: Tensor, beam_size: int, eos_id: int, alpha: float,
            finished: List[Hypothesis]) -> _Beams:
    """The next live beams: the best beam_size extensions by log-probability (all of one length)
    that are not <eos>; the <eos> extensions that rank above the last of them are finished
    hypotheses, appended to `finished`."""
    totals = torch.tensor(beams.log_probs, dtype=torch.float64).unsqueeze(1) + step_log_probs.double().cpu()
    vocab_size = totals.size(1)
    # Each beam has one <eos> extension, so 2 * beam_size candidates hold beam_size others.
    best = totals.flatten().topk(min(2 * beam_size, totals.numel()))
    parents: List[int] = []
    tokens: List[List[int]] = []
    log_probs: List[float] = []
    for total, flat_index in zip(best.values.tolist(), best.indices.tolist()):
        parent, token = divmod(flat_index, vocab_size)
        extended = beams.tokens[parent] + [token]
        if token == eos_id:
            finished.append(Hypothesis(extended, total / length_penalty_term(len(extended), alpha), total))
            continue
        parents.append(parent)
        tokens.append(extended)
        log_probs.append(total)
        if len(parents) == beam_size:
            break
    return _Beams(parents, tokens, log_probs)


def _cannot_improve(finished: List[Hypothesis], beams: _Beams, beam_size: int, max_length: int,
                    alpha: float) -> bool:
    """Whether no live beam can still enter the N-best list: beam_size hypotheses have finished
    and the best reachable score of every live beam is no higher than the worst of those."""
    if not beams.parents:
        return True
    if len(finished) < beam_size:
        return False
    worst_kept = sorted((h.score for h in finished), reverse=True)[beam_size - 1]
    length = len(beams.tokens[0])
    return all(_best_reachable(lp, length, max_length, alpha) <= worst_kept for lp in beams.log_probs)


def beam_search(model: DecodingModel, source: Tensor, source_lengths: Tensor, beam_size: int = 4,
                max_length: int = 64, length_penalty: float = 0.0) -> List[Hypothesis]:
    """The N-best list (at most beam_size hypotheses, best score first) for one source row (1, S).

    At each step every live beam is extended by every token, in one decode_step over all live
    beams (the state reordered by beam index); the beam_size best non-<eos> extensions by
    log-probability stay live, an <eos> extension ranking above the last of them is a finished
    hypothesis. The search stops when beam_size hypotheses have finished and no live beam can
    reach a better score than the worst of them (given length_penalty, GNMT's alpha >= 0 or not),
    or after max_length tokens, where the live beams join the list unfinished (without <eos>).
    beam_size=1 with length_penalty=0 gives greedy decoding's answer. Runs without gradients,
    in eval mode, and restores the model's mode after.
    """
    _check_arguments(model, source, beam_size, max_length)
    was_training = model.training
    model.train(False)
    try:
        with torch.no_grad():
            return _search(model, source, source_lengths, beam_size, max_length, length_penalty)
    finally:
        model.train(was_training)


def _search(model: DecodingModel, source: Tensor, source_lengths: Tensor, beam_size: int, max_length: int,
            alpha: float) -> List[Hypothesis]:
    state = model.encode(source, source_lengths)
    beams = _Beams([0], [[]], [0.0])
    last_tokens = [model.sos_id]
    finished: List[Hypothesis] = []
    for step in range(max_length):
        step_log_probs, state = model.decode_step(state, torch.tensor(last_tokens, device=source.device))
        beams = _expand(beams, step_log_probs, beam_size, model.eos_id, alpha, finished)
        if step == max_length - 1:
            finished.extend(Hypothesis(tokens, lp / length_penalty_term(len(tokens), alpha), lp)
                            for tokens, lp in zip(beams.tokens, beams.log_probs))
            break
        if _cannot_improve(finished, beams, beam_size, max_length, alpha):
            break
        state = model.reorder_state(state, torch.tensor(beams.parents, device=source.device))
        last_tokens = [tokens[-1] for tokens in beams.tokens]
    return sorted(finished, key=lambda h: h.score, reverse=True)[:beam_size]
