"""transformer cases: dll_ext.nn.TransformerEncoderLayer against nn.TransformerEncoderLayer
(the same state_dict), forward+backward in training mode with dropout 0.

Shape: batch_first, batch 16, L=256, d_model=512, 8 heads, feedforward 2048, float32;
without a mask, and with a src_key_padding_mask padding the last 25% of every sequence.
The loss is the sum of the output times a fixed random tensor; the gradients are those of
the input and of every parameter.
"""
from typing import List

import torch
import torch.nn as nn

from dll_ext.benchmark.harness import Case, Impls

OP = "transformer"
BATCH, L, D_MODEL, HEADS, FF = 16, 256, 512, 8, 2048


def setup_case(padded: bool, device: str) -> Impls:
    from dll_ext.nn import TransformerEncoderLayer

    torch.manual_seed(0)
    native = nn.TransformerEncoderLayer(D_MODEL, HEADS, FF, dropout=0.0, batch_first=True, device=device)
    ours = TransformerEncoderLayer(D_MODEL, HEADS, FF, dropout=0.0, batch_first=True, device=device)
    ours.load_state_dict(native.state_dict())
    x = torch.randn(BATCH, L, D_MODEL, device=device, requires_grad=True)
    grad = torch.randn(BATCH, L, D_MODEL, device=device)
    padding = None
    if padded:
        padding = torch.zeros(BATCH, L, dtype=torch.bool, device=device)
        padding[:, 3 * L // 4:] = True

    def step(layer):
        def run():
            layer.zero_grad(set_to_none=True)
            x.grad = None
            (layer(x, src_key_padding_mask=padding) * grad).sum().backward()

        return run

    return Impls(ours=step(ours), native=step(native))


def _flops(padded: bool) -> float:
    # Forward: the q, k, v and output projections, QK^T and PV over all heads (over the keys
    # computed at all: 3/4 of them with 25% padded), the two feedforward GEMMs; backward 2x
    # the linear layers and 2.5x the attention, as in the attention cases.
    linear = (4 * D_MODEL + 2 * FF) * 2.0 * BATCH * L * D_MODEL
    attention = 2 * 2.0 * BATCH * L * L * D_MODEL * (0.75 if padded else 1.0)
    return 3 * linear + 3.5 * attention


# CPU speedup target over nn.TransformerEncoderLayer (issue 13 names the padded case only).
TARGETS = {False: None, True: 1.05}  # padded -> target


def cases(device: str = "cpu", quick: bool = False) -> List[Case]:
    kinds = [True] if quick else [False, True]
    return [Case(name=f"encoder_layer/{'padded25' if padded else 'no_mask'}/fwd+bwd", op=OP,
                 shape=f"B{BATCH} L{L} d{D_MODEL} heads{HEADS} ff{FF}",
                 setup=lambda padded=padded: setup_case(padded, device), flops=_flops(padded),
                 target=TARGETS[padded] if device == "cpu" else None)
            for padded in kinds]
