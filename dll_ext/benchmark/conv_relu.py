"""conv2d_relu cases: dll_ext.nn.Conv2dReLU against nn.Conv2d + F.relu (eager, same weights).

Shapes: the 64->64 3x3 layer of a CIFAR ResNet (the target), and the two convolutions of the
course's small ConvNet (3->32 5x5 on 32x32; 32->64 3x3 on the 16x16 map after a 2x2 pool),
all at batch 128. Each shape runs forward only (under torch.no_grad) and forward+backward
(gradients of input, weight and bias). Without `quick`, torch.compile of the native pair is an
extra baseline, compiled and warmed up in setup, outside the timing.

The backward is seeded with a fixed dense random gradient, out.backward(g), i.e. the loss
(out * g).sum(). A plain out.sum() would hand both sides a stride-0 expanded tensor of ones,
which no real loss produces and which ours would first have to materialise.
"""
from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from dll_ext.benchmark.harness import Case, Impls

OP = "conv2d_relu"


@dataclass(frozen=True)
class ConvShape:
    name: str
    batch: int
    in_channels: int
    out_channels: int
    size: int  # square input map
    kernel: int
    padding: int
    target_fwd: Optional[float] = None  # CPU speedup targets over native eager
    target_fwd_bwd: Optional[float] = None

    def describe(self) -> str:
        return (f"N{self.batch} {self.in_channels}->{self.out_channels} {self.size}x{self.size} "
                f"k{self.kernel} p{self.padding}")

    def forward_flops(self) -> float:
        out = self.size + 2 * self.padding - self.kernel + 1  # stride 1, dilation 1
        return 2.0 * self.batch * self.out_channels * out * out * self.in_channels * self.kernel**2


RESNET = ConvShape("resnet", 128, 64, 64, 32, 3, 1, target_fwd=1.10, target_fwd_bwd=1.03)
CONVNET = [ConvShape("convnet1", 128, 3, 32, 32, 5, 2), ConvShape("convnet2", 128, 32, 64, 16, 3, 1)]
MODES = ("fwd", "fwd+bwd")


class NativeConvReLU(nn.Module):
    """The eager baseline: nn.Conv2d then F.relu."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.conv(x))


def _step(module: nn.Module, x: torch.Tensor, mode: str, grad: Optional[torch.Tensor]):
    """One call of the workload on `module`; x is this module's own input tensor."""
    if mode == "fwd":
        def forward():
            with torch.no_grad():
                return module(x)

        return forward

    def forward_backward():
        x.grad = None
        module.zero_grad(set_to_none=True)
        module(x).backward(grad)

    return forward_backward


def _compiled(module: nn.Module, x: torch.Tensor, mode: str, grad: Optional[torch.Tensor]):
    # A fresh dynamo state per case: otherwise the shared forward code object recompiles for
    # every case, turns dynamic after the first shape change and falls back to eager at the
    # recompile limit.
    import torch._dynamo

    torch._dynamo.reset()
    compiled = torch.compile(module, dynamic=False)
    step = _step(compiled, x, mode, grad)
    step()  # compile now, outside the timing
    step()
    return step


def setup_case(shape: ConvShape, mode: str, device: str, dtype: torch.dtype, compile_baseline: bool) -> Impls:
    from dll_ext.nn import Conv2dReLU

    torch.manual_seed(0)
    conv = nn.Conv2d(shape.in_channels, shape.out_channels, shape.kernel, padding=shape.padding,
                     device=device, dtype=dtype)
    native = NativeConvReLU(conv)
    ours = Conv2dReLU.from_conv(conv)
    x = torch.randn(shape.batch, shape.in_channels, shape.size, shape.size, device=device, dtype=dtype)
    grad = None
    if mode == "fwd+bwd":
        with torch.no_grad():
            grad = torch.randn_like(native(x))
        x.requires_grad_(True)

    def own_input():  # separate leaves, so ours and native never share .grad
        return x if mode == "fwd" else x.detach().clone().requires_grad_(True)

    baselines = {}
    if compile_baseline:
        baselines["compiled"] = _compiled(native, own_input(), mode, grad)
    return Impls(ours=_step(ours, own_input(), mode, grad), native=_step(native, own_input(), mode, grad),
                 baselines=baselines)


def _case(shape: ConvShape, mode: str, device: str, dtype: torch.dtype, compile_baseline: bool) -> Case:
    suffix = "" if dtype == torch.float32 else "/" + str(dtype).replace("torch.", "")
    target = None
    if device == "cpu" and dtype == torch.float32:
        target = shape.target_fwd if mode == "fwd" else shape.target_fwd_bwd
    # forward+backward: the forward, grad_input and grad_weight convolutions are as costly each.
    flops = shape.forward_flops() * (1 if mode == "fwd" else 3)
    return Case(name=f"{shape.name}/{mode}{suffix}", op=OP, shape=shape.describe(),
                setup=lambda: setup_case(shape, mode, device, dtype, compile_baseline),
                flops=flops, dtype=dtype, target=target)


def cases(device: str = "cpu", quick: bool = False) -> List[Case]:
    """All conv2d_relu cases for `device`. quick drops the torch.compile baseline only; the
    shapes stay, so quick figures are comparable with full ones."""
    compile_baseline = not quick
    result = [_case(shape, mode, device, torch.float32, compile_baseline)
              for shape in [RESNET] + CONVNET for mode in MODES]
    if device == "cuda":
        result += [_case(RESNET, mode, device, dtype, compile_baseline)
                   for dtype in (torch.float16, torch.bfloat16) for mode in MODES]
    return result
