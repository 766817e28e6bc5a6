// Bearer API keys and their scopes. A request names its key in `Authorization: Bearer <key>`;
// the key is compared with every configured key in constant time (no early exit on the first
// differing byte, nor on the first matching key), so response times say nothing about a key.
//
// Thread safety: immutable after construction; Check may be called from any thread.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "codec/codec.h"
#include "daemon/config.h"

namespace syncsched::daemon {

class Authenticator {
 public:
  explicit Authenticator(std::vector<ApiKeyConfig> keys) : keys_(std::move(keys)) {}

  // nullopt when `authorization` holds a valid key with `scope` (or "*"); otherwise 401
  // `unauthorized` (no header, not a Bearer key, unknown key) or 403 `missing_scope`.
  std::optional<codec::ApiError> Check(std::string_view authorization,
                                       std::string_view scope) const;

 private:
  std::vector<ApiKeyConfig> keys_;
};

// Equality of two strings in time that depends only on the length of `secret`.
bool ConstantTimeEquals(std::string_view presented, std::string_view secret);

}  // namespace syncsched::daemon
