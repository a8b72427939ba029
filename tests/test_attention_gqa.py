"""Grouped-query attention (enable_gqa) and the leading-dimension broadcasting of
dll_ext.functional.scaled_dot_product_attention, against float64 references, against
F.scaled_dot_product_attention, and through gradcheck, opcheck, torch.compile and TorchScript."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dll_ext.functional
from dll_ext.functional import scaled_dot_product_attention as attention

from conftest import max_err, requires_cuda
from test_attention import SEED, gradcheck_op, masks, reference


def grouped(B, H, KVH, L, S, E, Ev, dtype=torch.float64, device="cpu"):
    def leaf(*shape):
        return torch.randn(*shape, dtype=dtype, device=device, requires_grad=True)

    return leaf(B, H, L, E), leaf(B, KVH, S, E), leaf(B, KVH, S, Ev)


def repeated(t, heads):
    # What grouped-query attention means: key/value head h // group serves query head h.
    return t.repeat_interleave(heads // t.shape[1], dim=1)


def grads(out, inputs, g):
    return torch.autograd.grad(out, inputs, g)


GQA_MASKS = ["none", "causal", "bool_LS", "bool_BHLS", "float_BHLS", "float_1HLS", "float_B1LS", "padding",
             "float_padding_causal"]
GQA_SHAPES = [(2, 8, 2, 33, 40, 16, 8), (1, 6, 3, 5, 7, 4, 6), (2, 4, 1, 70, 130, 8, 8), (1, 3, 3, 9, 9, 5, 3)]


@pytest.mark.parametrize("mask", GQA_MASKS)
@pytest.mark.parametrize("shape", GQA_SHAPES, ids=["x".join(map(str, s)) for s in GQA_SHAPES])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_gqa_matches_reference_with_repeated_heads(dtype, shape, mask):
    B, H, KVH, L, S, E, Ev = shape
    q, k, v = grouped(*shape, dtype=dtype)
    attn_mask, padding, causal = masks(mask, B, H, L, S, dtype)
    out = attention(q, k, v, attn_mask=attn_mask, is_causal=causal, key_padding_mask=padding, enable_gqa=True)
    expected = reference(q, repeated(k, H), repeated(v, H), attn_mask, padding, causal)
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    assert out.shape == (B, H, L, Ev) and max_err(out, expected) <= tol
    inputs = [q, k, v] + ([attn_mask] if attn_mask is not None and attn_mask.requires_grad else [])
    g = torch.randn_like(expected)
    for name, got, want in zip("q k v mask".split(), grads(out, inputs, g.to(dtype)), grads(expected, inputs, g)):
        assert got.shape == want.shape, name
        assert max_err(got, want) <= tol * max(1.0, want.abs().max().item()), name


@pytest.mark.parametrize("mask", ["none", "causal", "float_BHLS", "padding"])
def test_gqa_dropout_equals_the_call_with_repeated_heads(mask):
    # Dropout is keyed by query head and row: the grouped call and the repeated one drop alike.
    B, H, KVH, L, S = 2, 4, 2, 9, 13
    q, k, v = grouped(B, H, KVH, L, S, 4, 3)
    attn_mask, padding, causal = masks(mask, B, H, L, S, torch.float64)
    kw = dict(attn_mask=attn_mask, key_padding_mask=padding, is_causal=causal, dropout_p=0.3)
    torch.manual_seed(5)
    out = attention(q, k, v, enable_gqa=True, **kw)
    torch.manual_seed(5)
    expected = attention(q, repeated(k, H), repeated(v, H), **kw)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    g = torch.randn_like(out)
    torch.testing.assert_close(grads(out, [q, k, v], g), grads(expected, [q, k, v], g), rtol=0, atol=1e-11)


def test_gqa_matches_pytorch_enable_gqa_float32():
    q, k, v = grouped(2, 8, 2, 64, 80, 16, 16, dtype=torch.float32)
    for kw in ({}, {"is_causal": True}, {"scale": 0.3}, {"attn_mask": torch.rand(64, 80) > 0.2}):
        out = attention(q, k, v, enable_gqa=True, **kw)
        expected = F.scaled_dot_product_attention(q, k, v, enable_gqa=True, **kw)
        torch.testing.assert_close(out, expected)
        g = torch.randn_like(out)
        torch.testing.assert_close(grads(out, [q, k, v], g), grads(expected, [q, k, v], g))


def test_the_op_takes_fewer_key_heads_and_returns_their_gradients():
    q, k, v = grouped(2, 6, 3, 5, 7, 4, 4)
    out = torch.ops.dll_ext.attention(q, k, v)
    grad_q, grad_k, grad_v = grads(out, [q, k, v], torch.ones_like(out))
    assert grad_k.shape == k.shape and grad_v.shape == v.shape and grad_q.shape == q.shape


# ========================================================================================
# Broadcasting of the leading dimensions, as F.scaled_dot_product_attention
# ========================================================================================

# (query, key, value, attn_mask) shapes; None: no mask.
BROADCASTS = [
    ((4, 3, 8), (4, 4, 6, 8), (4, 4, 6, 8), None),  # query without batch, keys with it
    ((1, 4, 3, 8), (4, 4, 6, 8), (4, 4, 6, 8), None),  # query batch 1 against 4
    ((4, 4, 3, 8), (1, 4, 6, 8), (1, 4, 6, 5), (4, 1, 3, 6)),  # keys batch 1
    ((2, 4, 3, 8), (2, 1, 6, 8), (2, 1, 6, 8), (3, 6)),  # one key head for every query head
    ((2, 4, 3, 8), (2, 1, 6, 8), (2, 4, 6, 8), None),  # key heads broadcast, value heads not
    ((2, 1, 3, 8), (2, 4, 6, 8), (2, 4, 6, 8), (2, 4, 3, 6)),  # one query head against four
    ((2, 3, 4, 5, 8), (3, 1, 7, 8), (2, 1, 1, 7, 6), (3, 1, 5, 7)),  # 5-D
    ((5, 8), (7, 8), (7, 3), (5, 7)),  # 2-D
    ((3, 5, 8), (3, 7, 8), (1, 7, 8), (3, 5, 7)),  # 3-D: one head per batch row
]


@pytest.mark.parametrize("shapes", BROADCASTS, ids=[str(s[:3]) for s in BROADCASTS])
@pytest.mark.parametrize("mask_kind", ["bool", "float"])
def test_broadcasting_matches_pytorch(shapes, mask_kind):
    q_shape, k_shape, v_shape, m_shape = shapes
    q, k, v = (torch.randn(*s, dtype=torch.float64, requires_grad=True) for s in (q_shape, k_shape, v_shape))
    mask = None
    if m_shape is not None:
        mask = torch.rand(m_shape) > 0.3 if mask_kind == "bool" else torch.randn(m_shape, dtype=torch.float64)
        if mask_kind == "bool":
            mask[..., 0] = True
        else:
            mask.requires_grad_()
    out = attention(q, k, v, attn_mask=mask)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
    inputs = [q, k, v] + ([mask] if mask is not None and mask.requires_grad else [])
    g = torch.randn_like(expected)
    for got, want in zip(grads(out, inputs, g), grads(expected, inputs, g)):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-11)


def test_gqa_with_key_and_value_groups_of_two_sizes_matches_pytorch():
    q, k, v = (torch.randn(2, h, 5, 4, dtype=torch.float64, requires_grad=True) for h in (6, 2, 3))
    out = attention(q, k, v, enable_gqa=True)
    expected = F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    torch.testing.assert_close(out, expected)
    g = torch.randn_like(out)
    torch.testing.assert_close(grads(out, [q, k, v], g), grads(expected, [q, k, v], g))


@pytest.mark.parametrize("enable_gqa", [False, True])
def test_gqa_with_broadcast_batch_matches_pytorch(enable_gqa):
    q = torch.randn(3, 6, 5, 4, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2 if enable_gqa else 6, 7, 4, dtype=torch.float64, requires_grad=True)
    v = torch.randn(3, k.shape[1], 7, 2, dtype=torch.float64, requires_grad=True)
    out = attention(q, k, v, is_causal=True, enable_gqa=enable_gqa)
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=enable_gqa)
    torch.testing.assert_close(out, expected)
    g = torch.randn_like(out)
    torch.testing.assert_close(grads(out, [q, k, v], g), grads(expected, [q, k, v], g))


@st.composite
def broadcast_problems(draw):
    batch, group, kv_heads = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    L, S, E = draw(st.integers(1, 20)), draw(st.integers(1, 20)), draw(st.integers(1, 6))
    heads = group * kv_heads
    one = draw(st.sampled_from(["none", "query", "key"]))  # whose batch is 1
    q_batch, k_batch = (1 if one == "query" else batch), (1 if one == "key" else batch)
    return (q_batch, heads, L, E), (k_batch, kv_heads, S, E), draw(st.booleans())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(broadcast_problems())
def test_property_gqa_and_batch_broadcast_match_pytorch(problem):
    q_shape, k_shape, causal = problem
    q = torch.randn(q_shape, dtype=torch.float64, requires_grad=True)
    k = torch.randn(k_shape, dtype=torch.float64, requires_grad=True)
    v = torch.randn(k_shape, dtype=torch.float64, requires_grad=True)
    out = attention(q, k, v, is_causal=causal, enable_gqa=True)
    # PyTorch's math path: its rows with every key masked are NaN where ours are zeros.
    expected = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True).nan_to_num(0.0)
    torch.testing.assert_close(out, expected)
    g = torch.randn_like(out)
    got = grads(out, [q, k, v], g)
    want = [w.nan_to_num(0.0) for w in grads(expected, [q, k, v], g)]
    torch.testing.assert_close(got, want)


# ========================================================================================
# Bad inputs: the exception class PyTorch raises, and our message
# ========================================================================================

BAD = {  # query, key, value shapes, enable_gqa, the exception class PyTorch raises, our message
    "heads_not_dividing": ((2, 6, 5, 4), (2, 4, 7, 4), (2, 4, 7, 4), True, RuntimeError,
                           r"with enable_gqa, the heads of key and value must divide query's; got query 6, key 4"),
    "value_heads_not_dividing": ((2, 6, 5, 4), (2, 2, 7, 4), (2, 4, 7, 4), True, RuntimeError,
                                 r"got query 6, key 2 and value 4"),
    "no_head_dimension": ((5, 4), (7, 4), (7, 4), True, IndexError, r"enable_gqa needs a head dimension"),
    "batch_not_broadcasting": ((2, 6, 5, 4), (3, 6, 7, 4), (3, 6, 7, 4), False, RuntimeError,
                               r"the leading dimensions of query, key and value.*do not broadcast"),
    "heads_without_gqa": ((2, 6, 5, 4), (2, 2, 7, 4), (2, 2, 7, 4), False, RuntimeError, r"do not broadcast"),
    "one_dimensional": ((4,), (7, 4), (7, 4), False, RuntimeError, r"must be at least 2-D"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_bad_shapes_raise_what_pytorch_raises(name):
    q_shape, k_shape, v_shape, gqa, error, match = BAD[name]
    q, k, v = torch.randn(q_shape), torch.randn(k_shape), torch.randn(v_shape)
    with pytest.raises(error, match=match):
        attention(q, k, v, enable_gqa=gqa)
    with pytest.raises(error):
        F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)


def test_mask_of_too_many_dimensions_is_refused():
    q, k, v = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 7, 4), torch.randn(2, 3, 7, 4)
    with pytest.raises(RuntimeError, match=r"attn_mask of shape \[1, 2, 3, 5, 7\] does not broadcast"):
        attention(q, k, v, attn_mask=torch.ones(1, 2, 3, 5, 7, dtype=torch.bool))


# ========================================================================================
# gradcheck, opcheck, compile, TorchScript
# ========================================================================================


@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
@pytest.mark.parametrize("mask", ["none", "causal", "float_1HLS", "float_BHLS"])
def test_gqa_gradcheck(mask, dropout_p):
    B, H, L, S = 2, 4, 3, 5
    assert gradcheck_op(grouped(B, H, 2, L, S, 3, 2), masks(mask, B, H, L, S, torch.float64), dropout_p)


@pytest.mark.parametrize("mask", ["none", "bool_B1LS", "float_BHLS", "padding_causal"])
def test_gqa_opcheck(mask):
    B, H, L, S = 2, 4, 5, 7
    q, k, v = grouped(B, H, 2, L, S, 4, 3, dtype=torch.float32)
    attn_mask, padding, causal = masks(mask, B, H, L, S, torch.float32)
    torch.library.opcheck(torch.ops.dll_ext.attention, (q, k, v, attn_mask, padding, causal, None, 0.1, SEED))
    plain = [t.detach() for t in (q, k, v)]
    m = None if attn_mask is None else attn_mask.detach()
    out, lse = torch.ops.dll_ext._attention_forward(*plain, m, padding, causal, None, 0.0, None)
    mask_grad = m is not None and m.is_floating_point()
    torch.library.opcheck(torch.ops.dll_ext.attention_backward,
                          (torch.randn_like(out), *plain, out, lse, m, padding, causal, None, 0.0, None, mask_grad))


def test_gqa_and_broadcasting_compile_fullgraph():
    torch._dynamo.reset()
    q = torch.randn(4, 8, 9, 4, requires_grad=True)
    k = torch.randn(1, 2, 11, 4, requires_grad=True)
    v = torch.randn(4, 2, 11, 3, requires_grad=True)

    def fn(q, k, v):
        return attention(q, k, v, is_causal=True, enable_gqa=True)

    compiled = torch.compile(fn, fullgraph=True)
    torch.testing.assert_close(compiled(q, k, v), fn(q, k, v))
    torch.testing.assert_close(torch.autograd.grad(compiled(q, k, v).sum(), [q, k, v]),
                               torch.autograd.grad(fn(q, k, v).sum(), [q, k, v]))
    torch._dynamo.reset()


def test_gqa_and_broadcasting_script():
    scripted = torch.jit.script(dll_ext.functional.scaled_dot_product_attention)
    q, k, v = torch.randn(3, 6, 5, 4), torch.randn(1, 2, 7, 4), torch.randn(3, 2, 7, 4)
    torch.testing.assert_close(scripted(q, k, v, None, 0.0, False, None, True), attention(q, k, v, enable_gqa=True))
    q3 = torch.randn(4, 3, 8)
    k4 = torch.randn(4, 4, 6, 8)
    torch.testing.assert_close(scripted(q3, k4, k4), F.scaled_dot_product_attention(q3, k4, k4))


# ========================================================================================
# CUDA
# ========================================================================================


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("mask", ["none", "causal", "bool_BHLS", "float_BHLS", "float_1HLS", "padding"])
@pytest.mark.parametrize("shape", [(2, 8, 2, 33, 40, 16, 8), (1, 6, 1, 70, 45, 64, 64)], ids=["g4", "g6"])
def test_cuda_gqa_matches_reference(shape, mask):
    B, H, KVH, L, S, E, Ev = shape
    q, k, v = grouped(*shape, dtype=torch.float32)
    attn_mask, padding, causal = masks(mask, B, H, L, S, torch.float32)
    expected = reference(q, repeated(k, H), repeated(v, H), attn_mask, padding, causal)
    cuda = [None if t is None else t.detach().cuda().requires_grad_(t.requires_grad)
            for t in (q, k, v, attn_mask, padding)]
    out = attention(*cuda[:3], attn_mask=cuda[3], key_padding_mask=cuda[4], is_causal=causal, enable_gqa=True)
    assert out.is_cuda and max_err(out, expected) <= 2e-5
    inputs = [q, k, v] + ([attn_mask] if attn_mask is not None and attn_mask.requires_grad else [])
    cuda_inputs = cuda[:3] + ([cuda[3]] if attn_mask is not None and attn_mask.requires_grad else [])
    g = torch.randn(out.shape)
    for got, want in zip(grads(out, cuda_inputs, g.cuda()), grads(expected, inputs, g.double())):
        assert got.shape == want.shape and max_err(got, want) <= 1e-4 * max(1.0, want.abs().max().item())


@pytest.mark.cuda
@requires_cuda
def test_cuda_broadcasting_matches_pytorch():
    q = torch.randn(4, 3, 8, device="cuda", requires_grad=True)
    k = torch.randn(4, 4, 6, 8, device="cuda", requires_grad=True)
    v = torch.randn(1, 4, 6, 8, device="cuda", requires_grad=True)
    out = attention(q, k, v)
    expected = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(out, expected)
    g = torch.randn_like(out)
    torch.testing.assert_close(grads(out, [q, k, v], g), grads(expected, [q, k, v], g))
