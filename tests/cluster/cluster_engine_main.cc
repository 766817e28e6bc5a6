// syncsched_cluster_engine: one engine in cluster mode in a process of its own, for the engine
// cluster tests that kill (SIGKILL), freeze (SIGSTOP) or stop (SIGTERM) it
// (tests/cluster/engine_cluster_test.cc, tests/cluster/cluster_soak.cc).
//
//   syncsched_cluster_engine URI NODE LEASE_MS PARTITIONS [RUN_MS] [--log FILE] [--commands]
//                            [--history N] [--workers N]
//
// Opens an Engine on URI with Options::cluster {NODE, LEASE_MS, PARTITIONS}, frequencies down to
// 1 s and 1000 runs of history per schedule (--history), a fallback callback that succeeds after
// RUN_MS (default 0; it stops early when cancelled), releases its timers and prints "node <node
// id>" then "ready".
//
// Every run it calls prints "run <node> <run id> <slot ms>", or with --log appends one line to
// FILE instead, with one write(2) on a descriptor opened O_APPEND (so that every record written
// before a SIGKILL is in the file, whole):
//
//   <node id> <run id> <slot ms> <attempt> <connection>/<sync> <partition> <epoch> <call ms>
//
// where <epoch> is the epoch of this engine's lease on the key's partition, valid on this engine
// at the moment of the call (-1: none), and <call ms> the wall clock at the call.
//
// --commands: stdin is a command channel, one command per line, executed one after another:
//
//   <id> pause|start|trigger <key>            a key is "<connection>/<sync>" (base variant, of
//                                             integration "it")
//   <id> freq <key> <frequency|->             ("-": back to the sync's default)
//   <id> populate <connections> <syncs>       on an engine alone: waits until it holds every
//                                             partition, adds connections c0..c<connections-1>
//                                             and defines syncs s0..s<syncs-1>, every 1 s with
//                                             phase spreading (one commit per connection and
//                                             per sync, not per schedule)
//   <id> status [key]                         every schedule of "it" (or that one): "st <id>
//                                             <key> <STATE> <frequency ms> <overridden 0|1>"
//   <id> metrics                              the cluster counters
//
// each answered "ack <id> OK <outcome or detail>" or "ack <id> ERR <code> <message>".
//
// SIGTERM (or SIGINT): Engine::Shutdown (a graceful hand-over), prints "stopped", exits 0. Exit 2:
// bad arguments; exit 1: the engine did not open (the message on stderr).
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>

#include "cluster/lease_keeper.h"
#include "cluster/partition.h"
#include "core/engine_access.h"
#include "syncsched/engine.h"
#include "syncsched/options.h"

namespace {

using namespace std::chrono_literals;

constexpr const char* kIntegration = "it";

std::mutex out_mu;

void Print(const std::string& line) {
  std::lock_guard lock(out_mu);
  std::fwrite(line.data(), 1, line.size(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
}

std::string OneLine(std::string s) {
  for (char& c : s) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return s;
}

std::string Err(const syncsched::Status& s) {
  return "ERR " + std::string(syncsched::StatusCodeName(s.code())) + " " + OneLine(s.message());
}

std::string Outcomes(const syncsched::CommandResult& r) {
  std::string out;
  for (std::size_t i = 0; i < syncsched::kOutcomeCount; ++i) {
    if (r.counts[i] == 0) continue;
    if (!out.empty()) out += ',';
    out += std::string(syncsched::ToString(static_cast<syncsched::Outcome>(i))) + "=" +
           std::to_string(r.counts[i]);
  }
  return out.empty() ? "none" : out;
}

// One command line; the answer lines printed.
void Command(syncsched::Engine& engine, int partitions, const std::string& line) {
  using syncsched::Target;
  std::istringstream in(line);
  std::string id, verb, arg, extra;
  in >> id >> verb >> arg >> extra;
  const std::string ack = "ack " + id + " ";
  const std::string connection = arg.substr(0, arg.find('/'));
  const std::string sync = arg.find('/') == std::string::npos ? "" : arg.substr(arg.find('/') + 1);
  auto target = [&] { return Target{kIntegration, connection, {syncsched::SyncSelector{sync}}}; };
  auto answer = [&](const syncsched::Result<syncsched::CommandResult>& r) {
    Print(ack + (r.ok() ? "OK " + Outcomes(*r) : Err(r.status())));
  };
  if (verb == "pause") {
    answer(engine.Pause(target()));
  } else if (verb == "start") {
    answer(engine.Start(target()));
  } else if (verb == "trigger") {
    answer(engine.Trigger(target(), syncsched::RunMode::kIncremental));
  } else if (verb == "freq") {
    std::optional<std::string> f;
    if (extra != "-") f = extra;
    auto r = engine.UpdateFrequency(syncsched::ScheduleKey{kIntegration, connection, sync}, f);
    Print(ack + (r.ok() ? "OK " + std::to_string(r->count()) : Err(r.status())));
  } else if (verb == "populate") {
    // Connections first (each adds the schedule of s0), then each further sync adds a schedule
    // to every connection in one commit: a few hundred commits for thousands of schedules.
    syncsched::SyncDefinition def;
    def.name = "s0";
    def.frequency = "1s";
    def.spread = true;  // the schedules' slots spread over the second
    syncsched::Status s = engine.DefineSync(kIntegration, def);
    auto deadline = std::chrono::steady_clock::now() + 30s;
    while (s.ok() && syncsched::internal::EngineAccess::LoadedPartitions(engine).size() !=
                         static_cast<std::size_t>(partitions)) {
      if (std::chrono::steady_clock::now() > deadline) {
        s = syncsched::Status::Unavailable("never held every partition");
      }
      std::this_thread::sleep_for(10ms);
    }
    const int connections = std::atoi(arg.c_str()), syncs = std::atoi(extra.c_str());
    for (int i = 0; s.ok() && i < connections; ++i) {
      s = engine.AddConnection(kIntegration, "c" + std::to_string(i));
    }
    for (int j = 1; s.ok() && j < syncs; ++j) {
      def.name = "s" + std::to_string(j);
      s = engine.DefineSync(kIntegration, def);
    }
    Print(ack + (s.ok() ? "OK " + std::to_string(connections * syncs) : Err(s)));
  } else if (verb == "status") {
    auto st = arg.empty() ? engine.GetStatus(Target{kIntegration, std::nullopt, {}})
                          : engine.GetStatus(target());
    if (!st.ok()) {
      Print(ack + Err(st.status()));
      return;
    }
    std::string block;
    for (const syncsched::ScheduleStatus& s : *st) {
      block += "st " + id + " " + s.key.connection + "/" + s.key.sync + " " +
               std::string(ToString(s.state)) + " " + std::to_string(s.frequency.count()) + " " +
               (s.frequency_overridden ? "1" : "0") + "\n";
    }
    block += ack + "OK " + std::to_string(st->size());
    Print(block);
  } else if (verb == "metrics") {
    syncsched::EngineMetrics m = engine.GetMetrics();
    Print(ack + "OK owned=" + std::to_string(m.cluster_partitions_owned) +
          " nodes=" + std::to_string(m.cluster_nodes_live) + " renewals=" +
          std::to_string(m.cluster_lease_renewals) + " claims=" + std::to_string(m.cluster_claims) +
          " takeovers=" + std::to_string(m.cluster_takeovers) + " releases=" +
          std::to_string(m.cluster_releases) + " lost=" + std::to_string(m.cluster_leases_lost) +
          " fenced=" + std::to_string(m.cluster_fenced_refusals) +
          " commits_failed=" + std::to_string(m.store_commits_failed));
  } else {
    Print(ack + "ERR INVALID_ARGUMENT unknown command " + verb);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 5) {
    std::fprintf(stderr,
                 "usage: %s URI NODE LEASE_MS PARTITIONS [RUN_MS] [--log FILE] [--commands] "
                 "[--history N] [--workers N]\n",
                 argv[0]);
    return 2;
  }
  long long run_ms = 0;
  std::string log_path;
  bool commands = false;
  std::size_t history = 1000, workers = 4;
  for (int i = 5; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--log" && i + 1 < argc) {
      log_path = argv[++i];
    } else if (a == "--commands") {
      commands = true;
    } else if (a == "--history" && i + 1 < argc) {
      history = static_cast<std::size_t>(std::atoll(argv[++i]));
    } else if (a == "--workers" && i + 1 < argc) {
      workers = static_cast<std::size_t>(std::atoll(argv[++i]));
    } else if (!a.empty() && a[0] != '-') {
      run_ms = std::atoll(a.c_str());
    } else {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);  // before any thread: every thread inherits it

  int log_fd = -1;
  if (!log_path.empty()) {
    log_fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (log_fd < 0) {
      std::fprintf(stderr, "%s: %s\n", log_path.c_str(), std::strerror(errno));
      return 1;
    }
  }

  syncsched::Options options;
  options.database_path = argv[1];
  options.frequency_bounds.min = std::chrono::seconds(1);
  options.run_history = history;
  options.worker_threads = workers;
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
  syncsched::cluster::LeaseKeeper* keeper = syncsched::internal::EngineAccess::KeeperOf(**engine);
  const std::int64_t node_id = keeper != nullptr ? keeper->node_id() : 0;
  const int partitions = keeper != nullptr ? keeper->partitions_total() : cluster.partitions;
  std::string node = argv[2];
  const auto run_for = std::chrono::milliseconds(run_ms);
  (*engine)->SetFallbackCallback(
      [node, run_for, log_fd, keeper, node_id, partitions](const syncsched::RunContext& ctx) {
        const long long slot = static_cast<long long>(ctx.slot.time_since_epoch().count());
        if (log_fd >= 0) {
          const int p = syncsched::cluster::PartitionOf(ctx.key, partitions);
          std::int64_t epoch = -1;
          if (keeper != nullptr) {
            auto owned = keeper->Owned();
            auto it = owned.find(p);
            if (it != owned.end()) epoch = it->second;
          }
          const long long call_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                                        std::chrono::system_clock::now().time_since_epoch())
                                        .count();
          char buf[512];
          int n = std::snprintf(buf, sizeof buf, "%lld %s %lld %d %s/%s %d %lld %lld\n",
                                static_cast<long long>(node_id), ctx.run_id.c_str(), slot,
                                ctx.attempt, ctx.key.connection.c_str(), ctx.key.sync.c_str(), p,
                                static_cast<long long>(epoch), call_ms);
          if (n > 0 && static_cast<std::size_t>(n) < sizeof buf) {
            (void)!::write(log_fd, buf, static_cast<std::size_t>(n));
          }
        } else {
          Print("run " + node + " " + ctx.run_id + " " + std::to_string(slot));
        }
        auto until = std::chrono::steady_clock::now() + run_for;
        while (std::chrono::steady_clock::now() < until && !ctx.cancel.cancelled()) {
          std::this_thread::sleep_for(std::chrono::milliseconds(5));
        }
        return syncsched::RunReport{};
      });
  (*engine)->ReleaseTimers();
  Print("node " + std::to_string(node_id));
  Print("ready");
  if (commands) {
    // Detached: at SIGTERM the process exits (std::_Exit below) whatever this thread is doing.
    std::thread([e = (*engine).get(), partitions] {
      std::string line;
      while (std::getline(std::cin, line)) {
        if (!line.empty()) Command(*e, partitions, line);
      }
    }).detach();
  }
  int sig = 0;
  sigwait(&set, &sig);
  (*engine)->Shutdown(std::chrono::steady_clock::now() + std::chrono::seconds(5));
  Print("stopped");
  if (commands) std::_Exit(0);  // the command thread may still be inside the engine
  return 0;
}
