#include "cluster/fence.h"

#include <algorithm>
#include <string>
#include <vector>

#include "cluster/pg_util.h"

namespace syncsched::cluster {

std::array<std::string, 3> FenceParams(const Fence& fence) {
  std::array<std::string, 3> out;
  out[0] = std::to_string(fence.node_id);
  out[1] = "{";
  out[2] = "{";
  for (std::size_t i = 0; i < fence.partitions.size(); ++i) {
    if (i > 0) {
      out[1] += ',';
      out[2] += ',';
    }
    out[1] += std::to_string(fence.partitions[i].partition);
    out[2] += std::to_string(fence.partitions[i].epoch);
  }
  out[1] += '}';
  out[2] += '}';
  return out;
}

Status CheckFence(PGconn* txn, const Fence& fence) {
  if (fence.partitions.empty()) return Status::Ok();
  std::vector<int> seen;
  seen.reserve(fence.partitions.size());
  for (const PartitionEpoch& pe : fence.partitions) seen.push_back(pe.partition);
  std::sort(seen.begin(), seen.end());
  if (std::adjacent_find(seen.begin(), seen.end()) != seen.end()) {
    return Status::InvalidArgument("fence: partition " +
                                   std::to_string(*std::adjacent_find(seen.begin(), seen.end())) +
                                   " appears twice");
  }
  if (txn == nullptr || PQstatus(txn) != CONNECTION_OK ||
      PQtransactionStatus(txn) != PQTRANS_INTRANS) {
    return Status::InvalidArgument(
        "fence: the connection is not inside an open transaction (a fence must be checked in the "
        "transaction it guards)");
  }
  std::array<std::string, 3> params = FenceParams(fence);
  const char* values[3] = {params[0].c_str(), params[1].c_str(), params[2].c_str()};
  internal::ResultPtr res(PQexecParams(txn, kFenceSql, 3, nullptr, values, nullptr, nullptr, 0));
  if (res && PQresultStatus(res.get()) == PGRES_TUPLES_OK) return Status::Ok();
  return internal::PgError(txn, "checking the partition fence", res.get());
}

std::string FencedSessionName(std::int64_t node_id) {
  return kFencedSessionPrefix + std::to_string(node_id);
}

Status PrepareFencedSession(PGconn* conn, std::chrono::milliseconds lease, std::int64_t node_id) {
  if (lease.count() < 2) {
    return Status::InvalidArgument("fence: a lease of " + std::to_string(lease.count()) +
                                   " ms is too short");
  }
  if (node_id < 1) {
    return Status::InvalidArgument("fence: node id " + std::to_string(node_id) +
                                   " is not a node's id");
  }
  if (conn == nullptr || PQstatus(conn) != CONNECTION_OK ||
      PQtransactionStatus(conn) != PQTRANS_IDLE) {
    return Status::InvalidArgument(
        "fence: the session must be connected and outside a transaction to be prepared");
  }
  std::string sql =
      "SET idle_in_transaction_session_timeout = " + std::to_string(lease.count() / 2) +
      "; SET application_name = '" + FencedSessionName(node_id) + "'";
  return internal::PgExec(conn, sql.c_str(), "preparing a session for fenced commits");
}

bool IsFenced(const Status& status) {
  return status.code() == StatusCode::kFailedPrecondition &&
         status.message().find(kFencedMarker) != std::string::npos;
}

}  // namespace syncsched::cluster
