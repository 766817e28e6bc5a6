// cluster/: small libpq helpers shared by the cluster's files (internal; not a general client).
//
// Thread safety: the functions are stateless; a PGconn is used by one thread at a time, as libpq
// requires.
#pragma once

#include <libpq-fe.h>

#include <memory>
#include <string>
#include <string_view>

#include "syncsched/status.h"

namespace syncsched::cluster::internal {

struct ResultDeleter {
  void operator()(PGresult* r) const { PQclear(r); }
};
using ResultPtr = std::unique_ptr<PGresult, ResultDeleter>;

// The SQLSTATE of a failed result, "" when none (no result, or a client-side failure).
std::string SqlState(const PGresult* res);

// The status of a failed statement on `conn` (`res` may be null). `context` says what was being
// done. UNAVAILABLE for what the environment may fix (a lost connection: no SQLSTATE and a bad
// connection; classes 08 connection, 40 rollback, 53 resources, 57 operator intervention such as a
// server restart or a statement timeout, 58 system; 55P03 lock not available); FAILED_PRECONDITION
// for a refused fence (SQLSTATE SYF01, fence.h); INTERNAL otherwise. The message is
// "<context>: <server message> [SQLSTATE <code>]".
Status PgError(PGconn* conn, std::string_view context, const PGresult* res);

// Runs one statement (no parameters) synchronously. OK for COMMAND_OK or TUPLES_OK (then `*out`,
// when not null, holds the result); else PgError. `conn` must be idle (no query in progress).
Status PgExec(PGconn* conn, const char* sql, std::string_view context, ResultPtr* out = nullptr);

// `value` as an SQL string literal (PQescapeLiteral), or "" when libpq fails (out of memory,
// invalid encoding).
std::string Literal(PGconn* conn, std::string_view value);

}  // namespace syncsched::cluster::internal
