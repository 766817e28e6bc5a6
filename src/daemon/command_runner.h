// The command runner: performs one run of a sync by executing its configured argv (SPEC §8).
//
// The process is started without a shell (clone with CLONE_VFORK, then execve; the first word is
// searched in PATH when it has no '/'), in a process group of its own, with PR_SET_PDEATHSIG set
// to SIGKILL (it dies with the daemon, whatever kills the daemon), with the daemon's environment
// less its own SYNCSCHED_* variables (the prefix is reserved for the run's) plus
// SYNCSCHED_INTEGRATION, _CONNECTION, _SYNC, _VARIANT, _RUN_ID, _MODE (incremental |
// full_resync), _SLOT (ISO 8601 UTC), _ATTEMPT and _NODE (the daemon's name, SetNode; absent
// until set); stdin is /dev/null;
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
// The watchdog: each runner forks a small process at construction that learns each run's process
// group (the child registers it before it executes the command, so before it can have children)
// and forgets it when the run ends. When the daemon dies, however it dies, its end of their
// socket closes, and the watchdog SIGKILLs every group still registered, then exits. So a SIGKILL
// of the daemon leaves no run's process behind: not the command (PDEATHSIG, and the watchdog),
// not its children in its group (the watchdog). A process that left the group (setsid, setpgid)
// escapes, as it escapes cancellation.
//
// Runs hold no thread: RunAsync spawns the process on the calling thread (a vfork-style clone,
// returning once the child has executed the command) and the runner's own thread then watches
// every run's pipes, its pidfd (the process's exit) and its kill timer on one io_context. So
// thousands of commands can be in flight with a handful of engine workers; what bounds them is
// the engine's max_concurrent_runs and the limit on open files (three descriptors a run).
//
// Thread safety: Run and RunAsync may be called from many threads at once; the other methods
// from any thread.
#pragma once

#include <sys/resource.h>
#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <memory>
#include <thread>

#include "daemon/log.h"
#include "syncsched/types.h"

namespace syncsched::daemon {

inline constexpr std::size_t kStderrTailBytes = 2048;

// SIGKILLs the process group of every run in flight, of every runner. For a second signal: then
// the daemon exits without waiting. Safe to call from any thread at any time.
void KillAllRunGroups();
// Commands get `original` as their limit on open files (the daemon raised its own: main.cc).
void RestoreOpenFileLimitInCommands(const rlimit& original);
// Commands get GLIBC_TUNABLES as it was before the daemon added huge pages for malloc (main.cc):
// `original` is its value then, or nullopt when it was not set. Call before any command starts.
void RestoreGlibcTunablesInCommands(std::optional<std::string> original);

class CommandRunner {
 public:
  // Starts the watchdog (a fork: only async-signal-safe calls in the child, so the calling
  // process may have threads). If it cannot, an error is logged and runs go on without it.
  CommandRunner(Logger& log, Millis kill_grace);
  // Stops the runner's thread (a run still in flight then never completes: call it once every
  // run has ended, as Daemon::Shutdown does), ends the watchdog (it kills whatever is still
  // registered) and reaps it.
  ~CommandRunner();
  CommandRunner(const CommandRunner&) = delete;
  CommandRunner& operator=(const CommandRunner&) = delete;

  // Executes `argv` for the run `ctx` and returns at once: the process is spawned on the
  // runner's thread (so that PR_SET_PDEATHSIG ties it to the runner, not to the caller's thread).
  // `done` is called exactly once with the report: on the runner's thread once the process has
  // exited and been reaped, or when the command cannot be started (an error saying why); on this
  // thread when the run is already cancelled; after BeginShutdown, on the cancelling thread once
  // the run is cancelled. Never throws. `argv` and `ctx` are copied.
  void RunAsync(const std::vector<std::string>& argv, const RunContext& ctx, RunDone done);
  // RunAsync, waiting for the report.
  RunReport Run(const std::vector<std::string>& argv, const RunContext& ctx);

  // The daemon's name, passed to every command started from now on as SYNCSCHED_NODE (the
  // engine that runs it, in a cluster). Any thread.
  void SetNode(std::string node);

  // From now on Run starts no process: it waits for its run to be cancelled (as the engine does
  // for every run in flight when it closes) and reports that. Runs already started go on.
  void BeginShutdown();
  // Waits until no command is running or `deadline` passes. True when none is running.
  bool WaitIdle(std::chrono::steady_clock::time_point deadline);

  // Commands being spawned or running: a run counts from just before its process is created until
  // just before its report is delivered. Any thread.
  std::size_t running() const;
  // Commands whose exec succeeded, and those that could not be started. Any thread.
  std::uint64_t spawned() const { return spawned_.load(std::memory_order_relaxed); }
  std::uint64_t spawn_failures() const { return spawn_failures_.load(std::memory_order_relaxed); }

 private:
  class Process;  // one run's process, watched on io_
  // Spawns the process and hands it to io_; false (and `done` called) when it cannot start.
  void StartProcess(const std::vector<std::string>& argv, const RunContext& ctx, RunDone& done);
  void Finished();  // a run counted in running_ has reported
  // On io_: starts the run, or parks it while a process group of its schedule is still alive (a
  // run abandoned at its timeout, or when its connection was deleted, is still in its kill
  // grace): never two commands of one schedule at once.
  void Launch(std::vector<std::string> argv, RunContext ctx, RunDone done);
  // On io_: a process of `schedule` has been reaped; the first run parked behind it starts.
  void ProcessEnded(const std::string& schedule);
  struct Parked {
    std::vector<std::string> argv;
    RunContext ctx;
    RunDone done;
  };
  // On io_: a parked run was cancelled: it reports at once and never starts.
  void CancelParked(const std::shared_ptr<Parked>& parked);
  struct ScheduleProcesses {
    int live = 0;                                // processes spawned and not yet reaped
    std::deque<std::shared_ptr<Parked>> parked;  // runs waiting for them, in arrival order
  };
  // Registers ('+') or forgets ('-') a run's process group, in the registry of KillAllRunGroups
  // and (for '-'; the child sends '+' itself) with the watchdog.
  void Watch(char op, pid_t pgid);

  Logger& log_;
  const Millis kill_grace_;
  std::atomic<bool> shutting_down_{false};
  std::atomic<std::uint64_t> spawned_{0};
  std::atomic<std::uint64_t> spawn_failures_{0};
  mutable std::mutex mu_;
  std::condition_variable idle_cv_;
  std::size_t running_ = 0;  // guarded by mu_
  std::string node_;         // guarded by mu_: SYNCSCHED_NODE, empty: not set
  int watch_fd_ = -1;        // the daemon's end of the watchdog's socket
  pid_t watchdog_ = -1;
  std::atomic<bool> watchdog_lost_{false};
  std::unordered_map<std::string, ScheduleProcesses> schedules_;  // on io_ only; by schedule key
  boost::asio::io_context io_{1};
  boost::asio::executor_work_guard<boost::asio::io_context::executor_type> work_{
      io_.get_executor()};
  std::thread thread_;  // runs io_
};

}  // namespace syncsched::daemon
