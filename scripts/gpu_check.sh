#!/usr/bin/env bash
# GPU check: one run on the GPU machine (torch installed, nothing downloadable) that builds
# dll_ext for sm_90, runs the CUDA tests, calls every kernel once plainly and under
# compute-sanitizer, lists the kernels' registers and spills and times the quick CUDA
# benchmark. Everything lands under $OUT (default ./gpu-check-out): gpu_check.log,
# logs/<step>.log, results.json (every step, test outcome and benchmark figure) and
# summary.md (short enough for a note).
#
#   scripts/gpu_check.sh            the run, on the GPU machine
#   scripts/gpu_check.sh --dry-run  environment checks, the plan, the smoke script on CPU
#                                   tensors and the report, on any machine (tests run it)
#
# Time budget: GPU time is 15 minutes in all, start-up included, and must leave a rerun's
# worth, so one run is held to 7 minutes by design: every step runs under its own timeout
# (the table below) and the timeouts sum below 420 s. A step past its timeout gets SIGINT
# (so that pytest still writes its XML of the tests it ran), SIGKILL 5 s later, and is
# reported as timed out; the next steps still run.
set -uo pipefail

STEPS=(
  environment:10     # nvidia-smi and one torch import
  build:180          # ~17 sources, a job each on 16 cores: the slowest nvcc file bounds it
  info:10
  cuda-tests:75      # ~430 tests over xdist workers; a cold torch.compile test takes tens of s
  smoke:20           # every kernel once, forward and backward, tiny sizes
  memcheck:45        # the same under memcheck (only dll_ext's kernels instrumented)
  racecheck:25       # the kernels that use shared memory, one dtype
  resource-usage:5
  benchmark:40       # dll-ext bench --quick on CUDA: 21 cases
  report:5
)
BUDGET_S=420

REPO="$(cd "$(dirname "$0")/.." && pwd)"
SELF="$REPO/scripts/gpu_check.sh"
PY="${PYTHON:-python3}"
OUT="$(realpath -m "${OUT:-$REPO/gpu-check-out}")"  # absolute: the steps run from the repository
LOGS="$OUT/logs"
export PY OUT PYTHONUNBUFFERED=1
BLOCKED=""  # why the remaining GPU steps cannot run, once something they need failed

usage() {
  sed -n '2,11p' "$SELF" | sed 's/^# \{0,1\}//'
}

limit_of() {
  local entry
  for entry in "${STEPS[@]}"; do
    [[ ${entry%%:*} == "$1" ]] && { echo "${entry#*:}"; return; }
  done
  echo "gpu_check: no time limit for step $1" >&2
  return 1
}

total_limit() {
  local entry sum=0
  for entry in "${STEPS[@]}"; do sum=$((sum + ${entry#*:})); done
  echo "$sum"
}

print_plan() {
  local entry
  echo "steps (timeout, s):"
  for entry in "${STEPS[@]}"; do printf '  %-16s %4d\n' "${entry%%:*}" "${entry#*:}"; done
  echo "total: $(total_limit) s (budget: below $BUDGET_S s)"
}

# The CUDA tools may be on PATH or only in the toolkit's folders.
find_tool() {
  local dir
  command -v "$1" && return
  for dir in ${CUDA_HOME:+"$CUDA_HOME/bin" "$CUDA_HOME/compute-sanitizer"} /usr/local/cuda/bin \
             /usr/local/cuda/compute-sanitizer; do
    [[ -x $dir/$1 ]] && { echo "$dir/$1"; return; }
  done
  return 1
}

# Both are needed by the build, which everything else needs: without them, stop at once.
# Sets MISSING to what is missing.
check_build_tools() {
  local tool path
  MISSING=""
  if ! command -v "$PY" >/dev/null; then
    MISSING="$PY not found (set PYTHON to the interpreter with torch)"
  else
    echo "python: $(command -v "$PY") ($("$PY" --version 2>&1))"
  fi
  for tool in ninja nvcc; do
    [[ -n $MISSING ]] && break
    path=$(find_tool "$tool") || { MISSING="$tool not found on PATH, in \$CUDA_HOME/bin or /usr/local/cuda/bin"; break; }
    echo "$tool: $path ($("$path" --version | tail -n 1))"
  done
  for tool in compute-sanitizer cuobjdump; do
    path=$(find_tool "$tool") && echo "$tool: $path" || echo "$tool: not found (its step will report unavailable)"
  done
  [[ -z $MISSING ]] || { echo "gpu_check: $MISSING; the build needs it, stopping"; return 1; }
}

# ---------------------------------------------------------------------------------------
# Steps: each runs in a fresh bash (`gpu_check.sh --step NAME`) under `timeout`.
# ---------------------------------------------------------------------------------------

step_environment() {
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv
  else
    echo "nvidia-smi: not found"
  fi
  "$PY" - "$GPU_CHECK_DRY_RUN" <<'EOF'
import importlib.util, sys
import torch
dry_run = sys.argv[1] == "1"
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, CUDA {torch.version.cuda}")
for module in ("pytest", "hypothesis", "xdist"):
    print(f"{module}: {'yes' if importlib.util.find_spec(module) else 'no'}")
if torch.cuda.is_available():
    major, minor = torch.cuda.get_device_capability()
    print(f"device: {torch.cuda.get_device_name()} (sm_{major}{minor})")
else:
    print("device: none" + (" (fine for a dry run)" if dry_run else ""))
    sys.exit(0 if dry_run else 1)
EOF
}

step_build() {
  # sm_90 only: the H200's arch, and each extra arch is another full pass of nvcc.
  # --warn-on-spills makes ptxas name, in this log, every kernel that spills and by how much.
  TORCH_CUDA_ARCH_LIST=9.0 DLL_EXT_CUDA=1 MAX_JOBS="$(nproc)" \
    NVCC_APPEND_FLAGS="${NVCC_APPEND_FLAGS:+$NVCC_APPEND_FLAGS }-Xptxas=--warn-on-spills" \
    "$PY" setup.py -q build_ext --inplace
}

step_info() {
  "$PY" -m dll_ext.cli info
}

step_cuda_tests() {
  local workers=()
  # Workers spread the torch.compile tests over the cores; each compiles on one thread so
  # that eight of them do not oversubscribe the machine.
  if "$PY" -c "import xdist" 2>/dev/null; then
    workers=(-n 8)
    export TORCHINDUCTOR_COMPILE_THREADS=1
  fi
  "$PY" -m pytest -q -rfE -m cuda tests -p no:cacheprovider --durations=15 \
    --junitxml="$OUT/cuda-tests.xml" "${workers[@]}"
}

step_smoke() {
  "$PY" scripts/gpu_smoke.py --device "$([[ $GPU_CHECK_DRY_RUN == 1 ]] && echo cpu || echo cuda)"
}

sanitize() {
  local tool=$1
  shift
  # Only dll_ext's kernels are instrumented: torch's and cuBLAS's are not ours, and
  # instrumenting them costs minutes. API errors are left out because torch provokes some on
  # purpose; a failed launch of ours still fails its smoke case. Device backtraces name the
  # kernel and the source line (-lineinfo).
  "$(find_tool compute-sanitizer)" --tool "$tool" --kernel-name kns=dll_ext --report-api-errors no \
    --error-exitcode 86 --print-limit 20 --show-backtrace device \
    "$PY" scripts/gpu_smoke.py --device cuda "$@"
}

step_memcheck() {
  # Without the caching allocator every tensor is an allocation of its own, so a read past
  # a tensor's end leaves the allocation and memcheck sees it.
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 sanitize memcheck
}

step_racecheck() {
  # Racecheck checks shared memory only, which only the attention and conv2d_relu kernels
  # use, in float tiles whatever the dtype: one dtype has every synchronisation there is.
  sanitize racecheck --ops attention,conv2d_relu --dtypes float32
}

step_resource_usage() {
  "$(find_tool cuobjdump)" -res-usage dll_ext/_C*.so >"$OUT/res-usage.txt" &&
    "$PY" scripts/gpu_check_report.py kernels "$OUT/res-usage.txt"
}

step_benchmark() {
  "$PY" -m dll_ext.cli bench --device cuda --quick --out "$OUT/bench"
}

step_report() {
  "$PY" scripts/gpu_check_report.py summary "$OUT" --budget "$(total_limit)" \
    --mode "$([[ $GPU_CHECK_DRY_RUN == 1 ]] && echo dry-run || echo gpu)"
}

# ---------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------

# One line per step for the report: name, status (ran | skipped | unavailable), exit code,
# seconds, limit, note.
record() {
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$OUT/steps.tsv"
}

skip_step() {  # name status note
  echo "=== $1: $2 ($3)"
  record "$1" "$2" "" 0 "$(limit_of "$1")" "$3"
}

run_step() {
  local name=$1 limit start rc seconds
  limit=$(limit_of "$name") || return 1
  if [[ -n $BLOCKED ]]; then
    skip_step "$name" skipped "$BLOCKED"
    return 1
  fi
  echo "=== $name (timeout ${limit} s, $(date -u +%H:%M:%S) UTC)"
  start=$EPOCHREALTIME
  # env --default-signal: a run started as a background job may hand its children SIGINT
  # ignored (POSIX shells do that), and the timeout's SIGINT must stop them.
  timeout -s INT -k 5 "$limit" env --default-signal=INT bash "$SELF" --step "$name" 2>&1 | tee "$LOGS/$name.log"
  rc=${PIPESTATUS[0]}
  seconds=$(awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }')
  record "$name" ran "$rc" "$seconds" "$limit" ""
  echo "=== $name: exit $rc after $seconds s"
  return "$rc"
}

start_output() {
  rm -rf "$LOGS" "$OUT/bench" "$OUT"/{steps.tsv,results.json,summary.md,cuda-tests.xml,res-usage.txt,gpu_check.log}
  mkdir -p "$LOGS"
  exec > >(tee "$OUT/gpu_check.log") 2>&1
}

gpu_run() {
  run_step environment || BLOCKED="no usable GPU, see environment"
  run_step build || BLOCKED="${BLOCKED:-the build failed}"
  run_step info
  run_step cuda-tests
  run_step smoke
  local step
  for step in memcheck racecheck; do
    if [[ -z $BLOCKED ]] && ! find_tool compute-sanitizer >/dev/null; then
      skip_step "$step" unavailable "compute-sanitizer not found"
    else
      run_step "$step"
    fi
  done
  if [[ -z $BLOCKED ]] && ! find_tool cuobjdump >/dev/null; then
    skip_step resource-usage unavailable "cuobjdump not found"
  else
    run_step resource-usage
  fi
  run_step benchmark
}

dry_run() {
  local step
  run_step environment
  for step in build info cuda-tests; do skip_step "$step" skipped "dry run"; done
  run_step smoke
  for step in memcheck racecheck resource-usage benchmark; do skip_step "$step" skipped "dry run"; done
}

main() {
  case "${1:-}" in
    --step) cd "$REPO" && "step_${2//-/_}"; return ;;  # GPU_CHECK_DRY_RUN comes from the driver
    --dry-run) export GPU_CHECK_DRY_RUN=1 ;;
    "") export GPU_CHECK_DRY_RUN=0 ;;
    -h | --help) usage; return 0 ;;
    *) usage >&2; return 2 ;;
  esac
  cd "$REPO" || return 2
  start_output
  echo "gpu_check$([[ $GPU_CHECK_DRY_RUN == 1 ]] && echo ' --dry-run'): $(date -u '+%Y-%m-%d %H:%M:%S') UTC, results in $OUT"
  print_plan
  if (($(total_limit) >= BUDGET_S)); then
    echo "gpu_check: the step timeouts sum to $(total_limit) s, not below $BUDGET_S s"
    return 2
  fi
  if ! check_build_tools; then
    record environment ran 1 0 "$(limit_of environment)" "$MISSING"
    command -v "$PY" >/dev/null && run_step report
    return 2
  fi
  if [[ $GPU_CHECK_DRY_RUN == 1 ]]; then dry_run; else gpu_run; fi
  BLOCKED=""  # the report covers whatever ran
  run_step report
}

main "$@"
