// A host program embedding syncsched: it registers callbacks, adds connections, starts syncs and
// prints the runs as they happen. It runs a simulated week in virtual time (a second or so),
// or, with --real, the same in real time with short frequencies until interrupted.
//
//   ./build/examples/embed            # a week of schedules in virtual time
//   ./build/examples/embed --real     # real time, 2-second frequencies; Ctrl-C to stop
#include <boost/asio/io_context.hpp>
#include <csignal>
#include <cstring>
#include <iostream>
#include <mutex>
#include <thread>

#include "syncsched/syncsched.h"

using namespace std::chrono_literals;
using syncsched::RunContext;
using syncsched::RunReport;

namespace {

std::mutex out_mu;

RunReport SyncIssues(const RunContext& ctx) {
  std::lock_guard lock(out_mu);
  std::cout << "run " << ctx.run_id << "  " << syncsched::ToString(ctx.key) << "  slot "
            << syncsched::FormatTime(ctx.slot) << "  mode " << syncsched::ToString(ctx.mode)
            << "\n";
  return RunReport::Success({{"Issue", 3, 1, 0}});
}

RunReport SyncUsers(const RunContext& ctx) {
  if (ctx.key.connection == "globex") return RunReport::Failure("401 from the provider");
  return SyncIssues(ctx);
}

int Die(const syncsched::Status& s) {
  std::cerr << "embed: " << s << "\n";
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  bool real = argc > 1 && std::strcmp(argv[1], "--real") == 0;
  boost::asio::io_context io;
  syncsched::VirtualClock vclock;
  syncsched::Options options;
  if (real) {
    options.frequency_bounds.min = 1s;  // short frequencies for the demonstration
  } else {
    options.clock = &vclock;
    options.executor = io.get_executor();
    options.run_executor = io.get_executor();
  }
  auto opened = syncsched::Engine::Open(options);
  if (!opened.ok()) return Die(opened.status());
  auto& engine = *opened.value();

  if (auto s = engine.RegisterCallback("github", "issues", SyncIssues); !s.ok()) return Die(s);
  if (auto s = engine.RegisterCallback("github", "users", SyncUsers); !s.ok()) return Die(s);
  syncsched::SyncDefinition issues;
  issues.name = "issues";
  issues.frequency = real ? "2s" : "every 6 hours";
  syncsched::SyncDefinition users;
  users.name = "users";
  users.frequency = real ? "3s" : "every day";
  users.auto_start = false;
  for (auto* def : {&issues, &users}) {
    if (auto s = engine.DefineSync("github", *def); !s.ok()) return Die(s);
  }
  for (const char* conn : {"acme", "globex"}) {
    if (auto s = engine.AddConnection("github", conn); !s.ok()) return Die(s);
  }
  // `users` is not auto-started: start it on every connection (no connection named).
  auto started = engine.Start(syncsched::Target{"github", std::nullopt, {{"users"}}});
  if (!started.ok()) return Die(started.status());
  std::cout << "started " << started->Count(syncsched::Outcome::kStarted) << " schedules\n";

  if (real) {
    static std::atomic<bool> stop{false};
    std::signal(SIGINT, [](int) { stop = true; });
    while (!stop) std::this_thread::sleep_for(100ms);
  } else {
    vclock.RunFor(io, std::chrono::hours(24 * 7));
  }

  auto status = engine.GetStatus(syncsched::Target{"github", std::nullopt, {}});
  if (!status.ok()) return Die(status.status());
  std::lock_guard lock(out_mu);
  for (const auto& st : *status) {
    std::cout << syncsched::ToString(st.key) << ": " << syncsched::ToString(st.status) << ", "
              << st.runs << " runs, " << st.failures << " failures, every "
              << syncsched::FormatFrequency(st.frequency);
    if (!st.last_error.empty()) std::cout << ", last error: " << st.last_error;
    std::cout << "\n";
  }
  return 0;
}
