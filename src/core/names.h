// Validation of the names that make up a schedule key (SPEC §1). Each check returns
// INVALID_ARGUMENT with a message that names the field, quotes the input and says what is
// accepted, and with the Status's subject set to the part of the key (StatusSubject). These are the
// only copies of the rules: the HTTP codec (src/codec) and the daemon's configuration call them
// with their own field names.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

#include "syncsched/status.h"
#include "syncsched/types.h"

namespace syncsched::core {

// At most this many bytes of an input are quoted in an error message by the checks below and by
// the HTTP codec (a megabyte of garbage does not come back whole in its error).
inline constexpr std::size_t kMaxQuotedBytes = 80;

// `s` in double quotes for an error message, with quotes, backslashes, control characters (C0,
// DEL and C1, as \xNN or \uNNNN) and bytes that are not UTF-8 (\xNN) escaped, so that a message
// names the input exactly, stays on one line and is valid UTF-8. The one quoting helper of
// syncsched: the engine, the codec, the daemon's configuration and its command runner all use it.
// With `max_bytes`, only the first max_bytes bytes (cut back to a character boundary) are quoted,
// followed by "..." inside the quotes.
std::string Quote(std::string_view s, std::size_t max_bytes = std::string_view::npos);

// What makes a text id (a connection id) unacceptable: the first byte that is not part of valid
// UTF-8, or the first control character: C0 (U+0000..U+001F), DEL (U+007F) or C1
// (U+0080..U+009F, two bytes in UTF-8: C2 80..C2 9F). nullopt when there is none.
struct TextFault {
  std::size_t offset = 0;     // of the offending byte or character
  bool invalid_utf8 = false;  // else a control character
  char32_t code_point = 0;    // the control character
};
std::optional<TextFault> FindTextFault(std::string_view s);

// provider_config_key: ^[a-zA-Z0-9~:.@ _-]+$, 1..255 bytes. `field` names it in the message.
Status ValidateIntegration(std::string_view key, std::string_view field = "integration");
// connection_id: 1..255 bytes of UTF-8 without control characters (FindTextFault).
Status ValidateConnection(std::string_view id, std::string_view field = "connection");
// sync names and variants: ^[a-zA-Z0-9_-]+$, 1..255 bytes. `what` is "sync name" or "variant"
// (or the request's field name: "sync_name", "sync_variant"); `subject` kSync or kVariant.
Status ValidateName(std::string_view name, std::string_view what,
                    StatusSubject subject = StatusSubject::kSync);

// Every name of a command's target or key, in the order integration, connection, syncs (name
// then variant): the first malformed one's error. Every command calls one of these first, so that
// a malformed name is INVALID_ARGUMENT in every command and NOT_FOUND means well formed but absent.
Status ValidateTarget(const Target& target);
Status ValidateKey(const ScheduleKey& key);

}  // namespace syncsched::core
