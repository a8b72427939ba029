"""attention: the op, its backward and dll_ext.functional.scaled_dot_product_attention.

Sections: parity with a float64 reference (softmax(q k^T * scale + mask) v) over shapes that
cross tile boundaries and every mask kind and combination, with gradients of q, k, v and of
a float mask; fully masked rows; gradcheck; opcheck; torch.compile; TorchScript; bad inputs;
property tests.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dll_ext
import dll_ext.functional
from dll_ext.functional import scaled_dot_product_attention as attention

from conftest import max_err

ARG_ERRORS = (RuntimeError, ValueError, TypeError)


def reference(q, k, v, attn_mask=None, key_padding_mask=None, is_causal=False, scale=None):
    """softmax(q k^T * scale + masks) v in float64; rows with every key masked give zeros."""
    q, k, v = q.double(), k.double(), v.double()
    s = q @ k.transpose(-1, -2) * (1 / math.sqrt(q.shape[-1]) if scale is None else scale)
    L, S = s.shape[-2:]
    if attn_mask is not None:
        s = s.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else s + attn_mask.double()
    if key_padding_mask is not None:
        s = s.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    if is_causal:
        s = s.masked_fill(torch.ones(L, S, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(s, -1).nan_to_num(0.0) @ v


def qkv(B, H, L, S, E, Ev, dtype=torch.float64):
    return [torch.randn(B, H, n, d, dtype=dtype, requires_grad=True) for n, d in ((L, E), (S, E), (S, Ev))]


def masks(kind, B, H, L, S, dtype):
    """attn_mask, key_padding_mask and is_causal of one mask configuration."""
    allowed = torch.rand(B, H, L, S) > 0.4
    allowed[..., 0] = True  # no row fully masked here (see test_fully_masked_rows)
    padding = torch.rand(B, S) > 0.7
    padding[:, 0] = False
    additive = torch.randn(B, H, L, S, dtype=dtype)
    return {
        "none": (None, None, False),
        "causal": (None, None, True),
        "bool_LS": (allowed[0, 0], None, False),
        "bool_B1LS": (allowed[:, :1], None, False),
        "bool_BHLS": (allowed, None, False),
        "float_LS": (additive[0, 0].requires_grad_(), None, False),
        "float_BHLS": (additive.requires_grad_(), None, False),
        "float_1HLS": (additive[:1].detach().requires_grad_(), None, False),
        "padding": (None, padding, False),
        "padding_causal": (None, padding, True),
        "bool_padding_causal": (allowed, padding, True),
        "float_padding_causal": (additive.requires_grad_(), padding, True),
    }[kind]


SHAPES = [(1, 1, 1, 1, 1, 1), (2, 3, 5, 7, 4, 6), (1, 2, 130, 300, 16, 8), (2, 1, 64, 64, 8, 8), (1, 1, 129, 129, 3, 5)]
MASKS = ["none", "causal", "bool_LS", "bool_B1LS", "bool_BHLS", "float_LS", "float_BHLS", "float_1HLS", "padding",
         "padding_causal", "bool_padding_causal", "float_padding_causal"]
TOL = {torch.float64: 1e-10, torch.float32: 2e-5}


@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("shape", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_matches_reference(dtype, shape, mask):
    B, H, L, S, E, Ev = shape
    q, k, v = qkv(*shape, dtype=dtype)
    attn_mask, padding, causal = masks(mask, B, H, L, S, dtype)
    out = attention(q, k, v, attn_mask=attn_mask, is_causal=causal, key_padding_mask=padding)
    expected = reference(q, k, v, attn_mask, padding, causal)
    assert out.dtype == dtype and out.shape == (B, H, L, Ev)
    assert max_err(out, expected) <= TOL[dtype]
    inputs = [q, k, v] + ([attn_mask] if attn_mask is not None and attn_mask.requires_grad else [])
    g = torch.randn_like(expected)
    got = torch.autograd.grad(out, inputs, g.to(dtype))
    want = torch.autograd.grad(expected, inputs, g)
    for name, a, e in zip(("q", "k", "v", "attn_mask"), got, want):
        assert a.shape == e.shape, name
        assert max_err(a, e) <= TOL[dtype] * max(1.0, e.abs().max().item()), f"grad {name}: {max_err(a, e):.3g}"


def test_matches_pytorch_sdpa_float32():
    q, k, v = qkv(2, 4, 33, 70, 16, 16, dtype=torch.float32)
    allowed = torch.rand(33, 70) > 0.3
    allowed[:, 0] = True
    for kwargs in ({}, {"is_causal": True}, {"attn_mask": allowed}, {"scale": 0.3}):
        torch.testing.assert_close(attention(q, k, v, **kwargs), F.scaled_dot_product_attention(q, k, v, **kwargs))


def test_fully_masked_rows_give_zeros_and_zero_gradients():
    q, k, v = qkv(1, 2, 4, 6, 3, 3)
    allowed = torch.ones(4, 6, dtype=torch.bool)
    allowed[1] = False  # query 1 may attend nothing
    padding = torch.zeros(1, 6, dtype=torch.bool)
    for kwargs in ({"attn_mask": allowed}, {"key_padding_mask": padding | True},
                   {"attn_mask": torch.zeros(4, 6).masked_fill(~allowed, float("-inf")).double()}):
        out = attention(q, k, v, **kwargs)
        assert not out.isnan().any()
        rows = [1] if "attn_mask" in kwargs else [0, 1, 2, 3]
        assert torch.all(out[:, :, rows] == 0)
        gq, gk, gv = torch.autograd.grad(out.sum(), [q, k, v])
        assert not any(g.isnan().any() for g in (gq, gk, gv))
        assert torch.all(gq[:, :, rows] == 0)
        torch.testing.assert_close(out, reference(q, k, v, kwargs.get("attn_mask"), kwargs.get("key_padding_mask")))


def test_fully_padded_key_blocks_are_skipped_correctly():
    # 300 keys of which the last 200 (more than one whole tile) are padded.
    q, k, v = qkv(2, 2, 70, 300, 8, 8)
    padding = torch.zeros(2, 300, dtype=torch.bool)
    padding[:, 100:] = True
    out = attention(q, k, v, key_padding_mask=padding)
    torch.testing.assert_close(out, reference(q, k, v, key_padding_mask=padding))
    # Nothing flows into padded keys and values.
    _, gk, gv = torch.autograd.grad(out.sum(), [q, k, v])
    assert torch.all(gk[:, :, 100:] == 0) and torch.all(gv[:, :, 100:] == 0)


def test_three_dimensional_inputs_float_padding_and_mask_dtype():
    q, k, v = [t[:, 0] for t in qkv(2, 1, 5, 6, 4, 4, dtype=torch.float32)]
    additive_padding = torch.zeros(2, 6).masked_fill(torch.tensor([[0, 0, 0, 0, 1, 1]] * 2, dtype=torch.bool), float("-inf"))
    out = attention(q, k, v, attn_mask=torch.zeros(5, 6, dtype=torch.float64), key_padding_mask=additive_padding)
    expected = reference(q[:, None], k[:, None], v[:, None], key_padding_mask=additive_padding == float("-inf"))
    torch.testing.assert_close(out, expected[:, 0].float())


def test_scale_argument():
    q, k, v = qkv(1, 2, 5, 5, 4, 4)
    torch.testing.assert_close(attention(q, k, v, scale=0.7), reference(q, k, v, scale=0.7))


# ========================================================================================
# Dropout
# ========================================================================================

M32, M64 = (1 << 32) - 1, (1 << 64) - 1


def _mix64(x):
    x ^= x >> 30
    x = x * 0xBF58476D1CE4E5B9 & M64
    x ^= x >> 27
    x = x * 0x94D049BB133111EB & M64
    return x ^ (x >> 31)


def _mul32(x, c):
    # x * c mod 2^32 for an int64 tensor x < 2^32, in two halves so that no product overflows.
    return (x * (c & 0xFFFF) + ((x * (c >> 16) & 0xFFFF) << 16)) & M32


def _mix32(x):
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def dropout_keep(seed, B, H, L, S, p):
    """The (B, H, L, S) bool mask of kept probabilities for a seed, written from the hash's
    definition (csrc/ops/attention/attention_dropout.h) in Python integers."""
    keys = [_mix64(seed ^ _mix64((row + 0x9E3779B97F4A7C15) & M64)) for row in range(B * H * L)]
    first = torch.tensor([k & M32 for k in keys], dtype=torch.int64)[:, None]
    second = torch.tensor([k >> 32 for k in keys], dtype=torch.int64)[:, None]
    h = _mix32((_mix32(torch.arange(S)[None, :] ^ first) + second) & M32)
    return (h >= min(round(p * 2**32), M32)).reshape(B, H, L, S)


def dropout_reference(q, k, v, p, seed, attn_mask=None, key_padding_mask=None, is_causal=False):
    """reference() with the probabilities dropped by dropout_keep and the kept ones scaled."""
    B, H, L, S = *q.shape[:3], k.shape[2]
    keep = dropout_keep(seed, B, H, L, S, p).double() / (1 - p)
    eye = torch.eye(S, dtype=torch.float64)
    # reference() of an identity value gives the probabilities themselves.
    probabilities = reference(q, k, eye.expand(B, H, S, S), attn_mask, key_padding_mask, is_causal)
    return (probabilities * keep) @ v.double()


SEED = torch.tensor([123456789], dtype=torch.int64)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("mask", ["none", "causal", "float_BHLS", "bool_padding_causal"])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7, 4, 6), (1, 2, 130, 300, 16, 8)], ids=["small", "tiles"])
def test_dropout_matches_reference_with_the_hashed_mask(shape, mask, p):
    B, H, L, S, E, Ev = shape
    q, k, v = qkv(*shape)
    attn_mask, padding, causal = masks(mask, B, H, L, S, torch.float64)
    out = torch.ops.dll_ext.attention(q, k, v, attn_mask, padding, causal, None, p, SEED)
    expected = dropout_reference(q, k, v, p, SEED.item(), attn_mask, padding, causal)
    assert max_err(out, expected) <= 1e-10
    inputs = [q, k, v] + ([attn_mask] if attn_mask is not None and attn_mask.requires_grad else [])
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, inputs, grad)
    want = torch.autograd.grad(expected, inputs, grad)
    for a, e in zip(got, want):
        assert max_err(a, e) <= 1e-9 * max(1.0, e.abs().max().item())


def test_dropout_mask_statistics():
    """With equal scores and an identity value, out * S * (1 - p) is the keep mask itself: the
    kernel's mask equals the hash's, keeps 1 - p of the elements, and is uncorrelated
    between neighbouring rows and keys."""
    B, H, L, S, p = 2, 4, 256, 256, 0.3
    q = torch.zeros(B, H, L, 8)
    value = torch.eye(S).expand(B, H, S, S)
    out = torch.ops.dll_ext.attention(q, q[:, :, :S], value, None, None, False, None, p, SEED)
    kept = out * S * (1 - p)
    assert torch.allclose(kept, kept.round(), atol=1e-4)
    kept = kept.round().bool()
    assert torch.equal(kept, dropout_keep(SEED.item(), B, H, L, S, p))
    n = kept.numel()
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(kept.float().mean().item() - (1 - p)) < 5 * sigma
    x = kept.double() - (1 - p)
    for a, b in ((x[..., 1:, :], x[..., :-1, :]), (x[..., 1:], x[..., :-1]), (x[:, 1:], x[:, :-1])):
        correlation = (a * b).mean() / (p * (1 - p))
        assert abs(correlation.item()) < 5 / math.sqrt(a.numel())


def test_dropout_is_unbiased():
    """Averaged over many seeds, dropout's output tends to the output without it."""
    q, k, v = (t.detach() for t in qkv(1, 1, 4, 6, 3, 2))
    seeds = torch.arange(4000)
    mean = sum(torch.ops.dll_ext.attention(q, k, v, None, None, False, None, 0.5, s.view(1)) for s in seeds) / len(seeds)
    exact = reference(q, k, v)
    # Each output element's standard deviation is at most max|v|; the mean's is that / sqrt(n).
    assert max_err(mean, exact) < 5 * v.abs().max().item() / math.sqrt(len(seeds))


def test_dropout_reproducible_under_manual_seed_and_seed_dependent():
    q, k, v = qkv(2, 2, 9, 9, 4, 4)

    def run(seed):
        torch.manual_seed(seed)
        out = attention(q, k, v, dropout_p=0.4)
        return out, torch.autograd.grad(out.sum(), [q, k, v])

    (a, grads_a), (b, grads_b), (c, _) = run(0), run(0), run(1)
    assert torch.equal(a, b)
    assert all(torch.equal(x, y) for x, y in zip(grads_a, grads_b))
    assert not torch.equal(a, c)


def test_dropout_zero_and_seed_checks():
    q, k, v = qkv(1, 1, 3, 3, 2, 2)
    torch.testing.assert_close(attention(q, k, v, dropout_p=0.0), reference(q, k, v), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match=r"dropout_p > 0 needs dropout_seed"):
        torch.ops.dll_ext.attention(q, k, v, None, None, False, None, 0.5, None)
    with pytest.raises(ValueError, match=r"dropout_seed"):
        torch.ops.dll_ext.attention(q, k, v, None, None, False, None, 0.5, torch.tensor([1.0]))
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match=r"dropout_p must be in \[0, 1\)"):
            attention(q, k, v, dropout_p=bad)


# ========================================================================================
# gradcheck, opcheck, compile, TorchScript
# ========================================================================================


@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
@pytest.mark.parametrize("mask", ["none", "causal", "bool_BHLS", "float_LS", "float_1HLS", "float_padding_causal"])
def test_gradcheck(mask, dropout_p):
    B, H, L, S = 2, 2, 4, 5
    q, k, v = qkv(B, H, L, S, 3, 2)
    attn_mask, padding, causal = masks(mask, B, H, L, S, torch.float64)
    inputs = [q, k, v] + ([attn_mask] if attn_mask is not None and attn_mask.requires_grad else [])

    def fn(*args):
        m = args[3] if len(args) > 3 else attn_mask
        return torch.ops.dll_ext.attention(args[0], args[1], args[2], m, padding, causal, None, dropout_p, SEED)

    assert torch.autograd.gradcheck(fn, inputs)


def test_double_backward_is_refused_clearly():
    q, k, v = qkv(1, 1, 3, 3, 2, 2)
    out = attention(q, k, v)
    with pytest.raises(RuntimeError, match="attention: double backward"):
        torch.autograd.grad(out.sum(), q, create_graph=True)


@pytest.mark.parametrize("dropout_p", [0.0, 0.2])
@pytest.mark.parametrize("mask", ["none", "causal", "bool_B1LS", "float_BHLS", "padding_causal"])
def test_opcheck(mask, dropout_p):
    B, H, L, S = 2, 2, 5, 7
    q, k, v = qkv(B, H, L, S, 4, 3, dtype=torch.float32)
    attn_mask, padding, causal = masks(mask, B, H, L, S, torch.float32)
    drop = (dropout_p, SEED)
    torch.library.opcheck(torch.ops.dll_ext.attention, (q, k, v, attn_mask, padding, causal, 0.5, *drop))
    plain = [t.detach() for t in (q, k, v)]
    m = None if attn_mask is None else attn_mask.detach()
    torch.library.opcheck(torch.ops.dll_ext._attention_forward, (*plain, m, padding, causal, None, *drop))
    out, lse = torch.ops.dll_ext._attention_forward(*plain, m, padding, causal, None, *drop)
    mask_grad = m is not None and m.is_floating_point()
    torch.library.opcheck(torch.ops.dll_ext.attention_backward,
                          (torch.randn_like(out), *plain, out, lse, m, padding, causal, None, *drop, mask_grad))


def test_compile_fullgraph_with_masks():
    torch._dynamo.reset()
    q, k, v = qkv(2, 2, 9, 11, 4, 4, dtype=torch.float32)
    allowed = torch.rand(9, 11) > 0.3
    allowed[:, 0] = True
    padding = torch.zeros(2, 11, dtype=torch.bool)
    padding[1, 8:] = True

    def fn(q, k, v):
        return attention(q, k, v, attn_mask=allowed, key_padding_mask=padding, is_causal=True)

    compiled = torch.compile(fn, fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v), fn(q, k, v))
    got = torch.autograd.grad(compiled(q, k, v).sum(), [q, k, v])
    expected = torch.autograd.grad(fn(q, k, v).sum(), [q, k, v])
    torch.testing.assert_close(got, expected)
    torch._dynamo.reset()


def test_compile_fullgraph_with_dropout():
    torch._dynamo.reset()
    q, k, v = qkv(2, 2, 9, 11, 4, 4, dtype=torch.float32)

    def fn(q, k, v, seed):
        return torch.ops.dll_ext.attention(q, k, v, None, None, True, None, 0.25, seed)

    compiled = torch.compile(fn, fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v, SEED), fn(q, k, v, SEED))
    torch.testing.assert_close(torch.autograd.grad(compiled(q, k, v, SEED).sum(), [q, k, v]),
                               torch.autograd.grad(fn(q, k, v, SEED).sum(), [q, k, v]))
    # The functional draws its seed inside the graph: runs differ, and train.
    functional = torch.compile(lambda q: attention(q, k, v, dropout_p=0.5), fullgraph=True)
    assert not torch.equal(functional(q), functional(q))
    torch._dynamo.reset()


def test_torchscript():
    @torch.jit.script
    def scripted(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        return torch.ops.dll_ext.attention(q, k, v, None, padding, True, None)

    q, k, v = qkv(1, 2, 4, 4, 3, 3)
    padding = torch.tensor([[False, False, False, True]])
    torch.testing.assert_close(scripted(q, k, v, padding), reference(q, k, v, None, padding, True))
    functional = torch.jit.script(dll_ext.functional.scaled_dot_product_attention)
    torch.manual_seed(3)
    dropped = functional(q, k, v, None, 0.5)
    torch.manual_seed(3)
    torch.testing.assert_close(dropped, attention(q, k, v, dropout_p=0.5))


# ========================================================================================
# Bad inputs
# ========================================================================================

Q = torch.randn(2, 3, 5, 4)
K = torch.randn(2, 3, 7, 4)
V = torch.randn(2, 3, 7, 6)


def call(**changes):
    a = dict(q=Q, k=K, v=V, attn_mask=None, key_padding_mask=None, is_causal=False, scale=None)
    a.update(changes)
    return torch.ops.dll_ext.attention(a["q"], a["k"], a["v"], a["attn_mask"], a["key_padding_mask"], a["is_causal"],
                                       a["scale"])


BAD_INPUTS = {
    "query_rank": (lambda: call(q=Q[0]), r"query must be a 4-D tensor"),
    "head_dim_mismatch": (lambda: call(k=torch.randn(2, 3, 7, 5)), r"key has head dim 5 but query has 4"),
    "batch_mismatch": (lambda: call(k=torch.randn(1, 3, 7, 4)), r"key has \(batch, heads\) = \(1, 3\) but query has \(2, 3\)"),
    "heads_mismatch": (lambda: call(v=torch.randn(2, 2, 7, 6)), r"value has \(batch, heads\) = \(2, 2\)"),
    "value_length": (lambda: call(v=torch.randn(2, 3, 6, 6)), r"value has 6 positions but key has 7"),
    "mask_not_broadcast": (lambda: call(attn_mask=torch.ones(5, 6, dtype=torch.bool)),
                           r"attn_mask of shape \[5, 6\] does not broadcast to \(batch, heads, L, S\) = \[2, 3, 5, 7\]"),
    "mask_rank_5": (lambda: call(attn_mask=torch.ones(1, 2, 3, 5, 7, dtype=torch.bool)), r"attn_mask.*does not broadcast"),
    "mask_int": (lambda: call(attn_mask=torch.ones(5, 7, dtype=torch.int64)), r"attn_mask must be bool.*Long"),
    "mask_dtype_mix_op": (lambda: call(attn_mask=torch.ones(5, 7, dtype=torch.float64)), r"attn_mask must be bool.*Double"),
    "padding_length": (lambda: call(key_padding_mask=torch.zeros(2, 6, dtype=torch.bool)),
                       r"key_padding_mask must have shape \(batch, S\) = \[2, 7\], but got \[2, 6\]"),
    "padding_float_op": (lambda: call(key_padding_mask=torch.zeros(2, 7)), r"key_padding_mask must be bool"),
    "dtype_mix": (lambda: call(k=K.double()), r"key has dtype Double but query has dtype Float"),
    "int_inputs": (lambda: call(q=Q.long(), k=K.long(), v=V.long()), r"Long is not supported"),
    "bfloat16_not_yet": (lambda: call(q=Q.bfloat16(), k=K.bfloat16(), v=V.bfloat16()), r"BFloat16 is not supported"),
    "scale_inf": (lambda: call(scale=float("inf")), r"scale must be finite"),
    "functional_rank": (lambda: attention(Q[0, 0], K[0, 0], V[0, 0]), r"query must be 3-D or 4-D"),
}


@pytest.mark.parametrize("fn,match", list(BAD_INPUTS.values()), ids=list(BAD_INPUTS))
def test_bad_inputs(fn, match):
    with pytest.raises(ARG_ERRORS, match=match):
        fn()


def test_backward_op_checks_saved_shapes():
    out, lse = torch.ops.dll_ext._attention_forward(Q, K, V, None, None, False, None, 0.0, None)
    no_dropout = (0.0, None)
    with pytest.raises(ARG_ERRORS, match=r"grad_out must have shape \[2, 3, 5, 6\]"):
        torch.ops.dll_ext.attention_backward(out[..., :3], Q, K, V, out, lse, None, None, False, None, *no_dropout,
                                             False)
    with pytest.raises(ARG_ERRORS, match=r"lse must have shape"):
        torch.ops.dll_ext.attention_backward(out, Q, K, V, out, lse[..., :2], None, None, False, None, *no_dropout,
                                             False)
    with pytest.raises(ARG_ERRORS, match=r"mask_grad needs a floating-point attn_mask"):
        torch.ops.dll_ext.attention_backward(out, Q, K, V, out, lse, None, None, False, None, *no_dropout, True)


# ========================================================================================
# Property tests
# ========================================================================================


@st.composite
def problems(draw):
    B, H = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    L, S = draw(st.integers(1, 140)), draw(st.integers(1, 140))
    return dict(shape=(B, H, L, S, draw(st.integers(1, 8)), draw(st.integers(1, 8))),
                mask=draw(st.sampled_from(MASKS)), seed=draw(st.integers(0, 2**31 - 1)))


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(p=problems())
def test_property_matches_reference(p):
    torch.manual_seed(p["seed"])
    B, H, L, S, E, Ev = p["shape"]
    q, k, v = qkv(*p["shape"])
    attn_mask, padding, causal = masks(p["mask"], B, H, L, S, torch.float64)
    out = attention(q, k, v, attn_mask=attn_mask, key_padding_mask=padding, is_causal=causal)
    expected = reference(q, k, v, attn_mask, padding, causal)
    assert max_err(out, expected) <= 1e-10
    got = torch.autograd.grad(out.sum(), [q, k, v])
    want = torch.autograd.grad(expected.sum(), [q, k, v])
    for a, e in zip(got, want):
        assert max_err(a, e) <= 1e-9 * max(1.0, e.abs().max().item())
