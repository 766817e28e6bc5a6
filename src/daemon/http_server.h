// The HTTP/1.1 server of syncschedd (Boost.Beast, asynchronous, on its own io_context and
// threads). It owns the sockets and the framing: keep-alive, limits on header and body sizes
// (431, 413), on open connections, in all and per client (503), a deadline for each request
// (read_timeout from its first byte, or from the connection's start for its first request), an
// idle timeout between requests, and strict HTTP/1.1 framing (Host required, no obsolete line
// folding, one Authorization). Refusals at the listener are logged at most every 10 s; a 5xx
// answer is logged as `request failed`, and with the debug level every request is. Each request is
// first admitted on its headers alone (route, method, key: so that an unauthenticated client cannot
// make the server buffer a body), then read whole and answered by Api::Handle. An answer that ends
// the connection, early or not, is followed by a lingering close bounded in bytes and time, so that
// a client still sending its request reads the answer rather than a reset (kLingerBytes in
// http_server.cc; docs/daemon.md). With several HTTP threads each connection runs on its own
// strand; with one thread there is no strand (nothing runs concurrently), which spares its locking
// and queueing.
//
// Thread safety: Bind, Start and Stop are called by one owner thread; the counters from any.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>

#include "codec/prometheus.h"
#include "daemon/api.h"
#include "daemon/config.h"
#include "daemon/log.h"
#include "syncsched/status.h"

namespace syncsched::daemon {

class HttpServer {
 public:
  // `api` and `log` must outlive the server.
  HttpServer(Api& api, const Config& config, Logger& log);
  // Stops (as Stop with no grace) if still running.
  ~HttpServer();
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  // Opens, binds and listens on the configured address; connections queue until Start.
  // Errors: UNAVAILABLE naming the address (in use, not local, no permission).
  Status Bind();
  // The bound port (useful with port 0). Precondition: Bind succeeded.
  std::uint16_t port() const { return port_; }
  // Starts accepting and serving on the configured number of threads.
  void Start();
  // Closes the listener before it returns (new clients are refused by the kernel from then on),
  // closes idle connections, lets requests being handled finish (their connections then close)
  // for at most `grace`, then stops the threads. Connections still open then are closed when the
  // server is destroyed.
  void Stop(Millis grace);

  // Figures for GET /metrics.
  void FillMetrics(codec::DaemonMetrics& m) const;

 private:
  class Session;  // what Stop needs of a connection
  template <class Executor>
  class Connection;  // a connection whose handlers run on `Executor`
  template <class Executor>
  void Accept();
  template <class Executor>
  void OnAccept(boost::asio::basic_stream_socket<boost::asio::ip::tcp, Executor> socket);
  void CountResponse(unsigned status);

  // A client, for max_connections_per_client: its IPv4 address (as ::ffff:a.b.c.d), or the /64
  // prefix of its IPv6 address.
  using ClientKey = std::array<unsigned char, 16>;
  struct ClientKeyHash {
    std::size_t operator()(const ClientKey& k) const noexcept;
  };
  static ClientKey KeyOf(const boost::asio::ip::address& address);
  // Counts a connection of `client` unless it has max_connections_per_client already.
  bool AdmitClient(const ClientKey& client);
  void ReleaseClient(const ClientKey& client);
  // Refusals at the listener: one warning at most every kRefusalLogPeriod, with the count.
  void NoteRefusal(std::string_view reason, const boost::asio::ip::address& client);

  // Destroyed after io_ (declared before it), since io_'s destructor destroys pending handlers
  // that hold sessions, which touch these.
  Api& api_;
  Logger& log_;
  const Config config_;
  std::uint16_t port_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<std::uint64_t> connections_open_{0};
  std::atomic<std::uint64_t> connections_total_{0};
  std::atomic<std::size_t> lingering_refusals_{0};  // 503s draining (see Refusal)
  std::array<std::atomic<std::uint64_t>, 600> responses_{};
  std::mutex sessions_mu_;
  std::set<std::weak_ptr<Session>, std::owner_less<std::weak_ptr<Session>>> sessions_;
  std::mutex clients_mu_;
  std::unordered_map<ClientKey, std::uint32_t, ClientKeyHash> clients_;  // open connections
  std::mutex refusals_mu_;
  std::uint64_t refusals_unlogged_ = 0;                     // since the last warning
  std::chrono::steady_clock::time_point refusal_logged_{};  // the last warning

  boost::asio::io_context io_;
  boost::asio::ip::tcp::acceptor acceptor_;
  boost::asio::steady_timer accept_retry_;  // after a failed accept (out of descriptors)
  const std::string client_busy_answer_;    // the 503 over max_connections_per_client
  std::vector<std::thread> threads_;
  bool stopped_ = false;
};

}  // namespace syncsched::daemon
