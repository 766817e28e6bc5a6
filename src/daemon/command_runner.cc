// Running a sync's command as a child process. See command_runner.h.
#include "daemon/command_runner.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <set>
#include <string_view>

#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <future>

#include "core/names.h"
#include "syncsched/frequency.h"

extern char** environ;

namespace syncsched::daemon {
namespace {

using Clock = std::chrono::steady_clock;

// Longer output lines are logged in pieces of this size.
constexpr std::size_t kMaxLogLine = 4096;

class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() { Reset(); }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  void Reset() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }
  int Release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }

 private:
  int fd_;
};

std::string SignalName(int sig) {
  const char* abbrev = sigabbrev_np(sig);
  return abbrev ? std::string("SIG") + abbrev : std::to_string(sig);
}

// The last bytes of stderr, cut to start on a UTF-8 character and trimmed of white space.
std::string Tail(const std::string& text) {
  std::size_t start = text.size() > kStderrTailBytes ? text.size() - kStderrTailBytes : 0;
  while (start < text.size() && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) ++start;
  std::string_view tail(text);
  tail.remove_prefix(start);
  while (!tail.empty() && std::strchr(" \t\r\n", tail.back()) != nullptr) tail.remove_suffix(1);
  while (!tail.empty() && std::strchr(" \t\r\n", tail.front()) != nullptr) tail.remove_prefix(1);
  return std::string(tail);
}

// Splits a stream's bytes into lines for the log.
class LineSplitter {
 public:
  template <typename Emit>
  void Feed(std::string_view data, Emit&& emit) {
    for (char c : data) {
      if (c == '\n') {
        Flush(emit);
      } else {
        pending_ += c;
        if (pending_.size() >= kMaxLogLine) Flush(emit);
      }
    }
  }
  template <typename Emit>
  void Flush(Emit&& emit) {
    if (!pending_.empty() && pending_.back() == '\r') pending_.pop_back();
    if (!pending_.empty()) emit(pending_);
    pending_.clear();
  }

 private:
  std::string pending_;
};

std::string_view Trim(std::string_view s) {
  while (!s.empty() && std::strchr(" \t", s.front()) != nullptr) s.remove_prefix(1);
  while (!s.empty() && std::strchr(" \t", s.back()) != nullptr) s.remove_suffix(1);
  return s;
}

// What a command asks of the engine through lines of its stdout (see command_runner.h).
class Directives {
 public:
  // Takes in one line of stdout. Returns an error message for a malformed directive (ignored),
  // nullopt otherwise (a directive taken in, or an ordinary line).
  std::optional<std::string> Feed(std::string_view line) {
    if (line.starts_with(kNextRunIn)) {
      std::string_view text = Trim(line.substr(kNextRunIn.size()));
      Result<Millis> d = codec::ParseDuration(text);
      if (!d.ok()) return std::string(kNextRunIn) + ": " + d.status().message();
      next_run_in_ = d.value();
      return std::nullopt;
    }
    if (line.starts_with(kCounts)) {
      std::string_view rest = line.substr(kCounts.size());
      std::vector<std::string_view> words;
      while (true) {
        rest = Trim(rest);
        if (rest.empty()) break;
        std::size_t end = rest.find_first_of(" \t");
        words.push_back(rest.substr(0, end));
        if (end == std::string_view::npos) break;
        rest.remove_prefix(end);
      }
      std::uint64_t numbers[3] = {0, 0, 0};
      bool ok = words.size() == 4;
      for (std::size_t i = 0; ok && i < 3; ++i) {
        std::string_view w = words[i + 1];
        auto [p, ec] = std::from_chars(w.data(), w.data() + w.size(), numbers[i]);
        ok = ec == std::errc() && p == w.data() + w.size();
      }
      if (!ok) {
        return "SYNCSCHED_COUNTS must be followed by a model and three counts: "
               "\"SYNCSCHED_COUNTS <model> <added> <updated> <deleted>\"";
      }
      auto it = std::find_if(counts_.begin(), counts_.end(),
                             [&](const ModelCounts& c) { return c.model == words[0]; });
      if (it == counts_.end()) {
        counts_.push_back(ModelCounts{std::string(words[0]), 0, 0, 0});
        it = counts_.end() - 1;
      }
      it->added += numbers[0];
      it->updated += numbers[1];
      it->deleted += numbers[2];
    }
    return std::nullopt;
  }
  const std::optional<Millis>& next_run_in() const { return next_run_in_; }
  std::vector<ModelCounts>& counts() { return counts_; }

 private:
  static constexpr std::string_view kNextRunIn = "SYNCSCHED_NEXT_RUN_IN=";
  static constexpr std::string_view kCounts = "SYNCSCHED_COUNTS ";
  std::optional<Millis> next_run_in_;
  std::vector<ModelCounts> counts_;
};

// ---- Process groups: the registry, the watchdog, the spawn ----

// Every run's process group (its pgid is its leader's pid) while the run lasts: what a second
// signal kills (KillAllRunGroups). Process-wide and never destroyed, so that a thread handling
// a signal can use it whatever is being torn down.
struct GroupRegistry {
  std::mutex mu;
  std::set<pid_t> groups;
};
GroupRegistry& Groups() {
  static auto* registry = new GroupRegistry;
  return *registry;
}

// Original soft limit on open files, restored in commands (main raises the daemon's own).
std::atomic<bool> g_restore_nofile{false};
rlimit g_nofile{};
// GLIBC_TUNABLES as before the daemon changed it (main.cc), when it did.
bool g_restore_tunables = false;
std::optional<std::string> g_tunables;

// The watchdog's messages: a group to watch, or to forget (SOCK_SEQPACKET: one per recv).
struct WatchMessage {
  std::int32_t op;  // '+' or '-'
  std::int32_t pgid;
};
constexpr std::size_t kWatchCapacity = 65536;  // groups at once (a run each): 256 KiB of stack

// The watchdog process (forked, no exec): reads messages until the daemon's end of the socket
// closes, which happens however the daemon ends (the kernel closes a dead process's files), then
// SIGKILLs every group still registered and exits. Only async-signal-safe calls: the daemon (or a
// test) may have other threads, whose locks the fork copied in whatever state.
[[noreturn]] void WatchdogMain(int fd) {
  if (fd != 3) {
    if (dup2(fd, 3) < 0) _exit(1);
  }
  int null = open("/dev/null", O_RDWR);
  if (null >= 0) {
    dup2(null, 0);
    dup2(null, 1);
    dup2(null, 2);
  }
  if (syscall(SYS_close_range, 4u, ~0u, 0u) != 0) {
    for (int i = 4; i < 65536; ++i) close(i);
  }
  // Signals meant for the daemon (a terminal's ^C, a service manager's SIGTERM to the whole
  // group) must not end the watchdog before the daemon: it ends when the daemon has.
  struct sigaction ignore {};
  ignore.sa_handler = SIG_IGN;
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGPIPE, SIGUSR1, SIGUSR2, SIGALRM}) {
    sigaction(sig, &ignore, nullptr);
  }
  sigset_t none;
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, nullptr);
  prctl(PR_SET_NAME, "syncschedd-wdog", 0, 0, 0);
  pid_t groups[kWatchCapacity];
  std::size_t n = 0;
  while (true) {
    WatchMessage m{};
    ssize_t got = recv(3, &m, sizeof m, 0);
    if (got < 0 && errno == EINTR) continue;
    if (got != static_cast<ssize_t>(sizeof m)) break;  // 0: the daemon is gone
    if (m.op == '+' && n < kWatchCapacity) {
      groups[n++] = m.pgid;
    } else if (m.op == '-') {
      for (std::size_t i = 0; i < n; ++i) {
        if (groups[i] == m.pgid) {
          groups[i] = groups[--n];
          break;
        }
      }
    }
  }
  for (std::size_t i = 0; i < n; ++i) kill(-groups[i], SIGKILL);
  _exit(0);
}

#if defined(__clang__) || defined(__GNUC__)
#define SYNCSCHED_NO_SANITIZE __attribute__((no_sanitize("address", "undefined")))
#else
#define SYNCSCHED_NO_SANITIZE
#endif

// What the spawned child does before it becomes the command (see SpawnChild).
struct SpawnPlan {
  const char* path;  // resolved: the exec needs no PATH search
  char* const* argv;
  char* const* envp;
  int out_fd;  // the write ends of the output pipes
  int err_fd;
  int watch_fd;  // the watchdog's socket, or -1
  pid_t parent;  // the daemon
  bool restore_nofile;
  rlimit nofile;
  // Where the child writes its errno when it fails before or at the exec (close-on-exec: the
  // parent reads nothing once the exec succeeded). A pipe rather than shared memory: under
  // valgrind, which runs a CLONE_VFORK clone as a fork, the child's memory is its own.
  int report_fd;
};

// The child of a spawn, from clone(CLONE_VM | CLONE_VFORK): it shares the daemon's memory while
// the spawning thread waits for it to exec, so it makes system calls only. It resets the signals,
// starts a process group of its own, asks for SIGKILL when the daemon's thread that spawned it
// ends (PR_SET_PDEATHSIG: the runner's own thread, which lives as long as the runner), tells the
// watchdog its group before it can make any child, sets up its descriptors and executes.
SYNCSCHED_NO_SANITIZE int SpawnChild(void* arg) {
  // Raw system calls only: a sanitizer's interceptor (sigaction, send, ...) could touch state it
  // shares with the daemon's other threads, with which this child shares its memory.
  auto* plan = static_cast<SpawnPlan*>(arg);
  struct KernelSigaction {  // the kernel's layout; all zero: SIG_DFL, no flags, empty mask
    void* handler;
    unsigned long flags;
    void* restorer;
    std::uint64_t mask;
  } dfl{};
  for (int sig = 1; sig < NSIG; ++sig) {
    // EINVAL for SIGKILL, SIGSTOP: fine.
    syscall(SYS_rt_sigaction, sig, &dfl, nullptr, sizeof(std::uint64_t));
  }
  long fd_null = -1;
  if (syscall(SYS_setpgid, 0, 0) != 0 ||
      syscall(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) {
    goto fail;
  }
  // The daemon died before the death signal was asked for: it would never come.
  if (syscall(SYS_getppid) != plan->parent) syscall(SYS_exit_group, 127);
  if (plan->watch_fd >= 0) {
    WatchMessage m{'+', static_cast<std::int32_t>(syscall(SYS_getpid))};
    // A dead watchdog: PR_SET_PDEATHSIG still holds for the command itself.
    syscall(SYS_sendto, plan->watch_fd, &m, sizeof m, MSG_NOSIGNAL, nullptr, 0);
  }
  fd_null = syscall(SYS_openat, AT_FDCWD, "/dev/null", O_RDONLY | O_CLOEXEC);
  // The pipes are never 0..2 (main keeps those open), so dup3 (which refuses old == new) works.
  if (fd_null < 0 || syscall(SYS_dup3, fd_null, 0, 0) < 0 ||
      syscall(SYS_dup3, plan->out_fd, 1, 0) < 0 || syscall(SYS_dup3, plan->err_fd, 2, 0) < 0) {
    goto fail;
  }
  // Nothing else of the daemon's reaches the command: not its listening socket (which would keep
  // the port bound after the daemon exits), not its clients' connections, not the database.
  // (All but the report pipe, which closes at the exec.)
  {
    auto report = static_cast<unsigned>(plan->report_fd);
    bool closed = (report == 3 || syscall(SYS_close_range, 3u, report - 1, 0u) == 0) &&
                  syscall(SYS_close_range, report + 1, ~0u, 0u) == 0;
    if (!closed) {
      for (int i = 3; i < 65536; ++i) {
        if (i != plan->report_fd) syscall(SYS_close, i);
      }
    }
  }
  if (plan->restore_nofile) syscall(SYS_prlimit64, 0, RLIMIT_NOFILE, &plan->nofile, nullptr);
  {
    std::uint64_t none = 0;
    syscall(SYS_rt_sigprocmask, SIG_SETMASK, &none, nullptr, sizeof none);
  }
  syscall(SYS_execve, plan->path, plan->argv, plan->envp);
fail : {
  int error = errno == 0 ? EINVAL : errno;
  syscall(SYS_write, plan->report_fd, &error, sizeof error);
}
  syscall(SYS_exit_group, 127);
  return 127;
}

// Spawns SpawnChild(plan) and returns once the child has executed the command or failed
// (vfork semantics: the child borrows this thread's memory meanwhile). -1 and errno when the
// clone itself fails.
pid_t Spawn(SpawnPlan& plan) {
  constexpr std::size_t kStack = 256 * 1024;
  void* stack =
      mmap(nullptr, kStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
  if (stack == MAP_FAILED) return -1;
  // No signal handler may run in the child before it has reset them all.
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &old);
  pid_t pid = clone(SpawnChild, static_cast<char*>(stack) + kStack,
                    CLONE_VM | CLONE_VFORK | SIGCHLD, &plan);
  int saved = errno;
  pthread_sigmask(SIG_SETMASK, &old, nullptr);
  munmap(stack, kStack);
  errno = saved;
  return pid;
}

// The executable `name` names, searched in PATH when it has no '/' (as execvp would). Errors:
// the errno of the search (ENOENT, EACCES).
std::string ResolveExecutable(const std::string& name, int& error) {
  error = 0;
  if (name.empty()) {
    error = ENOENT;
    return name;
  }
  if (name.find('/') != std::string::npos) return name;
  const char* path = std::getenv("PATH");
  std::string_view dirs = path != nullptr ? path : "/bin:/usr/bin";
  int found_error = ENOENT;
  while (true) {
    std::size_t colon = dirs.find(':');
    std::string_view dir = dirs.substr(0, colon);
    std::string candidate = (dir.empty() ? std::string(".") : std::string(dir)) + "/" + name;
    struct stat st {};
    if (stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
      if (access(candidate.c_str(), X_OK) == 0) return candidate;
      found_error = EACCES;
    }
    if (colon == std::string_view::npos) break;
    dirs.remove_prefix(colon + 1);
  }
  error = found_error;
  return name;
}

// The report of a run that was stopped (or never started) for `reason`.
RunReport Stopped(Status reason) {
  RunReport r;
  r.status = std::move(reason);
  return r;
}

}  // namespace

void KillAllRunGroups() {
  GroupRegistry& r = Groups();
  std::lock_guard<std::mutex> lock(r.mu);
  for (pid_t pgid : r.groups) kill(-pgid, SIGKILL);
}

void RestoreOpenFileLimitInCommands(const rlimit& original) {
  g_nofile = original;
  g_restore_nofile.store(true);
}

void RestoreGlibcTunablesInCommands(std::optional<std::string> original) {
  g_tunables = std::move(original);
  g_restore_tunables = true;
}

CommandRunner::CommandRunner(Logger& log, Millis kill_grace) : log_(log), kill_grace_(kill_grace) {
  thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "syncschedd-runs");
    io_.run();
  });
  int fds[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds) != 0) {
    log_.Error(
        "cannot start the watchdog: a SIGKILL of syncschedd would leave the runs' "
        "child processes running",
        {{"error", std::strerror(errno)}});
    return;
  }
  pid_t pid = fork();
  if (pid == 0) WatchdogMain(fds[1]);
  close(fds[1]);
  if (pid < 0) {
    log_.Error(
        "cannot start the watchdog: a SIGKILL of syncschedd would leave the runs' "
        "child processes running",
        {{"error", std::strerror(errno)}});
    close(fds[0]);
    return;
  }
  watch_fd_ = fds[0];
  watchdog_ = pid;
}

CommandRunner::~CommandRunner() {
  work_.reset();
  io_.stop();  // a run still watched is destroyed with io_: its group is killed (~Process)
  if (thread_.joinable()) thread_.join();
  if (watch_fd_ >= 0) close(watch_fd_);  // the watchdog kills what is left (nothing) and exits
  // Runs still watched die with io_ below (~Process): they must not write to the closed socket.
  watch_fd_ = -1;
  if (watchdog_ > 0) {
    while (waitpid(watchdog_, nullptr, 0) < 0 && errno == EINTR) {
    }
  }
}

void CommandRunner::Watch(char op, pid_t pgid) {
  if (op == '+') {
    GroupRegistry& r = Groups();
    std::lock_guard<std::mutex> lock(r.mu);
    r.groups.insert(pgid);
    return;  // the child told the watchdog itself
  }
  {
    GroupRegistry& r = Groups();
    std::lock_guard<std::mutex> lock(r.mu);
    r.groups.erase(pgid);
  }
  if (watch_fd_ < 0) return;
  WatchMessage m{'-', static_cast<std::int32_t>(pgid)};
  if (send(watch_fd_, &m, sizeof m, MSG_NOSIGNAL) != static_cast<ssize_t>(sizeof m) &&
      !watchdog_lost_.exchange(true)) {
    log_.Error(
        "the watchdog is gone: a SIGKILL of syncschedd would now leave the runs' child "
        "processes running (their leaders still die with it)",
        {{"error", std::strerror(errno)}, {"pid", watchdog_}});
  }
}

// One run's process, from its spawn to its report. Lives on the runner's thread (io_): every
// member is touched only there, but for the constructor (on the spawning thread, before Start is
// posted). Async operations hold it alive; the OnCancel function holds it weakly.
class CommandRunner::Process : public std::enable_shared_from_this<Process> {
 public:
  Process(CommandRunner& runner, const RunContext& ctx, RunDone done, pid_t pid, int out_fd,
          int err_fd)
      : runner_(runner),
        ctx_(ctx),
        done_(std::move(done)),
        schedule_(ToString(ctx.key)),
        pid_(pid),
        started_(Clock::now()),
        last_heartbeat_(started_ - std::chrono::seconds(1)),  // the first output beats at once
        out_(runner.io_, out_fd),
        err_(runner.io_, err_fd),
        exit_(runner.io_),
        timer_(runner.io_),
        drain_timer_(runner.io_) {}

  // A process that never reported (the runner was destroyed with it in flight) is killed.
  ~Process() {
    if (finished_) return;
    kill(-pid_, SIGKILL);
    runner_.Watch('-', pid_);
    while (waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
    }
  }

  void Start() {
    // The exit: a pidfd turns readable when the process has exited (Linux 5.3); without one, a
    // 50 ms poll.
    int pidfd = static_cast<int>(syscall(SYS_pidfd_open, pid_, 0));
    if (pidfd >= 0) {
      exit_.assign(pidfd);
      exit_.async_wait(boost::asio::posix::descriptor_base::wait_read,
                       [self = shared_from_this()](const boost::system::error_code& ec) {
                         if (!ec) self->OnExit();
                       });
    } else {
      PollExit();
    }
    Read(out_, out_buf_, /*stdout=*/true);
    Read(err_, err_buf_, /*stdout=*/false);
    std::weak_ptr<Process> weak = weak_from_this();
    ctx_.cancel.OnCancel([weak, ex = runner_.io_.get_executor()] {
      boost::asio::post(ex, [weak] {
        if (auto self = weak.lock()) self->Cancel();
      });
    });
  }

 private:
  bool Exited() const {
    siginfo_t info{};
    return waitid(P_PID, static_cast<id_t>(pid_), &info, WEXITED | WNOHANG | WNOWAIT) == 0 &&
           info.si_pid == pid_;
  }
  void PollExit() {
    timer_.expires_after(std::chrono::milliseconds(50));
    timer_.async_wait([self = shared_from_this()](const boost::system::error_code& ec) {
      if (ec || self->exited_) return;
      if (self->Exited()) {
        self->OnExit();
      } else {
        self->PollExit();
      }
    });
  }

  void Read(boost::asio::posix::stream_descriptor& fd, std::array<char, 4096>& buf, bool out) {
    fd.async_read_some(boost::asio::buffer(buf),
                       [self = shared_from_this(), &fd, &buf, out](
                           const boost::system::error_code& ec, std::size_t n) {
                         if (self->finished_) return;
                         if (n > 0) self->OnData(out, std::string_view(buf.data(), n));
                         if (ec) {  // the end of the stream, or an error: nothing more comes
                           boost::system::error_code ignored;
                           fd.close(ignored);
                           if (self->exited_ && !self->out_.is_open() && !self->err_.is_open())
                             self->Finish();
                           return;
                         }
                         self->Read(fd, buf, out);
                       });
  }

  void Emit(bool out, const std::string& line) {
    std::string_view stream = out ? "stdout" : "stderr";
    runner_.log_.Info(
        "command output",
        {{"schedule", schedule_}, {"run_id", ctx_.run_id}, {"stream", stream}, {"line", line}});
    if (!out) return;
    if (std::optional<std::string> bad = directives_.Feed(line)) {
      runner_.log_.Warn(
          "ignored a malformed directive",
          {{"schedule", schedule_}, {"run_id", ctx_.run_id}, {"line", line}, {"error", *bad}});
    }
  }

  void OnData(bool out, std::string_view data) {
    if (out) {
      out_lines_.Feed(data, [&](const std::string& line) { Emit(true, line); });
    } else {
      err_lines_.Feed(data, [&](const std::string& line) { Emit(false, line); });
      err_bytes_.append(data);
      if (err_bytes_.size() > 4 * kStderrTailBytes) {
        err_bytes_.erase(0, err_bytes_.size() - kStderrTailBytes);
      }
    }
    auto now = Clock::now();
    if (ctx_.heartbeat && now - last_heartbeat_ >= std::chrono::seconds(1)) {
      last_heartbeat_ = now;
      ctx_.heartbeat();
    }
  }

  // The run's token was cancelled: SIGTERM to the group, SIGKILL after the grace.
  void Cancel() {
    if (term_sent_ || exited_) return;
    term_sent_ = true;
    kill(-pid_, SIGTERM);
    runner_.log_.Info("run cancelled; stopping its process group",
                      {{"schedule", schedule_},
                       {"run_id", ctx_.run_id},
                       {"reason", ctx_.cancel.reason().ToString()},
                       {"pid", pid_}});
    if (exit_.is_open()) {  // the timer is free (no poll of the exit on it)
      timer_.expires_after(runner_.kill_grace_);
      timer_.async_wait([self = shared_from_this()](const boost::system::error_code& ec) {
        if (ec || self->exited_) return;
        self->Kill();
      });
    } else {
      kill_at_ = Clock::now() + runner_.kill_grace_;
      drain_timer_.expires_at(kill_at_);
      drain_timer_.async_wait([self = shared_from_this()](const boost::system::error_code& ec) {
        if (ec || self->exited_) return;
        self->Kill();
      });
    }
  }
  void Kill() {
    kill(-pid_, SIGKILL);
    runner_.log_.Warn("process group did not stop in time; killed",
                      {{"schedule", schedule_}, {"run_id", ctx_.run_id}, {"pid", pid_}});
  }

  // The leader has exited (still a zombie, so its group id cannot be reused yet): its group must
  // not outlive the run. Then the output left in the pipes is read to its end, for at most a
  // second (a process that left the group may hold a pipe open), and the run reports.
  void OnExit() {
    if (exited_) return;
    exited_ = true;
    kill(-pid_, SIGKILL);
    runner_.Watch('-', pid_);
    boost::system::error_code ignored;
    exit_.close(ignored);
    timer_.cancel();
    if (!out_.is_open() && !err_.is_open()) {
      Finish();
      return;
    }
    drain_timer_.expires_after(std::chrono::seconds(1));
    drain_timer_.async_wait([self = shared_from_this()](const boost::system::error_code& ec) {
      if (!ec) self->Finish();
    });
  }

  void Finish() {
    if (finished_) return;
    finished_ = true;
    boost::system::error_code ignored;
    out_.close(ignored);
    err_.close(ignored);
    timer_.cancel();
    drain_timer_.cancel();
    out_lines_.Flush([&](const std::string& line) { Emit(true, line); });
    err_lines_.Flush([&](const std::string& line) { Emit(false, line); });
    int status = 0;
    while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
    RunReport report = Report(status);
    RunDone done = std::move(done_);
    runner_.Finished();  // reaped: no longer running, whoever the report wakes
    done(std::move(report));
    runner_.ProcessEnded(schedule_);  // the schedule's next run may start
  }

  RunReport Report(int status) {
    auto duration_ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - started_).count();
    codec::Json fields = {
        {"schedule", schedule_}, {"run_id", ctx_.run_id}, {"duration_ms", duration_ms}};
    if (WIFEXITED(status)) {
      fields["exit_code"] = WEXITSTATUS(status);
    } else if (WIFSIGNALED(status)) {
      fields["signal"] = SignalName(WTERMSIG(status));
    }
    if (ctx_.cancel.cancelled() && term_sent_) {
      runner_.log_.Info("run stopped", std::move(fields));
      return Stopped(ctx_.cancel.reason());
    }
    if (directives_.next_run_in()) {
      fields["next_run_in"] = FormatFrequency(*directives_.next_run_in());
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
      runner_.log_.Info("run succeeded", std::move(fields));
      RunReport report = RunReport::Success(std::move(directives_.counts()));
      report.next_run_in = directives_.next_run_in();
      return report;
    }
    std::string message = Tail(err_bytes_);
    if (message.empty()) {
      message = WIFEXITED(status)
                    ? "command exited with status " + std::to_string(WEXITSTATUS(status))
                    : "command killed by " + SignalName(WTERMSIG(status));
    }
    fields["error"] = message;
    runner_.log_.Warn("run failed", std::move(fields));
    RunReport report = RunReport::Failure(std::move(message));
    report.next_run_in = directives_.next_run_in();
    return report;
  }

  CommandRunner& runner_;
  const RunContext ctx_;
  RunDone done_;
  const std::string schedule_;
  const pid_t pid_;
  const Clock::time_point started_;
  Clock::time_point last_heartbeat_;
  Clock::time_point kill_at_{};
  boost::asio::posix::stream_descriptor out_, err_;
  boost::asio::posix::stream_descriptor exit_;  // the pidfd
  boost::asio::steady_timer timer_;             // the exit's poll, or the kill after the grace
  boost::asio::steady_timer drain_timer_;       // the output's last second (or the kill)
  std::array<char, 4096> out_buf_{}, err_buf_{};
  std::string err_bytes_;  // the tail of stderr, trimmed as it grows
  LineSplitter out_lines_, err_lines_;
  Directives directives_;
  bool term_sent_ = false;
  bool exited_ = false;
  bool finished_ = false;
};

RunReport CommandRunner::Run(const std::vector<std::string>& argv, const RunContext& ctx) {
  std::promise<RunReport> report;
  std::future<RunReport> future = report.get_future();
  RunAsync(argv, ctx, [&report](RunReport r) { report.set_value(std::move(r)); });
  return future.get();
}

void CommandRunner::RunAsync(const std::vector<std::string>& argv, const RunContext& ctx,
                             RunDone done) {
  try {
    if (ctx.cancel.cancelled()) {
      done(Stopped(ctx.cancel.reason()));
      return;
    }
    if (shutting_down_.load()) {
      // Not started; the engine cancels every run in flight when it closes.
      auto once = std::make_shared<RunDone>(std::move(done));
      auto owner = std::make_shared<std::mutex>();
      ctx.cancel.OnCancel([once, owner] {
        RunDone d;
        {
          std::lock_guard<std::mutex> lock(*owner);
          d = std::move(*once);
          *once = nullptr;
        }
        if (d) d(Stopped(Status::Cancelled("not started: syncschedd is shutting down")));
      });
      return;
    }
    // Spawned on the runner's thread: PR_SET_PDEATHSIG fires when the thread that spawned a
    // process ends, and the caller's (an engine worker) may end first, at the engine's close,
    // which would SIGKILL the command before its SIGTERM and grace.
    boost::asio::post(io_, [this, argv, ctx, done = std::move(done)]() mutable {
      Launch(std::move(argv), std::move(ctx), std::move(done));
    });
  } catch (const std::exception& e) {
    if (done)
      done(RunReport::Failure(std::string("syncschedd could not run the command: ") + e.what()));
  }
}

void CommandRunner::Launch(std::vector<std::string> argv, RunContext ctx, RunDone done) {
  if (ctx.cancel.cancelled()) {  // since RunAsync: it never starts
    done(Stopped(ctx.cancel.reason()));
    return;
  }
  std::string schedule = ToString(ctx.key);
  ScheduleProcesses& processes = schedules_[schedule];
  if (processes.live > 0) {
    auto parked =
        std::make_shared<Parked>(Parked{std::move(argv), std::move(ctx), std::move(done)});
    processes.parked.push_back(parked);
    log_.Info("run waits for the process group of its schedule's previous run to end",
              {{"schedule", schedule}, {"run_id", parked->ctx.run_id}});
    std::weak_ptr<Parked> weak = parked;
    parked->ctx.cancel.OnCancel([this, weak, ex = io_.get_executor()] {
      boost::asio::post(ex, [this, weak] {
        if (auto p = weak.lock()) CancelParked(p);
      });
    });
    return;
  }
  try {
    StartProcess(argv, ctx, done);
  } catch (const std::exception& e) {
    if (done) {
      done(RunReport::Failure(std::string("syncschedd could not run the command: ") + e.what()));
    }
  }
  auto it = schedules_.find(schedule);
  if (it != schedules_.end() && it->second.live == 0 && it->second.parked.empty()) {
    schedules_.erase(it);
  }
}

void CommandRunner::CancelParked(const std::shared_ptr<Parked>& parked) {
  auto it = schedules_.find(ToString(parked->ctx.key));
  if (it == schedules_.end()) return;
  auto& queue = it->second.parked;
  auto at = std::find(queue.begin(), queue.end(), parked);
  if (at == queue.end()) return;  // already started
  queue.erase(at);
  RunDone done = std::move(parked->done);
  if (done) done(Stopped(parked->ctx.cancel.reason()));
}

void CommandRunner::ProcessEnded(const std::string& schedule) {
  auto it = schedules_.find(schedule);
  if (it == schedules_.end()) return;
  if (--it->second.live > 0) return;
  while (!it->second.parked.empty()) {
    std::shared_ptr<Parked> next = std::move(it->second.parked.front());
    it->second.parked.pop_front();
    if (next->ctx.cancel.cancelled()) {
      RunDone done = std::move(next->done);
      if (done) done(Stopped(next->ctx.cancel.reason()));
      continue;
    }
    try {
      StartProcess(next->argv, next->ctx, next->done);
    } catch (const std::exception& e) {
      if (next->done) {
        next->done(
            RunReport::Failure(std::string("syncschedd could not run the command: ") + e.what()));
      }
    }
    it = schedules_.find(schedule);  // StartProcess may have added to the map
    if (it == schedules_.end() || it->second.live > 0) return;
  }
  schedules_.erase(it);
}

void CommandRunner::BeginShutdown() { shutting_down_.store(true); }

bool CommandRunner::WaitIdle(Clock::time_point deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  return idle_cv_.wait_until(lock, deadline, [&] { return running_ == 0; });
}

std::size_t CommandRunner::running() const {
  std::lock_guard<std::mutex> lock(mu_);
  return running_;
}

void CommandRunner::SetNode(std::string node) {
  std::lock_guard<std::mutex> lock(mu_);
  node_ = std::move(node);
}

void CommandRunner::Finished() {
  std::lock_guard<std::mutex> lock(mu_);
  if (--running_ == 0) idle_cv_.notify_all();
}

void CommandRunner::StartProcess(const std::vector<std::string>& argv, const RunContext& ctx,
                                 RunDone& done) {
  const std::string schedule = ToString(ctx.key);

  // The environment: the daemon's, less any SYNCSCHED_* of its own, plus the run's.
  std::vector<std::string> env;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    if (std::strncmp(*e, "SYNCSCHED_", 10) == 0) continue;
    if (g_restore_tunables && std::strncmp(*e, "GLIBC_TUNABLES=", 15) == 0) continue;
    env.emplace_back(*e);
  }
  if (g_restore_tunables && g_tunables) env.push_back("GLIBC_TUNABLES=" + *g_tunables);
  env.push_back("SYNCSCHED_INTEGRATION=" + ctx.key.integration);
  env.push_back("SYNCSCHED_CONNECTION=" + ctx.key.connection);
  env.push_back("SYNCSCHED_SYNC=" + ctx.key.sync);
  env.push_back("SYNCSCHED_VARIANT=" + ctx.key.variant);
  env.push_back("SYNCSCHED_RUN_ID=" + ctx.run_id);
  env.push_back("SYNCSCHED_MODE=" + std::string(ToString(ctx.mode)));
  env.push_back("SYNCSCHED_SLOT=" + FormatTime(ctx.slot));
  env.push_back("SYNCSCHED_ATTEMPT=" + std::to_string(ctx.attempt));
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!node_.empty()) env.push_back("SYNCSCHED_NODE=" + node_);
  }
  std::vector<char*> envp;
  for (std::string& s : env) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<std::string> args = argv;
  std::vector<char*> argvp;
  for (std::string& s : args) argvp.push_back(s.data());
  argvp.push_back(nullptr);

  // A run that cannot start (no pipe: too many open files) is logged and counted as a spawn
  // failure, like a command that cannot be executed.
  auto fail = [&](std::string message) {
    spawn_failures_.fetch_add(1, std::memory_order_relaxed);
    log_.Error("command not started",
               {{"schedule", schedule}, {"run_id", ctx.run_id}, {"error", message}});
    done(RunReport::Failure(std::move(message)));
  };
  int out_pipe[2];
  int err_pipe[2];
  if (pipe2(out_pipe, O_CLOEXEC) != 0) {
    return fail(std::string("cannot create a pipe: ") + std::strerror(errno));
  }
  Fd out_read(out_pipe[0]);
  Fd out_write(out_pipe[1]);
  if (pipe2(err_pipe, O_CLOEXEC) != 0) {
    return fail(std::string("cannot create a pipe: ") + std::strerror(errno));
  }
  Fd err_read(err_pipe[0]);
  Fd err_write(err_pipe[1]);

  pid_t pid = -1;
  int rc = 0;
  bool counted = false;
  std::string path = ResolveExecutable(argv.empty() ? std::string() : argv[0], rc);
  if (rc == 0) {
    SpawnPlan plan{};
    plan.path = path.c_str();
    plan.argv = argvp.data();
    plan.envp = envp.data();
    plan.out_fd = out_write.get();
    plan.err_fd = err_write.get();
    plan.watch_fd = watch_fd_;
    plan.parent = getpid();
    plan.restore_nofile = g_restore_nofile.load();
    plan.nofile = g_nofile;
    int report[2];
    if (pipe2(report, O_CLOEXEC) != 0) {
      return fail(std::string("cannot create a pipe: ") + std::strerror(errno));
    }
    Fd report_read(report[0]);
    Fd report_write(report[1]);
    plan.report_fd = report_write.get();
    // Counted as running before the child exists: the command may act (and a waiter look) before
    // this thread returns from the spawn.
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++running_;
    }
    counted = true;
    pid = Spawn(plan);
    int child_error = 0;
    if (pid >= 0) {
      report_write.Reset();
      // Nothing (end of file) once the exec succeeded; the errno when the child failed.
      ssize_t n;
      while ((n = read(report_read.get(), &child_error, sizeof child_error)) < 0 &&
             errno == EINTR) {
      }
      if (n != static_cast<ssize_t>(sizeof child_error)) child_error = 0;
    }
    if (pid < 0) {
      rc = errno;
    } else if (child_error != 0) {
      rc = child_error;
      // It may have registered its group with the watchdog before its exec failed.
      Watch('-', pid);
      while (waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
      }
      pid = -1;
    } else {
      Watch('+', pid);
    }
  }
  out_write.Reset();
  err_write.Reset();
  if (rc != 0) {
    if (counted) Finished();
    return fail("cannot start " + core::Quote(argv.empty() ? std::string() : argv[0]) + ": " +
                std::strerror(rc));
  }
  spawned_.fetch_add(1, std::memory_order_relaxed);
  log_.Info("run started", {{"schedule", schedule},
                            {"run_id", ctx.run_id},
                            {"mode", std::string(ToString(ctx.mode))},
                            {"attempt", ctx.attempt},
                            {"pid", pid}});
  std::shared_ptr<Process> process;
  try {
    process =
        std::make_shared<Process>(*this, ctx, std::move(done), pid, out_read.get(), err_read.get());
  } catch (...) {
    kill(-pid, SIGKILL);
    Watch('-', pid);
    while (waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
    }
    Finished();
    throw;  // `done` is still the caller's: it reports the error
  }
  // The descriptors now belong to the process's stream_descriptors.
  (void)out_read.Release();
  (void)err_read.Release();
  ++schedules_[schedule].live;  // until Process::Finish
  process->Start();
}

}  // namespace syncsched::daemon
