"""attention cases: dll_ext.functional.scaled_dot_product_attention against
F.scaled_dot_product_attention with the equivalent mask, forward+backward.

Shape of the issue's CPU targets: B=8, H=8, E=64, L=S=512, float32 — the cases (KINDS):

* causal: is_causal=True;
* padding, padding50: the last 25% / 50% of the keys padded (ours takes the
  key_padding_mask, SDPA the equivalent boolean attn_mask);
* random: a random boolean mask of density 50% with no empty row;
* dropout: dropout_p=0.1, no mask (each side draws its own dropout mask);
* float_mask_grad: a float attn_mask of shape (1, H, L, S) that requires grad, so that its
  gradient is computed too;
* gqa: grouped-query attention, key and value with KV_HEADS heads, enable_gqa=True on both
  sides (PyTorch's CPU path repeats them to H heads); its peak memory is reported.

The loss is the sum of the output times a fixed random tensor. Also nn.MultiheadAttention
against dll_ext.nn.MultiheadAttention, and the forward's peak memory at L=S=4096 against the
naive softmax(q k^T) v.
"""
from typing import List

import torch
import torch.nn.functional as F

from dll_ext.benchmark.harness import Case, Impls

OP = "attention"
B, H, L, E = 8, 8, 512, 64
KINDS = ("causal", "padding", "padding50", "random", "dropout", "float_mask_grad", "gqa")
KV_HEADS = 2
PADDED = {"padding": 0.25, "padding50": 0.5}  # kind -> share of the keys padded


def setup_case(kind: str, device: str, dtype: torch.dtype = torch.float32) -> Impls:
    from dll_ext.functional import scaled_dot_product_attention

    generator = torch.Generator().manual_seed(0)
    kv_heads = KV_HEADS if kind == "gqa" else H
    q, k, v = [torch.randn(B, heads, L, E, generator=generator).to(device, dtype).requires_grad_()
               for heads in (H, kv_heads, kv_heads)]
    grad = torch.randn(B, H, L, E, generator=generator).to(device, dtype)
    leaves = [q, k, v]
    ours_kwargs, native_kwargs = {}, {}
    if kind == "causal":
        ours_kwargs = native_kwargs = {"is_causal": True}
    elif kind in PADDED:
        padded = torch.zeros(B, L, dtype=torch.bool, device=device)
        padded[:, L - int(L * PADDED[kind]):] = True
        ours_kwargs = {"key_padding_mask": padded}
        native_kwargs = {"attn_mask": ~padded[:, None, None, :]}
    elif kind == "random":
        allowed = torch.rand(L, L, generator=generator) > 0.5
        allowed[:, 0] = True
        ours_kwargs = native_kwargs = {"attn_mask": allowed.to(device)}
    elif kind == "dropout":
        ours_kwargs = native_kwargs = {"dropout_p": 0.1}
    elif kind == "float_mask_grad":
        mask = (torch.randn(1, H, L, L, generator=generator) * 0.5).to(device, dtype).requires_grad_()
        leaves.append(mask)
        ours_kwargs = native_kwargs = {"attn_mask": mask}
    elif kind == "gqa":
        ours_kwargs = native_kwargs = {"enable_gqa": True}
    else:
        raise ValueError(f"unknown attention case {kind!r}; known: {', '.join(KINDS)}")

    def step(fn, kwargs):
        def run():
            # The gradients of q, k, v (and the mask), returned rather than left in .grad: one
            # call's peak memory then excludes the previous call's gradients.
            return torch.autograd.grad((fn(q, k, v, **kwargs) * grad).sum(), leaves)

        return run

    return Impls(ours=step(scaled_dot_product_attention, ours_kwargs), native=step(F.scaled_dot_product_attention, native_kwargs))


def _flops(kind: str) -> float:
    # Forward 2 GEMMs (QK^T, PV), backward 5 (recomputed QK^T, dV, dP, dQ, dK), each
    # 2 L S E per (batch, head), counted over the positions that are computed at all: half
    # the score matrix under a causal mask, the unpadded share of the keys with padding, all
    # of it otherwise (dropout and a float mask change no GEMM).
    share = 0.5 if kind == "causal" else 1.0 - PADDED.get(kind, 0.0)
    return 7 * 2.0 * B * H * L * L * E * share


# CPU speedup targets over SDPA (issue 13), and MHA's.
TARGETS = {"causal": 1.2, "padding": 1.3, "padding50": 1.8, "random": 1.0, "dropout": 2.5, "float_mask_grad": 1.5,
           "gqa": 1.0}  # gqa: issue 15
MHA_TARGET = 1.05

# nn.MultiheadAttention self-attention: batch 16, L=256, d=512, 8 heads, need_weights=False.
MHA_BATCH, MHA_L, MHA_D, MHA_HEADS = 16, 256, 512, 8


def setup_mha(device: str) -> Impls:
    import torch.nn as nn

    from dll_ext.nn import MultiheadAttention

    torch.manual_seed(0)
    native = nn.MultiheadAttention(MHA_D, MHA_HEADS, batch_first=True, device=device)
    ours = MultiheadAttention(MHA_D, MHA_HEADS, batch_first=True, device=device)
    ours.load_state_dict(native.state_dict())
    x = torch.randn(MHA_BATCH, MHA_L, MHA_D, device=device, requires_grad=True)
    grad = torch.randn(MHA_BATCH, MHA_L, MHA_D, device=device)

    def step(module):
        def run():
            module.zero_grad(set_to_none=True)
            x.grad = None
            (module(x, x, x, need_weights=False)[0] * grad).sum().backward()

        return run

    return Impls(ours=step(ours), native=step(native))


# Peak memory of a forward at L=S=4096 (no grad), against the naive softmax(q k^T) v, which
# holds the (batch, H, L, S) scores and probabilities. Batch 1: both sides' memory grows
# linearly with the batch, and the naive side takes seconds per call.
MEMORY_L, MEMORY_BATCH = 4096, 1


def setup_memory(device: str) -> Impls:
    from dll_ext.functional import scaled_dot_product_attention

    generator = torch.Generator().manual_seed(0)
    q, k, v = [torch.randn(MEMORY_BATCH, H, MEMORY_L, E, generator=generator).to(device) for _ in range(3)]

    def ours():
        with torch.no_grad():
            scaled_dot_product_attention(q, k, v)

    def naive():
        with torch.no_grad():
            torch.softmax(q @ k.transpose(-1, -2) * E**-0.5, -1) @ v

    return Impls(ours=ours, native=naive)


def _mha_flops() -> float:
    projections = 4 * 2.0 * MHA_BATCH * MHA_L * MHA_D * MHA_D  # q, k, v and output
    attention = 2 * 2.0 * MHA_BATCH * MHA_L * MHA_L * MHA_D  # QK^T and PV over all heads
    return 3 * projections + 3.5 * attention  # backward: 2x the projections, 2.5x the attention


def cases(device: str = "cpu", quick: bool = False) -> List[Case]:
    # The bars are for the CPU; on CUDA the same cases report, in float32 (no TF32 on
    # either side's score GEMMs in ours) and, for the causal case, in the low-precision dtypes.
    targets = TARGETS if device == "cpu" else {}
    result = [Case(name=f"{kind}/L{L}/fwd+bwd", op=OP,
                   shape=f"B{B} H{H}" + (f" Hkv{KV_HEADS}" if kind == "gqa" else "") + f" L=S{L} E{E}",
                   setup=lambda kind=kind: setup_case(kind, device), flops=_flops(kind), target=targets.get(kind),
                   memory=kind == "gqa")
              for kind in KINDS]
    if device == "cuda":
        result += [Case(name=f"causal/L{L}/fwd+bwd/{str(dtype)[6:]}", op=OP, shape=f"B{B} H{H} L=S{L} E{E}",
                        setup=lambda dtype=dtype: setup_case("causal", device, dtype), flops=_flops("causal"),
                        dtype=dtype) for dtype in (torch.float16, torch.bfloat16)]
    if not quick:
        result.append(Case(name=f"memory/L{MEMORY_L}/fwd vs naive", op=OP,
                           shape=f"B{MEMORY_BATCH} H{H} L=S{MEMORY_L} E{E}", setup=lambda: setup_memory(device),
                           flops=2 * 2.0 * MEMORY_BATCH * H * MEMORY_L * MEMORY_L * E, memory=True))
    result.append(Case(name="mha/self/fwd+bwd", op=OP, shape=f"B{MHA_BATCH} L{MHA_L} d{MHA_D} heads{MHA_HEADS}",
                       setup=lambda: setup_mha(device), flops=_mha_flops(),
                       target=MHA_TARGET if device == "cpu" else None))
    return result
