// Helpers of the store's hardening and fault tests: a temporary directory per test, rows, a digest
// of a snapshot to compare states, and byte-level access to files on disk.
#pragma once

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <set>
#include <string>

#include "store/sqlite_store.h"
#include "store/store.h"
#include "syncsched/status.h"

namespace syncsched::store::testutil {

namespace fs = std::filesystem;

inline std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

inline void WriteBytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

inline ScheduleRow Schedule(std::uint64_t uid, const std::string& connection,
                            const std::string& error = "HTTP 502 from upstream") {
  ScheduleRow row;
  row.uid = uid;
  row.integration = "github";
  row.connection = connection;
  row.sync = "issues";
  row.variant = "base";
  row.state = 1;
  row.anchor_ms = 1'700'000'000'000;
  row.next_slot_ms = 1'700'000'090'000 + static_cast<std::int64_t>(uid);
  row.runs = uid * 3;
  row.failures = uid;
  row.last_error = error;
  return row;
}

inline RunRow FinishedRun(std::uint64_t uid, std::uint64_t number, std::int8_t ok) {
  RunRow run;
  run.run_id = "run-" + std::to_string(uid) + "-" + std::to_string(number);
  run.schedule_uid = uid;
  run.number = number;
  run.slot_ms = 1'700'000'000'000 + static_cast<std::int64_t>(number) * 60'000;
  run.started_ms = run.slot_ms + 5;
  run.finished_ms = run.slot_ms + 500;
  run.ok = ok;
  run.error = ok == 0 ? "upstream said no to run " + std::to_string(number) : "";
  return run;
}

// Everything a snapshot holds, as text, to compare two states.
inline std::string Digest(const Snapshot& snap) {
  std::string out = "max_uid=" + std::to_string(snap.max_uid) + "\n";
  for (const SyncRow& r : snap.syncs) {
    out += "sync " + r.integration + "/" + r.name + " " + std::to_string(r.frequency_ms) + "\n";
  }
  for (const IntegrationRow& r : snap.integrations) {
    out += "integration " + r.integration + " " + std::to_string(r.max_concurrency) + "\n";
  }
  std::set<std::string> connections;
  for (const ConnectionRow& r : snap.connections)
    connections.insert(r.integration + "/" + r.connection);
  for (const std::string& c : connections) out += "connection " + c + "\n";
  for (const ScheduleRow& r : snap.schedules) {
    out += "schedule " + std::to_string(r.uid) + " " + r.integration + "/" + r.connection + "/" +
           r.sync + "/" + r.variant + " state=" + std::to_string(r.state) +
           " next=" + std::to_string(r.next_slot_ms) + " runs=" + std::to_string(r.runs) +
           " failures=" + std::to_string(r.failures) + " error=" + r.last_error +
           " run=" + r.in_flight.run_id + "\n";
  }
  return out;
}

class TempDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "syncsched-store-XXXXXX").string();
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    path_ = dir_ + "/state.db";
  }
  void TearDown() override {
    std::error_code ec;
    fs::permissions(dir_, fs::perms::owner_all, fs::perm_options::add, ec);
    fs::remove_all(dir_, ec);
  }

  SqliteStoreOptions Options(const std::string& path) const {
    SqliteStoreOptions options;
    options.path = path;
    return options;
  }
  SqliteStoreOptions Options() const { return Options(path_); }

  std::unique_ptr<Store> OpenOrDie(const SqliteStoreOptions& options) {
    auto store = OpenSqliteStore(options);
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? std::move(store).value() : nullptr;
  }
  std::unique_ptr<Store> OpenOrDie() { return OpenOrDie(Options()); }

  // The digest of what a fresh store on `options.path` loads ("<error: ...>" when it cannot).
  std::string Reopened(SqliteStoreOptions options) {
    options.vfs.clear();
    auto store = OpenSqliteStore(options);
    if (!store.ok()) return "<error: " + store.status().ToString() + ">";
    auto snap = (*store)->Load();
    if (!snap.ok()) return "<error: " + snap.status().ToString() + ">";
    return Digest(*snap);
  }

  std::set<std::string> Listing(const std::string& dir) const {
    std::set<std::string> names;
    for (const auto& entry : fs::directory_iterator(dir)) {
      names.insert(entry.path().filename().string());
    }
    return names;
  }
  std::set<std::string> Listing() const { return Listing(dir_); }

  std::string dir_;
  std::string path_;
};

}  // namespace syncsched::store::testutil
