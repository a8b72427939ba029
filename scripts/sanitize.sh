#!/usr/bin/env bash
# ASan+UBSan run of the CPU kernels: builds a sanitized dll_ext._C into a scratch copy of the
# source (the installed build is untouched) and runs the op tests against it.
# Usage: scripts/sanitize.sh [pytest args...]   (default: the op tests)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Only what the build and the tests need; no build outputs of the normal build.
git -C "$repo" ls-files -z --cached --others --exclude-standard | (cd "$repo" && xargs -0 cp --parents -t "$work")
cd "$work"
DLL_EXT_SANITIZE=1 python setup.py -q build_ext --inplace

# Python itself is not instrumented, so the ASan runtime must be loaded first, and libstdc++
# right after it: ASan's __cxa_throw interceptor fails its startup check otherwise once a
# library that throws C++ exceptions (triton, under torch.compile) is loaded. Leak checking
# would report CPython's and torch's intentional process-lifetime allocations.
export LD_PRELOAD="$(gcc -print-file-name=libasan.so) $(gcc -print-file-name=libstdc++.so)"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
python -c "import dll_ext; assert dll_ext.info()['sanitized_build'], 'not the sanitized build: ' + dll_ext.__file__"
if [ $# -eq 0 ]; then
  set -- tests/test_conv_relu.py tests/test_lstm_cell.py tests/test_lstm_layer.py tests/test_attention.py \
    tests/test_attention_gqa.py
fi
python -m pytest -q -p no:cacheprovider "$@"
