// Request targets, paths and queries, parsed with Boost.URL. See url.h.
#include "codec/url.h"

#include <algorithm>
#include <string>

#include <boost/url/encoding_opts.hpp>
#include <boost/url/grammar/lut_chars.hpp>
#include <boost/url/parse_path.hpp>
#include <boost/url/parse_query.hpp>
#include <boost/url/pct_string_view.hpp>
#include <boost/url/rfc/pchars.hpp>

#include "core/names.h"

namespace syncsched::codec {
namespace {

namespace urls = boost::urls;

// What RFC 3986 allows raw in a path (pchar and '/') and in a query (pchar, '/' and '?'), plus
// '%' so that escapes are kept as they are.
constexpr urls::grammar::lut_chars kPathChars = urls::pchars + urls::grammar::lut_chars("/%");
constexpr urls::grammar::lut_chars kQueryChars = urls::pchars + urls::grammar::lut_chars("/?%");

// The HTTP parser lets through bytes RFC 3986 does not allow raw in a target (UTF-8, '"', '{',
// '|', ...; not controls or spaces). They are escaped before Boost.URL parses the text, so that
// every target a client may send parses, and such a byte means the same raw or escaped.
std::string EscapeStray(std::string_view text, const urls::grammar::lut_chars& allowed) {
  if (std::all_of(text.begin(), text.end(), [&](char c) { return allowed(c); })) {
    return std::string(text);
  }
  // By hand, not urls::encode: that one always escapes '%' (it asserts '%' is not in `allowed`),
  // and the escapes already in the text must be kept.
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(text.size() * 3);
  for (char c : text) {
    if (allowed(c)) {
      out.push_back(c);
    } else {
      auto b = static_cast<unsigned char>(c);
      out.push_back('%');
      out.push_back(kHex[b >> 4]);
      out.push_back(kHex[b & 0xF]);
    }
  }
  return out;
}

ApiError MalformedEscape() {
  return errors::BadRequest("malformed percent-escape in the request target");
}

ApiError NulEscape() { return errors::BadRequest("%00 is not allowed in the request target"); }

// Decodes a valid escaped string; an escape decoding to NUL fails (a raw NUL byte, which the HTTP
// parser refuses before it gets here, is kept).
Decoded<std::string> Decode(urls::pct_string_view text, bool plus_is_space) {
  urls::encoding_opts opts;
  opts.space_as_plus = plus_is_space;
  std::string out = text.decode(opts);
  if (std::count(out.begin(), out.end(), '\0') != std::count(text.begin(), text.end(), '\0')) {
    return NulEscape();
  }
  return out;
}

}  // namespace

RequestTarget SplitTarget(std::string_view target) {
  // The origin form's two parts (RFC 9112 §3.2.1): the path ends at the first '?'.
  std::size_t q = target.find('?');
  if (q == std::string_view::npos) return {target, {}};
  return {target.substr(0, q), target.substr(q + 1)};
}

Decoded<std::string> PercentDecode(std::string_view text, bool plus_is_space) {
  auto pct = urls::make_pct_string_view(text);
  if (!pct) return MalformedEscape();
  return Decode(*pct, plus_is_space);
}

Decoded<std::vector<std::string>> SplitPath(std::string_view path) {
  std::vector<std::string> segments;
  if (path.empty() || path.front() != '/') {
    return errors::BadRequest("the request target must start with '/'");
  }
  if (path.size() > 1 && path.back() == '/') path.remove_suffix(1);  // a trailing slash is ignored
  if (path == "/") return segments;
  // A dot segment ("." or "..", escaped or not) is refused: no route has one, a proxy or client
  // would have resolved it, and Boost.URL hides a leading "/." (the prefix that marks a path whose
  // first segment is empty), so that "/./" would read as a segment that "//" does not give.
  for (std::size_t begin = 1; begin <= path.size();) {
    std::size_t end = std::min(path.find('/', begin), path.size());
    std::string_view piece = path.substr(begin, end - begin);
    if (piece.size() <= 6) {
      auto dot = PercentDecode(piece, /*plus_is_space=*/false);
      if (dot.ok() && (*dot == "." || *dot == "..")) {
        return errors::BadRequest("the request target has a dot segment (" +
                                  core::Quote(piece, core::kMaxQuotedBytes) +
                                  "): send the path resolved");
      }
    }
    begin = end + 1;
  }
  std::string escaped = EscapeStray(path, kPathChars);
  auto parsed = urls::parse_path(escaped);
  if (!parsed) return MalformedEscape();
  for (urls::pct_string_view segment : *parsed) {
    auto decoded = Decode(segment, /*plus_is_space=*/false);
    if (!decoded.ok()) return decoded.error();
    segments.push_back(std::move(decoded.value()));
  }
  return segments;
}

Decoded<QueryParams> ParseQuery(std::string_view query) {
  QueryParams params;
  if (query.empty()) return params;
  std::string escaped = EscapeStray(query, kQueryChars);
  auto parsed = urls::parse_query(escaped);
  if (!parsed) return MalformedEscape();
  for (urls::param_pct_view p : *parsed) {
    if (p.key.empty() && !p.has_value) continue;  // an empty piece: `a=1&&b=2`
    auto name = Decode(p.key, /*plus_is_space=*/true);
    if (!name.ok()) return name.error();
    auto value = Decode(p.value, /*plus_is_space=*/true);
    if (!value.ok()) {
      ApiError e = value.error();
      e.message =
          "query parameter " + core::Quote(name.value(), core::kMaxQuotedBytes) + ": " + e.message;
      e.field = name.value();
      return e;
    }
    bool seen = std::any_of(params.begin(), params.end(),
                            [&](const auto& q) { return q.first == name.value(); });
    if (seen) {
      return ApiError{400, "invalid_value",
                      "query parameter " + core::Quote(name.value(), core::kMaxQuotedBytes) +
                          " is given more than once",
                      name.value()};
    }
    params.emplace_back(std::move(name.value()), std::move(value.value()));
  }
  return params;
}

}  // namespace syncsched::codec
