#include "cluster/pg_util.h"

#include <string>

namespace syncsched::cluster::internal {
namespace {

std::string Trimmed(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

}  // namespace

std::string SqlState(const PGresult* res) {
  const char* state = res != nullptr ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : nullptr;
  return state != nullptr ? state : "";
}

Status PgError(PGconn* conn, std::string_view context, const PGresult* res) {
  std::string code = SqlState(res);
  std::string detail;
  if (res != nullptr) {
    if (const char* primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY)) {
      detail = primary;
    } else {
      detail = Trimmed(PQresultErrorMessage(res));
    }
  }
  if (detail.empty() && conn != nullptr) detail = Trimmed(PQerrorMessage(conn));
  if (detail.empty()) detail = "no connection";
  if (!code.empty()) detail += " [SQLSTATE " + code + "]";
  std::string message = std::string(context) + ": " + detail;
  if (code.empty()) {
    bool lost = conn == nullptr || PQstatus(conn) != CONNECTION_OK;
    return lost ? Status::Unavailable(message + " (the connection to the server was lost)")
                : Status::Internal(message);
  }
  if (code == "SYF01") return Status::FailedPrecondition(std::move(message));
  std::string_view cls = std::string_view(code).substr(0, 2);
  if (cls == "08" || cls == "40" || cls == "53" || cls == "57" || cls == "58" || code == "55P03") {
    return Status::Unavailable(std::move(message));
  }
  return Status::Internal(std::move(message));
}

Status PgExec(PGconn* conn, const char* sql, std::string_view context, ResultPtr* out) {
  ResultPtr res(PQexec(conn, sql));
  ExecStatusType st = res ? PQresultStatus(res.get()) : PGRES_FATAL_ERROR;
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) return PgError(conn, context, res.get());
  if (out != nullptr) *out = std::move(res);
  return Status::Ok();
}

std::string Literal(PGconn* conn, std::string_view value) {
  char* escaped = PQescapeLiteral(conn, value.data(), value.size());
  if (escaped == nullptr) return "";
  std::string out(escaped);
  PQfreemem(escaped);
  return out;
}

}  // namespace syncsched::cluster::internal
