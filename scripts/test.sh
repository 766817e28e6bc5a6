#!/usr/bin/env bash
# Sets up, builds and runs every test: first Clang's thread-safety analysis of the library (a
# compile, no tests), then the fuzz targets for 12 s each (libFuzzer, clang, ASan + UBSan), then
# the whole suite in a normal build, again under AddressSanitizer + UndefinedBehaviorSanitizer,
# and the library's tests (the concurrency tests among them) under ThreadSanitizer.
# Build trees: build-clang/, build-fuzz/, build/ (normal), build-asan/, build-tsan/ (all ignored
# by git).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh

jobs=$(nproc)
export CTEST_OUTPUT_ON_FAILURE=1
# Line tables only (-g1): backtraces and sanitizer reports keep their file:line, and the four
# builds below compile ~15% faster than with full debug information.
relwithdebinfo='-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O2 -g1 -DNDEBUG'
debug='-DCMAKE_CXX_FLAGS_DEBUG=-g1'

echo "== Clang -Wthread-safety: the library, a violation of its lock annotations is an error"
# The library only (~20 s on 2 cores): the annotated locks are all in src/core, and the tests'
# own code takes none of them.
cmake -S . -B build-clang -G Ninja -DCMAKE_BUILD_TYPE=Debug "$debug" -DCMAKE_CXX_COMPILER=clang++ \
  -DCMAKE_CXX_FLAGS="-Werror=thread-safety" -DSYNCSCHED_BUILD_TESTS=OFF \
  -DSYNCSCHED_BUILD_BENCH=OFF -DSYNCSCHED_BUILD_EXAMPLES=OFF -DSYNCSCHED_BUILD_DAEMON=OFF \
  -DSYNCSCHED_INSTALL=OFF >/dev/null
cmake --build build-clang -j "$jobs"

echo "== libFuzzer: each fuzz target for 12 s over its corpus; a crash fails (scripts/fuzz.sh)"
# About a minute of fuzzing in all (5 targets); scripts/fuzz.sh 3600 runs an hour per target.
FUZZ_JOBS=$jobs FUZZ_CXX_FLAGS="-O1 -g1 -DNDEBUG" ./scripts/fuzz.sh 12

echo "== normal build: every test"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "$relwithdebinfo" >/dev/null
cmake --build build -j "$jobs"
ctest --test-dir build -j "$jobs" --timeout 600

# The PostgreSQL twins of the crash, fault-injection, outage, HTTP, Nango and simulation suites run
# in the normal build only: under the sanitizers they would add ~10 minutes for code (the engine's,
# the daemon's) that their SQLite twins already run there; the PostgreSQL store's own tests and the
# durable engine's PostgreSQL variants still run under both sanitizers.
pg_twins='(FaultInjection|Crash).*/PostgreSQL|^PostgreSQL\.|^PostgreSQLOutage|^PostgreSQLReopen|_pg'

echo "== ASan + UBSan: every test (the PostgreSQL twins in the normal build only)"
cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=Debug "$debug" \
  -DSYNCSCHED_SANITIZE="address;undefined" \
  -DSYNCSCHED_BUILD_BENCH=OFF -DSYNCSCHED_BUILD_EXAMPLES=OFF >/dev/null
cmake --build build-asan -j "$jobs"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-asan -j "$jobs" --timeout 900 -E "$pg_twins"

echo "== TSan: the library's tests (concurrency, durability and crash tests included)"
cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "$relwithdebinfo" \
  -DSYNCSCHED_SANITIZE=thread \
  -DSYNCSCHED_BUILD_BENCH=OFF -DSYNCSCHED_BUILD_EXAMPLES=OFF -DSYNCSCHED_BUILD_DAEMON=OFF >/dev/null
cmake --build build-tsan -j "$jobs"
TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
  ctest --test-dir build-tsan -j "$jobs" --timeout 900 -E "$pg_twins"

echo "== all test suites passed"
