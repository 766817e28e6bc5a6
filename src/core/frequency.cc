// Frequency strings: see include/syncsched/frequency.h and SPEC.md §2.
//
// Parsing is done by hand, byte by byte, so that it is independent of the locale and cannot
// overflow: the number is accumulated with explicit overflow checks (a value too large for int64
// milliseconds is reported as out of range) and the fractional part is multiplied exactly in
// decimal, then rounded half up to the nearest millisecond.
#include "syncsched/frequency.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/names.h"
#include "syncsched/status.h"

namespace syncsched {
namespace {

constexpr int64_t kMs = 1;
constexpr int64_t kSecond = 1000 * kMs;
constexpr int64_t kMinute = 60 * kSecond;
constexpr int64_t kHour = 60 * kMinute;
constexpr int64_t kDay = 24 * kHour;
constexpr int64_t kWeek = 7 * kDay;

struct UnitName {
  std::string_view name;
  int64_t ms;
};

constexpr std::array<UnitName, 22> kUnits = {{
    {"ms", kMs},         {"s", kSecond},       {"sec", kSecond},     {"secs", kSecond},
    {"second", kSecond}, {"seconds", kSecond}, {"m", kMinute},       {"min", kMinute},
    {"mins", kMinute},   {"minute", kMinute},  {"minutes", kMinute}, {"h", kHour},
    {"hr", kHour},       {"hrs", kHour},       {"hour", kHour},      {"hours", kHour},
    {"d", kDay},         {"day", kDay},        {"days", kDay},       {"w", kWeek},
    {"week", kWeek},     {"weeks", kWeek},
}};

// Aliases, matched against the words after `every ` (one space between words).
constexpr std::array<UnitName, 7> kAliases = {{
    {"hour", kHour},
    {"day", kDay},
    {"week", kWeek},
    {"month", 30 * kDay},
    {"half day", 12 * kHour},
    {"half hour", 30 * kMinute},
    {"quarter hour", 15 * kMinute},
}};

// Canonical units, largest first.
constexpr std::array<UnitName, 6> kCanonical = {{
    {"w", kWeek},
    {"d", kDay},
    {"h", kHour},
    {"m", kMinute},
    {"s", kSecond},
    {"ms", kMs},
}};

// ASCII only: no locale.
bool IsSpace(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}
bool IsDigit(char c) { return c >= '0' && c <= '9'; }
bool IsLetter(char c) { return c >= 'a' && c <= 'z'; }  // after lowering
char Lower(char c) { return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c; }

// Splits on runs of white space; lower-cases ASCII letters.
std::vector<std::string> Words(std::string_view text) {
  std::vector<std::string> words;
  std::string current;
  for (char c : text) {
    if (IsSpace(c)) {
      if (!current.empty()) words.push_back(std::move(current));
      current.clear();
    } else {
      current.push_back(Lower(c));
    }
  }
  if (!current.empty()) words.push_back(std::move(current));
  return words;
}

std::optional<int64_t> LookUp(std::string_view name, const auto& table) {
  for (const UnitName& u : table) {
    if (u.name == name) return u.ms;
  }
  return std::nullopt;
}

Status NotUnderstood(std::string_view text) {
  std::string msg = "frequency " + core::Quote(text);
  msg +=
      " is not understood: expected \"every N unit\" with N a number and unit one of ms, s, m, "
      "h, d, w (or their long forms), or every hour|day|week|month|half day|half hour|quarter "
      "hour";
  return Status::InvalidArgument(std::move(msg));
}

Status OutOfRange(std::string_view text, std::chrono::milliseconds min,
                  std::chrono::milliseconds max) {
  std::string msg = "frequency " + core::Quote(text);
  msg += " is out of range: must be between ";
  msg += FormatFrequency(min);
  msg += " and ";
  msg += FormatFrequency(max);
  return Status::InvalidArgument(std::move(msg));
}

// The outcome of reading `N unit`: not understood, a value too large for int64, or a value.
struct Amount {
  bool understood = false;
  bool overflow = false;
  int64_t ms = 0;
};

// Reads a number and a unit, both already lower-cased and free of white space.
// number: digits [ '.' digits ] | '.' digits.
Amount ReadAmount(std::string_view number, std::string_view unit) {
  Amount out;
  size_t i = 0;
  const size_t int_begin = i;
  while (i < number.size() && IsDigit(number[i])) ++i;
  const std::string_view int_digits = number.substr(int_begin, i - int_begin);
  std::string_view frac_digits;
  if (i < number.size() && number[i] == '.') {
    ++i;
    const size_t frac_begin = i;
    while (i < number.size() && IsDigit(number[i])) ++i;
    frac_digits = number.substr(frac_begin, i - frac_begin);
    if (frac_digits.empty()) return out;  // "5." or "."
  }
  if (i != number.size()) return out;
  if (int_digits.empty() && frac_digits.empty()) return out;  // missing number

  const std::optional<int64_t> unit_ms = LookUp(unit, kUnits);
  if (!unit_ms) return out;
  out.understood = true;
  const int64_t u = *unit_ms;
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();

  // Integer part, in units, with overflow detection.
  int64_t whole = 0;
  for (char c : int_digits) {
    const int64_t d = c - '0';
    if (whole > (kMax - d) / 10) {
      out.overflow = true;
      return out;
    }
    whole = whole * 10 + d;
  }
  if (whole > kMax / u) {
    out.overflow = true;
    return out;
  }
  int64_t total = whole * u;

  // Fractional part: exactly u * 0.f1f2...fn, by long multiplication from the last digit. After
  // all digits, `carry` is the whole number of milliseconds and `first` the first decimal digit of
  // the remainder, which decides the rounding (half up).
  if (!frac_digits.empty()) {
    int64_t carry = 0;
    int64_t first = 0;
    for (size_t k = frac_digits.size(); k-- > 0;) {
      const int64_t t = (frac_digits[k] - '0') * u + carry;  // < 10 * u + u: no overflow
      first = t % 10;
      carry = t / 10;
    }
    const int64_t frac_ms = carry + (first >= 5 ? 1 : 0);  // <= u
    if (total > kMax - frac_ms) {
      out.overflow = true;
      return out;
    }
    total += frac_ms;
  }
  out.ms = total;
  return out;
}

// Splits one word like "1.5h" into number and unit at the first letter.
Amount ReadWord(std::string_view word) {
  size_t split = 0;
  while (split < word.size() && !IsLetter(word[split])) ++split;
  return ReadAmount(word.substr(0, split), word.substr(split));
}

}  // namespace

Result<std::chrono::milliseconds> ParseFrequency(std::string_view text,
                                                 const FrequencyBounds& bounds) {
  std::vector<std::string> words = Words(text);
  size_t start = 0;
  const bool every = !words.empty() && words[0] == "every";
  if (every) start = 1;
  const size_t n = words.size() - start;

  Amount amount;
  if (every && (n == 1 || n == 2)) {
    std::string joined = words[start];
    if (n == 2) joined += " " + words[start + 1];
    if (const std::optional<int64_t> alias = LookUp(joined, kAliases)) {
      amount.understood = true;
      amount.ms = *alias;
    }
  }
  if (!amount.understood) {
    if (n == 1) {
      amount = ReadWord(words[start]);
    } else if (n == 2) {
      // "N unit": the number word must hold no letters, the unit word nothing but letters.
      const std::string& num = words[start];
      const std::string& unit = words[start + 1];
      bool num_ok = true;
      for (char c : num) num_ok = num_ok && !IsLetter(c);
      bool unit_ok = true;
      for (char c : unit) unit_ok = unit_ok && IsLetter(c);
      if (num_ok && unit_ok) amount = ReadAmount(num, unit);
    }
  }
  if (!amount.understood) return NotUnderstood(text);

  // Zero is never a frequency, whatever the bounds say.
  const std::chrono::milliseconds min = std::max(bounds.min, std::chrono::milliseconds(1));
  const std::chrono::milliseconds max = bounds.max;
  if (amount.overflow) return OutOfRange(text, min, max);
  const std::chrono::milliseconds value(amount.ms);
  if (value < min || value > max) return OutOfRange(text, min, max);
  return value;
}

std::string FormatFrequency(std::chrono::milliseconds frequency) {
  const int64_t ms = frequency.count();
  if (ms <= 0) return "0ms";
  for (const UnitName& u : kCanonical) {
    if (ms % u.ms == 0) return std::to_string(ms / u.ms) + std::string(u.name);
  }
  return std::to_string(ms) + "ms";  // unreachable: ms divides everything
}

}  // namespace syncsched
