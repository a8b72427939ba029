"""dll_ext.models: output shapes, dll_ext and native (torch.nn) builds with the same parameters and
initialisation and outputs and gradients within float32 rounding, dropout off in evaluation,
the N-back model's handling of lengths, the char LM's carried state and its generation."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import dll_ext.nn
from dll_ext.models import CLASSIFIERS, CharLM, ConvNet, NBackLSTM, NativeConv2dReLU, build_classifier

IMAGE_SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "cifar": (3, 32, 32)}
FLOAT32 = dict(rtol=1e-5, atol=1e-5)


def built_twice(build):
    """(dll_ext model, native model) from build(native), each right after torch.manual_seed(0)."""
    models = []
    for native in (False, True):
        torch.manual_seed(0)
        models.append(build(native))
    return models


def assert_same_parameters(model, native_model):
    state, native_state = model.state_dict(), native_model.state_dict()
    assert list(state) == list(native_state)
    for name in state:
        assert torch.equal(state[name], native_state[name]), name


def assert_same_outputs_and_gradients(model, native_model, run):
    """run(model) -> a tensor; both models' outputs and every parameter's gradient of
    (output * upstream).sum() agree within float32 rounding."""
    out, native_out = run(model), run(native_model)
    torch.testing.assert_close(out, native_out, **FLOAT32)
    upstream = torch.randn_like(out)
    (out * upstream).sum().backward()
    (native_out * upstream).sum().backward()
    native_parameters = dict(native_model.named_parameters())
    for name, parameter in model.named_parameters():
        torch.testing.assert_close(parameter.grad, native_parameters[name].grad, **FLOAT32, msg=name)


def assert_dropout_off_in_eval(build, run):
    """A model with dropout computes in evaluation what the same weights without dropout do,
    and in training something else."""
    model, plain = build(0.5), build(0.0)
    plain.load_state_dict(model.state_dict())
    model.eval()
    plain.eval()
    torch.testing.assert_close(run(model), run(plain), rtol=0, atol=0)
    model.train()
    assert not torch.allclose(run(model), run(plain))


# ----------------------------------------------------------------------------------------
# Image classifiers
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", IMAGE_SHAPES)
@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classifier_shapes_and_native_parity(name, dataset):
    shape = IMAGE_SHAPES[dataset]
    model, native_model = built_twice(lambda native: build_classifier(name, shape, 10, native=native))
    images = torch.rand(5, *shape)
    assert model(images).shape == (5, 10)
    assert_same_parameters(model, native_model)
    assert_same_outputs_and_gradients(model, native_model, lambda m: m(images))
    native_model.load_state_dict(model.state_dict())  # and back: the keys are the same


def test_classifiers_fuse_every_conv_followed_by_relu():
    for name in ("convnet", "resnet"):
        model, native_model = built_twice(lambda native: build_classifier(name, (3, 32, 32), 10, native=native))
        fused = [m for m in model.modules() if isinstance(m, dll_ext.nn.Conv2dReLU)]
        assert len(fused) == sum(isinstance(m, NativeConv2dReLU) for m in native_model.modules()) > 0
        assert not any(isinstance(m, dll_ext.nn.Conv2dReLU) for m in native_model.modules())


def test_convnet_is_the_course_architecture_on_cifar():
    model = ConvNet(3, 32, 10)
    assert [tuple(p.shape) for p in model.parameters()] == [
        (6, 3, 5, 5), (6,), (16, 6, 5, 5), (16,), (128, 400), (128,), (64, 128), (64,), (10, 64), (10,)]
    assert ConvNet(1, 8, 10).fc1.in_features == 16 * 2 * 2  # padded: 8 -> 4 -> 2


def test_classifier_bad_arguments():
    with pytest.raises(ValueError, match="too small"):
        ConvNet(1, 8, 10, padding=0)
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        build_classifier("vgg", (1, 8, 8), 10)
    with pytest.raises(ValueError, match="square"):
        build_classifier("convnet", (1, 8, 10), 10)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_classifier_dropout_is_off_in_eval(name):
    images = torch.rand(4, 1, 28, 28)
    assert_dropout_off_in_eval(lambda p: build_classifier(name, (1, 28, 28), 10, dropout=p), lambda m: m(images))


# ----------------------------------------------------------------------------------------
# N-back
# ----------------------------------------------------------------------------------------


def padded_nback_batch(lengths, k=4):
    inputs = torch.zeros(len(lengths), max(lengths), k)
    for row, length in enumerate(lengths):
        inputs[row, torch.arange(length), torch.randint(0, k, (length,))] = 1.0
    return inputs, torch.tensor(lengths)


@pytest.mark.parametrize("num_layers", [1, 2])
def test_nback_model_native_parity(num_layers):
    inputs, lengths = padded_nback_batch([9, 4, 12, 7])
    model, native_model = built_twice(lambda native: NBackLSTM(hidden_size=16, num_layers=num_layers, native=native))
    assert isinstance(model.lstm, dll_ext.nn.LSTM) and type(native_model.lstm) is nn.LSTM
    assert model(inputs, lengths).shape == (4, 12, 2)
    assert_same_parameters(model, native_model)
    assert_same_outputs_and_gradients(model, native_model, lambda m: m(inputs, lengths))


def test_nback_model_reads_each_sequence_up_to_its_length():
    lengths = [9, 4, 12, 7]
    inputs, lengths_tensor = padded_nback_batch(lengths)
    torch.manual_seed(0)
    model = NBackLSTM(hidden_size=16)
    logits = model(inputs, lengths_tensor)
    for row, length in enumerate(lengths):
        alone = model(inputs[row:row + 1, :length])
        torch.testing.assert_close(logits[row, :length], alone[0], **FLOAT32)
        # Padded positions see a zero LSTM output: only the classifier's bias.
        torch.testing.assert_close(logits[row, length:], model.linear.bias.expand(12 - length, 2))


def test_nback_model_time_major():
    inputs, lengths = padded_nback_batch([5, 8, 3])
    torch.manual_seed(0)
    batch_first = NBackLSTM(hidden_size=8)
    time_major = NBackLSTM(hidden_size=8, batch_first=False)
    time_major.load_state_dict(batch_first.state_dict())
    out = time_major(inputs.transpose(0, 1), lengths)
    assert out.shape == (8, 3, 2)
    torch.testing.assert_close(out.transpose(0, 1), batch_first(inputs, lengths), **FLOAT32)


def test_nback_model_dropout_is_off_in_eval():
    inputs, lengths = padded_nback_batch([6, 3])
    assert_dropout_off_in_eval(lambda p: NBackLSTM(hidden_size=8, num_layers=2, dropout=p),
                               lambda m: m(inputs, lengths))


# ----------------------------------------------------------------------------------------
# Character-level language model
# ----------------------------------------------------------------------------------------

VOCAB = 30


def small_lm(native=False, dropout=0.0):
    return CharLM(VOCAB, embedding_dim=12, hidden_size=24, num_layers=2, dropout=dropout, native=native)


def test_char_lm_native_parity_and_shapes():
    tokens = torch.randint(0, VOCAB, (3, 10))
    model, native_model = built_twice(small_lm)
    assert isinstance(model.lstm, dll_ext.nn.LSTM) and type(native_model.lstm) is nn.LSTM
    logits, (h, c) = model(tokens)
    assert logits.shape == (3, 10, VOCAB) and h.shape == c.shape == (2, 3, 24)
    assert_same_parameters(model, native_model)
    assert_same_outputs_and_gradients(model, native_model, lambda m: m(tokens)[0])


def test_char_lm_state_carries_across_chunks():
    tokens = torch.randint(0, VOCAB, (2, 16))
    torch.manual_seed(0)
    model = small_lm()
    whole, whole_state = model(tokens)
    first, state = model(tokens[:, :9])
    second, last_state = model(tokens[:, 9:], tuple(s.detach() for s in state))
    torch.testing.assert_close(torch.cat([first, second], 1), whole, **FLOAT32)
    torch.testing.assert_close(last_state, whole_state, **FLOAT32)
    fresh, _ = model(tokens[:, 9:])
    assert not torch.allclose(fresh, second, **FLOAT32)  # the state mattered


def test_char_lm_dropout_is_off_in_eval():
    tokens = torch.randint(0, VOCAB, (2, 6))
    assert_dropout_off_in_eval(lambda p: small_lm(dropout=p), lambda m: m(tokens)[0])


def test_char_lm_greedy_generation_takes_the_argmax_at_every_step():
    torch.manual_seed(0)
    model = small_lm()
    prompt = torch.tensor([3, 7, 1, 4])
    generated = model.generate(prompt, 20, greedy=True)
    assert generated.dtype == torch.int64 and generated.shape == (20,)
    # Fed back in one pass, each generated token is the argmax after the text before it.
    logits, _ = model(torch.cat([prompt, generated[:-1]]).unsqueeze(0))
    assert torch.equal(logits[0, len(prompt) - 1:].argmax(-1), generated)
    assert torch.equal(model.generate(prompt, 20, top_k=1, generator=torch.Generator().manual_seed(9)), generated)


def test_char_lm_sampling_is_determined_by_the_generator():
    torch.manual_seed(0)
    model = small_lm(dropout=0.3)  # in training mode: generate must switch dropout off, then back on
    prompt = torch.tensor([5, 2])

    def sample(seed, **options):
        return model.generate(prompt, 40, generator=torch.Generator().manual_seed(seed), **options)

    assert torch.equal(sample(1), sample(1)) and not torch.equal(sample(1), sample(2))
    assert torch.equal(sample(3, temperature=0.7, top_k=5), sample(3, temperature=0.7, top_k=5))
    assert model.training
    # top_k: every sampled token is among the k most likely after the text before it.
    model.eval()
    generated = sample(4, top_k=3)
    logits, _ = model(torch.cat([prompt, generated[:-1]]).unsqueeze(0))
    top3 = logits[0, len(prompt) - 1:].topk(3).indices
    assert (top3 == generated[:, None]).any(1).all()
    # Sampling follows softmax(logits / temperature): with a tiny temperature it is greedy.
    assert torch.equal(sample(5, temperature=1e-4), model.generate(prompt, 40, greedy=True))


def test_char_lm_generate_bad_arguments():
    model = small_lm()
    for prompt, options in [(torch.tensor([], dtype=torch.int64), {}), (torch.tensor([[1, 2]]), {}),
                            (torch.tensor([1]), {"temperature": 0.0}), (torch.tensor([1]), {"top_k": 0})]:
        with pytest.raises(ValueError, match="generate"):
            model.generate(prompt, 5, **options)
    assert model.generate(torch.tensor([1]), 0).shape == (0,)


def test_cross_entropy_ignores_padded_nback_positions():
    """The N-back loss the pipeline uses: padded targets (IGNORE_INDEX) do not count."""
    from dll_ext.data import IGNORE_INDEX, NBackCollate, NBackDataset
    dataset = NBackDataset(4, seed=0)
    inputs, lengths, targets = NBackCollate(k=4)([dataset[i] for i in range(4)])
    torch.manual_seed(0)
    logits = NBackLSTM(hidden_size=8)(inputs, lengths)
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX)
    valid = torch.cat([F.cross_entropy(logits[b, :n], targets[b, :n], reduction="none")
                       for b, n in enumerate(dataset.lengths)])
    torch.testing.assert_close(loss, valid.mean())
