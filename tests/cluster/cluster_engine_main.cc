// syncsched_cluster_engine: one engine in cluster mode in a process of its own, for the engine
// cluster tests that kill (SIGKILL) or stop (SIGTERM) it (tests/cluster/engine_cluster_test.cc).
//
//   syncsched_cluster_engine URI NODE LEASE_MS PARTITIONS [RUN_MS]
//
// Opens an Engine on URI with Options::cluster {NODE, LEASE_MS, PARTITIONS}, frequencies down to
// 1 s and 1000 runs of history per schedule, a fallback callback that succeeds after RUN_MS
// (default 0; it stops early when cancelled), releases
// its timers and prints "ready". Every run it calls prints "run <node> <run id> <slot ms>" (the
// test reads the database, not these lines, for its checks). SIGTERM (or SIGINT): Engine::Shutdown
// (a graceful hand-over), prints "stopped", exits 0. Exit 2: bad arguments; exit 1: the engine
// did not open (the message on stderr).
#include <signal.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>

#include "syncsched/engine.h"
#include "syncsched/options.h"

int main(int argc, char** argv) {
  if (argc < 5) {
    std::fprintf(stderr, "usage: %s URI NODE LEASE_MS PARTITIONS\n", argv[0]);
    return 2;
  }
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);  // before any thread: every thread inherits it

  syncsched::Options options;
  options.database_path = argv[1];
  options.frequency_bounds.min = std::chrono::seconds(1);
  options.run_history = 1000;
  syncsched::ClusterOptions cluster;
  cluster.node = argv[2];
  cluster.lease = std::chrono::milliseconds(std::atoll(argv[3]));
  cluster.partitions = std::atoi(argv[4]);
  options.cluster = cluster;
  auto engine = syncsched::Engine::Open(std::move(options));
  if (!engine.ok()) {
    std::fprintf(stderr, "%s\n", engine.status().ToString().c_str());
    return 1;
  }
  static std::mutex out;
  std::string node = argv[2];
  const auto run_for = std::chrono::milliseconds(argc > 5 ? std::atoll(argv[5]) : 0);
  (*engine)->SetFallbackCallback([node, run_for](const syncsched::RunContext& ctx) {
    {
      std::lock_guard lock(out);
      std::printf("run %s %s %lld\n", node.c_str(), ctx.run_id.c_str(),
                  static_cast<long long>(ctx.slot.time_since_epoch().count()));
      std::fflush(stdout);
    }
    auto until = std::chrono::steady_clock::now() + run_for;
    while (std::chrono::steady_clock::now() < until && !ctx.cancel.cancelled()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return syncsched::RunReport{};
  });
  (*engine)->ReleaseTimers();
  {
    std::lock_guard lock(out);
    std::printf("ready\n");
    std::fflush(stdout);
  }
  int sig = 0;
  sigwait(&set, &sig);
  (*engine)->Shutdown(std::chrono::steady_clock::now() + std::chrono::seconds(5));
  {
    std::lock_guard lock(out);
    std::printf("stopped\n");
    std::fflush(stdout);
  }
  return 0;
}
