"""dll_ext.nn.MultiheadAttention as a drop-in for nn.MultiheadAttention: parity of outputs,
returned weights and gradients over its options and masks, state_dict, dropout, TorchScript,
torch.compile, bad inputs."""
import itertools

import pytest
import torch
import torch.nn as nn

import dll_ext
import dll_ext.nn

E, HEADS, N, L, S = 16, 4, 3, 5, 7
TOL = dict(rtol=1e-5, atol=1e-5)


def twins(**kwargs):
    native = nn.MultiheadAttention(E, HEADS, **kwargs)
    ours = dll_ext.nn.MultiheadAttention(E, HEADS, **kwargs)
    ours.load_state_dict(native.state_dict())
    return ours, native


def inputs(batch_first, kdim=E, vdim=E):
    def make(n, d):
        return (torch.randn(N, n, d) if batch_first else torch.randn(n, N, d)).requires_grad_()

    return make(L, E), make(S, kdim), make(S, vdim)


def mask_sets():
    allowed_not = torch.rand(L, S) > 0.7
    allowed_not[:, 0] = False
    padding = torch.rand(N, S) > 0.7
    padding[:, 0] = False
    return {
        "none": {},
        "bool_2d": dict(attn_mask=allowed_not),
        "float_3d": dict(attn_mask=torch.randn(N * HEADS, L, S)),
        "padding": dict(key_padding_mask=padding),
        "float_padding": dict(key_padding_mask=torch.zeros(N, S).masked_fill(padding, float("-inf"))),
        "bool_and_padding": dict(attn_mask=allowed_not, key_padding_mask=padding),
        "causal_hint": dict(attn_mask=torch.triu(torch.full((L, S), float("-inf")), 1), is_causal=True),
        "causal_hint_padding": dict(attn_mask=torch.triu(torch.ones(L, S, dtype=torch.bool), 1), is_causal=True,
                                    key_padding_mask=padding),
    }


OPTIONS = list(itertools.product([False, True], [True, False], [False, True], [False, True], [False, True]))


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")
@pytest.mark.parametrize("weights", ["averaged", "per_head", "none"])
@pytest.mark.parametrize("masks", list(mask_sets()))
@pytest.mark.parametrize("batch_first,bias,add_bias_kv,add_zero_attn,kvdim", OPTIONS,
                         ids=["-".join(f"{n}={v}" for n, v in zip(("bf", "bias", "bias_kv", "zero_attn", "kvdim"), o))
                              for o in OPTIONS])
def test_parity_with_nn_multihead_attention(batch_first, bias, add_bias_kv, add_zero_attn, kvdim, masks, weights):
    kwargs = dict(bias=bias, add_bias_kv=add_bias_kv, add_zero_attn=add_zero_attn, batch_first=batch_first)
    if kvdim:
        kwargs.update(kdim=10, vdim=12)
    ours, native = twins(**kwargs)
    q, k, v = inputs(batch_first, 10 if kvdim else E, 12 if kvdim else E)
    call = dict(mask_sets()[masks], need_weights=weights != "none", average_attn_weights=weights == "averaged")
    torch.manual_seed(0)
    call = {key: value for key, value in call.items()}
    out, w = ours(q, k, v, **call)
    ref, ref_w = native(q, k, v, **call)
    torch.testing.assert_close(out, ref, **TOL)
    if weights == "none":
        assert w is None and ref_w is None
    else:
        torch.testing.assert_close(w, ref_w, **TOL)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, [q, k, v, *ours.parameters()], g)
    expected = torch.autograd.grad(ref, [q, k, v, *native.parameters()], g)
    for a, e in zip(got, expected):
        torch.testing.assert_close(a, e, **TOL)


def test_unbatched_input():
    ours, native = twins()
    x = torch.randn(6, E)
    padding = torch.tensor([False, False, False, False, True, True])
    for kwargs in ({}, {"key_padding_mask": padding}):
        got, expected = ours(x, x, x, **kwargs), native(x, x, x, **kwargs)
        torch.testing.assert_close(got, expected, **TOL)


def test_state_dict_both_ways_and_same_initialisation():
    torch.manual_seed(5)
    native = nn.MultiheadAttention(E, HEADS, add_bias_kv=True, kdim=8, vdim=8)
    torch.manual_seed(5)
    ours = dll_ext.nn.MultiheadAttention(E, HEADS, add_bias_kv=True, kdim=8, vdim=8)
    assert list(ours.state_dict()) == list(native.state_dict())
    for (name, a), (_, e) in zip(ours.state_dict().items(), native.state_dict().items()):
        assert torch.equal(a, e), name
    back = nn.MultiheadAttention(E, HEADS, add_bias_kv=True, kdim=8, vdim=8)
    back.load_state_dict(ours.state_dict())


def test_fully_masked_query_gives_zeros_not_nan():
    ours, native = twins()
    x = torch.randn(L, N, E)
    mask = torch.zeros(L, L, dtype=torch.bool)
    mask[2] = True  # query 2 may attend nothing
    out, w = ours(x, x, x, attn_mask=mask)
    ref, _ = native(x, x, x, attn_mask=mask)
    assert not out.isnan().any() and not w.isnan().any()
    assert torch.all(w[:, 2] == 0)
    keep = torch.arange(L) != 2
    torch.testing.assert_close(out[keep], ref[keep], **TOL)


@pytest.mark.parametrize("need_weights", [True, False], ids=["explicit", "fused"])
def test_dropout_in_training_is_reproducible_and_off_in_eval(need_weights):
    ours, native = twins(dropout=0.5)
    x = torch.randn(L, N, E)
    torch.manual_seed(1)
    a = ours(x, x, x, need_weights=need_weights)[0]
    torch.manual_seed(1)
    b = ours(x, x, x, need_weights=need_weights)[0]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    ours.eval(), native.eval()
    torch.testing.assert_close(ours(x, x, x, need_weights=need_weights), native(x, x, x, need_weights=need_weights),
                               **TOL)
    assert (a - ours(x, x, x)[0]).abs().max() > 1e-3


def test_fused_dropout_keeps_the_expected_output():
    """Training dropout through the fused op is unbiased: over many draws the mean output
    tends to the output without dropout."""
    ours, _ = twins(dropout=0.5)
    x = torch.randn(L, N, E)
    with torch.no_grad():
        mean = sum(ours(x, x, x, need_weights=False)[0] for _ in range(2000)) / 2000
        exact = ours.eval()(x, x, x, need_weights=False)[0]
    assert (mean - exact).abs().max() < 0.05 * exact.abs().max()


class SelfAttention(nn.Module):
    def __init__(self, cls):
        super().__init__()
        self.attention = cls(E, HEADS, batch_first=True)

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        return self.attention(x, x, x, key_padding_mask=padding, need_weights=False)[0]


def test_torchscript_and_compile():
    native = SelfAttention(nn.MultiheadAttention)
    ours = SelfAttention(dll_ext.nn.MultiheadAttention)
    ours.load_state_dict(native.state_dict())
    x = torch.randn(N, L, E)
    padding = torch.zeros(N, L, dtype=torch.bool)
    padding[1, 3:] = True
    expected = native(x, padding)
    torch.testing.assert_close(torch.jit.script(ours)(x, padding), expected, **TOL)
    torch._dynamo.reset()
    torch.testing.assert_close(torch.compile(ours, fullgraph=True)(x, padding), expected, **TOL)
    torch._dynamo.reset()


BAD = {
    "embed_dim_not_divisible": (lambda: dll_ext.nn.MultiheadAttention(10, 3), r"embed_dim must be divisible by num_heads"),
    "dropout_range": (lambda: dll_ext.nn.MultiheadAttention(E, HEADS, dropout=1.0), r"dropout must be in \[0, 1\)"),
    "dropout_negative": (lambda: dll_ext.nn.MultiheadAttention(E, HEADS, dropout=-0.1), r"dropout must be in \[0, 1\)"),
    "wrong_embed_dim": (lambda: dll_ext.nn.MultiheadAttention(E, HEADS)(*[torch.randn(L, N, 8)] * 3),
                        r"query has embed_dim 8 but the module expects 16"),
    "mask_2d_shape": (lambda: dll_ext.nn.MultiheadAttention(E, HEADS)(*[torch.randn(L, N, E)] * 3,
                                                                     attn_mask=torch.zeros(L, L + 1)),
                      r"attn_mask must have shape \[5, 5\]"),
    "mask_3d_shape": (lambda: dll_ext.nn.MultiheadAttention(E, HEADS)(*[torch.randn(L, N, E)] * 3,
                                                                     attn_mask=torch.zeros(N, L, L)),
                      r"3-D attn_mask must have shape \[12, 5, 5\]"),
    "padding_length": (lambda: dll_ext.nn.MultiheadAttention(E, HEADS)(
        *[torch.randn(L, N, E)] * 3, key_padding_mask=torch.zeros(N, L + 2, dtype=torch.bool)),
        r"key_padding_mask must have shape \(batch, S\) = \[3, 5\], but got \[3, 7\]"),
    "causal_hint_without_mask": (lambda: dll_ext.nn.MultiheadAttention(E, HEADS)(*[torch.randn(L, N, E)] * 3,
                                                                                is_causal=True),
                                 r"is_causal.*needs attn_mask"),
}


@pytest.mark.parametrize("fn,match", list(BAD.values()), ids=list(BAD))
def test_bad_inputs(fn, match):
    with pytest.raises((RuntimeError, ValueError, AssertionError, TypeError), match=match):
        fn()
