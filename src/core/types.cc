// Value types of the public API: names, selectors, cancellation tokens, time formatting.
#include "syncsched/types.h"

#include <condition_variable>
#include <cstdio>
#include <ctime>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "core/names.h"

namespace syncsched {
namespace core {

namespace {

// Decodes one UTF-8 character at s[i]: its length (0 when the bytes are not valid UTF-8: a stray
// continuation byte, an overlong form, a surrogate, past U+10FFFF, or cut short) and its value.
std::size_t DecodeUtf8(std::string_view s, std::size_t i, char32_t& cp) {
  auto b = [&](std::size_t k) { return static_cast<unsigned char>(s[i + k]); };
  unsigned char c = b(0);
  if (c < 0x80) {
    cp = c;
    return 1;
  }
  std::size_t n;
  char32_t min;
  if ((c & 0xE0) == 0xC0) {
    n = 2, cp = c & 0x1F, min = 0x80;
  } else if ((c & 0xF0) == 0xE0) {
    n = 3, cp = c & 0x0F, min = 0x800;
  } else if ((c & 0xF8) == 0xF0) {
    n = 4, cp = c & 0x07, min = 0x10000;
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  for (std::size_t k = 1; k < n; ++k) {
    if ((b(k) & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (b(k) & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return n;
}

bool IsControl(char32_t cp) { return cp < 0x20 || (cp >= 0x7F && cp <= 0x9F); }

std::string QuoteCut(std::string_view s) { return Quote(s, kMaxQuotedBytes); }

std::string Describe(const TextFault& f) {
  char buf[64];
  if (f.invalid_utf8) {
    std::snprintf(buf, sizeof buf, "is not valid UTF-8 (at byte %zu)", f.offset);
  } else {
    std::snprintf(buf, sizeof buf, "must not contain control characters (U+%04X at byte %zu)",
                  static_cast<unsigned>(f.code_point), f.offset);
  }
  return buf;
}

}  // namespace

std::string Quote(std::string_view s, std::size_t max_bytes) {
  bool cut = s.size() > max_bytes;
  if (cut) {
    std::size_t end = max_bytes;
    while (end > 0 && (static_cast<unsigned char>(s[end]) & 0xC0) == 0x80) --end;
    s = s.substr(0, end);
  }
  std::string out = "\"";
  char buf[16];
  for (std::size_t i = 0; i < s.size();) {
    char32_t cp = 0;
    std::size_t n = DecodeUtf8(s, i, cp);
    if (n == 0) {
      std::snprintf(buf, sizeof buf, "\\x%02x", static_cast<unsigned char>(s[i]));
      out += buf;
      ++i;
      continue;
    }
    if (IsControl(cp)) {
      if (cp < 0x80) {
        std::snprintf(buf, sizeof buf, "\\x%02x", static_cast<unsigned>(cp));
      } else {
        std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(cp));
      }
      out += buf;
    } else if (cp == '"' || cp == '\\') {
      out += '\\';
      out += static_cast<char>(cp);
    } else {
      out.append(s.substr(i, n));
    }
    i += n;
  }
  return out + (cut ? "...\"" : "\"");
}

std::optional<TextFault> FindTextFault(std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    char32_t cp = 0;
    std::size_t n = DecodeUtf8(s, i, cp);
    if (n == 0) return TextFault{i, true, 0};
    if (IsControl(cp)) return TextFault{i, false, cp};
    i += n;
  }
  return std::nullopt;
}

namespace {

bool IsAlnum(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

}  // namespace

Status ValidateIntegration(std::string_view key, std::string_view field) {
  constexpr StatusSubject kSubject = StatusSubject::kIntegration;
  if (key.empty() || key.size() > 255) {
    return Status::InvalidArgument(
        std::string(field) + " " + QuoteCut(key) + " must be 1 to 255 bytes", kSubject);
  }
  for (char c : key) {
    if (!IsAlnum(c) && c != '~' && c != ':' && c != '.' && c != '@' && c != ' ' && c != '_' &&
        c != '-') {
      return Status::InvalidArgument(
          std::string(field) + " " + QuoteCut(key) + " must match ^[a-zA-Z0-9~:.@ _-]+$", kSubject);
    }
  }
  return Status();
}

Status ValidateConnection(std::string_view id, std::string_view field) {
  constexpr StatusSubject kSubject = StatusSubject::kConnection;
  if (id.empty() || id.size() > 255) {
    return Status::InvalidArgument(
        std::string(field) + " " + QuoteCut(id) + " must be 1 to 255 bytes", kSubject);
  }
  if (std::optional<TextFault> fault = FindTextFault(id)) {
    return Status::InvalidArgument(std::string(field) + " " + QuoteCut(id) + " " + Describe(*fault),
                                   kSubject);
  }
  return Status();
}

Status ValidateName(std::string_view name, std::string_view what, StatusSubject subject) {
  if (name.empty() || name.size() > 255) {
    return Status::InvalidArgument(
        std::string(what) + " " + QuoteCut(name) + " must be 1 to 255 bytes", subject);
  }
  for (char c : name) {
    if (!IsAlnum(c) && c != '_' && c != '-') {
      return Status::InvalidArgument(
          std::string(what) + " " + QuoteCut(name) + " must match ^[a-zA-Z0-9_-]+$", subject);
    }
  }
  return Status();
}

Status ValidateTarget(const Target& target) {
  if (Status s = ValidateIntegration(target.integration); !s.ok()) return s;
  if (target.connection) {
    if (Status s = ValidateConnection(*target.connection); !s.ok()) return s;
  }
  for (const SyncSelector& sel : target.syncs) {
    if (Status s = ValidateName(sel.name, "sync name", StatusSubject::kSync); !s.ok()) return s;
    if (Status s = ValidateName(sel.variant, "variant", StatusSubject::kVariant); !s.ok()) {
      return s;
    }
  }
  return Status();
}

Status ValidateKey(const ScheduleKey& key) {
  if (Status s = ValidateIntegration(key.integration); !s.ok()) return s;
  if (Status s = ValidateConnection(key.connection); !s.ok()) return s;
  if (Status s = ValidateName(key.sync, "sync name", StatusSubject::kSync); !s.ok()) return s;
  return ValidateName(key.variant, "variant", StatusSubject::kVariant);
}

}  // namespace core

std::string ToString(const ScheduleKey& key) {
  return key.integration + "/" + key.connection + "/" + key.sync + "::" + key.variant;
}

Result<SyncSelector> SyncSelector::Parse(std::string_view text) {
  SyncSelector sel;
  std::size_t sep = text.find("::");
  std::string_view name = text.substr(0, sep);
  // Errors quote the whole text too: `sync name "" ...` alone would not say which input it was.
  if (Status s = core::ValidateName(name, "sync name", StatusSubject::kSync); !s.ok()) {
    if (sep == std::string_view::npos) return s;  // the name is the whole text, quoted already
    return Status::InvalidArgument(s.message() + " (in " + core::Quote(text) + ")",
                                   StatusSubject::kSync);
  }
  sel.name = std::string(name);
  if (sep != std::string_view::npos) {
    std::string_view variant = text.substr(sep + 2);
    if (Status s = core::ValidateName(variant, "variant", StatusSubject::kVariant); !s.ok()) {
      return Status::InvalidArgument(s.message() + " (in " + core::Quote(text) + ")",
                                     StatusSubject::kVariant);
    }
    sel.variant = std::string(variant);
  }
  return sel;
}

std::string_view ToString(ScheduleState state) {
  switch (state) {
    case ScheduleState::kPaused:
      return "PAUSED";
    case ScheduleState::kStarted:
      return "STARTED";
    case ScheduleState::kDeleted:
      return "DELETED";
  }
  return "UNKNOWN";
}

std::string_view ToString(RunMode mode) {
  return mode == RunMode::kFullResync ? "full_resync" : "incremental";
}

std::string_view ToString(Outcome outcome) {
  switch (outcome) {
    case Outcome::kStarted:
      return "started";
    case Outcome::kAlreadyStarted:
      return "already_started";
    case Outcome::kPaused:
      return "paused";
    case Outcome::kAlreadyPaused:
      return "already_paused";
    case Outcome::kTriggered:
      return "triggered";
    case Outcome::kAlreadyRunning:
      return "already_running";
  }
  return "unknown";
}

std::string_view ToString(RunStatus status) {
  switch (status) {
    case RunStatus::kRunning:
      return "RUNNING";
    case RunStatus::kPaused:
      return "PAUSED";
    case RunStatus::kStopped:
      return "STOPPED";
    case RunStatus::kSuccess:
      return "SUCCESS";
    case RunStatus::kError:
      return "ERROR";
  }
  return "UNKNOWN";
}

std::string_view ToString(Reason reason) {
  switch (reason) {
    case Reason::kPaused:
      return "paused";
    case Reason::kSkippedOverlap:
      return "skipped_overlap";
    case Reason::kBufferedOverlap:
      return "buffered_overlap";
    case Reason::kWaitingForCap:
      return "waiting_for_cap";
    case Reason::kRetryBackoff:
      return "retry_backoff";
    case Reason::kRetryDropped:
      return "retry_dropped";
    case Reason::kHint:
      return "hint";
    case Reason::kCatchUpRate:
      return "catch_up_rate";
    case Reason::kMissedWhileDown:
      return "missed_while_down";
  }
  return "unknown";
}

std::string FormatTime(TimePoint t) {
  using namespace std::chrono;
  auto day = floor<days>(t);
  year_month_day ymd{day};
  hh_mm_ss<milliseconds> hms{t - day};
  char buf[40];
  std::snprintf(buf, sizeof buf, "%04d-%02u-%02uT%02d:%02d:%02d.%03dZ",
                static_cast<int>(ymd.year()), static_cast<unsigned>(ymd.month()),
                static_cast<unsigned>(ymd.day()), static_cast<int>(hms.hours().count()),
                static_cast<int>(hms.minutes().count()), static_cast<int>(hms.seconds().count()),
                static_cast<int>(hms.subseconds().count()));
  return buf;
}

// ---- CancellationToken ----

struct CancellationToken::State {
  std::mutex mu;
  bool cancelled = false;
  Status reason;
  // By registration id: the registration order. Cancel takes them out one at a time, so that a
  // registration destroyed meanwhile is skipped.
  std::map<std::uint64_t, std::function<void()>> on_cancel;
  std::uint64_t next_id = 1;
  std::uint64_t running = 0;  // the id whose function Cancel is running now, 0 if none
  std::thread::id running_on;
  std::condition_variable done;  // `running` changed
  std::atomic<bool> flag{false};
};

CancellationToken::CancellationToken() : state_(std::make_shared<State>()) {}

bool CancellationToken::cancelled() const { return state_->flag.load(std::memory_order_acquire); }

Status CancellationToken::reason() const {
  std::lock_guard lock(state_->mu);
  return state_->reason;
}

namespace {

// Calls one OnCancel function. An exception it throws is caught and dropped: it must not skip the
// functions after it, escape a command that has already committed (Pause, DeleteConnection, a
// full resync), or leave the alarm thread (where it would terminate the process).
void CallContained(const std::function<void()>& fn) noexcept {
  if (!fn) return;
  try {
    fn();
  } catch (...) {  // dropped: nothing the cancelling thread could do with it
  }
}

}  // namespace

void CancellationToken::OnCancel(std::function<void()> fn) const {
  Registration r = OnCancelScoped(std::move(fn));
  r.state_.reset();  // never deregistered
}

CancellationToken::Registration CancellationToken::OnCancelScoped(std::function<void()> fn) const {
  if (!fn) return {};
  {
    std::lock_guard lock(state_->mu);
    if (!state_->cancelled) {
      std::uint64_t id = state_->next_id++;
      state_->on_cancel.emplace(id, std::move(fn));
      return Registration(state_, id);
    }
  }
  CallContained(fn);
  return {};
}

CancellationToken::Registration::Registration(Registration&& other) noexcept
    : state_(std::move(other.state_)), id_(other.id_) {}

CancellationToken::Registration& CancellationToken::Registration::operator=(
    Registration&& other) noexcept {
  if (this != &other) {
    Reset();
    state_ = std::move(other.state_);
    id_ = other.id_;
  }
  return *this;
}

void CancellationToken::Registration::Reset() noexcept {
  if (!state_) return;
  std::shared_ptr<State> state = std::move(state_);
  std::unique_lock lock(state->mu);
  if (state->on_cancel.erase(id_) > 0) return;
  // Already taken by Cancel: wait until it has run, unless this is its own thread (a function
  // deregistering itself, or a later one of the same Cancel deregistering an earlier one).
  if (state->running_on == std::this_thread::get_id()) return;
  state->done.wait(lock, [&] { return state->running != id_; });
}

bool CancellationToken::Cancel(Status reason) const {
  std::unique_lock lock(state_->mu);
  if (state_->cancelled) return false;
  state_->cancelled = true;
  state_->reason = std::move(reason);
  state_->flag.store(true, std::memory_order_release);
  state_->running_on = std::this_thread::get_id();
  while (!state_->on_cancel.empty()) {
    auto node = state_->on_cancel.extract(state_->on_cancel.begin());
    state_->running = node.key();
    lock.unlock();
    CallContained(node.mapped());
    node = {};  // the function's captures end before its registration is told it has run
    lock.lock();
    state_->running = 0;
    state_->done.notify_all();
  }
  state_->running_on = {};
  return true;
}

}  // namespace syncsched
