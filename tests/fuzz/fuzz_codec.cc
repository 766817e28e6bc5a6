// Fuzz target: the JSON codec (src/codec/codec.h), every request type it decodes.
// The input is a request body: it goes through ParseJsonBody, then through every body decoder
// (start/pause, trigger, frequency update, variant, connection). The same bytes are read as a
// URL query for the query decoders (status, forecast, connection delete).
// Invariants: nothing throws or crashes; a body that parses dumps and parses back to the same
// document; every error is a 4xx with a code and a message and encodes to JSON; a request that
// decodes, encoded again (in each of the wire's forms: "name", "name::variant", {name, variant};
// opts, sync_mode, full_resync; a status query), decodes to the same request; and what the codec
// accepts, the engine's own name checks (core/names.h) accept too.
#include <string>
#include <string_view>
#include <vector>

#include "codec/codec.h"
#include "codec/url.h"
#include "core/names.h"
#include "fuzz.h"

namespace syncsched::fuzz {
namespace {

using codec::Json;

std::string Show(const Json& j) { return codec::Dump(j); }

void CheckError(const codec::ApiError& e, const std::string& input) {
  FUZZ_CHECK(e.http_status >= 400 && e.http_status < 500, input);
  FUZZ_CHECK(!e.code.empty() && !e.message.empty(), input);
  Json body = codec::EncodeError(e);
  std::string text = codec::Dump(body);
  FUZZ_CHECK(!text.empty(), input);
}

template <class T>
bool Failed(const codec::Decoded<T>& d, const std::string& input) {
  if (d.ok()) return false;
  CheckError(d.error(), input);
  return true;
}

// The names the engine will be given pass its own checks.
void CheckNames(const std::string& integration, const std::string* connection,
                const std::vector<SyncSelector>& syncs, const std::string& input) {
  FUZZ_CHECK(core::ValidateIntegration(integration).ok(), input);
  if (connection != nullptr) FUZZ_CHECK(core::ValidateConnection(*connection).ok(), input);
  for (const SyncSelector& s : syncs) {
    FUZZ_CHECK(core::ValidateName(s.name, "sync name").ok(), input);
    FUZZ_CHECK(core::ValidateName(s.variant, "variant").ok(), input);
  }
}

bool SameTarget(const Target& a, const Target& b) {
  return a.integration == b.integration && a.connection == b.connection && a.syncs == b.syncs;
}

// The selector in one of its three wire forms, chosen by `form`.
Json Selector(const SyncSelector& s, std::size_t form) {
  switch (form % 3) {
    case 0:
      if (s.variant == kBaseVariant) return s.name;
      return s.name + "::" + s.variant;
    case 1:
      return s.name + "::" + s.variant;
    default:
      return Json{{"name", s.name}, {"variant", s.variant}};
  }
}

Json TargetBody(const Target& t, std::size_t form) {
  Json body = Json::object();
  body["provider_config_key"] = t.integration;
  if (t.connection) body["connection_id"] = *t.connection;
  Json syncs = Json::array();
  for (std::size_t i = 0; i < t.syncs.size(); ++i) syncs.push_back(Selector(t.syncs[i], form + i));
  body["syncs"] = std::move(syncs);
  return body;
}

// A body re-encoded as text and decoded again.
Json Reparse(const Json& body, const std::string& input) {
  auto parsed = codec::ParseJsonBody(codec::Dump(body));
  FUZZ_CHECK(parsed.ok(), input + " -> " + Show(body));
  return std::move(parsed.value());
}

std::string StatusQuery(const Target& t) {
  std::string q = "provider_config_key=" + PercentEncode(t.integration);
  if (t.connection) q += "&connection_id=" + PercentEncode(*t.connection);
  std::string syncs;
  for (const SyncSelector& s : t.syncs) {
    if (!syncs.empty()) syncs += ',';
    syncs += s.name + "::" + s.variant;
  }
  q += "&syncs=" + (t.syncs.empty() ? std::string("*") : PercentEncode(syncs));
  return q;
}

void CheckTarget(const Target& t, const std::string& input) {
  CheckNames(t.integration, t.connection ? &*t.connection : nullptr, t.syncs, input);
  FUZZ_CHECK(t.syncs.size() <= codec::kMaxSyncs, input);
  for (std::size_t form = 0; form < 3; ++form) {
    auto again = codec::DecodeTarget(Reparse(TargetBody(t, form), input));
    FUZZ_CHECK(again.ok() && SameTarget(*again, t), input);
  }
  // The same target as a status query.
  std::string q = StatusQuery(t);
  auto params = codec::ParseQuery(q);
  FUZZ_CHECK(params.ok(), q);
  auto status = codec::DecodeStatusQuery(*params);
  FUZZ_CHECK(status.ok() && SameTarget(*status, t), input + " -> " + q);
}

void CheckTrigger(const codec::TriggerRequest& r, const std::string& input) {
  CheckTarget(r.target, input);
  bool full = r.mode == RunMode::kFullResync;
  std::vector<Json> bodies;
  Json base = TargetBody(r.target, 0);
  Json with_opts = base;
  with_opts["opts"] = Json{{"reset", full}, {"emptyCache", true}};
  bodies.push_back(with_opts);
  Json with_mode = base;
  with_mode["sync_mode"] = full ? "full_refresh" : "incremental";
  bodies.push_back(with_mode);
  Json with_flag = base;
  with_flag["full_resync"] = full;
  bodies.push_back(with_flag);
  if (!full) bodies.push_back(base);
  for (const Json& b : bodies) {
    auto again = codec::DecodeTrigger(Reparse(b, input));
    FUZZ_CHECK(again.ok() && SameTarget(again->target, r.target) && again->mode == r.mode,
               input + " -> " + Show(b));
  }
}

void CheckFrequency(const codec::FrequencyRequest& r, const std::string& input) {
  CheckNames(r.key.integration, &r.key.connection, {SyncSelector{r.key.sync, r.key.variant}},
             input);
  Json body = Json::object();
  body["provider_config_key"] = r.key.integration;
  body["connection_id"] = r.key.connection;
  body["sync_name"] = r.key.sync;
  body["sync_variant"] = r.key.variant;
  body["frequency"] = r.frequency ? Json(*r.frequency) : Json(nullptr);
  auto again = codec::DecodeFrequencyUpdate(Reparse(body, input));
  FUZZ_CHECK(again.ok() && again->key == r.key && again->frequency == r.frequency,
             input + " -> " + Show(body));
}

void CheckConnection(const codec::ConnectionRequest& r, const std::string& input) {
  CheckNames(r.integration, &r.connection, {}, input);
  auto created = codec::DecodeCreateConnection(Reparse(
      Json{{"provider_config_key", r.integration}, {"connection_id", r.connection}}, input));
  FUZZ_CHECK(
      created.ok() && created->integration == r.integration && created->connection == r.connection,
      input);
  auto params = codec::ParseQuery("provider_config_key=" + PercentEncode(r.integration));
  FUZZ_CHECK(params.ok(), input);
  auto deleted = codec::DecodeDeleteConnection(r.connection, *params);
  FUZZ_CHECK(
      deleted.ok() && deleted->integration == r.integration && deleted->connection == r.connection,
      input);
}

// A string member of `body`, if it has one, else `fallback`.
std::string StringOr(const Json& body, const char* key, const char* fallback) {
  if (body.is_object()) {
    auto it = body.find(key);
    if (it != body.end() && it->is_string()) return it->get<std::string>();
  }
  return fallback;
}

void Bodies(std::string_view text, const std::string& input) {
  auto parsed = codec::ParseJsonBody(text);
  if (Failed(parsed, input)) return;
  const Json& body = *parsed;

  // The document survives a dump and a parse.
  auto again = codec::ParseJsonBody(codec::Dump(body));
  FUZZ_CHECK(again.ok() && *again == body, input);

  if (auto t = codec::DecodeTarget(body); !Failed(t, input)) CheckTarget(*t, input);
  if (auto t = codec::DecodeTrigger(body); !Failed(t, input)) CheckTrigger(*t, input);
  if (auto f = codec::DecodeFrequencyUpdate(body); !Failed(f, input)) CheckFrequency(*f, input);
  if (auto c = codec::DecodeCreateConnection(body); !Failed(c, input)) CheckConnection(*c, input);
  // The path's name and variant: from the body when it has them, so that bad ones are tried too.
  std::string name = StringOr(body, "sync_name", "issues");
  std::string variant = StringOr(body, "sync_variant", "v1");
  if (auto k = codec::DecodeVariant(name, variant, body); !Failed(k, input)) {
    CheckNames(k->integration, &k->connection, {SyncSelector{k->sync, k->variant}}, input);
    FUZZ_CHECK(k->sync == name && k->variant == variant, input);
  }
}

void Queries(std::string_view text, const std::string& input) {
  auto query = codec::ParseQuery(text);
  if (Failed(query, input)) return;
  if (auto t = codec::DecodeStatusQuery(*query); !Failed(t, input)) CheckTarget(*t, input);
  if (auto f = codec::DecodeForecastQuery(*query); !Failed(f, input)) {
    FUZZ_CHECK(f->hours >= 1 && f->hours <= codec::kMaxForecastHours, input);
    std::string q = "hours=" + std::to_string(f->hours);
    if (f->integration) {
      FUZZ_CHECK(core::ValidateIntegration(*f->integration).ok(), input);
      q += "&provider_config_key=" + PercentEncode(*f->integration);
    }
    auto params = codec::ParseQuery(q);
    FUZZ_CHECK(params.ok(), q);
    auto back = codec::DecodeForecastQuery(*params);
    FUZZ_CHECK(back.ok() && back->hours == f->hours && back->integration == f->integration, q);
  }
  std::string connection = "acme";
  if (!query->empty()) connection = query->front().second;
  if (auto c = codec::DecodeDeleteConnection(connection, *query); !Failed(c, input)) {
    CheckConnection(*c, input);
  }
}

}  // namespace

int FuzzCodec(const std::uint8_t* data, std::size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  // The input, quoted for a failure's message (JSON-escaped, cut).
  std::string input = codec::Dump(Json(std::string(text.substr(0, 2000))));
  Bodies(text, input);
  Queries(text, input);
  return 0;
}

}  // namespace syncsched::fuzz
