// cluster/: a client-side deadline for blocking libpq calls (internal).
//
// libpq's synchronous calls (PQexec, PQgetResult, PQgetCopyData, a blocking PQflush) wait on the
// connection's socket without a time limit. A server that hangs, or a route that stops carrying
// bytes without closing (a stalled proxy or NAT; TCP keepalives and tcp_user_timeout do not see
// a middlebox that acknowledges and does not forward), would hold such a call, and the command
// waiting on it, for as long as the stall lasts. A SocketDeadline bounds that wait: while it is
// armed and its time passes, the connection's socket is shut down in both directions
// (shutdown(2)); the call blocked on it returns at once, and libpq reports the connection lost
// (PQstatus CONNECTION_BAD). Nothing else happens to the connection: its owner closes it
// (PQfinish) and reconnects, as after any lost connection. The server's session, if it is still
// alive, ends when the route carries the close, or when the owner ends it from a new connection.
//
// One process-wide thread, started at the first Arm and never stopped, watches every armed
// deadline; arming and disarming take a mutex and wake that thread only when the new deadline is
// earlier than the one it waits for.
//
// Thread safety: a SocketDeadline is used by one thread at a time (the one that owns the
// connection); distinct ones from any threads. Ownership: the socket stays the connection's; the
// owner must disarm (or destroy) the deadline before it closes the connection, so that the
// watcher never shuts down a descriptor number that was closed and reused meanwhile.
#pragma once

#include <libpq-fe.h>

#include <chrono>
#include <cstdint>

namespace syncsched::cluster::internal {

// A database server's clock against this process's steady clock: the server read `micros` (µs
// since the epoch, clock_timestamp()) before this process's steady clock showed `read_by`. So,
// while neither clock steps, the server's clock shows at least Expiry(t) by the time the steady
// clock shows t: a statement that checks `clock_timestamp() < Expiry(t)` (server side) runs only
// before this process reaches t. That is the expiry of a call this process gives up on at t, and
// what the store's commits, the command inbox's insert and the lease keeper's queries check, so
// that a stalled route cannot deliver them late.
struct ServerClock {
  std::int64_t micros = 0;  // 0: not read
  std::chrono::steady_clock::time_point read_by{};

  bool known() const { return micros != 0; }
  std::int64_t Expiry(std::chrono::steady_clock::time_point t) const {
    return micros + std::chrono::duration_cast<std::chrono::microseconds>(t - read_by).count();
  }
};

class SocketDeadline {
 public:
  SocketDeadline() = default;
  ~SocketDeadline() { Disarm(); }
  SocketDeadline(const SocketDeadline&) = delete;
  SocketDeadline& operator=(const SocketDeadline&) = delete;

  // Arms (or re-arms, replacing the deadline not yet passed) for `conn`'s socket, due `timeout`
  // from now. A timeout of zero or less, a null connection or one without a socket: disarms
  // instead.
  void Arm(PGconn* conn, std::chrono::milliseconds timeout);
  // Disarms. Returns true when a deadline passed since the last Disarm and the socket was shut
  // down; the connection is then lost whatever the call returned.
  bool Disarm();

 private:
  bool armed_ = false;
};

// Runs `call()` (one blocking libpq call on `conn`) under `deadline`, armed for `timeout`.
// Sets `*expired` when the deadline passed (the connection is then lost); leaves it otherwise.
template <typename Call>
auto WithDeadline(SocketDeadline& deadline, PGconn* conn, std::chrono::milliseconds timeout,
                  bool* expired, Call&& call) {
  deadline.Arm(conn, timeout);
  auto result = call();
  if (deadline.Disarm()) *expired = true;
  return result;
}

}  // namespace syncsched::cluster::internal
