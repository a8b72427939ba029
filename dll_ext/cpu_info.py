"""The CPU this process runs on: model name, the ISA torch's kernels use, and the cache sizes.

`dll-ext info` shows it and `dll-ext bench` records it, so that figures taken on different
machine classes (cache sizes, AVX-512 or AVX2, FMA units) can be told apart. On Linux the
model comes from /proc/cpuinfo and the caches from /sys/devices/system/cpu/cpu*/cache;
elsewhere the model is platform.processor() and the caches are unknown. Never raises.
"""
import glob
import os
import platform
from typing import Dict, Optional

import torch

_SYS_CPU = "/sys/devices/system/cpu"


def _read(path: str) -> Optional[str]:
    try:
        with open(path, errors="replace") as f:
            return f.read().strip()
    except (OSError, ValueError):
        return None


def cpu_model() -> str:
    """The CPU's model name ("Intel(R) Xeon(R) Processor", "AMD EPYC 7B13"), or the best
    description platform gives when /proc/cpuinfo has none."""
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "cpu model") and value.strip():
            return value.strip()
    return platform.processor() or platform.machine() or "unknown"


def _kib(size: str) -> Optional[int]:
    """sysfs cache sizes: "48K", "2048K", "105M"."""
    units = {"K": 1, "M": 1 << 10, "G": 1 << 20}
    try:
        if size[-1:].upper() in units:
            return int(size[:-1]) * units[size[-1].upper()]
        return int(size) // 1024
    except (TypeError, ValueError):
        return None


def cpu_caches(root: str = _SYS_CPU) -> Dict[str, Dict[str, int]]:
    """Data and unified caches by name ("L1d", "L2", "L3"): the size of one instance in KiB,
    how many instances the online CPUs share out (distinct shared_cpu_list), and their total.
    Empty where sysfs does not describe them."""
    found: Dict[str, Dict[str, object]] = {}
    try:
        for index in sorted(glob.glob(os.path.join(root, "cpu[0-9]*", "cache", "index[0-9]*"))):
            level, kind = _read(os.path.join(index, "level")), _read(os.path.join(index, "type"))
            size = _kib(_read(os.path.join(index, "size")) or "")
            if not level or kind not in ("Data", "Unified") or size is None:
                continue
            name = f"L{level}" + ("d" if kind == "Data" else "")
            entry = found.setdefault(name, {"size_kib": size, "shared": set()})
            entry["shared"].add(_read(os.path.join(index, "shared_cpu_list")) or index)
    except OSError:
        return {}
    result = {}
    for name in sorted(found):
        size, instances = found[name]["size_kib"], len(found[name]["shared"])
        result[name] = {"size_kib": size, "instances": instances, "total_kib": size * instances}
    return result


def _size(kib: int) -> str:
    return f"{kib // 1024} MiB" if kib >= 1024 and kib % 1024 == 0 else f"{kib} KiB"


def format_caches(caches: Dict[str, Dict[str, int]]) -> str:
    """One line: "L1d 48 KiB x2, L2 2 MiB x2, L3 105 MiB x1" ("unknown" when empty)."""
    return ", ".join(f"{name} {_size(c['size_kib'])} x{c['instances']}" for name, c in caches.items()) or "unknown"


def cpu_info() -> Dict[str, object]:
    """model, isa (torch.backends.cpu.get_cpu_capability()), logical CPUs, torch's threads
    and the caches (see cpu_caches)."""
    try:
        isa = torch.backends.cpu.get_cpu_capability()
    except Exception:  # an old or unusual torch build: the rest still describes the CPU
        isa = "unknown"
    return {"model": cpu_model(), "isa": isa, "logical_cpus": os.cpu_count(), "threads": torch.get_num_threads(),
            "caches": cpu_caches()}


def describe(info: Dict[str, object]) -> str:
    """cpu_info() as one line, for logs and table footers."""
    return (f"{info['model']}, {info['isa']}, {info['threads']} threads of {info['logical_cpus']} CPUs, "
            f"caches {format_caches(info['caches'])}")
