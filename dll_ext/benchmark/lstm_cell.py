"""lstm_cell cases: a Python loop of dll_ext.nn.LSTMCell steps against the same loop of
nn.LSTMCell (same weights), forward+backward through all steps — how a course model that
needs per-step control (attention decoders, N-back) drives a cell.

Shape of the issue's target: T=64 steps, batch 32, input = hidden = 256, float32; also
hidden 512 and 1024. The loss is the sum of every step's h times a fixed random tensor.
"""
from dataclasses import dataclass
from typing import List

import torch
import torch.nn as nn

from dll_ext.benchmark.harness import Case, Impls

OP = "lstm_cell"


@dataclass(frozen=True)
class LoopShape:
    steps: int
    batch: int
    input_size: int
    hidden: int
    target: float = None

    def describe(self) -> str:
        return f"T{self.steps} B{self.batch} D{self.input_size} H{self.hidden}"

    def flops(self) -> float:
        # Per step, the GEMMs both sides run: forward x W_ih^T and h W_hh^T; backward the
        # gradient of h and the two weight gradients (the inputs x need no gradient here).
        gemm = 2.0 * self.batch * 4 * self.hidden
        per_step = gemm * (self.input_size + self.hidden) * 2 + gemm * self.hidden
        return per_step * self.steps


SHAPES = [LoopShape(64, 32, 256, 256, target=1.6), LoopShape(64, 32, 512, 512), LoopShape(64, 32, 1024, 1024)]


def _loop(cell: nn.Module, xs: torch.Tensor, grads: torch.Tensor):
    def run():
        cell.zero_grad(set_to_none=True)
        h = c = torch.zeros(xs.shape[1], cell.hidden_size, device=xs.device, dtype=xs.dtype)
        loss = 0
        for t in range(xs.shape[0]):
            h, c = cell(xs[t], (h, c))
            loss = loss + (h * grads[t]).sum()
        loss.backward()

    return run


def setup_case(shape: LoopShape, device: str, dtype: torch.dtype) -> Impls:
    from dll_ext.nn import LSTMCell

    torch.manual_seed(0)
    native = nn.LSTMCell(shape.input_size, shape.hidden, device=device, dtype=dtype)
    ours = LSTMCell(shape.input_size, shape.hidden, device=device, dtype=dtype)
    ours.load_state_dict(native.state_dict())
    xs = torch.randn(shape.steps, shape.batch, shape.input_size, device=device, dtype=dtype)
    grads = torch.randn(shape.steps, shape.batch, shape.hidden, device=device, dtype=dtype)
    return Impls(ours=_loop(ours, xs, grads), native=_loop(native, xs, grads))


def cases(device: str = "cpu", quick: bool = False) -> List[Case]:
    shapes = SHAPES[:1] if quick else SHAPES
    dtypes = [torch.float32] + ([torch.float16] if device == "cuda" else [])
    result = []
    for shape in shapes:
        for dtype in dtypes:
            suffix = "" if dtype == torch.float32 else "/" + str(dtype).replace("torch.", "")
            result.append(Case(
                name=f"cell-loop/H{shape.hidden}/fwd+bwd{suffix}", op=OP, shape=shape.describe(),
                setup=lambda shape=shape, dtype=dtype: setup_case(shape, device, dtype),
                flops=shape.flops(), dtype=dtype,
                target=shape.target if device == "cpu" and dtype == torch.float32 else None))
    return result
