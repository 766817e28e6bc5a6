// The daemon under attack, over real sockets on 127.0.0.1 (and 127.0.0.2, another client on
// the same machine), with the daemon in-process: a slowloris from one client locks nobody else
// out; a partial header is cut at read_timeout; HTTP/1.1 is strict (Host required, no folded
// lines, one Authorization); control characters are refused in ids, naming the field; 5xx and
// (at debug) every request are logged. The process-level parts (signals, SIGKILL) are in
// process_test.cc.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "daemon/daemon.h"
#include "test_util.h"

namespace syncsched::daemon {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using syncsched::testing::Client;
using syncsched::testing::Json;
using syncsched::testing::ReadFile;
using syncsched::testing::ReadLines;
using syncsched::testing::Reply;
using syncsched::testing::TempDir;
using syncsched::testing::WaitFor;
namespace http = boost::beast::http;

// A TCP connection to 127.0.0.1:port from `from` (another loopback address is another client).
// Blocking, with a 10 s bound on sends; reads poll.
class Conn {
 public:
  Conn(std::uint16_t port, const char* from = "127.0.0.1") {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd_ < 0) {
      ADD_FAILURE() << "socket: " << std::strerror(errno);
      return;
    }
    timeval timeout{10, 0};
    ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
    sockaddr_in local{};
    local.sin_family = AF_INET;
    ::inet_pton(AF_INET, from, &local.sin_addr);
    if (::bind(fd_, reinterpret_cast<sockaddr*>(&local), sizeof local) != 0) {
      ADD_FAILURE() << "bind " << from << ": " << std::strerror(errno);
    }
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(port);
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
      ADD_FAILURE() << "connect: " << std::strerror(errno);
    }
  }
  ~Conn() {
    if (fd_ >= 0) ::close(fd_);
  }
  Conn(const Conn&) = delete;
  Conn& operator=(const Conn&) = delete;

  // 0, or the errno that stopped the write.
  int Send(std::string_view bytes) {
    while (!bytes.empty()) {
      ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      if (n < 0) {
        if (errno == EINTR) continue;
        return errno;
      }
      bytes.remove_prefix(static_cast<std::size_t>(n));
    }
    return 0;
  }
  // What has arrived within `timeout`, until the server's end (then `ended`).
  std::string Read(bool& ended, std::chrono::milliseconds timeout) {
    std::string received;
    ended = false;
    auto deadline = Clock::now() + timeout;
    char chunk[16384];
    while (true) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(std::max<std::int64_t>(left.count(), 0))) <= 0) break;
      ssize_t n = ::recv(fd_, chunk, sizeof chunk, 0);
      if (n <= 0) {
        ended = true;
        break;
      }
      received.append(chunk, static_cast<std::size_t>(n));
      if (Clock::now() >= deadline) break;
    }
    return received;
  }
  // Waits for the server to close (EOF or a reset); true when it did within `timeout`. Drops
  // what it reads.
  bool Closed(std::chrono::milliseconds timeout) {
    bool ended = false;
    Read(ended, timeout);
    return ended;
  }
  int fd() const { return fd_; }

 private:
  int fd_ = -1;
};

// The status line's code of a raw response, 0 if none.
unsigned StatusOf(const std::string& response) {
  if (response.rfind("HTTP/1.", 0) != 0 || response.size() < 12) return 0;
  return static_cast<unsigned>(std::atoi(response.c_str() + 9));
}

Json BodyOf(const std::string& response) {
  std::size_t end = response.find("\r\n\r\n");
  if (end == std::string::npos) return Json();
  return Json::parse(response.substr(end + 4), nullptr, /*allow_exceptions=*/false);
}

class AttackTest : public ::testing::Test {
 protected:
  void SetUp() override {
    log_file_ = std::fopen((dir_ / "daemon.log").c_str(), "w");
    log_ = std::make_unique<Logger>(Level(), log_file_);
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
  virtual LogLevel Level() { return LogLevel::kInfo; }

  // A figure of GET /metrics: the value of the line starting with `name` (-1 when absent).
  long Metric(Client& client, const std::string& name) {
    Reply r = client.Get("/metrics");
    EXPECT_EQ(r.status, 200u) << r.body;
    std::size_t at = r.body.find("\n" + name + " ");
    if (at == std::string::npos) return -1;
    return std::stol(r.body.substr(at + name.size() + 2));
  }
  std::vector<Json> LogLines(const std::string& msg) {
    std::fflush(log_file_);
    std::vector<Json> out;
    for (const std::string& line : ReadLines(dir_ / "daemon.log")) {
      Json j = Json::parse(line, nullptr, false);
      if (j.is_object() && j.value("msg", "") == msg) out.push_back(j);
    }
    return out;
  }

  TempDir dir_;
  std::FILE* log_file_ = nullptr;
  std::unique_ptr<Logger> log_;
  Config config_;
  std::unique_ptr<Daemon> daemon_;
};

// ---- Lock-out ----

class SlowlorisTest : public AttackTest {
 protected:
  // The default limits (max_connections 1024, max_connections_per_client 256); read_timeout
  // long enough to hold the attack while the test looks, short enough to see it cut.
  void Customize(Config& c) override { c.limits.read_timeout = 6s; }
};

TEST_F(SlowlorisTest, OneClientHolding2000HalfSentRequestsLocksNobodyOut) {
  constexpr int kSockets = 2000;
  const std::size_t per_client = config_.limits.max_connections_per_client;
  ASSERT_EQ(per_client, 256u) << "the test is about the default";
  ASSERT_GT(static_cast<std::size_t>(kSockets), config_.limits.max_connections);
  rlimit files{};
  getrlimit(RLIMIT_NOFILE, &files);
  if (files.rlim_cur < 2 * kSockets + 512) {
    files.rlim_cur = std::min<rlim_t>(files.rlim_max, 2 * kSockets + 512);
    setrlimit(RLIMIT_NOFILE, &files);
  }
  if (files.rlim_cur < 2 * kSockets + 512) GTEST_SKIP() << "needs ~4,500 open files";

  // The attacker, 127.0.0.2: 2,000 connections, each with a header it never finishes.
  auto attack_started = Clock::now();
  std::vector<std::unique_ptr<Conn>> attack;
  for (int i = 0; i < kSockets; ++i) {
    attack.push_back(std::make_unique<Conn>(daemon_->port(), "127.0.0.2"));
    ASSERT_EQ(attack.back()->Send("GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: "), 0);
  }
  // Every connection is accepted: 256 held, the others refused.
  Client checker(daemon_->port());
  const long refused = kSockets - static_cast<long>(per_client);
  ASSERT_TRUE(WaitFor([&] {
    return Metric(checker, "syncschedd_http_responses_total{code=\"503\"}") == refused;
  })) << Metric(checker, "syncschedd_http_responses_total{code=\"503\"}");
  EXPECT_EQ(Metric(checker, "syncschedd_http_connections_open"), static_cast<long>(per_client) + 1);

  // Another client, 127.0.0.1, is served, on new connections, while the attack holds.
  for (int i = 0; i < 20; ++i) {
    Client other(daemon_->port());
    Reply r = other.Get("/health");
    EXPECT_EQ(r.status, 200u) << r.body;
  }
  EXPECT_LT(Clock::now() - attack_started, 6s) << "the check ran after read_timeout: too slow a "
                                                  "machine for this test to mean anything";

  // The refused ones read a 503 naming the per-client limit (written by now, or very soon).
  std::vector<std::string> got(attack.size());
  long answered_503 = 0;
  WaitFor([&] {
    answered_503 = 0;
    for (std::size_t i = 0; i < attack.size(); ++i) {
      bool ended = false;
      if (got[i].empty()) got[i] = attack[i]->Read(ended, 0ms);
      if (!got[i].empty()) ++answered_503;
    }
    return answered_503 == refused;
  });
  EXPECT_EQ(answered_503, refused);
  for (const std::string& g : got) {
    if (g.empty()) continue;
    EXPECT_EQ(StatusOf(g), 503u) << g;
    EXPECT_EQ(BodyOf(g).value("code", ""), "too_many_client_connections") << g;
  }
  // The held ones are cut at read_timeout (6 s after they started): the header deadline.
  for (auto& c : attack) {
    auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(attack_started + 12s - Clock::now());
    EXPECT_TRUE(c->Closed(std::max(left, 1ms)));
  }
  auto cut_after = Clock::now() - attack_started;
  EXPECT_GE(cut_after, 5500ms);
  EXPECT_LE(cut_after, 12s);
  EXPECT_TRUE(WaitFor([&] { return Metric(checker, "syncschedd_http_connections_open") == 1; }));
  // 1,744 refusals, logged in one line (at most one every 10 s) with their count.
  std::vector<Json> lines = LogLines("connections refused");
  ASSERT_FALSE(lines.empty());
  EXPECT_LE(lines.size(), 2u);
  EXPECT_EQ(lines[0]["reason"], "too_many_client_connections");
  EXPECT_EQ(lines[0]["client"], "127.0.0.2");
}

TEST_F(AttackTest, APerClientLimitOfZeroMeansNone) {
  // Parsing and the default are in config_test; here: 0 admits any number.
  Config c = config_;
  c.limits.max_connections_per_client = 0;
  c.limits.max_connections = 1024;
  daemon_.reset();
  auto started = Daemon::Start(c, *log_);
  ASSERT_TRUE(started.ok()) << started.status();
  daemon_ = std::move(started.value());
  std::vector<std::unique_ptr<Conn>> held;
  for (int i = 0; i < 300; ++i) held.push_back(std::make_unique<Conn>(daemon_->port()));
  Client checker(daemon_->port());
  EXPECT_TRUE(WaitFor([&] { return Metric(checker, "syncschedd_http_connections_open") == 301; }));
}

class HeaderDeadlineTest : public AttackTest {
 protected:
  void Customize(Config& c) override {
    c.limits.read_timeout = 500ms;
    c.limits.idle_timeout = 20s;
  }
};

TEST_F(HeaderDeadlineTest, APartialHeaderIsCutAtReadTimeoutNotIdleTimeout) {
  // A header trickled a byte every 50 ms: each byte is progress, none extends the deadline.
  Conn c(daemon_->port());
  auto start = Clock::now();
  ASSERT_EQ(c.Send("GET /health HTTP/1.1\r\nHo"), 0);
  int err = 0;
  Clock::time_point cut;
  while (err == 0 && Clock::now() - start < 10s) {
    std::this_thread::sleep_for(50ms);  // the sender's pace
    err = c.Send("x");
    if (err != 0) cut = Clock::now();
  }
  ASSERT_TRUE(err == EPIPE || err == ECONNRESET) << std::strerror(err);
  EXPECT_GE(cut - start, 400ms);
  EXPECT_LE(cut - start, 3s);
}

TEST_F(HeaderDeadlineTest, AConnectionThatSendsNothingIsCutAtReadTimeout) {
  Conn c(daemon_->port());
  auto start = Clock::now();
  EXPECT_TRUE(c.Closed(10s));
  EXPECT_GE(Clock::now() - start, 400ms);
  EXPECT_LE(Clock::now() - start, 3s);
}

TEST_F(HeaderDeadlineTest, AKeptAliveConnectionWaitsIdleTimeoutForItsNextRequest) {
  Client c(daemon_->port());
  EXPECT_EQ(c.Get("/health").status, 200u);
  // Three read_timeouts of silence between requests: well within idle_timeout.
  std::this_thread::sleep_for(1500ms);
  Reply r = c.Get("/health");
  EXPECT_EQ(r.status, 200u) << r.body;
  // Its next request is cut at read_timeout from its first byte too.
  Conn raw(daemon_->port());
  ASSERT_EQ(raw.Send("GET /health HTTP/1.1\r\nHost: x\r\n\r\n"), 0);
  bool ended = false;
  std::string first = raw.Read(ended, 200ms);
  EXPECT_EQ(StatusOf(first), 200u) << first;
  std::this_thread::sleep_for(1s);  // idle, past read_timeout: still open
  ASSERT_EQ(raw.Send("GET /health HTTP/1.1\r\nHo"), 0);
  auto start = Clock::now();
  EXPECT_TRUE(raw.Closed(10s));
  EXPECT_GE(Clock::now() - start, 400ms);
  EXPECT_LE(Clock::now() - start, 3s);
}

// ---- Strict HTTP/1.1 ----

TEST_F(AttackTest, StrictHttp11) {
  struct Case {
    std::string request;
    unsigned status;
    std::string says;  // in the message
  };
  const std::string key = "Authorization: Bearer test-key\r\n";
  const std::string status = "GET /sync/status?provider_config_key=github&syncs=* HTTP/1.1\r\n";
  std::vector<Case> cases = {
      {"GET /health HTTP/1.1\r\n\r\n", 400, "Host"},
      {"GET /health HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400, "more than one Host"},
      {"GET /health HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", 400, "folding"},
      {"GET /health HTTP/1.1\r\nHost: a\r\nX-A: b\r\n\tc\r\n\r\n", 400, "folding"},
      {"GET /health HTTP/1.1\r\n Host: a\r\n\r\n", 400, ""},
      {status + "Host: a\r\n" + key + key + "\r\n", 400, "more than one Authorization"},
      {status + "Host: a\r\nAuthorization: Bearer nope\r\n" + key + "\r\n", 400,
       "more than one Authorization"},
      {status + "Host: a\r\n" + key + "Authorization: Bearer nope\r\n\r\n", 400,
       "more than one Authorization"},
      // Folded into the key: refused, not joined.
      {status + "Host: a\r\nAuthorization: Bearer\r\n test-key\r\n\r\n", 400, "folding"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.request);
    Conn conn(daemon_->port());
    ASSERT_EQ(conn.Send(c.request), 0);
    bool ended = false;
    std::string got = conn.Read(ended, 5s);
    EXPECT_EQ(StatusOf(got), c.status) << got;
    Json body = BodyOf(got);
    EXPECT_EQ(body.value("code", ""), "bad_request") << got;
    EXPECT_NE(body.value("message", "").find(c.says), std::string::npos) << got;
    EXPECT_TRUE(ended) << "a malformed request ends its connection";
    EXPECT_NE(got.find("Connection: close"), std::string::npos) << got;
  }
  // What stays accepted: HTTP/1.0 without Host, an empty Host, one of each.
  for (std::string ok : {"GET /health HTTP/1.0\r\n\r\n", "GET /health HTTP/1.1\r\nHost:\r\n\r\n",
                         "GET /health HTTP/1.1\r\nHost: a\r\nX-A: b\r\n\r\n"}) {
    Conn conn(daemon_->port());
    ASSERT_EQ(conn.Send(ok), 0);
    bool ended = false;
    std::string got = conn.Read(ended, 300ms);
    EXPECT_EQ(StatusOf(got), 200u) << ok << "\n" << got;
  }
  Conn conn(daemon_->port());
  ASSERT_EQ(conn.Send(status + "Host: a\r\n" + key + "\r\n"), 0);
  bool ended = false;
  std::string got = conn.Read(ended, 300ms);
  EXPECT_EQ(StatusOf(got), 200u) << got;
}

// ---- Ids ----

TEST_F(AttackTest, ControlCharactersAreRefusedInIdsNamingTheField) {
  Client c(daemon_->port());
  struct Case {
    std::string id;  // JSON-escaped
    std::string says;
  };
  std::vector<Case> refused = {
      {"a\\u0085b", "U+0085"}, {"a\\u0080", "U+0080"},  {"\\u009f", "U+009F"},
      {"a\\u007fb", "U+007F"}, {"a\\u0000b", "U+0000"}, {"a\\nb", "U+000A"},
  };
  for (const Case& r : refused) {
    SCOPED_TRACE(r.id);
    Reply reply = c.Post("/connections",
                         R"({"provider_config_key": "github", "connection_id": ")" + r.id + "\"}");
    EXPECT_EQ(reply.status, 400u) << reply.body;
    Json j = reply.json();
    EXPECT_EQ(j.value("code", ""), "invalid_value") << reply.body;
    EXPECT_EQ(j.value("field", ""), "connection_id") << reply.body;
    std::string message = j.value("message", "");
    EXPECT_EQ(message.rfind("connection_id ", 0), 0u) << message;
    EXPECT_NE(message.find(r.says), std::string::npos) << message;
    // The message quotes the id with its control character escaped, never raw.
    EXPECT_EQ(message.find("\xc2\x85"), std::string::npos) << message;
    EXPECT_EQ(message.find('\x7f'), std::string::npos) << message;
  }
  // Not control characters: accepted.
  for (std::string ok : {"caf\\u00e9", "a\\u00a0b", "\\u2028x", "emoji \\ud83d\\ude00"}) {
    Reply reply = c.Post("/connections",
                         R"({"provider_config_key": "github", "connection_id": ")" + ok + "\"}");
    EXPECT_EQ(reply.status, 200u) << ok << ": " << reply.body;
  }
  // In the path and in a query (percent-encoded), and as bytes that are not UTF-8.
  for (std::string target : {"/connections/a%C2%85b?provider_config_key=github",
                             "/connections/a%7F?provider_config_key=github",
                             "/connections/%FF?provider_config_key=github",
                             "/connections/a%C2?provider_config_key=github"}) {
    Reply reply = c.Delete(target);
    EXPECT_EQ(reply.status, 400u) << target << ": " << reply.body;
    EXPECT_EQ(reply.json().value("field", ""), "connection_id") << reply.body;
  }
  Reply q = c.Get("/sync/status?provider_config_key=github&connection_id=a%C2%9F&syncs=*");
  EXPECT_EQ(q.status, 400u) << q.body;
  EXPECT_EQ(q.json().value("field", ""), "connection_id") << q.body;
  // The engine applies the same rule to its own callers.
  Status s = daemon_->engine().AddConnection("github", "a\xc2\x85");
  EXPECT_TRUE(s.IsInvalidArgument()) << s;
  EXPECT_NE(s.message().find("U+0085"), std::string::npos) << s;
  EXPECT_TRUE(daemon_->engine().AddConnection("github", "a\xff").IsInvalidArgument());
}

// ---- Logs ----

class DebugLogTest : public AttackTest {
 protected:
  LogLevel Level() override { return LogLevel::kDebug; }
};

TEST_F(DebugLogTest, EveryRequestIsLoggedWithoutItsKey) {
  Client c(daemon_->port());
  EXPECT_EQ(c.Get("/health").status, 200u);
  EXPECT_EQ(c.Get("/sync/status?provider_config_key=github&syncs=*").status, 200u);
  EXPECT_EQ(c.Get("/sync/status?provider_config_key=github&syncs=*", "wrong-key").status, 401u);
  EXPECT_EQ(c.Post("/sync/start", "{").status, 400u);
  std::vector<Json> lines;
  ASSERT_TRUE(WaitFor([&] {
    lines = LogLines("request");
    return lines.size() >= 4;
  }));
  ASSERT_EQ(lines.size(), 4u);
  const std::vector<std::pair<std::string, unsigned>> expected = {
      {"/health", 200},
      {"/sync/status?provider_config_key=github&syncs=*", 200},
      {"/sync/status?provider_config_key=github&syncs=*", 401},
      {"/sync/start", 400}};
  for (std::size_t i = 0; i < lines.size(); ++i) {
    EXPECT_EQ(lines[i]["level"], "debug");
    EXPECT_EQ(lines[i]["target"], expected[i].first) << lines[i].dump();
    EXPECT_EQ(lines[i]["status"], expected[i].second) << lines[i].dump();
    EXPECT_EQ(lines[i]["method"], i == 3 ? "POST" : "GET") << lines[i].dump();
    ASSERT_TRUE(lines[i]["duration_ms"].is_number()) << lines[i].dump();
    EXPECT_GE(lines[i]["duration_ms"].get<double>(), 0.0);
  }
  std::string log = ReadFile(dir_ / "daemon.log");
  EXPECT_EQ(log.find("test-key"), std::string::npos) << "a key reached the log";
  EXPECT_EQ(log.find("wrong-key"), std::string::npos) << "a key reached the log";
}

TEST_F(AttackTest, AtInfoRequestsAreNotLogged) {
  Client c(daemon_->port());
  EXPECT_EQ(c.Get("/health").status, 200u);
  EXPECT_EQ(c.Post("/sync/start", "{").status, 400u);
  EXPECT_TRUE(LogLines("request").empty());
  EXPECT_TRUE(LogLines("request failed").empty());
}

// A 5xx at the info level: the database cannot grow (RLIMIT_FSIZE, which SQLite sees as a full
// disk), so a command's commit fails. The log is a pipe, which the limit does not touch.
TEST(FailedRequestLogTest, A5xxIsLoggedAsRequestFailed) {
  TempDir dir;
  int fds[2];
  ASSERT_EQ(pipe2(fds, O_CLOEXEC), 0);
  std::FILE* out = fdopen(fds[1], "w");
  std::mutex mu;
  std::string logged;
  std::thread reader([&] {
    char buf[4096];
    ssize_t n;
    while ((n = read(fds[0], buf, sizeof buf)) > 0) {
      std::lock_guard<std::mutex> lock(mu);
      logged.append(buf, static_cast<std::size_t>(n));
    }
  });
  {
    Logger log(LogLevel::kInfo, out);
    Config c;
    c.listen_port = 0;
    c.database = dir / "syncsched.db";
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
    c.integrations = {github};
    auto started = Daemon::Start(c, log);
    ASSERT_TRUE(started.ok()) << started.status();
    Client client(started.value()->port());
    std::uintmax_t biggest = 0;
    for (std::string suffix : {"", "-wal", "-shm"}) {
      std::error_code ec;
      std::uintmax_t n = std::filesystem::file_size(dir / ("syncsched.db" + suffix), ec);
      if (!ec) biggest = std::max(biggest, n);
    }
    rlimit old{};
    getrlimit(RLIMIT_FSIZE, &old);
    rlimit small = old;
    small.rlim_cur = biggest + (64 << 10);
    auto previous = signal(SIGXFSZ, SIG_IGN);
    ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &small), 0);
    Reply r;
    for (int i = 0; i < 5000 && r.status < 500; ++i) {
      r = client.Post("/connections", R"({"provider_config_key": "github", "connection_id": "c)" +
                                          std::to_string(i) + "\"}");
      if (r.status != 200 && r.status < 500) break;
    }
    setrlimit(RLIMIT_FSIZE, &old);
    signal(SIGXFSZ, previous);
    ASSERT_GE(r.status, 500u) << r.body;
    Json line;
    EXPECT_TRUE(WaitFor([&] {
      std::lock_guard<std::mutex> lock(mu);
      std::istringstream lines(logged);
      for (std::string text; std::getline(lines, text);) {
        Json j = Json::parse(text, nullptr, false);
        if (j.is_object() && j.value("msg", "") == "request failed") line = j;
      }
      return line.is_object();
    }));
    EXPECT_EQ(line.value("level", ""), "error") << line.dump();
    EXPECT_EQ(line.value("method", ""), "POST") << line.dump();
    EXPECT_EQ(line.value("target", ""), "/connections") << line.dump();
    EXPECT_EQ(line.value("status", 0u), r.status) << line.dump();
    EXPECT_EQ(line.value("body", ""), r.body) << line.dump();
    EXPECT_TRUE(line.contains("duration_ms")) << line.dump();
    std::lock_guard<std::mutex> lock(mu);
    EXPECT_EQ(logged.find("test-key"), std::string::npos);
  }
  std::fclose(out);
  reader.join();
  ::close(fds[0]);
}

// ---- The commands' environment ----

TEST(ReservedEnvironmentTest, TheDaemonsOwnSyncschedVariablesAreNamedAtStart) {
  TempDir dir;
  std::FILE* file = std::fopen((dir / "daemon.log").c_str(), "w");
  Logger log(LogLevel::kInfo, file);
  Config c;
  c.listen_port = 0;
  c.database = ":memory:";
  setenv("SYNCSCHED_TOKEN", "secret", 1);
  auto started = Daemon::Start(c, log);
  unsetenv("SYNCSCHED_TOKEN");
  ASSERT_TRUE(started.ok()) << started.status();
  started.value().reset();
  std::fclose(file);
  bool named = false;
  for (const std::string& line : ReadLines(dir / "daemon.log")) {
    Json j = Json::parse(line, nullptr, false);
    if (j.value("msg", "").find("not passed to commands") == std::string::npos) continue;
    EXPECT_EQ(j["level"], "warn");
    EXPECT_EQ(j["names"], Json::array({"SYNCSCHED_TOKEN"}));
    named = true;
  }
  EXPECT_TRUE(named) << ReadFile(dir / "daemon.log");
  EXPECT_EQ(ReadFile(dir / "daemon.log").find("secret"), std::string::npos);
}

}  // namespace
}  // namespace syncsched::daemon
