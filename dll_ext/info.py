"""What this dll_ext build is: versions, CUDA, the CPU (model, ISA, caches), and the backends
of each op."""
import torch

from dll_ext._loader import build_config
from dll_ext.cpu_info import cpu_info, format_caches
from dll_ext.ops import OPS, supported_dtypes

# CompositeExplicitAutograd: one kernel for every device, made of other ops (attention is
# _attention_forward's output below autograd).
BACKENDS = ("CPU", "CUDA", "CompositeExplicitAutograd", "Meta", "Autograd")


def _backends(op):
    name = f"dll_ext::{op}"
    # Fake kernels registered from Python are Meta kernels to the dispatcher.
    return [key for key in BACKENDS if torch._C._dispatch_has_kernel_for_dispatch_key(name, key)]


def attention_tiles() -> dict:
    """The CPU attention kernels' tile, [query rows, keys], for 512 and 4096 keys of each CPU
    dtype's kernel: chosen from this CPU's L2 cache at run time."""
    return {f"{dtype}/S{keys}": torch.ops.dll_ext._attention_cpu_tiles(keys, size)
            for dtype, size in (("float32", 4), ("float64", 8)) for keys in (512, 4096)}


def lstm_unit_blocks() -> dict:
    """The edges of the blocks of hidden units the CPU LSTM steps split into (one per thread
    while each has enough work), for batch 32 and hidden sizes 256 and 1024."""
    return {f"B32/H{hidden}": torch.ops.dll_ext._lstm_cpu_unit_blocks(32, hidden) for hidden in (256, 1024)}


def info() -> dict:
    """A dict describing the build and the running environment."""
    config = build_config()
    ops = {}
    for op, internal in OPS.items():
        for name in [op, *internal]:
            ops[name] = _backends(name)
    return {
        "dll_ext_torch_built": config.TORCH_VERSION,
        "torch_running": torch.__version__,
        "cuda_built": config.WITH_CUDA,
        "cuda_version_built": config.CUDA_VERSION,
        "cuda_archs": config.CUDA_ARCHS,
        "cuda_available": torch.cuda.is_available(),
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "cpu": {**cpu_info(), "attention_tiles": attention_tiles(), "lstm_unit_blocks": lstm_unit_blocks()},
        "sanitized_build": config.SANITIZE,
        "ops": ops,
        "dtypes": {op: {device: [str(t).removeprefix("torch.") for t in supported_dtypes(op, device)]
                        for device in ("cpu", "cuda")} for op in OPS},
    }


def format_info(data: dict) -> str:
    lines = [f"{key:22} {value}" for key, value in data.items() if key not in ("cpu", "ops", "dtypes")]
    cpu = data["cpu"]
    lines.append("cpu:")
    lines += [f"  {'model':22} {cpu['model']}", f"  {'isa':22} {cpu['isa']}",
              f"  {'threads':22} {cpu['threads']} (of {cpu['logical_cpus']} logical CPUs)",
              f"  {'caches':22} {format_caches(cpu['caches'])}",
              f"  {'attention tiles':22} " + ", ".join(f"{case} {rows}x{keys}"
                                                      for case, (rows, keys) in cpu["attention_tiles"].items()),
              f"  {'lstm unit blocks':22} " + ", ".join(f"{case} {edges}"
                                                       for case, edges in cpu["lstm_unit_blocks"].items())]
    lines.append("ops:")
    lines += [f"  {op:22} {', '.join(keys)}" for op, keys in data["ops"].items()]
    lines.append("dtypes:")
    lines += [f"  {op:22} " + "; ".join(f"{device}: {', '.join(names)}" for device, names in devices.items())
              for op, devices in data["dtypes"].items()]
    return "\n".join(lines)
