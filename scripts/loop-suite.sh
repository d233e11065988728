#!/usr/bin/env bash
# Runs the test suite N times (default 20) from the built debug test binary;
# a run that does not finish within the limit (default 120 s) is a hang: the
# stacks of the test process and its children are taken with gdb into
# loop-logs/, then it is killed. Prints how many runs passed, failed, hung.
#   swift build --build-tests && scripts/loop-suite.sh [runs] [seconds]
# Do not rebuild while it runs: the runs exec the binary it names (or copy
# it and name the copy in LOOP_BINARY, then build on).
set -u
cd "$(dirname "$0")/.."
runs=${1:-20}
limit=${2:-120}
binary=${LOOP_BINARY:-.build/debug/swift-multiprocessingPackageTests.xctest}
logs=loop-logs
mkdir -p "$logs"
pass=0 fail=0 hung=0
# A process and every process under it.
descendants() {
  echo "$1"
  for child in $(pgrep -P "$1"); do descendants "$child"; done
}
for i in $(seq 1 "$runs"); do
  log="$logs/run_$i.log"
  "$binary" --testing-library swift-testing > "$log" 2>&1 &
  pid=$!
  for _ in $(seq 1 "$limit"); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 1
  done
  if kill -0 "$pid" 2>/dev/null; then
    hung=$((hung + 1))
    # Every descendant, not only the children: an exit test's pool workers
    # are the test process's grandchildren.
    for p in $(descendants "$pid"); do
      # The library parks threads with SIGSYS while it forks: let it pass.
      gdb -p "$p" -batch -ex 'handle SIGSYS nostop noprint pass' -ex 'thread apply all bt 16' > "$logs/hang_${i}_$p.txt" 2>&1
    done
    kill -9 $(descendants "$pid") 2>/dev/null
    echo "run $i: HUNG (stacks in $logs/hang_${i}_*.txt)"
  elif wait "$pid"; then
    pass=$((pass + 1))
  else
    fail=$((fail + 1))
    echo "run $i: FAILED (see $log)"
  fi
done
echo "runs: $runs, passed: $pass, failed: $fail, hung: $hung"
[ "$fail" = 0 ] && [ "$hung" = 0 ]
