#!/usr/bin/env bash
# Usage: check.sh SOURCE_DIR BUILD_DIR. Installs the built library to a temporary prefix and builds
# the consumer against it with find_package, then again with add_subdirectory; runs both.
set -euo pipefail
src=$1 build=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cmake --install "$build" --prefix "$work/prefix" >/dev/null
cmake -S "$src/tests/consumer" -B "$work/fp" -G Ninja -DCMAKE_PREFIX_PATH="$work/prefix" >/dev/null
cmake --build "$work/fp" >/dev/null
"$work/fp/consumer"
cmake -S "$src/tests/consumer" -B "$work/as" -G Ninja -DSYNCSCHED_SOURCE_DIR="$src" >/dev/null
cmake --build "$work/as" --target consumer >/dev/null
"$work/as/consumer"
echo "find_package and add_subdirectory consumers: 2 passed, 0 failed"
