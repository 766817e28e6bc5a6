#!/usr/bin/env bash
# Sets up, builds and runs every test: first the fuzz targets for 12 s each (libFuzzer, clang,
# ASan + UBSan; their build is also Clang's thread-safety analysis of the library), then the whole
# suite in a normal build, again under AddressSanitizer + UndefinedBehaviorSanitizer, and the
# library's tests (the concurrency tests among them) under ThreadSanitizer.
# Build trees: build-fuzz/, build/ (normal), build-asan/, build-tsan/ (all ignored by git).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh

jobs=$(nproc)
export CTEST_OUTPUT_ON_FAILURE=1
# Line tables only (-g1): backtraces and sanitizer reports keep their file:line, and the four
# builds below compile ~15% faster than with full debug information.
relwithdebinfo='-DCMAKE_CXX_FLAGS_RELWITHDEBINFO=-O2 -g1 -DNDEBUG'
debug='-DCMAKE_CXX_FLAGS_DEBUG=-g1'

echo "== libFuzzer: each fuzz target for 12 s over its corpus, two at once; a crash fails (scripts/fuzz.sh)"
# About 40 s of fuzzing in all (5 targets); scripts/fuzz.sh 3600 runs an hour per target. The
# fuzz build is also the Clang build: it compiles the whole library (and the daemon) with Clang's
# -Wthread-safety as an error, so a violation of the lock annotations (src/core) fails here.
FUZZ_JOBS=$jobs FUZZ_PARALLEL=$jobs FUZZ_CXX_FLAGS="-O1 -g1 -DNDEBUG -Werror=thread-safety" \
  ./scripts/fuzz.sh 12

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

# The store's own single-threaded tests (faults, corruption, ownership, checksums, the journal,
# the PostgreSQL store: one thread per process, forks at most) have no race for TSan to find; they
# run in the normal and ASan builds. ~2 minutes of a CI run.
single_threaded='^(FaultTest|CorruptionTest|HardeningTest|WalTest|PageChecksumTest|JournalTest|PgStoreTest)\.'

echo "== TSan: the library's tests (concurrency, durability and crash tests included)"
cmake -S . -B build-tsan -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "$relwithdebinfo" \
  -DSYNCSCHED_SANITIZE=thread \
  -DSYNCSCHED_BUILD_BENCH=OFF -DSYNCSCHED_BUILD_EXAMPLES=OFF -DSYNCSCHED_BUILD_DAEMON=OFF >/dev/null
cmake --build build-tsan -j "$jobs"
TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
  ctest --test-dir build-tsan -j "$jobs" --timeout 900 -E "$pg_twins|$single_threaded"

echo "== all test suites passed"
