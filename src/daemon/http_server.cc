// The Beast HTTP server. See http_server.h.
#include "daemon/http_server.h"

#include <algorithm>
#include <charconv>
#include <future>
#include <optional>
#include <string_view>
#include <utility>

#include <boost/asio/basic_waitable_timer.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/ip/address.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

namespace syncsched::daemon {
namespace {

namespace beast = boost::beast;
namespace http = beast::http;
namespace net = boost::asio;
using tcp = net::ip::tcp;
// Concrete executor types rather than any_io_executor: no type-erased executor copies in every
// socket and timer operation. With several threads each connection has its own strand; with one
// thread the plain executor (see HttpServer::Start).
using PlainExecutor = net::io_context::executor_type;
using StrandExecutor = net::strand<PlainExecutor>;

template <class Executor>
Executor MakeExecutor(net::io_context& io);
template <>
PlainExecutor MakeExecutor<PlainExecutor>(net::io_context& io) {
  return io.get_executor();
}
template <>
StrandExecutor MakeExecutor<StrandExecutor>(net::io_context& io) {
  return net::make_strand(io);
}

// What the server keeps of a request: the request line, the three headers it acts on (the first
// of each, as `message::operator[]` would give), and the body. It lives as long as its connection
// and is cleared for each request, so that its strings keep their capacity: steady traffic
// allocates nothing here (Beast's parser<> would allocate each header field and the body).
struct Request {
  std::string method;  // as sent: "GET", "POST", ...
  std::string target;
  std::string authorization;
  std::string connection;
  std::string body;
  unsigned version = 11;
  bool has_authorization = false;
  bool has_connection = false;
  int hosts = 0;           // Host headers
  int authorizations = 0;  // Authorization headers
  bool folded = false;     // a header line starts with a space or a tab (obs-fold)
  bool has_expect = false;
  bool expect_continue = false;  // the first Expect header is "100-continue" (any case)
  bool discard_body = false;     // a rejected request: count the body and drop it

  void Clear() {
    method.clear();
    target.clear();
    authorization.clear();
    connection.clear();
    // A large body's buffer is given back rather than kept for the connection's life.
    if (body.capacity() > (64 << 10)) {
      std::string().swap(body);
    } else {
      body.clear();
    }
    version = 11;
    has_authorization = has_connection = has_expect = expect_continue = discard_body = false;
    hosts = authorizations = 0;
    folded = false;
  }

  // As message::keep_alive: by the first Connection header, and the version.
  bool KeepAlive() const {
    if (version < 11) return has_connection && http::token_list{connection}.exists("keep-alive");
    return !has_connection || !http::token_list{connection}.exists("close");
  }
};

// Beast's HTTP/1 parser (all its checks and limits) filling a Request. One per request (a
// basic_parser cannot be reused); it holds no memory of its own for contiguous input.
class RequestParser final : public http::basic_parser<true> {
 public:
  explicit RequestParser(Request& request) : r_(request) {}

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
    if (name == http::field::host) ++r_.hosts;
    if (name == http::field::authorization) ++r_.authorizations;
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

// The lingering close. After an answer that ends the connection (413, 431, 400, a refused request
// whose body is not read, Connection: close, and 503 at the listener), the server half-closes
// (FIN) and reads and drops what the client still sends, then closes. Closing with unread input
// instead makes the kernel send a reset, and a client still writing its body gets EPIPE or
// ECONNRESET and never sees the answer (Node's fetch, which writes a stream body to the end and a
// buffer for several MB before it looks at an answer, fails with "fetch failed"). The drain
// ends when the client closes its side, or at the first of these bounds (then a reset may still
// lose the answer of a client still sending):
// - bytes: kLingerBytes (or max_body_bytes if larger) read after the answer;
// - time: read_timeout after the answer (what a slow client can hold a connection for anyway);
// - silence: kLingerIdle without a byte (a client that read its answer but does not close).
constexpr std::uint64_t kLingerBytes = std::uint64_t{64} << 20;
constexpr auto kLingerIdle = std::chrono::seconds(2);
// What one read of a drain asks for (into the connection's read buffer).
constexpr std::size_t kDrainChunk = 65536;
// Refusals at the listener (503) that linger at once, beyond max_connections; past this many a
// refusal closes at once. Each holds a socket and a kRefusalChunk buffer until its drain ends.
constexpr std::size_t kMaxLingeringRefusals = 128;
constexpr std::size_t kRefusalChunk = 16384;
// Pipelined requests answered one after the other without returning to the event loop: past
// this many, the next one is posted, so that the stack stays shallow and other connections get
// their turn.
constexpr int kMaxInline = 16;

// Refusals at the listener are logged at most this often (with their count), so that a flood of
// connections does not become a flood of log lines.
constexpr auto kRefusalLogPeriod = std::chrono::seconds(10);
// After a failed accept (out of file descriptors, say), the next one waits this long: the
// pending connection stays in the backlog and would fail again at once.
constexpr auto kAcceptRetry = std::chrono::milliseconds(50);

// Whether the header `bytes` (the request line, the fields and the blank line) folds a line:
// a line after the first that starts with a space or a tab (obs-fold, RFC 9112 §5.2; or
// white space before the first field, §2.2). Beast would join it to the previous field.
bool HasFoldedLine(std::string_view bytes) {
  for (std::size_t at = bytes.find('\n'); at != std::string_view::npos && at + 1 < bytes.size();
       at = bytes.find('\n', at + 1)) {
    if (bytes[at + 1] == ' ' || bytes[at + 1] == '\t') return true;
  }
  return false;
}

// The whole answer of a refusal at the listener (503).
std::string RefusalAnswer(const codec::ApiError& error) {
  std::string body = codec::Dump(codec::EncodeError(error));
  return "HTTP/1.1 503 Service Unavailable\r\nServer: syncschedd\r\n"
         "Content-Type: application/json\r\nConnection: close\r\nContent-Length: " +
         std::to_string(body.size()) + "\r\n\r\n" + body;
}

bool IsDisconnect(const beast::error_code& ec) {
  return ec == http::error::end_of_stream || ec == net::error::eof ||
         ec == net::error::operation_aborted || ec == beast::error::timeout ||
         ec == net::error::connection_reset || ec == net::error::broken_pipe ||
         ec == net::error::bad_descriptor;
}

}  // namespace

class HttpServer::Session {
 public:
  virtual ~Session() = default;
  // On shutdown: a connection waiting for its next request is closed now; one in a request is
  // closed after its response.
  virtual void CloseIfIdle() = 0;
};

template <class Executor>
class HttpServer::Connection final : public HttpServer::Session,
                                     public std::enable_shared_from_this<Connection<Executor>> {
 public:
  using Socket = net::basic_stream_socket<tcp, Executor>;
  using Timer = net::basic_waitable_timer<std::chrono::steady_clock,
                                          net::wait_traits<std::chrono::steady_clock>, Executor>;

  Connection(Socket socket, HttpServer& server, const ClientKey& client)
      : socket_(std::move(socket)),
        timer_(socket_.get_executor()),
        server_(server),
        client_(client),
        limits_(server.config_.limits),
        tick_(std::max(std::min(limits_.idle_timeout, limits_.read_timeout), Millis(1))) {
    server_.connections_open_.fetch_add(1);
    server_.connections_total_.fetch_add(1);
    out_.reserve(512);
  }
  ~Connection() override {
    {
      std::lock_guard<std::mutex> lock(server_.sessions_mu_);
      server_.sessions_.erase(self_);
    }
    server_.ReleaseClient(client_);
    server_.connections_open_.fetch_sub(1);
  }

  void Start() {
    self_ = std::weak_ptr<Session>(this->shared_from_this());
    {
      std::lock_guard<std::mutex> lock(server_.sessions_mu_);
      server_.sessions_.insert(self_);
    }
    net::dispatch(socket_.get_executor(), [self = this->shared_from_this()] {
      // Non-blocking for the application too, so that a response can be written at once
      // (Send) without risking a wait; the asynchronous operations are unaffected.
      beast::error_code ec;
      self->socket_.non_blocking(true, ec);
      if (ec) return self->Close();
      // The first request's header must arrive within read_timeout of the connection's start
      // (a client that connects and sends nothing, or trickles, is cut there).
      self->SetDeadline(self->limits_.read_timeout);
      self->Wait(Clock::now() + self->tick_);
      self->ReadRequest();
    });
  }

  void CloseIfIdle() override {
    net::post(socket_.get_executor(), [self = this->shared_from_this()] {
      if (self->idle_) self->Close();
    });
  }

 private:
  using Clock = std::chrono::steady_clock;

  // Timeouts: each phase (waiting for a request, reading it, writing the response) only moves
  // `deadline_`; one timer per connection wakes up at least every `tick_` (the shortest of the
  // two timeouts, so it can never wake up after a deadline) and closes the socket once the
  // deadline has passed. This spares a timer wait and cancel per socket operation (and the
  // timerfd update that comes with changing the earliest timer).
  void SetDeadline(Millis timeout) { deadline_ = Clock::now() + timeout; }
  void Wait(Clock::time_point at) {
    timer_.expires_at(at);
    timer_.async_wait(
        [self = this->shared_from_this()](beast::error_code ec) { self->OnTimer(ec); });
  }
  void OnTimer(beast::error_code ec) {
    if (ec == net::error::operation_aborted || closed_) return;
    auto now = Clock::now();
    if (deadline_ <= now) return Close();
    Wait(std::min(deadline_, now + tick_));
  }

  // Reading. The header is parsed first (the parser stops after it: not eager), admitted, then
  // the body. Bytes already read (a body sent with its header, pipelined requests) are parsed
  // before reading more; a read is asked for only when the parser needs more.
  void ReadRequest() {
    if (server_.stopping_.load()) return Close();
    idle_ = true;
    reading_body_ = false;
    version_ = 11;  // what a response to a request that cannot be parsed says
    keep_alive_ = true;
    rejected_.reset();
    request_.Clear();
    parser_.emplace(request_);
    parser_->header_limit(static_cast<std::uint32_t>(limits_.max_header_bytes));
    // The body's size is judged once the request is admitted: an unauthorized request is told
    // so whatever its size.
    parser_->body_limit(boost::none);
    // Deadlines: a request (header and body) must arrive within read_timeout of its first byte;
    // the wait for that byte is idle_timeout, but for the connection's first request, whose
    // deadline runs from the connection's start (set in Start).
    started_ = false;
    if (buffer_.size() != 0) {
      RequestStarted();  // pipelined: already here
    } else if (!first_request_) {
      SetDeadline(limits_.idle_timeout);
    }
    Parse();
  }
  void RequestStarted() {
    started_ = true;
    started_at_ = Clock::now();
    if (!first_request_) SetDeadline(limits_.read_timeout);
    first_request_ = false;
  }

  // Feeds the parser what has been read; reads more if that is not enough for the current
  // phase (header, or whole request).
  void Parse() {
    while (buffer_.size() != 0) {
      beast::error_code ec;
      std::size_t used = parser_->put(buffer_.data(), ec);
      if (!reading_body_ && used != 0 && parser_->is_header_done()) {
        // The header is parsed whole, from these bytes (Beast waits for its end first).
        request_.folded =
            HasFoldedLine(std::string_view(static_cast<const char*>(buffer_.data().data()), used));
      }
      buffer_.consume(used);
      if (ec == http::error::need_more) break;
      if (ec) return Parsed(ec);
      if (reading_body_ ? parser_->is_done() : parser_->is_header_done()) return Parsed(ec);
      if (used == 0) break;
    }
    std::size_t size = beast::read_size(buffer_, 65536);
    if (size == 0) return Parsed(http::error::buffer_overflow);
    socket_.async_read_some(buffer_.prepare(size),
                            [self = this->shared_from_this()](beast::error_code ec, std::size_t n) {
                              self->OnRead(ec, n);
                            });
  }
  void OnRead(beast::error_code ec, std::size_t n) {
    inline_ = 0;
    buffer_.commit(n);
    if (n != 0 && !started_) RequestStarted();
    if (ec == net::error::eof) {
      // The end of a request that runs to the end of the stream, or of the connection.
      if (!parser_->got_some()) return Parsed(http::error::end_of_stream);
      ec = {};
      parser_->put_eof(ec);
      return Parsed(ec);
    }
    if (ec) return Parsed(ec);
    Parse();
  }
  void Parsed(beast::error_code ec) {
    if (reading_body_) return OnBody(ec);
    OnHeader(ec);
  }

  void OnHeader(beast::error_code ec) {
    idle_ = false;
    if (IsDisconnect(ec)) return Close();
    if (ec == http::error::header_limit) {
      return Send(Api::ErrorResponse(codec::errors::HeadersTooLarge(limits_.max_header_bytes)),
                  true);
    }
    if (ec) {
      return Send(
          Api::ErrorResponse(codec::errors::BadRequest("malformed HTTP request: " + ec.message())),
          true);
    }
    version_ = request_.version;
    keep_alive_ = request_.KeepAlive();
    // Strict HTTP/1.1 (RFC 9112 §3.2, §5.2; RFC 9110 §5.3): what one server in a chain would
    // read differently from another is refused, and the connection closed.
    const char* malformed = nullptr;
    if (request_.folded) {
      malformed = "a header line starts with a space or a tab (obsolete line folding)";
    } else if (request_.version >= 11 && request_.hosts == 0) {
      malformed = "an HTTP/1.1 request needs a Host header";
    } else if (request_.hosts > 1) {
      malformed = "more than one Host header";
    } else if (request_.authorizations > 1) {
      malformed = "more than one Authorization header";
    }
    if (malformed != nullptr) {
      return Send(Api::ErrorResponse(codec::errors::BadRequest(
                      std::string("malformed HTTP request: ") + malformed)),
                  true);
    }
    rejected_ =
        server_.api_.Admit(request_.method, request_.target, request_.authorization, admitted_);
    bool has_body = !parser_->is_done();
    auto length = parser_->content_length();
    bool too_big = length && *length > limits_.max_body_bytes;
    if (rejected_) {
      // Answer at once when there is no body; read and drop a body that fits, so that the
      // connection stays usable; refuse to read a longer one.
      if (!has_body) return Send(std::move(*rejected_), false);
      if (too_big) return Send(std::move(*rejected_), true);
    } else if (too_big) {
      return Send(Api::ErrorResponse(codec::errors::PayloadTooLarge(limits_.max_body_bytes)), true);
    }
    if (has_body && request_.expect_continue) {
      // A client waiting for permission to send its body: refuse outright, or invite it.
      if (rejected_) return Send(std::move(*rejected_), true);
      static constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
      net::async_write(socket_, net::buffer(kContinue.data(), kContinue.size()),
                       [self = this->shared_from_this()](beast::error_code wec, std::size_t) {
                         if (wec) return self->Close();
                         self->ReadBody();
                       });
      return;
    }
    ReadBody();
  }

  void ReadBody() {
    reading_body_ = true;
    request_.discard_body = rejected_.has_value();
    parser_->body_limit(limits_.max_body_bytes);
    parser_->eager(true);
    if (parser_->is_done()) return OnBody({});
    Parse();
  }

  void OnBody(beast::error_code ec) {
    if (ec == http::error::body_limit) {
      return Send(Api::ErrorResponse(codec::errors::PayloadTooLarge(limits_.max_body_bytes)), true);
    }
    if (IsDisconnect(ec)) return Close();
    if (ec) {
      return Send(
          Api::ErrorResponse(codec::errors::BadRequest("malformed HTTP request: " + ec.message())),
          true);
    }
    if (rejected_) return Send(std::move(*rejected_), false);
    HttpRequest request{request_.method, request_.target, request_.authorization, request_.body};
    Send(server_.api_.Handle(request, admitted_), false);
  }

  // Writes the response as one buffer: the status line, then Server, Content-Type, Allow,
  // WWW-Authenticate, Connection and Content-Length, as Beast's serializer would. The socket
  // takes it at once but when its send buffer is full (a client not reading): only then is
  // the rest written asynchronously.
  void Send(HttpResponse r, bool close) {
    bool keep = !close && keep_alive_ && !server_.stopping_.load();
    bool http10 = version_ == 10;
    out_.clear();
    out_ += http10 ? "HTTP/1.0 " : "HTTP/1.1 ";
    char digits[24];
    auto put_number = [&](std::uint64_t v) {
      auto [end, err] = std::to_chars(digits, digits + sizeof digits, v);
      (void)err;
      out_.append(digits, end);
    };
    put_number(r.status);
    out_ += ' ';
    auto reason = http::obsolete_reason(http::int_to_status(r.status));
    out_.append(reason.data(), reason.size());
    out_ += "\r\nServer: syncschedd\r\nContent-Type: ";
    out_ += r.content_type;
    out_ += "\r\n";
    if (!r.allow.empty()) {
      out_ += "Allow: ";
      out_ += r.allow;
      out_ += "\r\n";
    }
    if (r.authenticate) out_ += "WWW-Authenticate: Bearer\r\n";
    if (http10 && keep) out_ += "Connection: keep-alive\r\n";
    if (!http10 && !keep) out_ += "Connection: close\r\n";
    out_ += "Content-Length: ";
    put_number(r.body.size());
    out_ += "\r\n\r\n";
    out_ += r.body;
    server_.CountResponse(r.status);
    LogRequest(r);

    beast::error_code ec;
    std::size_t n = socket_.write_some(net::buffer(out_), ec);
    if (ec == net::error::would_block || ec == net::error::try_again ||
        ec == net::error::interrupted) {
      ec = {};
      n = 0;
    }
    if (ec) return Close();
    if (n == out_.size()) return Written(keep);
    SetDeadline(limits_.read_timeout);
    net::async_write(socket_, net::buffer(out_.data() + n, out_.size() - n),
                     [self = this->shared_from_this(), keep](beast::error_code wec, std::size_t) {
                       if (wec) return self->Close();
                       self->inline_ = 0;
                       self->Written(keep);
                     });
  }

  // A 5xx is logged as `request failed` (error); at the debug level every answer is logged as
  // `request`. Never a header: the key is not logged.
  void LogRequest(const HttpResponse& r) {
    Logger& log = server_.log_;
    bool failed = r.status >= 500;
    if (!failed && !log.Enabled(LogLevel::kDebug)) return;
    auto duration = std::chrono::duration_cast<std::chrono::microseconds>(
        Clock::now() - (started_ ? started_at_ : Clock::now()));
    codec::Json fields = {{"method", request_.method},
                          {"target", request_.target},
                          {"status", r.status},
                          {"duration_ms", static_cast<double>(duration.count()) / 1000.0}};
    if (failed) {
      fields["body"] = r.body;
      log.Error("request failed", std::move(fields));
    } else {
      log.Debug("request", std::move(fields));
    }
  }

  // After a response: the next request. When it has already been read (pipelined), it is
  // answered now (up to kMaxInline in a row). Otherwise reading it is posted, behind the other
  // connections' events: by then the client has most likely sent it, and the read (Asio tries it
  // at once) finds it, rather than failing with EAGAIN and waiting for epoll: one recv per
  // request instead of two.
  void Written(bool keep) {
    if (!keep) return LingeringClose();
    if (buffer_.size() != 0 && ++inline_ <= kMaxInline) return ReadRequest();
    inline_ = 0;
    net::post(socket_.get_executor(), [self = this->shared_from_this()] { self->ReadRequest(); });
  }

  // Half-closes, then drops what the client still sends, within the bounds (see kLingerBytes).
  void LingeringClose() {
    beast::error_code ec;
    socket_.shutdown(tcp::socket::shutdown_send, ec);
    if (ec) return Close();
    buffer_.clear();
    auto now = Clock::now();
    linger_end_ = now + limits_.read_timeout;
    linger_left_ = std::max<std::uint64_t>(kLingerBytes, limits_.max_body_bytes);
    // The timer wakes up at least every tick_ (at most read_timeout); the idle bound may be
    // sooner than its next wake-up. Reads only move the deadline later (see OnTimer).
    deadline_ = std::min(linger_end_, now + kLingerIdle);
    if (deadline_ < timer_.expiry()) Wait(deadline_);
    Drain();
  }
  void Drain() {
    socket_.async_read_some(buffer_.prepare(kDrainChunk), [self = this->shared_from_this()](
                                                              beast::error_code ec, std::size_t n) {
      // The end of the client's input (EOF, a reset), or a bound.
      if (ec || n >= self->linger_left_) return self->Close();
      self->linger_left_ -= n;
      self->deadline_ = std::min(self->linger_end_, Clock::now() + kLingerIdle);
      self->Drain();
    });
  }

  void Close() {
    closed_ = true;
    beast::error_code ec;
    socket_.shutdown(tcp::socket::shutdown_both, ec);
    socket_.close(ec);
    timer_.cancel();
  }

  Socket socket_;
  Timer timer_;
  HttpServer& server_;
  const ClientKey client_;
  const HttpLimits& limits_;
  const Millis tick_;
  Clock::time_point deadline_{};
  std::weak_ptr<Session> self_;
  beast::flat_buffer buffer_;
  Request request_;
  std::optional<RequestParser> parser_;
  std::optional<HttpResponse> rejected_;
  Api::Admitted admitted_;  // the route of the request, when admitted
  std::string out_;         // the response being written
  unsigned version_ = 11;
  bool keep_alive_ = true;
  bool idle_ = true;  // waiting for a request's header
  bool reading_body_ = false;
  bool closed_ = false;
  int inline_ = 0;                  // requests answered since the last return to the event loop
  bool first_request_ = true;       // no request has started yet on this connection
  bool started_ = false;            // the current request's first byte has arrived
  Clock::time_point started_at_{};  // ... then
  Clock::time_point linger_end_{};  // the time bound of a lingering close
  std::uint64_t linger_left_ = 0;   // the bytes a lingering close may still drop
};

namespace {

// A connection refused at the listener (503): the fixed answer, then a lingering close with the
// same bounds as a connection's, so that a client already sending its request reads the answer
// rather than a reset.
template <class Executor>
class Refusal final : public std::enable_shared_from_this<Refusal<Executor>> {
 public:
  using Socket = net::basic_stream_socket<tcp, Executor>;
  using Timer = net::basic_waitable_timer<std::chrono::steady_clock,
                                          net::wait_traits<std::chrono::steady_clock>, Executor>;

  // `answer` and `lingering` must outlive the refusal; `lingering` was incremented for it.
  Refusal(Socket socket, const std::string& answer, const HttpLimits& limits,
          std::atomic<std::size_t>& lingering)
      : socket_(std::move(socket)),
        timer_(socket_.get_executor()),
        answer_(answer),
        lingering_(lingering),
        end_(Clock::now() + limits.read_timeout),
        left_(std::max<std::uint64_t>(kLingerBytes, limits.max_body_bytes)) {}
  ~Refusal() { lingering_.fetch_sub(1); }

  void Start() {
    deadline_ = std::min(end_, Clock::now() + kLingerIdle);
    Wait();
    net::async_write(socket_, net::buffer(answer_),
                     [self = this->shared_from_this()](beast::error_code ec, std::size_t) {
                       if (!ec) self->socket_.shutdown(tcp::socket::shutdown_send, ec);
                       if (ec) return self->Close();
                       self->drain_ = std::make_unique<char[]>(kRefusalChunk);
                       self->Drain();
                     });
  }

 private:
  using Clock = std::chrono::steady_clock;

  void Wait() {
    timer_.expires_at(deadline_);
    timer_.async_wait([self = this->shared_from_this()](beast::error_code ec) {
      if (ec == net::error::operation_aborted || self->closed_) return;
      if (Clock::now() >= self->deadline_) return self->Close();
      self->Wait();  // reads moved the deadline
    });
  }
  void Drain() {
    socket_.async_read_some(net::buffer(drain_.get(), kRefusalChunk),
                            [self = this->shared_from_this()](beast::error_code ec, std::size_t n) {
                              if (ec || n >= self->left_) return self->Close();
                              self->left_ -= n;
                              self->deadline_ = std::min(self->end_, Clock::now() + kLingerIdle);
                              self->Drain();
                            });
  }
  void Close() {
    if (closed_) return;
    closed_ = true;
    beast::error_code ec;
    socket_.shutdown(tcp::socket::shutdown_both, ec);
    socket_.close(ec);
    timer_.cancel();
  }

  Socket socket_;
  Timer timer_;
  const std::string& answer_;
  std::atomic<std::size_t>& lingering_;
  const Clock::time_point end_;
  std::uint64_t left_;
  Clock::time_point deadline_{};
  std::unique_ptr<char[]> drain_;
  bool closed_ = false;
};

}  // namespace

HttpServer::HttpServer(Api& api, const Config& config, Logger& log)
    : api_(api),
      log_(log),
      config_(config),
      // One thread: the scheduler can then queue completions without waking other threads.
      io_(config_.http_threads == 1 ? 1 : BOOST_ASIO_CONCURRENCY_HINT_DEFAULT),
      acceptor_(net::make_strand(io_)),
      accept_retry_(acceptor_.get_executor()),
      client_busy_answer_(RefusalAnswer(
          codec::errors::TooManyClientConnections(config_.limits.max_connections_per_client))) {}

HttpServer::~HttpServer() { Stop(Millis(0)); }

Status HttpServer::Bind() {
  beast::error_code ec;
  std::string where = config_.listen_host + ":" + std::to_string(config_.listen_port);
  auto address = net::ip::make_address(config_.listen_host, ec);
  if (ec) return Status::InvalidArgument("listen address " + where + ": " + ec.message());
  tcp::endpoint endpoint(address, config_.listen_port);
  acceptor_.open(endpoint.protocol(), ec);
  if (!ec) acceptor_.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) acceptor_.bind(endpoint, ec);
  if (!ec) acceptor_.listen(net::socket_base::max_listen_connections, ec);
  if (ec) return Status::Unavailable("cannot listen on " + where + ": " + ec.message());
  port_ = acceptor_.local_endpoint().port();
  return Status::Ok();
}

void HttpServer::Start() {
  if (config_.http_threads == 1) {
    Accept<PlainExecutor>();
  } else {
    Accept<StrandExecutor>();
  }
  for (std::size_t i = 0; i < config_.http_threads; ++i) {
    threads_.emplace_back([this] {
      while (true) {
        try {
          io_.run();
          return;
        } catch (const std::exception& e) {
          log_.Error("HTTP thread: unexpected exception", {{"error", e.what()}});
        }
      }
    });
  }
}

std::size_t HttpServer::ClientKeyHash::operator()(const ClientKey& k) const noexcept {
  std::uint64_t h = 1469598103934665603ull;  // FNV-1a
  for (unsigned char c : k) h = (h ^ c) * 1099511628211ull;
  return static_cast<std::size_t>(h);
}

HttpServer::ClientKey HttpServer::KeyOf(const net::ip::address& address) {
  if (address.is_v4())
    return net::ip::make_address_v6(net::ip::v4_mapped, address.to_v4()).to_bytes();
  ClientKey key = address.to_v6().to_bytes();
  if (!address.to_v6().is_v4_mapped()) std::fill(key.begin() + 8, key.end(), 0);  // its /64
  return key;
}

bool HttpServer::AdmitClient(const ClientKey& client) {
  std::size_t limit = config_.limits.max_connections_per_client;
  std::lock_guard<std::mutex> lock(clients_mu_);
  std::uint32_t& n = clients_[client];
  if (limit != 0 && n >= limit) {
    if (n == 0) clients_.erase(client);
    return false;
  }
  ++n;
  return true;
}

void HttpServer::ReleaseClient(const ClientKey& client) {
  std::lock_guard<std::mutex> lock(clients_mu_);
  auto it = clients_.find(client);
  if (it != clients_.end() && --it->second == 0) clients_.erase(it);
}

void HttpServer::NoteRefusal(std::string_view reason, const net::ip::address& client) {
  std::uint64_t count = 0;
  {
    std::lock_guard<std::mutex> lock(refusals_mu_);
    ++refusals_unlogged_;
    auto now = std::chrono::steady_clock::now();
    if (refusal_logged_ != std::chrono::steady_clock::time_point{} &&
        now - refusal_logged_ < kRefusalLogPeriod) {
      return;
    }
    refusal_logged_ = now;
    count = refusals_unlogged_;
    refusals_unlogged_ = 0;
  }
  codec::Json fields = {
      {"reason", std::string(reason)}, {"refused", count}, {"open", connections_open_.load()}};
  if (!client.is_unspecified()) fields["client"] = client.to_string();
  log_.Warn("connections refused", std::move(fields));
}

template <class Executor>
void HttpServer::Accept() {
  using Socket = typename Connection<Executor>::Socket;
  acceptor_.async_accept(MakeExecutor<Executor>(io_), [this](beast::error_code ec, Socket socket) {
    if (ec == net::error::operation_aborted || !acceptor_.is_open()) return;
    if (ec) {
      // Out of file descriptors (EMFILE, ENFILE) or memory: the connection stays in the
      // backlog. Retry a little later rather than at once (which would spin).
      NoteRefusal("accept failed: " + ec.message(), net::ip::address());
      accept_retry_.expires_after(kAcceptRetry);
      accept_retry_.async_wait([this](beast::error_code wec) {
        if (wec || !acceptor_.is_open()) return;
        Accept<Executor>();
      });
      return;
    }
    OnAccept<Executor>(std::move(socket));
    Accept<Executor>();
  });
}

template <class Executor>
void HttpServer::OnAccept(net::basic_stream_socket<tcp, Executor> socket) {
  using Socket = net::basic_stream_socket<tcp, Executor>;
  beast::error_code ec;
  tcp::endpoint peer = socket.remote_endpoint(ec);
  if (ec) return;  // already gone: the socket closes here
  socket.set_option(tcp::no_delay(true), ec);
  ClientKey client = KeyOf(peer.address());
  enum class Refuse { kNo, kStopping, kBusy, kClientBusy };
  Refuse refuse = Refuse::kNo;
  if (stopping_.load()) {
    refuse = Refuse::kStopping;
  } else if (connections_open_.load() >= config_.limits.max_connections) {
    refuse = Refuse::kBusy;
  } else if (!AdmitClient(client)) {
    refuse = Refuse::kClientBusy;
  }
  if (refuse == Refuse::kNo) {
    std::make_shared<Connection<Executor>>(std::move(socket), *this, client)->Start();
    return;
  }
  // Shutting down, or over a limit: a fixed answer, then close; no session, no buffer.
  static const std::string kBusy = RefusalAnswer(codec::errors::TooManyConnections());
  static const std::string kStopping = RefusalAnswer(codec::errors::ShuttingDown());
  const std::string& answer = refuse == Refuse::kStopping ? kStopping
                              : refuse == Refuse::kBusy   ? kBusy
                                                          : client_busy_answer_;
  CountResponse(503);
  NoteRefusal(refuse == Refuse::kStopping ? "shutting_down"
              : refuse == Refuse::kBusy   ? "too_many_connections"
                                          : "too_many_client_connections",
              peer.address());
  if (lingering_refusals_.fetch_add(1) < kMaxLingeringRefusals) {
    std::make_shared<Refusal<Executor>>(std::move(socket), answer, config_.limits,
                                        lingering_refusals_)
        ->Start();
  } else {
    // Too many refusals lingering already: answer and close at once (a client still sending may
    // then see a reset instead of the answer).
    lingering_refusals_.fetch_sub(1);
    auto sock = std::make_shared<Socket>(std::move(socket));
    net::async_write(*sock, net::buffer(answer), [sock](beast::error_code, std::size_t) {
      beast::error_code e;
      sock->shutdown(tcp::socket::shutdown_both, e);
      sock->close(e);
    });
  }
}

void HttpServer::Stop(Millis grace) {
  if (stopped_) return;
  stopped_ = true;
  stopping_.store(true);
  // The listener closes now, before anything else: from here on the kernel refuses new clients
  // (and resets those it had queued), rather than leaving them waiting for an accept that will
  // not come.
  auto close_listener = [this] {
    beast::error_code ec;
    acceptor_.close(ec);
    accept_retry_.cancel();
  };
  if (threads_.empty()) {
    close_listener();
  } else {
    std::promise<void> closed;
    net::post(acceptor_.get_executor(), [&] {
      close_listener();
      closed.set_value();
    });
    closed.get_future().wait();
  }
  std::vector<std::shared_ptr<Session>> live;
  {
    std::lock_guard<std::mutex> lock(sessions_mu_);
    for (const auto& weak : sessions_) {
      if (auto s = weak.lock()) live.push_back(std::move(s));
    }
  }
  for (auto& s : live) s->CloseIfIdle();
  live.clear();
  auto deadline = std::chrono::steady_clock::now() + grace;
  while (!threads_.empty() && (connections_open_.load() > 0 || lingering_refusals_.load() > 0) &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  io_.stop();
  for (std::thread& t : threads_) t.join();
  threads_.clear();
}

void HttpServer::CountResponse(unsigned status) {
  if (status < responses_.size()) responses_[status].fetch_add(1, std::memory_order_relaxed);
}

void HttpServer::FillMetrics(codec::DaemonMetrics& m) const {
  for (unsigned s = 0; s < responses_.size(); ++s) {
    std::uint64_t n = responses_[s].load(std::memory_order_relaxed);
    if (n != 0) m.http_responses[s] = n;
  }
  m.http_connections_open = connections_open_.load();
  m.http_connections_total = connections_total_.load();
}

}  // namespace syncsched::daemon
