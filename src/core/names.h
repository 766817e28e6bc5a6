// Validation of the names that make up a schedule key (SPEC §1). Each check returns
// INVALID_ARGUMENT with a message that quotes the input and says what is accepted.
#pragma once

#include <string>
#include <string_view>

#include "syncsched/status.h"

namespace syncsched::core {

// `s` in double quotes for an error message, with quotes, backslashes and control characters
// escaped, so that a message names the input exactly and stays on one line.
std::string Quote(std::string_view s);

// provider_config_key: ^[a-zA-Z0-9~:.@ _-]+$, 1..255 bytes.
Status ValidateIntegration(std::string_view key);
// connection_id: 1..255 bytes, no control characters.
Status ValidateConnection(std::string_view id);
// sync names and variants: ^[a-zA-Z0-9_-]+$, 1..255 bytes. `what` is "sync name" or "variant".
Status ValidateName(std::string_view name, std::string_view what);

}  // namespace syncsched::core
