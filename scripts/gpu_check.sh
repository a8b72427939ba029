#!/usr/bin/env bash
# GPU check: on a machine with a CUDA GPU and torch already installed (nothing is downloaded),
# build dll_ext for sm_90 only, run the CUDA tests and the quick CUDA benchmark.
# Writes gpu_check.log and the benchmark results under $OUT (default: ./gpu-check-out).
# Meant to finish in under 8 minutes on an H100/H200 host.
set -uo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
out="${OUT:-$repo/gpu-check-out}"
mkdir -p "$out"
exec > >(tee "$out/gpu_check.log") 2>&1
cd "$repo"
status=0
step() {
  echo "=== $1 ($(date -u +%H:%M:%S))"
  shift
  "$@" || { echo "=== FAILED: $*"; status=1; }
}

step "environment" bash -c 'nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; python -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())"; python -c "import pytest, hypothesis, ninja"'
export TORCH_CUDA_ARCH_LIST="9.0" DLL_EXT_CUDA=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}"
step "build (sm_90)" python setup.py -q build_ext --inplace
step "info" python -m dll_ext.cli info
step "CUDA tests" python -m pytest -q -m cuda tests -p no:cacheprovider --junitxml="$out/cuda-tests.xml"
step "op tests (all devices)" python -m pytest -q tests/test_conv_relu.py tests/test_lstm_cell.py tests/test_lstm_layer.py tests/test_attention.py -p no:cacheprovider
step "CUDA benchmark" python -m dll_ext.cli bench --device cuda --quick --out "$out/bench"
echo "=== done, status $status"
exit $status
