// Early answers over real sockets on 127.0.0.1, with the daemon in-process: an answer sent before
// the request has been read (413 for a body over the limit, 401 for a body without a valid key,
// 431 for a header over the limit, 503 at the listener) reaches a client that is still sending,
// and the lingering close that follows it is bounded: a client that sends too much is cut at the
// byte bound, a slow one at read_timeout, a silent one after the idle bound.
//
// The clients here write their whole request before they read anything, as many HTTP clients do
// (Node's fetch with a stream body, Python's http.client): the answer reaches them only if the
// server reads what they send instead of resetting the connection.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <thread>

#include "daemon/daemon.h"
#include "test_util.h"

namespace syncsched::daemon {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using syncsched::testing::Client;
using syncsched::testing::Json;
using syncsched::testing::Reply;
using syncsched::testing::TempDir;
using syncsched::testing::WaitFor;

constexpr std::uint64_t kMiB = 1 << 20;
// The daemon's byte bound on a lingering close (kLingerBytes in http_server.cc).
constexpr std::uint64_t kLingerBytes = 64 * kMiB;
// More than the old bound (8 MiB) plus what the kernel's socket buffers absorb on loopback, and
// less than kLingerBytes: the server has to read it for the client to finish writing.
constexpr std::uint64_t kBigBody = 48 * kMiB;

// A blocking TCP socket to 127.0.0.1:port: a client that writes what it likes, when it likes.
class Socket {
 public:
  explicit Socket(std::uint16_t port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    EXPECT_GE(fd_, 0) << std::strerror(errno);
    // A server that neither reads nor closes fails the test rather than hanging it.
    timeval timeout{20, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(port);
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof address), 0)
        << std::strerror(errno);
  }
  ~Socket() {
    if (fd_ >= 0) ::close(fd_);
  }
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;

  // Writes all of `bytes`: 0, or the errno that stopped it (EPIPE, ECONNRESET: the server closed).
  int Send(std::string_view bytes) {
    while (!bytes.empty()) {
      ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EINTR) continue;
        return errno;
      }
      sent_ += static_cast<std::uint64_t>(n);
      bytes.remove_prefix(static_cast<std::size_t>(n));
    }
    return 0;
  }
  // Writes `size` bytes of body (or until an error): 0 or the errno.
  int SendBody(std::uint64_t size) {
    static const std::string chunk(kMiB, 'x');
    for (std::uint64_t left = size; left > 0;) {
      std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(left, chunk.size()));
      if (int err = Send(std::string_view(chunk).substr(0, n))) return err;
      left -= n;
    }
    return 0;
  }
  std::uint64_t sent() const { return sent_; }

  // Reads until the server ends its side (EOF or a reset) or `timeout` passes. `ended`: it did.
  std::string ReadToEnd(bool& ended, std::chrono::milliseconds timeout = 10s) {
    std::string received;
    ended = false;
    char chunk[65536];
    auto deadline = Clock::now() + timeout;
    while (Clock::now() < deadline) {
      pollfd p{fd_, POLLIN, 0};
      int left = static_cast<int>(
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count());
      if (::poll(&p, 1, std::max(left, 1)) <= 0) continue;
      ssize_t n = ::recv(fd_, chunk, sizeof chunk, 0);
      if (n <= 0) {
        ended = true;
        break;
      }
      received.append(chunk, static_cast<std::size_t>(n));
    }
    return received;
  }

 private:
  int fd_ = -1;
  std::uint64_t sent_ = 0;
};

// The largest size the kernel lets a TCP socket buffer grow to: the third field of
// /proc/sys/net/ipv4/<name> ("tcp_rmem", "tcp_wmem"), or 32 MiB if it cannot be read.
std::uint64_t MaxBuffer(const std::string& name) {
  unsigned long low = 0, initial = 0, largest = 0;
  std::FILE* f = std::fopen(("/proc/sys/net/ipv4/" + name).c_str(), "r");
  if (f == nullptr) return 32 * kMiB;
  int n = std::fscanf(f, "%lu %lu %lu", &low, &initial, &largest);
  std::fclose(f);
  return n == 3 ? largest : 32 * kMiB;
}

// A request header asking for an answer before the body: "413" (a key, a body over the limit),
// "401" (no key) or "431" (a header over the limit), announcing `length` bytes of body.
std::string Header(const std::string& kind, std::uint64_t length) {
  std::string h =
      "POST /sync/start HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n";
  if (kind != "401") h += "Authorization: Bearer test-key\r\n";
  if (kind == "431") h += "X-Padding: " + std::string(20000, 'p') + "\r\n";
  return h + "Content-Length: " + std::to_string(length) + "\r\n\r\n";
}

const char* CodeOf(const std::string& kind) {
  if (kind == "413") return "payload_too_large";
  if (kind == "401") return "unauthorized";
  if (kind == "431") return "headers_too_large";
  return "too_many_connections";
}

// `received` is one answer with `status`, Connection: close, and the JSON error `code` with a
// message.
void ExpectAnswer(const std::string& received, const std::string& status, const std::string& code) {
  ASSERT_EQ(received.rfind("HTTP/1.1 " + status + " ", 0), 0u) << received.substr(0, 300);
  std::size_t end = received.find("\r\n\r\n");
  ASSERT_NE(end, std::string::npos) << received;
  std::string head = received.substr(0, end);
  EXPECT_NE(head.find("\r\nConnection: close"), std::string::npos) << head;
  Json j = Json::parse(received.substr(end + 4), nullptr, /*allow_exceptions=*/false);
  ASSERT_TRUE(j.is_object()) << received;
  EXPECT_EQ(j.value("code", ""), code) << received;
  EXPECT_TRUE(j.contains("message") && j["message"].is_string() &&
              !j["message"].get<std::string>().empty())
      << received;
}

class EarlyAnswerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    log_file_ = std::fopen((dir_ / "daemon.log").c_str(), "w");
    log_ = std::make_unique<Logger>(LogLevel::kInfo, log_file_);
    Config c;
    c.listen_host = "127.0.0.1";
    c.listen_port = 0;
    c.database = ":memory:";
    c.shutdown_grace = 500ms;
    c.api_keys = {{"all", "test-key", {"*"}}};
    IntegrationConfig github;
    github.key = "github";
    SyncConfig issues;
    issues.name = "issues";
    issues.runs = "every 1h";
    issues.auto_start = false;
    issues.command = {"/bin/true"};
    github.syncs = {issues};
    github.connections = {"acme"};
    c.integrations = {github};
    Customize(c);
    config_ = c;
    auto started = Daemon::Start(config_, *log_);
    ASSERT_TRUE(started.ok()) << started.status();
    daemon_ = std::move(started.value());
  }
  void TearDown() override {
    daemon_.reset();
    log_.reset();
    if (log_file_) std::fclose(log_file_);
  }
  virtual void Customize(Config&) {}

  // The daemon's open connections (GET /metrics on `client`'s connection, which counts itself).
  int OpenConnections(Client& client) {
    Reply r = client.Get("/metrics");
    EXPECT_EQ(r.status, 200u) << r.body;
    const std::string name = "\nsyncschedd_http_connections_open ";
    std::size_t at = r.body.find(name);
    if (at == std::string::npos) return -1;
    return std::stoi(r.body.substr(at + name.size()));
  }

  // Sends `header` and `body` bytes, all of it before reading anything, then reads: the answer must
  // be there, whole, followed by the end of the connection.
  void SendAllThenRead(const std::string& header, std::uint64_t body, const std::string& status,
                       const std::string& code) {
    SCOPED_TRACE(status + " with a body of " + std::to_string(body) + " bytes");
    Socket s(daemon_->port());
    int err = s.Send(header);
    if (err == 0) err = s.SendBody(body);
    EXPECT_EQ(err, 0) << "the request could not be sent whole (" << std::strerror(err) << ") after "
                      << s.sent() << " bytes: the server reset the connection";
    bool ended = false;
    std::string received = s.ReadToEnd(ended);
    ExpectAnswer(received, status, code);
    EXPECT_TRUE(ended) << "the server did not close the connection";
  }

  TempDir dir_;
  std::FILE* log_file_ = nullptr;
  std::unique_ptr<Logger> log_;
  Config config_;
  std::unique_ptr<Daemon> daemon_;
};

// With one HTTP thread (no strand) and with two (a strand per connection).
class EarlyAnswerThreadsTest : public EarlyAnswerTest,
                               public ::testing::WithParamInterface<std::size_t> {
 protected:
  void Customize(Config& c) override { c.http_threads = GetParam(); }
};

std::string ThreadsName(const ::testing::TestParamInfo<std::size_t>& info) {
  return std::to_string(info.param) + (info.param == 1 ? "Thread" : "Threads");
}

TEST_P(EarlyAnswerThreadsTest, AnEarlyAnswerReachesAClientThatSendsItsWholeBodyFirst) {
  for (std::string kind : {"413", "401", "431"}) {
    SendAllThenRead(Header(kind, kBigBody), kBigBody, kind, CodeOf(kind));
  }
  // The daemon still serves.
  Client after(daemon_->port());
  EXPECT_EQ(after.Get("/health").status, 200u);
}

TEST_P(EarlyAnswerThreadsTest, AFastSenderIsCutAtTheByteBound) {
  // A body far over the bound, written as fast as the server takes it, never read from: the
  // server reads and drops kLingerBytes of it, then closes (a reset: the client still sends).
  Socket s(daemon_->port());
  int err = s.Send(Header("413", std::uint64_t{1} << 40));
  ASSERT_EQ(err, 0);
  err = s.SendBody(kLingerBytes + 512 * kMiB);
  EXPECT_TRUE(err == EPIPE || err == ECONNRESET) << std::strerror(err) << " after " << s.sent();
  // At least the bound was taken; at most the bound and what the socket buffers can hold on
  // both sides (the maxima of tcp_wmem and tcp_rmem: 4 and 32 MiB by default).
  EXPECT_GE(s.sent(), kLingerBytes);
  EXPECT_LE(s.sent(), kLingerBytes + MaxBuffer("tcp_wmem") + MaxBuffer("tcp_rmem") + kMiB);
  // What arrived before the reset is still read (Linux keeps it): the answer.
  bool ended = false;
  std::string received = s.ReadToEnd(ended);
  ExpectAnswer(received, "413", "payload_too_large");
  EXPECT_TRUE(ended);
}

INSTANTIATE_TEST_SUITE_P(HttpThreads, EarlyAnswerThreadsTest, ::testing::Values(1, 2), ThreadsName);

class SlowSenderTest : public EarlyAnswerTest {
 protected:
  void Customize(Config& c) override { c.limits.read_timeout = 250ms; }
};

TEST_F(SlowSenderTest, ASlowSenderIsCutAtReadTimeout) {
  Client metrics(daemon_->port());
  ASSERT_EQ(OpenConnections(metrics), 1);
  // A huge body trickled: 512 bytes every 10 ms, never a pause long enough for the idle bound.
  Socket s(daemon_->port());
  ASSERT_EQ(s.Send(Header("413", std::uint64_t{1} << 40)), 0);
  int err = 0;
  Clock::time_point failed;
  std::thread trickle([&] {
    const std::string piece(512, 'x');
    for (int i = 0; i < 1000 && err == 0; ++i) {  // at most ~10 s
      err = s.Send(piece);
      if (err != 0) failed = Clock::now();
      std::this_thread::sleep_for(10ms);  // the sender's pace, not a synchronisation
    }
  });
  // The answer comes at once; the server's side ends with it (a half-close).
  bool ended = false;
  std::string received = s.ReadToEnd(ended);
  auto answered_at = Clock::now();
  ExpectAnswer(received, "413", "payload_too_large");
  EXPECT_TRUE(ended);
  // The server still reads: the connection is open until the bound, then closed. The client
  // learns it from its next write (a reset); the daemon's count of connections drops too.
  EXPECT_TRUE(WaitFor([&] { return OpenConnections(metrics) == 1; }, 5s))
      << "the lingering connection outlived read_timeout";
  trickle.join();
  ASSERT_TRUE(err == EPIPE || err == ECONNRESET) << std::strerror(err);
  auto lived = std::chrono::duration_cast<std::chrono::milliseconds>(failed - answered_at);
  // The bound is 250 ms after the server's answer, a little before the client read it; the
  // client's write fails within a pace (10 ms) of the close. Slack for a loaded machine (the
  // drain used to stop after 2 s whatever read_timeout).
  EXPECT_GE(lived, 100ms);
  EXPECT_LE(lived, 1500ms);
}

TEST_F(EarlyAnswerTest, ASilentClientIsClosedAfterTheIdleBound) {
  Client metrics(daemon_->port());
  ASSERT_EQ(OpenConnections(metrics), 1);
  // Announces a body over the limit, reads the answer, then neither sends nor closes.
  Socket s(daemon_->port());
  ASSERT_EQ(s.Send(Header("413", 10 * kMiB)), 0);
  bool ended = false;
  std::string received = s.ReadToEnd(ended);
  auto answered_at = Clock::now();
  ExpectAnswer(received, "413", "payload_too_large");
  EXPECT_TRUE(ended);
  // Still open (lingering: read_timeout is 30 s here), unless this thread was held up that long.
  int open = OpenConnections(metrics);
  if (Clock::now() - answered_at < 1500ms) {
    EXPECT_EQ(open, 2);
  }
  EXPECT_TRUE(WaitFor([&] { return OpenConnections(metrics) == 1; }, 6s));
  auto lived = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - answered_at);
  EXPECT_GE(lived, 1500ms);  // the idle bound is 2 s after the answer
}

class TurnedAwayTest : public EarlyAnswerTest {
 protected:
  void Customize(Config& c) override { c.limits.max_connections = 1; }
};

TEST_F(TurnedAwayTest, A503ReachesAClientThatSendsItsWholeBodyFirst) {
  Client holder(daemon_->port());
  ASSERT_EQ(holder.Get("/health").status, 200u);  // the one connection allowed
  for (int i = 0; i < 3; ++i) {
    SendAllThenRead(Header("413", kBigBody), kBigBody, "503", "too_many_connections");
  }
  EXPECT_EQ(holder.Get("/health").status, 200u);
}

}  // namespace
}  // namespace syncsched::daemon
