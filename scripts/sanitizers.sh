#!/usr/bin/env bash
# The test suite under AddressSanitizer, with the C targets also under
# UndefinedBehaviorSanitizer (Swift itself traps on overflow and bounds; the
# toolchain has no UBSan for Swift code on Linux). Its own build directory.
#
#   scripts/sanitizers.sh [extra arguments for the test binary]
#
# Stands aside (see the README): the fork-safety suite (stopping the world
# parks threads that may be inside ASan's allocator, whose fork handler then
# waits on their locks), and the tests that bound memory or data size.
set -euo pipefail
cd "$(dirname "$0")/.."
swift build --build-tests --build-path .build-asan --sanitize=address \
  -Xcc -fsanitize=undefined -Xcc -fno-sanitize-recover=undefined 2>&1 | tail -n 1
# Faults on purpose must stay signals (tests expect SIGSEGV, SIGILL, SIGABRT),
# and the Swift runtime's backtracer reads memory ASan would flag.
export ASAN_OPTIONS="detect_leaks=0:handle_segv=0:handle_sigill=0:handle_abort=0:handle_sigbus=0:handle_sigfpe=0"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export SWIFT_BACKTRACE="enable=no"
timeout 900 .build-asan/debug/swift-multiprocessingPackageTests.xctest --testing-library swift-testing \
  --skip ForkSafetyTests "$@"
