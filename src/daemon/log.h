// The daemon's log: one JSON object per line on stderr (or another stream), with `ts` (ISO 8601
// UTC), `level`, `msg` and any fields the caller adds. Thread-safe: a line is written whole.
#pragma once

#include <cstdio>
#include <mutex>
#include <optional>
#include <string_view>

#include "codec/codec.h"

namespace syncsched::daemon {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarn = 2, kError = 3 };

// "debug", "info", "warn", "error".
std::string_view ToString(LogLevel level);
std::optional<LogLevel> ParseLogLevel(std::string_view text);

class Logger {
 public:
  explicit Logger(LogLevel min_level = LogLevel::kInfo, std::FILE* out = stderr)
      : min_level_(min_level), out_(out) {}

  void set_min_level(LogLevel level) { min_level_ = level; }
  bool Enabled(LogLevel level) const { return level >= min_level_; }

  // Writes {"ts", "level", "msg", ...fields} as one line. `fields` must be an object (or null).
  void Log(LogLevel level, std::string_view msg, codec::Json fields = nullptr);
  void Debug(std::string_view msg, codec::Json fields = nullptr) {
    Log(LogLevel::kDebug, msg, std::move(fields));
  }
  void Info(std::string_view msg, codec::Json fields = nullptr) {
    Log(LogLevel::kInfo, msg, std::move(fields));
  }
  void Warn(std::string_view msg, codec::Json fields = nullptr) {
    Log(LogLevel::kWarn, msg, std::move(fields));
  }
  void Error(std::string_view msg, codec::Json fields = nullptr) {
    Log(LogLevel::kError, msg, std::move(fields));
  }

 private:
  LogLevel min_level_;
  std::FILE* out_;
  std::mutex mu_;
};

}  // namespace syncsched::daemon
