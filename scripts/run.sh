#!/usr/bin/env bash
# Sets up, builds and runs the main job: the syncschedd daemon on the SQLite file syncsched.db with
# the example configuration (examples/daemon/syncschedd.json). Extra arguments go to the daemon.
# Without a daemon in this checkout, it runs the example host program instead.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
if [[ -f src/daemon/CMakeLists.txt ]]; then
  cmake --build build -j "$(nproc)" --target syncschedd
  exec build/src/daemon/syncschedd --config examples/daemon/syncschedd.json "$@"
fi
cmake --build build -j "$(nproc)" --target embed
exec build/examples/embed "$@"
