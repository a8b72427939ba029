"""A small, generic harness that times dll_ext ops against native PyTorch.

A Case names one workload; its setup() builds the inputs and returns the callables to time:
ours, native, and optionally extra baselines (e.g. torch.compile of native). For each case
the harness

* warms every callable up (compilation, allocator caches, oneDNN/cuDNN plans), outside timing;
* picks a number of calls per sample so that one sample lasts at least Settings.min_sample_s;
* takes Settings.rounds samples of every callable, interleaved in the same process and in a
  rotating order each round, so that drift (clock, thermal, other load) hits all alike;
* reports per-call medians, the inter-quartile range and min/max, the speedup
  native_median / ours_median, the median of the per-round ratios (paired, so less sensitive
  to drift), and GFLOP/s and % of the measured peak when the case gives a FLOP count.

On CUDA a sample is timed with CUDA events after a synchronize, so it measures the device
work, not the launch. The machine peak is the best GEMM rate in the case's dtype (fp32 for
fp32 cases) on the same device, measured before and after the cases of a run. The run's log
and table name the CPU (model, ISA, caches; dll_ext.cpu_info) and the peak, and its record's
"environment" keeps them (cpu_model, cpu_isa, cpu_caches), so that figures from different
machine classes can be told apart.
"""
import gc
import json
import math
import os
import platform
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from dll_ext.cpu_info import cpu_info, describe, format_caches

Fn = Callable[[], Any]
_MIB = 1 << 20

__all__ = ["Case", "Impls", "Settings", "format_table", "measure_peak", "peak_memory_mib", "run_cases",
           "steady_state_malloc", "time_case", "write_json", "write_plot"]


@dataclass
class Impls:
    """The callables of one case. Each call runs the workload once (no arguments)."""

    ours: Fn
    native: Fn
    baselines: Dict[str, Fn] = field(default_factory=dict)  # name -> callable, e.g. "compiled"

    def items(self) -> List[Tuple[str, Fn]]:
        return [("ours", self.ours), ("native", self.native)] + list(self.baselines.items())


@dataclass
class Case:
    name: str  # unique within a run, e.g. "resnet/fwd"
    op: str  # the dll_ext op it exercises, e.g. "conv2d_relu"
    shape: str  # human-readable description of the sizes
    setup: Callable[[], Union[Impls, Tuple[Fn, Fn], Tuple[Fn, Fn, Dict[str, Fn]]]]
    flops: Optional[float] = None  # floating-point operations of one call, if known
    dtype: torch.dtype = torch.float32  # selects the peak to compare with
    target: Optional[float] = None  # the speedup over native that ours should reach
    memory: bool = False  # also measure the peak memory of one call of ours and native


@dataclass
class Settings:
    warmup: int = 3  # calls of each callable before calibration
    rounds: int = 15  # timed samples of each callable
    min_sample_s: float = 0.05  # a sample repeats the call until it lasts at least this

    @classmethod
    def for_run(cls, device: str, quick: bool) -> "Settings":
        if quick:
            return cls(warmup=2, rounds=11, min_sample_s=0.02 if device == "cpu" else 0.005)
        return cls(warmup=3, rounds=21, min_sample_s=0.05 if device == "cpu" else 0.02)


def _as_impls(value) -> Impls:
    if isinstance(value, Impls):
        return value
    if len(value) == 2:
        return Impls(value[0], value[1])
    return Impls(value[0], value[1], dict(value[2]))


def _sample(fn: Fn, number: int, device: torch.device) -> float:
    """Seconds per call of `number` back-to-back calls, garbage collection off."""
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(number):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3 / number
        begin = time.perf_counter()
        for _ in range(number):
            fn()
        return (time.perf_counter() - begin) / number
    finally:
        if gc_was_enabled:
            gc.enable()


def _calibrate(fn: Fn, device: torch.device, min_sample_s: float) -> int:
    """Calls per sample so that a sample lasts at least min_sample_s."""
    number = 1
    while True:
        per_call = _sample(fn, number, device)
        if per_call * number >= min_sample_s or number >= 1 << 16:
            return number
        wanted = math.ceil(1.2 * min_sample_s / max(per_call, 1e-9))
        number = min(max(wanted, 2 * number), 1 << 16)


def _stats(samples: Sequence[float]) -> Dict[str, Any]:
    ms = np.asarray(samples, dtype=np.float64) * 1e3
    q1, median, q3 = np.percentile(ms, [25, 50, 75])
    return {"median_ms": float(median), "q1_ms": float(q1), "q3_ms": float(q3),
            "min_ms": float(ms.min()), "max_ms": float(ms.max()), "samples_ms": [float(v) for v in ms]}


def measure_peak(device: Union[str, torch.device] = "cpu", dtype: torch.dtype = torch.float32,
                 size: Optional[int] = None, repeats: int = 5) -> Dict[str, Any]:
    """The machine's GEMM rate: the best of `repeats` timed (size x size) @ (size x size).

    On CUDA in fp32 the matmul may use TF32 exactly when cuDNN convolutions may
    (torch.backends.cudnn.allow_tf32), so that the peak is of the math the convs get.
    """
    device = torch.device(device)
    size = size or (2048 if device.type == "cpu" else 8192)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    tf32 = None
    saved_tf32 = None
    if device.type == "cuda" and dtype == torch.float32:
        saved_tf32 = torch.backends.cuda.matmul.allow_tf32
        tf32 = bool(torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        fn = lambda: torch.mm(a, b)  # noqa: E731
        for _ in range(2):
            fn()
        number = _calibrate(fn, device, 0.05)
        best = min(_sample(fn, number, device) for _ in range(repeats))
    finally:
        if saved_tf32 is not None:
            torch.backends.cuda.matmul.allow_tf32 = saved_tf32
    return {"gflops": 2.0 * size**3 / best / 1e9, "dtype": str(dtype).replace("torch.", ""),
            "gemm": f"{size}x{size}x{size}", "method": f"best of {repeats}", "tf32": tf32}


def peak_memory_mib(fn: Fn, device: Union[str, torch.device]) -> float:
    """The most memory one call of fn holds at once beyond what was allocated before it, in
    MiB: on CUDA from the caching allocator's peak, on the CPU from the profiler's memory
    timeline (every tensor allocation and free)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / _MIB
    import tempfile

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        fn()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "timeline.raw.json")
        prof.export_memory_timeline(path, device="cpu")
        with open(path) as f:
            _, sizes = json.load(f)
    totals = [sum(categories) for categories in sizes]
    return (max(totals) - totals[0]) / _MIB if totals else 0.0


def time_case(case: Case, device: Union[str, torch.device], settings: Settings) -> Dict[str, Any]:
    """Time one case; returns its result record (see the module docstring). GFLOP/s are set
    when the case has a FLOP count; run_cases adds the % of peak."""
    device = torch.device(device)
    impls = _as_impls(case.setup()).items()
    for _, fn in impls:
        for _ in range(settings.warmup):
            fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    number = max(_calibrate(fn, device, settings.min_sample_s) for _, fn in impls)
    samples: Dict[str, List[float]] = {name: [] for name, _ in impls}
    for r in range(settings.rounds):
        shift = r % len(impls)
        for name, fn in impls[shift:] + impls[:shift]:
            samples[name].append(_sample(fn, number, device))

    result: Dict[str, Any] = {
        "name": case.name, "op": case.op, "shape": case.shape, "device": str(device),
        "dtype": str(case.dtype).replace("torch.", ""), "flops": case.flops, "target": case.target,
        "calls_per_sample": number, "rounds": settings.rounds, "impls": {},
    }
    for name, values in samples.items():
        stats = _stats(values)
        if case.flops:
            stats["gflops"] = case.flops / (stats["median_ms"] / 1e3) / 1e9
        result["impls"][name] = stats
    if case.memory:
        for name, fn in impls[:2]:
            result["impls"][name]["peak_mib"] = peak_memory_mib(fn, device)
    ours = np.asarray(samples["ours"])
    result["speedup"] = result["impls"]["native"]["median_ms"] / result["impls"]["ours"]["median_ms"]
    paired = np.asarray(samples["native"]) / ours
    result["paired_speedup"] = {"median": float(np.median(paired)),
                                "q1": float(np.percentile(paired, 25)), "q3": float(np.percentile(paired, 75))}
    # For each extra baseline, how much faster ours is than it (baseline_median / ours_median).
    result["vs_baselines"] = {name: result["impls"][name]["median_ms"] / result["impls"]["ours"]["median_ms"]
                              for name in samples if name not in ("ours", "native")}
    result["meets_target"] = None if case.target is None else bool(result["speedup"] >= case.target)
    return result


def steady_state_malloc() -> str:
    """Pin glibc malloc to the state a long-running process reaches, and say what was done.

    glibc raises its mmap threshold, up to 32 MiB, each time it frees an mmapped block: until
    then every large tensor is a fresh mmap whose pages fault in on first touch, afterwards
    it is reused heap memory. How far the threshold has moved depends on what ran before, so a
    case's figures would depend on the cases before it (a 16 MiB activation is either 3x
    slower or not). Fixing the threshold at 32 MiB (the cap of glibc's own adjustment) and the
    trim threshold at 64 MiB (twice that, as glibc sets it) gives every case the state of a
    training loop that has run a while: smaller blocks are reused, blocks over 32 MiB are
    still mmapped on every allocation, as in such a loop. Left alone when the user chose the allocator
    (LD_PRELOAD) or glibc's settings (MALLOC_*_ environment variables), or off glibc.
    """
    if os.environ.get("LD_PRELOAD"):
        return f"not changed (LD_PRELOAD={os.environ['LD_PRELOAD']})"
    chosen = [k for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_") if k in os.environ]
    if chosen:
        return "not changed (" + ", ".join(f"{k}={os.environ[k]}" for k in chosen) + ")"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "not changed (not glibc)"
    import ctypes

    libc = ctypes.CDLL(None)
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    if libc.mallopt(m_mmap_threshold, 32 * _MIB) != 1 or libc.mallopt(m_trim_threshold, 64 * _MIB) != 1:
        return "not changed (mallopt failed)"
    return "glibc mmap threshold 32 MiB, trim threshold 64 MiB (steady state)"


def _environment(device: torch.device) -> Dict[str, Any]:
    cpu = cpu_info()
    env = {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
           "processor": platform.processor() or None, "cpu_model": cpu["model"], "cpu_isa": cpu["isa"],
           "cpu_caches": cpu["caches"], "cpu_logical": cpu["logical_cpus"], "cpu_threads": cpu["threads"],
           "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    env["allocator_env"] = {k: v for k, v in os.environ.items()
                            if k.startswith("MALLOC_") or k in ("LD_PRELOAD", "OMP_NUM_THREADS")}
    if hasattr(os, "getloadavg"):  # other load on the machine skews the figures; record it
        env["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    try:
        import dll_ext

        env["dll_ext"] = dll_ext.__version__
    except ImportError:
        pass
    if device.type == "cuda":
        env["cuda_device"] = torch.cuda.get_device_name(device)
        env["cuda_runtime"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
        env["cudnn_benchmark"] = bool(torch.backends.cudnn.benchmark)
        env["cudnn_allow_tf32"] = bool(torch.backends.cudnn.allow_tf32)
    return env


def _measure_peaks(cases: Sequence[Case], device: torch.device, log: Callable[[str], None]) -> Dict[str, Dict[str, Any]]:
    peaks = {}
    for dtype in dict.fromkeys(case.dtype for case in cases if case.flops):
        key = str(dtype).replace("torch.", "")
        peaks[key] = measure_peak(device, dtype)
        log(f"{key} GEMM peak on {device}: {peaks[key]['gflops']:.1f} GFLOP/s ({peaks[key]['gemm']}, {peaks[key]['method']})")
    return peaks


def run_cases(cases: Sequence[Case], device: Union[str, torch.device], settings: Settings,
              log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Time every case, and the GEMM peak of each dtype used before and after them (the
    higher of the two is the peak: on a shared machine other load only ever lowers it).
    Returns the run record."""
    device = torch.device(device)
    log(f"cpu: {describe(cpu_info())}")
    if device.type == "cuda":
        log(f"cuda: {torch.cuda.get_device_name(device)}")
    malloc = steady_state_malloc() if device.type == "cpu" else "not changed (CUDA run)"
    log(f"malloc: {malloc}")
    load_start = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    before = _measure_peaks(cases, device, log)
    results = []
    for i, case in enumerate(cases, 1):
        log(f"[{i}/{len(cases)}] {case.name}  ({case.shape}, {str(case.dtype).replace('torch.', '')})")
        result = time_case(case, device, settings)
        log(f"  ours {result['impls']['ours']['median_ms']:.3f} ms, native "
            f"{result['impls']['native']['median_ms']:.3f} ms, speedup {result['speedup']:.3f}x")
        results.append(result)
    after = _measure_peaks(cases, device, log)
    peaks = {}
    for key in before:
        peaks[key] = max(before[key], after[key], key=lambda p: p["gflops"])
        peaks[key]["gflops_before_after"] = [before[key]["gflops"], after[key]["gflops"]]
    for result in results:
        peak = peaks.get(result["dtype"], {}).get("gflops")
        for stats in result["impls"].values():
            if "gflops" in stats and peak:
                stats["pct_peak"] = 100.0 * stats["gflops"] / peak
    env = _environment(device)
    env["loadavg_1m_start"] = load_start
    env["malloc"] = malloc
    return {"environment": env, "device": str(device),
            "settings": settings.__dict__.copy(), "peak": peaks, "cases": results}


def _ms(stats: Dict[str, Any]) -> str:
    median, q1, q3 = stats["median_ms"], stats["q1_ms"], stats["q3_ms"]
    digits = 3 if median < 1 else 2 if median < 100 else 1
    return f"{median:.{digits}f} [{q1:.{digits}f}-{q3:.{digits}f}]"


def _rate(stats: Dict[str, Any]) -> str:
    if stats.get("gflops") is None:
        return "-"
    pct = stats.get("pct_peak")
    return f"{stats['gflops']:.1f}" + (f" ({pct:.0f}%)" if pct is not None else "")


def format_table(run: Dict[str, Any]) -> str:
    """The run as a plain-text table: per-call medians [IQR] in ms, speedups, GFLOP/s (% of peak)."""
    cases = run["cases"]
    extras = list(dict.fromkeys(name for c in cases for name in c["vs_baselines"]))
    header = ["case", "shape", "dtype", "ours ms [IQR]", "native ms [IQR]", "speedup", "paired [IQR]",
              "ours GF/s (%pk)", "native GF/s (%pk)"]
    for name in extras:
        header += [f"{name} ms [IQR]", f"ours vs {name}"]
    memory = any("peak_mib" in c["impls"]["ours"] for c in cases)
    if memory:
        header.append("peak MiB ours/native")
    header.append("target")
    rows = [header]
    for c in cases:
        p = c["paired_speedup"]
        row = [c["name"], c["shape"], c["dtype"], _ms(c["impls"]["ours"]), _ms(c["impls"]["native"]),
               f"{c['speedup']:.3f}x", f"{p['median']:.3f} [{p['q1']:.2f}-{p['q3']:.2f}]",
               _rate(c["impls"]["ours"]), _rate(c["impls"]["native"])]
        for name in extras:
            if name in c["vs_baselines"]:
                row += [_ms(c["impls"][name]), f"{c['vs_baselines'][name]:.3f}x"]
            else:
                row += ["-", "-"]
        if memory:
            mib = [c["impls"][name].get("peak_mib") for name in ("ours", "native")]
            row.append("-" if mib[0] is None else f"{mib[0]:.1f} / {mib[1]:.1f}")
        if c["target"] is None:
            row.append("-")
        else:
            verdict = "ok" if c["meets_target"] else f"MISS by {100 * (c['target'] - c['speedup']):.1f} pts"
            row.append(f">={c['target']:.2f}x {verdict}")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    env = run["environment"]
    model = env.get("cpu_model") or env.get("processor") or env["machine"]
    cpu = f"{model}, {env['cpu_isa']}, {env['cpu_threads']} threads"
    if env.get("cpu_caches"):
        cpu += f", caches {format_caches(env['cpu_caches'])}"
    where = f"{env['cuda_device']}; host {cpu}" if env.get("cuda_device") else cpu
    peaks = ", ".join(f"{k} {v['gflops']:.1f} GFLOP/s ({v['gemm']} GEMM, {v['method']}, higher of before/after"
                      + (f", tf32={v['tf32']}" if v.get("tf32") is not None else "") + ")"
                      for k, v in run["peak"].items())
    s = run["settings"]
    load = ""
    if env.get("loadavg_1m_start") is not None:
        load = f"; load average {env['loadavg_1m_start']} -> {env['loadavg_1m_end']}"
    foot = [f"device {run['device']} ({where}), torch {env['torch']}{load}; malloc: {env.get('malloc')}",
            f"peak: {peaks or 'not measured'}",
            f"{s['rounds']} interleaved rounds per case, warm-up {s['warmup']}, >= {s['min_sample_s'] * 1e3:.0f} ms "
            "per sample; speedup = native median / ours median; paired = median [IQR] of per-round ratios"]
    if extras:
        foot.append("ours vs X = X median / ours median (> 1: ours is faster)")
    return "\n".join(lines + [""] + foot)


def write_json(run: Dict[str, Any], path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(run, f, indent=2)


def write_plot(run: Dict[str, Any], path: str) -> bool:
    """Bars of ours' speedup over native (and over each extra baseline) per case, with the
    paired IQR as error bars. Returns False, without writing, when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    cases = run["cases"]
    extras = list(dict.fromkeys(name for c in cases for name in c["vs_baselines"]))
    series = ["native"] + extras
    x = np.arange(len(cases))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(cases) + 2), 4.5))
    for i, name in enumerate(series):
        if name == "native":
            values = [c["speedup"] for c in cases]
            err = np.array([[max(0.0, c["speedup"] - c["paired_speedup"]["q1"]) for c in cases],
                            [max(0.0, c["paired_speedup"]["q3"] - c["speedup"]) for c in cases]])
        else:
            values = [c["vs_baselines"].get(name, np.nan) for c in cases]
            err = None
        ax.bar(x + (i - (len(series) - 1) / 2) * width, values, width, yerr=err, capsize=3,
               label=f"ours vs {name} eager" if name == "native" else f"ours vs {name}")
    for i, c in enumerate(cases):
        if c["target"] is not None:
            ax.hlines(c["target"], i - 0.45, i + 0.45, colors="red", linestyles="dotted")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels([f"{c['name']}\n{c['dtype']}" for c in cases], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("speedup (baseline median / ours median)")
    env = run["environment"]
    ax.set_title(f"dll_ext vs PyTorch on {run['device']} (torch {env['torch']}); error bars: paired IQR; red dots: targets",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
