"""conv2d_relu: the op, its functional form, Conv2dReLU and fuse_conv_relu.

Sections: parity grid vs a float64 reference, gradcheck, opcheck, torch.compile / export,
TorchScript, the Conv2dReLU drop-in, fuse_conv_relu, bad inputs, property tests, CUDA.
"""
import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dll_ext
from dll_ext.functional import conv2d_relu
from dll_ext.nn import Conv2dReLU, fuse_conv_relu
from dll_ext.ops import supported_dtypes

from conftest import (
    aot_graphs,
    DEVICES,
    LOW_PRECISION,
    assert_close_to,
    assert_low_precision_ok,
    check_relu_mask,
    grads_of,
    leaf,
    low_precision_eps,
    max_err,
    native,
    reference,
    reference_grads,
    reference_pre_activation,
    requires_cuda,
    with_layout,
)

# The dtypes the kernels take, from the op's C++ table.
CPU_DTYPES = supported_dtypes("conv2d_relu", "cpu")
CUDA_DTYPES = supported_dtypes("conv2d_relu", "cuda")

op = torch.ops.dll_ext.conv2d_relu
backward_op = torch.ops.dll_ext.conv2d_relu_backward


def strictly_channels_last(t):
    return not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


# ========================================================================================
# 1. Parity with the float64 reference over a grid
# ========================================================================================

# (N, C_in, H, W, C_out, kernel, stride, padding, dilation, groups)
CONFIGS = {
    "basic": (2, 4, 9, 9, 6, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    "rect_strided": (2, 3, 10, 7, 5, (3, 2), (2, 1), (0, 1), (1, 1), 1),
    "dilated": (1, 4, 11, 11, 4, (3, 3), (1, 1), (2, 2), (2, 2), 1),
    "grouped": (2, 6, 8, 9, 6, (3, 3), (1, 2), (1, 1), (1, 2), 3),
    "depthwise": (2, 8, 8, 8, 8, (3, 3), (1, 1), (1, 1), (1, 1), 8),
    "depthwise_multiplier": (2, 4, 9, 7, 8, (5, 3), (2, 2), (2, 1), (1, 1), 4),
    "pointwise": (3, 5, 6, 6, 7, (1, 1), (1, 1), (0, 0), (1, 1), 1),
    "output_1x1": (2, 3, 3, 3, 4, (3, 3), (1, 1), (0, 0), (1, 1), 1),
    "mixed": (2, 4, 13, 9, 6, (2, 3), (3, 2), (1, 0), (2, 1), 2),
}

# (input layout, weight layout)
LAYOUT_PAIRS = [
    ("contiguous", "contiguous"),
    ("channels_last", "contiguous"),
    ("contiguous", "channels_last"),
    ("channels_last", "channels_last"),
    ("sliced", "transposed"),
    ("transposed", "sliced"),
]


def make_case(config, bias, dtype, device, layouts=("contiguous", "contiguous")):
    """Inputs for a config, drawn in float64 and rounded to dtype (so the float64 reference
    sees exactly the values the kernel sees), in the requested layouts."""
    n, cin, h, w, cout, kernel, stride, padding, dilation, groups = config
    fan_in = cin // groups * kernel[0] * kernel[1]
    x = torch.randn(n, cin, h, w, dtype=torch.float64)
    weight = torch.randn(cout, cin // groups, *kernel, dtype=torch.float64) / math.sqrt(fan_in)
    b = torch.randn(cout, dtype=torch.float64) * 0.5 if bias else None
    x = with_layout(x.to(device, dtype), layouts[0])
    weight = with_layout(weight.to(device, dtype), layouts[1])
    b = None if b is None else b.to(device, dtype)
    return x, weight, b, (list(stride), list(padding), list(dilation), groups)


def check_parity(config, bias, dtype, device, layouts):
    x, w, b, conv_args = make_case(config, bias, dtype, device, layouts)
    xl, wl = leaf(x), leaf(w)
    bl = None if b is None else leaf(b)
    out = op(xl, wl, bl, *conv_args)

    ref = reference(x, w, b, *conv_args)
    assert out.shape == ref.shape and out.dtype == dtype and out.device.type == device
    cl = strictly_channels_last(x) or strictly_channels_last(w)
    fmt = torch.channels_last if cl else torch.contiguous_format
    assert out.is_contiguous(memory_format=fmt), f"output strides {out.stride()}, expected {fmt}"

    grad_out = torch.randn(out.shape, dtype=torch.float64).to(device, dtype)
    grads = grads_of(out, [xl, wl, bl], grad_out)
    for name, g, t in zip(("input", "weight", "bias"), grads, (x, w, b)):
        if t is not None:
            assert g.shape == t.shape and g.dtype == dtype, name

    if dtype not in LOW_PRECISION:
        assert_close_to(out, ref, dtype, "output")
        for name, g, rg in zip(("input", "weight", "bias"), grads, reference_grads(x, w, b, conv_args, grad_out)):
            if rg is not None:
                assert_close_to(g, rg, dtype, f"grad_{name}")
        return

    # Low precision: the same math done natively in this dtype sets the error budget.
    xn, wn = leaf(x), leaf(w)
    bn = None if b is None else leaf(b)
    nat = native(xn, wn, bn, *conv_args)
    assert_low_precision_ok(out, ref, nat, what="output")
    tol = 2 * max_err(nat, ref) + low_precision_eps(ref)
    mask = check_relu_mask(out, reference_pre_activation(x, w, b, *conv_args), tol)
    nat_grads = grads_of(nat, [xn, wn, bn], grad_out)
    ref_grads = reference_grads(x, w, b, conv_args, grad_out, mask=mask)
    ref_grads_nat = reference_grads(x, w, b, conv_args, grad_out, mask=nat.detach() > 0)
    for name, g, rg, ng, rgn in zip(("input", "weight", "bias"), grads, ref_grads, nat_grads, ref_grads_nat):
        if rg is not None:
            assert_low_precision_ok(g, rg, ng, rgn, what=f"grad_{name}")


@pytest.mark.parametrize("layouts", LAYOUT_PAIRS, ids=["-".join(p) for p in LAYOUT_PAIRS])
@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("config", list(CONFIGS.values()), ids=list(CONFIGS))
def test_parity_cpu(config, bias, dtype, layouts):
    check_parity(config, bias, dtype, "cpu", layouts)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_large_batch_bias_grad_cpu(dtype, layout):
    # The CPU bias-gradient reduction has an NCHW path (per-channel tasks) and a
    # channels-last path (row blocks summed in order); both over many rows here.
    config = (64, 3, 12, 12, 5, (3, 3), (1, 1), (1, 1), (1, 1), 1)
    check_parity(config, True, dtype, "cpu", (layout, "contiguous"))


def test_functional_matches_op_and_reference():
    x, w, b, _ = make_case(CONFIGS["basic"], True, torch.float32, "cpu")
    out = conv2d_relu(x, w, b, stride=2, padding=(1, 0), dilation=(1, 2))
    assert torch.equal(out, op(x, w, b, [2, 2], [1, 0], [1, 2], 1))
    assert_close_to(out, reference(x, w, b, 2, (1, 0), (1, 2)), torch.float32)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize("kernel,dilation", [((3, 3), 1), ((4, 4), 1), ((2, 3), (3, 2)), ((4, 2), 2)])
@pytest.mark.parametrize("padding", ["same", "valid"])
def test_functional_string_padding(kernel, dilation, padding):
    x = torch.randn(2, 3, 9, 8)
    w = torch.randn(4, 3, *kernel) / 3
    b = torch.randn(4)
    out = conv2d_relu(x, w, b, padding=padding, dilation=dilation)
    ref = reference(x, w, b, 1, padding, dilation)
    if padding == "same":
        assert out.shape[2:] == x.shape[2:]
    assert_close_to(out, ref, torch.float32)


def test_functional_unbatched_input_and_grads():
    x = torch.randn(3, 8, 7, requires_grad=True)
    w = torch.randn(5, 3, 4, 3, requires_grad=True)
    b = torch.randn(5, requires_grad=True)
    out = conv2d_relu(x, w, b, padding="same", dilation=(1, 2))
    ref_out = F.relu(F.conv2d(x, w, b, padding="same", dilation=(1, 2)))
    assert out.shape == ref_out.shape == (5, 8, 7)
    torch.testing.assert_close(out, ref_out)
    g = torch.randn_like(out)
    for got, want in zip(grads_of(out, [x, w, b], g), grads_of(ref_out, [x, w, b], g)):
        torch.testing.assert_close(got, want)


def test_functional_int_like_arguments():
    x, w, b, _ = make_case(CONFIGS["basic"], True, torch.float32, "cpu")
    expected = op(x, w, b, [2, 1], [1, 1], [1, 1], 1)
    assert torch.equal(conv2d_relu(x, w, b, stride=(2, 1), padding=[1]), expected)
    assert torch.equal(conv2d_relu(x, w, b, stride=torch.Size([2, 1]), padding=torch.tensor(1)), expected)


# ========================================================================================
# 2. gradcheck (float64)
# ========================================================================================

GRADCHECK_CONFIGS = {
    "basic": (2, 3, 6, 5, 4, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    "strided_dilated_grouped": (1, 4, 7, 8, 4, (3, 2), (2, 1), (1, 0), (2, 1), 2),
    "depthwise": (2, 3, 5, 5, 3, (3, 3), (1, 2), (1, 1), (1, 1), 3),
}


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("config", list(GRADCHECK_CONFIGS.values()), ids=list(GRADCHECK_CONFIGS))
def test_gradcheck(config, bias, layout):
    x, w, b, conv_args = make_case(config, bias, torch.float64, "cpu", (layout, layout))
    inputs = (leaf(x), leaf(w)) + (() if b is None else (leaf(b),))

    def fn(x, w, b=None):
        return op(x, w, b, *conv_args)

    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("wanted", ["input", "weight", "bias", "input+bias", "weight+bias", "input+weight"])
def test_gradcheck_some_inputs_require_grad(wanted):
    x, w, b, conv_args = make_case(GRADCHECK_CONFIGS["strided_dilated_grouped"], True, torch.float64, "cpu")
    names = wanted.split("+")
    x, w, b = (leaf(t, name in names) for t, name in zip((x, w, b), ("input", "weight", "bias")))

    def fn(x, w, b):
        return op(x, w, b, *conv_args)

    assert torch.autograd.gradcheck(fn, (x, w, b))
    # Gradients that were not asked for are not produced.
    op(x, w, b, *conv_args).sum().backward()
    for t, name in zip((x, w, b), ("input", "weight", "bias")):
        assert (t.grad is not None) == (name in names), name


def test_gradcheck_functional_same_padding_unbatched():
    x = torch.randn(2, 6, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 2, 2, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: conv2d_relu(x, w, b, padding="same", dilation=(3, 1)), (x, w, b))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_gradgradcheck(layout):
    x, w, b, conv_args = make_case(GRADCHECK_CONFIGS["strided_dilated_grouped"], True, torch.float64, "cpu",
                                   (layout, "contiguous"))
    assert torch.autograd.gradgradcheck(lambda x, w, b: op(x, w, b, *conv_args), (leaf(x), leaf(w), leaf(b)))


def test_double_backward_gradient_penalty_matches_native():
    # A gradient penalty differentiates the input gradient again, with grad_output depending
    # on the parameters: the backward op must be differentiable in all its inputs.
    x, w, b, conv_args = make_case(CONFIGS["grouped"], True, torch.float64, "cpu")

    def penalty(fn):
        xl, wl, bl = leaf(x), leaf(w), leaf(b)
        y = fn(xl, wl, bl)
        (gx,) = torch.autograd.grad(y.square().sum(), xl, create_graph=True)
        return torch.autograd.grad(gx.square().sum(), [wl, bl])

    got = penalty(lambda x, w, b: op(x, w, b, *conv_args))
    want = penalty(lambda x, w, b: native(x, w, b, *conv_args))
    for g, e in zip(got, want):
        torch.testing.assert_close(g, e)


@pytest.mark.parametrize("mask", [(True, True, True), (True, False, False), (False, True, False), (False, False, True)])
def test_backward_op_output_mask(mask):
    x, w, b, conv_args = make_case(CONFIGS["grouped"], True, torch.float64, "cpu")
    out = op(x, w, b, *conv_args)
    g = torch.randn_like(out)
    got = backward_op(g, out, x, w, *conv_args, list(mask))
    want = reference_grads(x, w, b, conv_args, g)
    for requested, gi, wi in zip(mask, got, want):
        if requested:
            assert_close_to(gi, wi, torch.float64)
        else:
            assert gi is None


# ========================================================================================
# 3. torch.library.opcheck
# ========================================================================================


def opcheck_args(config, bias, layouts=("contiguous", "contiguous"), requires_grad=True, dtype=torch.float64):
    x, w, b, conv_args = make_case(config, bias, dtype, "cpu", layouts)
    x, w = leaf(x, requires_grad), leaf(w, requires_grad)
    b = None if b is None else leaf(b, requires_grad)
    return (x, w, b, *conv_args)


OPCHECK_CASES = {
    "bias": lambda: opcheck_args(CONFIGS["basic"], True),
    "no_bias_strided_dilated": lambda: opcheck_args(CONFIGS["mixed"], False),
    "channels_last_input_grouped": lambda: opcheck_args(CONFIGS["grouped"], True, ("channels_last", "contiguous")),
    "channels_last_both_no_bias": lambda: opcheck_args(CONFIGS["rect_strided"], False, ("channels_last", "channels_last")),
    "depthwise_float32_no_grad": lambda: opcheck_args(CONFIGS["depthwise"], True, requires_grad=False, dtype=torch.float32),
    "bfloat16_sliced": lambda: opcheck_args(CONFIGS["pointwise"], True, ("sliced", "transposed"), dtype=torch.bfloat16),
}


@pytest.mark.parametrize("case", list(OPCHECK_CASES.values()), ids=list(OPCHECK_CASES))
def test_opcheck_forward(case):
    torch.library.opcheck(op, case())


def backward_args(config, layouts, mask=(True, True, True), requires_grad=False):
    x, w, b, conv_args = make_case(config, True, torch.float64, "cpu", layouts)
    out = op(x, w, b, *conv_args)
    g = torch.randn_like(out)
    return (leaf(g, requires_grad), out, leaf(x, requires_grad), leaf(w, requires_grad), *conv_args, list(mask))


@pytest.mark.parametrize(
    "config,layouts,mask",
    [
        (CONFIGS["basic"], ("contiguous", "contiguous"), (True, True, True)),
        (CONFIGS["grouped"], ("channels_last", "contiguous"), (True, True, True)),
        (CONFIGS["mixed"], ("contiguous", "channels_last"), (True, True, True)),
        (CONFIGS["basic"], ("channels_last", "contiguous"), (False, True, True)),
    ],
    ids=["contiguous", "channels_last_input", "channels_last_weight", "partial_mask"],
)
def test_opcheck_backward(config, layouts, mask):
    torch.library.opcheck(backward_op, backward_args(config, layouts, mask))


def test_opcheck_backward_with_inputs_requiring_grad():
    # The backward op has an autograd kernel of its own (double backward), so every opcheck
    # test applies to it too, test_autograd_registration included.
    args = backward_args(CONFIGS["basic"], ("contiguous", "contiguous"), requires_grad=True)
    torch.library.opcheck(backward_op, args)


# ========================================================================================
# 4. torch.compile and torch.export
# ========================================================================================


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def op_nodes(gm):
    return [n for n in gm.graph.nodes if "dll_ext" in str(n.target) and "conv2d_relu" in str(n.target)]


def test_compile_function_fullgraph(fresh_dynamo):
    def fn(x, w, b):
        y = conv2d_relu(x, w, b, stride=2, padding=1)
        return (y * y).sum(dim=1) + 1

    captured = []

    def recording_backend(gm, example_inputs):
        captured.append(gm)
        return gm.forward

    x, w, b, _ = make_case(CONFIGS["basic"], True, torch.float32, "cpu")
    torch.compile(fn, fullgraph=True, backend=recording_backend)(x, w, b)
    assert len(captured) == 1 and len(op_nodes(captured[0])) == 1, "the op must be one node of one graph"

    # Through AOTAutograd, the backward graph runs the fused backward op.
    xa, wa, ba = leaf(x), leaf(w), leaf(b)
    graphs = aot_graphs(fn, xa, wa, ba)
    assert [str(n.target) for n in op_nodes(graphs["forward"])] == ["dll_ext.conv2d_relu.default"]
    assert [str(n.target) for n in op_nodes(graphs["backward"])] == ["dll_ext.conv2d_relu_backward.default"]

    torch._dynamo.reset()
    compiled = torch.compile(fn, fullgraph=True)
    xc, wc, bc = leaf(x), leaf(w), leaf(b)
    xe, we, be = leaf(x), leaf(w), leaf(b)
    got, want = compiled(xc, wc, bc), fn(xe, we, be)
    torch.testing.assert_close(got, want)
    g = torch.randn_like(want)
    for a, e in zip(grads_of(got, [xc, wc, bc], g), grads_of(want, [xe, we, be], g)):
        torch.testing.assert_close(a, e)


def small_model():
    return nn.Sequential(
        Conv2dReLU(3, 8, 3, padding=1),
        Conv2dReLU(8, 8, 4, padding="same", padding_mode="reflect", groups=2),
        Conv2dReLU(8, 6, 3, stride=2, bias=False),
    )


def test_compile_model_fullgraph(fresh_dynamo):
    model = small_model()
    compiled = torch.compile(copy.deepcopy(model), fullgraph=True)
    x = torch.randn(2, 3, 12, 11)
    xe, xc = leaf(x), leaf(x)
    want, got = model(xe), compiled(xc)
    torch.testing.assert_close(got, want)
    g = torch.randn_like(want)
    want.backward(g)
    got.backward(g)
    torch.testing.assert_close(xc.grad, xe.grad)
    compiled_params = dict(compiled.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(compiled_params["_orig_mod." + name].grad, p.grad, msg=name)


def test_compile_channels_last_and_dynamic_batch(fresh_dynamo):
    def fn(x, w, b):
        return conv2d_relu(x, w, b, padding=1)

    compiled = torch.compile(fn, fullgraph=True, dynamic=True, backend="aot_eager")
    for n in (2, 3):
        config = (n,) + CONFIGS["basic"][1:]
        x, w, b, _ = make_case(config, True, torch.float32, "cpu", ("channels_last", "contiguous"))
        got = compiled(x, w, b)
        assert got.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(got, fn(x, w, b))


def test_export_conv2d_relu_model():
    model = small_model().eval()
    x = torch.randn(2, 3, 12, 11)
    exported = torch.export.export(model, (x,))
    assert len(op_nodes(exported.graph_module)) == 3
    torch.testing.assert_close(exported.module()(x), model(x))


def test_export_dynamic_batch():
    model = Conv2dReLU(3, 5, 3, padding=1).eval()
    batch = torch.export.Dim("batch")
    exported = torch.export.export(model, (torch.randn(2, 3, 8, 8),), dynamic_shapes=({0: batch},))
    x = torch.randn(5, 3, 8, 8)
    torch.testing.assert_close(exported.module()(x), model(x))


# ========================================================================================
# 5. TorchScript
# ========================================================================================

SCRIPT_MODULES = {
    "plain": lambda: Conv2dReLU(3, 6, 3, padding=1),
    "same_even_kernel": lambda: Conv2dReLU(3, 6, 4, padding="same", dilation=(1, 2)),
    "reflect_no_bias": lambda: Conv2dReLU(3, 6, 3, padding=1, padding_mode="reflect", bias=False),
    "sequential": lambda: nn.Sequential(
        Conv2dReLU(3, 6, 3, padding=1), Conv2dReLU(6, 6, 3, groups=3, stride=2), Conv2dReLU(6, 4, 1)
    ),
}


@pytest.mark.parametrize("make", list(SCRIPT_MODULES.values()), ids=list(SCRIPT_MODULES))
def test_torchscript_script_and_save_load(make, tmp_path):
    module = make()
    scripted = torch.jit.script(module)
    x = torch.randn(2, 3, 10, 9)
    want = module(x)
    torch.testing.assert_close(scripted(x), want, rtol=0, atol=0)
    torch.testing.assert_close(scripted(x[0]), module(x[0]), rtol=0, atol=0)  # unbatched

    path = tmp_path / "module.pt"
    torch.jit.save(scripted, str(path))
    loaded = torch.jit.load(str(path))
    torch.testing.assert_close(loaded(x), want, rtol=0, atol=0)

    # Autograd is registered in C++, so scripted and loaded modules are differentiable.
    xl = leaf(x)
    loaded(xl).sum().backward()
    xe = leaf(x)
    module(xe).sum().backward()
    torch.testing.assert_close(xl.grad, xe.grad)


# ========================================================================================
# 6. Conv2dReLU as a drop-in for nn.Conv2d + ReLU
# ========================================================================================

MODULE_CASES = {
    "int_padding": dict(in_channels=4, out_channels=6, kernel_size=3, padding=1),
    "tuple_padding_stride": dict(in_channels=4, out_channels=6, kernel_size=(3, 5), padding=(1, 2), stride=(2, 1)),
    "same_odd": dict(in_channels=4, out_channels=6, kernel_size=3, padding="same"),
    "same_even": dict(in_channels=4, out_channels=6, kernel_size=4, padding="same"),
    "same_even_dilated_asym": dict(in_channels=4, out_channels=6, kernel_size=(2, 3), padding="same", dilation=(3, 2)),
    "same_even_dilated": dict(in_channels=4, out_channels=6, kernel_size=4, padding="same", dilation=2),
    "valid": dict(in_channels=4, out_channels=6, kernel_size=3, padding="valid", stride=2),
    "reflect": dict(in_channels=4, out_channels=6, kernel_size=3, padding=1, padding_mode="reflect"),
    "replicate": dict(in_channels=4, out_channels=6, kernel_size=3, padding=(2, 1), padding_mode="replicate"),
    "circular_strided": dict(in_channels=4, out_channels=6, kernel_size=3, padding=1, padding_mode="circular", stride=2),
    "reflect_same_even": dict(in_channels=4, out_channels=6, kernel_size=4, padding="same", padding_mode="reflect"),
    "circular_same_dilated": dict(
        in_channels=4, out_channels=6, kernel_size=3, padding="same", padding_mode="circular", dilation=2
    ),
    "replicate_same_even_dilated": dict(
        in_channels=4, out_channels=6, kernel_size=(2, 4), padding="same", padding_mode="replicate", dilation=(3, 1)
    ),
    "no_bias": dict(in_channels=4, out_channels=6, kernel_size=3, padding=1, bias=False),
    "groups": dict(in_channels=6, out_channels=9, kernel_size=3, padding=1, groups=3),
    "depthwise_dilated": dict(in_channels=4, out_channels=4, kernel_size=3, padding=2, dilation=2, groups=4),
}


@pytest.mark.parametrize("kwargs", list(MODULE_CASES.values()), ids=list(MODULE_CASES))
def test_conv2d_relu_module_is_drop_in(kwargs):
    conv = nn.Conv2d(**kwargs)
    fused = Conv2dReLU(**kwargs)
    assert isinstance(fused, nn.Conv2d)
    # nn.Conv2d's state_dict loads into Conv2dReLU and back, with identical keys.
    assert list(fused.state_dict()) == list(conv.state_dict())
    fused.load_state_dict(conv.state_dict())
    back = nn.Conv2d(**kwargs)
    back.load_state_dict(fused.state_dict())
    for name, p in conv.named_parameters():
        assert torch.equal(getattr(back, name), p)

    for shape in [(2, kwargs["in_channels"], 11, 10), (kwargs["in_channels"], 9, 8)]:  # batched, unbatched
        x = torch.randn(shape)
        xf, xn = leaf(x), leaf(x)
        got, want = fused(xf), F.relu(conv(xn))
        assert got.shape == want.shape
        torch.testing.assert_close(got, want)
        g = torch.randn_like(want)
        got.backward(g)
        want.backward(g)
        torch.testing.assert_close(xf.grad, xn.grad)
        for name, p in conv.named_parameters():
            torch.testing.assert_close(getattr(fused, name).grad, p.grad, msg=name)
        fused.zero_grad()
        conv.zero_grad()


def test_from_conv_copies():
    conv = nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2,
                     padding_mode="replicate", dtype=torch.float64).eval()
    fused = Conv2dReLU.from_conv(conv)
    assert type(fused) is Conv2dReLU and not fused.training
    assert fused.weight.dtype == torch.float64
    for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups", "padding_mode"):
        assert getattr(fused, attr) == getattr(conv, attr), attr
    assert torch.equal(fused.weight, conv.weight) and torch.equal(fused.bias, conv.bias)
    # A copy: its parameters are its own.
    assert fused.weight.data_ptr() != conv.weight.data_ptr()
    with torch.no_grad():
        conv.weight.add_(1)
    assert not torch.equal(fused.weight, conv.weight)
    x = torch.randn(2, 4, 9, 8, dtype=torch.float64)
    with torch.no_grad():
        conv.weight.sub_(1)
    torch.testing.assert_close(fused(x), F.relu(conv(x)))


def test_from_conv_same_padding_and_no_bias():
    conv = nn.Conv2d(3, 5, 4, padding="same", bias=False)
    fused = Conv2dReLU.from_conv(conv)
    assert fused.bias is None
    x = torch.randn(2, 3, 7, 6)
    torch.testing.assert_close(fused(x), F.relu(conv(x)))


def test_from_conv_keeps_frozen_parameters_frozen():
    conv = nn.Conv2d(3, 5, 3)
    conv.weight.requires_grad_(False)
    fused = Conv2dReLU.from_conv(conv)
    assert not fused.weight.requires_grad
    assert fused.bias.requires_grad


# ========================================================================================
# 7. fuse_conv_relu
# ========================================================================================


def test_fuse_sequential():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding="same", padding_mode="reflect"), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    ).eval()
    original_types = [type(m) for m in model]
    fused = fuse_conv_relu(model)
    assert [type(m) for m in model] == original_types, "inplace=False must leave the model untouched"
    assert type(fused[0]) is Conv2dReLU and type(fused[1]) is nn.Identity
    assert type(fused[2]) is nn.Conv2d, "conv followed by BatchNorm is not fused"
    assert type(fused[5]) is Conv2dReLU and type(fused[6]) is nn.Identity
    assert list(fused.state_dict()) == list(model.state_dict())
    assert fused[0].weight.data_ptr() != model[0].weight.data_ptr(), "inplace=False must copy"
    x = torch.randn(2, 3, 9, 9)
    torch.testing.assert_close(fused(x), model(x))
    # The fused model trains as the original: same gradients.
    model.train()
    fused.train()
    x1, x2 = leaf(x), leaf(x)
    model(x1).sum().backward()
    fused(x2).sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad)
    fused_params = dict(fused.named_parameters())
    for name, p in model.named_parameters():
        torch.testing.assert_close(fused_params[name].grad, p.grad, msg=name)


def test_fuse_inplace_keeps_parameter_objects():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    weight = model[0].weight
    model[0].bias.requires_grad_(False)
    fused = fuse_conv_relu(model, inplace=True)
    assert fused is model and type(model[0]) is Conv2dReLU
    # Optimizers built over the model keep pointing at the live parameters.
    assert model[0].weight is weight
    assert not model[0].bias.requires_grad


def test_fuse_nested_sequentials():
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU(), nn.Sequential(nn.Conv2d(4, 2, 3), nn.ReLU())),
    )
    fused = fuse_conv_relu(model)
    assert type(fused[0][0]) is Conv2dReLU and type(fused[0][1]) is nn.Identity
    assert type(fused[1][0]) is Conv2dReLU and type(fused[1][2][0]) is Conv2dReLU
    assert list(fused.state_dict()) == list(model.state_dict())
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(fused(x), model(x))


def test_fuse_shared_conv_keeps_parameters_tied():
    conv = nn.Conv2d(4, 4, 3, padding=1)
    model = nn.Sequential(conv, nn.ReLU(), conv, nn.ReLU())
    fused = fuse_conv_relu(model)
    assert type(fused[0]) is Conv2dReLU and type(fused[2]) is Conv2dReLU
    assert fused[0].weight is fused[2].weight, "a conv shared by two slots must keep one weight"
    assert len(list(fused.parameters())) == len(list(model.parameters())) == 2
    x = torch.randn(2, 4, 6, 6)
    torch.testing.assert_close(fused(x), model(x))


def test_fuse_sequential_subclass_with_own_forward_is_left_alone():
    class Residual(nn.Sequential):
        def forward(self, x):
            return self[0](x) + self[1](x)

    class Block(nn.Sequential):  # Sequential's own forward: fused as any Sequential
        pass

    model = nn.Sequential(Residual(nn.Conv2d(3, 3, 3, padding=1), nn.ReLU()), Block(nn.Conv2d(3, 3, 1), nn.ReLU()))
    fused = fuse_conv_relu(model)
    assert type(fused[1][0]) is Conv2dReLU
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(fused(x), model(x))


class FxModel(nn.Module):
    """Every flavour of ReLU after a conv, plus an unused module and a buffer."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.c3 = nn.Conv2d(8, 8, 1)
        self.c4 = nn.Conv2d(8, 8, 3, padding="same", padding_mode="circular")
        self.c5 = nn.Conv2d(8, 8, 3, padding=1)
        self.c6 = nn.Conv2d(8, 8, 3, padding=1)
        self.block = nn.Module()
        self.block.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.head = nn.Linear(8, 2)  # not used by forward: must stay in the state_dict
        self.register_buffer("scale", torch.tensor(0.5))

    def forward(self, x):
        x = F.relu(self.c1(x))
        x = torch.relu(self.c2(x))
        x = self.c3(x).relu()
        x = self.c4(x).relu_()
        x = self.act(self.c5(x))
        x = F.relu(self.c6(x), inplace=True)
        x = torch.relu_(self.block.conv(x))
        return x * self.scale


def test_fuse_fx_all_relu_flavours():
    model = FxModel().eval()
    fused = fuse_conv_relu(model)
    assert all(type(m) is nn.Conv2d for m in (model.c1, model.block.conv)), "inplace=False: model untouched"
    for name in ("c1", "c2", "c3", "c4", "c5", "c6"):
        assert type(getattr(fused, name)) is Conv2dReLU, name
    assert type(fused.block.conv) is Conv2dReLU
    assert list(fused.state_dict()) == list(model.state_dict())
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(fused(x), model(x))
    fused.load_state_dict(model.state_dict())  # a checkpoint of the original loads strictly


class OtherUser(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return F.relu(y) + y


class CalledTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return F.relu(self.conv(self.conv(x)))


class FollowedByOther(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        return F.leaky_relu(self.conv2(x)) + torch.sigmoid(x)


class Relu6After(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.act = nn.ReLU6()

    def forward(self, x):
        return self.act(self.conv(x))


@pytest.mark.parametrize("cls", [OtherUser, CalledTwice, FollowedByOther, Relu6After])
def test_fuse_fx_leaves_non_fusable_convs(cls):
    model = cls().eval()
    fused = fuse_conv_relu(model)
    assert not any(isinstance(m, Conv2dReLU) for m in fused.modules())
    x = torch.randn(2, 3, 7, 7)
    torch.testing.assert_close(fused(x), model(x))


class Untraceable(nn.Module):
    def __init__(self, length_check=False):
        super().__init__()
        self.length_check = length_check
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        x = self.stem(x)
        if self.length_check and len(x) > 1:
            x = x * 2
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace this
            return F.relu(self.conv(x))
        return -x


@pytest.mark.parametrize("length_check", [False, True], ids=["data_dependent_if", "len_of_tensor"])
def test_fuse_untraceable_model_keeps_sequential_fusion(length_check):
    model = Untraceable(length_check).eval()
    fused = fuse_conv_relu(model)
    assert type(fused) is Untraceable
    assert type(fused.stem[0]) is Conv2dReLU and type(fused.stem[1]) is nn.Identity
    assert type(fused.conv) is nn.Conv2d
    assert type(model.stem[0]) is nn.Conv2d
    for sign in (1, -1):
        x = sign * torch.rand(2, 3, 6, 6)
        torch.testing.assert_close(fused(x), model(x))


def test_fuse_fx_keeps_module_tree():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1), nn.Dropout())
            self.conv = nn.Conv2d(4, 4, 1)

        def forward(self, x):
            return F.relu(self.conv(self.features[2](self.features[0](x))))

    model = Net().eval()
    fused = fuse_conv_relu(model)
    assert type(fused.conv) is Conv2dReLU
    assert isinstance(fused.features, nn.Sequential) and len(fused.features) == 4
    assert list(fused.state_dict()) == list(model.state_dict())
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(fused(x), model(x))


# ========================================================================================
# 8. Bad inputs
# ========================================================================================

X = torch.randn(2, 4, 8, 8)
W = torch.randn(6, 4, 3, 3)
B = torch.randn(6)

BAD_INPUTS = {
    "input_rank_3_op": (lambda: op(X[0], W, B, [1, 1], [0, 0], [1, 1], 1), RuntimeError,
                        r"input must be a 4-D tensor \(N, C_in, H, W\), but got a 3-D tensor of shape \[4, 8, 8\]"),
    "input_rank_5": (lambda: conv2d_relu(X[None], W, B), RuntimeError, r"input must be a 4-D tensor .* 5-D"),
    "input_rank_2": (lambda: conv2d_relu(X[0, 0], W, B), RuntimeError, r"input must be a 4-D tensor .* 2-D"),
    "weight_rank_3": (lambda: conv2d_relu(X, W[0], B), RuntimeError,
                      r"weight must be a 4-D tensor \(C_out, C_in / groups, kH, kW\), but got a 3-D"),
    "weight_rank_3_same": (lambda: conv2d_relu(X, W[0], B, padding="same"), RuntimeError, r"weight must be a 4-D tensor"),
    "dtype_input_weight": (lambda: conv2d_relu(X, W.double(), B), RuntimeError,
                           r"weight has dtype Double but input has dtype Float"),
    "dtype_input_bias": (lambda: conv2d_relu(X, W, B.double()), RuntimeError, r"bias has dtype Double but input has dtype Float"),
    "bias_size": (lambda: conv2d_relu(X, W, torch.randn(5)), RuntimeError, r"bias must have 6 entries .*but got 5"),
    "bias_rank": (lambda: conv2d_relu(X, W, torch.randn(6, 1)), RuntimeError, r"bias must be a 1-D tensor .*2-D"),
    "channels_not_divisible_by_groups": (lambda: conv2d_relu(torch.randn(2, 5, 8, 8), torch.randn(6, 1, 3, 3), groups=2),
                                         RuntimeError, r"input channels \(5\) must be divisible by groups \(2\)"),
    "out_channels_not_divisible_by_groups": (lambda: conv2d_relu(X, torch.randn(5, 2, 3, 3), groups=2), RuntimeError,
                                             r"out channels \(5\) must be divisible by groups \(2\)"),
    "weight_size1": (lambda: conv2d_relu(X, torch.randn(6, 3, 3, 3)), RuntimeError,
                     r"weight.size\(1\) must be input channels / groups = 4 / 1 = 4, but got weight of shape \[6, 3, 3, 3\]"),
    "weight_size1_grouped": (lambda: conv2d_relu(X, W, groups=2), RuntimeError, r"weight.size\(1\) must be .* = 4 / 2 = 2"),
    "empty_batch": (lambda: conv2d_relu(X[:0], W), RuntimeError, r"empty batch \(N = 0\)"),
    "zero_channels": (lambda: conv2d_relu(torch.randn(2, 0, 8, 8), torch.randn(6, 0, 3, 3)), RuntimeError,
                      r"input has no channels \(C_in = 0\)"),
    "zero_out_channels": (lambda: conv2d_relu(X, torch.randn(0, 4, 3, 3)), RuntimeError, r"weight must have non-zero sizes"),
    "negative_padding": (lambda: conv2d_relu(X, W, padding=-1), RuntimeError, r"padding entries must be >= 0, but got \[-1, -1\]"),
    "negative_padding_op": (lambda: op(X, W, B, [1, 1], [0, -2], [1, 1], 1), RuntimeError,
                            r"padding entries must be >= 0, but got \[0, -2\]"),
    "zero_stride": (lambda: conv2d_relu(X, W, stride=0), RuntimeError, r"stride entries must be >= 1, but got \[0, 0\]"),
    "negative_stride": (lambda: conv2d_relu(X, W, stride=(1, -1)), RuntimeError, r"stride entries must be >= 1, but got \[1, -1\]"),
    "zero_dilation": (lambda: conv2d_relu(X, W, dilation=0), RuntimeError, r"dilation entries must be >= 1, but got \[0, 0\]"),
    "groups_0": (lambda: conv2d_relu(X, W, groups=0), RuntimeError, r"groups must be >= 1, but got 0"),
    "groups_negative": (lambda: conv2d_relu(X, W, groups=-2), RuntimeError, r"groups must be >= 1, but got -2"),
    "stride_length_3": (lambda: conv2d_relu(X, W, stride=[1, 1, 1]), RuntimeError,
                        r"stride must be an int or a pair of ints, but got \[1, 1, 1\]"),
    "stride_length_3_op": (lambda: op(X, W, B, [1, 1, 1], [0, 0], [1, 1], 1), RuntimeError,
                           r"stride must have 2 entries, but got \[1, 1, 1\]"),
    "dilation_length_0": (lambda: conv2d_relu(X, W, dilation=[]), RuntimeError, r"dilation must be an int or a pair of ints"),
    "float_padding": (lambda: conv2d_relu(X, W, padding=1.5), TypeError, r"padding must be an int or a pair of ints, but got 1.5"),
    "float_in_stride_tuple": (lambda: conv2d_relu(X, W, stride=(2.0, 1)), TypeError, r"stride must be an int or a pair of ints"),
    "bool_stride": (lambda: conv2d_relu(X, W, stride=True), TypeError, r"stride must be an int or a pair of ints, but got True"),
    "kernel_larger_than_input": (lambda: conv2d_relu(X, torch.randn(6, 4, 11, 3)), RuntimeError,
                                 r"padded input height \(8\) is smaller than the dilated kernel \(11\)"),
    "dilated_kernel_larger_than_padded_input": (lambda: conv2d_relu(X, W, padding=(0, 1), dilation=(1, 5)), RuntimeError,
                                                r"padded input width \(10\) is smaller than the dilated kernel \(11\)"),
    "int64": (lambda: conv2d_relu(X.long(), W.long()), RuntimeError,
              r"input dtype Long is not supported on cpu; supported: float32, float64, bfloat16"),
    "float16_cpu": (lambda: conv2d_relu(X.half(), W.half()), RuntimeError, r"dtype Half is not supported on cpu.*float16 on CUDA only"),
    "same_with_stride_2": (lambda: conv2d_relu(X, W, stride=2, padding="same"), RuntimeError,
                           r"padding='same' is not supported for strided convolutions \(stride=\[2, 2\]\)"),
    "bad_padding_string": (lambda: conv2d_relu(X, W, padding="full"), RuntimeError,
                           r"padding must be 'same', 'valid', an int or a pair of ints, but got 'full'"),
    "module_bad_input_rank": (lambda: Conv2dReLU(4, 6, 3)(X[None]), RuntimeError, r"input must be a 4-D tensor"),
    "module_wrong_channels": (lambda: Conv2dReLU(3, 6, 3)(X), RuntimeError, r"weight.size\(1\) must be input channels"),
}


@pytest.mark.parametrize("call,exc,match", list(BAD_INPUTS.values()), ids=list(BAD_INPUTS))
def test_bad_inputs(call, exc, match):
    with pytest.raises(exc, match=match) as info:
        call()
    assert str(info.value).startswith("conv2d_relu"), "messages name the op"


def test_bad_inputs_in_backward_op():
    x, w, _, conv_args = make_case(CONFIGS["basic"], False, torch.float32, "cpu")
    out = op(x, w, None, *conv_args)
    g = torch.randn_like(out)
    mask = [True, True, True]
    with pytest.raises(RuntimeError, match=r"grad_output shape \[2, 6, 8, 9\] must equal output shape \[2, 6, 9, 9\]"):
        backward_op(g[:, :, 1:], out, x, w, *conv_args, mask)
    with pytest.raises(RuntimeError, match=r"output must have shape \[2, 6, 9, 9\] \(the convolution of input .*\), but got \[2, 5, 9, 9\]"):
        backward_op(g[:, 1:], out[:, 1:], x, w, *conv_args, mask)
    with pytest.raises(RuntimeError, match=r"output must have shape \[2, 6, 9, 9\].*but got \[6, 9, 9\]"):
        backward_op(g[0], out[0], x, w, *conv_args, mask)
    with pytest.raises(RuntimeError, match=r"grad_output has dtype Double but input has dtype Float"):
        backward_op(g.double(), out, x, w, *conv_args, mask)
    with pytest.raises(RuntimeError, match=r"output has dtype Double but input has dtype Float"):
        backward_op(g, out.double(), x, w, *conv_args, mask)
    with pytest.raises(RuntimeError, match=r"stride entries must be >= 1"):
        backward_op(g, out, x, w, [0, 1], *conv_args[1:], mask)


# ========================================================================================
# 9. Property tests
# ========================================================================================


@st.composite
def conv_problems(draw):
    groups = draw(st.integers(1, 3))
    cin = groups * draw(st.integers(1, 3))
    cout = groups * draw(st.integers(1, 3))
    kernel = [draw(st.integers(1, 4)) for _ in range(2)]
    stride = [draw(st.integers(1, 3)) for _ in range(2)]
    dilation = [draw(st.integers(1, 3)) for _ in range(2)]
    padding = [draw(st.integers(0, 3)) for _ in range(2)]
    sizes = []
    for d in range(2):
        extent = dilation[d] * (kernel[d] - 1) + 1
        sizes.append(draw(st.integers(max(1, extent - 2 * padding[d]), extent + 8)))
    return dict(
        n=draw(st.integers(1, 3)), cin=cin, cout=cout, size=sizes, kernel=kernel, stride=stride, padding=padding,
        dilation=dilation, groups=groups, bias=draw(st.booleans()),
        layout=draw(st.sampled_from(["contiguous", "channels_last", "sliced"])),
        dtype=draw(st.sampled_from([torch.float32, torch.float64])), seed=draw(st.integers(0, 2**31 - 1)),
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(p=conv_problems())
def test_property_matches_reference(p):
    gen = torch.Generator().manual_seed(p["seed"])
    dtype = p["dtype"]
    x = torch.randn(p["n"], p["cin"], *p["size"], generator=gen, dtype=torch.float64)
    w = torch.randn(p["cout"], p["cin"] // p["groups"], *p["kernel"], generator=gen, dtype=torch.float64)
    b = torch.randn(p["cout"], generator=gen, dtype=torch.float64) if p["bias"] else None
    x = with_layout(x.to(dtype), p["layout"])
    w, b = w.to(dtype), None if b is None else b.to(dtype)
    conv_args = (p["stride"], p["padding"], p["dilation"], p["groups"])

    xl, wl = leaf(x), leaf(w)
    bl = None if b is None else leaf(b)
    out = op(xl, wl, bl, *conv_args)
    ref = reference(x, w, b, *conv_args)
    assert_close_to(out, ref, dtype, "output")

    g = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(dtype)
    grads = grads_of(out, [xl, wl, bl], g)
    # Compared under the kernel's own ReLU mask, which may differ from the reference only
    # where the float64 pre-activation is within rounding error of zero.
    mask = check_relu_mask(out, reference_pre_activation(x, w, b, *conv_args), 1e-4)
    for name, got, want in zip(("input", "weight", "bias"), grads, reference_grads(x, w, b, conv_args, g, mask)):
        if want is not None:
            assert_close_to(got, want, dtype, f"grad_{name}")


@pytest.mark.parametrize("dtype", CPU_DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_nan_and_inf_propagate_as_torch_relu(dtype, layout):
    x = torch.randn(2, 3, 6, 6, dtype=dtype)
    x[0, 1, 2, 3] = float("nan")
    x[1, 0, 0, 0] = float("inf")
    x[1, 2, 5, 5] = float("-inf")
    x = with_layout(x, layout)
    w = torch.rand(4, 3, 3, 3, dtype=dtype) + 0.1  # positive, so infinities do not cancel
    w[3] = -w[3]
    b = torch.randn(4, dtype=dtype)
    b[2] = float("nan")
    xl, wl, bl = leaf(x), leaf(w), leaf(b)
    out = op(xl, wl, bl, [1, 1], [1, 1], [1, 1], 1)
    xn, wn, bn = leaf(x), leaf(w), leaf(b)
    want = torch.relu(F.conv2d(xn, wn, bn, padding=1))
    assert out.isnan().any() and out.isinf().any() and (out == 0).any()
    assert torch.equal(out.isnan(), want.isnan()), "NaN positions must match torch.relu(conv2d)"
    assert torch.equal(out.isinf(), want.isinf())
    assert out[:, 2].isnan().all(), "a NaN bias makes its channel NaN"
    torch.testing.assert_close(out, want, equal_nan=True, **({} if dtype != torch.bfloat16 else dict(atol=0.05, rtol=0.02)))

    g = torch.ones_like(out)
    tol = {} if dtype != torch.bfloat16 else dict(atol=0.5, rtol=0.05)
    for name, got, expected in zip(("input", "weight", "bias"), grads_of(out, [xl, wl, bl], g), grads_of(want, [xn, wn, bn], g)):
        assert torch.equal(got.isnan(), expected.isnan()), name
        torch.testing.assert_close(got, expected, equal_nan=True, msg=lambda m: f"grad_{name}: {m}", **tol)
    # NaN outputs pass their gradient through, as torch.relu's: channel 2 (NaN bias) gets
    # a bias gradient of one per output element.
    (gb,) = torch.autograd.grad(op(x, w, bl, [1, 1], [1, 1], [1, 1], 1), [bl], g)
    assert gb[2].item() == out[:, 2].numel()


# ========================================================================================
# 10. CUDA
# ========================================================================================

CUDA_CONFIGS = {k: CONFIGS[k] for k in ("basic", "rect_strided", "grouped", "depthwise", "mixed", "output_1x1")}


@pytest.mark.cuda
@pytest.mark.parametrize("layouts", LAYOUT_PAIRS, ids=["-".join(p) for p in LAYOUT_PAIRS])
@pytest.mark.parametrize("dtype", CUDA_DTYPES, ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("config", list(CUDA_CONFIGS.values()), ids=list(CUDA_CONFIGS))
def test_parity_cuda(config, bias, dtype, layouts):
    check_parity(config, bias, dtype, "cuda", layouts)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", CUDA_DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cuda_bias_grad_large_batch(dtype, layout):
    # Bias gradients are reduced over many blocks' partial sums: a large N and spatial
    # extent, against the float64 reference (rule-based for half precision).
    config = (512, 8, 16, 16, 16, (3, 3), (1, 1), (1, 1), (1, 1), 1)
    check_parity(config, True, dtype, "cuda", (layout, "contiguous"))


@pytest.mark.cuda
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cuda_backward_is_deterministic(layout):
    # No atomics: the bias gradient of random values is the same to the bit on every run.
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(256, 8, 24, 24, device="cuda").contiguous(memory_format=fmt)
    w = leaf(torch.randn(16, 8, 3, 3, device="cuda"))
    b = leaf(torch.randn(16, device="cuda"))
    grad = torch.randn(256, 16, 24, 24, device="cuda").contiguous(memory_format=fmt)

    def grads():
        return torch.autograd.grad(op(x, w, b, [1, 1], [1, 1], [1, 1], 1), [w, b], grad)

    first = grads()
    for _ in range(3):
        for a, e in zip(grads(), first):
            assert torch.equal(a, e)

@pytest.mark.cuda
def test_cuda_bias_grad_exact_count():
    # With grad_output all ones and a positive output everywhere, grad_bias is the count of
    # outputs per channel: exact in float32.
    x = torch.rand(300, 4, 20, 20, device="cuda")
    w = torch.rand(6, 4, 3, 3, device="cuda")
    b = leaf(torch.ones(6, device="cuda"))
    out = op(x, w, b, [1, 1], [1, 1], [1, 1], 1)
    (gb,) = torch.autograd.grad(out, [b], torch.ones_like(out))
    assert torch.equal(gb, torch.full_like(gb, 300 * 20 * 20))


@pytest.mark.cuda
def test_cuda_float32_with_tf32_follows_low_precision_rule():
    # With TF32 convolutions (cuDNN's default, turned off by a conftest fixture elsewhere)
    # float32 is a low-precision dtype too: hold the kernel to the native error budget.
    torch.backends.cudnn.allow_tf32 = True  # the conftest fixture restores it
    x, w, b, conv_args = make_case(CONFIGS["basic"], True, torch.float32, "cuda", ("channels_last", "contiguous"))
    out, nat = op(x, w, b, *conv_args), native(x, w, b, *conv_args)
    assert_low_precision_ok(out, reference(x, w, b, *conv_args), nat, what="output")


@pytest.mark.cuda
@pytest.mark.parametrize(
    "where", ["weight_on_cpu", "input_on_cpu", "bias_on_cpu"],
)
def test_cuda_device_mismatch(where):
    x, w, b = X.cuda(), W.cuda(), B.cuda()
    if where == "weight_on_cpu":
        w, pattern = W, r"weight is on cpu but input is on cuda:\d; they must be on the same device"
    elif where == "input_on_cpu":
        x, pattern = X, r"weight is on cuda:\d but input is on cpu; they must be on the same device"
    else:
        b, pattern = B, r"bias is on cpu but input is on cuda:\d; they must be on the same device"
    with pytest.raises(RuntimeError, match=pattern):
        conv2d_relu(x, w, b)


@pytest.mark.cuda
def test_cuda_float16_accepted_and_int_rejected():
    out = conv2d_relu(X.cuda().half(), W.cuda().half(), B.cuda().half())
    assert out.dtype == torch.float16
    with pytest.raises(RuntimeError, match=r"input dtype Long is not supported on cuda"):
        conv2d_relu(X.cuda().long(), W.cuda().long())


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("layouts", [("contiguous", "contiguous"), ("channels_last", "contiguous")], ids=["nchw", "nhwc"])
def test_cuda_opcheck(dtype, layouts):
    x, w, b, conv_args = make_case(CONFIGS["grouped"], True, dtype, "cuda", layouts)
    torch.library.opcheck(op, (leaf(x), leaf(w), leaf(b), *conv_args))
    out = op(x, w, b, *conv_args)
    torch.library.opcheck(backward_op, (torch.randn_like(out), out, x, w, *conv_args, [True, True, True]))


@pytest.mark.cuda
def test_cuda_gradcheck():
    x, w, b, conv_args = make_case(GRADCHECK_CONFIGS["strided_dilated_grouped"], True, torch.float64, "cuda",
                                   ("channels_last", "contiguous"))
    assert torch.autograd.gradcheck(lambda x, w, b: op(x, w, b, *conv_args), (leaf(x), leaf(w), leaf(b)))


@pytest.mark.cuda
def test_cuda_module_and_compile(fresh_dynamo):
    model = small_model().cuda()
    x = torch.randn(4, 3, 16, 16, device="cuda")
    compiled = torch.compile(copy.deepcopy(model), fullgraph=True)
    torch.testing.assert_close(compiled(x), model(x))
    conv = nn.Conv2d(3, 8, 3, padding="same", padding_mode="reflect").cuda()
    torch.testing.assert_close(Conv2dReLU.from_conv(conv)(x), F.relu(conv(x)))


@pytest.mark.parametrize("device", DEVICES)
def test_devices_smoke(device):
    x, w, b, conv_args = make_case(CONFIGS["basic"], True, torch.float32, device)
    assert_close_to(op(x, w, b, *conv_args), reference(x, w, b, *conv_args), torch.float32)


@requires_cuda
@pytest.mark.cuda
def test_cuda_output_on_input_device():
    x = X.to("cuda")
    out = conv2d_relu(x, W.to("cuda"), B.to("cuda"))
    assert out.device == x.device
