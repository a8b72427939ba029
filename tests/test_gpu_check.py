"""scripts/gpu_check.sh and its report, on this CPU machine: GPU time is too short to find
out there that the script or its report has rotted.

The dry run checks the environment, prints the plan, runs the smoke script on CPU tensors
and writes the report; the report is also run on a fabricated GPU run with failures of
every kind, to check that it picks the first of each.
"""
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import ROOT

SCRIPT = ROOT / "scripts" / "gpu_check.sh"
REPORT = ROOT / "scripts" / "gpu_check_report.py"
BUDGET_S = 420
STEPS = ["environment", "build", "info", "cuda-tests", "smoke", "memcheck", "racecheck", "resource-usage",
         "benchmark", "report"]


def test_dry_run_plans_within_budget_and_smokes_every_op_on_cpu(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    output = result.stdout

    limits = dict(re.findall(r"^  (\S+)\s+(\d+)$", output, re.M))
    assert list(limits) == STEPS
    total = int(re.search(r"^total: (\d+) s", output, re.M).group(1))
    assert total == sum(map(int, limits.values())) and total < BUDGET_S

    smoke = re.findall(r"^(OK|FAIL)\s+(\S+)", output, re.M)
    assert smoke and all(verdict == "OK" for verdict, _ in smoke), output
    assert {name.split("/")[0] for _, name in smoke} == {"conv2d_relu", "lstm_cell", "lstm_layer",
                                                         "lstm_layer_packed", "attention"}
    assert re.search(rf"^smoke: {len(smoke)} cases on cpu, 0 failed$", output, re.M)

    results = json.loads((tmp_path / "results.json").read_text())
    assert results["mode"] == "dry-run" and results["overall"] == "pass"
    assert results["budget_seconds"] == total
    statuses = {step["name"]: step["status"] for step in results["steps"]}
    assert statuses["environment"] == "ok" and statuses["smoke"] == "ok"
    assert statuses["build"] == statuses["memcheck"] == "skipped"
    assert len(results["smoke"]["smoke"]) == len(smoke)
    summary = (tmp_path / "summary.md").read_text()
    assert "PASS" in summary.splitlines()[0] and len(summary.splitlines()) < 60
    assert (tmp_path / "gpu_check.log").is_file() and (tmp_path / "logs" / "smoke.log").is_file()


# A GPU run, made up: the build spills, the tests and the smoke script fail (twice each: the
# first must be picked), memcheck finds errors, racecheck is refused the device, and the
# benchmark times out after two cases.
FABRICATED_LOGS = {
    "build": """\
        running build_ext
        ptxas warning : Registers are spilled to local memory in function '_ZN7dll_ext9attention12_GLOBAL__N_115backward_kernelIfEEvv', 24 bytes spill stores, 32 bytes spill loads
        csrc/ops/attention/attention_cuda.cu(301): error: identifier "tile" is undefined
        csrc/ops/lstm/lstm_cuda.cu(12): error: a later error
        ninja: build stopped: subcommand failed.
        """,
    "smoke": """\
        OK    conv2d_relu/nchw/bias/float32                max err 1.00e-07 (output; tol 1e-03)
        FAIL  attention/causal/E256/float16                max err 3.10e-01 (grad key; tol 1e-02)
        FAIL  attention/none/E8/bfloat16                   RuntimeError: a later failure
        smoke: 3 cases on cuda, 2 failed
        """,
    "memcheck": """\
        ========= COMPUTE-SANITIZER
        OK    conv2d_relu/nchw/bias/float32                max err 1.00e-07 (output; tol 1e-03)
        ========= Invalid __global__ read of size 4 bytes
        =========     at void dll_ext::attention::forward_kernel<float>(Args<float>)+0x1a0 in attention_cuda.cu:180
        =========     by thread (5,0,0) in block (2,0,0)
        =========     Address 0x7f0000001000 is out of bounds
        =========
        ========= Invalid __global__ write of size 2 bytes
        =========     at a later error
        FAIL  attention/none/E8/float32                    RuntimeError: CUDA error: unspecified launch failure
        ========= ERROR SUMMARY: 2 errors
        """,
    "racecheck": """\
        ========= COMPUTE-SANITIZER
        ========= Error: Device not supported on this platform
        ========= Target application returned an error
        """,
    "benchmark": """\
        [1/21] resnet/fwd  (N128 64->64 32x32 k3 p1, float32)
          ours 0.500 ms, native 0.400 ms, speedup 0.800x
        [2/21] resnet/fwd+bwd  (N128 64->64 32x32 k3 p1, float32)
          ours 1.000 ms, native 2.000 ms, speedup 2.000x
        [3/21] convnet1/fwd  (N128 3->32 32x32 k5 p2, float32)
        """,
}
FABRICATED_STEPS = [  # name, recorded status, exit code, seconds, limit
    ("environment", "ran", 0, 3.0, 10), ("build", "ran", 1, 150.0, 180), ("info", "ran", 0, 4.0, 10),
    ("cuda-tests", "ran", 1, 60.0, 75), ("smoke", "ran", 1, 9.0, 20), ("memcheck", "ran", 86, 30.0, 45),
    ("racecheck", "ran", 1, 2.0, 25), ("resource-usage", "ran", 0, 1.0, 5), ("benchmark", "ran", 124, 40.0, 40),
]
FABRICATED_JUNIT = """\
    <?xml version="1.0" encoding="utf-8"?>
    <testsuites><testsuite name="pytest" tests="4">
      <testcase classname="tests.test_attention" name="test_cuda_float32_matches_reference[none]" time="0.5"/>
      <testcase classname="tests.test_attention" name="test_cuda_dropout_matches_cpu[causal]" time="0.7">
        <failure message="AssertionError: Tensor-likes are not close!">long traceback</failure>
      </testcase>
      <testcase classname="tests.test_lstm_cell" name="test_parity_cuda[x]" time="0.1">
        <error message="RuntimeError: a later error">traceback</error>
      </testcase>
      <testcase classname="tests.test_conv_relu" name="test_cuda_gradcheck" time="0.0">
        <skipped message="not this time"/>
      </testcase>
    </testsuite></testsuites>
    """
FABRICATED_RES_USAGE = """\
    Fatbin elf code:
    ================
    arch = sm_90
    Resource usage:
     Common:
      GLOBAL:0
     Function _ZN7dll_ext9attention12_GLOBAL__N_115backward_kernelIfEEvv:
      REG:255 STACK:24 SHARED:0 LOCAL:0 CONSTANT[0]:600 TEXTURE:0 SURFACE:0 SAMPLER:0
     Function _ZN7dll_ext4lstm12_GLOBAL__N_119step_forward_kernelIfEEvv:
      REG:40 STACK:0 SHARED:0 LOCAL:0 CONSTANT[0]:420 TEXTURE:0 SURFACE:0 SAMPLER:0
     Function _ZN2at6native18elementwise_kernelILi128ELi4EEEviT1_:
      REG:30 STACK:0 SHARED:0 LOCAL:0 CONSTANT[0]:900 TEXTURE:0 SURFACE:0 SAMPLER:0
    """


def fabricate_gpu_run(out: Path) -> None:
    (out / "logs").mkdir(parents=True)
    for name, log in FABRICATED_LOGS.items():
        (out / "logs" / f"{name}.log").write_text(textwrap.dedent(log))
    (out / "logs" / "environment.log").write_text("device: NVIDIA H200 (sm_90)\n")
    (out / "steps.tsv").write_text("".join(f"{n}\t{s}\t{rc}\t{sec}\t{lim}\t\n" for n, s, rc, sec, lim in FABRICATED_STEPS))
    (out / "cuda-tests.xml").write_text(textwrap.dedent(FABRICATED_JUNIT).lstrip())
    (out / "res-usage.txt").write_text(textwrap.dedent(FABRICATED_RES_USAGE))


def test_report_picks_the_first_failure_of_each_kind(tmp_path):
    fabricate_gpu_run(tmp_path)
    result = subprocess.run([sys.executable, str(REPORT), "summary", str(tmp_path), "--budget", "415"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1, result.stdout + result.stderr
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["overall"] == "fail"

    statuses = {step["name"]: step["status"] for step in results["steps"]}
    assert statuses == {"environment": "ok", "build": "failed", "info": "ok", "cuda-tests": "failed",
                        "smoke": "failed", "memcheck": "errors", "racecheck": "unavailable",
                        "resource-usage": "ok", "benchmark": "timeout"}

    first = results["first_failures"]
    assert first["build"][0] == 'csrc/ops/attention/attention_cuda.cu(301): error: identifier "tile" is undefined'
    assert first["test"][:2] == ["tests/test_attention.py::test_cuda_dropout_matches_cpu[causal] (failed)",
                                 "AssertionError: Tensor-likes are not close!"]
    assert first["smoke"] == ["smoke: attention/causal/E256/float16: max err 3.10e-01 (grad key; tol 1e-02)"]
    assert first["sanitizer"][:3] == ["memcheck: 2 errors", "Invalid __global__ read of size 4 bytes",
                                      "at void dll_ext::attention::forward_kernel<float>(Args<float>)+0x1a0 in "
                                      "attention_cuda.cu:180"]
    assert results["sanitizers"]["racecheck"]["status"] == "unavailable"

    assert results["tests"]["counts"] == {"passed": 1, "failed": 1, "error": 1, "skipped": 1}
    kernels = {k["mangled"]: k for k in results["kernels"]}
    assert len(kernels) == 2, "only dll_ext's kernels"
    backward = kernels["_ZN7dll_ext9attention12_GLOBAL__N_115backward_kernelIfEEvv"]
    assert (backward["registers"], backward["stack"], backward["spill_stores"], backward["spill_loads"]) == (255, 24, 24, 32)
    assert [(c["name"], c["speedup"]) for c in results["benchmark"]["cases"]] == [("resnet/fwd", 0.8),
                                                                                 ("resnet/fwd+bwd", 2.0)]

    summary = (tmp_path / "summary.md").read_text().splitlines()
    assert len(summary) < 60
    assert any("memcheck: errors (2 errors)" in line and "racecheck: unavailable" in line for line in summary)
    assert any("Kernels with spills or local memory: 1 of 2" in line for line in summary)
