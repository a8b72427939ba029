"""Call every dll_ext kernel once, forward and backward, and check each result.

Written for compute-sanitizer (memcheck, racecheck) on the GPU machine, where every launch
is about 100x slower: the sizes are tiny, but cross the CUDA kernels' tile edges (32 keys,
16 query rows per block) so that partial tiles are touched. Every case is checked for
finite values and against a float64 reference computed on the CPU (where the sanitizer
does not slow it down), with loose per-dtype tolerances: a wrong index gives errors of
order one, rounding does not.

Prints one line per case (OK or FAIL, name, largest error relative to the reference's
scale) and exits 1 if any case fails.

    python3 scripts/gpu_smoke.py --device cuda [--ops attention,conv2d_relu] [--dtypes float32]
"""
import argparse
import math
import sys
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence

import dll_ext.ops  # loads the library: torch.ops.dll_ext

OPS = ("conv2d_relu", "lstm_cell", "lstm_layer", "lstm_layer_packed", "attention")
# The dtypes the GPU runs; float64 is covered by the CPU test suite.
SMOKE_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Largest error allowed, relative to max(1, max |reference|).
TOLERANCE = {torch.float32: 1e-3, torch.float16: 1e-2, torch.bfloat16: 5e-2}
ATTENTION_HEAD_DIMS = (8, 256)  # the smallest and the largest the CUDA kernels take
DROPOUT_SEED = 12345

# (what, kernel's tensor, float64 reference)
Comparison = Tuple[str, torch.Tensor, torch.Tensor]


class Inputs:
    """Random tensors for one case: each drawn in float64, rounded to the case's dtype, and
    kept both as the kernel's input (on the device) and as a float64 CPU leaf holding the
    same rounded values, so that the comparison measures the kernel's error only."""

    def __init__(self, device: str, dtype: torch.dtype):
        self.device, self.dtype = device, dtype
        self.kernel: List[torch.Tensor] = []
        self.reference: List[torch.Tensor] = []

    def add(self, *shape: int, scale: float = 1.0,
            memory_format: torch.memory_format = torch.contiguous_format) -> Tuple[torch.Tensor, torch.Tensor]:
        rounded = (torch.randn(shape, dtype=torch.float64) * scale).to(self.dtype)
        kernel = rounded.to(self.device).contiguous(memory_format=memory_format).requires_grad_()
        reference = rounded.double().requires_grad_()
        self.kernel.append(kernel)
        self.reference.append(reference)
        return kernel, reference

    def upstream(self, like: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        rounded = torch.randn(like.shape, dtype=torch.float64).to(self.dtype)
        return rounded.to(self.device), rounded.double()

    def gradients(self, outputs: Sequence[torch.Tensor], references: Sequence[torch.Tensor],
                  names: Sequence[str]) -> List[Comparison]:
        """The gradients of every input that requires grad, for one random upstream gradient
        per output, from the kernel and from the reference."""
        upstream = [self.upstream(out) for out in outputs]
        got = torch.autograd.grad(outputs, self.kernel, [k for k, _ in upstream])
        want = torch.autograd.grad(references, self.reference, [r for _, r in upstream])
        return [(f"grad {name}", g, w) for name, g, w in zip(names, got, want, strict=True)]


# ----------------------------------------------------------------------------------------
# conv2d_relu
# ----------------------------------------------------------------------------------------


def conv2d_relu_case(device: str, dtype: torch.dtype, channels_last: bool, bias: bool) -> List[Comparison]:
    t = Inputs(device, dtype)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x, x64 = t.add(2, 3, 9, 11, memory_format=layout)
    w, w64 = t.add(5, 3, 3, 3, scale=0.3, memory_format=layout)
    b, b64 = t.add(5) if bias else (None, None)
    out = torch.ops.dll_ext.conv2d_relu(x, w, b, [1, 1], [1, 1], [1, 1], 1)
    pre = F.conv2d(x64, w64, b64, 1, 1)
    # The kernel's own ReLU mask: in low precision a pre-activation within rounding of zero
    # may land on either side, and the gradients are compared given the same mask.
    passed = (out.detach() > 0).cpu().double()
    names = ["input", "weight"] + (["bias"] if bias else [])
    return [("output", out, F.relu(pre))] + t.gradients([out], [pre * passed], names)


# ----------------------------------------------------------------------------------------
# LSTM
# ----------------------------------------------------------------------------------------

LSTM_SIZES = dict(steps=6, batch=3, input_size=5, hidden=7)
LSTM_LENGTHS = [6, 2, 4]  # unsorted, and the longest fills the padded length
LSTM_PARAMS = ["w_ih", "w_hh", "b_ih", "b_hh"]


def lstm_step(x, h, c, w_ih, w_hh, b_ih, b_hh):
    i, f, g, o = (x @ w_ih.T + h @ w_hh.T + b_ih + b_hh).chunk(4, -1)
    c = f.sigmoid() * c + i.sigmoid() * g.tanh()
    return o.sigmoid() * c.tanh(), c


def lstm_layer_reference(x, h0, c0, params, lengths: Optional[List[int]], reverse: bool):
    """output (zero past each length), h_n, c_n, stepping each sequence on its own."""
    steps, batch = x.shape[:2]
    lengths = lengths or [steps] * batch
    columns, h_n, c_n = [], [], []
    for b in range(batch):
        h, c = h0[b], c0[b]
        outputs = {}
        order = range(lengths[b] - 1, -1, -1) if reverse else range(lengths[b])
        for t in order:
            h, c = lstm_step(x[t, b], h, c, *params)
            outputs[t] = h
        columns.append(torch.stack([outputs.get(t, torch.zeros_like(h)) for t in range(steps)]))
        h_n.append(h)
        c_n.append(c)
    return torch.stack(columns, 1), torch.stack(h_n), torch.stack(c_n)


def lstm_tensors(t: Inputs, with_sequence: bool):
    s = LSTM_SIZES
    k = 1.0 / math.sqrt(s["hidden"])
    x = t.add(s["steps"], s["batch"], s["input_size"]) if with_sequence else t.add(s["batch"], s["input_size"])
    h = t.add(s["batch"], s["hidden"], scale=0.5)
    c = t.add(s["batch"], s["hidden"])
    params = [t.add(4 * s["hidden"], s["input_size"], scale=k), t.add(4 * s["hidden"], s["hidden"], scale=k),
              t.add(4 * s["hidden"], scale=k), t.add(4 * s["hidden"], scale=k)]
    return x, h, c, params


def lstm_cell_case(device: str, dtype: torch.dtype) -> List[Comparison]:
    t = Inputs(device, dtype)
    (x, x64), (h, h64), (c, c64), params = lstm_tensors(t, with_sequence=False)
    hy, cy = torch.ops.dll_ext.lstm_cell(x, h, c, *(p for p, _ in params))
    r_h, r_c = lstm_step(x64, h64, c64, *(r for _, r in params))
    return [("h", hy, r_h), ("c", cy, r_c)] + t.gradients([hy, cy], [r_h, r_c], ["input", "hx", "cx"] + LSTM_PARAMS)


def lstm_layer_case(device: str, dtype: torch.dtype, with_lengths: bool, reverse: bool) -> List[Comparison]:
    t = Inputs(device, dtype)
    (x, x64), (h, h64), (c, c64), params = lstm_tensors(t, with_sequence=True)
    lengths = LSTM_LENGTHS if with_lengths else None
    lengths_arg = None if lengths is None else torch.tensor(lengths, dtype=torch.int64)  # CPU, as the op requires
    out, h_n, c_n = torch.ops.dll_ext.lstm_layer(x, h, c, *(p for p, _ in params), lengths_arg, reverse)
    ref = lstm_layer_reference(x64, h64, c64, [r for _, r in params], lengths, reverse)
    names = ["input", "hx", "cx"] + LSTM_PARAMS
    return [(n, a, e) for n, a, e in zip(("output", "h_n", "c_n"), (out, h_n, c_n), ref)] + t.gradients(
        [out, h_n, c_n], ref, names)


def lstm_layer_packed_case(device: str, dtype: torch.dtype) -> List[Comparison]:
    t = Inputs(device, dtype)
    (x, x64), (h, h64), (c, c64), params = lstm_tensors(t, with_sequence=True)
    packed = pack_padded_sequence(x, LSTM_LENGTHS, enforce_sorted=False)
    order = packed.sorted_indices
    out, h_n, c_n = torch.ops.dll_ext.lstm_layer_packed(packed.data, packed.batch_sizes, h[order], c[order],
                                                        *(p for p, _ in params), False)
    r_out, r_h, r_c = lstm_layer_reference(x64, h64, c64, [r for _, r in params], LSTM_LENGTHS, False)
    r_packed = pack_padded_sequence(r_out, LSTM_LENGTHS, enforce_sorted=False).data
    r_order = order.cpu()
    ref = [r_packed, r_h[r_order], r_c[r_order]]
    names = ["input", "hx", "cx"] + LSTM_PARAMS
    return [(n, a, e) for n, a, e in zip(("output", "h_n", "c_n"), (out, h_n, c_n), ref)] + t.gradients(
        [out, h_n, c_n], ref, names)


# ----------------------------------------------------------------------------------------
# attention
# ----------------------------------------------------------------------------------------

ATTENTION_SIZES = dict(batch=2, heads=2, queries=37, keys=45)
ATTENTION_MASKS = ("none", "causal", "bool_mask", "float_mask", "key_padding", "dropout")


def attention_reference(q, k, v, attn_mask, key_padding_mask, is_causal):
    """softmax(q k^T / sqrt(E) + masks) v; a row whose keys are all masked gives zeros."""
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if attn_mask is not None:
        s = s.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else s + attn_mask
    if key_padding_mask is not None:
        s = s.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    if is_causal:
        s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(s, -1).nan_to_num(0.0) @ v


def attention_masks(t: Inputs, mask: str):
    """(attn_mask, its reference, key_padding_mask, its reference, is_causal, dropout_p)."""
    B, H, L, S = (ATTENTION_SIZES[n] for n in ("batch", "heads", "queries", "keys"))
    if mask == "bool_mask":
        allowed = torch.rand(B, H, L, S) > 0.4
        allowed[..., 0] = True  # no fully masked row: the reference's zeros would hide nothing
        return allowed.to(t.device), allowed, None, None, False, 0.0
    if mask == "float_mask":
        additive, additive64 = t.add(B, H, L, S)
        return additive, additive64, None, None, False, 0.0
    if mask == "key_padding":
        padded = torch.rand(B, S) > 0.7
        padded[:, 0] = False
        return None, None, padded.to(t.device), padded, False, 0.0
    return None, None, None, None, mask == "causal", 0.3 if mask == "dropout" else 0.0


def attention_case(device: str, dtype: torch.dtype, mask: str, head_dim: int) -> List[Comparison]:
    t = Inputs(device, dtype)
    B, H, L, S = (ATTENTION_SIZES[n] for n in ("batch", "heads", "queries", "keys"))
    q, q64 = t.add(B, H, L, head_dim)
    k, k64 = t.add(B, H, S, head_dim)
    v, v64 = t.add(B, H, S, head_dim)
    attn_mask, mask64, padding, padding64, causal, dropout_p = attention_masks(t, mask)
    seed = torch.tensor([DROPOUT_SEED], dtype=torch.int64) if dropout_p > 0 else None
    out = torch.ops.dll_ext.attention(q, k, v, attn_mask, padding, causal, None, dropout_p, seed)
    if dropout_p > 0:
        # The dropout mask is a hash of the seed that every device computes alike, and the CPU
        # kernel is held to that hash by tests/test_attention.py: in float64 it is the reference.
        expected = torch.ops.dll_ext.attention(q64, k64, v64, None, None, False, None, dropout_p, seed)
    else:
        expected = attention_reference(q64, k64, v64, mask64, padding64, causal)
    names = ["query", "key", "value"] + (["attn_mask"] if mask == "float_mask" else [])
    return [("output", out, expected)] + t.gradients([out], [expected], names)


# ----------------------------------------------------------------------------------------
# Running the cases
# ----------------------------------------------------------------------------------------

Case = Tuple[str, torch.dtype, Callable[[], List[Comparison]]]


def op_cases(op: str, device: str, dtype: torch.dtype) -> Iterator[Tuple[str, Callable[[], List[Comparison]]]]:
    """(name, thunk) of every case of one op in one dtype."""
    if op == "conv2d_relu":
        for layout in ("nchw", "channels_last"):
            for bias in (True, False):
                yield (f"{layout}/{'bias' if bias else 'no_bias'}",
                       lambda layout=layout, bias=bias: conv2d_relu_case(device, dtype, layout == "channels_last", bias))
    elif op == "lstm_cell":
        yield "step", lambda: lstm_cell_case(device, dtype)
    elif op == "lstm_layer":
        for variant, with_lengths, reverse in (("padded", False, False), ("lengths", True, False),
                                               ("lengths_reverse", True, True)):
            yield variant, lambda w=with_lengths, r=reverse: lstm_layer_case(device, dtype, w, r)
    elif op == "lstm_layer_packed":
        yield "unsorted", lambda: lstm_layer_packed_case(device, dtype)
    elif op == "attention":
        for mask in ATTENTION_MASKS:
            for head_dim in ATTENTION_HEAD_DIMS:
                yield f"{mask}/E{head_dim}", lambda m=mask, e=head_dim: attention_case(device, dtype, m, e)


def smoke_dtypes(op: str, device: str) -> List[torch.dtype]:
    """The dtypes of SMOKE_DTYPES that the op's kernels on this device take and the device runs."""
    table_name = "lstm_layer" if op == "lstm_layer_packed" else op
    supported = dll_ext.ops.supported_dtypes(table_name, device)
    runnable = [d for d in SMOKE_DTYPES if d in supported]
    if device == "cuda" and not torch.cuda.is_bf16_supported():
        runnable = [d for d in runnable if d != torch.bfloat16]
    return runnable


def all_cases(device: str, ops: Sequence[str], dtypes: Optional[Sequence[torch.dtype]]) -> List[Case]:
    cases = []
    for op in ops:
        for dtype in smoke_dtypes(op, device):
            if dtypes is None or dtype in dtypes:
                for name, thunk in op_cases(op, device, dtype):
                    cases.append((f"{op}/{name}/{str(dtype).replace('torch.', '')}", dtype, thunk))
    return cases


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    a, e = actual.detach().cpu().double(), expected.detach().cpu().double()
    if a.shape != e.shape:
        raise ValueError(f"shape {tuple(a.shape)}, expected {tuple(e.shape)}")
    if not torch.isfinite(a).all():
        return math.inf
    return (a - e).abs().max().item() / max(1.0, e.abs().max().item()) if a.numel() else 0.0


def run_case(name: str, dtype: torch.dtype, thunk: Callable[[], List[Comparison]]) -> bool:
    tolerance = TOLERANCE[dtype]
    try:
        errors = [(what, relative_error(a, e)) for what, a, e in thunk()]
    except Exception as exc:  # a kernel's error is this case's failure; the next cases still run
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"FAIL  {name:<44} {type(exc).__name__}: {message}", flush=True)
        return False
    what, worst = max(errors, key=lambda pair: pair[1])
    ok = worst <= tolerance  # a NaN error fails too
    print(f"{'OK' if ok else 'FAIL':<4}  {name:<44} max err {worst:.2e} ({what}; tol {tolerance:.0e})", flush=True)
    return ok


def parse_list(text: str, known: Dict[str, object], what: str) -> list:
    names = [n for n in text.split(",") if n]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(unknown)}; known: {', '.join(known)}")
    return [known[n] for n in names]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda")
    parser.add_argument("--ops", type=lambda s: parse_list(s, {op: op for op in OPS}, "op"), default=list(OPS),
                        help=f"comma-separated, of {', '.join(OPS)} (default: all)")
    dtype_names = {str(d).replace("torch.", ""): d for d in SMOKE_DTYPES}
    parser.add_argument("--dtypes", type=lambda s: parse_list(s, dtype_names, "dtype"), default=None,
                        help=f"comma-separated, of {', '.join(dtype_names)} (default: every one the op takes)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_smoke: --device cuda, but no CUDA GPU is usable here", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    cases = all_cases(args.device, args.ops, args.dtypes)
    failed = sum(not run_case(*case) for case in cases)
    print(f"smoke: {len(cases)} cases on {args.device}, {failed} failed", flush=True)
    return 1 if failed or not cases else 0


if __name__ == "__main__":
    sys.exit(main())
