#include "cluster/pg_deadline.h"

#include <sys/socket.h>

#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

namespace syncsched::cluster::internal {
namespace {

using Clock = std::chrono::steady_clock;

// The process-wide watcher: every armed deadline, by its owner.
class Watcher {
 public:
  static Watcher& Get() {
    // Never destroyed: deadlines may be disarmed by static destructors, and the thread waits
    // until the process ends (it holds no resource but its stack).
    static Watcher* w = new Watcher;
    return *w;
  }

  void Arm(const SocketDeadline* owner, int fd, Clock::time_point due) {
    std::lock_guard lock(mu_);
    armed_[owner] = Entry{fd, due};
    if (!started_) {
      started_ = true;
      std::thread([this] { Run(); }).detach();
    }
    if (due < wake_at_) cv_.notify_one();
  }

  bool Disarm(const SocketDeadline* owner) {
    std::lock_guard lock(mu_);
    armed_.erase(owner);
    return fired_.erase(owner) > 0;
  }

 private:
  struct Entry {
    int fd;
    Clock::time_point due;
  };

  void Run() {
    std::unique_lock lock(mu_);
    for (;;) {
      Clock::time_point now = Clock::now();
      wake_at_ = Clock::time_point::max();
      for (auto it = armed_.begin(); it != armed_.end();) {
        if (it->second.due <= now) {
          // The owner's thread is blocked in (or about to enter) a libpq call on this socket,
          // which stays open until the owner disarms: shutting it down wakes that call.
          ::shutdown(it->second.fd, SHUT_RDWR);
          fired_.emplace(it->first, true);
          it = armed_.erase(it);
        } else {
          wake_at_ = std::min(wake_at_, it->second.due);
          ++it;
        }
      }
      if (wake_at_ == Clock::time_point::max()) {
        cv_.wait(lock);
      } else {
        cv_.wait_until(lock, wake_at_);
      }
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::map<const SocketDeadline*, Entry> armed_;
  std::map<const SocketDeadline*, bool> fired_;
  Clock::time_point wake_at_ = Clock::time_point::max();  // what Run waits for
  bool started_ = false;
};

}  // namespace

void SocketDeadline::Arm(PGconn* conn, std::chrono::milliseconds timeout) {
  int fd = conn != nullptr ? PQsocket(conn) : -1;
  if (timeout.count() <= 0 || fd < 0) {
    Disarm();
    return;
  }
  Watcher::Get().Arm(this, fd, Clock::now() + timeout);
  armed_ = true;
}

bool SocketDeadline::Disarm() {
  if (!armed_) return false;
  armed_ = false;
  return Watcher::Get().Disarm(this);
}

}  // namespace syncsched::cluster::internal
