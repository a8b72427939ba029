#!/usr/bin/env bash
# Fuzzes every reader of files and checkpoints (scripts/fuzz_targets.py, atheris/libFuzzer),
# each for FUZZ_SECONDS (default 60), seeded with valid inputs; corpora and any findings go
# under FUZZ_DIR (default a new temporary folder). Prints one line per target: executions,
# coverage (Python edges of dll_ext) and the corpus; exits 1 if any target found a crash,
# a hang (10 s), an exception other than the reader's own error, or over 3 GB of memory.
#   scripts/fuzz.sh [TARGET ...]     # all targets when none is named
set -uo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-60}"
dir="${FUZZ_DIR:-$(mktemp -d -t dll_ext_fuzz.XXXXXX)}"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(idx cifar math_pairs text checkpoint_bytes checkpoint_config)
fi
failed=0
for target in "${targets[@]}"; do
  mkdir -p "$dir/$target/seeds" "$dir/$target/corpus" "$dir/$target/findings"
  python scripts/fuzz_targets.py --seeds "$target" "$dir/$target/seeds" 2> /dev/null
  python scripts/fuzz_targets.py "$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=3000 \
    -artifact_prefix="$dir/$target/findings/" "$dir/$target/corpus" "$dir/$target/seeds" \
    > "$dir/$target/log" 2>&1
  code=$?
  done_line=$(grep -ao '#[0-9]*.DONE.*' "$dir/$target/log" | tail -1)
  if [ $code -ne 0 ]; then
    failed=1
    echo "$target: FINDING (exit $code), see $dir/$target/log and $dir/$target/findings/"
    grep -a -m3 -E '(==[0-9]+== ERROR|Error:|Exception)' "$dir/$target/log"
  else
    echo "$target: ${done_line:-no libFuzzer summary}"
  fi
done
exit $failed
