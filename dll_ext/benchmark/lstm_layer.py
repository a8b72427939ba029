"""lstm_layer cases: dll_ext.nn.LSTM against nn.LSTM (same weights, same input) over a whole
sequence — padded, as a PackedSequence of variable lengths, and 2-layer bidirectional.

Shape of the issue's targets: T=64 steps, batch 32, input = hidden = 256, float32; also
hidden 512 and 1024. fwd runs under no_grad; fwd+bwd backpropagates the sum of the output
times a fixed random tensor to the input and every weight. The training-step cases also
record peak memory.
"""
from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.nn as nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

from dll_ext.benchmark.harness import Case, Impls

OP = "lstm_layer"


@dataclass(frozen=True)
class LayerShape:
    steps: int
    batch: int
    input_size: int
    hidden: int
    layers: int = 1
    bidirectional: bool = False
    packed: bool = False  # lengths uniform in [T/2, T], as a PackedSequence

    def describe(self) -> str:
        extra = (f" L{self.layers}" if self.layers > 1 else "") + (" bi" if self.bidirectional else "")
        extra += " packed lengths U[T/2,T]" if self.packed else ""
        return f"T{self.steps} B{self.batch} D{self.input_size} H{self.hidden}{extra}"

    def lengths(self) -> torch.Tensor:
        generator = torch.Generator().manual_seed(0)
        return torch.randint(self.steps // 2, self.steps + 1, (self.batch,), generator=generator)

    def forward_flops(self) -> float:
        positions = int(self.lengths().sum()) if self.packed else self.steps * self.batch
        directions = 2 if self.bidirectional else 1
        flops = 0.0
        for layer in range(self.layers):
            features = self.input_size if layer == 0 else directions * self.hidden
            flops += directions * 2.0 * positions * (features + self.hidden) * 4 * self.hidden
        return flops


def _module(cls, shape: LayerShape, device: str, dtype: torch.dtype) -> nn.Module:
    return cls(shape.input_size, shape.hidden, shape.layers, bidirectional=shape.bidirectional,
               device=device, dtype=dtype)


def setup_case(shape: LayerShape, backward: bool, device: str, dtype: torch.dtype) -> Impls:
    from dll_ext.nn import LSTM

    torch.manual_seed(0)
    native = _module(nn.LSTM, shape, device, dtype)
    ours = _module(LSTM, shape, device, dtype)
    ours.load_state_dict(native.state_dict())
    x = torch.randn(shape.steps, shape.batch, shape.input_size, device=device, dtype=dtype)
    if shape.packed:
        packed = pack_padded_sequence(x, shape.lengths(), enforce_sorted=False)
        x = PackedSequence(packed.data.requires_grad_(backward), packed.batch_sizes, packed.sorted_indices,
                           packed.unsorted_indices)
    else:
        x.requires_grad_(backward)
    out_features = shape.hidden * (2 if shape.bidirectional else 1)
    rows = x.data.shape[0] if shape.packed else shape.steps
    grad = torch.randn(rows, *([] if shape.packed else [shape.batch]), out_features, device=device, dtype=dtype)

    def run(module: nn.Module):
        def output():
            out = module(x)[0]
            return out.data if shape.packed else out

        def train_step():
            module.zero_grad(set_to_none=True)
            (output() * grad).sum().backward()

        def inference():
            with torch.no_grad():
                output()

        return train_step if backward else inference

    return Impls(ours=run(ours), native=run(native))


CPU_CASES = [  # (shape, backward, target); the targets are issue 13's
    (LayerShape(64, 32, 256, 256), False, 1.0),
    (LayerShape(64, 32, 256, 256), True, 1.0),
    (LayerShape(64, 32, 256, 256, packed=True), True, 3.0),
    (LayerShape(64, 32, 256, 256, layers=2, bidirectional=True), True, 1.0),
    (LayerShape(64, 32, 512, 512), True, None),
    (LayerShape(64, 32, 1024, 1024), True, None),
]
CUDA_SHAPES = [LayerShape(64, 32, 256, 256), LayerShape(64, 32, 512, 512), LayerShape(64, 32, 1024, 1024)]


def _name(shape: LayerShape, backward: bool, dtype: torch.dtype) -> str:
    kind = "packed" if shape.packed else (f"bidir{shape.layers}" if shape.bidirectional else "layer")
    suffix = "" if dtype == torch.float32 else "/" + str(dtype).replace("torch.", "")
    return f"{kind}/H{shape.hidden}/{'fwd+bwd' if backward else 'fwd'}{suffix}"


def _case(shape: LayerShape, backward: bool, target: Optional[float], device: str, dtype: torch.dtype) -> Case:
    return Case(name=_name(shape, backward, dtype), op=OP, shape=shape.describe(),
                setup=lambda: setup_case(shape, backward, device, dtype),
                flops=shape.forward_flops() * (3 if backward else 1), dtype=dtype, target=target, memory=backward)


def cases(device: str = "cpu", quick: bool = False) -> List[Case]:
    if device == "cuda":
        shapes = CUDA_SHAPES[:1] if quick else CUDA_SHAPES
        return [_case(shape, True, 1.0, device, dtype) for shape in shapes for dtype in (torch.float32, torch.float16)]
    chosen = CPU_CASES[:4] if quick else CPU_CASES
    return [_case(shape, backward, target, device, torch.float32) for shape, backward, target in chosen]
