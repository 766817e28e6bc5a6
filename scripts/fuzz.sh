#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz) with clang, ASan and UBSan in build-fuzz/, and runs
# each for a bounded time over its corpus. CI runs `scripts/fuzz.sh 12` (scripts/test.sh); run
# longer on demand:
#
#   scripts/fuzz.sh 3600               # an hour per target, every target
#   scripts/fuzz.sh 600 http codec     # ten minutes each for two of them
#
# Targets: frequency url codec config http. Each run starts from the seed corpus in the repo
# (tests/fuzz/corpus/<target>/), the kept crashing inputs (tests/fuzz/regressions/<target>/) and
# what earlier runs on this machine found (build-fuzz/corpus/<target>/, where new inputs go).
# A crash, a leak, a sanitizer report, an invariant broken, or an input running over 10 s fails
# the run: the input is left in build-fuzz/crashes/<target>/ (reproduce with
# `build-fuzz/tests/fuzz/fuzz_<target> <file>`). Keep it as a regression test by copying it to
# tests/fuzz/regressions/<target>/ (the replay test, syncsched_fuzz_replay, then runs it in every
# ordinary test build) once the bug is fixed. FUZZ_JOBS sets the build's parallelism (default:
# the number of cores), FUZZ_PARALLEL how many targets fuzz at once (default 1).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
shift || true
targets=("$@")
((${#targets[@]})) || targets=(frequency url codec config http)
jobs=${FUZZ_JOBS:-$(nproc)}
# FUZZ_CXX_FLAGS: the optimisation and debug flags of the build (CI: "-O1 -g1 -DNDEBUG", quicker
# to compile); the default is RelWithDebInfo's.
flags=${FUZZ_CXX_FLAGS:--O2 -g -DNDEBUG}

cmake -S . -B build-fuzz -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="$flags" \
  -DSYNCSCHED_FUZZ=ON -DSYNCSCHED_BUILD_TESTS=OFF -DSYNCSCHED_BUILD_BENCH=OFF \
  -DSYNCSCHED_BUILD_EXAMPLES=OFF -DSYNCSCHED_INSTALL=OFF >/dev/null
build_targets=()
for t in "${targets[@]}"; do build_targets+=("fuzz_$t"); done
cmake --build build-fuzz -j "$jobs" --target "${build_targets[@]}"

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
# FUZZ_PARALLEL targets fuzz at once (default 1; CI: the number of cores), each on one core.
parallel=${FUZZ_PARALLEL:-1}
fuzz_one() {  # target: runs it, writes its exit status to build-fuzz/fuzz-<target>.status
  local t=$1 work=build-fuzz/corpus/$1 crashes=build-fuzz/crashes/$1 dict=() status=0
  mkdir -p "$work" "$crashes" tests/fuzz/regressions/"$t"
  [[ -f tests/fuzz/$t.dict ]] && dict=(-dict="tests/fuzz/$t.dict")
  echo "== fuzz_$t: ${seconds}s"
  build-fuzz/tests/fuzz/fuzz_"$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -max_len=65536 -print_final_stats=1 -artifact_prefix="$crashes/" "${dict[@]}" \
    "$work" tests/fuzz/corpus/"$t" tests/fuzz/regressions/"$t" >build-fuzz/fuzz-"$t".log 2>&1 ||
    status=$?
  echo "$status" >build-fuzz/fuzz-"$t".status
}
running=0
for t in "${targets[@]}"; do
  rm -f build-fuzz/fuzz-"$t".status
  fuzz_one "$t" &
  running=$((running + 1))
  if ((running >= parallel)); then
    wait -n || true
    running=$((running - 1))
  fi
done
wait
summary=()
failed=()
for t in "${targets[@]}"; do
  work=build-fuzz/corpus/$t
  crashes=build-fuzz/crashes/$t
  log=build-fuzz/fuzz-$t.log
  status=$(cat build-fuzz/fuzz-"$t".status 2>/dev/null || echo "no status")
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
  summary+=("$(printf '%-10s %10s execs %7s/s  %s  corpus %s' "$t" "${execs:-?}" "${rate:-?}" \
    "${cov:-}" "$(ls "$work" | wc -l)")")
  if [[ $status != 0 ]]; then
    failed+=("$t")
    echo "fuzz_$t FAILED (exit $status); the end of $log:"
    tail -n 60 "$log"
    echo "inputs kept in $crashes/:"
    ls -l "$crashes"
  fi
done
echo "== fuzzing summary (${seconds}s per target)"
printf '%s\n' "${summary[@]}"
if ((${#failed[@]})); then
  echo "FAILED: ${failed[*]}"
  exit 1
fi
