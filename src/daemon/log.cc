// JSON-lines logging. See log.h.
#include "daemon/log.h"

#include <chrono>
#include <string>

#include "syncsched/clock.h"

namespace syncsched::daemon {

std::string_view ToString(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return "debug";
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kWarn:
      return "warn";
    case LogLevel::kError:
      return "error";
  }
  return "info";
}

std::optional<LogLevel> ParseLogLevel(std::string_view text) {
  for (LogLevel l : {LogLevel::kDebug, LogLevel::kInfo, LogLevel::kWarn, LogLevel::kError}) {
    if (text == ToString(l)) return l;
  }
  return std::nullopt;
}

void Logger::Log(LogLevel level, std::string_view msg, codec::Json fields) {
  if (!Enabled(level)) return;
  codec::Json line = codec::Json::object();
  line["ts"] =
      FormatTime(std::chrono::floor<std::chrono::milliseconds>(std::chrono::system_clock::now()));
  line["level"] = std::string(ToString(level));
  line["msg"] = std::string(msg);
  if (fields.is_object()) {
    for (auto& [key, value] : fields.items()) line[key] = std::move(value);
  }
  std::string text = codec::Dump(line);
  text += '\n';
  std::lock_guard<std::mutex> lock(mu_);
  std::fwrite(text.data(), 1, text.size(), out_);
  std::fflush(out_);
}

}  // namespace syncsched::daemon
