// Frequency strings: Nango's grammar, parsed to milliseconds and shown back in a canonical form.
//
// Grammar (case-insensitive, surrounding white space ignored): an optional `every ` prefix, then
// `N unit` with or without a space, N an integer or a decimal (`1.5h`); units `ms`,
// `s|sec|secs|second|seconds`, `m|min|mins|minute|minutes`, `h|hr|hrs|hour|hours`, `d|day|days`,
// `w|week|weeks`. Aliases: `every hour`, `every day`, `every week`, `every month` (30 days),
// `every half day`, `every half hour`, `every quarter hour`. A fractional result is rounded to the
// nearest millisecond.
//
// Thread safety: all functions are pure and may be called from any thread.
#pragma once

#include <chrono>
#include <string>
#include <string_view>

#include "syncsched/export.h"
#include "syncsched/status.h"

namespace syncsched {

// The accepted range of frequencies, both ends included. The engine's options carry one.
struct FrequencyBounds {
  std::chrono::milliseconds min = std::chrono::seconds(30);
  std::chrono::milliseconds max = std::chrono::hours(24 * 31);
};

// Parses `text`. On success, the frequency in milliseconds, within `bounds`.
// Errors: INVALID_ARGUMENT when `text` does not follow the grammar (the message quotes the input
// and lists what is accepted) or when the value lies outside `bounds` (the message quotes the
// input and both bounds in canonical form).
SYNCSCHED_EXPORT Result<std::chrono::milliseconds> ParseFrequency(
    std::string_view text, const FrequencyBounds& bounds = {});

// The short canonical form: the largest unit among w, d, h, m, s, ms that divides `frequency`
// exactly (`30s`, `15m`, `2h`, `1d`, `2w`, `1500ms`). ParseFrequency(FormatFrequency(f)) == f for
// every positive f. A zero or negative frequency is shown as `0ms`.
SYNCSCHED_EXPORT std::string FormatFrequency(std::chrono::milliseconds frequency);

}  // namespace syncsched
