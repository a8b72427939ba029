"""`dll-ext bench`: run the benchmark cases of every op (or one) and write the results.

Each op has a module here with `cases(device, quick) -> List[Case]`; a new op (lstm,
attention, ...) adds its module and one line to OPS.
"""
import importlib
import os
import sys
from typing import Dict, List, Optional

import torch

from dll_ext.benchmark.harness import Case, Settings, format_table, run_cases, write_json, write_plot

# op name -> module defining cases(device, quick)
OPS: Dict[str, str] = {
    "conv2d_relu": "dll_ext.benchmark.conv_relu",
    "lstm_cell": "dll_ext.benchmark.lstm_cell",
    "lstm_layer": "dll_ext.benchmark.lstm_layer",
    "attention": "dll_ext.benchmark.attention",
    "transformer": "dll_ext.benchmark.transformer",
    "training_step": "dll_ext.benchmark.training_step",
}


def collect_cases(device: str, quick: bool, op: Optional[str] = None) -> List[Case]:
    names = [op] if op else list(OPS)
    result: List[Case] = []
    for name in names:
        result += importlib.import_module(OPS[name]).cases(device=device, quick=quick)
    return result


def _cuda_problem() -> Optional[str]:
    if not torch.cuda.is_available():
        build = "a CPU-only torch build" if torch.version.cuda is None else "no usable CUDA GPU was found"
        return f"--device cuda needs a CUDA GPU, but CUDA is not available ({build}, torch {torch.__version__})"
    from dll_ext._loader import build_config

    if not build_config().WITH_CUDA:
        return ("--device cuda: dll_ext was built without its CUDA kernels; rebuild it with a CUDA "
                "toolkit (`pip install --no-build-isolation .`)")
    return None


def run_benchmarks(device: str = "cpu", quick: bool = False, op: Optional[str] = None,
                   out_dir: str = "bench-results") -> int:
    """Run, print the table, write <out_dir>/<op|all>-<device>[-quick].json and .png; 0 on success,
    2 on a request that cannot run here."""
    if op is not None and op not in OPS:
        print(f"dll-ext bench: unknown op {op!r}; known: {', '.join(OPS)}", file=sys.stderr)
        return 2
    if device == "cuda":
        problem = _cuda_problem()
        if problem:
            print(f"dll-ext bench: {problem}", file=sys.stderr)
            return 2
    elif device != "cpu":
        print(f"dll-ext bench: unknown device {device!r}; use cpu or cuda", file=sys.stderr)
        return 2

    cases = collect_cases(device, quick, op)
    settings = Settings.for_run(device, quick)
    run = run_cases(cases, device, settings, log=lambda line: print(line, flush=True))
    run["quick"] = quick
    print()
    print(format_table(run))

    stem = os.path.join(out_dir, f"{op or 'all'}-{device}{'-quick' if quick else ''}")
    write_json(run, stem + ".json")
    print(f"\nresults: {stem}.json")
    if write_plot(run, stem + ".png"):
        print(f"plot:    {stem}.png")
    else:
        print("plot skipped: matplotlib is not installed (pip install 'dll_ext[bench]' or matplotlib)")
    return 0
