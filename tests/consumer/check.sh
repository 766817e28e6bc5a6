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
# Versions: a compatible request is accepted, others refused (0.x: the same minor; then the major).
version=$(sed -n 's/^set(PACKAGE_VERSION "\(.*\)")$/\1/p' "$work/prefix"/lib*/cmake/syncsched/syncschedConfigVersion.cmake)
IFS=. read -r major minor _ <<<"$version"
if [ "$major" = 0 ]; then
  accept=("$major.$minor" "$major.$minor.0") refuse=("$major.$((minor + 1))" "$((major + 1)).0")
else
  accept=("$major.0" "$major.$minor") refuse=("$((major + 1)).0" "$((major - 1)).0")
fi
for v in "${accept[@]}"; do
  cmake -S "$src/tests/consumer" -B "$work/v" -G Ninja -DCMAKE_PREFIX_PATH="$work/prefix" \
    -DSYNCSCHED_WANT="$v" >/dev/null || { echo "find_package(syncsched $v) refused $version"; exit 1; }
  rm -rf "$work/v"
done
for v in "${refuse[@]}"; do
  if cmake -S "$src/tests/consumer" -B "$work/v" -G Ninja -DCMAKE_PREFIX_PATH="$work/prefix" \
    -DSYNCSCHED_WANT="$v" >/dev/null 2>&1; then
    echo "find_package(syncsched $v) accepted $version"; exit 1
  fi
  rm -rf "$work/v"
done
echo "find_package versions: ${accept[*]} accepted, ${refuse[*]} refused (installed $version)"
cmake -S "$src/tests/consumer" -B "$work/as" -G Ninja -DSYNCSCHED_SOURCE_DIR="$src" >/dev/null
cmake --build "$work/as" --target consumer >/dev/null
"$work/as/consumer"
echo "find_package and add_subdirectory consumers: 2 passed, 0 failed"
