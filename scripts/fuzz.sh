#!/usr/bin/env bash
# Builds multiprocessing-fuzz (libFuzzer + AddressSanitizer) and runs each of
# its fuzzers for a while, starting from the corpus kept in Fuzz/corpus.
#
#   scripts/fuzz.sh [seconds per fuzzer] [fuzzer ...]   (default: 8 s, all)
#   scripts/fuzz.sh --merge [seconds] [fuzzer ...]      also keeps the new inputs
#                                                      that add coverage, minimized
# A crash, leak, timeout or running out of memory stops the run with its
# input in fuzz-logs/ (turn it into a regression test: Tests/.../FuzzRegressionTests).
set -euo pipefail
cd "$(dirname "$0")/.."

merge=0
if [ "${1:-}" = "--merge" ]; then merge=1; shift; fi
seconds="${1:-8}"; shift || true
all=(wire frames unit-request unit-reply manager handshake bootstrap)
targets=("$@"); [ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")

swift build --traits Fuzzing --product multiprocessing-fuzz --build-path .build-fuzz \
  --sanitize=fuzzer --sanitize=address -Xswiftc -sanitize=fuzzer,address 2>&1 \
  | grep -v "Cannot export local symbol" | tail -n 1
binary=.build-fuzz/debug/multiprocessing-fuzz
mkdir -p fuzz-logs

for target in "${targets[@]}"; do
  corpus="Fuzz/corpus/$target"
  if [ ! -d "$corpus" ]; then
    mkdir -p "$corpus"
    MULTIPROCESSING_FUZZ_TARGET="$target" MULTIPROCESSING_FUZZ_SEEDS="$corpus" "$binary"
  fi
  work=$(mktemp -d)
  log="fuzz-logs/$target.log"
  # New inputs go to the scratch directory; the kept corpus is read only.
  status=0
  MULTIPROCESSING_FUZZ_TARGET="$target" "$binary" "$work" "$corpus" \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=8192 \
    -artifact_prefix="fuzz-logs/$target-" -print_final_stats=1 >"$log" 2>&1 || status=$?
  runs=$(grep -o "stat::number_of_executed_units: *[0-9]*" "$log" | grep -o "[0-9]*$" || echo "?")
  cover=$(grep -o "cov: [0-9]*" "$log" | tail -n 1 || true)
  if [ "$status" != 0 ]; then
    echo "fuzzer $target FAILED (status $status) after $runs runs; see $log:" >&2
    grep -E "ERROR|SUMMARY|Fatal error|Precondition|Test unit written" "$log" | head -n 12 >&2
    rm -rf "$work"
    exit 1
  fi
  echo "fuzzer $target: $runs runs in ${seconds}s, $cover, clean"
  if [ "$merge" = 1 ]; then
    MULTIPROCESSING_FUZZ_TARGET="$target" "$binary" -merge=1 "$corpus" "$work" -max_len=8192 >>"$log" 2>&1
  fi
  rm -rf "$work"
done
