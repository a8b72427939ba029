"""Shared fixtures and helpers for the dll_ext test suite.

Helpers here are imported by the test modules (`from conftest import ...`); pytest puts
this folder on sys.path because it has no __init__.py.
"""
import math
import os
import shutil
import subprocess
import zlib
from pathlib import Path

import pytest
import torch
from hypothesis import settings
import torch.nn.functional as F
import torch.utils

import dll_ext  # noqa: F401  (loads the ops)

# CI runs the property tests on a fixed sequence of examples (HYPOTHESIS_PROFILE=ci), so that a
# submission lands or not on its own merits; local runs keep drawing new examples.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("HYPOTHESIS_PROFILE"):
    settings.load_profile(os.environ["HYPOTHESIS_PROFILE"])

CUDA_AVAILABLE = torch.cuda.is_available()
NO_CUDA_REASON = "no CUDA GPU visible"

# Skips a test (or a parameter) when there is no GPU; pair it with pytest.mark.cuda so
# `-m cuda` / `-m "not cuda"` select GPU tests. Tests marked only with pytest.mark.cuda are
# skipped with the same reason by pytest_collection_modifyitems below.
requires_cuda = pytest.mark.skipif(not CUDA_AVAILABLE, reason=NO_CUDA_REASON)

# Parametrise over this to run a test on every device; the CUDA entry skips without a GPU.
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, requires_cuda], id="cuda")]

LOW_PRECISION = (torch.float16, torch.bfloat16)


def pytest_collection_modifyitems(config, items):
    if CUDA_AVAILABLE:
        return
    skip = pytest.mark.skip(reason=NO_CUDA_REASON)
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


ROOT = Path(__file__).resolve().parents[1]
CMAKE_BUILD_TIMEOUT_S = 900


def run_command(cmd, timeout, **kwargs):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


@pytest.fixture(scope="session")
def dll_infer(tmp_path_factory):
    """Path of dll_infer, configured and built from the top-level CMakeLists.txt once per test
    session (about a minute on two cores), without the CUDA kernels to keep it short."""
    cmake = shutil.which("cmake")
    assert cmake, "cmake is required for the C++ deployment tests (pip install cmake)"
    build = tmp_path_factory.mktemp("cmake-build")
    configure = [
        cmake, "-S", str(ROOT), "-B", str(build),
        f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
        "-DDLL_EXT_CUDA=OFF",
    ]
    if shutil.which("ninja"):
        configure += ["-G", "Ninja"]
    for step in (configure, [cmake, "--build", str(build), "-j2"]):
        result = run_command(step, CMAKE_BUILD_TIMEOUT_S)
        assert result.returncode == 0, (
            f"{' '.join(step)} failed ({result.returncode}):\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
        )
    exe = build / "dll_infer"
    assert exe.is_file() and os.access(exe, os.X_OK)
    assert (build / "libdll_ext_ops.so").is_file()
    return exe


@pytest.fixture(autouse=True)
def _ieee_float32_convolutions():
    """float32 convolutions in full precision, so float32 results can be held to float32
    tolerances: cuDNN would otherwise use TF32 on Ampere and later GPUs (by default).

    The legacy allow_tf32 flag is used on purpose: after the newer per-op fp32_precision
    setters, torch.export's reading of the legacy flag raises.
    """
    cudnn = torch.backends.cudnn
    old = cudnn.allow_tf32
    cudnn.allow_tf32 = False
    try:
        yield
    finally:
        cudnn.allow_tf32 = old


@pytest.fixture(autouse=True)
def _seed(request):
    """A fixed seed per test (from its id), so failures reproduce and runs are deterministic."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
    yield


# ----------------------------------------------------------------------------------------
# Tensor layouts
# ----------------------------------------------------------------------------------------

LAYOUTS = ["contiguous", "channels_last", "sliced", "transposed"]


def with_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The values of 4-D `t` in the given memory layout.

    sliced: a view taking every other channel of a wider buffer (non-contiguous, not
    channels-last); transposed: a view with H and W strides swapped.
    """
    if layout == "contiguous":
        out = t.contiguous()
    elif layout == "channels_last":
        out = t.contiguous(memory_format=torch.channels_last)
        assert t.size(1) == 1 or t.shape[2:].numel() == 1 or not out.is_contiguous()
    elif layout == "sliced":
        n, c, h, w = t.shape
        buffer = torch.zeros(n, 2 * c, h, w + 1, dtype=t.dtype, device=t.device)
        buffer[:, ::2, :, :w] = t
        out = buffer[:, ::2, :, :w]
        # Only a size-1 batch, channel and height leave the view contiguous anyway.
        if any(size > 1 for size in t.shape[:3]):
            assert not out.is_contiguous() and not out.is_contiguous(memory_format=torch.channels_last)
    elif layout == "transposed":
        out = t.transpose(2, 3).contiguous().transpose(2, 3)
        if t.size(2) > 1 and t.size(3) > 1:
            assert not out.is_contiguous() and not out.is_contiguous(memory_format=torch.channels_last)
    else:
        raise ValueError(layout)
    torch.testing.assert_close(out, t, rtol=0, atol=0, equal_nan=True)
    return out


def leaf(t: torch.Tensor, requires_grad: bool = True) -> torch.Tensor:
    """t (keeping its strides) as a leaf that can require grad."""
    return t.detach().requires_grad_(requires_grad)


# ----------------------------------------------------------------------------------------
# References
# ----------------------------------------------------------------------------------------


def native(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """relu(conv2d(...)) with PyTorch's own ops, in the inputs' dtype."""
    return F.relu(F.conv2d(x, w, b, stride, padding, dilation, groups))


def reference(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """relu(conv2d(...)) computed in float64 on the CPU."""
    x, w = x.detach().double().cpu(), w.detach().double().cpu()
    b = None if b is None else b.detach().double().cpu()
    return native(x, w, b, stride, padding, dilation, groups)


def reference_pre_activation(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    x, w = x.detach().double().cpu(), w.detach().double().cpu()
    b = None if b is None else b.detach().double().cpu()
    return F.conv2d(x, w, b, stride, padding, dilation, groups)


def grads_of(out, inputs, grad_out):
    """Gradients of (out * grad_out).sum() w.r.t. inputs (None for inputs that are None)."""
    present = [t for t in inputs if t is not None]
    got = torch.autograd.grad(out, present, grad_out, allow_unused=True)
    it = iter(got)
    return [None if t is None else next(it) for t in inputs]


def reference_grads(x, w, b, conv_args, grad_out, mask=None):
    """float64 gradients of relu(conv2d(x, w, b)) for upstream grad_out.

    With `mask` (a boolean tensor, True where the ReLU passes), the ReLU mask is that one
    rather than the reference's own: low-precision kernels legitimately disagree with the
    float64 reference about the sign of pre-activations within rounding error of zero, and
    the gradients are then compared given the same mask (the mask itself is checked
    separately with check_relu_mask).
    """
    xd = x.detach().double().cpu().requires_grad_()
    wd = w.detach().double().cpu().requires_grad_()
    bd = None if b is None else b.detach().double().cpu().requires_grad_()
    g = grad_out.detach().double().cpu()
    if mask is None:
        out = native(xd, wd, bd, *conv_args)
    else:
        out = F.conv2d(xd, wd, bd, *conv_args)
        g = g * mask.cpu().to(g.dtype)
    return grads_of(out, [xd, wd, bd], g)


def check_relu_mask(out, pre, tol):
    """Where out's ReLU mask (out > 0) differs from the float64 pre-activation's sign, the
    pre-activation must be within `tol` of zero (a rounding-level disagreement)."""
    mask = out.detach().cpu() > 0
    disagree = mask != (pre > 0)
    if disagree.any():
        worst = pre[disagree].abs().max().item()
        assert worst <= tol, f"ReLU mask differs from the reference where |pre-activation| = {worst} > {tol}"
    return mask


def max_err(actual, expected):
    return (actual.detach().cpu().double() - expected.detach().cpu().double()).abs().max().item()


# float32 / float64 tolerances against the float64 reference.
TOLERANCES = {
    torch.float64: dict(rtol=1e-9, atol=1e-9),
    torch.float32: dict(rtol=1e-4, atol=1e-4),
}


def assert_close_to(actual, expected, dtype, what=""):
    """actual (any dtype, any device) is close to the float64 `expected` at dtype's tolerance."""
    assert actual.dtype == dtype, f"{what}: dtype {actual.dtype}, expected {dtype}"
    torch.testing.assert_close(actual.detach().cpu().double(), expected.detach().double(),
                               msg=lambda m: f"{what}: {m}", **TOLERANCES[dtype])


def low_precision_eps(expected):
    """The small absolute epsilon of the low-precision rule, relative to the values' scale."""
    return 1e-3 * max(1.0, expected.detach().abs().max().item())


def assert_low_precision_ok(actual, expected, native_lp, native_expected=None, what=""):
    """The low-precision rule: the kernel's max error vs the float64 reference `expected` is
    at most twice that of PyTorch's native math done in the same low precision (`native_lp`,
    measured against `native_expected`, by default `expected`), plus a small epsilon."""
    assert actual.dtype == native_lp.dtype, f"{what}: dtype {actual.dtype}, native {native_lp.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)}, expected {tuple(expected.shape)}"
    kernel_err = max_err(actual, expected)
    native_err = max_err(native_lp, expected if native_expected is None else native_expected)
    eps = low_precision_eps(expected)
    assert kernel_err <= 2 * native_err + eps, (
        f"{what}: kernel max error {kernel_err:.3g} > 2 x native {actual.dtype} error "
        f"{native_err:.3g} + {eps:.3g}"
    )


def lstm_tensors(input_shape, B, H):
    """(input, hx, cx, w_ih, w_hh, b_ih, b_hh) in float64 for the LSTM tests: input of
    input_shape (its last dimension is input_size), states (B, H), weights uniform in twice
    nn.LSTM's initialisation range (so some gates saturate) and biases in that range."""
    k = 1.0 / math.sqrt(H)
    D = input_shape[-1]
    return [
        torch.randn(*input_shape, dtype=torch.float64),
        torch.randn(B, H, dtype=torch.float64) * 0.5,
        torch.randn(B, H, dtype=torch.float64),
        (torch.rand(4 * H, D, dtype=torch.float64) * 2 - 1) * k * 2,
        (torch.rand(4 * H, H, dtype=torch.float64) * 2 - 1) * k * 2,
        (torch.rand(4 * H, dtype=torch.float64) * 2 - 1) * k,
        (torch.rand(4 * H, dtype=torch.float64) * 2 - 1) * k,
    ]


def aot_graphs(fn, *args):
    """Compile fn through AOTAutograd (fullgraph), run it and backward from the sum of its
    output, and return the FX graphs it compiled: {"forward": ..., "backward": ...}."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.aot_autograd import make_boxed_func

    graphs = {}

    def capture(kind):
        def compiler(gm, example_inputs):
            graphs[kind] = gm
            return make_boxed_func(gm.forward)
        return compiler

    torch._dynamo.reset()
    aot = aot_autograd(fw_compiler=capture("forward"), bw_compiler=capture("backward"))
    torch.compile(fn, fullgraph=True, backend=aot)(*args).sum().backward()
    return graphs
