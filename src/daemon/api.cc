// Routing and engine calls of the HTTP API. See api.h.
#include "daemon/api.h"

#include <exception>
#include <utility>

#include "codec/url.h"

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

}  // namespace

Api::Api(Engine& engine, const Config& config, Logger& log,
         std::function<codec::DaemonMetrics()> daemon_metrics)
    : engine_(engine),
      log_(log),
      auth_(config.api_keys),
      daemon_metrics_(std::move(daemon_metrics)),
      max_json_depth_(config.limits.max_json_depth) {}

HttpResponse Api::ErrorResponse(const ApiError& error) {
  HttpResponse r = JsonResponse(error.http_status, codec::EncodeError(error));
  r.authenticate = error.http_status == 401;
  return r;
}

Api::Resolved Api::Resolve(std::string_view method, std::string_view path) const {
  auto segments = codec::SplitPath(path);
  if (!segments.ok()) return {std::nullopt, segments.error(), {}};
  const std::vector<std::string>& s = segments.value();

  std::optional<RouteId> id;
  std::string_view allow;
  std::vector<std::string> params;
  if (s.size() == 1 && s[0] == "health") {
    id = RouteId::kHealth, allow = "GET";
  } else if (s.size() == 1 && s[0] == "metrics") {
    id = RouteId::kMetrics, allow = "GET";
  } else if (s.size() == 1 && s[0] == "connections") {
    id = RouteId::kConnections, allow = "POST";
  } else if (s.size() == 2 && s[0] == "connections") {
    id = RouteId::kConnection, allow = "DELETE", params = {s[1]};
  } else if (s.size() == 2 && s[0] == "sync") {
    if (s[1] == "start") {
      id = RouteId::kStart, allow = "POST";
    } else if (s[1] == "pause") {
      id = RouteId::kPause, allow = "POST";
    } else if (s[1] == "trigger") {
      id = RouteId::kTrigger, allow = "POST";
    } else if (s[1] == "status") {
      id = RouteId::kStatus, allow = "GET";
    } else if (s[1] == "update-connection-frequency") {
      id = RouteId::kFrequency, allow = "PUT";
    }
  } else if (s.size() == 2 && s[0] == "schedules" && s[1] == "forecast") {
    id = RouteId::kForecast, allow = "GET";
  } else if (s.size() == 4 && s[0] == "sync" && s[2] == "variant") {
    id = RouteId::kVariant, allow = "POST, DELETE", params = {s[1], s[3]};
  }
  if (!id) return {std::nullopt, codec::errors::RouteNotFound(method, path), {}};
  bool allowed =
      method == allow || (allow == "POST, DELETE" && (method == "POST" || method == "DELETE"));
  if (!allowed) {
    return {std::nullopt, codec::errors::MethodNotAllowed(method, path, allow), std::string(allow)};
  }
  return {Route{*id, std::move(params)}, std::nullopt, {}};
}

std::string_view Api::ScopeOf(RouteId id) {
  switch (id) {
    case RouteId::kHealth:
      return {};
    case RouteId::kMetrics:
    case RouteId::kStatus:
    case RouteId::kForecast:
      return kScopeSyncsRead;
    case RouteId::kStart:
    case RouteId::kPause:
    case RouteId::kTrigger:
      return kScopeSyncsExecute;
    case RouteId::kFrequency:
    case RouteId::kVariant:
      return kScopeSyncsUpdate;
    case RouteId::kConnections:
    case RouteId::kConnection:
      return kScopeConnectionsWrite;
  }
  return kScopeAll;
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
  std::string_view scope = ScopeOf(resolved.route->id);
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
  codec::RequestTarget target = codec::SplitTarget(request.target);
  auto query = codec::ParseQuery(target.query);
  if (!query.ok()) return ErrorResponse(query.error());
  bool takes_query = route.id == RouteId::kStatus || route.id == RouteId::kForecast ||
                     route.id == RouteId::kConnection;
  if (!takes_query && !query->empty()) {
    return ErrorResponse(ApiError{400, "unknown_field",
                                  "unknown query parameter " +
                                      codec::Dump(Json(query->front().first)) +
                                      "; this route takes none",
                                  query->front().first});
  }
  bool takes_body = route.id != RouteId::kHealth && route.id != RouteId::kMetrics &&
                    route.id != RouteId::kStatus && route.id != RouteId::kForecast &&
                    route.id != RouteId::kConnection;
  Json body;
  if (takes_body) {
    auto parsed = codec::ParseJsonBody(request.body, max_json_depth_);
    if (!parsed.ok()) return ErrorResponse(parsed.error());
    body = std::move(parsed.value());
  } else if (request.body.find_first_not_of(" \t\r\n") != std::string_view::npos) {
    return ErrorResponse(codec::errors::UnexpectedBody());
  }

  switch (route.id) {
    case RouteId::kHealth: {
      // Unhealthy while the database refuses commits: no run starts then. The cause (it names
      // the file) is in the log and /metrics, which need a key; /health needs none.
      if (!engine_.GetMetrics().store_healthy) {
        return JsonResponse(503, Json{{"status", "unhealthy"},
                                      {"reason", "the database refuses commits; see the log"}});
      }
      return JsonResponse(200, Json{{"status", "ok"}});
    }

    case RouteId::kMetrics: {
      HttpResponse r;
      r.content_type = "text/plain; version=0.0.4; charset=utf-8";
      r.body = codec::EncodePrometheus(engine_.GetMetrics(), daemon_metrics_());
      return r;
    }

    case RouteId::kStart:
    case RouteId::kPause: {
      auto t = codec::DecodeTarget(body);
      if (!t.ok()) return ErrorResponse(t.error());
      t->report_keys = false;
      Result<CommandResult> r = route.id == RouteId::kStart ? engine_.Start(*t) : engine_.Pause(*t);
      if (!r.ok()) return StatusResponse(r.status());
      return SuccessResponse();
    }

    case RouteId::kTrigger: {
      auto t = codec::DecodeTrigger(body);
      if (!t.ok()) return ErrorResponse(t.error());
      t->target.report_keys = false;
      Result<CommandResult> r = engine_.Trigger(t->target, t->mode);
      if (!r.ok()) return StatusResponse(r.status());
      return SuccessResponse();
    }

    case RouteId::kStatus: {
      auto t = codec::DecodeStatusQuery(*query);
      if (!t.ok()) return ErrorResponse(t.error());
      Result<std::vector<ScheduleStatus>> r = engine_.GetStatus(*t);
      if (!r.ok()) return StatusResponse(r.status());
      return JsonResponse(200, codec::EncodeStatuses(*r));
    }

    case RouteId::kForecast: {
      auto req = codec::DecodeForecastQuery(*query);
      if (!req.ok()) return ErrorResponse(req.error());
      Result<std::vector<ForecastMinute>> r =
          engine_.Forecast(std::chrono::hours(req->hours), req->integration);
      if (!r.ok()) return StatusResponse(r.status());
      return JsonResponse(200, codec::EncodeForecast(*r));
    }

    case RouteId::kFrequency: {
      auto req = codec::DecodeFrequencyUpdate(body);
      if (!req.ok()) return ErrorResponse(req.error());
      Result<Millis> r = engine_.UpdateFrequency(req->key, req->frequency);
      if (!r.ok()) return StatusResponse(r.status(), kFrequencyFields);
      return JsonResponse(200, codec::EncodeFrequency(*r));
    }

    case RouteId::kVariant: {
      auto key = codec::DecodeVariant(route.params[0], route.params[1], body);
      if (!key.ok()) return ErrorResponse(key.error());
      if (request.method == "POST") {
        Result<ScheduleStatus> created = engine_.CreateVariant(*key);
        if (!created.ok()) return StatusResponse(created.status(), kVariantFields);
        // The new schedule's id, as Nango answers it.
        return JsonResponse(200, codec::EncodeVariantCreated(*key, created->id));
      }
      Status s = engine_.DeleteVariant(*key);
      if (!s.ok()) return StatusResponse(s, kVariantFields);
      return SuccessResponse();
    }

    case RouteId::kConnections: {
      auto req = codec::DecodeCreateConnection(body);
      if (!req.ok()) return ErrorResponse(req.error());
      Status s = engine_.AddConnection(req->integration, req->connection);
      if (!s.ok()) return StatusResponse(s);
      log_.Info("connection added",
                {{"integration", req->integration}, {"connection", req->connection}});
      return JsonResponse(200, codec::EncodeConnectionCreated(*req));
    }

    case RouteId::kConnection: {
      auto req = codec::DecodeDeleteConnection(route.params[0], *query);
      if (!req.ok()) return ErrorResponse(req.error());
      Status s = engine_.DeleteConnection(req->integration, req->connection);
      if (!s.ok()) return StatusResponse(s);
      log_.Info("connection deleted",
                {{"integration", req->integration}, {"connection", req->connection}});
      return SuccessResponse();
    }
  }
  return ErrorResponse(codec::errors::Internal("unhandled route"));
}

}  // namespace syncsched::daemon
