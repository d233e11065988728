#!/usr/bin/env bash
# The test suite under ThreadSanitizer (the in-process concurrency: the
# pools' dispatchers, the manager's server threads, the rings), one test at a
# time, in its own build directory.
#
#   scripts/tsan.sh [arguments for the test binary]
#
# Without arguments it runs the suites measured clean and in bounded time
# under TSan, one test at a time: the manager (its server threads, channels
# and rings), connections, listeners, queues, shared state, processes and
# the wire format. The pool suites (PoolTests, StreamingTests,
# SentClosureTests) can be given by name: they ran clean, but their forks
# while dispatchers run can hang under TSan (below).
#
# Under TSan the library forks without stopping the world (quiesce.c says
# why), so the tests that fork while other threads run Swift code — the
# hazard stopping the world exists for — stand aside: the fork-safety suite
# and the manager's fork-while-calling test; so do the leak suite, whose 30
# pools fork while their dispatchers run, and the manager's queue between
# forked pool workers (a forked child hung in a Swift runtime `once` in
# each, measured). One test at a time for the same reason (a
# test's fork must not meet another test's busy threads).
set -euo pipefail
cd "$(dirname "$0")/.."
swift build --build-tests --build-path .build-tsan --sanitize=thread 2>&1 | tail -n 1
# Children made by fork may start threads (die_after_fork=0); faults on
# purpose stay signals (TSan would otherwise catch a SIGSEGV and exit 66);
# a report fails the run at the end, not at once.
export TSAN_OPTIONS="die_after_fork=0:report_signal_unsafe=0:halt_on_error=0:exitcode=66:handle_segv=0:handle_sigbus=0:handle_sigill=0:handle_sigfpe=0:handle_abort=0"
export SWIFT_BACKTRACE="enable=no"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
arguments=("$@")
if [ ${#arguments[@]} -eq 0 ]; then
  for suite in ManagerTests ConnectionTests ListenerTests QueueTests SharedStateTests ProcessTests WireTests FuzzRegressionTests PoolMessageTests; do
    arguments+=(--filter "MultiprocessingTests.${suite}/")
  done
fi
timeout 1500 .build-tsan/debug/swift-multiprocessingPackageTests.xctest --testing-library swift-testing \
  --experimental-maximum-parallelization-width 1 \
  --skip ForkSafetyTests --skip forkWhileCalling --skip LeakTests --skip "between pool workers" "${arguments[@]}" 2>&1 | tee "$log" || status=$?
reports=$(grep -c "WARNING: ThreadSanitizer" "$log" || true)
echo "tsan: ${reports} reports"
if [ "$reports" != 0 ]; then exit 1; fi
exit "$status"
