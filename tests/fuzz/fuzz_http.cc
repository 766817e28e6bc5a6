// Fuzz target: the HTTP request path of syncschedd without a socket. The input is the bytes a
// client sends on one connection (any number of pipelined requests). They go through Beast's
// HTTP/1 request parser as the server (src/daemon/http_server.cc) drives it: the header first
// (header_limit), admission by daemon::Api::Admit (route, method, key), then the body (body_limit,
// a rejected request's body read and dropped), then daemon::Api::Handle against an in-memory
// engine: routing, URL and query decoding, the JSON codec, the engine's commands and the
// encoding of their answers.
//
// The parser callbacks below mirror the server's RequestParser (which is private to
// http_server.cc): the first Authorization, Connection and Expect headers are kept.
//
// Invariants: nothing throws or crashes; no answer is a 500 (an internal error or an exception
// escaping a route); every answer is JSON (or the metrics' text) and an error answer carries a
// code and a message; a 401 asks for a Bearer key and a 405 lists the allowed methods; a request
// without a valid key gets nothing but /health, and the read-only key changes nothing.
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "codec/codec.h"
#include "codec/url.h"
#include "daemon/api.h"
#include "daemon/config.h"
#include "daemon/log.h"
#include "fuzz.h"
#include "syncsched/clock.h"
#include "syncsched/engine.h"

namespace syncsched::fuzz {
namespace {

namespace beast = boost::beast;
namespace http = beast::http;
using codec::Json;

constexpr std::string_view kAdminKey = "fuzz-admin";
constexpr std::string_view kReadKey = "fuzz-read";

struct Request {
  std::string method;
  std::string target;
  std::string authorization;
  std::string connection;
  std::string body;
  unsigned version = 11;
  bool has_authorization = false;
  bool has_connection = false;
  bool expect_continue = false;
  bool has_expect = false;
  bool discard_body = false;

  bool KeepAlive() const {
    if (version < 11) return has_connection && http::token_list{connection}.exists("keep-alive");
    return !has_connection || !http::token_list{connection}.exists("close");
  }
};

class Parser final : public http::basic_parser<true> {
 public:
  explicit Parser(Request& request) : r_(request) {}

 private:
  void on_request_impl(http::verb, beast::string_view method, beast::string_view target,
                       int version, beast::error_code& ec) override {
    r_.method.assign(method.data(), method.size());
    r_.target.assign(target.data(), target.size());
    r_.version = static_cast<unsigned>(version);
    ec = {};
  }
  void on_response_impl(int, beast::string_view, int, beast::error_code& ec) override { ec = {}; }
  void on_field_impl(http::field name, beast::string_view, beast::string_view value,
                     beast::error_code& ec) override {
    if (name == http::field::authorization && !r_.has_authorization) {
      r_.has_authorization = true;
      r_.authorization.assign(value.data(), value.size());
    } else if (name == http::field::connection && !r_.has_connection) {
      r_.has_connection = true;
      r_.connection.assign(value.data(), value.size());
    } else if (name == http::field::expect && !r_.has_expect) {
      r_.has_expect = true;
      r_.expect_continue = beast::iequals(value, "100-continue");
    }
    ec = {};
  }
  void on_header_impl(beast::error_code& ec) override { ec = {}; }
  void on_body_init_impl(const boost::optional<std::uint64_t>& length,
                         beast::error_code& ec) override {
    ec = {};
    if (r_.discard_body || !length) return;
    if (*length > r_.body.max_size()) {
      ec = http::error::buffer_overflow;
      return;
    }
    r_.body.reserve(static_cast<std::size_t>(*length));
  }
  std::size_t on_body_impl(beast::string_view body, beast::error_code& ec) override {
    ec = {};
    if (!r_.discard_body) r_.body.append(body.data(), body.size());
    return body.size();
  }
  void on_chunk_header_impl(std::uint64_t, beast::string_view, beast::error_code& ec) override {
    ec = {};
  }
  std::size_t on_chunk_body_impl(std::uint64_t, beast::string_view body,
                                 beast::error_code& ec) override {
    return on_body_impl(body, ec);
  }
  void on_finish_impl(beast::error_code& ec) override { ec = {}; }

  Request& r_;
};

// The engine and the API: every input starts from this state, so that its answers depend on it
// alone and nothing piles up over a long run. (Making an engine costs ~10 ms, mostly its timer
// wheels, so one is reused after an input that changed nothing: one whose every request that
// could change something was refused.) An in-memory engine on a virtual clock
// with its timers held, whose alarm and runs are handlers on an io_context of its own, run here
// between requests on this thread (each run a no-op); the catalog of a small configuration; two
// keys, one with every scope and one read-only.
struct Env {
  boost::asio::io_context io;  // destroyed after the engine
  VirtualClock clock;
  daemon::Config config;
  daemon::Logger log{daemon::LogLevel::kError};
  std::unique_ptr<Engine> engine;
  std::unique_ptr<daemon::Api> api;

  Env() {
    config.database = ":memory:";
    config.api_keys = {{"admin", std::string(kAdminKey), {"*"}},
                       {"reader", std::string(kReadKey), {"environment:syncs:read"}}};
    config.limits.max_body_bytes = 64 << 10;
    config.limits.max_header_bytes = 4 << 10;
    daemon::IntegrationConfig github;
    github.key = "github";
    daemon::SyncConfig issues;
    issues.name = "issues";
    issues.runs = "every 30min";
    daemon::SyncConfig prs;
    prs.name = "pull-requests";
    prs.runs = "every hour";
    prs.auto_start = false;
    github.syncs = {issues, prs};
    github.connections = {"acme"};
    config.integrations.push_back(github);

    Options options;
    options.clock = &clock;
    options.executor = io.get_executor();
    options.run_executor = io.get_executor();
    options.hold_timers = true;
    engine = std::move(Engine::Open(std::move(options)).value());
    for (const daemon::IntegrationConfig& i : config.integrations) {
      for (const daemon::SyncConfig& s : i.syncs) {
        Status r = engine->RegisterCallback(
            i.key, s.name, [](const RunContext&) { return RunReport::Success({}); });
        FUZZ_CHECK(r.ok(), r.message());
        SyncDefinition def;
        def.name = s.name;
        def.frequency = s.runs;
        def.auto_start = s.auto_start;
        Status d = engine->DefineSync(i.key, def);
        FUZZ_CHECK(d.ok(), d.message());
      }
      for (const std::string& c : i.connections) {
        Status a = engine->AddConnection(i.key, c);
        FUZZ_CHECK(a.ok(), a.message());
      }
    }
    api =
        std::make_unique<daemon::Api>(*engine, config, log, [] { return codec::DaemonMetrics{}; });
    io.poll();
  }
  ~Env() {
    api.reset();
    engine.reset();
  }
};

// The key in an Authorization header ("Bearer <key>", the scheme in any case, blanks around),
// or "" (written independently of daemon/auth.cc).
std::string_view Token(std::string_view auth) {
  auto trim = [](std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
  };
  auth = trim(auth);
  if (auth.size() <= 7 || !beast::iequals(auth.substr(0, 7), "bearer ")) return {};
  return trim(auth.substr(7));
}

bool Mutates(std::string_view method) { return method != "GET" && method != "HEAD"; }

void CheckResponse(const daemon::HttpResponse& r, const Request& req, bool admitted,
                   const std::string& input) {
  std::string where = std::to_string(r.status) + " to " + req.method + " " + req.target + ": " +
                      r.body + "; input " + input;
  FUZZ_CHECK(r.status >= 200 && r.status < 600, where);
  FUZZ_CHECK(r.status != 500, where);
  FUZZ_CHECK(r.authenticate == (r.status == 401), where);
  FUZZ_CHECK(r.status != 405 || !r.allow.empty(), where);
  if (r.content_type == "application/json") {
    Json body;
    try {
      body = Json::parse(r.body);
    } catch (const Json::exception& e) {
      Fail(__FILE__, __LINE__, "the answer is JSON", where + ": " + e.what());
    }
    FUZZ_CHECK(body.is_object(), where);
    if (r.status >= 400) {
      FUZZ_CHECK(body.contains("code") && body["code"].is_string(), where);
      FUZZ_CHECK(body.contains("message") && body["message"].is_string(), where);
    }
  }
  if (r.status >= 200 && r.status < 300) {
    FUZZ_CHECK(admitted, where);
    auto segments = codec::SplitPath(codec::SplitTarget(req.target).path);
    bool health = segments.ok() && *segments == std::vector<std::string>{"health"};
    std::string_view token = Token(req.authorization);
    bool admin = token == kAdminKey;
    bool reader = token == kReadKey;
    if (!health) FUZZ_CHECK(admin || reader, where);
    if (reader) FUZZ_CHECK(!Mutates(req.method), where);
  }
}

// Feeds `in` to the parser until it has what the phase needs. Returns false when the input ran
// out first (the client went away: the server closes without an answer).
bool Feed(Parser& p, std::string_view& in, beast::error_code& ec, bool body) {
  while (true) {
    if (body ? p.is_done() : p.is_header_done()) return true;
    if (in.empty()) return false;
    std::size_t used = p.put(boost::asio::const_buffer(in.data(), in.size()), ec);
    in.remove_prefix(used);
    if (ec == http::error::need_more) {
      ec = {};
      if (used == 0) return false;
      continue;
    }
    if (ec) return true;
  }
}

}  // namespace

int FuzzHttp(const std::uint8_t* data, std::size_t size) {
  // Reused unless the previous input may have changed it (see Env).
  static Env* fresh = nullptr;
  static bool dirty = false;
  if (fresh == nullptr || dirty) {
    delete fresh;
    fresh = new Env();  // never destroyed at exit: libFuzzer exits without unwinding
    dirty = false;
  }
  Env& env = *fresh;
  const daemon::HttpLimits& limits = env.config.limits;
  std::string_view in(reinterpret_cast<const char*>(data), size);
  std::string input = codec::Dump(Json(std::string(in.substr(0, 1000))));

  // Pipelined requests, as long as the connection is kept alive (a bound keeps each input short).
  for (int n = 0; n < 16 && !in.empty(); ++n) {
    Request req;
    Parser parser(req);
    parser.header_limit(static_cast<std::uint32_t>(limits.max_header_bytes));
    parser.body_limit(boost::none);
    beast::error_code ec;
    if (!Feed(parser, in, ec, /*body=*/false)) return 0;
    if (ec) {
      auto error = ec == http::error::header_limit
                       ? codec::errors::HeadersTooLarge(limits.max_header_bytes)
                       : codec::errors::BadRequest("malformed HTTP request: " + ec.message());
      CheckResponse(daemon::Api::ErrorResponse(error), req, false, input);
      return 0;  // the server closes
    }
    bool keep_alive = req.KeepAlive();
    daemon::Api::Admitted admitted;
    std::optional<daemon::HttpResponse> rejected =
        env.api->Admit(req.method, req.target, req.authorization, admitted);
    bool has_body = !parser.is_done();
    auto length = parser.content_length();
    bool too_big = length && *length > limits.max_body_bytes;
    if (rejected) {
      CheckResponse(*rejected, req, false, input);
      if (!has_body) continue;
      if (too_big || req.expect_continue) return 0;
    } else if (too_big) {
      return 0;  // 413, and the server closes
    }
    req.discard_body = rejected.has_value();
    parser.body_limit(limits.max_body_bytes);
    parser.eager(true);
    if (!Feed(parser, in, ec, /*body=*/true)) return 0;
    if (ec) return 0;  // 413 or 400, and the server closes
    if (rejected) {
      if (!keep_alive) return 0;
      continue;
    }
    daemon::HttpRequest request{req.method, req.target, req.authorization, req.body};
    daemon::HttpResponse response = env.api->Handle(request, admitted);
    CheckResponse(response, req, true, input);
    if (response.status < 300 && req.method != "GET") dirty = true;
    env.io.poll();  // the runs the request dispatched
    if (!keep_alive) return 0;
  }
  return 0;
}

}  // namespace syncsched::fuzz
