#!/usr/bin/env bash
# Installs what syncsched needs to build, test and benchmark (gnuplot-nox: bench/report's plots),
# from Debian's packages. Idempotent: a package already installed is skipped, and apt-get runs only
# when something is missing. libpq-dev builds the PostgreSQL store; postgresql-15 provides the
# throwaway servers its tests start (initdb and pg_ctl in /usr/lib/postgresql/15/bin; Debian's own
# cluster is neither needed nor used).
set -euo pipefail

packages=(build-essential cmake ninja-build pkg-config clang clang-format
          libboost1.81-dev libboost-url1.81-dev libsqlite3-dev nlohmann-json3-dev
          libgtest-dev libgmock-dev libbenchmark-dev gnuplot-nox valgrind nodejs npm
          libpq-dev postgresql-15)
missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    # Node.js may come from elsewhere (the machine's own node); only then is npm skipped too.
    if [[ "$p" == nodejs || "$p" == npm ]] && command -v node >/dev/null && command -v npm >/dev/null; then
      continue
    fi
    missing+=("$p")
  fi
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
else
  echo "setup: all packages present"
fi
