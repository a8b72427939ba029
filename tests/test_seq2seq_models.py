"""Tests of the sequence-to-sequence models (Seq2SeqTransformer, AttentionLSTM) and their decoding:
dll_ext / torch.nn parity, masks (padding invariance, causality), greedy decoding eager and scripted
against a slow reference, beam search against greedy, exhaustive search and a hand-made model,
attention weights, bad inputs, and a short training run of each model."""
import io
import itertools
import math
import time
from typing import List, Tuple

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from dll_ext.models import AttentionLSTM, Hypothesis, Seq2SeqTransformer, beam_search, length_penalty_term
from dll_ext.models.seq2seq_transformer import sinusoidal_positions

PAD, SOS, EOS = 0, 1, 2
VOCAB = 12
KINDS = ["transformer", "lstm"]
SCORINGS = ["dot", "scaled_dot", "general"]

# Lengths of the rows of the test batch: sources, then target_input (<sos> included).
SOURCE_LENGTHS = [7, 3, 5, 1]
TARGET_LENGTHS = [5, 2, 4, 1]


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: these models are tiny, and on a shared machine a second thread that
    waits for a busy core makes every op many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_model(kind: str, native: bool = False, vocab_size: int = VOCAB, dropout: float = 0.0,
               scoring: str = "dot", max_length: int = 16, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    if kind == "transformer":
        return Seq2SeqTransformer(vocab_size, PAD, SOS, EOS, d_model=16, nhead=2, num_encoder_layers=2,
                                  num_decoder_layers=2, dim_feedforward=32, dropout=dropout, max_length=max_length,
                                  native=native)
    return AttentionLSTM(vocab_size, PAD, SOS, EOS, embedding_dim=8, hidden_size=16, encoder_layers=2,
                         scoring=scoring, dropout=dropout, max_length=max_length, native=native)


def make_batch(seed: int = 1) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """(source, source_lengths, target_input, target_output), right-padded with PAD."""
    generator = torch.Generator().manual_seed(seed)
    batch = len(SOURCE_LENGTHS)
    source = torch.full((batch, max(SOURCE_LENGTHS)), PAD)
    target = torch.full((batch, max(TARGET_LENGTHS) + 1), PAD)
    for b, (s, t) in enumerate(zip(SOURCE_LENGTHS, TARGET_LENGTHS)):
        source[b, :s] = torch.randint(3, VOCAB, (s,), generator=generator)
        target[b, 0] = SOS
        target[b, 1:t] = torch.randint(3, VOCAB, (t - 1,), generator=generator)
        target[b, t] = EOS
    target_input = target[:, :-1].masked_fill(target[:, :-1] == EOS, PAD)
    return source, torch.tensor(SOURCE_LENGTHS), target_input, target[:, 1:]


def loss_of(logits: Tensor, target_output: Tensor) -> Tensor:
    return F.cross_entropy(logits.flatten(0, 1), target_output.flatten(), ignore_index=PAD)


def first_eos_trimmed(row: List[int]) -> List[int]:
    """A greedy row up to and including its first <eos> (the whole row if it has none)."""
    return row[:row.index(EOS) + 1] if EOS in row else row


def slow_greedy(model: nn.Module, source: Tensor, lengths: Tensor, max_length: int) -> List[List[int]]:
    """Greedy decoding row by row, by calling forward on the growing prefix: the reference."""
    answers = []
    for b in range(source.size(0)):
        row_source, row_lengths = source[b:b + 1, :int(lengths[b])], lengths[b:b + 1]
        prefix = [SOS]
        while len(prefix) <= max_length and prefix[-1] != EOS:
            logits = model(row_source, row_lengths, torch.tensor([prefix]))
            prefix.append(int(logits[0, -1].argmax()))
        answers.append(prefix[1:])
    return answers


def with_mixed_endings(model: nn.Module, source: Tensor, lengths: Tensor, max_length: int) -> nn.Module:
    """The model with its weights scaled up (a random model's answers hardly depend on the source)
    and its <eos> logit shifted until a greedy row ends with <eos> while another goes on: the
    cases greedy decoding must handle (pad after <eos>, rows ending at different steps)."""
    original = {name: value.clone() for name, value in model.state_dict().items()}
    for scale in (1.0, 2.0, 3.0, 4.0):
        for shift in torch.linspace(-6.0, 6.0, 97).tolist():
            with torch.no_grad():
                for name, parameter in model.named_parameters():
                    parameter.copy_(original[name] * scale)
                model.output.bias[EOS] += shift
            rows = model.greedy(source, lengths, max_length).tolist()
            ends = [row.index(EOS) if EOS in row else max_length for row in rows]
            if min(ends) < max(ends):
                return model
    raise AssertionError("no scale and <eos> shift gives greedy rows that end at different steps")


def sequence_log_prob(model: nn.Module, source: Tensor, lengths: Tensor, tokens: List[int]) -> float:
    """log p(tokens | source) by teacher forcing: the sum of each token's log-probability."""
    target_input = torch.tensor([[SOS] + tokens[:-1]])
    log_probs = F.log_softmax(model(source, lengths, target_input), -1)[0]
    return float(log_probs.gather(1, torch.tensor(tokens).unsqueeze(1)).sum())


# ---------------------------------------------------------------- parity of the dll_ext and native models

@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_state_dict(kind):
    ours, native = make_model(kind).state_dict(), make_model(kind, native=True).state_dict()
    assert list(ours) == list(native)
    for name in ours:
        assert torch.equal(ours[name], native[name]), name
    assert not any("position" in name for name in ours)  # the positional encoding is computed, not stored


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("kind", KINDS)
def test_forward_and_gradients_match_native(kind, dtype, tolerance):
    source, lengths, target_input, target_output = make_batch()
    results = []
    for native in (False, True):
        model = make_model(kind, native=native).to(dtype)
        logits = model(source, lengths, target_input)
        loss_of(logits, target_output).backward()
        results.append((logits, {name: p.grad for name, p in model.named_parameters()}))
    (ours, our_grads), (theirs, their_grads) = results
    torch.testing.assert_close(ours, theirs, atol=tolerance, rtol=tolerance)
    assert list(our_grads) == list(their_grads)
    for name in our_grads:
        torch.testing.assert_close(our_grads[name], their_grads[name], atol=tolerance, rtol=tolerance, msg=name)


@pytest.mark.parametrize("scoring", ["scaled_dot", "general"])
def test_lstm_scorings_match_native_and_ignore_padding(scoring):
    source, lengths, target_input, target_output = make_batch()
    results = []
    for native in (False, True):
        model = make_model("lstm", native=native, scoring=scoring).double()
        logits = model(source, lengths, target_input)
        loss_of(logits, target_output).backward()
        results.append((logits, [p.grad for p in model.parameters()]))
        for b, (s, t) in enumerate(zip(SOURCE_LENGTHS, TARGET_LENGTHS)):
            alone = model(source[b:b + 1, :s], lengths[b:b + 1], target_input[b:b + 1, :t])[0]
            torch.testing.assert_close(logits[b, :t], alone, atol=1e-10, rtol=1e-10)
    assert ("query_projection.weight" in model.state_dict()) == (scoring == "general")
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-10, rtol=1e-10)
    for ours, theirs in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(ours, theirs, atol=1e-10, rtol=1e-10)


# ---------------------------------------------------------------- masks

def garbage_padded(source: Tensor, lengths: Tensor, extra: int) -> Tensor:
    """source with `extra` more padded columns and random ids at every padded position."""
    wider = F.pad(source, (0, extra), value=PAD)
    padded = torch.arange(wider.size(1)).unsqueeze(0) >= lengths.unsqueeze(1)
    noise = torch.randint(0, VOCAB, wider.shape, generator=torch.Generator().manual_seed(7))
    return torch.where(padded, noise, wider)


@pytest.mark.parametrize("native", [False, True], ids=["dll_ext", "native"])
@pytest.mark.parametrize("kind", KINDS)
def test_padding_invariance(kind, native):
    model = make_model(kind, native=native).double().eval()
    source, lengths, target_input, _ = make_batch()
    with torch.no_grad():
        batched = model(source, lengths, target_input)
        garbage = model(garbage_padded(source, lengths, 3), lengths, target_input)
        for b, (s, t) in enumerate(zip(SOURCE_LENGTHS, TARGET_LENGTHS)):
            alone = model(source[b:b + 1, :s], lengths[b:b + 1], target_input[b:b + 1, :t])[0]
            torch.testing.assert_close(batched[b, :t], alone, atol=1e-10, rtol=1e-10)
            torch.testing.assert_close(garbage[b, :t], alone, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
def test_causality(kind):
    model = make_model(kind).double()
    source, lengths, target_input, _ = make_batch()
    logits = model(source, lengths, target_input)
    generator = torch.Generator().manual_seed(3)
    for t in range(1, target_input.size(1)):
        changed = target_input.clone()
        changed[:, t:] = torch.randint(0, VOCAB, changed[:, t:].shape, generator=generator)
        torch.testing.assert_close(model(source, lengths, changed)[:, :t], logits[:, :t], atol=0.0, rtol=0.0)


@pytest.mark.parametrize("kind", KINDS)
def test_attention_weights_are_distributions_over_the_real_source(kind):
    model = make_model(kind).eval()
    source, lengths, target_input, _ = make_batch()
    weights = model.attention_weights(source, lengths, target_input)
    assert weights.shape == (source.size(0), target_input.size(1), source.size(1))
    padded = torch.arange(source.size(1)).unsqueeze(0) >= lengths.unsqueeze(1)
    assert torch.all(weights.masked_select(padded.unsqueeze(1)) == 0)
    assert torch.all(weights >= 0)
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:2]))


def test_positional_encoding_is_the_sinusoid():
    table = sinusoidal_positions(50, 6)
    i, k = 37, 2
    assert math.isclose(float(table[i, 2 * k]), math.sin(i / 10000 ** (2 * k / 6)), abs_tol=1e-6)
    assert math.isclose(float(table[i, 2 * k + 1]), math.cos(i / 10000 ** (2 * k / 6)), abs_tol=1e-6)
    assert sinusoidal_positions(4, 5).shape == (4, 5)  # an odd size: one sine more than cosines
    model = make_model("transformer")
    assert torch.equal(model.positions, sinusoidal_positions(16, 16))


# ---------------------------------------------------------------- greedy decoding

@pytest.mark.parametrize("native", [False, True], ids=["dll_ext", "native"])
@pytest.mark.parametrize("kind", KINDS)
def test_greedy_matches_slow_reference(kind, native):
    source, lengths, _, _ = make_batch()
    # float64: a row decoded alone rounds differently from the batch, which must not flip an argmax.
    model = with_mixed_endings(make_model(kind, native=native).double().eval(), source, lengths, 6)
    greedy = model.greedy(source, lengths, 6)
    reference = slow_greedy(model, source, lengths, 6)
    assert greedy.dtype == torch.int64 and greedy.size(0) == source.size(0) and greedy.size(1) <= 6
    for row, expected in zip(greedy.tolist(), reference):
        assert first_eos_trimmed(row) == expected
        assert row[len(expected):] == [PAD] * (len(row) - len(expected))  # pad after <eos>


@pytest.mark.parametrize("kind", KINDS)
def test_greedy_stops_when_every_row_has_ended(kind):
    source, lengths, _, _ = make_batch()
    model = make_model(kind).eval()
    with torch.no_grad():
        model.output.bias[EOS] = 100.0
    assert model.greedy(source, lengths, 6).tolist() == [[EOS]] * source.size(0)
    assert model.greedy(source, lengths, 0).shape == (source.size(0), 0)


@pytest.mark.parametrize("kind", KINDS)
def test_encoder_runs_once(kind):
    source, lengths, _, _ = make_batch()
    model = with_mixed_endings(make_model(kind).eval(), source, lengths, 6)
    encoder = model.transformer.encoder if kind == "transformer" else model.encoder
    calls = []
    handle = encoder.register_forward_hook(lambda *_: calls.append(1))
    try:
        model.greedy(source, lengths, 6)
        assert len(calls) == 1
        beam_search(model, source[:1], lengths[:1], beam_size=3, max_length=6)
        assert len(calls) == 2
    finally:
        handle.remove()


@pytest.mark.parametrize("native", [False, True], ids=["dll_ext", "native"])
@pytest.mark.parametrize("kind", KINDS)
def test_scripted_model_decodes_as_eager(kind, native):
    source, lengths, target_input, _ = make_batch()
    model = with_mixed_endings(make_model(kind, native=native).eval(), source, lengths, 6)
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(model), buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    assert torch.equal(loaded.greedy(source, lengths, 6), model.greedy(source, lengths, 6))
    torch.testing.assert_close(loaded(source, lengths, target_input), model(source, lengths, target_input))
    torch.testing.assert_close(loaded.attention_weights(source, lengths, target_input),
                               model.attention_weights(source, lengths, target_input))
    # beam_search takes a loaded model too, through its exported decoding methods.
    scripted_beams = beam_search(loaded, source[:1], lengths[:1], beam_size=3, max_length=6)
    eager_beams = beam_search(model, source[:1], lengths[:1], beam_size=3, max_length=6)
    assert [h.tokens for h in scripted_beams] == [h.tokens for h in eager_beams]


# ---------------------------------------------------------------- beam search

@pytest.mark.parametrize("kind", KINDS)
def test_beam_of_one_is_greedy(kind):
    source, lengths, _, _ = make_batch()
    model = with_mixed_endings(make_model(kind).double().eval(), source, lengths, 6)
    greedy = model.greedy(source, lengths, 6).tolist()
    for b in range(source.size(0)):
        best, = beam_search(model, source[b:b + 1], lengths[b:b + 1], beam_size=1, max_length=6)
        assert best.tokens == first_eos_trimmed(greedy[b])


def all_answers(vocab_size: int, max_length: int) -> List[List[int]]:
    """Every answer beam search can return: non-<eos> tokens, then <eos>, or max_length tokens without it."""
    others = [token for token in range(vocab_size) if token != EOS]
    answers = [list(prefix) + [EOS] for n in range(max_length) for prefix in itertools.product(others, repeat=n)]
    return answers + [list(tokens) for tokens in itertools.product(others, repeat=max_length)]


@pytest.mark.parametrize("kind", KINDS)
def test_beam_search_finds_the_exhaustive_optimum(kind):
    """With a beam as wide as every live prefix (4 non-<eos> tokens, answers of at most 3 tokens:
    16), beam search is exact, whatever the length penalty; the optimum's length grows with it."""
    model = make_model(kind, vocab_size=5, seed=2).double().eval()
    source, lengths = torch.tensor([[3, 4, 4]]), torch.tensor([3])
    with torch.no_grad():
        log_probs = {tuple(a): sequence_log_prob(model, source, lengths, a) for a in all_answers(5, 3)}
    best_lengths = []
    for alpha in (0.0, 1.0, 3.0):
        optimum = max(log_probs, key=lambda a: log_probs[a] / length_penalty_term(len(a), alpha))
        hypotheses = beam_search(model, source, lengths, beam_size=16, max_length=3, length_penalty=alpha)
        assert hypotheses[0].tokens == list(optimum)
        assert [h.score for h in hypotheses] == sorted((h.score for h in hypotheses), reverse=True)
        for h in hypotheses:
            assert math.isclose(h.log_prob, log_probs[tuple(h.tokens)], abs_tol=1e-9)
            assert math.isclose(h.score, h.log_prob / ((5 + len(h.tokens)) / 6) ** alpha, abs_tol=1e-12)
        best_lengths.append(len(optimum))
    assert best_lengths == sorted(best_lengths)


@pytest.mark.parametrize("kind", KINDS)
def test_n_best_scores_are_summed_log_probs(kind):
    source, lengths, _, _ = make_batch()
    model = with_mixed_endings(make_model(kind).eval(), source, lengths, 6)
    for alpha in (0.0, 0.6):
        hypotheses = beam_search(model, source[:1], lengths[:1], beam_size=4, max_length=6, length_penalty=alpha)
        assert len(hypotheses) == 4 and all(isinstance(h, Hypothesis) for h in hypotheses)
        assert len({tuple(h.tokens) for h in hypotheses}) == 4
        assert [h.score for h in hypotheses] == sorted((h.score for h in hypotheses), reverse=True)
        with torch.no_grad():
            for h in hypotheses:
                assert math.isclose(h.log_prob, sequence_log_prob(model, source[:1], lengths[:1], h.tokens),
                                    abs_tol=1e-4)
                assert math.isclose(h.score, h.log_prob / length_penalty_term(len(h.tokens), alpha), rel_tol=1e-12)


class MarkovModel(nn.Module):
    """A hand-made model for beam search: the next token's distribution is a row of a fixed
    table, chosen by the last token (the state)."""

    def __init__(self, table: List[List[float]], max_length: int = 10) -> None:
        super().__init__()
        self.log_table = torch.tensor(table, dtype=torch.float64).clamp_min(1e-12).log()
        self.sos_id, self.eos_id, self.max_length = SOS, EOS, max_length

    def encode(self, source: Tensor, source_lengths: Tensor) -> Tuple[Tensor]:
        return (source.new_zeros(source.size(0)),)

    def decode_step(self, state: Tuple[Tensor], tokens: Tensor) -> Tuple[Tensor, Tuple[Tensor]]:
        return self.log_table[tokens], (tokens,)

    def reorder_state(self, state: Tuple[Tensor], index: Tensor) -> Tuple[Tensor]:
        return (state[0].index_select(0, index),)


#           pad  sos  eos  a
EOS_OR_A = [[0.0, 0.0, 1.0, 0.0],   # after pad (unused)
            [0.0, 0.0, 0.5, 0.5],   # after <sos>: stop now or say "a"
            [0.0, 0.0, 1.0, 0.0],   # after <eos> (unused)
            [0.0, 0.0, 0.9, 0.1]]   # after "a": most likely stop


def test_length_penalty_prefers_longer_answers():
    """"<eos>" has the higher probability (0.5 > 0.45), "a <eos>" the higher score with alpha=1:
    log(0.45) / (7 / 6) > log(0.5) / 1."""
    source, lengths = torch.tensor([[3]]), torch.tensor([1])
    raw = beam_search(MarkovModel(EOS_OR_A), source, lengths, beam_size=2, max_length=5)
    assert [h.tokens for h in raw] == [[EOS], [3, EOS]]
    assert math.isclose(raw[0].log_prob, math.log(0.5)) and math.isclose(raw[1].log_prob, math.log(0.45))
    penalised = beam_search(MarkovModel(EOS_OR_A), source, lengths, beam_size=2, max_length=5, length_penalty=1.0)
    assert [h.tokens for h in penalised] == [[3, EOS], [EOS]]
    assert math.isclose(penalised[0].score, math.log(0.45) / (7 / 6))


def test_beam_search_stops_at_max_length_without_eos():
    never_ends = [[0.2, 0.1, 0.0, 0.7]] * 4  # anything but <eos>, mostly "a"
    hypotheses = beam_search(MarkovModel(never_ends), torch.tensor([[3]]), torch.tensor([1]), beam_size=2,
                             max_length=4)
    assert hypotheses[0].tokens == [3, 3, 3, 3]
    assert len(hypotheses) == 2 and all(len(h.tokens) == 4 and EOS not in h.tokens for h in hypotheses)
    assert math.isclose(hypotheses[0].log_prob, 4 * math.log(0.7))


def test_beam_search_restores_training_mode():
    model = make_model("lstm").train()
    source, lengths, _, _ = make_batch()
    beam_search(model, source[:1], lengths[:1], beam_size=2, max_length=3)
    assert model.training


# ---------------------------------------------------------------- bad inputs

@pytest.mark.parametrize("kind", KINDS)
def test_bad_inputs_raise_value_errors(kind):
    model = make_model(kind)
    source, lengths, target_input, _ = make_batch()
    bad_calls = [
        (lambda: model(source.float(), lengths, target_input), "source must be a non-empty 2-D int64"),
        (lambda: model(source[0], lengths, target_input), "source must be a non-empty 2-D int64"),
        (lambda: model(source, lengths.int(), target_input), "source_lengths must be an int64 tensor of shape"),
        (lambda: model(source, lengths[:2], target_input), r"source_lengths must be an int64 tensor of shape \[4\]"),
        (lambda: model(source, lengths + 1, target_input), r"source_lengths must be in \[1, 7\]"),
        (lambda: model(source, lengths * 0, target_input), r"source_lengths must be in \[1, 7\]"),
        (lambda: model(F.pad(source, (0, 10)), lengths, target_input), r"more than the model's max_length \(16\)"),
        (lambda: model(source.clamp(max=VOCAB - 1) + 1, lengths, target_input), "outside the vocabulary"),
        (lambda: model(source, lengths, target_input[:2]), "target_input has 2 rows but source has 4"),
        (lambda: model(source, lengths, target_input.float()), "target_input must be a 2-D int64"),
        (lambda: model(source, lengths, F.pad(target_input, (0, 20))), "target_input has 25 positions"),
        (lambda: model.greedy(source, lengths, 17), r"max_length must be in \[0, 16\]"),
        (lambda: beam_search(model, source, lengths), r"source must be one row, shape \(1, S\)"),
        (lambda: beam_search(model, source[:1], lengths[:1], beam_size=0), "beam_size must be at least 1"),
        (lambda: beam_search(model, source[:1], lengths[:1], max_length=17), r"max_length must be in \[1, 16\]"),
    ]
    for call, message in bad_calls:
        with pytest.raises(ValueError, match=message):
            call()


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="three different ids"):
        Seq2SeqTransformer(VOCAB, PAD, PAD, EOS)
    with pytest.raises(ValueError, match="three different ids"):
        AttentionLSTM(VOCAB, PAD, SOS, VOCAB)
    with pytest.raises(ValueError, match="scoring must be one of"):
        AttentionLSTM(VOCAB, PAD, SOS, EOS, scoring="mlp")
    with pytest.raises(ValueError, match="max_length must be at least 1"):
        AttentionLSTM(VOCAB, PAD, SOS, EOS, max_length=0)


# ---------------------------------------------------------------- training

def reversal_batch(generator: torch.Generator, batch: int, symbols: int = 6) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Random strings of 2 to 6 of `symbols` ids, and their reversals as targets."""
    lengths = torch.randint(2, 7, (batch,), generator=generator)
    steps = int(lengths.max())
    source = torch.full((batch, steps), PAD)
    target = torch.full((batch, steps + 2), PAD)
    for b, n in enumerate(lengths.tolist()):
        string = torch.randint(3, 3 + symbols, (n,), generator=generator)
        source[b, :n] = string
        target[b, 0], target[b, 1:n + 1], target[b, n + 1] = SOS, string.flip(0), EOS
    target_input = target[:, :-1].masked_fill(target[:, :-1] == EOS, PAD)
    return source, lengths, target_input, target[:, 1:]


@pytest.mark.parametrize("kind, lr", [("transformer", 5e-3), ("lstm", 1e-2)])
def test_learns_to_reverse_strings(kind, lr):
    torch.manual_seed(0)
    if kind == "transformer":
        model = Seq2SeqTransformer(9, PAD, SOS, EOS, d_model=32, nhead=2, num_encoder_layers=1,
                                   num_decoder_layers=1, dim_feedforward=64, dropout=0.0, max_length=16)
    else:
        model = AttentionLSTM(9, PAD, SOS, EOS, embedding_dim=16, hidden_size=32, dropout=0.0, max_length=16)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    losses = []
    for _ in range(400):
        source, lengths, target_input, target_output = reversal_batch(generator, 32)
        loss = loss_of(model(source, lengths, target_input), target_output)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    source, lengths, _, target_output = reversal_batch(torch.Generator().manual_seed(1), 200)
    answers = model.greedy(source, lengths, 8).tolist()
    exact = sum(first_eos_trimmed(row) == first_eos_trimmed(expected)
                for row, expected in zip(answers, target_output.tolist())) / len(answers)
    print(f"{kind}: {time.perf_counter() - start:.1f} s, loss {losses[0]:.3f} -> {sum(losses[-20:]) / 20:.3f}, "
          f"greedy exact match {exact:.3f}")
    assert sum(losses[-20:]) / 20 < 0.15 * losses[0]
    assert exact >= 0.8
