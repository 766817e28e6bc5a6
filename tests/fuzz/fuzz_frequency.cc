// Fuzz target: the frequency grammar (include/syncsched/frequency.h).
// Invariants: parsing never crashes and fails only with INVALID_ARGUMENT and a message; a value
// parsed lies within the bounds; FormatFrequency's canonical form parses back to the same value;
// the grammar ignores ASCII case and surrounding white space; the default bounds accept exactly
// the values of the widest bounds that lie within them.
#include <chrono>
#include <cstring>
#include <limits>
#include <string>
#include <string_view>

#include "fuzz.h"
#include "syncsched/frequency.h"

namespace syncsched::fuzz {
namespace {

using std::chrono::milliseconds;

const FrequencyBounds kWide{milliseconds(1), milliseconds(std::numeric_limits<int64_t>::max())};

std::string Upper(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
  }
  return out;
}

void CheckError(const Result<milliseconds>& r, std::string_view text) {
  if (r.ok()) return;
  FUZZ_CHECK(r.status().IsInvalidArgument(), "text: " + std::string(text));
  FUZZ_CHECK(!r.status().message().empty(), "text: " + std::string(text));
}

void CheckFormat(milliseconds f) {
  std::string canonical = FormatFrequency(f);
  if (f.count() <= 0) {
    FUZZ_CHECK(canonical == "0ms", canonical);
    return;
  }
  Result<milliseconds> back = ParseFrequency(canonical, kWide);
  FUZZ_CHECK(back.ok() && *back == f, canonical + " of " + std::to_string(f.count()) + "ms");
  FUZZ_CHECK(FormatFrequency(*back) == canonical, canonical);
  Result<milliseconds> every = ParseFrequency("every " + canonical, kWide);
  FUZZ_CHECK(every.ok() && *every == f, "every " + canonical);
}

}  // namespace

int FuzzFrequency(const std::uint8_t* data, std::size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);

  Result<milliseconds> wide = ParseFrequency(text, kWide);
  CheckError(wide, text);
  Result<milliseconds> bounded = ParseFrequency(text);
  CheckError(bounded, text);
  const FrequencyBounds defaults;
  if (wide.ok()) {
    FUZZ_CHECK(*wide >= kWide.min, std::string(text));
    CheckFormat(*wide);
    bool inside = *wide >= defaults.min && *wide <= defaults.max;
    FUZZ_CHECK(bounded.ok() == inside, std::string(text));
    if (bounded.ok()) FUZZ_CHECK(*bounded == *wide, std::string(text));
  } else {
    FUZZ_CHECK(!bounded.ok(), std::string(text));
  }

  // Case and surrounding white space do not matter.
  Result<milliseconds> upper = ParseFrequency(Upper(text), kWide);
  FUZZ_CHECK(upper.ok() == wide.ok() && (!upper.ok() || *upper == *wide), std::string(text));
  Result<milliseconds> padded = ParseFrequency(" \t" + std::string(text) + "\n ", kWide);
  FUZZ_CHECK(padded.ok() == wide.ok() && (!padded.ok() || *padded == *wide), std::string(text));

  // The canonical form of any value the bytes spell.
  if (size >= 8) {
    int64_t v = 0;
    std::memcpy(&v, data, sizeof v);
    CheckFormat(milliseconds(v));
  }
  return 0;
}

}  // namespace syncsched::fuzz
