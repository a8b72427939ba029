"""attention: the op, its backward and dll_ext.functional.scaled_dot_product_attention.

Sections: parity with a float64 reference (softmax(q k^T * scale + mask) v) over shapes that
cross tile boundaries and every mask kind and combination, with gradients of q, k, v and of
a float mask; fully masked rows; gradcheck; opcheck; torch.compile; TorchScript; bad inputs;
property tests.
"""
import math
import re

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dll_ext
import dll_ext.functional
from dll_ext.functional import scaled_dot_product_attention as attention

from conftest import DEVICES, max_err, requires_cuda

ARG_ERRORS = RuntimeError  # as ATen ops and torch.nn raise for these inputs


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
        "float_B1LS": (additive[:, :1].detach().requires_grad_(), None, False),
        "padding": (None, padding, False),
        "padding_causal": (None, padding, True),
        "bool_padding_causal": (allowed, padding, True),
        "float_padding_causal": (additive.requires_grad_(), padding, True),
    }[kind]


SHAPES = [(1, 1, 1, 1, 1, 1), (2, 3, 5, 7, 4, 6), (1, 2, 130, 300, 16, 8), (2, 1, 64, 64, 8, 8), (1, 1, 129, 129, 3, 5)]
MASKS = ["none", "causal", "bool_LS", "bool_B1LS", "bool_BHLS", "float_LS", "float_BHLS", "float_1HLS", "float_B1LS", "padding",
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


def cpu_tiles(keys, element_size):
    return torch.ops.dll_ext._attention_cpu_tiles(keys, element_size)


def test_cpu_tiles_follow_the_keys_in_equal_whole_steps():
    for element_size in (4, 8):
        _, widest = cpu_tiles(1 << 20, element_size)
        assert widest % 16 == 0 and widest >= 128
        for keys in (1, 15, 16, 100, widest - 1, widest, widest + 1, 3 * widest + 5):
            rows, width = cpu_tiles(keys, element_size)
            count = -(-keys // width)
            assert rows in (64, 128) and width % 16 == 0
            # Equal tiles to within a step of 16 keys; one tile while the keys fit in one.
            assert keys <= count * width < keys + 16 * count
            assert count == 1 or keys > widest
    assert cpu_tiles(0, 4)[1] == 16
    with pytest.raises(RuntimeError, match="element_size"):
        cpu_tiles(10, 0)


def several_key_tiles():
    """A key count that this CPU's float64 kernels split into at least three tiles."""
    keys = 3 * cpu_tiles(1 << 20, 8)[1] + 37
    assert -(-keys // cpu_tiles(keys, 8)[1]) >= 3
    return keys


@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
@pytest.mark.parametrize("mask", ["none", "causal", "bool_BHLS", "float_1HLS", "padding_causal", "middle_padding",
                                  "bool_band"])
def test_several_key_tiles_match_reference(mask, dropout_p):
    # The online softmax across tiles, tiles trimmed at both ends and tiles skipped whole,
    # forward and backward, on whatever tile width this CPU's cache gives.
    B, H, L, S, E = 1, 2, 70, several_key_tiles(), 8
    q, k, v = qkv(B, H, L, S, E, E)
    if mask == "middle_padding":  # a padded run inside the key range, across a tile boundary
        attn_mask, causal = None, False
        padding = torch.zeros(B, S, dtype=torch.bool)
        padding[:, S // 3: 2 * S // 3] = True
    elif mask == "bool_band":  # whole tiles and the ends of others that no query may see
        allowed = torch.zeros(L, S, dtype=torch.bool)
        allowed[:, S // 5: S // 2] = True
        attn_mask, padding, causal = allowed, None, False
    else:
        attn_mask, padding, causal = masks(mask, B, H, L, S, torch.float64)
    out = torch.ops.dll_ext.attention(q, k, v, attn_mask, padding, causal, None, dropout_p, SEED)
    if dropout_p:
        expected = dropout_reference(q, k, v, dropout_p, SEED.item(), attn_mask, padding, causal)
    else:
        expected = reference(q, k, v, attn_mask, padding, causal)
    assert max_err(out, expected) <= 1e-10
    inputs = [q, k, v] + ([attn_mask] if attn_mask is not None and attn_mask.requires_grad else [])
    grad = torch.randn_like(out)
    for a, e in zip(torch.autograd.grad(out, inputs, grad), torch.autograd.grad(expected, inputs, grad)):
        assert max_err(a, e) <= 1e-9 * max(1.0, e.abs().max().item())


def test_three_dimensional_inputs_float_padding_and_mask_dtype():
    q, k, v = [t[:, 0] for t in qkv(2, 1, 5, 6, 4, 4, dtype=torch.float32)]
    additive_padding = torch.zeros(2, 6).masked_fill(torch.tensor([[0, 0, 0, 0, 1, 1]] * 2, dtype=torch.bool), float("-inf"))
    out = attention(q, k, v, attn_mask=torch.zeros(5, 6, dtype=torch.float64), key_padding_mask=additive_padding)
    expected = reference(q[:, None], k[:, None], v[:, None], key_padding_mask=additive_padding == float("-inf"))
    torch.testing.assert_close(out, expected[:, 0].float())


@pytest.mark.parametrize("B,H", [(0, 2), (2, 0)])
def test_empty_batch_or_heads_with_a_broadcast_mask(B, H):
    q, k, v = qkv(B, H, 3, 4, 2, 2)
    out = attention(q, k, v, attn_mask=torch.ones(3, 4, dtype=torch.bool))
    assert out.shape == (B, H, 3, 2)
    out.sum().backward()
    assert q.grad.shape == q.shape


def test_scale_argument():
    q, k, v = qkv(1, 2, 5, 5, 4, 4)
    torch.testing.assert_close(attention(q, k, v, scale=0.7), reference(q, k, v, scale=0.7))


def pytorch_in_dtype(q, k, v, attn_mask, padding, causal):
    """softmax(q k^T / sqrt(E) + masks) v done by PyTorch in the inputs' own dtype."""
    L, S = q.shape[-2], k.shape[-2]
    s = (q @ k.transpose(-1, -2)) * (1 / math.sqrt(q.shape[-1]))
    if attn_mask is not None:
        s = s.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else s + attn_mask
    if padding is not None:
        s = s.masked_fill(padding[:, None, None, :], float("-inf"))
    if causal:
        s = s.masked_fill(torch.ones(L, S, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return torch.softmax(s, -1) @ v


def low_precision(dtype, *tensors):
    return [t if t is None or t.dtype == torch.bool else t.detach().to(dtype).requires_grad_(t.requires_grad)
            for t in tensors]


@pytest.mark.parametrize("mask", ["none", "causal", "float_BHLS", "bool_padding_causal"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_low_precision_within_twice_pytorch_error(device, dtype, mask):
    # FlashAttention's rule: the error against the float64 reference is at most twice that of
    # the same math done by PyTorch in the same dtype (plus a small epsilon); gradients too.
    B, H, L, S, E, Ev = 2, 2, 70, 150, 64, 32
    q, k, v = qkv(B, H, L, S, E, Ev, dtype=torch.float32)
    attn_mask, padding, causal = masks(mask, B, H, L, S, torch.float32)
    expected = reference(q, k, v, attn_mask, padding, causal)
    lq, lk, lv, lmask = low_precision(dtype, *[None if t is None else t.to(device) for t in (q, k, v, attn_mask)])
    padding = None if padding is None else padding.to(device)
    out = attention(lq, lk, lv, attn_mask=lmask, is_causal=causal, key_padding_mask=padding)
    pytorch = pytorch_in_dtype(lq, lk, lv, lmask, padding, causal)
    assert out.dtype == dtype
    assert max_err(out, expected) <= 2 * max_err(pytorch, expected) + 1e-3
    grad = torch.randn(out.shape)
    inputs = [q, k, v] + ([attn_mask] if lmask is not None and lmask.requires_grad else [])
    low_inputs = [lq, lk, lv] + ([lmask] if lmask is not None and lmask.requires_grad else [])
    want = torch.autograd.grad(expected, inputs, grad.double())
    got = torch.autograd.grad(out, low_inputs, grad.to(device, dtype))
    theirs = torch.autograd.grad(pytorch, low_inputs, grad.to(device, dtype))
    for a, t, e in zip(got, theirs, want):
        assert a.dtype == dtype
        assert max_err(a, e) <= 2 * max_err(t, e) + 1e-3


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
    with pytest.raises(RuntimeError, match=r"dropout_p > 0 needs dropout_seed"):
        torch.ops.dll_ext.attention(q, k, v, None, None, False, None, 0.5, None)
    with pytest.raises(RuntimeError, match=r"dropout_seed"):
        torch.ops.dll_ext.attention(q, k, v, None, None, False, None, 0.5, torch.tensor([1.0]))
    for bad in (-0.1, 1.0):
        with pytest.raises(RuntimeError, match=r"dropout_p must be in \[0, 1\)"):
            attention(q, k, v, dropout_p=bad)


# ========================================================================================
# gradcheck, opcheck, compile, TorchScript
# ========================================================================================


@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
@pytest.mark.parametrize("mask", ["none", "causal", "bool_BHLS", "float_LS", "float_1HLS", "float_padding_causal"])
def test_gradcheck(mask, dropout_p):
    B, H, L, S = 2, 2, 4, 5
    assert gradcheck_op(qkv(B, H, L, S, 3, 2), masks(mask, B, H, L, S, torch.float64), dropout_p)


def gradcheck_op(qkv_leaves, mask_config, dropout_p):
    """gradcheck of dll_ext::attention in q, k, v and, when it requires grad, the float attn_mask."""
    attn_mask, padding, causal = mask_config
    inputs = list(qkv_leaves) + ([attn_mask] if attn_mask is not None and attn_mask.requires_grad else [])

    def fn(*args):
        m = args[3] if len(args) > 3 else attn_mask
        return torch.ops.dll_ext.attention(args[0], args[1], args[2], m, padding, causal, None, dropout_p, SEED)

    return torch.autograd.gradcheck(fn, inputs)


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
    "batch_mismatch": (lambda: call(k=torch.randn(1, 3, 7, 4)), r"key and value must have query's batch 2, but have 1 and 2"),
    "heads_mismatch": (lambda: call(v=torch.randn(2, 2, 7, 6)), r"value has 2 heads but key has 3"),
    "kv_heads_not_dividing": (lambda: call(k=torch.randn(2, 2, 7, 4), v=torch.randn(2, 2, 7, 6)),
                              r"query has 3 heads, key and value 2: the key/value heads must divide the query heads"),
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
    "int_inputs": (lambda: call(q=Q.long(), k=K.long(), v=V.long()), r"Long is not supported on cpu; supported: float32, float64"),
    "int8_inputs": (lambda: call(q=Q.to(torch.int8), k=K.to(torch.int8), v=V.to(torch.int8)), r"Char is not supported"),
    "scale_inf": (lambda: call(scale=float("inf")), r"scale must be finite"),
    "functional_rank": (lambda: attention(Q[0, 0, 0], K[0, 0], V[0, 0]), r"must be at least 2-D, but got shapes \[4\]"),
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



def test_dropout_seed_on_another_device_is_refused():
    # A seed on another device than the inputs must be refused before any kernel reads it (a
    # CUDA seed with CPU inputs would send them to the CUDA kernel). The CPU kernel is called
    # directly here, with a seed on the meta device standing in for the other device.
    q, k, v = [t.detach().float() for t in qkv(1, 1, 3, 4, 2, 2)]
    cpu_kernel = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)
    for op in (torch.ops.dll_ext._attention_forward.default,):
        with pytest.raises(RuntimeError, match=r"dropout_seed must be on the CPU or on query's device \(cpu\), "
                                               r"but it is on meta"):
            op.redispatch(cpu_kernel, q, k, v, None, None, False, None, 0.0, SEED.to("meta"))
    out, lse = torch.ops.dll_ext._attention_forward(q, k, v, None, None, False, None, 0.0, None)
    with pytest.raises(RuntimeError, match=r"dropout_seed must be on the CPU"):
        torch.ops.dll_ext.attention_backward.default.redispatch(
            cpu_kernel, out, q, k, v, out, lse, None, None, False, None, 0.5, SEED.to("meta"), False)

# ========================================================================================
# CUDA (skipped without a GPU)
# ========================================================================================

CUDA_SHAPES = [(1, 1, 1, 1, 1, 1), (2, 3, 17, 33, 5, 7), (1, 2, 70, 45, 64, 64), (2, 1, 33, 65, 128, 96),
               (1, 1, 20, 40, 256, 256), (1, 1, 9, 300, 16, 200)]


def to_cuda(*tensors):
    return [None if t is None else t.detach().cuda().requires_grad_(t.requires_grad) for t in tensors]


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("shape", CUDA_SHAPES, ids=["x".join(map(str, s)) for s in CUDA_SHAPES])
def test_cuda_float32_matches_reference(shape, mask):
    B, H, L, S, E, Ev = shape
    q, k, v = qkv(*shape, dtype=torch.float32)
    attn_mask, padding, causal = masks(mask, B, H, L, S, torch.float32)
    expected = reference(q, k, v, attn_mask, padding, causal)
    cq, ck, cv, cmask, cpad = to_cuda(q, k, v, attn_mask, padding)
    out = attention(cq, ck, cv, attn_mask=cmask, is_causal=causal, key_padding_mask=cpad)
    assert out.is_cuda and max_err(out, expected) <= 2e-5
    inputs = [q, k, v] + ([attn_mask] if attn_mask is not None and attn_mask.requires_grad else [])
    cuda_inputs = [cq, ck, cv] + ([cmask] if cmask is not None and cmask.requires_grad else [])
    grad = torch.randn(out.shape)
    want = torch.autograd.grad(expected, inputs, grad.double())
    got = torch.autograd.grad(out, cuda_inputs, grad.cuda())
    for a, e in zip(got, want):
        assert max_err(a, e) <= 1e-4 * max(1.0, e.abs().max().item())


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("mask", ["none", "causal", "float_BHLS", "bool_padding_causal"])
def test_cuda_dropout_matches_cpu(mask):
    # One hash decides the mask on every device: the same seed drops the same probabilities.
    B, H, L, S, E, Ev = 2, 2, 40, 70, 32, 16
    q, k, v = qkv(B, H, L, S, E, Ev, dtype=torch.float32)
    attn_mask, padding, causal = masks(mask, B, H, L, S, torch.float32)
    cpu = torch.ops.dll_ext.attention(q, k, v, attn_mask, padding, causal, None, 0.3, SEED)
    cq, ck, cv, cmask, cpad = to_cuda(q, k, v, attn_mask, padding)
    out = torch.ops.dll_ext.attention(cq, ck, cv, cmask, cpad, causal, None, 0.3, SEED)
    torch.testing.assert_close(out.cpu(), cpu, rtol=1e-4, atol=1e-5)
    grad = torch.randn(out.shape)
    want = torch.autograd.grad(cpu, [q, k, v], grad)
    got = torch.autograd.grad(out, [cq, ck, cv], grad.cuda())
    for a, e in zip(got, want):
        torch.testing.assert_close(a.cpu(), e, rtol=1e-4, atol=1e-4)


@pytest.mark.cuda
@requires_cuda
def test_cuda_fully_masked_rows_strided_inputs_and_module():
    q, k, v = to_cuda(*qkv(2, 2, 6, 5, 8, 8, dtype=torch.float32))
    allowed = torch.ones(6, 5, dtype=torch.bool, device="cuda")
    allowed[2] = False
    out = attention(q, k, v, attn_mask=allowed)
    assert torch.all(out[:, :, 2] == 0) and torch.isfinite(out).all()
    grads = torch.autograd.grad(out.sum(), [q])
    assert torch.all(grads[0][:, :, 2] == 0)
    # Head views of a projection (non-contiguous rows) are read in place.
    x = torch.randn(7, 3, 2, 8, device="cuda").permute(1, 2, 0, 3)
    torch.testing.assert_close(attention(x, x, x), attention(x.contiguous(), x.contiguous(), x.contiguous()))
    native = torch.nn.MultiheadAttention(16, 4).cuda()
    ours = dll_ext.nn.MultiheadAttention(16, 4).cuda()
    ours.load_state_dict(native.state_dict())
    y = torch.randn(9, 3, 16, device="cuda")
    padding = torch.zeros(3, 9, dtype=torch.bool, device="cuda")
    padding[1, 6:] = True
    torch.testing.assert_close(ours(y, y, y, key_padding_mask=padding, need_weights=False)[0],
                               native(y, y, y, key_padding_mask=padding, need_weights=False)[0], rtol=1e-4, atol=1e-5)


@pytest.mark.cuda
@requires_cuda
def test_cuda_opcheck_compile_and_bad_inputs():
    q, k, v = to_cuda(*qkv(2, 2, 5, 7, 4, 3, dtype=torch.float32))
    padding = torch.zeros(2, 7, dtype=torch.bool, device="cuda")
    padding[0, 5:] = True
    torch.library.opcheck(torch.ops.dll_ext.attention, (q, k, v, None, padding, True, 0.5, 0.2, SEED))
    out, lse = torch.ops.dll_ext._attention_forward(q.detach(), k.detach(), v.detach(), None, padding, True, None,
                                                    0.0, None)
    assert lse.dtype == torch.float32
    half = [t.detach().half() for t in (q, k, v)]
    assert torch.ops.dll_ext._attention_forward(*half, None, None, False, None, 0.0, None)[1].dtype == torch.float32
    torch._dynamo.reset()
    compiled = torch.compile(lambda q: attention(q, k, v, key_padding_mask=padding), fullgraph=True)
    torch.testing.assert_close(compiled(q), attention(q, k, v, key_padding_mask=padding))
    torch._dynamo.reset()
    with pytest.raises(ARG_ERRORS, match=r"head dims up to 256 are supported on CUDA"):
        big = torch.randn(1, 1, 2, 300, device="cuda")
        attention(big, big, big)
    with pytest.raises(ARG_ERRORS, match=r"Double is not supported on cuda; supported: float32, float16, bfloat16"):
        attention(q.double(), k.double(), v.double())
    with pytest.raises(ARG_ERRORS, match=r"key is on cpu but query is on cuda"):
        attention(q, k.cpu(), v)


@pytest.mark.cuda
@requires_cuda
def test_cuda_seed_with_cpu_inputs_is_refused():
    q, k, v = [t.detach().float() for t in qkv(1, 1, 3, 4, 2, 2)]
    with pytest.raises(RuntimeError, match=r"dropout_seed must be on the CPU or on query's device"):
        torch.ops.dll_ext.attention(q, k, v, None, None, False, None, 0.1, SEED.cuda())


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_cuda_backward_is_deterministic(dtype):
    # Every gradient element has one writer and every sum a fixed order: two runs agree to
    # the bit, also for the float mask's gradient summed over broadcast dimensions.
    B, H, L, S, E = 2, 3, 150, 130, 64
    q, k, v = to_cuda(*qkv(B, H, L, S, E, E, dtype=dtype))
    mask = torch.randn(1, H, L, S, device="cuda", dtype=dtype, requires_grad=True)
    padding = torch.rand(B, S, device="cuda") > 0.8
    padding[:, 0] = False
    grad = torch.randn(B, H, L, E, device="cuda", dtype=dtype)

    def grads():
        out = torch.ops.dll_ext.attention(q, k, v, mask, padding, True, None, 0.1, SEED)
        return torch.autograd.grad(out, [q, k, v, mask], grad)

    first = grads()
    torch.use_deterministic_algorithms(True)
    try:
        for _ in range(3):
            for a, b in zip(grads(), first):
                assert torch.equal(a, b)
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.cuda
@requires_cuda
def test_cuda_length_limits_are_stated():
    rows = 65535 * 16
    q = torch.randn(1, 1, rows + 1, 8, device="cuda")
    k = torch.randn(1, 1, 4, 8, device="cuda")
    with pytest.raises(RuntimeError, match=rf"L must be at most {rows} on CUDA, but got {rows + 1}"):
        attention(q, k, k)
    torch.ops.dll_ext._attention_forward(q[:, :, :rows], k, k, None, None, False, None, 0.0, None)


@pytest.mark.cuda
@requires_cuda
def test_cuda_shared_memory_limit_is_checked_not_raised_by_cuda():
    # Head dim 256 needs more shared memory in the backward than some GPUs allow: either it
    # runs, or it is refused naming the head dims and the limit, never a raw CUDA error.
    q, k, v = to_cuda(*qkv(1, 1, 20, 40, 256, 256, dtype=torch.float32))
    try:
        out = attention(q, k, v)
        out.sum().backward()
    except ValueError as err:
        assert re.search(r"head dims E = 256, Ev = 256 need \d+ KiB of shared memory per block, but this GPU "
                         r"allows \d+ KiB", str(err)), str(err)
    else:
        assert torch.isfinite(q.grad).all()
