// The engine on PostgreSQL beside the raw writes of the same rows, on one throwaway PostgreSQL 15
// server started by this binary (tests/support/pg_server.h, durable settings: fsync,
// synchronous_commit and full_page_writes on; shared_buffers=256MB, max_wal_size=4GB; unix
// socket).
//
// BM_PgDurableStart/N: one Start of N paused schedules (N/10 connections x 10 syncs), returning
// only when committed: N schedule rows rewritten, each with its immediate run in flight, in one
// transaction. The catalog and the paused schedules are written beforehand through the store (one
// commit), outside the timed region, as are the N runs that follow (waited for, untimed).
// BM_PgRawCopy/N: the same N rows (as the start leaves them) written by a plain binary COPY into
// a table with the schedules table's columns, keys and index, in one transaction: the floor of
// writing those rows to this server.
// BM_PgRecovery/N: opening an engine on the database BM_PgDurableStart left (N started
// schedules): connect, read everything, rebuild and arm every schedule.
//
// Run: ./pg_bench --benchmark_filter='Pg' (BM_PgRecovery needs BM_PgDurableStart before it).
#include <benchmark/benchmark.h>
#include <libpq-fe.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>

#include "store/pg_store.h"
#include "store/store.h"
#include "support/pg_server.h"
#include "syncsched/syncsched.h"

namespace syncsched {
namespace {

using testing::PgServer;

constexpr int kRows = 1'000'000;
constexpr int kSyncs = 10;

PgServer& Server() {
  static std::unique_ptr<PgServer> server = [] {
    auto s = PgServer::Start(/*for_tests=*/false);
    if (!s.ok()) {
      std::fprintf(stderr, "cannot start PostgreSQL: %s\n", s.status().message().c_str());
      std::abort();
    }
    return std::move(s).value();
  }();
  return *server;
}

std::string& DurableUri() {
  static std::string uri;
  return uri;
}

std::string Connection(std::int64_t c) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "conn-%06lld", static_cast<long long>(c));
  return buf;
}

// The catalog and `n` paused schedules, written through the store in one commit.
Status Populate(const std::string& uri, std::int64_t n) {
  store::PostgresStoreOptions o;
  o.uri = uri;
  auto opened = store::OpenPostgresStore(o);
  if (!opened.ok()) return opened.status();
  store::Batch b;
  for (int s = 0; s < kSyncs; ++s) {
    store::SyncRow& sync = b.syncs.emplace_back();
    sync.integration = "bench";
    sync.name = "sync" + std::to_string(s);
    sync.frequency_text = "every " + std::to_string(s + 1) + "h";
    sync.frequency_ms = (s + 1) * 3'600'000LL;
    sync.auto_start = false;
  }
  for (std::int64_t c = 0; c < n / kSyncs; ++c)
    b.connections_added.push_back({"bench", Connection(c)});
  for (std::int64_t i = 0; i < n; ++i) {
    store::ScheduleRow& r = b.schedules.emplace_back();
    r.uid = static_cast<std::uint64_t>(i) + 1;
    r.integration = "bench";
    r.connection = Connection(i / kSyncs);
    r.sync = "sync" + std::to_string(i % kSyncs);
    r.variant = "base";
    r.state = 0;
  }
  return (*opened)->Commit(b);
}

std::unique_ptr<Engine> OpenEngine(const std::string& uri, std::atomic<std::int64_t>* ran,
                                   bool hold) {
  Options o;
  o.database_path = uri;
  o.worker_threads = 2;
  o.hold_timers = hold;
  auto opened = Engine::Open(o);
  if (!opened.ok()) {
    std::fprintf(stderr, "open: %s\n", opened.status().message().c_str());
    return nullptr;
  }
  auto engine = std::move(opened).value();
  for (int s = 0; s < kSyncs; ++s) {
    (void)engine->RegisterCallback("bench", "sync" + std::to_string(s), [ran](const RunContext&) {
      if (ran) ran->fetch_add(1, std::memory_order_relaxed);
      return RunReport::Success();
    });
  }
  return engine;
}

void BM_PgDurableStart(benchmark::State& state) {
  const std::int64_t n = state.range(0);
  for (auto _ : state) {
    state.PauseTiming();
    auto uri = Server().CreateDatabase();
    if (!uri.ok()) {
      state.SkipWithError(uri.status().message().c_str());
      break;
    }
    DurableUri() = *uri;
    if (Status s = Populate(*uri, n); !s.ok()) {
      state.SkipWithError(s.message().c_str());
      break;
    }
    std::atomic<std::int64_t> ran{0};
    auto engine = OpenEngine(*uri, &ran, false);
    if (!engine) {
      state.SkipWithError("open failed");
      break;
    }
    state.ResumeTiming();

    auto r = engine->Start(Target{"bench", std::nullopt, {}, /*report_keys=*/false});

    state.PauseTiming();
    if (!r.ok() || static_cast<std::int64_t>(r->Count(Outcome::kStarted)) != n) {
      state.SkipWithError(r.ok() ? "not every schedule started" : r.status().message().c_str());
      break;
    }
    while (engine->GetMetrics().runs_succeeded < static_cast<std::uint64_t>(n)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));  // leave the cores to the engine
    }
    engine.reset();
    state.ResumeTiming();
  }
  state.counters["rows/s"] =
      benchmark::Counter(static_cast<double>(n), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_PgDurableStart)
    ->Arg(kRows)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Iterations(1);

template <typename T>
void Put(std::string* out, T v) {
  for (int i = static_cast<int>(sizeof(T)) - 1; i >= 0; --i) {
    out->push_back(static_cast<char>(static_cast<std::uint64_t>(v) >> (8 * i)));
  }
}
void PutInt8(std::string* out, std::int64_t v) {
  Put<std::int32_t>(out, 8);
  Put(out, v);
}
void PutInt4(std::string* out, std::int32_t v) {
  Put<std::int32_t>(out, 4);
  Put(out, v);
}
void PutInt2(std::string* out, std::int16_t v) {
  Put<std::int32_t>(out, 2);
  Put(out, v);
}
void PutBytes(std::string* out, const std::string& v) {
  Put(out, static_cast<std::int32_t>(v.size()));
  out->append(v);
}

void BM_PgRawCopy(benchmark::State& state) {
  const std::int64_t n = state.range(0);
  for (auto _ : state) {
    state.PauseTiming();
    auto uri = Server().CreateDatabase();
    {
      store::PostgresStoreOptions o;
      o.uri = *uri;
      (void)store::OpenPostgresStore(o);  // the schema, to copy the table's shape from
    }
    PGconn* conn = PQconnectdb(uri->c_str());
    PQclear(PQexec(conn,
                   "CREATE TABLE raw_schedules (LIKE syncsched.schedules INCLUDING ALL) "
                   "WITH (fillfactor = 70)"));
    // The rows as the durable start leaves them: started, with the immediate run in flight.
    std::string data("PGCOPY\n\377\r\n\0", 11);
    Put<std::int32_t>(&data, 0);
    Put<std::int32_t>(&data, 0);
    for (std::int64_t i = 0; i < n; ++i) {
      const std::int64_t uid = i + 1, at = 1'700'000'000'000 + i;
      Put<std::int16_t>(&data, 37);
      PutInt8(&data, uid);
      PutBytes(&data, "bench");
      PutBytes(&data, Connection(i / kSyncs));
      PutBytes(&data, "sync" + std::to_string(i % kSyncs));
      PutBytes(&data, "base");
      PutInt2(&data, 1);
      for (std::int64_t v : {at, std::int64_t{0}, at + 3'600'000, std::int64_t{0}, std::int64_t{0},
                             std::int64_t{0}, std::int64_t{0}, std::int64_t{0}}) {
        PutInt8(&data, v);
      }
      PutInt2(&data, -1);
      PutBytes(&data, "");
      PutBytes(&data, std::to_string(uid) + "-" + std::to_string(at) + "-1");
      PutInt8(&data, at);
      PutInt2(&data, 0);
      PutInt4(&data, 1);
      PutInt8(&data, at);
      PutInt8(&data, 1);
      PutInt2(&data, 0);
      for (int k = 0; k < 14; ++k) Put<std::int32_t>(&data, -1);
    }
    Put<std::int16_t>(&data, -1);
    state.ResumeTiming();

    PQclear(PQexec(conn, "BEGIN"));
    PGresult* res = PQexec(conn, "COPY raw_schedules FROM STDIN (FORMAT binary)");
    bool ok = PQresultStatus(res) == PGRES_COPY_IN;
    PQclear(res);
    for (std::size_t off = 0; ok && off < data.size(); off += 1 << 20) {
      std::size_t len = std::min<std::size_t>(1 << 20, data.size() - off);
      ok = PQputCopyData(conn, data.data() + off, static_cast<int>(len)) == 1;
    }
    ok = ok && PQputCopyEnd(conn, nullptr) == 1;
    res = PQgetResult(conn);
    ok = ok && PQresultStatus(res) == PGRES_COMMAND_OK;
    if (!ok) state.SkipWithError(PQresultErrorMessage(res));
    PQclear(res);
    while ((res = PQgetResult(conn)) != nullptr) PQclear(res);
    res = PQexec(conn, "COMMIT");
    PQclear(res);

    state.PauseTiming();
    PQfinish(conn);
    state.ResumeTiming();
  }
  state.counters["rows/s"] =
      benchmark::Counter(static_cast<double>(n), benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_PgRawCopy)->Arg(kRows)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(1);

void BM_PgRecovery(benchmark::State& state) {
  if (DurableUri().empty()) {
    state.SkipWithError("run BM_PgDurableStart first (it makes the database)");
    return;
  }
  std::int64_t armed = 0;
  for (auto _ : state) {
    auto engine = OpenEngine(DurableUri(), nullptr, /*hold=*/true);
    if (!engine) {
      state.SkipWithError("open failed");
      break;
    }
    state.PauseTiming();
    armed = static_cast<std::int64_t>(engine->GetMetrics().schedules_started);
    engine.reset();
    state.ResumeTiming();
  }
  state.counters["schedules"] = static_cast<double>(armed);
}
BENCHMARK(BM_PgRecovery)->Arg(kRows)->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(1);

}  // namespace
}  // namespace syncsched
