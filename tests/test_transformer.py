"""dll_ext.nn's Transformer layers and stacks as drop-ins for torch.nn's: parity of outputs and
gradients over their options, masks and depths; initialisation; state_dict; dropout; causal
hints; TorchScript; torch.compile; bad inputs; a property test.

torch.nn runs in train mode with dropout=0 throughout: in eval mode without grad its fast
path (nested tensors) gives zeros at padded positions instead of computing them, so only
train mode compares the same math at every position.
"""
import inspect
import io
import itertools

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

import dll_ext.nn

E, HEADS, FF, N, S, T = 16, 4, 32, 3, 7, 5  # S: source (memory) length, T: target length
TOL = dict(rtol=1e-5, atol=1e-5)
ACTIVATIONS = {"relu": "relu", "gelu": "gelu", "callable": torch.tanh}
SEQUENCE_MASKS = ["src_mask", "tgt_mask", "memory_mask", "src_key_padding_mask", "tgt_key_padding_mask",
                  "memory_key_padding_mask"]

# torch.nn's stacks warn that their nested-tensor path is off (ours have none); torch.nn warns
# about bool and float masks mixed in one call (which it supports); TorchScript warns about
# torch.nn.TransformerEncoder's own __constants__ (for torch.nn's class too).
pytestmark = [pytest.mark.filterwarnings("ignore:enable_nested_tensor is True"),
              pytest.mark.filterwarnings("ignore:Support for mismatched"),
              pytest.mark.filterwarnings("ignore:'norm' was found in ScriptModule constants")]


# ----------------------------------------------------------------------------------------
# Inputs, masks and models
# ----------------------------------------------------------------------------------------


def sequence(length, batch_first, batch=N, batched=True):
    shape = ((batch, length) if batch_first else (length, batch)) if batched else (length,)
    return torch.randn(*shape, E, requires_grad=True)


def bool_mask(*shape):
    """True (masked) at random, never at the first key, so that no query loses every key."""
    mask = torch.rand(shape) < 0.4
    mask[..., 0] = False
    return mask


def additive(mask):
    """The float mask of a bool one: -inf where masked, random finite values elsewhere."""
    return torch.randn(mask.shape).masked_fill(mask, float("-inf"))


def causal(L, S, float_mask):
    above = torch.ones(L, S, dtype=torch.bool).triu(1)
    return torch.zeros(L, S).masked_fill(above, float("-inf")) if float_mask else above


def mask_sets():
    """name -> keyword arguments of Transformer.forward, for combinations of masks."""
    padding = {"src_key_padding_mask": bool_mask(N, S), "tgt_key_padding_mask": bool_mask(N, T),
               "memory_key_padding_mask": bool_mask(N, S)}
    return {
        "none": {},
        "src_mask_bool": dict(src_mask=bool_mask(S, S)),
        "src_mask_float_3d": dict(src_mask=additive(bool_mask(N * HEADS, S, S))),
        "src_causal_hint": dict(src_mask=causal(S, S, False), src_is_causal=True),
        "tgt_mask_float": dict(tgt_mask=additive(bool_mask(T, T))),
        "tgt_mask_bool_3d": dict(tgt_mask=bool_mask(N * HEADS, T, T)),
        "tgt_causal_hint": dict(tgt_mask=causal(T, T, True), tgt_is_causal=True),
        "tgt_causal_detected": dict(tgt_mask=causal(T, T, False)),
        "memory_mask_bool": dict(memory_mask=bool_mask(T, S)),
        "memory_mask_float_3d": dict(memory_mask=additive(bool_mask(N * HEADS, T, S))),
        "memory_causal_hint": dict(memory_mask=causal(T, S, True), memory_is_causal=True),
        "src_padding_bool": dict(src_key_padding_mask=padding["src_key_padding_mask"]),
        "src_padding_float": dict(src_key_padding_mask=additive(padding["src_key_padding_mask"])),
        "tgt_padding_bool": dict(tgt_key_padding_mask=padding["tgt_key_padding_mask"]),
        "memory_padding_float": dict(memory_key_padding_mask=additive(padding["memory_key_padding_mask"])),
        "all_bool_causal": dict(src_mask=bool_mask(S, S), tgt_mask=causal(T, T, False), tgt_is_causal=True,
                                memory_mask=bool_mask(T, S), **padding),
        "all_float": dict(src_mask=additive(bool_mask(S, S)), tgt_mask=causal(T, T, True),
                          memory_mask=additive(bool_mask(T, S)),
                          **{name: additive(mask) for name, mask in padding.items()}),
        "bool_masks_float_padding": dict(src_mask=bool_mask(S, S), tgt_mask=bool_mask(T, T),
                                         memory_mask=bool_mask(T, S),
                                         **{name: additive(mask) for name, mask in padding.items()}),
    }


MASK_SETS = list(mask_sets())


def layer_kwargs(batch_first=False, norm_first=False, activation="relu", bias=True, dropout=0.0):
    return dict(dim_feedforward=FF, dropout=dropout, activation=ACTIVATIONS[activation], batch_first=batch_first,
                norm_first=norm_first, bias=bias)


def twins(make):
    """make(namespace) with torch.nn and with dll_ext.nn; ours holds native's state."""
    native, ours = make(nn), make(dll_ext.nn)
    ours.load_state_dict(native.state_dict())
    return ours, native


def check_parity(ours, native, inputs, kwargs):
    """Same output, and same gradients of the inputs and of every parameter."""
    out, ref = ours(*inputs, **kwargs), native(*inputs, **kwargs)
    torch.testing.assert_close(out, ref, **TOL)
    grad = torch.randn_like(ref)
    got = torch.autograd.grad(out, [*inputs, *ours.parameters()], grad)
    expected = torch.autograd.grad(ref, [*inputs, *native.parameters()], grad)
    names = [f"input {i}" for i in range(len(inputs))] + [name for name, _ in native.named_parameters()]
    for name, a, e in zip(names, got, expected, strict=True):
        torch.testing.assert_close(a, e, **TOL, msg=lambda m, name=name: f"gradient of {name}: {m}")


# ----------------------------------------------------------------------------------------
# Parity with torch.nn
# ----------------------------------------------------------------------------------------

OPTIONS = list(itertools.product([False, True], [False, True], list(ACTIVATIONS), [True, False]))


@pytest.mark.parametrize("masks", ["none", "all"])
@pytest.mark.parametrize("kind", ["encoder", "decoder"])
@pytest.mark.parametrize("batch_first,norm_first,activation,bias", OPTIONS,
                         ids=["-".join(f"{n}={v}" for n, v in zip(("bf", "norm_first", "act", "bias"), o))
                              for o in OPTIONS])
def test_layer_parity(kind, batch_first, norm_first, activation, bias, masks):
    kwargs = layer_kwargs(batch_first, norm_first, activation, bias)
    if kind == "encoder":
        ours, native = twins(lambda ns: ns.TransformerEncoderLayer(E, HEADS, **kwargs))
        inputs = [sequence(S, batch_first)]
        call = dict(src_mask=bool_mask(S, S), src_key_padding_mask=bool_mask(N, S))
    else:
        ours, native = twins(lambda ns: ns.TransformerDecoderLayer(E, HEADS, **kwargs))
        inputs = [sequence(T, batch_first), sequence(S, batch_first)]
        call = dict(tgt_mask=causal(T, T, True), tgt_is_causal=True, memory_mask=additive(bool_mask(N * HEADS, T, S)),
                    tgt_key_padding_mask=bool_mask(N, T), memory_key_padding_mask=bool_mask(N, S))
    check_parity(ours, native, inputs, call if masks == "all" else {})


@pytest.mark.parametrize("final_norm", [False, True], ids=["no_norm", "norm"])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("kind", ["encoder", "decoder"])
def test_stack_parity(kind, num_layers, final_norm):
    def make(ns):
        norm = nn.LayerNorm(E) if final_norm else None
        if kind == "encoder":
            return ns.TransformerEncoder(ns.TransformerEncoderLayer(E, HEADS, **layer_kwargs()), num_layers, norm)
        return ns.TransformerDecoder(ns.TransformerDecoderLayer(E, HEADS, **layer_kwargs()), num_layers, norm)

    ours, native = twins(make)
    assert len(ours.layers) == num_layers and isinstance(ours.layers[-1].self_attn, dll_ext.nn.MultiheadAttention)
    if kind == "encoder":  # a causal mask that the stacks detect (is_causal=None)
        check_parity(ours, native, [sequence(S, False)], dict(mask=causal(S, S, True),
                                                              src_key_padding_mask=bool_mask(N, S)))
    else:
        check_parity(ours, native, [sequence(T, False), sequence(S, False)],
                     dict(tgt_mask=causal(T, T, False), memory_key_padding_mask=bool_mask(N, S)))


@pytest.mark.parametrize("batch_first", [False, True], ids=["seq_first", "batch_first"])
@pytest.mark.parametrize("masks", MASK_SETS)
def test_transformer_parity(masks, batch_first):
    ours, native = twins(lambda ns: ns.Transformer(E, HEADS, 2, 2, **layer_kwargs(batch_first)))
    check_parity(ours, native, [sequence(S, batch_first), sequence(T, batch_first)], mask_sets()[masks])


def test_unbatched_input():
    ours, native = twins(lambda ns: ns.Transformer(E, HEADS, 1, 1, **layer_kwargs(norm_first=True)))
    call = dict(tgt_mask=causal(T, T, False), memory_mask=bool_mask(HEADS, T, S), src_key_padding_mask=bool_mask(S),
                memory_key_padding_mask=additive(bool_mask(S)))
    check_parity(ours, native, [sequence(S, False, batched=False), sequence(T, False, batched=False)], call)


def test_fully_masked_query_gives_zeros_not_nan():
    """A batch item whose keys are all padded: its attention block gives zeros (the layer is
    then norm2(x + feedforward(x)) with x = norm1(src)), as torch.nn's does in training, in
    eval mode too, where torch.nn's fast path gives NaN."""
    ours, native = twins(lambda ns: ns.TransformerEncoderLayer(E, HEADS, **layer_kwargs(batch_first=True)))
    src = sequence(S, True)
    padding = bool_mask(N, S)
    padding[1] = True
    out = ours(src, src_key_padding_mask=padding)
    torch.testing.assert_close(out, native(src, src_key_padding_mask=padding), **TOL)
    x = ours.norm1(src[1])
    torch.testing.assert_close(out[1], ours.norm2(x + ours.linear2(torch.relu(ours.linear1(x)))), **TOL)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(src, src_key_padding_mask=padding), out, **TOL)
        assert native.eval()(src, src_key_padding_mask=padding)[1].isnan().all()


# ----------------------------------------------------------------------------------------
# Construction, state_dict, dropout, causal hints
# ----------------------------------------------------------------------------------------

CONSTRUCTORS = {
    "TransformerEncoderLayer": (lambda ns: ns.TransformerEncoderLayer(E, HEADS, **layer_kwargs()),
                                lambda: [sequence(S, False)]),
    "TransformerDecoderLayer": (lambda ns: ns.TransformerDecoderLayer(E, HEADS, **layer_kwargs()),
                                lambda: [sequence(T, False), sequence(S, False)]),
    "TransformerEncoder": (lambda ns: ns.TransformerEncoder(ns.TransformerEncoderLayer(E, HEADS, **layer_kwargs()), 2,
                                                            nn.LayerNorm(E)),
                           lambda: [sequence(S, False)]),
    "TransformerDecoder": (lambda ns: ns.TransformerDecoder(ns.TransformerDecoderLayer(E, HEADS, **layer_kwargs()), 2),
                           lambda: [sequence(T, False), sequence(S, False)]),
    "Transformer": (lambda ns: ns.Transformer(E, HEADS, 2, 1, **layer_kwargs()),
                    lambda: [sequence(S, False), sequence(T, False)]),
}


@pytest.mark.parametrize("name", list(CONSTRUCTORS))
def test_same_initialisation_and_state_dict_both_ways(name):
    make, inputs = CONSTRUCTORS[name]
    models, after = {}, {}
    for ns in (nn, dll_ext.nn):
        torch.manual_seed(7)
        models[ns] = make(ns)
        after[ns] = torch.rand(4)  # the constructors drew the same random numbers
    native, ours = models[nn], models[dll_ext.nn]
    assert isinstance(ours, getattr(nn, name)) and type(ours) is getattr(dll_ext.nn, name)
    attentions = [type(m) for m in ours.modules() if isinstance(m, nn.MultiheadAttention)]
    assert attentions and set(attentions) == {dll_ext.nn.MultiheadAttention}
    assert torch.equal(after[nn], after[dll_ext.nn])
    assert list(ours.state_dict()) == list(native.state_dict())
    for key, value in native.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
    # ours -> torch.nn, after training-like changes to ours
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    native.load_state_dict(ours.state_dict())
    args = inputs()
    torch.testing.assert_close(ours(*args), native(*args), **TOL)


@pytest.mark.parametrize("name", list(CONSTRUCTORS))
def test_signatures_are_torchs(name):
    for method in ("__init__", "forward"):
        ours = inspect.signature(getattr(getattr(dll_ext.nn, name), method)).parameters.values()
        native = inspect.signature(getattr(getattr(nn, name), method)).parameters.values()
        assert [(p.name, p.kind, p.default) for p in ours] == [(p.name, p.kind, p.default) for p in native]


def test_generate_square_subsequent_mask_is_torchs():
    for args in [(1,), (6,), (4, "cpu", torch.float64)]:
        got = dll_ext.nn.Transformer.generate_square_subsequent_mask(*args)
        expected = nn.Transformer.generate_square_subsequent_mask(*args)
        assert got.dtype == expected.dtype and torch.equal(got, expected)


def test_dropout_in_training_is_reproducible_and_off_in_eval():
    model = dll_ext.nn.Transformer(E, HEADS, 1, 1, **layer_kwargs(dropout=0.3))
    src, tgt = sequence(S, False), sequence(T, False)
    runs = {}
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        out = model(src, tgt, tgt_mask=causal(T, T, True))
        runs.setdefault(seed, []).append((out, torch.autograd.grad(out.sum(), [src, *model.parameters()])))
    (first, first_grads), (again, again_grads) = runs[5]
    assert torch.equal(first, again)
    assert all(torch.equal(a, b) for a, b in zip(first_grads, again_grads))
    assert not torch.allclose(first, runs[6][0][0])
    without = dll_ext.nn.Transformer(E, HEADS, 1, 1, **layer_kwargs(dropout=0.0))
    without.load_state_dict(model.state_dict())
    evaluated = model.eval()(src, tgt, tgt_mask=causal(T, T, True))
    torch.testing.assert_close(evaluated, without(src, tgt, tgt_mask=causal(T, T, True)), **TOL)
    assert not torch.allclose(first, evaluated)


@pytest.mark.parametrize("hint,mask,expected", [
    (None, "causal_float", True), (None, "causal_bool", True), (None, "random", False), (None, "none", False),
    (False, "causal_float", False), (True, "causal_bool", True)])
def test_causal_hint_reaches_the_attention(hint, mask, expected):
    """The stacks' is_causal=None detects a causal mask, as torch.nn does; the layers pass the
    hint on to the fused attention (need_weights=False), which then skips the tiles above the
    diagonal."""
    def make(L):
        return {"causal_float": causal(L, L, True), "causal_bool": causal(L, L, False), "random": bool_mask(L, L),
                "none": None}[mask]

    seen = []

    def record(module, args, kwargs):
        seen.append((kwargs["need_weights"], kwargs["is_causal"]))

    model = dll_ext.nn.Transformer(E, HEADS, 2, 2, **layer_kwargs())
    for layer in [*model.encoder.layers, *model.decoder.layers]:
        layer.self_attn.register_forward_pre_hook(record, with_kwargs=True)
    model(sequence(S, False), sequence(T, False), src_mask=make(S), tgt_mask=make(T), src_is_causal=hint,
          tgt_is_causal=hint)
    assert seen == [(False, expected)] * 4


# ----------------------------------------------------------------------------------------
# TorchScript and torch.compile
# ----------------------------------------------------------------------------------------

MASKED_CALLS = {
    "TransformerEncoderLayer": lambda: dict(src_mask=causal(S, S, True), src_key_padding_mask=bool_mask(N, S),
                                            is_causal=True),
    "TransformerDecoderLayer": lambda: dict(tgt_mask=bool_mask(T, T), memory_key_padding_mask=bool_mask(N, S)),
    "TransformerEncoder": lambda: dict(mask=causal(S, S, False), src_key_padding_mask=additive(bool_mask(N, S))),
    "TransformerDecoder": lambda: dict(tgt_mask=causal(T, T, True), memory_mask=bool_mask(T, S)),
    "Transformer": lambda: dict(tgt_mask=causal(T, T, True), src_key_padding_mask=bool_mask(N, S),
                                memory_key_padding_mask=bool_mask(N, S)),
}


@pytest.mark.parametrize("name", list(CONSTRUCTORS))
def test_torchscript_and_save_load(name):
    make, inputs = CONSTRUCTORS[name]
    ours, native = twins(make)
    args, call = inputs(), MASKED_CALLS[name]()
    expected = native(*args, **call)
    scripted = torch.jit.script(ours)
    torch.testing.assert_close(scripted(*args, **call), expected, **TOL)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    out = loaded(*args, **call)
    torch.testing.assert_close(out, expected, **TOL)
    torch.testing.assert_close(torch.autograd.grad(out.sum(), args), torch.autograd.grad(expected.sum(), args), **TOL)


def test_compile_fullgraph():
    ours, native = twins(lambda ns: ns.Transformer(E, HEADS, 1, 1, **layer_kwargs(batch_first=True)))
    args = [sequence(S, True), sequence(T, True)]
    call = dict(tgt_mask=causal(T, T, True), src_key_padding_mask=bool_mask(N, S))  # tgt_is_causal=None: no detection
    torch._dynamo.reset()
    try:
        out = torch.compile(ours, fullgraph=True)(*args, **call)
    finally:
        torch._dynamo.reset()
    expected = native(*args, **call)
    torch.testing.assert_close(out, expected, **TOL)
    torch.testing.assert_close(torch.autograd.grad(out.sum(), args), torch.autograd.grad(expected.sum(), args), **TOL)


# ----------------------------------------------------------------------------------------
# Bad inputs
# ----------------------------------------------------------------------------------------


def layer(ns, **kwargs):
    return ns.TransformerEncoderLayer(E, HEADS, **layer_kwargs(), **kwargs)


def transformer(ns):
    return ns.Transformer(E, HEADS, 1, 1, **layer_kwargs())


def decoder_layer(ns):
    return ns.TransformerDecoderLayer(E, HEADS, **layer_kwargs())


X, Y = torch.randn(S, N, E), torch.randn(T, N, E)

# name -> (fn(namespace), the exception ours raises, the message it matches)
BAD_INPUTS = {
    "d_model_not_divisible": (lambda ns: ns.TransformerEncoderLayer(18, 4), ValueError,
                              r"TransformerEncoderLayer: d_model \(18\) must be divisible by nhead \(4\)"),
    "d_model_not_divisible_decoder": (lambda ns: ns.TransformerDecoderLayer(18, 4), ValueError,
                                      r"TransformerDecoderLayer: d_model \(18\) must be divisible by nhead \(4\)"),
    "d_model_not_divisible_transformer": (lambda ns: ns.Transformer(10, 4), ValueError,
                                          r"d_model \(10\) must be divisible by nhead \(4\)"),
    "activation_unknown": (lambda ns: ns.TransformerEncoderLayer(E, HEADS, activation="tanh"), RuntimeError,
                           r"activation must be 'relu', 'gelu' or a callable, but got 'tanh'"),
    "activation_unknown_transformer": (lambda ns: ns.Transformer(E, HEADS, activation="swish"), RuntimeError,
                                       r"activation must be 'relu', 'gelu' or a callable, but got 'swish'"),
    "dropout_one": (lambda ns: ns.TransformerDecoderLayer(E, HEADS, dropout=1.0), ValueError,
                    r"dropout must be in \[0, 1\), but got 1.0"),
    "dropout_negative": (lambda ns: ns.Transformer(E, HEADS, dropout=-0.1), ValueError,
                         r"dropout must be in \[0, 1\), but got -0.1"),
    "batch_mismatch": (lambda ns: transformer(ns)(X, torch.randn(T, N + 1, E)), RuntimeError,
                       r"the batch size of src \(3\) and tgt \(4\) must be equal"),
    "batch_mismatch_batch_first": (
        lambda ns: ns.Transformer(E, HEADS, 1, 1, batch_first=True)(torch.randn(2, S, E), torch.randn(3, T, E)),
        RuntimeError, r"the batch size of src \(2\) and tgt \(3\) must be equal"),
    "d_model_mismatch": (lambda ns: transformer(ns)(X, torch.randn(T, N, 8)), RuntimeError,
                         r"src and tgt must have d_model = 16 features, but have 16 and 8"),
    "layer_features": (lambda ns: layer(ns)(torch.randn(S, N, 8)), RuntimeError,
                       r"src has 8 features, but d_model is 16"),
    "layer_rank": (lambda ns: layer(ns)(torch.randn(2, S, N, E)), RuntimeError,
                   r"src must be 2-D \(unbatched\) or 3-D, but got shape \[2, 7, 3, 16\]"),
    "memory_features": (lambda ns: decoder_layer(ns)(Y, torch.randn(S, N, 12)), RuntimeError,
                        r"memory has 12 features, but d_model is 16"),
    "memory_batch": (lambda ns: decoder_layer(ns)(Y, torch.randn(S, N + 1, E)), RuntimeError,
                     r"memory and tgt must have the same batch size .* \[7, 4, 16\] and \[5, 3, 16\]"),
    "src_mask_2d": (lambda ns: layer(ns)(X, src_mask=torch.zeros(S, S - 1)), RuntimeError,
                    r"src_mask must have shape \[7, 7\] or \(batch \* nhead, L, S\) = \[12, 7, 7\], but got \[7, 6\]"),
    "src_mask_3d": (lambda ns: layer(ns)(X, src_mask=torch.zeros(N, S, S)), RuntimeError,
                    r"src_mask must have shape .* = \[12, 7, 7\], but got \[3, 7, 7\]"),
    "stack_mask": (lambda ns: transformer(ns).encoder(X, mask=torch.zeros(S + 1, S + 1)), RuntimeError,
                   r"src_mask must have shape \[7, 7\]"),
    "tgt_mask": (lambda ns: transformer(ns)(X, Y, tgt_mask=torch.zeros(S, S)), RuntimeError,
                 r"tgt_mask must have shape \[5, 5\] or .*, but got \[7, 7\]"),
    "memory_mask_transposed": (lambda ns: transformer(ns)(X, Y, memory_mask=torch.zeros(S, T)), RuntimeError,
                               r"memory_mask must have shape \[5, 7\] or .*, but got \[7, 5\]"),
    "src_padding": (lambda ns: transformer(ns)(X, Y, src_key_padding_mask=torch.zeros(N, T, dtype=torch.bool)),
                    ValueError, r"src_key_padding_mask must have shape \[3, 7\], but got \[3, 5\]"),
    "tgt_padding": (lambda ns: transformer(ns)(X, Y, tgt_key_padding_mask=torch.zeros(N - 1, T, dtype=torch.bool)),
                    ValueError, r"tgt_key_padding_mask must have shape \[3, 5\], but got \[2, 5\]"),
    "memory_padding": (lambda ns: transformer(ns)(X, Y, memory_key_padding_mask=torch.zeros(N, T)), ValueError,
                       r"memory_key_padding_mask must have shape \[3, 7\], but got \[3, 5\]"),
    "unbatched_padding": (lambda ns: layer(ns)(X[:, 0], src_key_padding_mask=torch.zeros(1, S, dtype=torch.bool)),
                          ValueError, r"src_key_padding_mask must have shape \[7\], but got \[1, 7\]"),
    "mask_dtype": (lambda ns: layer(ns)(X, src_mask=torch.zeros(S, S, dtype=torch.int64)), TypeError,
                   r"src_mask must be a bool or floating-point tensor, but got torch.int64"),
    "padding_dtype": (lambda ns: transformer(ns)(X, Y, memory_key_padding_mask=torch.zeros(N, S, dtype=torch.uint8)),
                      TypeError, r"memory_key_padding_mask must be a bool or floating-point tensor, but got "
                                 r"torch.uint8"),
    "causal_hint_without_mask": (lambda ns: layer(ns)(X, is_causal=True), RuntimeError,
                                 r"is_causal is a hint that src_mask is causal and needs src_mask"),
    "tgt_causal_hint_without_mask": (lambda ns: transformer(ns)(X, Y, tgt_is_causal=True), RuntimeError,
                                     r"tgt_is_causal is a hint that tgt_mask is causal and needs tgt_mask"),
}


@pytest.mark.parametrize("fn,error,match", list(BAD_INPUTS.values()), ids=list(BAD_INPUTS))
def test_bad_inputs(fn, error, match):
    with pytest.raises(error, match=match):
        fn(dll_ext.nn)
    # Where torch.nn raises a ValueError or RuntimeError for the same call, ours raises the same type.
    try:
        fn(nn)
    except (ValueError, RuntimeError) as native_error:
        assert isinstance(native_error, RuntimeError) == issubclass(error, RuntimeError), native_error
    except Exception:  # AssertionError (or another type) from torch.nn: ours names the argument instead
        pass


# ----------------------------------------------------------------------------------------
# Property test
# ----------------------------------------------------------------------------------------


@st.composite
def problems(draw):
    return dict(batch_first=draw(st.booleans()), norm_first=draw(st.booleans()), heads=draw(st.sampled_from([1, 2, 4])),
                batch=draw(st.integers(1, 3)), S=draw(st.integers(1, 9)), T=draw(st.integers(1, 9)),
                layers=(draw(st.integers(1, 2)), draw(st.integers(1, 2))),
                masks=draw(st.sets(st.sampled_from(SEQUENCE_MASKS))), float_masks=draw(st.booleans()),
                seed=draw(st.integers(0, 2**31 - 1)))


@settings(max_examples=20, deadline=None)
@given(p=problems())
def test_property_transformer_matches_torch(p):
    torch.manual_seed(p["seed"])
    ours, native = twins(lambda ns: ns.Transformer(E, p["heads"], *p["layers"],
                                                   **layer_kwargs(p["batch_first"], p["norm_first"])))
    shapes = {"src_mask": (p["S"], p["S"]), "tgt_mask": (p["T"], p["T"]), "memory_mask": (p["T"], p["S"]),
              "src_key_padding_mask": (p["batch"], p["S"]), "tgt_key_padding_mask": (p["batch"], p["T"]),
              "memory_key_padding_mask": (p["batch"], p["S"])}
    masks = {name: bool_mask(*shapes[name]) for name in p["masks"]}
    if p["float_masks"]:
        masks = {name: additive(mask) for name, mask in masks.items()}
    inputs = [sequence(p["S"], p["batch_first"], p["batch"]), sequence(p["T"], p["batch_first"], p["batch"])]
    check_parity(ours, native, inputs, masks)
