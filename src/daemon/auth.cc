// API key checks. See auth.h.
#include "daemon/auth.h"

#include <algorithm>
#include <cstddef>

namespace syncsched::daemon {

bool ConstantTimeEquals(std::string_view presented, std::string_view secret) {
  // Walk the whole secret whatever the presented key holds; a shorter key reads zeros.
  volatile unsigned char diff = presented.size() == secret.size() ? 0 : 1;
  for (std::size_t i = 0; i < secret.size(); ++i) {
    unsigned char p = i < presented.size() ? static_cast<unsigned char>(presented[i]) : 0;
    diff = diff | (p ^ static_cast<unsigned char>(secret[i]));
  }
  return diff == 0;
}

std::optional<codec::ApiError> Authenticator::Check(std::string_view authorization,
                                                    std::string_view scope) const {
  auto trim = [](std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
    return s;
  };
  authorization = trim(authorization);
  if (authorization.empty()) {
    return codec::errors::Unauthorized(
        "authentication required: send the header \"Authorization: Bearer <api key>\"");
  }
  constexpr std::string_view kScheme = "bearer ";
  bool bearer = authorization.size() > kScheme.size() &&
                std::equal(kScheme.begin(), kScheme.end(), authorization.begin(),
                           [](char a, char b) { return a == (b | 0x20) || a == b; });
  if (!bearer) {
    return codec::errors::Unauthorized("the Authorization header must be \"Bearer <api key>\"");
  }
  std::string_view token = trim(authorization.substr(kScheme.size()));
  const ApiKeyConfig* match = nullptr;
  for (const ApiKeyConfig& key : keys_) {
    bool equal = ConstantTimeEquals(token, key.key);
    if (equal && match == nullptr) match = &key;
  }
  if (match == nullptr) return codec::errors::Unauthorized("the API key is not valid");
  for (const std::string& s : match->scopes) {
    if (s == kScopeAll || s == scope) return std::nullopt;
  }
  return codec::errors::MissingScope(scope);
}

}  // namespace syncsched::daemon
