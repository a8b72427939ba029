"""Every op's quick benchmark cases (those of `dll-ext bench --quick`) as pytest-benchmark tests.

Each case runs twice, impl=ours and impl=native, in one benchmark group named after the case
("cpu-conv2d_relu-resnet/fwd"), so pytest-benchmark compares the two; `--benchmark-group-by=param:case` gives
the same grouping. CUDA cases are skipped without a GPU. The torch.compile baseline is left to
`dll-ext bench`, whose compile warm-up does not fit pytest-benchmark's per-test calibration.

    pytest benchmarks/ --benchmark-min-rounds=3
"""
import pytest
import torch

from dll_ext.benchmark.run import collect_cases

_NO_GPU = "CUDA is not available"
# "device-case name" -> (device, Case); the test parameter is the key, so that
# --benchmark-group-by=param:case prints readable group names.
CASES = {f"{device}-{case.op}-{case.name}": (device, case) for device in ("cpu", "cuda")
         for case in collect_cases(device, quick=True)}


def _params():
    cuda_marks = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason=_NO_GPU)]
    return [pytest.param(key, id=key, marks=cuda_marks if device == "cuda" else [])
            for key, (device, _) in CASES.items()]


@pytest.mark.parametrize("impl", ["ours", "native"])
@pytest.mark.parametrize("case", _params())
def test_op(benchmark, case, impl):
    group, (device, case) = case, CASES[case]
    fn = getattr(case.setup(), impl)
    if device == "cuda":
        step = fn

        def fn():  # time the device work, not just the launch
            step()
            torch.cuda.synchronize()

    fn()  # warm-up (oneDNN / cuDNN plans, allocator)
    benchmark.group = group
    benchmark.extra_info.update(op=case.op, shape=case.shape, dtype=str(case.dtype), flops=case.flops)
    benchmark(fn)
    if case.flops and benchmark.stats:  # no stats under --benchmark-disable
        benchmark.extra_info["gflops"] = case.flops / benchmark.stats.stats.median / 1e9
