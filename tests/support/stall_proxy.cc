#include "support/stall_proxy.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
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
};

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
  if (!stalled) stall_below_ = 0;
  (void)!::write(wake_[1], "x", 1);
}

void StallProxy::StallOpen() {
  stall_below_ = accepted_.load();
  (void)!::write(wake_[1], "x", 1);
}

void StallProxy::Run() {
  std::vector<Link> links;
  while (!stop_) {
    const bool stalled = stalled_.load();
    const std::size_t stall_below = static_cast<std::size_t>(stall_below_.load());
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
          if (!l.eof[side] && l.pending[side].size() < (1 << 20)) events |= POLLIN;
          if (!l.pending[1 - side].empty()) events |= POLLOUT;
          if (events == 0) continue;  // at EOF with nothing to write: polling would spin on HUP
          fds.push_back({l.fd[side], events, 0});
          owners.emplace_back(i, side);
        }
      }
    }
    if (::poll(fds.data(), fds.size(), 1000) < 0 && errno != EINTR) return;
    if (fds[0].revents != 0) {
      char buf[64];
      while (::read(wake_[0], buf, sizeof buf) > 0) {
      }
    }
    if (fds[1].revents & POLLIN) {
      int client = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
      if (client >= 0) {
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
      if ((rev & POLLOUT) && !l.pending[1 - side].empty()) {
        ssize_t n = ::send(l.fd[side], l.pending[1 - side].data(), l.pending[1 - side].size(),
                           MSG_NOSIGNAL);
        if (n > 0) {
          l.pending[1 - side].erase(0, static_cast<std::size_t>(n));
        } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
          l.eof[1 - side] = true;  // this side cannot take more: treat its peer as done
          l.pending[1 - side].clear();
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
