// URL pieces of a request target: path segments and query parameters, percent-decoded, parsed
// with Boost.URL (RFC 3986). Part of the codec (no I/O); see codec.h. Bytes that RFC 3986 does not
// allow raw in a target but the HTTP parser lets through (UTF-8, '"', '{', ...) are taken as if
// they were percent-encoded.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "codec/codec.h"

namespace syncsched::codec {

// A request target split at the first `?`.
struct RequestTarget {
  std::string_view path;   // "/sync/status"
  std::string_view query;  // "provider_config_key=github&syncs=*" (without the `?`)
};
RequestTarget SplitTarget(std::string_view target);

// Resolves %XX escapes (and `+` to a space when `plus_is_space`, as in a query). A malformed
// escape, or an escape decoding to a NUL byte, fails with 400 `bad_request`.
Decoded<std::string> PercentDecode(std::string_view text, bool plus_is_space);

// The path's segments between slashes, each percent-decoded (`+` kept). "/a/b%20c" -> {"a",
// "b c"}. A trailing slash is ignored; an empty segment inside the path ("/a//b") is kept as "".
// A path not starting with '/', a malformed escape, %00 or a dot segment ("." or "..", escaped
// or not, e.g. "/a/./b") fails with 400 `bad_request`.
Decoded<std::vector<std::string>> SplitPath(std::string_view path);

// Parses `a=1&b=2`: names and values percent-decoded, `+` as a space, a name without `=` has an
// empty value, empty pieces (`a=1&&b=2`) are skipped. A name given twice fails with 400
// `invalid_value` naming it; a value with %00 fails with 400 `bad_request` naming its parameter;
// a malformed escape anywhere fails with 400 `bad_request`.
Decoded<QueryParams> ParseQuery(std::string_view query);

}  // namespace syncsched::codec
