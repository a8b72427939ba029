"""lstm_layer and lstm_layer_packed: the ops, their backward, dll_ext.functional.lstm_layer
and dll_ext.nn.LSTM.

Sections: the ops against a float64 reference written from the equations (padded, with
lengths in any order, reverse, packed), nn.LSTM parity over a grid of configurations, the
module's drop-in behaviour, gradcheck, opcheck, torch.compile, TorchScript, bad inputs,
property tests on random lengths, CUDA.
"""
import copy
import io

import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import dll_ext
import dll_ext.functional
import dll_ext.nn

from conftest import DEVICES, grads_of, lstm_tensors, max_err, requires_cuda

ARG_ERRORS = RuntimeError  # as ATen ops and torch.nn raise for these inputs


# ========================================================================================
# Helpers: cases and the float64 reference
# ========================================================================================


def make_layer_case(T, B, D, H, bias=True, dtype=torch.float64, device="cpu"):
    """(input, hx, cx, w_ih, w_hh, b_ih, b_hh), drawn in float64 and rounded to dtype."""
    out = [t.to(device, dtype).requires_grad_() for t in lstm_tensors((T, B, D), B, H)]
    if not bias:
        out[5] = out[6] = None
    return out


def ref_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths=None, reverse=False):
    """One layer and direction from the equations, one sequence at a time, in float64:
    sequence b runs over its first lengths[b] steps (backwards when reverse); output is
    zero past them; the final state is the one after its last step."""
    as64 = lambda t: None if t is None else t.double().cpu()  # noqa: E731
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = map(as64, (x, h0, c0, w_ih, w_hh, b_ih, b_hh))
    T, B = x.shape[:2]
    H = w_hh.shape[1]
    outputs, h_n, c_n = [[None] * T for _ in range(B)], [], []
    for b in range(B):
        n = T if lengths is None else int(lengths[b])
        h, c = h0[b], c0[b]
        for t in (reversed(range(n)) if reverse else range(n)):
            pre = w_ih @ x[t, b] + w_hh @ h
            if b_ih is not None:
                pre = pre + b_ih + b_hh
            i, f, g, o = pre.chunk(4)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outputs[b][t] = h
        h_n.append(h)
        c_n.append(c)
    zero = x.new_zeros(H)
    out = torch.stack([torch.stack([o if o is not None else zero for o in outputs[b]]) for b in range(B)], 1)
    return out, torch.stack(h_n), torch.stack(c_n)


def valid_mask(T, B, lengths, device="cpu"):
    if lengths is None:
        return torch.ones(T, B, 1, dtype=torch.bool, device=device)
    return (torch.arange(T)[:, None] < torch.as_tensor(lengths)[None, :])[..., None].to(device)


def layer_op():
    return torch.ops.dll_ext.lstm_layer


def packed_op():
    return torch.ops.dll_ext.lstm_layer_packed


LENGTHS = {
    "none": lambda T, B: None,
    "full": lambda T, B: torch.full((B,), T, dtype=torch.int64),
    "sorted": lambda T, B: torch.sort(torch.randint(1, T + 1, (B,)), descending=True).values,
    "unsorted": lambda T, B: torch.randint(1, T + 1, (B,)),
    "ones": lambda T, B: torch.ones(B, dtype=torch.int64),
}


def check_against_reference(case, lengths, reverse, tol):
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = case
    T, B = x.shape[:2]
    out, h, c = layer_op()(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, reverse)
    ref = [t.detach().requires_grad_() if t is not None else None for t in case]
    r_out, r_h, r_c = ref_layer(*ref, lengths, reverse)
    for name, a, e in (("output", out, r_out), ("h_n", h, r_h), ("c_n", c, r_c)):
        assert a.dtype == x.dtype and a.shape == e.shape, name
        assert max_err(a, e) <= tol, f"{name}: max error {max_err(a, e):.3g} > {tol}"
    assert torch.count_nonzero(out.detach() * ~valid_mask(T, B, lengths, out.device)) == 0, "padded output is zero"
    g_out, g_h, g_c = torch.randn_like(r_out), torch.randn_like(r_h), torch.randn_like(r_c)
    got = grads_of(torch.cat([out.flatten(), h.flatten(), c.flatten()]), list(case),
                   torch.cat([g_out.flatten(), g_h.flatten(), g_c.flatten()]).to(x.dtype).to(x.device))
    expected = grads_of(torch.cat([r_out.flatten(), r_h.flatten(), r_c.flatten()]), ref,
                        torch.cat([g_out.flatten(), g_h.flatten(), g_c.flatten()]))
    for name, a, e in zip(("input", "hx", "cx", "w_ih", "w_hh", "b_ih", "b_hh"), got, expected):
        if e is None:
            assert a is None, name
            continue
        assert max_err(a, e) <= tol * max(1.0, e.abs().max().item()), f"grad {name}: {max_err(a, e):.3g}"


# ========================================================================================
# 1. The ops against the float64 reference
# ========================================================================================

SHAPES = [(1, 1, 1, 1), (5, 3, 4, 6), (7, 5, 3, 8), (12, 9, 16, 5), (3, 17, 2, 33)]


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("lengths", list(LENGTHS))
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("shape", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_layer_matches_reference(dtype, shape, bias, lengths, reverse):
    T, B, D, H = shape
    case = make_layer_case(T, B, D, H, bias, dtype)
    check_against_reference(case, LENGTHS[lengths](T, B), reverse, 1e-10 if dtype == torch.float64 else 2e-5)


@pytest.fixture
def threads():
    """torch.set_num_threads for one test: the CPU steps split the hidden units into a block
    per thread."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def test_cpu_unit_blocks_split_the_units_in_whole_steps(threads):
    threads(3)
    blocks = torch.ops.dll_ext._lstm_cpu_unit_blocks
    assert blocks(64, 200) == [0, 64, 128, 200]  # the last ends off a 16-unit step
    assert blocks(8, 200) == [0, 200]  # too little work to share
    assert blocks(4096, 20) == [0, 20]  # too narrow to share
    assert blocks(0, 0) == [0, 0]
    threads(1)
    assert blocks(64, 200) == [0, 200]
    with pytest.raises(RuntimeError, match="must be >= 0"):
        blocks(-1, 4)


@pytest.mark.parametrize("steps", [1, 5], ids=["1step", "5steps"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("lengths", ["none", "unsorted"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_several_unit_blocks_match_reference(threads, dtype, lengths, reverse, steps):
    # Three blocks of hidden units (see above), each with its own slice of W_hh: in float32
    # over several steps packed once for the op call (MKL), else BLAS per step. Unsorted
    # lengths shrink later steps below the rows the weights were packed for.
    threads(3)
    T, B, D, H = steps, 64, 24, 200
    assert len(torch.ops.dll_ext._lstm_cpu_unit_blocks(B, H)) == 4
    case = make_layer_case(T, B, D, H, True, dtype)
    check_against_reference(case, LENGTHS[lengths](T, B), reverse, 1e-10 if dtype == torch.float64 else 5e-5)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_trailing_steps_where_every_sequence_has_ended(dtype, reverse):
    # Padding longer than every sequence: the last steps have no rows at all.
    case = make_layer_case(7, 3, 4, 5, True, dtype)
    check_against_reference(case, torch.tensor([3, 1, 2]), reverse, 1e-10 if dtype == torch.float64 else 2e-5)


def test_layer_bfloat16_close_to_reference():
    # bfloat16 storage with float32 accumulation in the step: within bfloat16's rounding of
    # the reference over a short sequence.
    case = make_layer_case(6, 4, 8, 8, True, torch.bfloat16)
    out, h, c = layer_op()(*case, torch.tensor([6, 2, 5, 1]), False)
    r_out, r_h, r_c = ref_layer(*case, torch.tensor([6, 2, 5, 1]), False)
    assert out.dtype == torch.bfloat16
    for a, e in ((out, r_out), (h, r_h), (c, r_c)):
        assert max_err(a, e) < 0.05


def test_noncontiguous_inputs():
    case = make_layer_case(6, 4, 5, 3, True, torch.float64)
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = [t.detach() for t in case]
    strided = (x.transpose(0, 1).contiguous().transpose(0, 1), h0.t().contiguous().t(), c0[:, :],
               w_ih.t().contiguous().t(), w_hh.t().contiguous().t(), b_ih, b_hh)
    assert not strided[0].is_contiguous() and not strided[3].is_contiguous()
    lengths = torch.tensor([2, 6, 1, 4])
    for a, e in zip(layer_op()(*strided, lengths, True), layer_op()(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths, True)):
        torch.testing.assert_close(a, e, rtol=0, atol=1e-14)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("enforce_sorted", [True, False], ids=["sorted", "unsorted"])
def test_packed_op_matches_reference(reverse, enforce_sorted):
    T, B, D, H = 8, 6, 4, 5
    case = make_layer_case(T, B, D, H, True, torch.float64)
    x, h0, c0, *params = case
    lengths = torch.tensor([8, 7, 5, 5, 2, 1]) if enforce_sorted else torch.tensor([3, 8, 1, 5, 8, 2])
    packed = pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
    order = packed.sorted_indices if packed.sorted_indices is not None else torch.arange(B)
    out, h, c = packed_op()(packed.data, packed.batch_sizes, h0[order], c0[order], *params, reverse)
    r_out, r_h, r_c = ref_layer(*case, lengths, reverse)
    r_packed = pack_padded_sequence(r_out, lengths, enforce_sorted=enforce_sorted)
    torch.testing.assert_close(out, r_packed.data, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(h, r_h[order], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(c, r_c[order], rtol=1e-10, atol=1e-10)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, [x, h0, c0, *params], g)
    expected = torch.autograd.grad(r_packed.data, [x, h0, c0, *params], g)
    for a, e in zip(got, expected):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-10)


def test_functional_lstm_layer_lengths_list_batch_first_and_default_state():
    case = make_layer_case(5, 3, 4, 6, True, torch.float64)
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = case
    out, (h, c) = dll_ext.functional.lstm_layer(x.transpose(0, 1), None, w_ih, w_hh, b_ih, b_hh,
                                                lengths=[5, 2, 3], reverse=True, batch_first=True)
    zeros = torch.zeros_like(h0)
    r_out, r_h, r_c = ref_layer(x, zeros, zeros, w_ih, w_hh, b_ih, b_hh, [5, 2, 3], True)
    torch.testing.assert_close(out, r_out.transpose(0, 1))
    torch.testing.assert_close((h, c), (r_h, r_c))


def test_zero_batch_and_single_step():
    case = make_layer_case(4, 0, 3, 5, True, torch.float32)
    out, h, c = layer_op()(*case)
    assert out.shape == (4, 0, 5) and h.shape == c.shape == (0, 5)
    out.sum().backward()
    assert case[3].grad is not None and torch.count_nonzero(case[3].grad) == 0
    out, h, c = layer_op()(*case, torch.zeros(0, dtype=torch.int64))
    assert out.shape == (4, 0, 5)
    check_against_reference(make_layer_case(1, 3, 2, 4, True, torch.float64), None, False, 1e-12)
    check_against_reference(make_layer_case(1, 3, 2, 4, True, torch.float64), torch.ones(3, dtype=torch.int64), True, 1e-12)


def test_only_final_state_used():
    # Undefined gradients for output / h_n reach the backward op as None.
    case = make_layer_case(5, 3, 4, 6, True, torch.float64)
    lengths = torch.tensor([3, 5, 1])
    _, _, c = layer_op()(*case, lengths, False)
    got = torch.autograd.grad(c.sum(), case)
    ref = [t.detach().requires_grad_() for t in case]
    expected = torch.autograd.grad(ref_layer(*ref, lengths, False)[2].sum(), ref)
    for a, e in zip(got, expected):
        torch.testing.assert_close(a, e)


# ========================================================================================
# 2. nn.LSTM parity over a grid of configurations
# ========================================================================================


def twin_modules(*args, **kwargs):
    """(ours, native) with the same weights (native's initialisation loaded into ours)."""
    native = nn.LSTM(*args, **kwargs)
    ours = dll_ext.nn.LSTM(*args, **kwargs)
    ours.load_state_dict(native.state_dict())
    return ours, native


def assert_module_grads_close(ours, native, **tol):
    for (name, a), (_, e) in zip(ours.named_parameters(), native.named_parameters()):
        assert a.grad is not None, name
        torch.testing.assert_close(a.grad, e.grad, msg=lambda m: f"{name}: {m}", **tol)


INPUT_KINDS = ["padded", "packed_sorted", "packed_unsorted"]
FP32 = dict(rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("initial_state", [False, True], ids=["zero_state", "given_state"])
@pytest.mark.parametrize("kind", INPUT_KINDS)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time_major", "batch_first"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_nn_lstm_parity(num_layers, bidirectional, batch_first, bias, kind, initial_state):
    T, B, D, H = 7, 4, 5, 6
    ours, native = twin_modules(D, H, num_layers, bias=bias, batch_first=batch_first, bidirectional=bidirectional)
    x = torch.randn(B, T, D) if batch_first else torch.randn(T, B, D)
    lengths = {"padded": None, "packed_sorted": [7, 5, 5, 2], "packed_unsorted": [3, 7, 1, 6]}[kind]
    x_ours, x_nat = x.clone().requires_grad_(), x.clone().requires_grad_()
    states = None
    if initial_state:
        shape = (num_layers * (2 if bidirectional else 1), B, H)
        states = [torch.randn(shape), torch.randn(shape)]
    s_ours = None if states is None else tuple(s.clone().requires_grad_() for s in states)
    s_nat = None if states is None else tuple(s.clone().requires_grad_() for s in states)

    def run(module, inp, state):
        if lengths is not None:
            inp = pack_padded_sequence(inp, lengths, batch_first=batch_first, enforce_sorted=kind == "packed_sorted")
        out, (h, c) = module(inp, state)
        if lengths is not None:
            assert isinstance(out, PackedSequence)
            out = out.data
        return out, h, c

    got, expected = run(ours, x_ours, s_ours), run(native, x_nat, s_nat)
    for name, a, e in zip(("output", "h_n", "c_n"), got, expected):
        torch.testing.assert_close(a, e, msg=lambda m: f"{name}: {m}", **FP32)
    weights = [torch.randn_like(t) for t in expected]
    sum(((t * w).sum() for t, w in zip(got, weights))).backward()
    sum(((t * w).sum() for t, w in zip(expected, weights))).backward()
    torch.testing.assert_close(x_ours.grad, x_nat.grad, **FP32)
    if initial_state:
        for a, e in zip(s_ours, s_nat):
            torch.testing.assert_close(a.grad, e.grad, **FP32)
    assert_module_grads_close(ours, native, **FP32)


def test_packed_output_keeps_the_input_packing():
    ours, native = twin_modules(3, 4, 2, bidirectional=True)
    packed = pack_padded_sequence(torch.randn(6, 5, 3), [2, 6, 3, 3, 1], enforce_sorted=False)
    out, (h, c) = ours(packed)
    ref, (rh, rc) = native(packed)
    assert torch.equal(out.batch_sizes, ref.batch_sizes)
    assert torch.equal(out.sorted_indices, ref.sorted_indices) and torch.equal(out.unsorted_indices, ref.unsorted_indices)
    padded, lengths = pad_packed_sequence(out)
    r_padded, _ = pad_packed_sequence(ref)
    torch.testing.assert_close(padded, r_padded, **FP32)
    assert lengths.tolist() == [2, 6, 3, 3, 1]


def test_unbatched_input():
    for batch_first in (False, True):
        ours, native = twin_modules(3, 4, 2, batch_first=batch_first, bidirectional=True)
        x = torch.randn(6, 3)
        state = (torch.randn(4, 4), torch.randn(4, 4))
        got, expected = ours(x, state), native(x, state)
        torch.testing.assert_close(got, expected, **FP32)
        assert got[0].shape == (6, 8) and got[1][0].shape == (4, 4)


def test_float64_module_parity():
    ours, native = twin_modules(3, 5, 2, bidirectional=True, dtype=torch.float64)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    torch.testing.assert_close(ours(x), native(x), rtol=1e-12, atol=1e-12)


# ========================================================================================
# 3. LSTM as a drop-in for nn.LSTM
# ========================================================================================


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_same_parameters_initialisation_and_state_dict(bias, bidirectional):
    torch.manual_seed(3)
    native = nn.LSTM(4, 6, 2, bias=bias, bidirectional=bidirectional)
    torch.manual_seed(3)
    ours = dll_ext.nn.LSTM(4, 6, 2, bias=bias, bidirectional=bidirectional)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in native.named_parameters()]
    assert list(ours.state_dict()) == list(native.state_dict())
    for (n, a), (_, e) in zip(ours.named_parameters(), native.named_parameters()):
        assert torch.equal(a, e), f"{n}: same initialisation under the same seed"
    # And back: our state_dict loads into nn.LSTM.
    back = nn.LSTM(4, 6, 2, bias=bias, bidirectional=bidirectional)
    back.load_state_dict(ours.state_dict())
    x = torch.randn(3, 2, 4)
    torch.testing.assert_close(back(x), ours(x), **FP32)
    assert repr(ours).replace("LSTM", "") == repr(native).replace("LSTM", "")


def test_constructor_keywords_and_attributes():
    m = dll_ext.nn.LSTM(input_size=3, hidden_size=4, num_layers=2, bias=False, batch_first=True, dropout=0.25,
                        bidirectional=True, proj_size=0, device="cpu", dtype=torch.float64)
    assert (m.input_size, m.hidden_size, m.num_layers, m.bias, m.batch_first, m.dropout, m.bidirectional) == \
        (3, 4, 2, False, True, 0.25, True)
    assert m.weight_ih_l1_reverse.dtype == torch.float64 and m.weight_ih_l1.shape == (16, 8)
    m.flatten_parameters()  # exists, as on nn.LSTM
    assert len(m.all_weights) == 4


def test_proj_size_is_refused_clearly():
    with pytest.raises(ValueError, match=r"proj_size"):
        dll_ext.nn.LSTM(3, 4, proj_size=2)


def test_forget_bias_option():
    m = dll_ext.nn.LSTM(3, 4, 2, bidirectional=True, forget_bias=1.0)
    for name in ("l0", "l1", "l0_reverse", "l1_reverse"):
        b_ih, b_hh = getattr(m, f"bias_ih_{name}"), getattr(m, f"bias_hh_{name}")
        assert torch.all(b_ih[4:8] == 1.0) and torch.all(b_hh[4:8] == 0.0)
        assert not torch.all(b_ih[:4] == 1.0)
    with pytest.raises(ValueError, match=r"forget_bias"):
        dll_ext.nn.LSTM(3, 4, bias=False, forget_bias=1.0)


def test_dropout_between_layers():
    ours, native = twin_modules(3, 5, 3, dropout=0.5)
    x = torch.randn(6, 2, 3)
    # Evaluation: no dropout, same as nn.LSTM.
    ours.eval(), native.eval()
    torch.testing.assert_close(ours(x), native(x), **FP32)
    # Training: dropout changes the output, reproducibly under a seed; the last layer's
    # output is not dropped (no exact zeros appear beyond chance).
    ours.train()
    torch.manual_seed(0)
    a = ours(x)[0]
    torch.manual_seed(0)
    b = ours(x)[0]
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    ours.eval()
    assert max_err(a, ours(x)[0]) > 1e-3
    # With dropout = 1 every layer after the first sees zeros: the output is that of a zero
    # input to the last layer.
    ones = copy.deepcopy(ours)
    ones.dropout = 1.0
    ones.train()
    out = ones(x)[0]
    last = dll_ext.functional.lstm_layer(torch.zeros(6, 2, 5), None, ones.weight_ih_l2, ones.weight_hh_l2,
                                         ones.bias_ih_l2, ones.bias_hh_l2)[0]
    torch.testing.assert_close(out, last)


def test_module_to_dtype_and_moved_weights():
    ours, native = twin_modules(3, 4)
    ours.double(), native.double()
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    torch.testing.assert_close(ours(x), native(x))
    # Replaced parameters are picked up (nn.LSTM refreshes its weight list in forward).
    with torch.no_grad():
        ours.weight_hh_l0 = nn.Parameter(ours.weight_hh_l0 * 2)
        native.weight_hh_l0 = nn.Parameter(native.weight_hh_l0 * 2)
    torch.testing.assert_close(ours(x), native(x))


# ========================================================================================
# 4. gradcheck (float64)
# ========================================================================================


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("lengths", [None, [4, 1, 3]], ids=["padded", "lengths"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_gradcheck_layer(bias, lengths, reverse):
    case = make_layer_case(4, 3, 2, 3, bias, torch.float64)
    lengths = None if lengths is None else torch.tensor(lengths)
    args = [t for t in case if t is not None]

    def fn(*a):
        full = list(a) + ([] if bias else [None, None])
        return layer_op()(*full, lengths, reverse)

    assert torch.autograd.gradcheck(fn, args)


def test_gradcheck_packed():
    case = make_layer_case(4, 3, 2, 3, True, torch.float64)
    packed = pack_padded_sequence(case[0].detach(), [4, 3, 1])
    data = packed.data.clone().requires_grad_()
    for reverse in (False, True):
        assert torch.autograd.gradcheck(lambda d, *a: packed_op()(d, packed.batch_sizes, *a, reverse),
                                        [data] + case[1:])


def test_gradcheck_module():
    m = dll_ext.nn.LSTM(2, 3, 2, bidirectional=True, dtype=torch.float64)
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, *p: torch.func.functional_call(
        m, dict(zip([n for n, _ in m.named_parameters()], p)), (x,))[0], [x] + list(m.parameters()))


def test_double_backward_is_refused_clearly():
    case = make_layer_case(3, 2, 2, 3, True, torch.float64)
    out, _, _ = layer_op()(*case)
    with pytest.raises(RuntimeError, match=r"lstm_layer: double backward"):
        torch.autograd.grad(out.sum(), case[0], create_graph=True)
    # Without create_graph the same backward runs.
    out, _, _ = layer_op()(*case)
    assert torch.autograd.grad(out.sum(), case[0])[0].shape == case[0].shape


# ========================================================================================
# 5. opcheck
# ========================================================================================


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("lengths", [None, [3, 5, 1]], ids=["padded", "lengths"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_opcheck_lstm_layer(dtype, lengths, reverse):
    case = make_layer_case(5, 3, 2, 4, True, dtype)
    lengths = None if lengths is None else torch.tensor(lengths)
    torch.library.opcheck(layer_op(), (*case, lengths, reverse))
    torch.library.opcheck(torch.ops.dll_ext._lstm_layer_forward,
                          tuple(t.detach() for t in case[:1]) + (lengths, None) +
                          tuple(t.detach() for t in case[1:]) + (reverse,))


def test_opcheck_lstm_layer_packed():
    case = make_layer_case(5, 3, 2, 4, False, torch.float32)
    packed = pack_padded_sequence(case[0].detach(), [5, 4, 2])
    for reverse in (False, True):
        torch.library.opcheck(packed_op(), (packed.data.requires_grad_(), packed.batch_sizes, *case[1:], reverse))


@pytest.mark.parametrize("grads", ["all", "output_only", "state_only"])
def test_opcheck_lstm_layer_backward(grads):
    case = [t.detach() for t in make_layer_case(5, 3, 2, 4, True, torch.float64)]
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = case
    lengths = torch.tensor([2, 5, 4])
    out, h, c, gates, cells = torch.ops.dll_ext._lstm_layer_forward(x, lengths, None, h0, c0, w_ih, w_hh, b_ih, b_hh, True)
    g_out = torch.randn_like(out) if grads != "state_only" else None
    g_h = torch.randn_like(h) if grads != "output_only" else None
    g_c = torch.randn_like(c) if grads == "all" else None
    torch.library.opcheck(torch.ops.dll_ext.lstm_layer_backward,
                          (g_out, g_h, g_c, x, lengths, None, h0, c0, w_ih, w_hh, out, gates, cells, True, True,
                           [True, grads == "all", True, True]))


@pytest.mark.parametrize("mask", [(True, False, True, False), (False, False, False, True), (False, True, False, False),
                                  (False, False, True, True)], ids=str)
def test_backward_op_computes_only_the_gradients_asked_for(mask):
    # output_mask is (input, hx, w_ih, w_hh); the weight gradients share one GEMM when both
    # are asked for. What is computed equals the full backward's; the rest is None.
    case = [t.detach() for t in make_layer_case(5, 3, 2, 4, True, torch.float64)]
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = case
    lengths = torch.tensor([2, 5, 4])
    out, h, c, gates, cells = torch.ops.dll_ext._lstm_layer_forward(x, lengths, None, h0, c0, w_ih, w_hh, b_ih, b_hh,
                                                                     False)
    grads = (torch.randn_like(out), torch.randn_like(h), torch.randn_like(c))
    args = (*grads, x, lengths, None, h0, c0, w_ih, w_hh, out, gates, cells, True, False)
    full = torch.ops.dll_ext.lstm_layer_backward(*args, [True] * 4)
    part = torch.ops.dll_ext.lstm_layer_backward(*args, list(mask))
    for index, wanted in zip((0, 1, 3, 4), mask):
        assert (part[index] is not None) == wanted, index
        if wanted:
            torch.testing.assert_close(part[index], full[index], rtol=0, atol=1e-12)
    torch.testing.assert_close(part[2], full[2], rtol=0, atol=1e-12)  # cx's and the bias's: always
    torch.testing.assert_close(part[5], full[5], rtol=0, atol=1e-12)


# ========================================================================================
# 6. torch.compile
# ========================================================================================


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_compile_module_fullgraph(fresh_dynamo):
    ours = dll_ext.nn.LSTM(3, 5, 2, bidirectional=True, batch_first=True)
    x = torch.randn(4, 6, 3, requires_grad=True)
    compiled = torch.compile(ours, fullgraph=True)
    out, (h, c) = compiled(x)
    ref, (rh, rc) = ours(x)
    torch.testing.assert_close((out, h, c), (ref, rh, rc))
    (g,) = torch.autograd.grad(out.sum() + c.sum(), x)
    (rg,) = torch.autograd.grad(ref.sum() + rc.sum(), x)
    torch.testing.assert_close(g, rg)


def test_compile_functional_with_lengths_fullgraph(fresh_dynamo):
    from conftest import aot_graphs

    case = make_layer_case(6, 3, 2, 4, True, torch.float32)
    x, h0, c0, *params = case
    lengths = torch.tensor([6, 2, 4])

    def fn(x, h0, c0):
        out, (h, c) = dll_ext.functional.lstm_layer(x, (h0, c0), *params, lengths=lengths, reverse=True)
        return out.sum() + h.sum() + c.sum()

    graphs = aot_graphs(fn, x, h0, c0)
    assert any("_lstm_layer_forward" in str(n.target) for n in graphs["forward"].graph.nodes)
    assert any("lstm_layer_backward" in str(n.target) for n in graphs["backward"].graph.nodes)
    compiled = torch.compile(fn, fullgraph=True)
    got = torch.autograd.grad(compiled(x, h0, c0), [x, h0, c0])
    expected = torch.autograd.grad(fn(x, h0, c0), [x, h0, c0])
    torch.testing.assert_close(got, expected)


# ========================================================================================
# 7. TorchScript
# ========================================================================================


class Tagger(nn.Module):
    """An LSTM used from a scripted model, padded and packed."""

    def __init__(self, lstm_cls):
        super().__init__()
        self.lstm = lstm_cls(3, 5, 2, bidirectional=True, batch_first=True)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor):
        y, (h, c) = self.lstm(x)
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        yp, (hp, cp) = self.lstm(packed)
        return y, h, c, yp.data, hp, cp


def test_torchscript_padded_and_packed_and_save_load():
    native = Tagger(nn.LSTM)
    ours = Tagger(dll_ext.nn.LSTM)
    ours.load_state_dict(native.state_dict())
    scripted = torch.jit.script(ours)
    layers = str(scripted.lstm._layers.inlined_graph)
    assert "dll_ext::lstm_layer(" in layers and "dll_ext::lstm_layer_packed(" in layers
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    x, lengths = torch.randn(3, 6, 3), torch.tensor([6, 2, 4])
    expected = native(x, lengths)
    for module in (scripted, loaded):
        torch.testing.assert_close(module(x, lengths), expected, **FP32)


# ========================================================================================
# 8. Bad inputs
# ========================================================================================

T_, B_, D_, H_ = 5, 3, 4, 6
X = torch.randn(T_, B_, D_)
HX = torch.randn(B_, H_)
CX = torch.randn(B_, H_)
W_IH = torch.randn(4 * H_, D_)
W_HH = torch.randn(4 * H_, H_)
B_IH = torch.randn(4 * H_)
B_HH = torch.randn(4 * H_)
GOOD = dict(input=X, hx=HX, cx=CX, w_ih=W_IH, w_hh=W_HH, b_ih=B_IH, b_hh=B_HH, lengths=None, reverse=False)


def call_op(**changes):
    a = dict(GOOD, **changes)
    return layer_op()(a["input"], a["hx"], a["cx"], a["w_ih"], a["w_hh"], a["b_ih"], a["b_hh"], a["lengths"], a["reverse"])


PACKED = pack_padded_sequence(X, [5, 3, 2])


def call_packed(batch_sizes=PACKED.batch_sizes, data=PACKED.data, hx=HX):
    return packed_op()(data, batch_sizes, hx, CX, W_IH, W_HH, B_IH, B_HH, False)


BAD_INPUTS = {
    "input_rank_2": (lambda: call_op(input=X[0]), r"\binput\b.*3-D"),
    "feature_size": (lambda: call_op(input=torch.randn(T_, B_, 7)), r"\binput\b.*feature size 7.*input_size = 4"),
    "hx_shape": (lambda: call_op(hx=torch.randn(B_, 5)), r"\bhx\b.*\[3, 6\].*\[3, 5\]"),
    "cx_shape": (lambda: call_op(cx=torch.randn(1, B_, H_)), r"\bcx\b.*\[3, 6\]"),
    "batch_mismatch": (lambda: call_op(hx=torch.randn(2, H_), cx=torch.randn(2, H_)), r"\bhx\b.*\[3, 6\].*\[2, 6\]"),
    "lengths_too_long": (lambda: call_op(lengths=torch.tensor([5, 6, 1])), r"lengths.*\[1, 5\].*lengths\[1\] = 6"),
    "lengths_zero": (lambda: call_op(lengths=torch.tensor([5, 0, 1])), r"lengths.*\[1, 5\].*lengths\[1\] = 0"),
    "lengths_negative": (lambda: call_op(lengths=torch.tensor([-1, 2, 1])), r"lengths\[0\] = -1"),
    "lengths_size": (lambda: call_op(lengths=torch.tensor([5, 2])), r"lengths.*size batch = 3.*\[2\]"),
    "lengths_dtype": (lambda: call_op(lengths=torch.tensor([5.0, 2.0, 1.0])), r"lengths.*int64.*Float"),
    "lengths_rank": (lambda: call_op(lengths=torch.ones(3, 1, dtype=torch.int64)), r"lengths.*1-D"),
    "w_ih_rows": (lambda: call_op(w_ih=torch.randn(20, D_)), r"weight_ih.*24 rows"),
    "w_hh_shape": (lambda: call_op(w_hh=torch.randn(24, 5)), r"weight_hh"),
    "b_ih_size": (lambda: call_op(b_ih=torch.randn(20)), r"bias_ih.*\[24\]"),
    "one_bias": (lambda: call_op(b_hh=None), r"bias_ih and bias_hh must be given together"),
    "input_dtype_mix": (lambda: call_op(hx=HX.double()), r"hx has dtype Double but input has dtype Float"),
    "weight_dtype_mix": (lambda: call_op(w_hh=W_HH.double()), r"weight_hh has dtype Double but input has dtype Float"),
    "int_input": (lambda: layer_op()(X.long(), HX.long(), CX.long(), W_IH.long(), W_HH.long(), None, None),
                  r"Long.*not supported"),
    "half_on_cpu": (lambda: layer_op()(X.half(), HX.half(), CX.half(), W_IH.half(), W_HH.half(), None, None),
                    r"Half.*not supported.*CUDA only"),
    "packed_batch_sizes_increasing": (lambda: call_packed(batch_sizes=torch.tensor([2, 3, 2, 1, 1, 1])),
                                      r"batch_sizes.*non-increasing"),
    "packed_batch_sizes_sum": (lambda: call_packed(batch_sizes=torch.tensor([3, 3, 2, 1])), r"sum to 9.*10 rows"),
    "packed_input_rank": (lambda: call_packed(data=X), r"\binput\b.*2-D"),
    "packed_hx_batch": (lambda: call_packed(hx=torch.randn(2, H_)), r"\bhx\b.*\[3, 6\]"),
    "functional_rank": (lambda: dll_ext.functional.lstm_layer(X[0], None, W_IH, W_HH), r"\binput\b.*3-D"),
    "module_feature_size": (lambda: dll_ext.nn.LSTM(3, 6)(X), r"input.size\(-1\) must be equal to input_size"),
    "module_hx_shape": (lambda: dll_ext.nn.LSTM(4, 6)(X, (torch.randn(1, 2, 6), torch.randn(1, 2, 6))),
                        r"Expected hidden\[0\] size \(1, 3, 6\), got \[1, 2, 6\]"),
    "module_hx_rank": (lambda: dll_ext.nn.LSTM(4, 6)(X, (HX, CX)), r"hx and cx should also be 3-D"),
}


@pytest.mark.parametrize("call,match", list(BAD_INPUTS.values()), ids=list(BAD_INPUTS))
def test_bad_inputs(call, match):
    with pytest.raises(ARG_ERRORS, match=match):
        call()


@pytest.mark.parametrize("module", [dll_ext.nn.LSTM, torch.nn.LSTM], ids=["ours", "torch"])
def test_value_errors_as_in_torch_nn(module):
    with pytest.raises(ValueError, match=r"Expected input to be 2D or 3D"):
        module(4, 6)(X[None])
    with pytest.raises(ValueError, match=r"dropout"):
        module(4, 6, 2, dropout=1.5)


def test_backward_op_checks_saved_shapes():
    case = [t.detach() for t in make_layer_case(5, 3, 2, 4, True, torch.float32)]
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = case
    out, h, c, gates, cells = torch.ops.dll_ext._lstm_layer_forward(x, None, None, h0, c0, w_ih, w_hh, b_ih, b_hh, False)
    backward = torch.ops.dll_ext.lstm_layer_backward
    with pytest.raises(ARG_ERRORS, match=r"gates.*\[15, 16\].*\[14, 16\]"):
        backward(out, None, None, x, None, None, h0, c0, w_ih, w_hh, out, gates[:-1], cells, True, False)
    with pytest.raises(ARG_ERRORS, match=r"grad_output.*\[5, 3, 4\].*\[5, 3, 3\]"):
        backward(out[..., :3], None, None, x, None, None, h0, c0, w_ih, w_hh, out, gates, cells, True, False)
    with pytest.raises(ARG_ERRORS, match=r"grad_hy.*dtype Double"):
        backward(None, h.double(), None, x, None, None, h0, c0, w_ih, w_hh, out, gates, cells, True, False)



@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("lengths", [None, [5, 2, 4]], ids=["full", "lengths"])
def test_backward_op_reads_noncontiguous_workspace(device, lengths):
    # The workspace a caller hands back may have any strides: the same values in a transposed
    # layout give the same gradients.
    case = [t.detach() for t in make_layer_case(5, 3, 2, 4, True, torch.float64, device)]
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = case
    lens = None if lengths is None else torch.tensor(lengths)
    out, h, c, gates, cells = torch.ops.dll_ext._lstm_layer_forward(x, lens, None, h0, c0, w_ih, w_hh, b_ih, b_hh,
                                                                    False)
    grad = torch.randn_like(out)
    backward = torch.ops.dll_ext.lstm_layer_backward
    want = backward(grad, None, None, x, lens, None, h0, c0, w_ih, w_hh, out, gates, cells, True, False)
    strided = [t.t().contiguous().t() for t in (gates, cells)]
    assert not strided[0].is_contiguous() and not strided[1].is_contiguous()
    got = backward(grad, None, None, x, lens, None, h0, c0, w_ih, w_hh, out, *strided, True, False)
    for a, e in zip(got, want):
        assert (a is None and e is None) or torch.equal(a, e)

# ========================================================================================
# 9. Property tests: random lengths
# ========================================================================================


@st.composite
def layer_problems(draw):
    T = draw(st.integers(1, 7))
    B = draw(st.integers(1, 6))
    return dict(T=T, B=B, D=draw(st.integers(1, 5)), H=draw(st.integers(1, 6)),
                lengths=draw(st.lists(st.integers(1, T), min_size=B, max_size=B)),
                reverse=draw(st.booleans()), bias=draw(st.booleans()), seed=draw(st.integers(0, 2**31 - 1)))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(p=layer_problems())
def test_property_random_lengths_match_reference(p):
    torch.manual_seed(p["seed"])
    case = make_layer_case(p["T"], p["B"], p["D"], p["H"], p["bias"], torch.float64)
    check_against_reference(case, torch.tensor(p["lengths"]), p["reverse"], 1e-10)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(p=layer_problems(), bidirectional=st.booleans(), layers=st.integers(1, 2))
def test_property_packed_module_matches_nn_lstm(p, bidirectional, layers):
    torch.manual_seed(p["seed"])
    ours, native = twin_modules(p["D"], p["H"], layers, bias=p["bias"], bidirectional=bidirectional)
    packed = pack_padded_sequence(torch.randn(p["T"], p["B"], p["D"]), p["lengths"], enforce_sorted=False)
    got, expected = ours(packed), native(packed)
    torch.testing.assert_close(got[0].data, expected[0].data, **FP32)
    torch.testing.assert_close(got[1], expected[1], **FP32)


# ========================================================================================
# 10. CUDA
# ========================================================================================


@pytest.fixture
def no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("lengths", ["none", "unsorted"])
def test_cuda_layer_matches_reference(no_tf32, lengths, reverse):
    case = make_layer_case(9, 5, 6, 33, True, torch.float32, "cuda")
    check_against_reference(case, LENGTHS[lengths](9, 5), reverse, 2e-5)


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_cuda_low_precision_close_to_cudnn(dtype):
    # Low precision: the error against the float64 reference is at most twice cuDNN's in the
    # same dtype, plus a small epsilon.
    ours, native = twin_modules(16, 64, 2, bidirectional=True)
    ours, native = ours.cuda().to(dtype), native.cuda().to(dtype)
    ref = copy.deepcopy(native).double()
    x = torch.randn(20, 8, 16, device="cuda")
    expected = ref(x.double())[0]
    err, native_err = max_err(ours(x.to(dtype))[0], expected), max_err(native(x.to(dtype))[0], expected)
    assert err <= 2 * native_err + 1e-3, (err, native_err)


@pytest.mark.cuda
@requires_cuda
@pytest.mark.parametrize("kind", INPUT_KINDS)
def test_cuda_module_parity(no_tf32, kind):
    ours, native = twin_modules(5, 32, 2, bidirectional=True)
    ours, native = ours.cuda(), native.cuda()
    x = torch.randn(7, 4, 5, device="cuda")
    inp = x if kind == "padded" else pack_padded_sequence(x, [7, 5, 5, 2] if kind == "packed_sorted" else [3, 7, 1, 6],
                                                          enforce_sorted=kind == "packed_sorted")
    got, expected = ours(inp), native(inp)
    out, ref = (got[0], expected[0]) if kind == "padded" else (got[0].data, expected[0].data)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    (out.sum() + got[1][1].sum()).backward()
    (ref.sum() + expected[1][1].sum()).backward()
    assert_module_grads_close(ours, native, rtol=1e-4, atol=1e-4)


@pytest.mark.cuda
@requires_cuda
def test_cuda_lengths_must_be_on_cpu():
    case = make_layer_case(4, 2, 3, 4, True, torch.float32, "cuda")
    with pytest.raises(ARG_ERRORS, match=r"lengths must be a CPU tensor.*cuda"):
        layer_op()(*case, torch.tensor([4, 2], device="cuda"), False)


@pytest.mark.cuda
@requires_cuda
def test_cuda_opcheck_and_compile(fresh_dynamo):
    case = make_layer_case(5, 3, 2, 4, True, torch.float32, "cuda")
    torch.library.opcheck(layer_op(), (*case, torch.tensor([5, 1, 3]), True))
    m = dll_ext.nn.LSTM(2, 4, 2).cuda()
    x = torch.randn(5, 3, 2, device="cuda")
    torch.testing.assert_close(torch.compile(m, fullgraph=True)(x), m(x))
