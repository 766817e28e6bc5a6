// Helpers of the daemon's tests: temporary directories, polling with a deadline (never a sleep
// with a tolerance), a small HTTP client over a real socket (test_util.cc), and child processes.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <boost/beast/http/verb.hpp>

#include "codec/codec.h"

extern char** environ;

namespace syncsched::testing {

using codec::Json;
namespace fs = std::filesystem;

class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "syncschedd-test-XXXXXX").string();
    char* made = mkdtemp(pattern.data());
    EXPECT_NE(made, nullptr);
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const fs::path& path() const { return path_; }
  std::string operator/(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

inline std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

inline std::vector<std::string> ReadLines(const std::string& path) {
  std::vector<std::string> lines;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) lines.push_back(line);
  }
  return lines;
}

inline void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

// Polls `condition` until it holds or `timeout` passes; returns whether it held.
inline bool WaitFor(const std::function<bool()>& condition,
                    std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    if (condition()) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

// True when `pid` no longer runs (gone, or a zombie nobody has reaped yet).
inline bool ProcessGone(pid_t pid) {
  if (kill(pid, 0) != 0) return true;
  std::string stat = ReadFile("/proc/" + std::to_string(pid) + "/stat");
  std::size_t paren = stat.rfind(')');
  return paren == std::string::npos || paren + 2 >= stat.size() || stat[paren + 2] == 'Z' ||
         stat[paren + 2] == 'X';
}

struct Reply {
  unsigned status = 0;
  std::string body;
  std::map<std::string, std::string> headers;
  bool keep_alive = true;
  Json json() const {
    Json j = Json::parse(body, nullptr, /*allow_exceptions=*/false);
    EXPECT_FALSE(j.is_discarded()) << "not JSON: " << body;
    return j;
  }
  std::string code() const {
    Json j = json();
    return j.is_object() && j.contains("code") ? j["code"].get<std::string>() : "";
  }
};

// One keep-alive HTTP/1.1 connection to 127.0.0.1:port. Every operation has a deadline (20 s for
// an exchange); a missed one is a test failure and an empty Reply. A transport error gives status 0
// and the error's message as the body. Defined in test_util.cc, compiled once: Beast's HTTP
// instantiated in every daemon test file took most of each one's compile time.
class Client {
 public:
  explicit Client(std::uint16_t port);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  Reply Send(boost::beast::http::verb verb, const std::string& target, const std::string& body = "",
             const std::string& key = "test-key",
             const std::vector<std::pair<std::string, std::string>>& headers = {},
             unsigned version = 11);
  Reply Get(const std::string& target, const std::string& key = "test-key") {
    return Send(boost::beast::http::verb::get, target, "", key);
  }
  Reply Post(const std::string& target, const std::string& body,
             const std::string& key = "test-key") {
    return Send(boost::beast::http::verb::post, target, body, key);
  }
  Reply Put(const std::string& target, const std::string& body,
            const std::string& key = "test-key") {
    return Send(boost::beast::http::verb::put, target, body, key);
  }
  Reply Delete(const std::string& target, const std::string& body = "",
               const std::string& key = "test-key") {
    return Send(boost::beast::http::verb::delete_, target, body, key);
  }

  // Writes `bytes` as they are, then reads one response.
  Reply Raw(const std::string& bytes);
  // Writes `bytes` without reading.
  void Write(const std::string& bytes);
  // Reads one response.
  Reply Read();
  // Reads until the server closes the connection (true) or the deadline passes (false).
  bool ServerClosed(std::chrono::milliseconds timeout = std::chrono::seconds(5));

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// A child process with its stderr in a file.
class Process {
 public:
  Process(const std::vector<std::string>& argv, const std::string& stderr_path) {
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 2, stderr_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                     0644);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    std::vector<std::string> copy = argv;
    std::vector<char*> args;
    for (std::string& a : copy) args.push_back(a.data());
    args.push_back(nullptr);
    int rc = posix_spawn(&pid_, args[0], &actions, nullptr, args.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    EXPECT_EQ(rc, 0) << "cannot start " << argv[0];
    if (rc != 0) pid_ = -1;
  }
  ~Process() {
    if (pid_ > 0 && !exit_status_) {
      kill(pid_, SIGKILL);
      int status;
      waitpid(pid_, &status, 0);
    }
  }
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  pid_t pid() const { return pid_; }
  void Signal(int sig) { kill(pid_, sig); }
  // The exit code (128 + signal when killed), once the process has exited within `timeout`.
  std::optional<int> Wait(std::chrono::milliseconds timeout = std::chrono::seconds(20)) {
    if (exit_status_) return exit_status_;
    WaitFor(
        [&] {
          int status = 0;
          pid_t r = waitpid(pid_, &status, WNOHANG);
          if (r == pid_) {
            exit_status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
          }
          return exit_status_.has_value();
        },
        timeout);
    return exit_status_;
  }

 private:
  pid_t pid_ = -1;
  std::optional<int> exit_status_;
};

// The port a syncschedd writing its log to `log_path` listens on, once it says so.
inline std::optional<std::uint16_t> ListeningPort(
    const std::string& log_path, std::chrono::milliseconds timeout = std::chrono::seconds(20)) {
  std::optional<std::uint16_t> port;
  WaitFor(
      [&] {
        for (const std::string& line : ReadLines(log_path)) {
          Json j = Json::parse(line, nullptr, false);
          if (j.is_object() && j.value("msg", "") == "listening") {
            port = j["port"].get<std::uint16_t>();
            return true;
          }
        }
        return false;
      },
      timeout);
  return port;
}

}  // namespace syncsched::testing
