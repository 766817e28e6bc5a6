// The HTTP API's routes (SPEC §7, docs/http-api.md), apart from the transport: a request's
// method, target, Authorization header and body in; a status, a body and a few headers out.
// The server (http_server.h) owns sockets and framing; this class owns routing, authentication,
// and the calls into the engine, with the codec doing every translation to and from JSON.
//
// Thread safety: Admit and Handle may be called from any thread, concurrently (the engine's
// methods are thread-safe and the rest is immutable).
//
// The Api keeps no copy of the engine's catalog: an engine error says which input it is about
// (Status::subject()), and the codec maps it to the HTTP answer from that alone.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "codec/codec.h"
#include "codec/prometheus.h"
#include "daemon/auth.h"
#include "daemon/config.h"
#include "daemon/log.h"
#include "syncsched/engine.h"

namespace syncsched::daemon {

struct HttpRequest {
  std::string_view method;         // "GET", "POST", ...
  std::string_view target;         // "/sync/status?provider_config_key=github&syncs=*"
  std::string_view authorization;  // the Authorization header's value, or empty
  std::string_view body;
};

struct HttpResponse {
  unsigned status = 200;
  std::string body;
  std::string_view content_type = "application/json";  // a literal
  std::string allow;                                   // the Allow header of a 405
  bool authenticate = false;                           // a 401: send `WWW-Authenticate: Bearer`
};

class Api {
 public:
  // `engine` and `log` must outlive the Api. `daemon_metrics` supplies the daemon's own figures
  // for GET /metrics.
  Api(Engine& engine, const Config& config, Logger& log,
      std::function<codec::DaemonMetrics()> daemon_metrics);

  // The route of a request that Admit let through, kept for Handle so that it is not resolved
  // and authenticated twice.
  class Admitted;

  // What can be decided from the request line and headers alone: an unknown route (404), a
  // wrong method (405), a missing or invalid key (401) or scope (403). nullopt: `admitted` holds
  // the route; read the body and call Handle with it.
  std::optional<HttpResponse> Admit(std::string_view method, std::string_view target,
                                    std::string_view authorization, Admitted& admitted) const;

  // Answers one request that Admit let through (`admitted` is what Admit filled in for this same
  // request). Never throws: an unexpected exception, or a request not admitted, is a 500
  // `internal_error`.
  HttpResponse Handle(const HttpRequest& request, const Admitted& admitted);

  // The response carrying `error` as its body.
  static HttpResponse ErrorResponse(const codec::ApiError& error);

  // What a route takes besides its path: a JSON body, a query, or neither. A route refuses the
  // other (a query parameter: 400 unknown_field; a body: 400 unexpected_body).
  enum class Takes { kNone, kBody, kQuery };

  // One route as the table in api.cc declares it: the single place that says which method and
  // path pattern it answers ("{name}" segments are path parameters, percent-decoded), the scope a
  // key needs (empty: none), and what it takes. Routing, 405s and their Allow header, scopes, the
  // body and query checks, and docs/http-api.md's route list (checked by a test) all come from it.
  struct RouteInfo {
    std::string_view method;   // "POST"
    std::string_view pattern;  // "/sync/{name}/variant/{variant}"
    std::string_view scope;    // kScopeSyncsExecute, ... or empty
    Takes takes;
  };
  // Every route, in table order.
  static std::vector<RouteInfo> Routes();

 private:
  // What a handler gets: the request and what the table's checks have decoded from it.
  struct Call {
    const HttpRequest& request;
    const std::vector<std::string>& params;  // the decoded path parameters, in pattern order
    const codec::QueryParams& query;         // empty unless the route takes a query
    const codec::Json& body;                 // null unless the route takes a body
  };
  using Handler = HttpResponse (Api::*)(const Call&);
  struct RouteEntry {
    RouteInfo info;
    Handler handler;
  };
  static const std::vector<RouteEntry>& Table();

  struct Route {
    std::size_t entry = 0;            // index in Table()
    std::vector<std::string> params;  // decoded path parameters, in order
  };
  struct Resolved {
    std::optional<Route> route;
    std::optional<codec::ApiError> error;  // 400, 404, 405
    std::string allow;                     // for a 405
  };
  static Resolved Resolve(std::string_view method, std::string_view path);
  HttpResponse Dispatch(const Route& route, const HttpRequest& request);

  // The handlers, one per table entry.
  HttpResponse OnHealth(const Call& call);
  HttpResponse OnMetrics(const Call& call);
  HttpResponse OnStart(const Call& call);
  HttpResponse OnPause(const Call& call);
  HttpResponse OnTrigger(const Call& call);
  HttpResponse OnStatus(const Call& call);
  HttpResponse OnForecast(const Call& call);
  HttpResponse OnFrequency(const Call& call);
  HttpResponse OnCreateVariant(const Call& call);
  HttpResponse OnDeleteVariant(const Call& call);
  HttpResponse OnAddConnection(const Call& call);
  HttpResponse OnDeleteConnection(const Call& call);

  Engine& engine_;
  Logger& log_;
  std::string node_;  // for /health in cluster mode
  Authenticator auth_;
  std::function<codec::DaemonMetrics()> daemon_metrics_;
  int max_json_depth_;
};

class Api::Admitted {
 public:
  Admitted() = default;

 private:
  friend class Api;
  std::optional<Route> route_;
};

}  // namespace syncsched::daemon
