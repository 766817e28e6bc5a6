// The daemon tests' HTTP client (test_util.h): Beast's HTTP, instantiated here once.
#include "test_util.h"

#include <array>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

namespace syncsched::testing {

namespace http = boost::beast::http;
using boost::beast::error_code;

struct Client::Impl {
  boost::asio::io_context io;
  boost::beast::tcp_stream stream{io};
  boost::beast::flat_buffer buffer;
  std::optional<http::response_parser<http::string_body>> parser;
  std::array<char, 4096> scratch{};

  template <typename Done>
  void ReadReply(Done done) {
    parser.emplace();
    parser->body_limit(64 << 20);
    http::async_read(stream, buffer, *parser, [done](error_code ec, std::size_t) { done(ec); });
  }

  // Starts an exchange with `start(done)` and runs it to its end or the deadline.
  template <typename Start>
  Reply Exchange(Start&& start) {
    bool finished = false;
    error_code error;
    start([&](error_code ec) {
      error = ec;
      finished = true;
    });
    io.restart();
    io.run_for(std::chrono::seconds(20));
    Reply reply;
    if (!finished) {
      ADD_FAILURE() << "no response within the deadline";
      stream.cancel();
      io.restart();
      io.poll();
      return reply;
    }
    if (error) {
      reply.status = 0;
      reply.body = error.message();
      return reply;
    }
    const auto& res = parser->get();
    reply.status = res.result_int();
    reply.body = res.body();
    reply.keep_alive = res.keep_alive();
    for (const auto& field : res) {
      reply.headers[std::string(field.name_string())] = std::string(field.value());
    }
    return reply;
  }
};

Client::Client(std::uint16_t port) : impl_(std::make_unique<Impl>()) {
  boost::asio::ip::tcp::endpoint ep(boost::asio::ip::make_address("127.0.0.1"), port);
  impl_->stream.connect(ep);
}

Client::~Client() = default;

Reply Client::Send(http::verb verb, const std::string& target, const std::string& body,
                   const std::string& key,
                   const std::vector<std::pair<std::string, std::string>>& headers,
                   unsigned version) {
  http::request<http::string_body> req{verb, target, version};
  req.set(http::field::host, "127.0.0.1");
  if (!key.empty()) req.set(http::field::authorization, "Bearer " + key);
  if (!body.empty()) req.set(http::field::content_type, "application/json");
  for (const auto& [name, value] : headers) req.set(name, value);
  req.body() = body;
  req.prepare_payload();
  Impl& c = *impl_;
  return c.Exchange([&](auto&& done) {
    http::async_write(c.stream, req, [&c, done](error_code ec, std::size_t) {
      if (ec) return done(ec);
      c.ReadReply(done);
    });
  });
}

Reply Client::Raw(const std::string& bytes) {
  Impl& c = *impl_;
  return c.Exchange([&](auto&& done) {
    boost::asio::async_write(c.stream, boost::asio::buffer(bytes),
                             [&c, done](error_code ec, std::size_t) {
                               if (ec) return done(ec);
                               c.ReadReply(done);
                             });
  });
}

void Client::Write(const std::string& bytes) {
  error_code ec;
  boost::asio::write(impl_->stream.socket(), boost::asio::buffer(bytes), ec);
  EXPECT_FALSE(ec) << ec.message();
}

Reply Client::Read() {
  Impl& c = *impl_;
  return c.Exchange([&](auto&& done) { c.ReadReply(done); });
}

bool Client::ServerClosed(std::chrono::milliseconds timeout) {
  Impl& c = *impl_;
  bool closed = false;
  std::function<void()> read_more = [&] {
    c.stream.async_read_some(boost::asio::buffer(c.scratch), [&](error_code ec, std::size_t) {
      if (ec) {
        closed = true;
        return;
      }
      read_more();
    });
  };
  read_more();
  c.io.restart();
  c.io.run_for(timeout);
  if (!closed) c.stream.cancel();
  c.io.restart();
  c.io.poll();
  return closed;
}

}  // namespace syncsched::testing
