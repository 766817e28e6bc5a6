// Percent-decoding of paths and queries. See url.h.
#include "codec/url.h"

#include <algorithm>

namespace syncsched::codec {
namespace {

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

RequestTarget SplitTarget(std::string_view target) {
  std::size_t q = target.find('?');
  if (q == std::string_view::npos) return {target, {}};
  return {target.substr(0, q), target.substr(q + 1)};
}

Decoded<std::string> PercentDecode(std::string_view text, bool plus_is_space) {
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (c == '%') {
      int hi = i + 1 < text.size() ? HexValue(text[i + 1]) : -1;
      int lo = i + 2 < text.size() ? HexValue(text[i + 2]) : -1;
      if (hi < 0 || lo < 0) {
        return errors::BadRequest("malformed percent-escape in the request target");
      }
      char decoded = static_cast<char>(hi * 16 + lo);
      if (decoded == '\0') return errors::BadRequest("%00 is not allowed in the request target");
      out += decoded;
      i += 2;
    } else if (c == '+' && plus_is_space) {
      out += ' ';
    } else {
      out += c;
    }
  }
  return out;
}

Decoded<std::vector<std::string>> SplitPath(std::string_view path) {
  std::vector<std::string> segments;
  if (path.empty() || path.front() != '/') {
    return errors::BadRequest("the request target must start with '/'");
  }
  path.remove_prefix(1);
  if (!path.empty() && path.back() == '/') path.remove_suffix(1);
  if (path.empty()) return segments;
  while (true) {
    std::size_t slash = path.find('/');
    auto segment = PercentDecode(path.substr(0, slash), /*plus_is_space=*/false);
    if (!segment.ok()) return segment.error();
    segments.push_back(std::move(segment.value()));
    if (slash == std::string_view::npos) break;
    path.remove_prefix(slash + 1);
  }
  return segments;
}

Decoded<QueryParams> ParseQuery(std::string_view query) {
  QueryParams params;
  while (!query.empty()) {
    std::size_t amp = query.find('&');
    std::string_view piece = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    if (piece.empty()) continue;
    std::size_t eq = piece.find('=');
    auto name = PercentDecode(piece.substr(0, eq), /*plus_is_space=*/true);
    if (!name.ok()) return name.error();
    auto value =
        PercentDecode(eq == std::string_view::npos ? std::string_view() : piece.substr(eq + 1),
                      /*plus_is_space=*/true);
    if (!value.ok()) return value.error();
    bool seen = std::any_of(params.begin(), params.end(),
                            [&](const auto& p) { return p.first == name.value(); });
    if (seen) {
      return ApiError{400, "invalid_value",
                      "query parameter " + Dump(Json(name.value())) + " is given more than once",
                      name.value()};
    }
    params.emplace_back(std::move(name.value()), std::move(value.value()));
  }
  return params;
}

}  // namespace syncsched::codec
