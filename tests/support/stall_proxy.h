// A proxy between libpq and the test server that can stall, as a middlebox that stops carrying
// bytes without closing anything: while stalled it accepts new connections and connects them
// upstream, but forwards nothing either way and closes nothing; the kernel's socket buffers keep
// what each side sent. Resumed, it forwards everything buffered, in order, then carries on; a side
// that closed meanwhile is closed on the other side after its buffered bytes were forwarded.
// That is the route that holds a client's COMMIT and delivers it after the client gave up.
//
// It listens on a unix socket in a directory of its own (libpq's `host=<dir>&port=5432`) and
// forwards to the server's socket in `upstream_dir`. One thread, polling.
//
// Thread safety: Stall may be called from any thread.
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "syncsched/status.h"

namespace syncsched::testing {

class StallProxy {
 public:
  // Listens and starts forwarding to `upstream_dir`/.s.PGSQL.5432. INTERNAL on a socket error.
  static Result<std::unique_ptr<StallProxy>> Start(const std::string& upstream_dir);
  // Stops the thread, closes every connection and removes the directory.
  ~StallProxy();
  StallProxy(const StallProxy&) = delete;
  StallProxy& operator=(const StallProxy&) = delete;

  // A libpq URI for `database` through the proxy, as the user postgres.
  std::string Uri(const std::string& database) const;
  // Stalls (true) or resumes (false) every connection, present and future.
  void Stall(bool stalled);
  // Stalls the connections accepted so far only; later ones are carried. Stall(false) resumes.
  void StallOpen();
  // From now on, holds each connection's client stream from its first message of protocol type
  // `type` (the message's first byte: 'P' Parse, 'S' Sync, 'Q' Query; 0: any) whose bytes contain
  // `needle` (empty: any): the messages before it are forwarded, it and everything after are held
  // until Stall(false), while the server's replies still flow. That is the route that delivers a
  // pipeline but its COMMIT (or its Sync) late.
  void HoldFrom(char type, const std::string& needle);
  // While true, new connections are accepted and closed at once (a route that refuses them).
  void RefuseNew(bool refuse);
  // Connections accepted so far.
  int accepted() const { return accepted_.load(); }
  // Messages HoldFrom has matched so far (a connection is held from each).
  int held() const { return held_.load(); }

 private:
  StallProxy() = default;
  void Run();

  std::string dir_, upstream_;
  int listen_fd_ = -1;
  int wake_[2] = {-1, -1};  // a pipe: Stall and the destructor wake the thread
  std::atomic<bool> stalled_{false}, stop_{false};
  std::atomic<int> accepted_{0}, held_{0};
  std::atomic<int> stall_below_{0};  // links accepted before this count are stalled
  std::atomic<bool> refuse_new_{false}, release_{false};
  std::mutex hold_mu_;
  bool hold_armed_ = false;  // guarded by hold_mu_, with the two below
  char hold_type_ = 0;
  std::string hold_needle_;
  std::thread thread_;
};

}  // namespace syncsched::testing
