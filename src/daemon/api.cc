// Routing and engine calls of the HTTP API. See api.h.
#include "daemon/api.h"

#include <exception>
#include <utility>

#include "codec/url.h"
#include "core/names.h"

namespace syncsched::daemon {
namespace {

using codec::ApiError;
using codec::Json;

HttpResponse JsonResponse(unsigned status, const Json& body) {
  HttpResponse r;
  r.status = status;
  r.body = codec::Dump(body);
  return r;
}

// `{"success": true}`, encoded once.
HttpResponse SuccessResponse() {
  static const std::string kBody = codec::Dump(codec::EncodeSuccess());
  HttpResponse r;
  r.body = kBody;
  return r;
}

// How each route names the parts of a key, for the engine's errors (codec::ErrorFromStatus).
constexpr codec::RequestFields kTargetFields{};  // start, pause, trigger, status, connections
constexpr codec::RequestFields kFrequencyFields{.sync = "sync_name", .variant = "sync_variant"};
constexpr codec::RequestFields kVariantFields{
    .sync = "name", .variant = "variant", .variant_in_path = true};

HttpResponse StatusResponse(const Status& s, const codec::RequestFields& fields = kTargetFields) {
  return Api::ErrorResponse(codec::ErrorFromStatus(s, fields));
}

// "/sync/{name}/variant/{variant}" -> {"sync", "{name}", "variant", "{variant}"}.
std::vector<std::string_view> PatternSegments(std::string_view pattern) {
  std::vector<std::string_view> out;
  std::size_t i = pattern.empty() || pattern[0] != '/' ? 0 : 1;
  while (i <= pattern.size()) {
    std::size_t slash = pattern.find('/', i);
    if (slash == std::string_view::npos) slash = pattern.size();
    out.push_back(pattern.substr(i, slash - i));
    i = slash + 1;
  }
  return out;
}

bool IsParameter(std::string_view segment) {
  return segment.size() >= 2 && segment.front() == '{' && segment.back() == '}';
}

}  // namespace

// The route table. Everything about a route is here; see RouteInfo in api.h.
const std::vector<Api::RouteEntry>& Api::Table() {
  static const std::vector<RouteEntry> kTable = {
      {{"GET", "/health", {}, Takes::kNone}, &Api::OnHealth},
      {{"GET", "/metrics", kScopeSyncsRead, Takes::kNone}, &Api::OnMetrics},
      {{"POST", "/sync/start", kScopeSyncsExecute, Takes::kBody}, &Api::OnStart},
      {{"POST", "/sync/pause", kScopeSyncsExecute, Takes::kBody}, &Api::OnPause},
      {{"POST", "/sync/trigger", kScopeSyncsExecute, Takes::kBody}, &Api::OnTrigger},
      {{"GET", "/sync/status", kScopeSyncsRead, Takes::kQuery}, &Api::OnStatus},
      {{"GET", "/schedules/forecast", kScopeSyncsRead, Takes::kQuery}, &Api::OnForecast},
      {{"PUT", "/sync/update-connection-frequency", kScopeSyncsUpdate, Takes::kBody},
       &Api::OnFrequency},
      {{"POST", "/sync/{name}/variant/{variant}", kScopeSyncsUpdate, Takes::kBody},
       &Api::OnCreateVariant},
      {{"DELETE", "/sync/{name}/variant/{variant}", kScopeSyncsUpdate, Takes::kBody},
       &Api::OnDeleteVariant},
      {{"POST", "/connections", kScopeConnectionsWrite, Takes::kBody}, &Api::OnAddConnection},
      {{"DELETE", "/connections/{connection_id}", kScopeConnectionsWrite, Takes::kQuery},
       &Api::OnDeleteConnection},
  };
  return kTable;
}

std::vector<Api::RouteInfo> Api::Routes() {
  std::vector<RouteInfo> out;
  for (const RouteEntry& e : Table()) out.push_back(e.info);
  return out;
}

Api::Api(Engine& engine, const Config& config, Logger& log,
         std::function<codec::DaemonMetrics()> daemon_metrics)
    : engine_(engine),
      log_(log),
      node_(config.node),
      auth_(config.api_keys),
      daemon_metrics_(std::move(daemon_metrics)),
      max_json_depth_(config.limits.max_json_depth) {}

HttpResponse Api::ErrorResponse(const ApiError& error) {
  HttpResponse r = JsonResponse(error.http_status, codec::EncodeError(error));
  r.authenticate = error.http_status == 401;
  return r;
}

Api::Resolved Api::Resolve(std::string_view method, std::string_view path) {
  auto segments = codec::SplitPath(path);
  if (!segments.ok()) return {std::nullopt, segments.error(), {}};
  const std::vector<std::string>& s = segments.value();

  // The patterns are parsed once; the table never changes.
  static const std::vector<std::vector<std::string_view>> kPatterns = [] {
    std::vector<std::vector<std::string_view>> out;
    for (const RouteEntry& e : Table()) out.push_back(PatternSegments(e.info.pattern));
    return out;
  }();
  const std::vector<RouteEntry>& table = Table();
  std::string allow;  // the methods of the routes whose pattern matches, in table order
  for (std::size_t i = 0; i < table.size(); ++i) {
    const std::vector<std::string_view>& p = kPatterns[i];
    if (p.size() != s.size()) continue;
    bool match = true;
    for (std::size_t k = 0; k < p.size() && match; ++k) match = IsParameter(p[k]) || p[k] == s[k];
    if (!match) continue;
    if (table[i].info.method == method) {
      Route route{i, {}};
      for (std::size_t k = 0; k < p.size(); ++k) {
        if (IsParameter(p[k])) route.params.push_back(s[k]);
      }
      return {std::move(route), std::nullopt, {}};
    }
    if (!allow.empty()) allow += ", ";
    allow += table[i].info.method;
  }
  if (allow.empty()) return {std::nullopt, codec::errors::RouteNotFound(method, path), {}};
  return {std::nullopt, codec::errors::MethodNotAllowed(method, path, allow), allow};
}

std::optional<HttpResponse> Api::Admit(std::string_view method, std::string_view target,
                                       std::string_view authorization, Admitted& admitted) const {
  admitted.route_.reset();
  codec::RequestTarget t = codec::SplitTarget(target);
  Resolved resolved = Resolve(method, t.path);
  if (resolved.error) {
    HttpResponse r = ErrorResponse(*resolved.error);
    r.allow = resolved.allow;
    return r;
  }
  std::string_view scope = Table()[resolved.route->entry].info.scope;
  if (!scope.empty()) {
    if (auto denied = auth_.Check(authorization, scope)) return ErrorResponse(*denied);
  }
  admitted.route_ = std::move(*resolved.route);
  return std::nullopt;
}

HttpResponse Api::Handle(const HttpRequest& request, const Admitted& admitted) {
  try {
    if (!admitted.route_) {
      return ErrorResponse(codec::errors::Internal("a request was handled without being admitted"));
    }
    return Dispatch(*admitted.route_, request);
  } catch (const std::exception& e) {
    return ErrorResponse(codec::errors::Internal(std::string("unexpected error: ") + e.what()));
  }
}

HttpResponse Api::Dispatch(const Route& route, const HttpRequest& request) {
  const RouteEntry& entry = Table()[route.entry];
  const Takes takes = entry.info.takes;
  codec::RequestTarget target = codec::SplitTarget(request.target);
  auto query = codec::ParseQuery(target.query);
  if (!query.ok()) return ErrorResponse(query.error());
  if (takes != Takes::kQuery && !query->empty()) {
    return ErrorResponse(ApiError{400, "unknown_field",
                                  "unknown query parameter " +
                                      core::Quote(query->front().first, core::kMaxQuotedBytes) +
                                      "; this route takes none",
                                  query->front().first});
  }
  Json body;
  if (takes == Takes::kBody) {
    auto parsed = codec::ParseJsonBody(request.body, max_json_depth_);
    if (!parsed.ok()) return ErrorResponse(parsed.error());
    body = std::move(parsed.value());
  } else if (request.body.find_first_not_of(" \t\r\n") != std::string_view::npos) {
    return ErrorResponse(codec::errors::UnexpectedBody());
  }
  return (this->*entry.handler)(Call{request, route.params, *query, body});
}

// ---- Handlers ----

HttpResponse Api::OnHealth(const Call&) {
  // Unhealthy while the database refuses commits: no run starts then. The cause (it names the
  // file) is in the log and /metrics, which need a key; /health needs none.
  // GetHealth, not GetMetrics: it answers while a command waits on a stalled database.
  EngineHealth m = engine_.GetHealth();
  Json body = m.store_healthy
                  ? Json{{"status", "ok"}}
                  : Json{{"status", "unhealthy"},
                         {"reason", m.store_broken ? "the database store is broken for good; the "
                                                     "daemon is restarting itself (see the log)"
                                                   : "the database refuses commits; see the log"}};
  if (m.cluster_partitions_total > 0) {  // cluster mode
    body["node"] = node_;
    body["partitions"] = m.cluster_partitions_owned;
    body["partitions_total"] = m.cluster_partitions_total;
    body["nodes"] = m.cluster_nodes_live;
  }
  return JsonResponse(m.store_healthy ? 200 : 503, body);
}

HttpResponse Api::OnMetrics(const Call&) {
  HttpResponse r;
  r.content_type = "text/plain; version=0.0.4; charset=utf-8";
  r.body = codec::EncodePrometheus(engine_.GetMetrics(), daemon_metrics_());
  return r;
}

HttpResponse Api::OnStart(const Call& call) {
  auto t = codec::DecodeTarget(call.body);
  if (!t.ok()) return ErrorResponse(t.error());
  t->report_keys = false;
  Result<CommandResult> r = engine_.Start(*t);
  if (!r.ok()) return StatusResponse(r.status());
  return SuccessResponse();
}

HttpResponse Api::OnPause(const Call& call) {
  auto t = codec::DecodeTarget(call.body);
  if (!t.ok()) return ErrorResponse(t.error());
  t->report_keys = false;
  Result<CommandResult> r = engine_.Pause(*t);
  if (!r.ok()) return StatusResponse(r.status());
  return SuccessResponse();
}

HttpResponse Api::OnTrigger(const Call& call) {
  auto t = codec::DecodeTrigger(call.body);
  if (!t.ok()) return ErrorResponse(t.error());
  t->target.report_keys = false;
  Result<CommandResult> r = engine_.Trigger(t->target, t->mode);
  if (!r.ok()) return StatusResponse(r.status());
  return SuccessResponse();
}

HttpResponse Api::OnStatus(const Call& call) {
  auto t = codec::DecodeStatusQuery(call.query);
  if (!t.ok()) return ErrorResponse(t.error());
  Result<std::vector<ScheduleStatus>> r = engine_.GetStatus(*t);
  if (!r.ok()) return StatusResponse(r.status());
  return JsonResponse(200, codec::EncodeStatuses(*r));
}

HttpResponse Api::OnForecast(const Call& call) {
  auto req = codec::DecodeForecastQuery(call.query);
  if (!req.ok()) return ErrorResponse(req.error());
  Result<std::vector<ForecastMinute>> r =
      engine_.Forecast(std::chrono::hours(req->hours), req->integration);
  if (!r.ok()) return StatusResponse(r.status());
  Json body = codec::EncodeForecast(*r);
  // In a cluster an engine holds only the schedules of the partitions it owns, and its caps are
  // its own: the answer says whose forecast it is, so that nobody reads one node's as the
  // cluster's. The cluster's is the sum of every node's (partitions may move between the calls).
  if (EngineMetrics m = engine_.GetMetrics(); m.cluster_partitions_total > 0) {
    body["scope"] = Json{{"node", node_},
                         {"partitions", m.cluster_partitions_owned},
                         {"partitions_total", m.cluster_partitions_total}};
  }
  return JsonResponse(200, body);
}

HttpResponse Api::OnFrequency(const Call& call) {
  auto req = codec::DecodeFrequencyUpdate(call.body);
  if (!req.ok()) return ErrorResponse(req.error());
  Result<Millis> r = engine_.UpdateFrequency(req->key, req->frequency);
  if (!r.ok()) return StatusResponse(r.status(), kFrequencyFields);
  return JsonResponse(200, codec::EncodeFrequency(*r));
}

HttpResponse Api::OnCreateVariant(const Call& call) {
  auto key = codec::DecodeVariant(call.params[0], call.params[1], call.body);
  if (!key.ok()) return ErrorResponse(key.error());
  Result<ScheduleStatus> created = engine_.CreateVariant(*key);
  if (!created.ok()) return StatusResponse(created.status(), kVariantFields);
  // The new schedule's id, as Nango answers it.
  return JsonResponse(200, codec::EncodeVariantCreated(*key, created->id));
}

HttpResponse Api::OnDeleteVariant(const Call& call) {
  auto key = codec::DecodeVariant(call.params[0], call.params[1], call.body);
  if (!key.ok()) return ErrorResponse(key.error());
  Status s = engine_.DeleteVariant(*key);
  if (!s.ok()) return StatusResponse(s, kVariantFields);
  return SuccessResponse();
}

HttpResponse Api::OnAddConnection(const Call& call) {
  auto req = codec::DecodeCreateConnection(call.body);
  if (!req.ok()) return ErrorResponse(req.error());
  Status s = engine_.AddConnection(req->integration, req->connection);
  if (!s.ok()) return StatusResponse(s);
  log_.Info("connection added",
            {{"integration", req->integration}, {"connection", req->connection}});
  return JsonResponse(200, codec::EncodeConnectionCreated(*req));
}

HttpResponse Api::OnDeleteConnection(const Call& call) {
  auto req = codec::DecodeDeleteConnection(call.params[0], call.query);
  if (!req.ok()) return ErrorResponse(req.error());
  Status s = engine_.DeleteConnection(req->integration, req->connection);
  if (!s.ok()) return StatusResponse(s);
  log_.Info("connection deleted",
            {{"integration", req->integration}, {"connection", req->connection}});
  return SuccessResponse();
}

}  // namespace syncsched::daemon
