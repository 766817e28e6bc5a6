// syncsched-bench: benchmarks scheduling throughput, lateness, memory and CPU of a workload on
// syncsched or on a baseline (docs/bench-tool.md).
#include <csignal>
#include <cstdio>
#include <fstream>
#include <iostream>

#include "tool/runners.h"

#ifndef SYNCSCHED_BENCH_VERSION
#define SYNCSCHED_BENCH_VERSION "0"
#endif
#ifndef SYNCSCHED_BENCH_COMMIT
#define SYNCSCHED_BENCH_COMMIT "unknown"
#endif

int main(int argc, char** argv) {
  using namespace syncsched::benchtool;
  std::vector<std::string> args(argv + 1, argv + argc);
  ParseOutcome parsed = ParseArgs(args);
  switch (parsed.kind) {
    case ParseOutcome::Kind::kHelp:
      std::fputs(HelpText().c_str(), stdout);
      return 0;
    case ParseOutcome::Kind::kVersion:
      std::printf("syncsched-bench %s (commit %s)\n", SYNCSCHED_BENCH_VERSION,
                  SYNCSCHED_BENCH_COMMIT);
      return 0;
    case ParseOutcome::Kind::kError:
      std::fprintf(stderr, "syncsched-bench: %s\n", parsed.error.c_str());
      return 2;
    case ParseOutcome::Kind::kRun:
      break;
  }
  const Workload& w = parsed.workload;
  std::ofstream json_out;
  if (!w.json_path.empty()) {
    json_out.open(w.json_path);  // opened first: a bad path fails before a long run
    if (!json_out) {
      std::fprintf(stderr, "syncsched-bench: --json: cannot write '%s'\n", w.json_path.c_str());
      return 2;
    }
  }
  std::signal(SIGINT, [](int) { Harness::RequestStop(); });
  std::signal(SIGTERM, [](int) { Harness::RequestStop(); });

  Recorder rec;
  Harness h(w, rec);
  std::string error = RunWorkload(h);
  if (!error.empty()) {
    std::fprintf(stderr, "syncsched-bench: %s\n", error.c_str());
    return 1;
  }
  std::fputs(h.Summary().c_str(), stdout);
  if (json_out.is_open()) {
    json_out << h.ResultJson().dump(1) << "\n";
    if (!json_out) {
      std::fprintf(stderr, "syncsched-bench: --json: writing '%s' failed\n", w.json_path.c_str());
      return 1;
    }
  }
  return 0;
}
