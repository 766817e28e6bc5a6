// syncsched_sim: the deterministic simulation test of the engine (tests/sim/simulator.h).
//
//   syncsched_sim --seed S [--steps N] [--trace]   one seed; a failure prints its replay command
//   syncsched_sim --seeds A..B [--steps N]         seeds A to B (inclusive)
//   --check-determinism                            runs each seed twice and compares the runs
//   --store sqlite|pg                              the store (default sqlite); pg: a fresh
//                                                  database per seed on the PostgreSQL test server
//                                                  (the ctest fixture's, or one started here)
//   --compare-stores                               runs each seed on SQLite and on PostgreSQL and
//                                                  compares the runs (the engine must behave the
//                                                  same on both: same digest)
//
// Prints the steps run and steps per second at the end. Exit status: 0 when every seed passed.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "sim/simulator.h"

namespace {

void Usage() {
  std::fprintf(stderr,
               "usage: syncsched_sim (--seed S | --seeds A..B) [--steps N] [--trace] "
               "[--check-determinism] [--store sqlite|pg] [--compare-stores]\n");
}

bool ParseU64(const char* s, std::uint64_t& out) {
  char* end = nullptr;
  unsigned long long v = std::strtoull(s, &end, 10);
  if (end == s || *end != '\0') return false;
  out = v;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  std::uint64_t first = 1, last = 1, steps = 1000;
  bool trace = false, determinism = false, have_seed = false, postgres = false, compare = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
    if (a == "--seed") {
      const char* v = value();
      if (!v || !ParseU64(v, first)) return Usage(), 2;
      last = first;
      have_seed = true;
    } else if (a == "--seeds") {
      const char* v = value();
      const char* dots = v ? std::strstr(v, "..") : nullptr;
      if (!dots) return Usage(), 2;
      std::string lo(v, dots);
      if (!ParseU64(lo.c_str(), first) || !ParseU64(dots + 2, last) || last < first) {
        return Usage(), 2;
      }
      have_seed = true;
    } else if (a == "--steps") {
      const char* v = value();
      if (!v || !ParseU64(v, steps)) return Usage(), 2;
    } else if (a == "--trace") {
      trace = true;
    } else if (a == "--check-determinism") {
      determinism = true;
    } else if (a == "--compare-stores") {
      compare = true;
    } else if (a == "--store") {
      const char* v = value();
      syncsched::testing::StoreKind kind;
      if (!v || !syncsched::testing::ParseStoreKind(v, &kind)) return Usage(), 2;
      postgres = kind == syncsched::testing::StoreKind::kPostgres;
    } else {
      return Usage(), 2;
    }
  }
  if (!have_seed) return Usage(), 2;

  std::uint64_t total_steps = 0, failed = 0, seeds = 0, instants = 0, runs = 0, crashes = 0,
                restarts = 0, faults = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (std::uint64_t seed = first; seed >= first && seed <= last; ++seed) {
    ++seeds;
    syncsched::sim::SimResult r;
    {
      syncsched::sim::Simulator sim({seed, steps, trace, postgres});
      r = sim.Run();
    }
    total_steps += r.steps;
    instants += r.instants;
    runs += r.model.invocations;
    crashes += r.crashes;
    restarts += r.restarts;
    faults += r.fails;
    if (determinism) {
      syncsched::sim::SimResult again;
      {
        syncsched::sim::Simulator sim({seed, steps, false, postgres});
        again = sim.Run();
      }
      if (again.hash != r.hash || again.steps != r.steps || again.failure != r.failure) {
        ++failed;
        std::printf(
            "NONDETERMINISTIC seed=%llu: two runs differ (steps %llu vs %llu, digest "
            "%016llx vs %016llx)\n",
            static_cast<unsigned long long>(seed), static_cast<unsigned long long>(r.steps),
            static_cast<unsigned long long>(again.steps), static_cast<unsigned long long>(r.hash),
            static_cast<unsigned long long>(again.hash));
        continue;
      }
    }
    if (compare) {
      syncsched::sim::SimResult other;
      {
        syncsched::sim::Simulator sim({seed, steps, false, !postgres});
        other = sim.Run();
      }
      if (other.hash != r.hash || other.steps != r.steps || other.failure != r.failure) {
        ++failed;
        std::printf(
            "STORES DIFFER seed=%llu: SQLite and PostgreSQL runs differ (steps %llu vs %llu, "
            "digest %016llx vs %016llx%s%s%s%s)\n",
            static_cast<unsigned long long>(seed),
            static_cast<unsigned long long>(postgres ? other.steps : r.steps),
            static_cast<unsigned long long>(postgres ? r.steps : other.steps),
            static_cast<unsigned long long>(postgres ? other.hash : r.hash),
            static_cast<unsigned long long>(postgres ? r.hash : other.hash),
            other.ok ? "" : "; the other failed: ", other.ok ? "" : other.failure.c_str(),
            r.ok ? "" : "; this one failed: ", r.ok ? "" : r.failure.c_str());
        continue;
      }
    }
    if (!r.ok) {
      ++failed;
      std::printf(
          "FAIL seed=%llu step=%llu: %s\n  during: %s\n  replay: syncsched_sim --seed "
          "%llu --steps %llu --trace\n",
          static_cast<unsigned long long>(seed), static_cast<unsigned long long>(r.failed_step),
          r.failure.c_str(), r.action.c_str(), static_cast<unsigned long long>(seed),
          static_cast<unsigned long long>(r.failed_step));
      std::fflush(stdout);
    }
    if (seed == UINT64_MAX) break;
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf(
      "syncsched_sim: %llu seeds, %llu steps (%llu instants, %llu runs, %llu crashes, "
      "%llu restarts, %llu failed commits) in %.2f s: %.0f steps/s%s; %llu failed\n",
      static_cast<unsigned long long>(seeds), static_cast<unsigned long long>(total_steps),
      static_cast<unsigned long long>(instants), static_cast<unsigned long long>(runs),
      static_cast<unsigned long long>(crashes), static_cast<unsigned long long>(restarts),
      static_cast<unsigned long long>(faults), secs,
      secs > 0 ? static_cast<double>(total_steps) * (determinism ? 2 : 1) / secs : 0.0,
      determinism ? " (each seed run twice)" : "", static_cast<unsigned long long>(failed));
  return failed == 0 ? 0 : 1;
}
