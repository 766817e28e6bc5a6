// The JSON codec: requests in, results and errors out. See codec.h for the contract.
#include "codec/codec.h"

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "core/names.h"
#include "syncsched/clock.h"
#include "syncsched/frequency.h"

namespace syncsched::codec {
namespace {

// Inputs are quoted in messages by core::Quote, cut at core::kMaxQuotedBytes so that a megabyte
// of garbage does not come back in the error.
std::string Quote(std::string_view s) { return core::Quote(s, core::kMaxQuotedBytes); }

ApiError FieldError(std::string code, std::string field, std::string message) {
  return ApiError{400, std::move(code), std::move(message), std::move(field)};
}

std::string ListOf(std::initializer_list<std::string_view> names);

}  // namespace

// ---- JSON helpers ----

std::string Join(std::string_view prefix, std::string_view key) {
  if (prefix.empty()) return std::string(key);
  std::string out(prefix);
  out += '.';
  out += key;
  return out;
}

namespace {
std::string ListOf(std::initializer_list<std::string_view> names) {
  std::string out;
  for (std::string_view n : names) {
    if (!out.empty()) out += ", ";
    out += n;
  }
  return out;
}
}  // namespace

// Checks that `j` is an object whose keys are all in `allowed`. `path` is where it sits ("" for
// the body itself).
std::optional<ApiError> CheckObject(const Json& j, std::string_view path,
                                    std::initializer_list<std::string_view> allowed) {
  if (!j.is_object()) {
    if (path.empty()) {
      return FieldError("invalid_body", "",
                        std::string("the body must be a JSON object, not ") + j.type_name());
    }
    return FieldError("invalid_type", std::string(path),
                      std::string(path) + " must be an object, not " + j.type_name());
  }
  for (const auto& [key, value] : j.items()) {
    if (std::find(allowed.begin(), allowed.end(), key) == allowed.end()) {
      return FieldError("unknown_field", Join(path, key),
                        "unknown field " + Quote(key) +
                            (path.empty() ? std::string() : " in " + std::string(path)) +
                            "; accepted: " + ListOf(allowed));
    }
  }
  return std::nullopt;
}

// The member `key` of object `obj`, or null when it is absent or JSON null.
const Json* Find(const Json& obj, std::string_view key) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

ApiError WrongType(std::string field, std::string_view expected, const Json& got) {
  std::string message = field + " must be " + std::string(expected) + ", not " + got.type_name();
  return FieldError("invalid_type", std::move(field), std::move(message));
}

// A required string member. Absent: missing_field; present but not a string (null included):
// invalid_type.
Decoded<std::string> RequiredString(const Json& obj, std::string_view key, std::string_view path,
                                    std::string_view what) {
  auto it = obj.find(key);
  std::string field = Join(path, key);
  if (it == obj.end()) {
    return FieldError("missing_field", field, field + " is required (" + std::string(what) + ")");
  }
  if (!it->is_string()) return WrongType(std::move(field), "a string", *it);
  return it->get<std::string>();
}

// An optional string member; absent and null both mean "not given".
Decoded<std::optional<std::string>> OptionalString(const Json& obj, std::string_view key,
                                                   std::string_view path) {
  const Json* v = Find(obj, key);
  if (v == nullptr) return std::optional<std::string>();
  if (!v->is_string()) return WrongType(Join(path, key), "a string", *v);
  return std::optional<std::string>(v->get<std::string>());
}

Decoded<std::optional<bool>> OptionalBool(const Json& obj, std::string_view key,
                                          std::string_view path) {
  const Json* v = Find(obj, key);
  if (v == nullptr) return std::optional<bool>();
  if (!v->is_boolean()) return WrongType(Join(path, key), "a boolean", *v);
  return std::optional<bool>(v->get<bool>());
}

Result<Millis> ParseDuration(std::string_view text) {
  return ParseFrequency(text, kDurationBounds);
}

namespace {

// Sync names and variants: ^[a-zA-Z0-9_-]+$, 1..255 bytes (SPEC §1; the rule is core's).
Status ValidateName(std::string_view name, std::string_view what) {
  return core::ValidateName(name, what);
}

Decoded<std::string> IntegrationField(const Json& obj) {
  auto key =
      RequiredString(obj, "provider_config_key", "", "the integration's key, e.g. \"github\"");
  if (!key.ok()) return key;
  if (Status s = ValidateIntegrationKey(key.value()); !s.ok()) {
    return FieldError("invalid_value", "provider_config_key", s.message());
  }
  return key;
}

Decoded<std::string> RequiredConnectionField(const Json& obj) {
  auto id = RequiredString(obj, "connection_id", "", "the connection's id");
  if (!id.ok()) return id;
  if (Status s = ValidateConnectionId(id.value()); !s.ok()) {
    return FieldError("invalid_value", "connection_id", s.message());
  }
  return id;
}

Decoded<std::optional<std::string>> OptionalConnectionField(const Json& obj) {
  auto id = OptionalString(obj, "connection_id", "");
  if (!id.ok() || !id.value()) return id;
  if (Status s = ValidateConnectionId(**id); !s.ok()) {
    return FieldError("invalid_value", "connection_id", s.message());
  }
  return id;
}

Decoded<SyncSelector> DecodeSelectorObject(const Json& item, const std::string& path) {
  if (auto e = CheckObject(item, path, {"name", "variant"})) return *e;
  auto name = RequiredString(item, "name", path, "the sync's name");
  if (!name.ok()) return name.error();
  if (Status s = ValidateName(name.value(), "sync name"); !s.ok()) {
    return FieldError("invalid_value", Join(path, "name"), s.message());
  }
  auto variant = OptionalString(item, "variant", path);
  if (!variant.ok()) return variant.error();
  SyncSelector sel;
  sel.name = std::move(name.value());
  if (variant.value()) {
    if (Status s = ValidateName(**variant, "variant"); !s.ok()) {
      return FieldError("invalid_value", Join(path, "variant"), s.message());
    }
    sel.variant = std::move(**variant);
  }
  return sel;
}

Decoded<std::vector<SyncSelector>> DecodeSyncs(const Json& body) {
  auto it = body.find("syncs");
  if (it == body.end()) {
    return FieldError("missing_field", "syncs",
                      "syncs is required (an array of sync names, \"name::variant\" strings or "
                      "{name, variant} objects; empty for all syncs)");
  }
  if (!it->is_array()) return WrongType("syncs", "an array", *it);
  if (it->size() > kMaxSyncs) {
    return FieldError("too_many_syncs", "syncs",
                      "syncs has " + std::to_string(it->size()) + " items; at most " +
                          std::to_string(kMaxSyncs) + " are accepted");
  }
  std::vector<SyncSelector> out;
  out.reserve(it->size());
  for (std::size_t i = 0; i < it->size(); ++i) {
    const Json& item = (*it)[i];
    std::string path = "syncs[" + std::to_string(i) + "]";
    if (item.is_string()) {
      Result<SyncSelector> sel = SyncSelector::Parse(item.get_ref<const std::string&>());
      if (!sel.ok()) return FieldError("invalid_value", path, sel.status().message());
      out.push_back(std::move(sel.value()));
    } else if (item.is_object()) {
      auto sel = DecodeSelectorObject(item, path);
      if (!sel.ok()) return sel.error();
      out.push_back(std::move(sel.value()));
    } else {
      return WrongType(std::move(path), "a string or an object {name, variant?}", item);
    }
  }
  return out;
}

// The fields shared by start, pause and trigger, once the body's keys have been checked.
Decoded<Target> DecodeTargetFields(const Json& body) {
  Target target;
  auto integration = IntegrationField(body);
  if (!integration.ok()) return integration.error();
  target.integration = std::move(integration.value());
  auto connection = OptionalConnectionField(body);
  if (!connection.ok()) return connection.error();
  target.connection = std::move(connection.value());
  auto syncs = DecodeSyncs(body);
  if (!syncs.ok()) return syncs.error();
  target.syncs = std::move(syncs.value());
  return target;
}

// Throws out of nlohmann's parser (through its SAX handler) to stop a parse early.
struct ParseAbort {
  std::string message;
};

// Builds the document of a request body from nlohmann's SAX events (as its own DOM builder
// does), refusing nesting deeper than `max_depth` and duplicate keys as they are met. Cheaper
// than Json::parse with a callback: no std::function call nor key copy per token.
class BodyBuilder {
 public:
  BodyBuilder(Json& root, int max_depth) : root_(root), max_depth_(max_depth) {}

  bool null() { return Put(nullptr) != nullptr; }
  bool boolean(bool v) { return Put(v) != nullptr; }
  bool number_integer(Json::number_integer_t v) { return Put(v) != nullptr; }
  bool number_unsigned(Json::number_unsigned_t v) { return Put(v) != nullptr; }
  bool number_float(Json::number_float_t v, const std::string& /*text*/) {
    return Put(v) != nullptr;
  }
  bool string(std::string& v) { return Put(std::move(v)) != nullptr; }
  bool binary(Json::binary_t& v) { return Put(std::move(v)) != nullptr; }
  bool start_object(std::size_t /*size*/) {
    Enter();
    stack_.push_back(Put(Json::value_t::object));
    return true;
  }
  bool key(std::string& k) {
    Json& object = *stack_.back();
    if (object.contains(k)) throw ParseAbort{"duplicate key " + Quote(k)};
    element_ = &object[std::move(k)];
    return true;
  }
  bool end_object() { return Leave(); }
  bool start_array(std::size_t /*size*/) {
    Enter();
    stack_.push_back(Put(Json::value_t::array));
    return true;
  }
  bool end_array() { return Leave(); }
  template <class Exception>
  bool parse_error(std::size_t /*position*/, const std::string& /*token*/, const Exception& e) {
    throw e;
  }

 private:
  void Enter() {
    if (++depth_ > max_depth_) {
      throw ParseAbort{"the body is nested deeper than " + std::to_string(max_depth_) + " levels"};
    }
  }
  bool Leave() {
    --depth_;
    stack_.pop_back();
    return true;
  }
  // Places a value: the document itself, an array's next element, or the value of the key just
  // read. Returns where it is (stable until its container gets another member, which happens
  // only after this value is complete).
  template <class V>
  Json* Put(V&& v) {
    if (stack_.empty()) {
      root_ = Json(std::forward<V>(v));
      return &root_;
    }
    Json& top = *stack_.back();
    if (top.is_array()) {
      top.emplace_back(std::forward<V>(v));
      return &top.back();
    }
    *element_ = Json(std::forward<V>(v));
    return element_;
  }

  Json& root_;
  int max_depth_;
  int depth_ = 0;
  std::vector<Json*> stack_;
  Json* element_ = nullptr;
};

}  // namespace

// ---- Names ----

// The rules live in core/names.h (the engine checks the same ones); here they speak of the
// request's fields.
Status ValidateIntegrationKey(std::string_view key) {
  return core::ValidateIntegration(key, "provider_config_key");
}

Status ValidateConnectionId(std::string_view id) {
  return core::ValidateConnection(id, "connection_id");
}

Status ValidateSyncName(std::string_view name, std::string_view what) {
  return ValidateName(name, what);
}

// ---- Requests ----

Decoded<Json> ParseJson(std::string_view text, int max_depth, bool allow_comments) {
  // One pass: the handler bounds the nesting and refuses duplicate keys (which would otherwise
  // silently keep the last value) before the document is built any further.
  Json result;
  BodyBuilder builder(result, max_depth);
  try {
    Json::sax_parse(text.begin(), text.end(), &builder, nlohmann::detail::input_format_t::json,
                    /*strict=*/true, allow_comments);
    return result;
  } catch (const ParseAbort& e) {
    return errors::InvalidJson(e.message);
  } catch (const Json::exception& e) {
    return errors::InvalidJson(std::string("malformed JSON: ") + e.what());
  }
}

Decoded<Json> ParseJsonBody(std::string_view body, int max_depth) {
  if (body.find_first_not_of(" \t\r\n") == std::string_view::npos) {
    return errors::InvalidJson("the body is empty; a JSON object is expected");
  }
  return ParseJson(body, max_depth, /*allow_comments=*/false);
}

Decoded<Target> DecodeTarget(const Json& body) {
  if (auto e = CheckObject(body, "", {"provider_config_key", "connection_id", "syncs"})) return *e;
  return DecodeTargetFields(body);
}

Decoded<TriggerRequest> DecodeTrigger(const Json& body) {
  if (auto e = CheckObject(
          body, "",
          {"provider_config_key", "connection_id", "syncs", "opts", "sync_mode", "full_resync"})) {
    return *e;
  }
  auto target = DecodeTargetFields(body);
  if (!target.ok()) return target.error();
  TriggerRequest req;
  req.target = std::move(target.value());

  const Json* opts = Find(body, "opts");
  const Json* sync_mode = Find(body, "sync_mode");
  const Json* full_resync = Find(body, "full_resync");
  if ((opts != nullptr) + (sync_mode != nullptr) + (full_resync != nullptr) > 1) {
    return FieldError("conflicting_fields", opts != nullptr ? "opts" : "sync_mode",
                      "give at most one of opts, sync_mode and full_resync");
  }
  if (opts != nullptr) {
    if (auto e = CheckObject(*opts, "opts", {"reset", "emptyCache"})) return *e;
    auto reset = OptionalBool(*opts, "reset", "opts");
    if (!reset.ok()) return reset.error();
    auto empty_cache = OptionalBool(*opts, "emptyCache", "opts");
    if (!empty_cache.ok()) return empty_cache.error();
    if (reset.value().value_or(false)) req.mode = RunMode::kFullResync;
  } else if (sync_mode != nullptr) {
    if (!sync_mode->is_string()) return WrongType("sync_mode", "a string", *sync_mode);
    const auto& mode = sync_mode->get_ref<const std::string&>();
    if (mode == "incremental") {
      req.mode = RunMode::kIncremental;
    } else if (mode == "full_refresh" || mode == "full_refresh_and_clear_cache") {
      req.mode = RunMode::kFullResync;
    } else {
      return FieldError("invalid_value", "sync_mode",
                        "sync_mode " + Quote(mode) +
                            " is not one of \"incremental\", \"full_refresh\", "
                            "\"full_refresh_and_clear_cache\"");
    }
  } else if (full_resync != nullptr) {
    if (!full_resync->is_boolean()) return WrongType("full_resync", "a boolean", *full_resync);
    if (full_resync->get<bool>()) req.mode = RunMode::kFullResync;
  }
  return req;
}

Decoded<Target> DecodeStatusQuery(const QueryParams& query) {
  const std::string* integration = nullptr;
  const std::string* connection = nullptr;
  const std::string* syncs = nullptr;
  for (const auto& [name, value] : query) {
    if (name == "provider_config_key") {
      integration = &value;
    } else if (name == "connection_id") {
      connection = &value;
    } else if (name == "syncs") {
      syncs = &value;
    } else {
      return FieldError("unknown_field", name,
                        "unknown query parameter " + Quote(name) +
                            "; accepted: provider_config_key, connection_id, syncs");
    }
  }
  if (integration == nullptr) {
    return FieldError("missing_field", "provider_config_key",
                      "provider_config_key is required (the integration's key)");
  }
  if (Status s = ValidateIntegrationKey(*integration); !s.ok()) {
    return FieldError("invalid_value", "provider_config_key", s.message());
  }
  if (syncs == nullptr) {
    return FieldError("missing_field", "syncs",
                      "syncs is required (\"*\" or a comma-separated list of sync names)");
  }
  Target target;
  target.integration = *integration;
  if (connection != nullptr) {
    if (Status s = ValidateConnectionId(*connection); !s.ok()) {
      return FieldError("invalid_value", "connection_id", s.message());
    }
    target.connection = *connection;
  }
  if (*syncs == "*") return target;
  if (syncs->empty()) {
    return FieldError("invalid_value", "syncs",
                      "syncs is empty; give \"*\" or a comma-separated list of sync names");
  }
  std::string_view rest = *syncs;
  while (true) {
    std::size_t comma = rest.find(',');
    std::string_view item = rest.substr(0, comma);
    if (target.syncs.size() == kMaxSyncs) {
      return FieldError("too_many_syncs", "syncs",
                        "syncs names more than " + std::to_string(kMaxSyncs) + " syncs");
    }
    Result<SyncSelector> sel = SyncSelector::Parse(item);
    if (!sel.ok()) return FieldError("invalid_value", "syncs", sel.status().message());
    target.syncs.push_back(std::move(sel.value()));
    if (comma == std::string_view::npos) break;
    rest.remove_prefix(comma + 1);
  }
  return target;
}

Decoded<FrequencyRequest> DecodeFrequencyUpdate(const Json& body) {
  if (auto e = CheckObject(
          body, "",
          {"provider_config_key", "connection_id", "sync_name", "sync_variant", "frequency"})) {
    return *e;
  }
  FrequencyRequest req;
  auto integration = IntegrationField(body);
  if (!integration.ok()) return integration.error();
  req.key.integration = std::move(integration.value());
  auto connection = RequiredConnectionField(body);
  if (!connection.ok()) return connection.error();
  req.key.connection = std::move(connection.value());
  auto sync = RequiredString(body, "sync_name", "", "the sync's name");
  if (!sync.ok()) return sync.error();
  if (Status s = ValidateName(sync.value(), "sync_name"); !s.ok()) {
    return FieldError("invalid_value", "sync_name", s.message());
  }
  req.key.sync = std::move(sync.value());
  auto variant = OptionalString(body, "sync_variant", "");
  if (!variant.ok()) return variant.error();
  if (variant.value()) {
    if (Status s = ValidateName(**variant, "sync_variant"); !s.ok()) {
      return FieldError("invalid_value", "sync_variant", s.message());
    }
    req.key.variant = std::move(**variant);
  }
  auto it = body.find("frequency");
  if (it == body.end()) {
    return FieldError("missing_field", "frequency",
                      "frequency is required (a frequency such as \"every 30min\", or null to "
                      "revert to the sync's default)");
  }
  if (it->is_string()) {
    req.frequency = it->get<std::string>();
  } else if (!it->is_null()) {
    return WrongType("frequency", "a string or null", *it);
  }
  return req;
}

Decoded<ScheduleKey> DecodeVariant(std::string_view name, std::string_view variant,
                                   const Json& body) {
  if (Status s = ValidateName(name, "sync name"); !s.ok()) {
    return FieldError("invalid_value", "name", s.message());
  }
  if (Status s = ValidateName(variant, "variant"); !s.ok()) {
    return FieldError("invalid_variant", "variant", s.message());
  }
  if (auto e = CheckObject(body, "", {"provider_config_key", "connection_id"})) return *e;
  ScheduleKey key;
  auto integration = IntegrationField(body);
  if (!integration.ok()) return integration.error();
  key.integration = std::move(integration.value());
  auto connection = RequiredConnectionField(body);
  if (!connection.ok()) return connection.error();
  key.connection = std::move(connection.value());
  key.sync = std::string(name);
  key.variant = std::string(variant);
  return key;
}

Decoded<ConnectionRequest> DecodeCreateConnection(const Json& body) {
  if (auto e = CheckObject(body, "", {"provider_config_key", "connection_id"})) return *e;
  ConnectionRequest req;
  auto integration = IntegrationField(body);
  if (!integration.ok()) return integration.error();
  req.integration = std::move(integration.value());
  auto connection = RequiredConnectionField(body);
  if (!connection.ok()) return connection.error();
  req.connection = std::move(connection.value());
  return req;
}

Decoded<ConnectionRequest> DecodeDeleteConnection(std::string_view connection_id,
                                                  const QueryParams& query) {
  if (Status s = ValidateConnectionId(connection_id); !s.ok()) {
    return FieldError("invalid_value", "connection_id", s.message());
  }
  const std::string* integration = nullptr;
  for (const auto& [name, value] : query) {
    if (name != "provider_config_key") {
      return FieldError(
          "unknown_field", name,
          "unknown query parameter " + Quote(name) + "; accepted: provider_config_key");
    }
    integration = &value;
  }
  if (integration == nullptr) {
    return FieldError("missing_field", "provider_config_key",
                      "provider_config_key is required (the integration's key)");
  }
  if (Status s = ValidateIntegrationKey(*integration); !s.ok()) {
    return FieldError("invalid_value", "provider_config_key", s.message());
  }
  return ConnectionRequest{*integration, std::string(connection_id)};
}

Decoded<ForecastRequest> DecodeForecastQuery(const QueryParams& query) {
  const std::string* hours = nullptr;
  const std::string* integration = nullptr;
  for (const auto& [name, value] : query) {
    const std::string** slot = nullptr;
    if (name == "hours") {
      slot = &hours;
    } else if (name == "provider_config_key") {
      slot = &integration;
    } else {
      return FieldError(
          "unknown_field", name,
          "unknown query parameter " + Quote(name) + "; accepted: hours, provider_config_key");
    }
    if (*slot != nullptr) {
      return FieldError("invalid_value", name,
                        "query parameter " + Quote(name) + " is given twice");
    }
    *slot = &value;
  }
  if (hours == nullptr) {
    return FieldError("missing_field", "hours",
                      "hours is required: the forecast's horizon, an integer from 1 to " +
                          std::to_string(kMaxForecastHours));
  }
  ForecastRequest request;
  auto [end, err] = std::from_chars(hours->data(), hours->data() + hours->size(), request.hours);
  if (hours->empty() || err != std::errc() || end != hours->data() + hours->size() ||
      request.hours < 1 || request.hours > kMaxForecastHours) {
    return FieldError("invalid_value", "hours",
                      "hours " + Quote(*hours) + " must be an integer from 1 to " +
                          std::to_string(kMaxForecastHours));
  }
  if (integration != nullptr) {
    if (Status s = ValidateIntegrationKey(*integration); !s.ok()) {
      return FieldError("invalid_value", "provider_config_key", s.message());
    }
    request.integration = *integration;
  }
  return request;
}

// ---- Responses ----

Json EncodeSuccess() { return Json{{"success", true}}; }

Json EncodeStatuses(const std::vector<ScheduleStatus>& statuses) {
  Json items = Json::array();
  for (const ScheduleStatus& s : statuses) items.push_back(EncodeScheduleStatus(s));
  return Json{{"syncs", std::move(items)}};
}

Json EncodeScheduleStatus(const ScheduleStatus& s) {
  auto time_or_null = [](const std::optional<TimePoint>& t) -> Json {
    return t ? Json(FormatTime(*t)) : Json(nullptr);
  };
  Json latest_result = Json::object();
  for (const ModelCounts& c : s.last_counts) {
    latest_result[c.model] =
        Json{{"added", c.added}, {"updated", c.updated}, {"deleted", c.deleted}};
  }
  Json execution(nullptr);
  if (s.status == RunStatus::kRunning) {
    execution = "RUNNING";
  } else if (s.last_ok) {
    execution = *s.last_ok ? "SUCCESS" : "ERROR";
  }
  Json item = Json::object();
  item["id"] = std::to_string(s.id);
  item["connection_id"] = s.key.connection;
  item["name"] = s.key.sync;
  item["variant"] = s.key.variant;
  item["type"] = s.runs == 0 ? "INITIAL" : "INCREMENTAL";
  item["status"] = std::string(ToString(s.status));
  item["schedule_status"] = std::string(ToString(s.state));
  item["frequency"] = FormatFrequency(s.frequency);
  item["frequency_overridden"] = s.frequency_overridden;
  item["nextScheduledSyncAt"] = time_or_null(s.next_run);
  item["startedAt"] = time_or_null(s.last_start);
  item["finishedAt"] = time_or_null(s.last_finish);
  item["latestResult"] = std::move(latest_result);
  item["latestExecutionStatus"] = std::move(execution);
  item["recordCount"] = Json::object();
  item["checkpoint"] = nullptr;
  item["error"] = s.last_error.empty() ? Json(nullptr) : Json(s.last_error);
  item["runs"] = s.runs;
  item["failures"] = s.failures;
  item["skipped"] = s.skipped;
  item["waitingSince"] = time_or_null(s.waiting_since);
  item["nextRetryAt"] = time_or_null(s.next_retry);
  item["unrecorded"] = s.unrecorded;
  Json decisions = Json::array();
  for (const Decision& d : s.decisions) {
    decisions.push_back(Json{{"at", FormatTime(d.at)},
                             {"reason", std::string(ToString(d.reason))},
                             {"detail", d.detail}});
  }
  item["decisions"] = std::move(decisions);
  return item;
}

Json EncodeForecast(const std::vector<ForecastMinute>& minutes) {
  Json items = Json::array();
  for (const ForecastMinute& m : minutes) {
    if (m.runs == 0) continue;
    items.push_back(Json{{"at", FormatTime(m.at)}, {"runs", m.runs}});
  }
  return Json{{"minutes", std::move(items)}};
}

Json EncodeFrequency(Millis frequency) { return Json{{"frequency", FormatFrequency(frequency)}}; }

Json EncodeVariantCreated(const ScheduleKey& key, std::uint64_t id) {
  return Json{{"id", std::to_string(id)}, {"name", key.sync}, {"variant", key.variant}};
}

Json EncodeConnectionCreated(const ConnectionRequest& request) {
  return Json{{"connection_id", request.connection}, {"provider_config_key", request.integration}};
}

Json EncodeError(const ApiError& error) {
  Json body = Json::object();
  body["message"] = error.message;
  body["code"] = error.code;
  if (error.field) body["field"] = *error.field;
  body["error"] = Json{{"code", error.code}, {"message", error.message}};
  return body;
}

std::string Dump(const Json& json) {
  return json.dump(-1, ' ', false, Json::error_handler_t::replace);
}

// ---- Errors ----

ApiError ErrorFromStatus(const Status& status, const RequestFields& fields) {
  ApiError e;
  e.message = status.message();
  const StatusSubject subject = status.subject();
  switch (subject) {
    case StatusSubject::kIntegration:
      e.field = std::string(fields.integration);
      break;
    case StatusSubject::kConnection:
      e.field = std::string(fields.connection);
      break;
    case StatusSubject::kSync:
      e.field = std::string(fields.sync);
      break;
    case StatusSubject::kVariant:
      e.field = std::string(fields.variant);
      break;
    case StatusSubject::kField:
      if (!status.field().empty()) e.field = status.field();
      break;
    case StatusSubject::kNone:
      break;
  }
  switch (status.code()) {
    case StatusCode::kInvalidArgument:
      e.http_status = 400;
      e.code = subject == StatusSubject::kField && status.field() == "frequency"
                   ? "invalid_frequency"
               : subject == StatusSubject::kVariant ? "invalid_variant"
                                                    : "invalid_argument";
      break;
    case StatusCode::kNotFound:
      switch (subject) {
        case StatusSubject::kIntegration:
          e.http_status = 400;
          e.code = "unknown_provider_config";
          break;
        case StatusSubject::kConnection:
          e.http_status = 404;
          e.code = "unknown_connection";
          break;
        case StatusSubject::kVariant:
          e.http_status = fields.variant_in_path ? 404 : 400;
          e.code = fields.variant_in_path ? "unknown_variant" : "unknown_sync";
          break;
        case StatusSubject::kSync:
          e.http_status = 400;
          e.code = "unknown_sync";
          break;
        case StatusSubject::kField:
        case StatusSubject::kNone:
          e.http_status = 404;
          e.code = "not_found";
          break;
      }
      break;
    case StatusCode::kAlreadyExists:
      e.http_status = 409;
      e.code = subject == StatusSubject::kConnection ? "connection_already_exists"
               : subject == StatusSubject::kVariant  ? "sync_variant_already_exists"
                                                     : "already_exists";
      break;
    case StatusCode::kFailedPrecondition:
      e.http_status = 409;
      e.code = "failed_precondition";
      break;
    case StatusCode::kUnavailable:
      e.http_status = 503;
      e.code = "unavailable";
      break;
    case StatusCode::kCancelled:
      e.http_status = 503;
      e.code = "cancelled";
      break;
    case StatusCode::kDeadlineExceeded:
      e.http_status = 504;
      e.code = "deadline_exceeded";
      break;
    case StatusCode::kOk:  // a caller's bug; report it rather than pretend success
    case StatusCode::kInternal:
    default:
      e.http_status = 500;
      e.code = "internal_error";
      break;
  }
  return e;
}

namespace errors {

ApiError BadRequest(std::string message) {
  return ApiError{400, "bad_request", std::move(message), std::nullopt};
}
ApiError InvalidJson(std::string message) {
  return ApiError{400, "invalid_json", std::move(message), std::nullopt};
}
ApiError UnexpectedBody() {
  return ApiError{400, "unexpected_body", "this route takes no request body", std::nullopt};
}
ApiError Unauthorized(std::string message) {
  return ApiError{401, "unauthorized", std::move(message), std::nullopt};
}
ApiError MissingScope(std::string_view scope) {
  return ApiError{403, "missing_scope",
                  "the API key lacks the scope " + Quote(scope) + " that this route requires",
                  std::nullopt};
}
ApiError RouteNotFound(std::string_view method, std::string_view path) {
  return ApiError{404, "route_not_found", "no route " + std::string(method) + " " + Quote(path),
                  std::nullopt};
}
ApiError MethodNotAllowed(std::string_view method, std::string_view path,
                          std::string_view allowed) {
  return ApiError{405, "method_not_allowed",
                  "method " + std::string(method) + " is not allowed on " + Quote(path) +
                      "; allowed: " + std::string(allowed),
                  std::nullopt};
}
ApiError PayloadTooLarge(std::size_t limit) {
  return ApiError{413, "payload_too_large",
                  "the request body exceeds the limit of " + std::to_string(limit) + " bytes",
                  std::nullopt};
}
ApiError HeadersTooLarge(std::size_t limit) {
  return ApiError{431, "headers_too_large",
                  "the request header exceeds the limit of " + std::to_string(limit) + " bytes",
                  std::nullopt};
}
ApiError TooManyConnections() {
  return ApiError{503, "too_many_connections",
                  "the server has too many open connections; retry later", std::nullopt};
}
ApiError TooManyClientConnections(std::size_t limit) {
  return ApiError{503, "too_many_client_connections",
                  "this client has " + std::to_string(limit) +
                      " connections open, the most the server allows one client; reuse one, or "
                      "retry once one is closed",
                  std::nullopt};
}
ApiError ShuttingDown() {
  return ApiError{503, "shutting_down", "the server is shutting down", std::nullopt};
}
ApiError Internal(std::string message) {
  return ApiError{500, "internal_error", std::move(message), std::nullopt};
}

}  // namespace errors
}  // namespace syncsched::codec
