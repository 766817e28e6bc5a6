// syncsched_cluster_node: one cluster node in a process of its own, for the cluster tests that
// kill (SIGKILL) or freeze (SIGSTOP) a node (tests/cluster/lease_keeper_test.cc).
//
//   syncsched_cluster_node URI NAME LEASE_MS [--writer]
//
// Starts a LeaseKeeper and prints "ready <node id>". With --writer, a thread commits, every 5 ms,
// one row per partition it believes it holds into the table public.cluster_log(partition, epoch,
// node) (created by the test), fenced by the keeper's epochs (CheckFence in the same
// transaction; the session prepared by PrepareFencedSession). It does NOT check the leases' local
// validity before writing: it reuses the fence of its last successful write until the database
// refuses it, as a careless engine would, so that a test sees the fence itself refuse a stale
// owner. SIGTERM (or SIGINT): stops the writer, stops the keeper gracefully (releasing its
// partitions), prints "stopped written=<rows> refused=<fenced commits> fenced_counter=<keeper's
// count>", exits 0. Exit 2: bad arguments; exit 1: the keeper did not start (the message on
// stderr).
#include <libpq-fe.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "cluster/fence.h"
#include "cluster/lease_keeper.h"

namespace {

using syncsched::cluster::Fence;
using syncsched::cluster::LeaseKeeper;

void Writer(LeaseKeeper& keeper, const std::string& uri, std::chrono::milliseconds lease,
            const std::atomic<bool>& stop, std::uint64_t* written, std::uint64_t* refused,
            std::uint64_t* failed) {
  PGconn* conn = PQconnectdb(uri.c_str());
  if (PQstatus(conn) != CONNECTION_OK) {
    std::fprintf(stderr, "writer: %s\n", PQerrorMessage(conn));
    PQfinish(conn);
    return;
  }
  // As the store will (fence.h): a writer frozen inside its transaction must not keep the
  // partitions' rows locked past its lease.
  syncsched::Status prepared =
      syncsched::cluster::PrepareFencedSession(conn, lease, keeper.node_id());
  if (!prepared.ok()) std::fprintf(stderr, "writer: %s\n", prepared.message().c_str());
  Fence cached;
  cached.node_id = keeper.node_id();
  while (!stop.load()) {
    if (cached.partitions.empty()) {
      for (const auto& [p, epoch] : keeper.Owned()) cached.partitions.push_back({p, epoch});
    }
    if (!cached.partitions.empty()) {
      PQclear(PQexec(conn, "BEGIN"));
      syncsched::Status s = keeper.CheckFence(conn, cached);
      if (s.ok()) {
        auto params = syncsched::cluster::FenceParams(cached);
        const char* values[3] = {params[0].c_str(), params[1].c_str(), params[2].c_str()};
        PGresult* r = PQexecParams(conn,
                                   "INSERT INTO public.cluster_log(partition, epoch, node) "
                                   "SELECT p, e, $1::int8 FROM unnest($2::int4[], $3::int8[]) "
                                   "AS u(p, e)",
                                   3, nullptr, values, nullptr, nullptr, 0);
        bool inserted = PQresultStatus(r) == PGRES_COMMAND_OK;
        PQclear(r);
        r = PQexec(conn, "COMMIT");
        bool committed =
            PQresultStatus(r) == PGRES_COMMAND_OK && std::strcmp(PQcmdStatus(r), "COMMIT") == 0;
        if (inserted && committed) {
          *written += cached.partitions.size();
        } else {
          ++*failed;
        }
        PQclear(r);
        // Keep the fence of this successful write, as a careless engine would: reloading it
        // from Owned() here would drop a lease that expired while this process was frozen, so
        // the stale fence would never reach the database (the test's point).
        if (!committed) cached.partitions.clear();
      } else {
        PQclear(PQexec(conn, "ROLLBACK"));
        ++*(syncsched::cluster::IsFenced(s) ? refused : failed);
        cached.partitions.clear();
      }
    }
    if (PQstatus(conn) != CONNECTION_OK) {
      PQreset(conn);
      (void)syncsched::cluster::PrepareFencedSession(conn, lease, keeper.node_id());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  PQfinish(conn);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s URI NAME LEASE_MS [--writer]\n", argv[0]);
    return 2;
  }
  bool writer = argc > 4 && std::strcmp(argv[4], "--writer") == 0;
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);  // before any thread: every thread inherits it

  syncsched::cluster::LeaseKeeperOptions options;
  options.uri = argv[1];
  options.node = argv[2];
  options.lease = std::chrono::milliseconds(std::atoll(argv[3]));
  auto keeper = LeaseKeeper::Start(options);
  if (!keeper.ok()) {
    std::fprintf(stderr, "%s\n", keeper.status().message().c_str());
    return 1;
  }
  std::printf("ready %lld\n", static_cast<long long>((*keeper)->node_id()));
  std::fflush(stdout);

  std::atomic<bool> stop{false};
  std::uint64_t written = 0, refused = 0, failed = 0;
  std::thread writing;
  if (writer) {
    writing = std::thread(
        [&] { Writer(**keeper, options.uri, options.lease, stop, &written, &refused, &failed); });
  }
  int sig = 0;
  sigwait(&set, &sig);
  stop = true;
  if (writing.joinable()) writing.join();
  (*keeper)->Stop();
  std::printf("stopped written=%llu refused=%llu failed=%llu fenced_counter=%llu\n",
              static_cast<unsigned long long>(written), static_cast<unsigned long long>(refused),
              static_cast<unsigned long long>(failed),
              static_cast<unsigned long long>((*keeper)->counters().fenced_refusals));
  std::fflush(stdout);
  return 0;
}
