// The JSON codec: every request shape, every field error, the limits, the response shapes and
// the mapping of engine errors to HTTP.
#include "codec/codec.h"

#include <gtest/gtest.h>

#include <string>

#include "codec/prometheus.h"
#include "codec/url.h"

namespace syncsched::codec {
namespace {

Json J(const std::string& text) { return Json::parse(text); }

// Asserts that `d` failed with this status, code and field.
template <typename T>
void ExpectError(const Decoded<T>& d, unsigned status, const std::string& code,
                 const std::optional<std::string>& field) {
  ASSERT_FALSE(d.ok()) << "expected " << code;
  EXPECT_EQ(d.error().http_status, status) << d.error().message;
  EXPECT_EQ(d.error().code, code) << d.error().message;
  EXPECT_EQ(d.error().field, field) << d.error().message;
  EXPECT_FALSE(d.error().message.empty());
}

// ---- ParseJsonBody ----

TEST(ParseJsonBody, AcceptsAnObject) {
  auto d = ParseJsonBody(R"({"a": [1, {"b": null}]})");
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d.value()["a"][0], 1);
}

TEST(ParseJsonBody, RefusesEmptyAndMalformedBodies) {
  ExpectError(ParseJsonBody(""), 400, "invalid_json", std::nullopt);
  ExpectError(ParseJsonBody("  \n"), 400, "invalid_json", std::nullopt);
  ExpectError(ParseJsonBody("{"), 400, "invalid_json", std::nullopt);
  ExpectError(ParseJsonBody("{\"a\": 1,}"), 400, "invalid_json", std::nullopt);
  ExpectError(ParseJsonBody("{} {}"), 400, "invalid_json", std::nullopt);
  ExpectError(ParseJsonBody("nul"), 400, "invalid_json", std::nullopt);
}

TEST(ParseJsonBody, RefusesInvalidUtf8) {
  ExpectError(ParseJsonBody("{\"a\": \"\xff\xfe\"}"), 400, "invalid_json", std::nullopt);
}

TEST(ParseJsonBody, RefusesDuplicateKeys) {
  auto d = ParseJsonBody(R"({"syncs": [], "syncs": ["a"]})");
  ExpectError(d, 400, "invalid_json", std::nullopt);
  EXPECT_NE(d.error().message.find("duplicate key"), std::string::npos);
  // The same key in sibling objects is fine.
  EXPECT_TRUE(ParseJsonBody(R"([{"a": 1}, {"a": 2}])").ok());
}

TEST(ParseJsonBody, BoundsTheNesting) {
  std::string ok = std::string(32, '[') + std::string(32, ']');
  EXPECT_TRUE(ParseJsonBody(ok).ok());
  std::string deep = std::string(33, '[') + std::string(33, ']');
  ExpectError(ParseJsonBody(deep), 400, "invalid_json", std::nullopt);
  // A huge nesting is refused without recursion trouble, closed or not.
  std::string huge(1 << 20, '[');
  ExpectError(ParseJsonBody(huge), 400, "invalid_json", std::nullopt);
  std::string objects;
  for (int i = 0; i < 100000; ++i) objects += "{\"a\":";
  ExpectError(ParseJsonBody(objects), 400, "invalid_json", std::nullopt);
  EXPECT_TRUE(ParseJsonBody(std::string(4, '[') + std::string(4, ']'), 4).ok());
  ExpectError(ParseJsonBody(std::string(5, '[') + std::string(5, ']'), 4), 400, "invalid_json",
              std::nullopt);
}

// ---- DecodeTarget (start, pause) ----

TEST(DecodeTarget, NamesVariantsAndObjects) {
  auto d = DecodeTarget(J(R"({"provider_config_key": "github", "connection_id": "acme",
      "syncs": ["issues", "issues::v2", {"name": "pulls"}, {"name": "pulls", "variant": "eu"},
                {"name": "commits", "variant": null}]})"));
  ASSERT_TRUE(d.ok()) << d.error().message;
  EXPECT_EQ(d->integration, "github");
  EXPECT_EQ(d->connection, "acme");
  ASSERT_EQ(d->syncs.size(), 5u);
  EXPECT_EQ(d->syncs[0], (SyncSelector{"issues", "base"}));
  EXPECT_EQ(d->syncs[1], (SyncSelector{"issues", "v2"}));
  EXPECT_EQ(d->syncs[2], (SyncSelector{"pulls", "base"}));
  EXPECT_EQ(d->syncs[3], (SyncSelector{"pulls", "eu"}));
  EXPECT_EQ(d->syncs[4], (SyncSelector{"commits", "base"}));
}

TEST(DecodeTarget, ConnectionIsOptionalAndEmptySyncsMeansAll) {
  auto d = DecodeTarget(J(R"({"provider_config_key": "github", "syncs": []})"));
  ASSERT_TRUE(d.ok());
  EXPECT_FALSE(d->connection.has_value());
  EXPECT_TRUE(d->syncs.empty());
  auto n =
      DecodeTarget(J(R"({"provider_config_key": "github", "connection_id": null, "syncs": []})"));
  ASSERT_TRUE(n.ok());
  EXPECT_FALSE(n->connection.has_value());
}

TEST(DecodeTarget, AcceptsTheWholeIntegrationKeyAlphabet) {
  auto d = DecodeTarget(J(R"({"provider_config_key": "a~b:c.d@e f_g-h", "syncs": []})"));
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->integration, "a~b:c.d@e f_g-h");
}

TEST(DecodeTarget, EveryFieldError) {
  ExpectError(DecodeTarget(J("[]")), 400, "invalid_body", "");
  ExpectError(DecodeTarget(J("\"x\"")), 400, "invalid_body", "");
  ExpectError(DecodeTarget(J(R"({"syncs": []})")), 400, "missing_field", "provider_config_key");
  ExpectError(DecodeTarget(J(R"({"provider_config_key": 1, "syncs": []})")), 400, "invalid_type",
              "provider_config_key");
  ExpectError(DecodeTarget(J(R"({"provider_config_key": null, "syncs": []})")), 400, "invalid_type",
              "provider_config_key");
  ExpectError(DecodeTarget(J(R"({"provider_config_key": "", "syncs": []})")), 400, "invalid_value",
              "provider_config_key");
  ExpectError(DecodeTarget(J(R"({"provider_config_key": "a/b", "syncs": []})")), 400,
              "invalid_value", "provider_config_key");
  ExpectError(DecodeTarget(
                  J(R"({"provider_config_key": ")" + std::string(256, 'a') + R"(", "syncs": []})")),
              400, "invalid_value", "provider_config_key");
  ExpectError(DecodeTarget(J(R"({"provider_config_key": "g", "connection_id": 5, "syncs": []})")),
              400, "invalid_type", "connection_id");
  ExpectError(DecodeTarget(J(R"({"provider_config_key": "g", "connection_id": "", "syncs": []})")),
              400, "invalid_value", "connection_id");
  ExpectError(
      DecodeTarget(J(R"({"provider_config_key": "g", "connection_id": "a\nb", "syncs": []})")), 400,
      "invalid_value", "connection_id");
  ExpectError(DecodeTarget(J(R"({"provider_config_key": "g"})")), 400, "missing_field", "syncs");
  ExpectError(DecodeTarget(J(R"({"provider_config_key": "g", "syncs": "issues"})")), 400,
              "invalid_type", "syncs");
  ExpectError(DecodeTarget(J(R"({"provider_config_key": "g", "syncs": null})")), 400,
              "invalid_type", "syncs");
  ExpectError(DecodeTarget(J(R"({"provider_config_key": "g", "syncs": [1]})")), 400, "invalid_type",
              "syncs[0]");
  ExpectError(DecodeTarget(J(R"({"provider_config_key": "g", "syncs": ["a", ["b"]]})")), 400,
              "invalid_type", "syncs[1]");
  ExpectError(DecodeTarget(J(R"({"provider_config_key": "g", "syncs": [""]})")), 400,
              "invalid_value", "syncs[0]");
  ExpectError(DecodeTarget(J(R"({"provider_config_key": "g", "syncs": ["a b"]})")), 400,
              "invalid_value", "syncs[0]");
  ExpectError(DecodeTarget(J(R"({"provider_config_key": "g", "syncs": ["a::"]})")), 400,
              "invalid_value", "syncs[0]");
  ExpectError(DecodeTarget(J(R"({"provider_config_key": "g", "syncs": ["::v"]})")), 400,
              "invalid_value", "syncs[0]");
  ExpectError(DecodeTarget(J(R"({"provider_config_key": "g", "syncs": [{}]})")), 400,
              "missing_field", "syncs[0].name");
  ExpectError(DecodeTarget(J(R"({"provider_config_key": "g", "syncs": [{"name": 3}]})")), 400,
              "invalid_type", "syncs[0].name");
  ExpectError(DecodeTarget(J(R"({"provider_config_key": "g", "syncs": [{"name": "a::b"}]})")), 400,
              "invalid_value", "syncs[0].name");
  ExpectError(
      DecodeTarget(J(R"({"provider_config_key": "g", "syncs": [{"name": "a", "variant": 1}]})")),
      400, "invalid_type", "syncs[0].variant");
  ExpectError(DecodeTarget(
                  J(R"({"provider_config_key": "g", "syncs": [{"name": "a", "variant": "x y"}]})")),
              400, "invalid_value", "syncs[0].variant");
  ExpectError(
      DecodeTarget(J(R"({"provider_config_key": "g", "syncs": [{"name": "a", "model": "x"}]})")),
      400, "unknown_field", "syncs[0].model");
}

TEST(DecodeTarget, RejectsUnknownFields) {
  auto d = DecodeTarget(J(R"({"provider_config_key": "g", "syncs": [], "connection": "acme"})"));
  ExpectError(d, 400, "unknown_field", "connection");
  EXPECT_NE(d.error().message.find("connection_id"), std::string::npos)
      << "the message lists the accepted fields: " << d.error().message;
  // Trigger's own fields are unknown to start and pause.
  ExpectError(DecodeTarget(J(R"({"provider_config_key": "g", "syncs": [], "opts": {}})")), 400,
              "unknown_field", "opts");
}

TEST(DecodeTarget, AtMost256Syncs) {
  Json body = {{"provider_config_key", "g"}, {"syncs", Json::array()}};
  for (int i = 0; i < 256; ++i) body["syncs"].push_back("s" + std::to_string(i));
  EXPECT_TRUE(DecodeTarget(body).ok());
  body["syncs"].push_back("one-too-many");
  ExpectError(DecodeTarget(body), 400, "too_many_syncs", "syncs");
}

TEST(DecodeTarget, SyncNamesOfMaximumLength) {
  std::string name(255, 'n');
  Json body = {{"provider_config_key", "g"}, {"syncs", {name + "::" + std::string(255, 'v')}}};
  EXPECT_TRUE(DecodeTarget(body).ok());
  body["syncs"][0] = std::string(256, 'n');
  ExpectError(DecodeTarget(body), 400, "invalid_value", "syncs[0]");
}

// ---- DecodeTrigger ----

TEST(DecodeTrigger, Modes) {
  auto mode_of = [](const std::string& extra) {
    auto d = DecodeTrigger(J(R"({"provider_config_key": "g", "syncs": ["a"])" + extra + "}"));
    EXPECT_TRUE(d.ok()) << extra << ": " << (d.ok() ? "" : d.error().message);
    return d.ok() ? d->mode : RunMode::kIncremental;
  };
  EXPECT_EQ(mode_of(""), RunMode::kIncremental);
  EXPECT_EQ(mode_of(R"(, "opts": {})"), RunMode::kIncremental);
  EXPECT_EQ(mode_of(R"(, "opts": null)"), RunMode::kIncremental);
  EXPECT_EQ(mode_of(R"(, "opts": {"reset": false})"), RunMode::kIncremental);
  EXPECT_EQ(mode_of(R"(, "opts": {"reset": true})"), RunMode::kFullResync);
  EXPECT_EQ(mode_of(R"(, "opts": {"reset": true, "emptyCache": true})"), RunMode::kFullResync);
  EXPECT_EQ(mode_of(R"(, "opts": {"emptyCache": true})"), RunMode::kIncremental);
  EXPECT_EQ(mode_of(R"(, "sync_mode": "incremental")"), RunMode::kIncremental);
  EXPECT_EQ(mode_of(R"(, "sync_mode": "full_refresh")"), RunMode::kFullResync);
  EXPECT_EQ(mode_of(R"(, "sync_mode": "full_refresh_and_clear_cache")"), RunMode::kFullResync);
  EXPECT_EQ(mode_of(R"(, "full_resync": true)"), RunMode::kFullResync);
  EXPECT_EQ(mode_of(R"(, "full_resync": false)"), RunMode::kIncremental);
}

TEST(DecodeTrigger, CarriesTheTarget) {
  auto d = DecodeTrigger(J(
      R"({"provider_config_key": "g", "connection_id": "c", "syncs": [{"name": "a", "variant": "v"}]})"));
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->target.integration, "g");
  EXPECT_EQ(d->target.connection, "c");
  EXPECT_EQ(d->target.syncs, (std::vector<SyncSelector>{{"a", "v"}}));
}

TEST(DecodeTrigger, EveryFieldError) {
  auto err = [](const std::string& extra) {
    return DecodeTrigger(J(R"({"provider_config_key": "g", "syncs": [])" + extra + "}"));
  };
  ExpectError(err(R"(, "opts": true)"), 400, "invalid_type", "opts");
  ExpectError(err(R"(, "opts": {"reset": "yes"})"), 400, "invalid_type", "opts.reset");
  ExpectError(err(R"(, "opts": {"emptyCache": 1})"), 400, "invalid_type", "opts.emptyCache");
  ExpectError(err(R"(, "opts": {"reset": true, "force": true})"), 400, "unknown_field",
              "opts.force");
  ExpectError(err(R"(, "sync_mode": 1)"), 400, "invalid_type", "sync_mode");
  ExpectError(err(R"(, "sync_mode": "full")"), 400, "invalid_value", "sync_mode");
  ExpectError(err(R"(, "full_resync": "true")"), 400, "invalid_type", "full_resync");
  ExpectError(err(R"(, "opts": {"reset": true}, "sync_mode": "incremental")"), 400,
              "conflicting_fields", "opts");
  ExpectError(err(R"(, "sync_mode": "incremental", "full_resync": true)"), 400,
              "conflicting_fields", "sync_mode");
  ExpectError(err(R"(, "mode": "incremental")"), 400, "unknown_field", "mode");
  ExpectError(DecodeTrigger(J(R"({"syncs": []})")), 400, "missing_field", "provider_config_key");
  ExpectError(DecodeTrigger(J(R"({"provider_config_key": "g"})")), 400, "missing_field", "syncs");
}

// ---- DecodeStatusQuery ----

Decoded<Target> StatusQuery(const std::string& query) {
  auto q = ParseQuery(query);
  EXPECT_TRUE(q.ok());
  return DecodeStatusQuery(q.value());
}

TEST(DecodeStatusQuery, StarNamesAndVariants) {
  auto all = StatusQuery("provider_config_key=github&syncs=*");
  ASSERT_TRUE(all.ok());
  EXPECT_TRUE(all->syncs.empty());
  EXPECT_FALSE(all->connection);
  auto some = StatusQuery("provider_config_key=github&connection_id=acme%20corp&syncs=a,b::v");
  ASSERT_TRUE(some.ok());
  EXPECT_EQ(some->connection, "acme corp");
  EXPECT_EQ(some->syncs, (std::vector<SyncSelector>{{"a", "base"}, {"b", "v"}}));
  auto encoded = StatusQuery("syncs=a%2Cb%3A%3Av&provider_config_key=my+app");
  ASSERT_TRUE(encoded.ok());
  EXPECT_EQ(encoded->integration, "my app");
  EXPECT_EQ(encoded->syncs.size(), 2u);
}

TEST(DecodeStatusQuery, EveryFieldError) {
  ExpectError(StatusQuery("syncs=*"), 400, "missing_field", "provider_config_key");
  ExpectError(StatusQuery("provider_config_key=g"), 400, "missing_field", "syncs");
  ExpectError(StatusQuery("provider_config_key=g&syncs="), 400, "invalid_value", "syncs");
  ExpectError(StatusQuery("provider_config_key=g&syncs=a,,b"), 400, "invalid_value", "syncs");
  ExpectError(StatusQuery("provider_config_key=g&syncs=a,"), 400, "invalid_value", "syncs");
  ExpectError(StatusQuery("provider_config_key=g&syncs=a::b::c"), 400, "invalid_value", "syncs");
  ExpectError(StatusQuery("provider_config_key=a/b&syncs=*"), 400, "invalid_value",
              "provider_config_key");
  ExpectError(StatusQuery("provider_config_key=g&syncs=*&connection_id="), 400, "invalid_value",
              "connection_id");
  ExpectError(StatusQuery("provider_config_key=g&syncs=*&model=x"), 400, "unknown_field", "model");
  auto dup = ParseQuery("provider_config_key=g&syncs=*&syncs=a");
  ExpectError(dup, 400, "invalid_value", "syncs");
}

TEST(DecodeStatusQuery, AtMost256Syncs) {
  std::string list;
  for (int i = 0; i < 256; ++i) list += (i ? "," : "") + ("s" + std::to_string(i));
  EXPECT_TRUE(StatusQuery("provider_config_key=g&syncs=" + list).ok());
  ExpectError(StatusQuery("provider_config_key=g&syncs=" + list + ",x"), 400, "too_many_syncs",
              "syncs");
}

// ---- DecodeFrequencyUpdate ----

TEST(DecodeFrequencyUpdate, StringNullAndVariant) {
  auto d = DecodeFrequencyUpdate(J(R"({"provider_config_key": "g", "connection_id": "c",
      "sync_name": "issues", "frequency": "every 2h"})"));
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->key, (ScheduleKey{"g", "c", "issues", "base"}));
  EXPECT_EQ(d->frequency, "every 2h");
  auto revert = DecodeFrequencyUpdate(J(R"({"provider_config_key": "g", "connection_id": "c",
      "sync_name": "issues", "sync_variant": "v2", "frequency": null})"));
  ASSERT_TRUE(revert.ok());
  EXPECT_EQ(revert->key.variant, "v2");
  EXPECT_FALSE(revert->frequency.has_value());
}

TEST(DecodeFrequencyUpdate, EveryFieldError) {
  auto with = [](const std::string& fields) {
    return DecodeFrequencyUpdate(J("{" + fields + "}"));
  };
  const std::string base = R"("provider_config_key": "g", "connection_id": "c", "sync_name": "s")";
  ExpectError(with(base), 400, "missing_field", "frequency");
  ExpectError(with(base + R"(, "frequency": 30)"), 400, "invalid_type", "frequency");
  ExpectError(with(base + R"(, "frequency": {"every": "1h"})"), 400, "invalid_type", "frequency");
  ExpectError(with(base + R"(, "frequency": "1h", "sync_variant": 2)"), 400, "invalid_type",
              "sync_variant");
  ExpectError(with(base + R"(, "frequency": "1h", "sync_variant": "a b")"), 400, "invalid_value",
              "sync_variant");
  ExpectError(with(base + R"(, "frequency": "1h", "extra": 1)"), 400, "unknown_field", "extra");
  ExpectError(with(R"("connection_id": "c", "sync_name": "s", "frequency": "1h")"), 400,
              "missing_field", "provider_config_key");
  ExpectError(with(R"("provider_config_key": "g", "sync_name": "s", "frequency": "1h")"), 400,
              "missing_field", "connection_id");
  ExpectError(
      with(
          R"("provider_config_key": "g", "connection_id": null, "sync_name": "s", "frequency": "1h")"),
      400, "invalid_type", "connection_id");
  ExpectError(with(R"("provider_config_key": "g", "connection_id": "c", "frequency": "1h")"), 400,
              "missing_field", "sync_name");
  ExpectError(
      with(
          R"("provider_config_key": "g", "connection_id": "c", "sync_name": 1, "frequency": "1h")"),
      400, "invalid_type", "sync_name");
  ExpectError(
      with(
          R"("provider_config_key": "g", "connection_id": "c", "sync_name": "a::b", "frequency": "1h")"),
      400, "invalid_value", "sync_name");
  ExpectError(DecodeFrequencyUpdate(J("[1]")), 400, "invalid_body", "");
}

// ---- Variants and connections ----

TEST(DecodeVariant, PathAndBody) {
  auto d =
      DecodeVariant("issues", "eu", J(R"({"provider_config_key": "g", "connection_id": "c"})"));
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(*d, (ScheduleKey{"g", "c", "issues", "eu"}));
  Json body = J(R"({"provider_config_key": "g", "connection_id": "c"})");
  ExpectError(DecodeVariant("is sues", "eu", body), 400, "invalid_value", "name");
  ExpectError(DecodeVariant("issues", "e:u", body), 400, "invalid_variant", "variant");
  ExpectError(DecodeVariant("issues", "", body), 400, "invalid_variant", "variant");
  ExpectError(DecodeVariant("issues", "eu", J(R"({"provider_config_key": "g"})")), 400,
              "missing_field", "connection_id");
  ExpectError(DecodeVariant("issues", "eu", J(R"({"connection_id": "c"})")), 400, "missing_field",
              "provider_config_key");
  ExpectError(DecodeVariant("issues", "eu",
                            J(R"({"provider_config_key": "g", "connection_id": "c", "x": 1})")),
              400, "unknown_field", "x");
}

TEST(DecodeConnections, CreateAndDelete) {
  auto c = DecodeCreateConnection(J(R"({"provider_config_key": "g", "connection_id": "c"})"));
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->integration, "g");
  EXPECT_EQ(c->connection, "c");
  ExpectError(DecodeCreateConnection(J(R"({"provider_config_key": "g"})")), 400, "missing_field",
              "connection_id");
  ExpectError(DecodeCreateConnection(
                  J(R"({"provider_config_key": "g", "connection_id": "c", "credentials": {}})")),
              400, "unknown_field", "credentials");

  auto q = ParseQuery("provider_config_key=g");
  ASSERT_TRUE(q.ok());
  auto d = DecodeDeleteConnection("acme corp", *q);
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->connection, "acme corp");
  ExpectError(DecodeDeleteConnection("acme", {}), 400, "missing_field", "provider_config_key");
  ExpectError(DecodeDeleteConnection("acme", {{"provider_config_key", "g"}, {"x", "1"}}), 400,
              "unknown_field", "x");
  ExpectError(DecodeDeleteConnection("a\x01", *q), 400, "invalid_value", "connection_id");
}

TEST(DecodeForecastQuery, HoursAndIntegration) {
  auto q = [](const std::string& text) { return ParseQuery(text).value(); };
  auto one = DecodeForecastQuery(q("hours=1"));
  ASSERT_TRUE(one.ok()) << one.error().message;
  EXPECT_EQ(one->hours, 1);
  EXPECT_FALSE(one->integration.has_value());
  auto week = DecodeForecastQuery(q("provider_config_key=my+app&hours=168"));
  ASSERT_TRUE(week.ok()) << week.error().message;
  EXPECT_EQ(week->hours, 168);
  EXPECT_EQ(week->integration, "my app");
  ExpectError(DecodeForecastQuery(q("")), 400, "missing_field", "hours");
  ExpectError(DecodeForecastQuery(q("provider_config_key=g")), 400, "missing_field", "hours");
  for (const char* bad : {"hours=0", "hours=169", "hours=-1", "hours=1h", "hours=1.5",
                          "hours=", "hours=+1", "hours=99999999999999999999"}) {
    ExpectError(DecodeForecastQuery(q(bad)), 400, "invalid_value", "hours");
  }
  ExpectError(DecodeForecastQuery(q("hours=1&provider_config_key=a/b")), 400, "invalid_value",
              "provider_config_key");
  ExpectError(DecodeForecastQuery(q("hours=1&syncs=*")), 400, "unknown_field", "syncs");
}

// ---- Responses ----

TEST(Encode, StatusItemHasNangosFields) {
  ScheduleStatus s;
  s.key = {"github", "acme", "issues", "base"};
  s.id = 42;
  s.state = ScheduleState::kStarted;
  s.status = RunStatus::kError;
  s.frequency = std::chrono::minutes(30);
  s.next_run = TimePoint(std::chrono::seconds(1767225600));
  s.last_start = TimePoint(std::chrono::seconds(1767225000));
  s.last_finish = TimePoint(std::chrono::seconds(1767225001));
  s.last_ok = false;
  s.last_error = "boom";
  s.last_counts = {ModelCounts{"Issue", 1, 2, 3}};
  s.runs = 3;
  s.failures = 1;
  s.skipped = 2;
  Json j = EncodeScheduleStatus(s);
  EXPECT_EQ(j["id"], "42");
  EXPECT_EQ(j["connection_id"], "acme");
  EXPECT_EQ(j["name"], "issues");
  EXPECT_EQ(j["variant"], "base");
  EXPECT_EQ(j["status"], "ERROR");
  EXPECT_EQ(j["schedule_status"], "STARTED");
  EXPECT_EQ(j["frequency"], "30m");
  EXPECT_EQ(j["nextScheduledSyncAt"], "2026-01-01T00:00:00.000Z");
  EXPECT_EQ(j["finishedAt"], "2025-12-31T23:50:01.000Z");
  EXPECT_EQ(j["latestResult"]["Issue"], (Json{{"added", 1}, {"updated", 2}, {"deleted", 3}}));
  EXPECT_EQ(j["latestExecutionStatus"], "ERROR");
  EXPECT_EQ(j["recordCount"], Json::object());
  EXPECT_EQ(j["error"], "boom");
  EXPECT_EQ(j["runs"], 3);
  EXPECT_EQ(j["failures"], 1);
  EXPECT_EQ(j["skipped"], 2);
  EXPECT_TRUE(j["waitingSince"].is_null());
  EXPECT_TRUE(j["nextRetryAt"].is_null());
  EXPECT_EQ(j["unrecorded"], false);
  EXPECT_EQ(j["decisions"], Json::array());
}

TEST(Encode, StatusItemSaysWhyNot) {
  ScheduleStatus s;
  s.key = {"g", "c", "s", "base"};
  s.frequency = std::chrono::hours(1);
  s.waiting_since = TimePoint(std::chrono::seconds(1767225600));
  s.next_retry = TimePoint(std::chrono::seconds(1767225660));
  s.unrecorded = true;
  s.decisions = {Decision{TimePoint(std::chrono::seconds(1767225000)), Reason::kSkippedOverlap,
                          "a run was in flight"},
                 Decision{TimePoint(std::chrono::milliseconds(1767225600500)),
                          Reason::kWaitingForCap, "max_concurrent_runs reached"}};
  Json j = EncodeScheduleStatus(s);
  EXPECT_EQ(j["waitingSince"], "2026-01-01T00:00:00.000Z");
  EXPECT_EQ(j["nextRetryAt"], "2026-01-01T00:01:00.000Z");
  EXPECT_EQ(j["unrecorded"], true);
  EXPECT_EQ(j["decisions"], J(R"([{"at": "2025-12-31T23:50:00.000Z", "reason": "skipped_overlap",
                   "detail": "a run was in flight"},
                  {"at": "2026-01-01T00:00:00.500Z", "reason": "waiting_for_cap",
                   "detail": "max_concurrent_runs reached"}])"));
}

TEST(Encode, ForecastKeepsTheMinutesWithRuns) {
  TimePoint t(std::chrono::seconds(1767225600));
  std::vector<ForecastMinute> minutes = {
      {t, 2}, {t + std::chrono::minutes(1), 0}, {t + std::chrono::minutes(2), 1}};
  EXPECT_EQ(EncodeForecast(minutes),
            J(R"({"minutes": [{"at": "2026-01-01T00:00:00.000Z", "runs": 2},
                              {"at": "2026-01-01T00:02:00.000Z", "runs": 1}]})"));
  EXPECT_EQ(Dump(EncodeForecast({})), R"({"minutes":[]})");
}

TEST(Encode, StatusItemNullsBeforeTheFirstRun) {
  ScheduleStatus s;
  s.key = {"g", "c", "s", "v"};
  s.frequency = std::chrono::hours(1);
  Json j = EncodeScheduleStatus(s);
  EXPECT_TRUE(j["nextScheduledSyncAt"].is_null());
  EXPECT_TRUE(j["finishedAt"].is_null());
  EXPECT_TRUE(j["latestExecutionStatus"].is_null());
  EXPECT_TRUE(j["error"].is_null());
  EXPECT_EQ(j["status"], "PAUSED");
  EXPECT_EQ(j["frequency"], "1h");
  s.status = RunStatus::kRunning;
  EXPECT_EQ(EncodeScheduleStatus(s)["latestExecutionStatus"], "RUNNING");
}

TEST(Encode, SimpleBodies) {
  EXPECT_EQ(Dump(EncodeSuccess()), R"({"success":true})");
  EXPECT_EQ(Dump(EncodeFrequency(std::chrono::hours(2))), R"({"frequency":"2h"})");
  EXPECT_EQ(Dump(EncodeVariantCreated({"g", "c", "s", "v"}, 7)),
            R"({"id":"7","name":"s","variant":"v"})");
  EXPECT_EQ(Dump(EncodeStatuses({})), R"({"syncs":[]})");
}

TEST(Encode, ErrorBody) {
  ApiError e{404, "unknown_connection", "connection \"x\" does not exist", "connection_id"};
  Json j = EncodeError(e);
  EXPECT_EQ(j["message"], e.message);
  EXPECT_EQ(j["code"], "unknown_connection");
  EXPECT_EQ(j["field"], "connection_id");
  EXPECT_EQ(j["error"]["code"], "unknown_connection");
  ApiError no_field{400, "invalid_json", "bad", std::nullopt};
  EXPECT_FALSE(EncodeError(no_field).contains("field"));
}

TEST(Encode, DumpReplacesInvalidUtf8) {
  ScheduleStatus s;
  s.last_error = "tail cut in the middle of \xe2\x82";
  std::string text;
  EXPECT_NO_THROW(text = Dump(EncodeScheduleStatus(s)));
  EXPECT_NE(text.find("\xEF\xBF\xBD"), std::string::npos) << text;
}

// ---- Errors ----

TEST(ErrorFromStatus, MapsEveryCodeAndSubject) {
  using S = syncsched::StatusSubject;
  const RequestFields kPath{.sync = "name", .variant = "variant", .variant_in_path = true};
  auto map = [](const syncsched::Status& s, const RequestFields& fields = {}) {
    return ErrorFromStatus(s, fields);
  };
  EXPECT_EQ(map(Status::InvalidArgument("x")).http_status, 400u);
  EXPECT_EQ(map(Status::InvalidArgument("x")).code, "invalid_argument");
  EXPECT_EQ(map(Status::InvalidArgument("x")).field, std::nullopt);
  EXPECT_EQ(map(Status::InvalidField("frequency", "x")).code, "invalid_frequency");
  EXPECT_EQ(map(Status::InvalidField("frequency", "x")).field, "frequency");
  EXPECT_EQ(map(Status::InvalidField("horizon", "x")).code, "invalid_argument");
  EXPECT_EQ(map(Status::InvalidField("horizon", "x")).field, "horizon");
  EXPECT_EQ(map(Status::InvalidArgument("x", S::kVariant), kPath).code, "invalid_variant");
  EXPECT_EQ(map(Status::InvalidArgument("x", S::kVariant), kPath).field, "variant");
  EXPECT_EQ(map(Status::InvalidArgument("x", S::kConnection)).field, "connection_id");
  EXPECT_EQ(map(Status::NotFound("x", S::kIntegration)).http_status, 400u);
  EXPECT_EQ(map(Status::NotFound("x", S::kIntegration)).code, "unknown_provider_config");
  EXPECT_EQ(map(Status::NotFound("x", S::kIntegration)).field, "provider_config_key");
  EXPECT_EQ(map(Status::NotFound("x", S::kSync)).http_status, 400u);
  EXPECT_EQ(map(Status::NotFound("x", S::kSync)).code, "unknown_sync");
  EXPECT_EQ(map(Status::NotFound("x", S::kSync)).field, "syncs");
  EXPECT_EQ(map(Status::NotFound("x", S::kSync), kPath).field, "name");
  EXPECT_EQ(map(Status::NotFound("x", S::kConnection)).http_status, 404u);
  EXPECT_EQ(map(Status::NotFound("x", S::kConnection)).code, "unknown_connection");
  EXPECT_EQ(map(Status::NotFound("x", S::kConnection)).field, "connection_id");
  // A variant in the body or query is part of a sync selector; in the path, a resource.
  EXPECT_EQ(map(Status::NotFound("x", S::kVariant)).http_status, 400u);
  EXPECT_EQ(map(Status::NotFound("x", S::kVariant)).code, "unknown_sync");
  EXPECT_EQ(map(Status::NotFound("x", S::kVariant)).field, "syncs");
  EXPECT_EQ(map(Status::NotFound("x", S::kVariant), kPath).http_status, 404u);
  EXPECT_EQ(map(Status::NotFound("x", S::kVariant), kPath).code, "unknown_variant");
  EXPECT_EQ(map(Status::NotFound("x", S::kVariant), kPath).field, "variant");
  EXPECT_EQ(map(Status::NotFound("x")).http_status, 404u);
  EXPECT_EQ(map(Status::NotFound("x")).code, "not_found");
  EXPECT_EQ(map(Status::AlreadyExists("x", S::kConnection)).http_status, 409u);
  EXPECT_EQ(map(Status::AlreadyExists("x", S::kConnection)).code, "connection_already_exists");
  EXPECT_EQ(map(Status::AlreadyExists("x", S::kVariant)).code, "sync_variant_already_exists");
  EXPECT_EQ(map(Status::AlreadyExists("x")).code, "already_exists");
  EXPECT_EQ(map(Status::FailedPrecondition("x")).http_status, 409u);
  EXPECT_EQ(map(Status::FailedPrecondition("x")).field, std::nullopt);
  EXPECT_EQ(map(Status::Unavailable("x")).http_status, 503u);
  EXPECT_EQ(map(Status::Cancelled("x")).http_status, 503u);
  EXPECT_EQ(map(Status::DeadlineExceeded("x")).http_status, 504u);
  EXPECT_EQ(map(Status::Internal("x")).http_status, 500u);
  EXPECT_EQ(map(Status::Internal("x")).code, "internal_error");
  ApiError e = ErrorFromStatus(Status::NotFound("no such thing", S::kSync));
  EXPECT_EQ(e.message, "no such thing");
  EXPECT_EQ(e.field, "syncs");
}

TEST(Errors, HttpLayerErrorsHaveStableCodes) {
  EXPECT_EQ(errors::Unauthorized("x").http_status, 401u);
  EXPECT_EQ(errors::MissingScope("environment:syncs:execute").http_status, 403u);
  EXPECT_NE(
      errors::MissingScope("environment:syncs:execute").message.find("environment:syncs:execute"),
      std::string::npos);
  EXPECT_EQ(errors::RouteNotFound("GET", "/x").http_status, 404u);
  EXPECT_EQ(errors::MethodNotAllowed("GET", "/sync/start", "POST").http_status, 405u);
  EXPECT_EQ(errors::PayloadTooLarge(10).http_status, 413u);
  EXPECT_EQ(errors::HeadersTooLarge(10).http_status, 431u);
  EXPECT_EQ(errors::TooManyConnections().http_status, 503u);
}

// ---- Names ----

TEST(Names, Validation) {
  EXPECT_TRUE(ValidateIntegrationKey("github").ok());
  EXPECT_FALSE(ValidateIntegrationKey("").ok());
  EXPECT_FALSE(ValidateIntegrationKey("a\tb").ok());
  EXPECT_TRUE(ValidateConnectionId("any thing/at all?").ok());
  EXPECT_FALSE(ValidateConnectionId(std::string(256, 'c')).ok());
  EXPECT_FALSE(ValidateConnectionId("a\x7f").ok());
  // Every control character: C0, DEL, and C1 (U+0080..U+009F, C2 80..C2 9F in UTF-8); and bytes
  // that are not UTF-8. The message names the field and the character, quoted escaped.
  for (std::string bad :
       {std::string("a\0b", 3), std::string("\x1f"), std::string("\xc2\x80"),
        std::string("x\xc2\x85y"), std::string("\xc2\x9f"), std::string("\xff"),
        std::string("\xc2"), std::string("\xe0\x80\x80"), std::string("\xed\xa0\x80")}) {
    Status s = ValidateConnectionId(bad);
    EXPECT_TRUE(s.IsInvalidArgument()) << bad;
    EXPECT_EQ(s.message().rfind("connection_id \"", 0), 0u) << s.message();
  }
  EXPECT_NE(ValidateConnectionId("x\xc2\x85y").message().find("U+0085 at byte 1"),
            std::string::npos)
      << ValidateConnectionId("x\xc2\x85y").message();
  EXPECT_NE(ValidateConnectionId("x\xc2\x85y").message().find("\"x\\u0085y\""), std::string::npos)
      << ValidateConnectionId("x\xc2\x85y").message();
  for (std::string good : {"caf\xc3\xa9",
                           "a\xc2\xa0"
                           "b",
                           "\xe2\x80\xa8", "\xf0\x9f\x98\x80"}) {
    EXPECT_TRUE(ValidateConnectionId(good).ok()) << good;
  }
  EXPECT_EQ(ValidateIntegrationKey("a\tb").message().rfind("provider_config_key ", 0), 0u);
  EXPECT_TRUE(ValidateSyncName("a-b_C9").ok());
  EXPECT_FALSE(ValidateSyncName("a.b").ok());
}

// ---- Prometheus ----

TEST(Prometheus, CumulativeHistogramsAndCounters) {
  EngineMetrics m;
  m.runs_started = 5;
  m.schedules_started = 2;
  m.run_duration_seconds.bounds = {0.1, 1};
  m.run_duration_seconds.counts = {2, 1, 1};
  m.run_duration_seconds.count = 4;
  m.run_duration_seconds.sum = 3.5;
  DaemonMetrics d;
  d.http_responses[200] = 9;
  std::string text = EncodePrometheus(m, d);
  EXPECT_NE(text.find("syncsched_runs_started_total 5\n"), std::string::npos) << text;
  EXPECT_NE(text.find("syncsched_schedules{state=\"started\"} 2\n"), std::string::npos);
  EXPECT_NE(text.find("syncsched_run_duration_seconds_bucket{le=\"0.1\"} 2\n"), std::string::npos)
      << text;
  EXPECT_NE(text.find("syncsched_run_duration_seconds_bucket{le=\"1\"} 3\n"), std::string::npos);
  EXPECT_NE(text.find("syncsched_run_duration_seconds_bucket{le=\"+Inf\"} 4\n"), std::string::npos);
  EXPECT_NE(text.find("syncsched_run_duration_seconds_count 4\n"), std::string::npos);
  EXPECT_NE(text.find("syncschedd_http_responses_total{code=\"200\"} 9\n"), std::string::npos);
  EXPECT_NE(text.find("# TYPE syncsched_runs_started_total counter\n"), std::string::npos);
}

TEST(Prometheus, RetriesAndWaits) {
  EngineMetrics m;
  m.retries = 7;
  m.runs_waiting = 3;
  m.wait_seconds.bounds = {1, 10};
  m.wait_seconds.counts = {1, 2, 1};
  m.wait_seconds.count = 4;
  m.wait_seconds.sum = 42;
  std::string text = EncodePrometheus(m, DaemonMetrics{});
  EXPECT_NE(
      text.find("# TYPE syncsched_runs_retried_total counter\nsyncsched_runs_retried_total 7\n"),
      std::string::npos)
      << text;
  EXPECT_NE(text.find("syncsched_runs_waiting 3\n"), std::string::npos);
  EXPECT_NE(text.find("# TYPE syncsched_run_wait_seconds histogram\n"), std::string::npos);
  EXPECT_NE(text.find("syncsched_run_wait_seconds_bucket{le=\"1\"} 1\n"), std::string::npos);
  EXPECT_NE(text.find("syncsched_run_wait_seconds_bucket{le=\"10\"} 3\n"), std::string::npos);
  EXPECT_NE(text.find("syncsched_run_wait_seconds_bucket{le=\"+Inf\"} 4\n"), std::string::npos);
  EXPECT_NE(text.find("syncsched_run_wait_seconds_sum 42\n"), std::string::npos);
}

// Issue 13: the cluster's figures, in cluster mode only.
TEST(Prometheus, ClusterFiguresInClusterModeOnly) {
  EngineMetrics m;
  std::string single = EncodePrometheus(m, DaemonMetrics{});
  EXPECT_EQ(single.find("syncsched_cluster_"), std::string::npos) << single;
  m.cluster_partitions_total = 64;
  m.cluster_partitions_owned = 21;
  m.cluster_nodes_live = 3;
  m.cluster_lease_renewals = 100;
  m.cluster_claims = 30;
  m.cluster_takeovers = 5;
  m.cluster_releases = 9;
  m.cluster_leases_lost = 2;
  m.cluster_fenced_refusals = 1;
  m.cluster_catalog_version = 17;
  m.cluster_catalog_revocations = 4;
  std::string text = EncodePrometheus(m, DaemonMetrics{});
  for (const char* line : {
           "# TYPE syncsched_cluster_partitions_owned gauge\nsyncsched_cluster_partitions_owned "
           "21\n",
           "# TYPE syncsched_cluster_partitions gauge\nsyncsched_cluster_partitions 64\n",
           "# TYPE syncsched_cluster_nodes_live gauge\nsyncsched_cluster_nodes_live 3\n",
           "# TYPE syncsched_cluster_lease_renewals_total counter\n"
           "syncsched_cluster_lease_renewals_total 100\n",
           "syncsched_cluster_claims_total 30\n",
           "# TYPE syncsched_cluster_takeovers_total counter\nsyncsched_cluster_takeovers_total "
           "5\n",
           "syncsched_cluster_releases_total 9\n",
           "syncsched_cluster_leases_lost_total 2\n",
           "# TYPE syncsched_cluster_fenced_writes_refused_total counter\n"
           "syncsched_cluster_fenced_writes_refused_total 1\n",
           "# TYPE syncsched_cluster_catalog_version gauge\nsyncsched_cluster_catalog_version 17\n",
           "# TYPE syncsched_cluster_catalog_revocations_total counter\n"
           "syncsched_cluster_catalog_revocations_total 4\n",
           "# HELP syncsched_cluster_takeovers_total ",
       }) {
    EXPECT_NE(text.find(line), std::string::npos) << line << "\n" << text;
  }
}

}  // namespace
}  // namespace syncsched::codec
