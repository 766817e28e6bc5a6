// codec/: the wire format of syncschedd. JSON bodies and URL queries in, the engine's public
// requests (Target, ScheduleKey, RunMode, ...) out; the engine's results and Status errors in,
// JSON out. Pure functions: no I/O, no engine calls, no global state. Every rule about what a
// request may contain lives here, so the daemon adds none of its own and a client sees one
// consistent set of errors.
//
// The shapes follow Nango's public HTTP API (what `@nangohq/node` sends and expects), with the
// stricter validation of SPEC §7: unknown fields are rejected, a wrong type names the field, and
// at most kMaxSyncs sync selectors are accepted per request.
//
// Errors: every failure is an ApiError carrying the HTTP status, a stable snake_case `code`, a
// message that quotes the offending input, and (when one field is at fault) the field's path
// (`syncs[2].variant`, `opts.reset`). EncodeError turns one into the response body
// `{"message": ..., "code": ..., "field"?: ..., "error": {"code": ..., "message": ...}}`; the
// nested `error` object repeats the code and message in the shape Nango's own server uses.
//
// Thread safety: every function may be called from any thread.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include <nlohmann/json.hpp>

#include "syncsched/frequency.h"
#include "syncsched/status.h"
#include "syncsched/types.h"

namespace syncsched::codec {

using Json = nlohmann::ordered_json;

// At most this many items in `syncs` (a body array or a status query list).
inline constexpr std::size_t kMaxSyncs = 256;
// Default bound on the nesting of a JSON body (objects and arrays); deeper bodies are refused
// before they are parsed.
inline constexpr int kMaxJsonDepth = 32;

// An error as the HTTP API reports it.
struct ApiError {
  unsigned http_status = 400;
  std::string code;                  // stable snake_case, e.g. "unknown_connection"
  std::string message;               // names the offending input
  std::optional<std::string> field;  // the field at fault, as a path: "syncs[2].variant"

  friend bool operator==(const ApiError&, const ApiError&) = default;
};

// Either a decoded value or the ApiError that explains why there is none.
template <typename T>
class [[nodiscard]] Decoded {
 public:
  Decoded(T value) : v_(std::move(value)) {}         // NOLINT: implicit by design
  Decoded(ApiError error) : v_(std::move(error)) {}  // NOLINT: implicit by design

  bool ok() const { return v_.index() == 0; }
  // Precondition: ok().
  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  // Precondition: !ok().
  const ApiError& error() const { return std::get<1>(v_); }

 private:
  std::variant<T, ApiError> v_;
};

// ---- Names (SPEC §1) ----

// provider_config_key: ^[a-zA-Z0-9~:.@ _-]+$, 1..255 bytes. INVALID_ARGUMENT quoting the input.
Status ValidateIntegrationKey(std::string_view key);
// connection_id: 1..255 bytes of UTF-8 without control characters (C0, DEL, C1 U+0080..U+009F).
// INVALID_ARGUMENT quoting the input and naming the offending character and its byte offset.
// These three apply core/names.h, the engine's own rules, naming the request's fields.
Status ValidateConnectionId(std::string_view id);
// Sync names and variants: ^[a-zA-Z0-9_-]+$, 1..255 bytes. INVALID_ARGUMENT quoting the input,
// which the message calls `what` ("sync name", "variant").
Status ValidateSyncName(std::string_view name, std::string_view what = "sync name");

// ---- JSON helpers ----
//
// The rules for reading a JSON document, used by every decoder below and by the daemon's
// configuration loader (src/daemon/config.cc), so that both speak of fields the same way. A field
// is named by its path: `opts.reset`, `syncs[2].variant`, `integrations["github"].syncs`.

// Parses JSON text in one pass, refusing a document nested deeper than `max_depth` and an object
// with a key given twice (which would otherwise silently keep the last value). `allow_comments`:
// `//` and `/* */` comments are skipped. Errors: `invalid_json`.
Decoded<Json> ParseJson(std::string_view text, int max_depth, bool allow_comments);

// `prefix.key`, or `key` when `prefix` is empty.
std::string Join(std::string_view prefix, std::string_view key);
// nullopt when `j` is an object whose keys are all in `allowed`; else `invalid_body` (path ""),
// `invalid_type` (path names it) or `unknown_field` (naming the key and listing `allowed`).
std::optional<ApiError> CheckObject(const Json& j, std::string_view path,
                                    std::initializer_list<std::string_view> allowed);
// The member `key` of object `obj`, or null when it is absent or JSON null (an optional field
// given as null is absent).
const Json* Find(const Json& obj, std::string_view key);
// 400 `invalid_type`: "<field> must be <expected>, not <type>".
ApiError WrongType(std::string field, std::string_view expected, const Json& got);
// A required string member `key` of `obj` (at `path`): absent is `missing_field` (the message
// says `what` is expected), another type (null included) `invalid_type`.
Decoded<std::string> RequiredString(const Json& obj, std::string_view key, std::string_view path,
                                    std::string_view what);
// Optional members: absent and null both mean "not given"; another type is `invalid_type`.
Decoded<std::optional<std::string>> OptionalString(const Json& obj, std::string_view key,
                                                   std::string_view path);
Decoded<std::optional<bool>> OptionalBool(const Json& obj, std::string_view key,
                                          std::string_view path);

// ---- Durations ----

// The range of a duration (a timeout, a grace period, a retry backoff, a command's
// SYNCSCHED_NEXT_RUN_IN): 1 ms to 10 years.
inline constexpr FrequencyBounds kDurationBounds{std::chrono::milliseconds(1),
                                                 std::chrono::hours(24 * 3650)};
// The one duration parser: the frequency grammar (frequency.h: "30s", "10 minutes", "1h") within
// kDurationBounds. Errors: INVALID_ARGUMENT quoting the text (ParseFrequency's).
Result<Millis> ParseDuration(std::string_view text);

// ---- Requests ----

// Parses a request body: ParseJson without comments. An empty body, a body that is not JSON (or
// not valid UTF-8), or one nested deeper than `max_depth` fails with `invalid_json`.
Decoded<Json> ParseJsonBody(std::string_view body, int max_depth = kMaxJsonDepth);

// A URL query, decoded (`+` is a space, %XX escapes resolved), in order of appearance.
using QueryParams = std::vector<std::pair<std::string, std::string>>;

// POST /sync/trigger.
struct TriggerRequest {
  Target target;
  RunMode mode = RunMode::kIncremental;
};

// PUT /sync/update-connection-frequency. `frequency` unset: revert to the sync's default.
struct FrequencyRequest {
  ScheduleKey key;
  std::optional<std::string> frequency;
};

// POST /connections and DELETE /connections/{id}.
struct ConnectionRequest {
  std::string integration;
  std::string connection;
};

// POST /sync/start and /sync/pause: `{provider_config_key, connection_id?, syncs}`. `syncs` is an
// array (at most kMaxSyncs) of "name", "name::variant", or {name, variant?} objects; empty means
// every sync.
Decoded<Target> DecodeTarget(const Json& body);

// POST /sync/trigger: DecodeTarget's fields plus, at most one of: `opts: {reset?, emptyCache?}`
// (reset true: full resync; emptyCache alone changes nothing, there being no record cache),
// the legacy `sync_mode` ("incremental"; "full_refresh" and "full_refresh_and_clear_cache" mean
// full resync) or the legacy `full_resync` boolean. `provider_config_key` is required.
Decoded<TriggerRequest> DecodeTrigger(const Json& body);

// GET /sync/status?provider_config_key=&connection_id=&syncs=: `syncs` is `*` (every sync) or a
// comma-separated list of "name" and "name::variant" (at most kMaxSyncs).
Decoded<Target> DecodeStatusQuery(const QueryParams& query);

// PUT /sync/update-connection-frequency:
// `{provider_config_key, connection_id, sync_name, sync_variant?, frequency}`, frequency a string
// or null. The frequency text is checked by the engine (it knows the bounds).
Decoded<FrequencyRequest> DecodeFrequencyUpdate(const Json& body);

// POST and DELETE /sync/{name}/variant/{variant} with body `{provider_config_key,
// connection_id}`. `name` and `variant` are the decoded path segments.
Decoded<ScheduleKey> DecodeVariant(std::string_view name, std::string_view variant,
                                   const Json& body);

// POST /connections: `{provider_config_key, connection_id}`.
Decoded<ConnectionRequest> DecodeCreateConnection(const Json& body);
// DELETE /connections/{id}?provider_config_key=: `connection_id` is the decoded path segment.
Decoded<ConnectionRequest> DecodeDeleteConnection(std::string_view connection_id,
                                                  const QueryParams& query);

// GET /schedules/forecast?hours=N[&provider_config_key=K].
struct ForecastRequest {
  int hours = 0;                           // 1..kMaxForecastHours
  std::optional<std::string> integration;  // unset: every integration
};
inline constexpr int kMaxForecastHours = 168;

// GET /schedules/forecast: `hours` (required, an integer 1..168) and `provider_config_key`
// (optional). Errors name the parameter (`hours`, `provider_config_key`).
Decoded<ForecastRequest> DecodeForecastQuery(const QueryParams& query);

// ---- Responses ----

// `{"success": true}`.
Json EncodeSuccess();
// `{"syncs": [...]}`, one item per schedule in Nango's shape (see EncodeScheduleStatus).
Json EncodeStatuses(const std::vector<ScheduleStatus>& statuses);
// One status item: Nango's `id` (a string), `connection_id`, `name`, `variant`, `type`,
// `status`, `frequency` (canonical), `nextScheduledSyncAt` and `finishedAt` (ISO 8601 or null),
// `latestResult` ({model: {added, updated, deleted}}), `latestExecutionStatus` (null before the
// first run), `recordCount` ({}: syncsched keeps no records), `checkpoint` (null), `error` (the
// last run's error or null); and syncsched's own `schedule_status` (STARTED, PAUSED, DELETED),
// `frequency_overridden`, `startedAt` (the last run's start), `runs`, `failures`, `skipped`,
// `waitingSince` and `nextRetryAt` (ISO 8601 or null) and `decisions` (the "why not": an array,
// oldest first, of `{"at": ISO 8601, "reason": "<reason code>", "detail": "..."}`).
Json EncodeScheduleStatus(const ScheduleStatus& status);
// `{"minutes": [{"at": ISO 8601, "runs": N}, ...]}`: only the minutes with runs, in order.
Json EncodeForecast(const std::vector<ForecastMinute>& minutes);
// `{"frequency": "<canonical>"}`.
Json EncodeFrequency(Millis frequency);
// `{"id": "<schedule id>", "name": ..., "variant": ...}` (POST /sync/{name}/variant/{variant}).
Json EncodeVariantCreated(const ScheduleKey& key, std::uint64_t id);
// `{"connection_id": ..., "provider_config_key": ...}` (POST /connections).
Json EncodeConnectionCreated(const ConnectionRequest& request);
// The error body described at the top of this file.
Json EncodeError(const ApiError& error);
// Compact text of `json`; invalid UTF-8 (say, from a command's stderr) is replaced, never thrown.
std::string Dump(const Json& json);

// ---- Errors ----

// How one route's request names the inputs an engine error can be about (Status::subject()):
// the field reported for each. A variant named in the path (the variant routes) is a resource of
// its own: NOT_FOUND is 404 unknown_variant; a variant named in the body or query is part of a
// sync selector: NOT_FOUND is 400 unknown_sync.
struct RequestFields {
  std::string_view integration = "provider_config_key";
  std::string_view connection = "connection_id";
  std::string_view sync = "syncs";
  std::string_view variant = "syncs";
  bool variant_in_path = false;
};

// Maps an engine error to the HTTP API from its code and subject alone (no second question to the
// engine):
//   INVALID_ARGUMENT 400: invalid_frequency (field "frequency"), invalid_variant (subject
//     kVariant), else invalid_argument;
//   NOT_FOUND: integration 400 unknown_provider_config; connection 404 unknown_connection; sync
//     400 unknown_sync; variant 404 unknown_variant when in the path, else 400 unknown_sync;
//     no subject 404 not_found;
//   ALREADY_EXISTS 409: connection_already_exists, sync_variant_already_exists, already_exists;
//   FAILED_PRECONDITION 409; UNAVAILABLE and CANCELLED 503; DEADLINE_EXCEEDED 504; INTERNAL 500.
// The message is the engine's. The field at fault is `fields`' name for the subject (for kField,
// the Status's own field name); none without a subject. Precondition: !status.ok().
ApiError ErrorFromStatus(const Status& status, const RequestFields& fields = {});

// The HTTP layer's own errors, built here so that every error body has one shape.
namespace errors {
ApiError BadRequest(std::string message);       // 400 bad_request (HTTP framing)
ApiError InvalidJson(std::string message);      // 400 invalid_json
ApiError UnexpectedBody();                      // 400 unexpected_body
ApiError Unauthorized(std::string message);     // 401 unauthorized
ApiError MissingScope(std::string_view scope);  // 403 missing_scope
ApiError RouteNotFound(std::string_view method, std::string_view path);  // 404 route_not_found
ApiError MethodNotAllowed(std::string_view method, std::string_view path,
                          std::string_view allowed);   // 405 method_not_allowed
ApiError PayloadTooLarge(std::size_t limit);           // 413 payload_too_large
ApiError HeadersTooLarge(std::size_t limit);           // 431 headers_too_large
ApiError TooManyConnections();                         // 503 too_many_connections
ApiError TooManyClientConnections(std::size_t limit);  // 503 too_many_client_connections
ApiError ShuttingDown();                               // 503 shutting_down
ApiError Internal(std::string message);                // 500 internal_error
}  // namespace errors

}  // namespace syncsched::codec
