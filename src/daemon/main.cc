// syncschedd: the syncsched engine behind Nango's HTTP API. Usage: syncschedd --config FILE.
//
// Exit status: 0 after a graceful shutdown (SIGTERM, SIGINT) or --check-config of a valid file;
// 1 when the daemon cannot start (database in use or unreadable, address in use); 2 for a
// configuration or usage error. Logs go to stderr, one JSON object per line.
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <variant>

#include "daemon/command_runner.h"
#include "daemon/config.h"
#include "daemon/daemon.h"
#include "daemon/log.h"

namespace {

using syncsched::daemon::Config;
using syncsched::daemon::ConfigError;
using syncsched::daemon::Logger;

constexpr int kExitRuntime = 1;
constexpr int kExitConfig = 2;

void Usage(std::FILE* out) {
  std::fputs(
      "usage: syncschedd --config FILE [--check-config]\n"
      "  --config FILE    the JSON configuration (see docs/daemon.md)\n"
      "  --check-config   validate the configuration and exit (0 valid, 2 invalid)\n",
      out);
}

// Commands inherit fds 0-2 through posix_spawn's dup2s; make sure none of them is free, so that
// a pipe never lands on one.
void EnsureStandardFds() {
  for (int fd = 0; fd <= 2; ++fd) {
    if (fcntl(fd, F_GETFD) < 0) {
      int null = open("/dev/null", O_RDWR);
      if (null >= 0 && null != fd) {
        dup2(null, fd);
        close(null);
      }
    }
  }
}

// Huge pages for malloc's heap. With a million schedules the daemon's memory is touched for the
// first time at start (recovery) and during a big start; on a virtual machine each 4 KiB page
// fault is dear, and transparent huge pages (2 MiB) cut them ~500-fold: recovery of 1M schedules
// took 2.3x less time here (docs/benchmarks.md, "Huge pages"). Linux gives malloc's heap huge
// pages only when asked (transparent_hugepage=madvise, the common default), and glibc asks only
// when GLIBC_TUNABLES says glibc.malloc.hugetlb=1 at process start; so the daemon re-executes
// itself once with it added, unless GLIBC_TUNABLES already names glibc.malloc.hugetlb (=0 turns it
// off) or the daemon runs under valgrind (whose malloc ignores it and which would not follow the
// exec). Commands get GLIBC_TUNABLES as it was. Nothing changes where THP is off or always on.
// The re-executed daemon learns GLIBC_TUNABLES as it was from this variable: "<pid>-" (it was
// not set) or "<pid>=<value>". The pid (exec keeps it) tells the daemon's own mark from a variable
// of that name it was started with, which is ignored.
constexpr char kTunablesBefore[] = "SYNCSCHED_GLIBC_TUNABLES_BEFORE";

void UseHugePagesForMalloc(char** argv) {
  const std::string mine = std::to_string(getpid());
  if (const char* before = std::getenv(kTunablesBefore)) {
    std::string b = before;
    unsetenv(kTunablesBefore);
    if (b.starts_with(mine) && b.size() > mine.size() &&
        (b[mine.size()] == '-' || b[mine.size()] == '=')) {
      // The re-executed daemon.
      syncsched::daemon::RestoreGlibcTunablesInCommands(
          b[mine.size()] == '=' ? std::optional<std::string>(b.substr(mine.size() + 1))
                                : std::nullopt);
      return;
    }
  }
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  std::string current = tunables != nullptr ? tunables : "";
  if (current.find("glibc.malloc.hugetlb") != std::string::npos) return;
  const char* preload = std::getenv("LD_PRELOAD");
  if (preload != nullptr && std::strstr(preload, "vgpreload") != nullptr) return;
  std::string before = mine + (tunables != nullptr ? "=" + current : "-");
  std::string value = (current.empty() ? "" : current + ":") + "glibc.malloc.hugetlb=1";
  setenv(kTunablesBefore, before.c_str(), 1);
  setenv("GLIBC_TUNABLES", value.c_str(), 1);
  execv("/proc/self/exe", argv);
  // Not re-executed (no /proc): go on as started.
  unsetenv(kTunablesBefore);
  if (tunables != nullptr) {
    setenv("GLIBC_TUNABLES", current.c_str(), 1);
  } else {
    unsetenv("GLIBC_TUNABLES");
  }
}

// Raises the soft limit on open files to the hard one: with the common soft limit of 1024, the
// default max_connections (1024) could not be reached, and an accept failing for want of a
// descriptor leaves every new client waiting. Commands get the original limit back. Warns when
// the limit stays below what the configuration may need.
void RaiseOpenFileLimit(const Config& config, Logger& log) {
  rlimit original{};
  if (getrlimit(RLIMIT_NOFILE, &original) != 0) return;
  rlimit raised = original;
  raised.rlim_cur = original.rlim_max;
  if (raised.rlim_cur != original.rlim_cur && setrlimit(RLIMIT_NOFILE, &raised) == 0) {
    syncsched::daemon::RestoreOpenFileLimitInCommands(original);
  } else {
    raised = original;
  }
  // Connections, refusals lingering (128), the database, pipes and pidfds of runs in flight (an
  // unlimited max_concurrent_runs counted as 1024), a margin.
  rlim_t runs = config.max_concurrent_runs != 0 ? config.max_concurrent_runs : 1024;
  rlim_t needed = config.limits.max_connections + 128 + 3 * runs + 64;
  if (raised.rlim_cur != RLIM_INFINITY && raised.rlim_cur < needed) {
    log.Warn(
        "the limit on open files is below what limits.max_connections may need: clients "
        "past it wait until a connection closes",
        {{"open_files_limit", static_cast<std::uint64_t>(raised.rlim_cur)},
         {"needed", static_cast<std::uint64_t>(needed)}});
  }
}

}  // namespace

int main(int argc, char** argv) {
  UseHugePagesForMalloc(argv);
  // No SQLite memory statistics: every SQLite allocation would take their global mutex, ~7% of the
  // writer's time per run (BM_DurableFire). Only possible before SQLite is first used.
  sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
  EnsureStandardFds();
  Logger log;
  std::string config_path;
  bool check_only = false;
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--config" && i + 1 < argc) {
      config_path = argv[++i];
    } else if (arg.substr(0, 9) == "--config=") {
      config_path = std::string(arg.substr(9));
    } else if (arg == "--check-config") {
      check_only = true;
    } else if (arg == "--help" || arg == "-h") {
      Usage(stdout);
      return 0;
    } else {
      log.Error("bad arguments", {{"argument", std::string(arg)}});
      Usage(stderr);
      return kExitConfig;
    }
  }
  if (config_path.empty()) {
    log.Error("missing --config FILE");
    Usage(stderr);
    return kExitConfig;
  }

  syncsched::daemon::ConfigResult loaded = syncsched::daemon::LoadConfig(config_path);
  if (const auto* error = std::get_if<ConfigError>(&loaded)) {
    std::string msg = "configuration error in " + config_path + ": ";
    if (!error->field.empty()) msg += error->field + ": ";
    msg += error->message;
    log.Error(msg, {{"file", config_path}, {"field", error->field}});
    return kExitConfig;
  }
  const Config& config = std::get<Config>(loaded);
  log.set_min_level(config.log_level);
  if (check_only) {
    log.Info("configuration is valid", {{"file", config_path}});
    return 0;
  }
  RaiseOpenFileLimit(config, log);
  if (config.api_keys.empty()) {
    log.Warn("no api_keys configured: every route but GET /health will answer 401");
  }

  // Signals: SIGTERM and SIGINT are taken synchronously by this thread; every thread started
  // from here inherits the mask (commands get a clean one from the runner). SIGPIPE and SIGXFSZ are
  // ignored.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);
  // A write past the file size limit (RLIMIT_FSIZE) fails with EFBIG, which SQLite reports as
  // an error, instead of killing the daemon.
  signal(SIGXFSZ, SIG_IGN);

  // Every allocation of 1 MiB or more is a mapping of its own, unmapped when freed: a burst's
  // big buffers (a fold of the run journal, a start of many schedules, a large answer) go back to
  // the kernel at once instead of staying in a heap they fragment. Setting it also stops glibc
  // from raising the threshold to the size of the largest block freed so far (its default), which
  // would move every later buffer of that size into the heap.
  mallopt(M_MMAP_THRESHOLD, 1 << 20);
  auto started = syncsched::daemon::Daemon::Start(config, log);
  if (!started.ok()) {
    const syncsched::Status& s = started.status();
    log.Error("cannot start: " + s.ToString(), {{"code", std::string(StatusCodeName(s.code()))}});
    return s.IsInvalidArgument() ? kExitConfig : kExitRuntime;
  }
  std::unique_ptr<syncsched::daemon::Daemon> daemon = std::move(started.value());

  // Waiting for a signal, this thread returns the heap's free memory to the kernel once a minute
  // (docs/daemon.md, "Memory: free memory returned"): glibc keeps what a burst of allocations on
  // one thread's arena freed, so without it the resident size ratchets up with every burst.
  // Once a second it also looks whether the database store is broken for good
  // (EngineMetrics::store_broken): the engine's state no longer matches the database's, and only
  // a restart, which recovers exactly what the database holds, mends that. The daemon then shuts
  // down as for SIGTERM and exits with kExitRuntime, for its supervisor to restart it.
  // GetHealth, not GetMetrics: it never waits for a command's commit, so a stalled database does
  // not delay the signals. A withdrawal from the cluster is logged here too (once per count seen).
  int sig = 0;
  const timespec kWakeEvery{1, 0};
  std::uint64_t withdrawals = 0;
  for (int second = 1;; ++second) {
    sig = sigtimedwait(&signals, nullptr, &kWakeEvery);
    if (sig > 0) break;
    if (errno != EAGAIN) continue;
    if (second % 60 == 0) malloc_trim(0);
    const syncsched::EngineHealth m = daemon->engine().GetHealth();
    if (m.cluster_withdrawals > withdrawals) {
      withdrawals = m.cluster_withdrawals;
      log.Warn(
          "left the cluster for a while: the database refused this daemon's commits while its "
          "leases were renewed, so its partitions run on the other daemons until it commits again",
          {{"withdrawals", withdrawals}, {"error", m.store_error}});
    }
    if (m.store_broken) {
      log.Error(
          "the database store is broken for good: shutting down, for the supervisor to restart "
          "the daemon (the restart recovers exactly what the database holds)",
          {{"error", m.store_error}});
      break;
    }
  }
  if (sig > 0) log.Info("shutting down", {{"signal", sig == SIGTERM ? "SIGTERM" : "SIGINT"}});
  // A second signal during the shutdown ends the process at once, the runs' process groups
  // first (SIGKILL; the watchdog would too, once the daemon is gone).
  std::thread([&log, signals] {
    int again = 0;
    while (sigwait(&signals, &again) != 0) {
    }
    log.Warn("second signal: killing the runs' process groups and exiting without waiting");
    syncsched::daemon::KillAllRunGroups();
    std::_Exit(kExitRuntime);
  }).detach();
  // Not OK when the database refused the last commits: logged, and the exit says so.
  const bool recorded = daemon->Shutdown().ok();
  daemon.reset();
  return recorded && sig > 0 ? 0 : kExitRuntime;
}
