// The command runner: performs one run of a sync by executing its configured argv (SPEC §8).
//
// The process is started with posix_spawnp, without a shell, in a process group of its own, with
// the daemon's environment plus SYNCSCHED_INTEGRATION, _CONNECTION, _SYNC, _VARIANT, _RUN_ID,
// _MODE (incremental | full_resync), _SLOT (ISO 8601 UTC) and _ATTEMPT; stdin is /dev/null;
// stdout and stderr are read line by line into the log, and each line of output counts as a
// heartbeat; no other file descriptor of the daemon is inherited. When the run's token is
// cancelled (pause, delete, full resync, timeout, missed heartbeat, engine shutdown) the whole
// process group gets SIGTERM, then SIGKILL after `kill_grace`. When the command exits, whatever
// is left of its group is killed, so a run never leaves processes behind. Exit status 0 is
// success; anything else is an error whose message is the tail (at most kStderrTailBytes) of its
// stderr, or the exit status when stderr was empty.
//
// Directives: a command talks back to the engine through lines of its stdout (still logged):
//   SYNCSCHED_NEXT_RUN_IN=<duration>   the run's hint (RunReport::next_run_in): the next run this
//                                      long after this one finishes ("15m", "90s"); the last such
//                                      line wins; kept on success and on failure
//   SYNCSCHED_COUNTS <model> <added> <updated> <deleted>
//                                      per-model counts of a successful run (summed per model)
// A malformed directive is logged as a warning and ignored.
//
// Thread safety: Run may be called from many threads at once (one per run); the other methods
// from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "daemon/log.h"
#include "syncsched/types.h"

namespace syncsched::daemon {

inline constexpr std::size_t kStderrTailBytes = 2048;

class CommandRunner {
 public:
  CommandRunner(Logger& log, Millis kill_grace) : log_(log), kill_grace_(kill_grace) {}

  // Executes `argv` for the run `ctx` and blocks until the process has exited (and been reaped).
  // Never throws. A command that cannot be started is an error saying why.
  RunReport Run(const std::vector<std::string>& argv, const RunContext& ctx);

  // From now on Run starts no process: it waits for its run to be cancelled (as the engine does
  // for every run in flight when it closes) and reports that. Runs already started go on.
  void BeginShutdown();
  // Waits until no command is running or `deadline` passes. True when none is running.
  bool WaitIdle(std::chrono::steady_clock::time_point deadline);

  std::size_t running() const;
  std::uint64_t spawned() const { return spawned_.load(std::memory_order_relaxed); }
  std::uint64_t spawn_failures() const { return spawn_failures_.load(std::memory_order_relaxed); }

 private:
  RunReport RunProcess(const std::vector<std::string>& argv, const RunContext& ctx);
  RunReport WaitForCancel(const RunContext& ctx);

  Logger& log_;
  const Millis kill_grace_;
  std::atomic<bool> shutting_down_{false};
  std::atomic<std::uint64_t> spawned_{0};
  std::atomic<std::uint64_t> spawn_failures_{0};
  mutable std::mutex mu_;
  std::condition_variable idle_cv_;
  std::size_t running_ = 0;  // guarded by mu_
};

}  // namespace syncsched::daemon
