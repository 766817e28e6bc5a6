#include "support/stall_proxy.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string_view>
#include <vector>

namespace syncsched::testing {
namespace {

bool FillAddress(const std::string& path, sockaddr_un* addr) {
  std::memset(addr, 0, sizeof(*addr));
  addr->sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr->sun_path)) return false;
  std::memcpy(addr->sun_path, path.c_str(), path.size() + 1);
  return true;
}

// One proxied connection: client <-> upstream, each direction with the bytes read but not yet
// written.
struct Link {
  int fd[2] = {-1, -1};    // 0: the client, 1: upstream
  std::string pending[2];  // read from fd[i], to write to fd[1 - i]
  bool eof[2] = {false, false};
  bool shut[2] = {false, false};  // fd[i]'s writing side shut down (its peer's EOF forwarded)
  bool dead = false;
  // The client's stream, as protocol messages: pending[0] up to `scan` is whole messages (only
  // those are forwarded), `typed` once the untyped startup packets are past, `held` from a message
  // that HoldFrom matched (at `scan`).
  std::size_t scan = 0;
  bool typed = false;
  bool held = false;
};

std::uint32_t BigEndian32(const std::string& s, std::size_t at) {
  auto b = [&](std::size_t i) {
    return static_cast<std::uint32_t>(static_cast<unsigned char>(s[i]));
  };
  return b(at) << 24 | b(at + 1) << 16 | b(at + 2) << 8 | b(at + 3);
}

// Advances l.scan over the whole messages of the client's stream; stops at one that the hold
// matches (armed: HoldFrom's type and needle) and marks the link held.
void Classify(Link& l, bool armed, char type, const std::string& needle, std::atomic<int>& held) {
  const std::string& in = l.pending[0];
  while (!l.held) {
    std::size_t header = l.typed ? 5 : 4;
    if (in.size() - l.scan < header) return;
    std::size_t length = BigEndian32(in, l.scan + (l.typed ? 1 : 0)) + (l.typed ? 1 : 0);
    if (length < header || in.size() - l.scan < length) return;
    if (!l.typed) {
      // SSLRequest and GSSENCRequest are followed by another untyped packet.
      std::uint32_t code = length >= 8 ? BigEndian32(in, l.scan + 4) : 0;
      l.typed = code != 80877103 && code != 80877104;
    } else if (armed && (type == 0 || in[l.scan] == type) &&
               (needle.empty() || std::string_view(in).substr(l.scan, length).find(needle) !=
                                      std::string_view::npos)) {
      l.held = true;
      ++held;
      return;
    }
    l.scan += length;
  }
}

}  // namespace

Result<std::unique_ptr<StallProxy>> StallProxy::Start(const std::string& upstream_dir) {
  std::unique_ptr<StallProxy> p(new StallProxy);
  char tmpl[] = "/tmp/syncsched-proxy-XXXXXX";
  if (::mkdtemp(tmpl) == nullptr)
    return Status::Internal("mkdtemp: " + std::string(strerror(errno)));
  p->dir_ = tmpl;
  p->upstream_ = upstream_dir + "/.s.PGSQL.5432";
  sockaddr_un addr;
  if (!FillAddress(p->dir_ + "/.s.PGSQL.5432", &addr)) return Status::Internal("path too long");
  p->listen_fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (p->listen_fd_ < 0 ||
      ::bind(p->listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 ||
      ::listen(p->listen_fd_, 64) != 0 || ::pipe2(p->wake_, O_CLOEXEC | O_NONBLOCK) != 0) {
    return Status::Internal("the proxy cannot listen: " + std::string(strerror(errno)));
  }
  p->thread_ = std::thread([raw = p.get()] { raw->Run(); });
  return p;
}

StallProxy::~StallProxy() {
  stop_ = true;
  if (wake_[1] >= 0) (void)!::write(wake_[1], "x", 1);
  if (thread_.joinable()) thread_.join();
  for (int fd : {listen_fd_, wake_[0], wake_[1]}) {
    if (fd >= 0) ::close(fd);
  }
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

std::string StallProxy::Uri(const std::string& database) const {
  return "postgresql://postgres@/" + database + "?host=" + dir_ + "&port=5432";
}

void StallProxy::Stall(bool stalled) {
  stalled_ = stalled;
  if (!stalled) {
    stall_below_ = 0;
    std::lock_guard lock(hold_mu_);
    hold_armed_ = false;
    release_ = true;
  }
  (void)!::write(wake_[1], "x", 1);
}

void StallProxy::HoldFrom(char type, const std::string& needle) {
  {
    std::lock_guard lock(hold_mu_);
    hold_armed_ = true;
    hold_type_ = type;
    hold_needle_ = needle;
  }
  (void)!::write(wake_[1], "x", 1);
}

void StallProxy::RefuseNew(bool refuse) { refuse_new_ = refuse; }

void StallProxy::StallOpen() {
  stall_below_ = accepted_.load();
  (void)!::write(wake_[1], "x", 1);
}

void StallProxy::Run() {
  std::vector<Link> links;
  bool armed = false;
  char type = 0;
  std::string needle;
  // The client's bytes that may go upstream: whole messages not held (all of them at its EOF,
  // unless held).
  auto forwardable = [](const Link& l) {
    return l.eof[0] && !l.held ? l.pending[0].size() : l.scan;
  };
  // Takes HoldFrom's and Stall(false)'s orders, and classifies what was read before them.
  auto read_hold = [&] {
    {
      std::lock_guard lock(hold_mu_);
      armed = hold_armed_;
      type = hold_type_;
      needle = hold_needle_;
    }
    if (release_.exchange(false)) {
      for (Link& l : links) l.held = false;
    }
    for (Link& l : links) {
      if (!l.dead) Classify(l, armed, type, needle, held_);
    }
  };
  while (!stop_) {
    const bool stalled = stalled_.load();
    const std::size_t stall_below = static_cast<std::size_t>(stall_below_.load());
    read_hold();
    std::vector<pollfd> fds;
    fds.push_back({wake_[0], POLLIN, 0});
    fds.push_back({listen_fd_, POLLIN, 0});
    std::vector<std::pair<std::size_t, int>> owners;  // fds[k + 2] is links[first].fd[second]
    if (!stalled) {
      for (std::size_t i = 0; i < links.size(); ++i) {
        Link& l = links[i];
        if (l.dead || i < stall_below) continue;
        for (int side = 0; side < 2; ++side) {
          short events = 0;
          // Reads on while the client's buffer holds no whole message (one may exceed 1 MiB).
          if (!l.eof[side] &&
              (l.pending[side].size() < (1 << 20) || (side == 0 && forwardable(l) == 0))) {
            events |= POLLIN;
          }
          std::size_t out = side == 1 ? forwardable(l) : l.pending[1].size();
          if (out > 0) events |= POLLOUT;
          if (events == 0) continue;  // at EOF with nothing to write: polling would spin on HUP
          fds.push_back({l.fd[side], events, 0});
          owners.emplace_back(i, side);
        }
      }
    }
    if (::poll(fds.data(), fds.size(), 1000) < 0 && errno != EINTR) return;
    read_hold();  // the orders given while polling apply to the bytes read below
    if (fds[0].revents != 0) {
      char buf[64];
      while (::read(wake_[0], buf, sizeof buf) > 0) {
      }
    }
    if (fds[1].revents & POLLIN) {
      int client = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
      if (client >= 0 && refuse_new_) {
        ::close(client);
      } else if (client >= 0) {
        int up = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_un addr;
        if (up >= 0 && FillAddress(upstream_, &addr) &&
            ::connect(up, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
          int flags = ::fcntl(up, F_GETFL);
          ::fcntl(up, F_SETFL, flags | O_NONBLOCK);
          Link l;
          l.fd[0] = client;
          l.fd[1] = up;
          links.push_back(std::move(l));
          ++accepted_;
        } else {
          ::close(client);
          if (up >= 0) ::close(up);
        }
      }
    }
    for (std::size_t k = 0; k < owners.size(); ++k) {
      Link& l = links[owners[k].first];
      const int side = owners[k].second;
      const short rev = fds[k + 2].revents;
      if (l.dead || rev == 0) continue;
      if ((rev & (POLLIN | POLLHUP | POLLERR)) && !l.eof[side]) {
        char buf[65536];
        ssize_t n = ::read(l.fd[side], buf, sizeof buf);
        if (n > 0) {
          l.pending[side].append(buf, static_cast<std::size_t>(n));
        } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
          l.eof[side] = true;
        }
      }
      if (side == 0) Classify(l, armed, type, needle, held_);
      std::size_t out = side == 1 ? forwardable(l) : l.pending[1].size();
      if ((rev & POLLOUT) && out > 0) {
        ssize_t n = ::send(l.fd[side], l.pending[1 - side].data(), out, MSG_NOSIGNAL);
        if (n > 0) {
          l.pending[1 - side].erase(0, static_cast<std::size_t>(n));
          if (side == 1) l.scan -= std::min(l.scan, static_cast<std::size_t>(n));
        } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
          l.eof[1 - side] = true;  // this side cannot take more: treat its peer as done
          l.pending[1 - side].clear();
          if (side == 1) l.scan = 0;
        }
      }
    }
    // A side at EOF with nothing left to forward: the other side sees the end.
    for (std::size_t i = 0; i < links.size(); ++i) {
      Link& l = links[i];
      if (l.dead || stalled || i < stall_below) continue;
      for (int side = 0; side < 2; ++side) {
        if (l.eof[side] && l.pending[side].empty() && !l.shut[1 - side]) {
          ::shutdown(l.fd[1 - side], SHUT_WR);
          l.shut[1 - side] = true;
        }
      }
      if (l.shut[0] && l.shut[1]) {
        ::close(l.fd[0]);
        ::close(l.fd[1]);
        l.dead = true;
      }
    }
  }
  for (Link& l : links) {
    if (!l.dead) {
      ::close(l.fd[0]);
      ::close(l.fd[1]);
    }
  }
}

}  // namespace syncsched::testing
