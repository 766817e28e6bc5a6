// Fuzz target: the URL pieces of a request target (src/codec/url.h).
// Invariants: SplitTarget splits at the first '?' and loses nothing; a decoding that succeeds
// re-encodes and decodes to the same bytes; SplitPath's segments, encoded and joined again, give
// the same segments; ParseQuery's parameters, encoded again, parse to the same parameters and
// no name twice; every failure is a 400 with a code and a message.
#include <set>
#include <string>
#include <string_view>

#include "codec/url.h"
#include "fuzz.h"

namespace syncsched::fuzz {
namespace {

void CheckError(const codec::ApiError& e, std::string_view input) {
  FUZZ_CHECK(e.http_status == 400, std::string(input));
  FUZZ_CHECK(!e.code.empty() && !e.message.empty(), std::string(input));
  codec::Dump(codec::EncodeError(e));  // never throws, whatever bytes the message quotes
}

// PercentEncode, but a NUL byte stays raw: %00 is refused, while a raw NUL passes through the
// decoding (the HTTP parser refuses it in a request target before it gets there).
std::string Encode(std::string_view s) {
  std::string out;
  std::size_t start = 0;
  for (std::size_t nul = s.find('\0'); nul != std::string_view::npos; nul = s.find('\0', start)) {
    out += PercentEncode(s.substr(start, nul - start));
    out += '\0';
    start = nul + 1;
  }
  out += PercentEncode(s.substr(start));
  return out;
}

}  // namespace

int FuzzUrl(const std::uint8_t* data, std::size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);

  codec::RequestTarget t = codec::SplitTarget(text);
  FUZZ_CHECK(t.path.find('?') == std::string_view::npos, std::string(text));
  if (t.path.size() == text.size()) {
    FUZZ_CHECK(t.query.empty(), std::string(text));
  } else {
    FUZZ_CHECK(std::string(t.path) + "?" + std::string(t.query) == text, std::string(text));
  }

  for (bool plus : {false, true}) {
    auto decoded = codec::PercentDecode(text, plus);
    if (!decoded.ok()) {
      CheckError(decoded.error(), text);
      continue;
    }
    FUZZ_CHECK(decoded->find('\0') == std::string::npos || text.find('\0') != std::string::npos,
               std::string(text));
    FUZZ_CHECK(decoded->size() <= text.size(), std::string(text));
    auto again = codec::PercentDecode(Encode(*decoded), plus);
    FUZZ_CHECK(again.ok() && *again == *decoded, std::string(text));
  }

  auto segments = codec::SplitPath(t.path);
  if (segments.ok()) {
    std::string joined = "/";
    for (const std::string& s : *segments) joined += Encode(s) + "/";
    auto again = codec::SplitPath(joined);
    FUZZ_CHECK(again.ok() && *again == *segments, std::string(text) + " -> " + joined);
  } else {
    CheckError(segments.error(), text);
  }

  auto query = codec::ParseQuery(t.query);
  if (query.ok()) {
    std::set<std::string> names;
    std::string encoded;
    for (const auto& [name, value] : *query) {
      FUZZ_CHECK(names.insert(name).second, std::string(text));
      if (!encoded.empty()) encoded += '&';
      encoded += Encode(name) + "=" + Encode(value);
    }
    auto again = codec::ParseQuery(encoded);
    FUZZ_CHECK(again.ok() && *again == *query, std::string(text) + " -> " + encoded);
  } else {
    CheckError(query.error(), text);
  }
  return 0;
}

}  // namespace syncsched::fuzz
