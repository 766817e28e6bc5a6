// The Beast HTTP server. See http_server.h.
#include "daemon/http_server.h"

#include <algorithm>
#include <charconv>
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
// Concrete executor types (each connection on its own strand) rather than any_io_executor: no
// type-erased executor copies in every socket and timer operation.
using Executor = net::strand<net::io_context::executor_type>;
using Socket = net::basic_stream_socket<tcp, Executor>;
using Timer = net::basic_waitable_timer<std::chrono::steady_clock,
                                        net::wait_traits<std::chrono::steady_clock>, Executor>;

// A request body that is counted and dropped: what is read of a rejected request, so that the
// connection can stay open without the server buffering the body.
struct DiscardBody {
  struct value_type {};
  class reader {
   public:
    template <bool isRequest, class Fields>
    reader(http::header<isRequest, Fields>&, value_type&) {}
    void init(const boost::optional<std::uint64_t>&, beast::error_code& ec) { ec = {}; }
    template <class ConstBufferSequence>
    std::size_t put(const ConstBufferSequence& buffers, beast::error_code& ec) {
      ec = {};
      return net::buffer_size(buffers);
    }
    void finish(beast::error_code& ec) { ec = {}; }
  };
};

// After a response that closes the connection, read and drop at most this much of what the
// client is still sending (for this long), so that it sees the response rather than a reset.
constexpr std::size_t kMaxDrainBytes = 8 << 20;
constexpr auto kDrainTime = std::chrono::seconds(2);

bool IsDisconnect(const beast::error_code& ec) {
  return ec == http::error::end_of_stream || ec == net::error::eof ||
         ec == net::error::operation_aborted || ec == beast::error::timeout ||
         ec == net::error::connection_reset || ec == net::error::broken_pipe ||
         ec == net::error::bad_descriptor;
}

}  // namespace

class HttpServer::Session : public std::enable_shared_from_this<Session> {
 public:
  Session(Socket socket, HttpServer& server)
      : socket_(std::move(socket)),
        timer_(socket_.get_executor()),
        server_(server),
        limits_(server.config_.limits),
        tick_(std::max(std::min(limits_.idle_timeout, limits_.read_timeout), Millis(1))) {
    server_.connections_open_.fetch_add(1);
    server_.connections_total_.fetch_add(1);
    out_.reserve(512);
  }
  ~Session() {
    {
      std::lock_guard<std::mutex> lock(server_.sessions_mu_);
      server_.sessions_.erase(self_);
    }
    server_.connections_open_.fetch_sub(1);
  }

  void Start() {
    self_ = weak_from_this();
    {
      std::lock_guard<std::mutex> lock(server_.sessions_mu_);
      server_.sessions_.insert(self_);
    }
    net::dispatch(socket_.get_executor(), [self = shared_from_this()] {
      self->SetDeadline(self->limits_.idle_timeout);
      self->Wait(Clock::now() + self->tick_);
      self->ReadHeader();
    });
  }

  // On shutdown: a connection waiting for its next request is closed now; one in a request is
  // closed after its response.
  void CloseIfIdle() {
    net::post(socket_.get_executor(), [self = shared_from_this()] {
      if (self->idle_) self->Close();
    });
  }

 private:
  using Clock = std::chrono::steady_clock;

  // Timeouts: each phase (waiting for a request, reading it, writing the response) only moves
  // `deadline_`; one timer per connection wakes up at least every `tick_` (the shortest of the
  // two timeouts, so it can never wake up after a deadline) and closes the socket once the
  // deadline has passed. This spares a timer wait and cancel per socket operation.
  void SetDeadline(Millis timeout) { deadline_ = Clock::now() + timeout; }
  void Wait(Clock::time_point at) {
    timer_.expires_at(at);
    timer_.async_wait([self = shared_from_this()](beast::error_code ec) { self->OnTimer(ec); });
  }
  void OnTimer(beast::error_code ec) {
    if (ec == net::error::operation_aborted || closed_) return;
    auto now = Clock::now();
    if (deadline_ <= now) return Close();
    Wait(std::min(deadline_, now + tick_));
  }

  void ReadHeader() {
    if (server_.stopping_.load()) return Close();
    idle_ = true;
    version_ = 11;
    keep_alive_ = true;
    discard_parser_.reset();
    rejected_.reset();
    parser_.emplace();
    parser_->header_limit(static_cast<std::uint32_t>(limits_.max_header_bytes));
    // The body's size is judged once the request is admitted: an unauthorized request is told
    // so whatever its size.
    parser_->body_limit(boost::none);
    SetDeadline(limits_.idle_timeout);
    http::async_read_header(socket_, buffer_, *parser_,
                            beast::bind_front_handler(&Session::OnHeader, shared_from_this()));
  }

  void OnHeader(beast::error_code ec, std::size_t) {
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
    const auto& req = parser_->get();
    version_ = req.version();
    keep_alive_ = req.keep_alive();
    SetDeadline(limits_.read_timeout);
    rejected_ =
        server_.api_.Admit(req.method_string(), req.target(), req[http::field::authorization]);
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
    if (has_body && beast::iequals(req[http::field::expect], "100-continue")) {
      // A client waiting for permission to send its body: refuse outright, or invite it.
      if (rejected_) return Send(std::move(*rejected_), true);
      static constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
      net::async_write(socket_, net::buffer(kContinue.data(), kContinue.size()),
                       [self = shared_from_this()](beast::error_code wec, std::size_t) {
                         if (wec) return self->Close();
                         self->ReadBody();
                       });
      return;
    }
    ReadBody();
  }

  void ReadBody() {
    if (rejected_) {
      discard_parser_.emplace(std::move(*parser_));
      discard_parser_->body_limit(limits_.max_body_bytes);
      http::async_read(socket_, buffer_, *discard_parser_,
                       beast::bind_front_handler(&Session::OnBody, shared_from_this()));
      return;
    }
    parser_->body_limit(limits_.max_body_bytes);
    beast::error_code ec;
    if (ParseBuffered(ec)) return OnBody(ec, 0);
    http::async_read(socket_, buffer_, *parser_,
                     beast::bind_front_handler(&Session::OnBody, shared_from_this()));
  }

  // Completes the request from the bytes already read, when they hold all of its body (the
  // usual case of a small body sent with its header): spares an asynchronous read. False: more
  // must be read (nothing is lost; the parser has taken what it could).
  bool ParseBuffered(beast::error_code& ec) {
    auto& p = *parser_;
    if (p.is_done()) return true;
    auto length = p.content_length();
    if (!length || buffer_.size() < *length) return false;
    p.eager(true);
    for (int i = 0; i < 4 && !p.is_done(); ++i) {
      std::size_t n = p.put(buffer_.data(), ec);
      buffer_.consume(n);
      if (ec == http::error::need_more) {
        ec = {};
        return false;
      }
      if (ec) return true;
    }
    return p.is_done();
  }

  void OnBody(beast::error_code ec, std::size_t) {
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
    const auto& req = parser_->get();
    HttpRequest request{req.method_string(), req.target(), req[http::field::authorization],
                        req.body()};
    Send(server_.api_.Handle(request), false);
  }

  // Writes the response as one buffer: the status line, then Server, Content-Type, Allow,
  // WWW-Authenticate, Connection and Content-Length, as Beast's serializer would.
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
    SetDeadline(limits_.read_timeout);
    net::async_write(socket_, net::buffer(out_),
                     [self = shared_from_this(), keep](beast::error_code ec, std::size_t) {
                       if (ec) return self->Close();
                       if (keep) return self->ReadHeader();
                       self->LingeringClose();
                     });
  }

  // Half-closes, then drops what the client still sends for a moment before closing.
  void LingeringClose() {
    beast::error_code ec;
    socket_.shutdown(tcp::socket::shutdown_send, ec);
    if (ec) return Close();
    deadline_ = Clock::now() + kDrainTime;
    if (deadline_ < timer_.expiry()) Wait(deadline_);
    Drain();
  }
  void Drain() {
    socket_.async_read_some(net::buffer(drain_),
                            [self = shared_from_this()](beast::error_code ec, std::size_t n) {
                              self->drained_ += n;
                              if (ec || self->drained_ > kMaxDrainBytes) return self->Close();
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
  const HttpLimits& limits_;
  const Millis tick_;
  Clock::time_point deadline_{};
  std::weak_ptr<Session> self_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  std::optional<http::request_parser<DiscardBody>> discard_parser_;
  std::optional<HttpResponse> rejected_;
  std::string out_;  // the response being written
  unsigned version_ = 11;
  bool keep_alive_ = true;
  bool idle_ = true;  // waiting for a request's header
  bool closed_ = false;
  std::array<char, 16384> drain_{};
  std::size_t drained_ = 0;
};

HttpServer::HttpServer(Api& api, const Config& config, Logger& log)
    : api_(api), log_(log), config_(config), acceptor_(net::make_strand(io_)) {}

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
  Accept();
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

void HttpServer::Accept() {
  acceptor_.async_accept(net::make_strand(io_), [this](beast::error_code ec, Socket socket) {
    if (ec == net::error::operation_aborted || !acceptor_.is_open()) return;
    if (!ec) {
      beast::error_code ignored;
      socket.set_option(tcp::no_delay(true), ignored);
      if (connections_open_.load() >= config_.limits.max_connections || stopping_.load()) {
        // Over the limit: a fixed answer, then close; no session, no buffer.
        static const std::string kBusy = [] {
          std::string body = codec::Dump(codec::EncodeError(codec::errors::TooManyConnections()));
          return "HTTP/1.1 503 Service Unavailable\r\nServer: syncschedd\r\n"
                 "Content-Type: application/json\r\nConnection: close\r\nContent-Length: " +
                 std::to_string(body.size()) + "\r\n\r\n" + body;
        }();
        CountResponse(503);
        auto sock = std::make_shared<Socket>(std::move(socket));
        net::async_write(*sock, net::buffer(kBusy), [sock](beast::error_code, std::size_t) {
          beast::error_code e;
          sock->shutdown(tcp::socket::shutdown_both, e);
          sock->close(e);
        });
      } else {
        std::make_shared<Session>(std::move(socket), *this)->Start();
      }
    } else {
      log_.Warn("accept failed", {{"error", ec.message()}});
    }
    Accept();
  });
}

void HttpServer::Stop(Millis grace) {
  if (stopped_) return;
  stopped_ = true;
  stopping_.store(true);
  net::post(acceptor_.get_executor(), [this] {
    beast::error_code ec;
    acceptor_.close(ec);
  });
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
  while (!threads_.empty() && connections_open_.load() > 0 &&
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
