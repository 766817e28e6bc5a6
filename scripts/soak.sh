#!/usr/bin/env bash
# The daemon's soak on demand (docs/reliability.md, "Soak"): 100k firing schedules and concurrent
# clients for an hour by default, then every acknowledged command checked in status and in the
# database, p99 latency and RSS over time reported (JSON), memory compared between the second
# minute and the last one. `.ci/run` runs the same test for a minute (ctest -R daemon_soak).
#
#   scripts/soak.sh [SECONDS]        # default 3600; env SYNCSCHED_SOAK_* as in tests/daemon/soak_test.cc
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-3600}
build=${SYNCSCHED_SOAK_BUILD:-build-soak}
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSYNCSCHED_BUILD_BENCH=OFF >/dev/null
cmake --build "$build" -j "$(nproc)" --target syncschedd_soak
export SYNCSCHED_SOAK_SECONDS=$seconds
export SYNCSCHED_SOAK_REPORT=${SYNCSCHED_SOAK_REPORT:-$PWD/$build/soak-report.json}
"$build"/tests/daemon/syncschedd_soak
echo "report: $SYNCSCHED_SOAK_REPORT"
