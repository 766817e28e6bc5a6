// The SQLite store against hostile or unlucky files (issue 11): one owner per database whatever
// path reaches it (symbolic links, hard links, other processes), start-up refusals that name the
// real cause and leave no file behind (read-only files and directories, a read-only or full file
// system, a missing directory), and corruption in each kind of page, found at open, by Load or by
// a Commit, and never silent. Every test works on real files on disk.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <signal.h>
#include <sqlite3.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "store/cksum_vfs.h"
#include "store/sqlite_store.h"
#include "store/store.h"
#include "store/store_test_util.h"
#include "syncsched/status.h"

namespace syncsched::store {
namespace {

using testutil::Digest;
using testutil::FinishedRun;
using testutil::ReadBytes;
using testutil::Schedule;
using testutil::WriteBytes;
namespace fs = std::filesystem;

bool Contains(const Status& s, const std::string& part) {
  return s.message().find(part) != std::string::npos;
}

// Runs `body` in a child process and returns what it returned (its report), or a description of
// how the child died. The child never returns into the test framework.
std::string InChild(const std::function<std::string()>& body) {
  int fds[2];
  if (::pipe(fds) != 0) return "<pipe failed>";
  pid_t pid = ::fork();
  if (pid < 0) return "<fork failed>";
  if (pid == 0) {
    ::close(fds[0]);
    std::string report = body();
    [[maybe_unused]] ssize_t n = ::write(fds[1], report.data(), report.size());
    ::_exit(0);
  }
  ::close(fds[1]);
  std::string report;
  char buffer[4096];
  ssize_t n;
  while ((n = ::read(fds[0], buffer, sizeof buffer)) > 0) report.append(buffer, n);
  ::close(fds[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (!WIFEXITED(status)) return "<child died: status " + std::to_string(status) + ">";
  return report;
}

// What an open of `options` answers, as "OK" or the status's text.
std::string OpenAnswer(const SqliteStoreOptions& options) {
  auto store = OpenSqliteStore(options);
  return store.ok() ? "OK" : store.status().ToString();
}

class HardeningTest : public testutil::TempDirTest {
 protected:
  // A closed database with `schedules` schedules, their history and a few catalog rows.
  void MakeDatabase(const std::string& path, int schedules, int runs_each = 0) {
    auto store = OpenOrDie(Options(path));
    ASSERT_NE(store, nullptr);
    Batch batch;
    batch.syncs.push_back(SyncRow{"github", "issues", "every 30s", 30'000, true, 0, 0, ""});
    batch.integrations.push_back(IntegrationRow{"github", 4});
    batch.connections_added.push_back(ConnectionRow{"github", "acme"});
    for (int i = 1; i <= schedules; ++i) {
      batch.schedules.push_back(
          Schedule(static_cast<std::uint64_t>(i), "conn-" + std::to_string(i)));
      for (int r = 1; r <= runs_each; ++r) {
        batch.runs.push_back(FinishedRun(static_cast<std::uint64_t>(i),
                                         static_cast<std::uint64_t>(r),
                                         static_cast<std::int8_t>(r % 2)));
      }
    }
    ASSERT_TRUE(store->Commit(batch).ok());
  }
  void MakeDatabase(int schedules = 50) { MakeDatabase(path_, schedules); }

  // Opening `options` must fail with `code`, naming `named` and saying `cause`, and leave the
  // directory and the database file exactly as they were.
  void ExpectRefused(const SqliteStoreOptions& options, StatusCode code, const std::string& cause,
                     const std::string& named) {
    auto before = Listing();
    std::string bytes = fs::is_regular_file(path_) ? ReadBytes(path_) : "";
    auto store = OpenSqliteStore(options);
    ASSERT_FALSE(store.ok());
    EXPECT_EQ(store.status().code(), code) << store.status();
    EXPECT_TRUE(Contains(store.status(), named)) << store.status();
    EXPECT_TRUE(Contains(store.status(), cause)) << store.status();
    EXPECT_EQ(Listing(), before);
    if (fs::is_regular_file(path_)) {
      EXPECT_TRUE(ReadBytes(path_) == bytes) << "file changed";
    }
  }
};

// ---- One owner per database, whatever path reaches it ----

TEST_F(HardeningTest, ASymbolicLinkToAnOwnedFileIsRefusedInThisProcess) {
  auto owner = OpenOrDie();
  ASSERT_NE(owner, nullptr);
  std::string link = dir_ + "/link.db";
  fs::create_symlink(path_, link);
  ExpectRefused(Options(link), StatusCode::kUnavailable, "is in use by another syncsched engine",
                link);
  auto refused = OpenSqliteStore(Options(link));
  ASSERT_FALSE(refused.ok());
  EXPECT_TRUE(Contains(refused.status(), "resolved to '" + path_ + "'")) << refused.status();
  EXPECT_TRUE(Contains(refused.status(), "process " + std::to_string(::getpid()) + ", this one"))
      << refused.status();
  // A link to the directory, and a path with dot-dot, reach the same file.
  std::string dir_link = dir_ + "/again";
  fs::create_directory_symlink(dir_, dir_link);
  EXPECT_FALSE(OpenSqliteStore(Options(dir_link + "/state.db")).ok());
  EXPECT_FALSE(
      OpenSqliteStore(Options(dir_ + "/../" + fs::path(dir_).filename().string() + "/state.db"))
          .ok());
  // The owner was not disturbed by the refusals.
  Batch batch;
  batch.schedules = {Schedule(1, "acme")};
  EXPECT_TRUE(owner->Commit(batch).ok());
  EXPECT_TRUE(owner->Health().ok());
}

TEST_F(HardeningTest, ASymbolicLinkAloneOpensTheRealFileWithItsWalBesideIt) {
  std::string link = dir_ + "/link.db";
  fs::create_symlink(path_, link);  // dangling: refused, nothing created
  ExpectRefused(Options(link), StatusCode::kUnavailable, "a dangling link", link);
  MakeDatabase(3);
  auto store = OpenOrDie(Options(link));
  ASSERT_NE(store, nullptr);
  Batch batch;
  batch.schedules = {Schedule(4, "via-link")};
  ASSERT_TRUE(store->Commit(batch).ok());
  EXPECT_TRUE(fs::exists(path_ + "-wal"));
  EXPECT_FALSE(fs::exists(link + "-wal"));
  EXPECT_FALSE(fs::exists(path_ + ".lock"));
  store.reset();
  EXPECT_EQ(Listing(), (std::set<std::string>{"link.db", "state.db"}));
  store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  auto snap = store->Load();
  ASSERT_TRUE(snap.ok()) << snap.status();
  EXPECT_EQ(snap->schedules.size(), 4u);
}

TEST_F(HardeningTest, AHardLinkedDatabaseIsRefusedByEitherName) {
  MakeDatabase(3);
  std::string other = dir_ + "/other.db";
  ASSERT_EQ(::link(path_.c_str(), other.c_str()), 0);
  ExpectRefused(Options(), StatusCode::kUnavailable, "has 2 hard links", path_);
  ExpectRefused(Options(other), StatusCode::kUnavailable, "has 2 hard links", other);
  ::unlink(other.c_str());
  EXPECT_NE(OpenOrDie(), nullptr);
}

TEST_F(HardeningTest, AHardLinkMadeWhileOpenIsStillOneOwner) {
  auto owner = OpenOrDie();
  ASSERT_NE(owner, nullptr);
  std::string other = dir_ + "/other.db";
  ASSERT_EQ(::link(path_.c_str(), other.c_str()), 0);
  auto refused = OpenSqliteStore(Options(other));
  ASSERT_FALSE(refused.ok());
  EXPECT_TRUE(Contains(refused.status(), "is in use by another syncsched engine"))
      << refused.status();
  EXPECT_TRUE(Contains(refused.status(), other)) << refused.status();
}

// A file deleted, replaced or moved away under an open store (or its WAL deleted) would take
// every later commit with it: the writes would go to an unlinked inode, lost at close, while each
// commit answered OK. The next commit finds it and the store refuses from then on, naming the
// file and what happened; nothing more is acknowledged.
TEST_F(HardeningTest, AFileDeletedOrReplacedWhileOpenBreaksTheStore) {
  struct Case {
    std::string name;
    std::function<void(const std::string&)> act;
    std::string says;
  };
  std::vector<Case> cases = {
      {"database deleted", [](const std::string& p) { ::unlink(p.c_str()); },
       "was deleted or replaced"},
      {"database replaced",
       [](const std::string& p) {
         std::string other = p + ".new";
         WriteBytes(other, "");
         ::rename(other.c_str(), p.c_str());
       },
       "was deleted or replaced"},
      {"database moved", [](const std::string& p) { ::rename(p.c_str(), (p + ".moved").c_str()); },
       "no longer the file opened"},
      {"WAL deleted", [](const std::string& p) { ::unlink((p + "-wal").c_str()); },
       "write-ahead log"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    std::string path = dir_ + "/" + std::to_string(&c - cases.data()) + ".db";
    auto store = OpenOrDie(Options(path));
    ASSERT_NE(store, nullptr);
    Batch first;
    first.schedules.push_back(Schedule(1, "acme"));
    ASSERT_TRUE(store->Commit(first).ok());
    ASSERT_TRUE(fs::exists(path + "-wal"));
    c.act(path);
    Batch next;
    next.schedules.push_back(Schedule(2, "globex"));
    Status refused = store->Commit(next);
    ASSERT_FALSE(refused.ok());
    EXPECT_EQ(refused.code(), StatusCode::kInternal) << refused;
    EXPECT_TRUE(Contains(refused, path)) << refused;
    EXPECT_TRUE(Contains(refused, c.says)) << refused;
    EXPECT_FALSE(store->Health().ok()) << "broken for good";
    EXPECT_FALSE(store->Commit(next).ok());
  }
}

TEST_F(HardeningTest, AnotherProcessIsRefusedThroughASymbolicOrAHardLinkAndNamesTheOwner) {
  auto owner = OpenOrDie();
  ASSERT_NE(owner, nullptr);
  std::string link = dir_ + "/link.db";
  fs::create_symlink(path_, link);
  std::string hard = dir_ + "/hard.db";
  ASSERT_EQ(::link(path_.c_str(), hard.c_str()), 0);
  std::string owner_pid = "process " + std::to_string(::getpid()) + ")";
  for (const std::string& path : {path_, link, hard}) {
    SCOPED_TRACE(path);
    std::string answer = InChild([&] { return OpenAnswer(Options(path)); });
    EXPECT_NE(answer.find("UNAVAILABLE"), std::string::npos) << answer;
    EXPECT_NE(answer.find("is in use by another syncsched engine"), std::string::npos) << answer;
    EXPECT_NE(answer.find(owner_pid), std::string::npos) << answer;
    EXPECT_NE(answer.find(path), std::string::npos) << answer;
  }
}

// The owner lock and SQLite's own locks are of different kinds and bytes: a plain SQLite reader
// (another process) reads the owned file, and SQLite closing its descriptors of the file in the
// owner's process (another connection opened and closed) does not drop the owner lock.
TEST_F(HardeningTest, TheOwnerLockNeitherBlocksSqliteNorIsDroppedByItsCloses) {
  auto owner = OpenOrDie();
  ASSERT_NE(owner, nullptr);
  Batch batch;
  batch.schedules = {Schedule(1, "a"), Schedule(2, "b")};
  ASSERT_TRUE(owner->Commit(batch).ok());
  auto count = [&] {
    sqlite3* db = nullptr;
    std::string answer = "open failed";
    if (sqlite3_open_v2(path_.c_str(), &db, SQLITE_OPEN_READONLY, nullptr) == SQLITE_OK) {
      sqlite3_stmt* stmt = nullptr;
      sqlite3_prepare_v2(db, "SELECT count(*) FROM schedules", -1, &stmt, nullptr);
      answer = sqlite3_step(stmt) == SQLITE_ROW ? std::to_string(sqlite3_column_int(stmt, 0))
                                                : sqlite3_errmsg(db);
      sqlite3_finalize(stmt);
    }
    sqlite3_close(db);
    return answer;
  };
  EXPECT_EQ(InChild(count), "2");
  EXPECT_EQ(count(), "2");  // in this process: a connection opened and closed beside the owner
  std::string answer = InChild([&] { return OpenAnswer(Options()); });
  EXPECT_NE(answer.find("is in use by another syncsched engine"), std::string::npos) << answer;
  batch.schedules = {Schedule(3, "c")};
  EXPECT_TRUE(owner->Commit(batch).ok());
  EXPECT_EQ(InChild(count), "3");
}

// An owner killed with SIGKILL lets go at once (the kernel drops its lock): no stale lock file.
TEST_F(HardeningTest, AKilledOwnerLetsGo) {
  MakeDatabase(2);
  int ready[2], hold[2];
  ASSERT_EQ(::pipe(ready), 0);
  ASSERT_EQ(::pipe(hold), 0);
  pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    auto store = OpenSqliteStore(Options());
    char c = store.ok() ? 'y' : 'n';
    [[maybe_unused]] ssize_t n = ::write(ready[1], &c, 1);
    n = ::read(hold[0], &c, 1);  // until killed
    ::_exit(0);
  }
  char c = 0;
  ASSERT_EQ(::read(ready[0], &c, 1), 1);
  ASSERT_EQ(c, 'y');
  auto refused = OpenSqliteStore(Options());
  ASSERT_FALSE(refused.ok());
  EXPECT_TRUE(Contains(refused.status(), "(process " + std::to_string(child) + ")"))
      << refused.status();
  ::kill(child, SIGKILL);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  for (int fd : {ready[0], ready[1], hold[0], hold[1]}) ::close(fd);
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  auto snap = store->Load();
  ASSERT_TRUE(snap.ok()) << snap.status();
  EXPECT_EQ(snap->schedules.size(), 2u);
}

// ---- Start-up refusals name the real cause and leave nothing behind ----

constexpr uid_t kNobody = 65534;

// Runs `body` as user nobody in a child (root bypasses file permissions).
std::string AsNobody(const std::function<std::string()>& body) {
  return InChild([&]() -> std::string {
    if (::setgid(kNobody) != 0 || ::setuid(kNobody) != 0) return "<cannot become nobody>";
    return body();
  });
}

TEST_F(HardeningTest, AReadOnlyFileIsRefusedAsSuch) {
  MakeDatabase(3);
  fs::permissions(dir_, fs::perms::all);  // the directory is writable: only the file is not
  fs::permissions(path_, fs::perms::owner_read | fs::perms::group_read | fs::perms::others_read);
  auto before = Listing();
  std::string bytes = ReadBytes(path_);
  std::string answer = AsNobody([&] { return OpenAnswer(Options()); });
  EXPECT_NE(answer.find("UNAVAILABLE"), std::string::npos) << answer;
  EXPECT_NE(answer.find(path_), std::string::npos) << answer;
  EXPECT_NE(answer.find("cannot be opened for writing: it is not writable (Permission denied)"),
            std::string::npos)
      << answer;
  EXPECT_EQ(Listing(), before);
  EXPECT_TRUE(ReadBytes(path_) == bytes);
}

TEST_F(HardeningTest, AReadOnlyDirectoryIsRefusedAsSuch) {
  MakeDatabase(3);
  ASSERT_EQ(::chown(path_.c_str(), kNobody, kNobody), 0);  // the file is writable by nobody
  fs::permissions(dir_, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                            fs::perms::others_read | fs::perms::others_exec);
  auto before = Listing();
  std::string answer = AsNobody([&] { return OpenAnswer(Options()); });
  EXPECT_NE(answer.find(path_), std::string::npos) << answer;
  EXPECT_NE(answer.find("its directory '" + dir_ + "' is not writable (Permission denied)"),
            std::string::npos)
      << answer;
  EXPECT_EQ(Listing(), before);
  // A new file in that directory: the same cause.
  answer = AsNobody([&] { return OpenAnswer(Options(dir_ + "/new.db")); });
  EXPECT_NE(answer.find(dir_ + "/new.db' cannot be created: its directory '" + dir_ +
                        "' is not writable (Permission denied)"),
            std::string::npos)
      << answer;
  EXPECT_EQ(Listing(), before);
}

TEST_F(HardeningTest, AMissingDirectoryIsNamed) {
  std::string path = dir_ + "/unmounted/state.db";
  ExpectRefused(Options(path), StatusCode::kUnavailable,
                "cannot be created: its directory '" + dir_ +
                    "/unmounted' does not exist (No such file or directory)",
                path);
  EXPECT_EQ(Listing(), std::set<std::string>{});
}

// In a child with a mount namespace of its own: a small tmpfs at `dir`, so that a test can fill it
// or make it read-only without touching the machine's file systems. "" when done; else why not.
std::string MountTmpfs(const std::string& dir, const std::string& size) {
  if (::unshare(CLONE_NEWNS) != 0) return std::string("unshare: ") + std::strerror(errno);
  if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0) {
    return std::string("private mounts: ") + std::strerror(errno);
  }
  if (::mount("tmpfs", dir.c_str(), "tmpfs", 0, ("size=" + size).c_str()) != 0) {
    return std::string("mount tmpfs: ") + std::strerror(errno);
  }
  return "";
}

// Writes zeros to `path` until the file system is full.
void FillUp(const std::string& path) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  std::string block(4096, '\0');
  while (::write(fd, block.data(), block.size()) > 0) {
  }
  std::string byte(1, '\0');
  while (::write(fd, byte.data(), 1) > 0) {
  }
  ::close(fd);
}

std::string ListingOf(const std::string& dir) {
  std::set<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) {
    names.insert(entry.path().filename().string());
  }
  std::string out;
  for (const auto& name : names) out += name + " ";
  return out;
}

TEST_F(HardeningTest, AFullFileSystemAtOpenSaysSoAndLeavesNothing) {
  std::string answer = InChild([&]() -> std::string {
    if (std::string why = MountTmpfs(dir_, "1m"); !why.empty()) return "SKIP " + why;
    std::string report;
    // A new database on a full file system.
    FillUp(dir_ + "/filler");
    report += "new: " + OpenAnswer(Options()) + "\n";
    report += "files: " + ListingOf(dir_) + "\n";
    // An existing one: it needs its -wal and -shm files.
    ::unlink((dir_ + "/filler").c_str());
    {
      auto store = OpenSqliteStore(Options());
      if (!store.ok()) return "cannot make the database: " + store.status().ToString();
      Batch batch;
      batch.schedules = {Schedule(1, "acme")};
      if (!(*store)->Commit(batch).ok()) return "cannot commit";
    }
    FillUp(dir_ + "/filler");
    report += "existing: " + OpenAnswer(Options()) + "\n";
    report += "files: " + ListingOf(dir_) + "\n";
    ::unlink((dir_ + "/filler").c_str());
    auto store = OpenSqliteStore(Options());
    report += "after: " + std::string(store.ok() ? "OK" : store.status().ToString()) + "\n";
    if (store.ok()) {
      auto snap = (*store)->Load();
      report += "schedules: " + std::to_string(snap.ok() ? snap->schedules.size() : 99) + "\n";
    }
    return report;
  });
  if (answer.rfind("SKIP", 0) == 0) GTEST_SKIP() << answer;
  SCOPED_TRACE(answer);
  EXPECT_NE(answer.find("new: UNAVAILABLE: database file '" + path_ +
                        "': cannot be created: database or disk is full (the file system of '" +
                        dir_ + "' is full)"),
            std::string::npos);
  EXPECT_NE(answer.find("files: filler \nexisting"), std::string::npos);
  std::string existing = answer.substr(answer.find("existing: "));
  EXPECT_NE(existing.find("UNAVAILABLE: database file '" + path_), std::string::npos);
  EXPECT_NE(existing.find("No space left on device"), std::string::npos);
  EXPECT_NE(existing.find("files: filler state.db \n"), std::string::npos);
  EXPECT_NE(answer.find("after: OK\nschedules: 1\n"), std::string::npos);
}

TEST_F(HardeningTest, AReadOnlyFileSystemIsNamed) {
  std::string answer = InChild([&]() -> std::string {
    if (std::string why = MountTmpfs(dir_, "4m"); !why.empty()) return "SKIP " + why;
    {
      auto store = OpenSqliteStore(Options());
      if (!store.ok()) return "cannot make the database: " + store.status().ToString();
    }
    if (::mount(nullptr, dir_.c_str(), nullptr, MS_REMOUNT | MS_RDONLY, nullptr) != 0) {
      return std::string("SKIP remount read-only: ") + std::strerror(errno);
    }
    return OpenAnswer(Options()) + "\nfiles: " + ListingOf(dir_);
  });
  if (answer.rfind("SKIP", 0) == 0) GTEST_SKIP() << answer;
  EXPECT_NE(answer.find("UNAVAILABLE: database file '" + path_ +
                        "' cannot be opened for writing: it is on a read-only file system"),
            std::string::npos)
      << answer;
  EXPECT_NE(answer.find("files: state.db "), std::string::npos) << answer;
}

// ---- Corruption in each kind of page ----

// The pages of a database file by what they hold: "header", "schema", "<table or index>
// interior|leaf|overflow", "freelist trunk".
struct PageMap {
  std::uint32_t page_size = 0;
  std::map<std::string, std::vector<std::uint32_t>> pages;
};

PageMap MapPages(const std::string& path) {
  PageMap map;
  sqlite3* db = nullptr;
  EXPECT_EQ(sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READONLY, nullptr), SQLITE_OK);
  sqlite3_stmt* stmt = nullptr;
  EXPECT_EQ(sqlite3_prepare_v2(db, "SELECT name, pageno, pagetype FROM dbstat ORDER BY pageno", -1,
                               &stmt, nullptr),
            SQLITE_OK)
      << sqlite3_errmsg(db);
  while (sqlite3_step(stmt) == SQLITE_ROW) {
    std::string name = reinterpret_cast<const char*>(sqlite3_column_text(stmt, 0));
    std::string type = reinterpret_cast<const char*>(sqlite3_column_text(stmt, 2));
    auto page = static_cast<std::uint32_t>(sqlite3_column_int64(stmt, 1));
    if (page == 1) continue;  // header and schema: below
    map.pages[name + " " + type].push_back(page);
  }
  sqlite3_finalize(stmt);
  sqlite3_close(db);
  std::string bytes = ReadBytes(path);
  auto be32 = [&](std::size_t at) {
    return static_cast<std::uint32_t>(static_cast<unsigned char>(bytes[at])) << 24 |
           static_cast<std::uint32_t>(static_cast<unsigned char>(bytes[at + 1])) << 16 |
           static_cast<std::uint32_t>(static_cast<unsigned char>(bytes[at + 2])) << 8 |
           static_cast<std::uint32_t>(static_cast<unsigned char>(bytes[at + 3]));
  };
  map.page_size = (static_cast<std::uint32_t>(static_cast<unsigned char>(bytes[16])) << 8) |
                  static_cast<unsigned char>(bytes[17]);
  if (std::uint32_t trunk = be32(32); trunk != 0) map.pages["freelist trunk"].push_back(trunk);
  return map;
}

std::string Garbage(std::size_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::string bytes(n, '\0');
  for (char& c : bytes) c = static_cast<char>(gen() & 0xff);
  return bytes;
}

class CorruptionTest : public HardeningTest {
 protected:
  // A closed database with every kind of page: schedules (two levels, overflow pages from long
  // errors), their unique index, history, the small tables, and a freelist (history deleted).
  void MakeRichDatabase() {
    {
      auto store = OpenOrDie();
      ASSERT_NE(store, nullptr);
      Batch batch;
      batch.syncs.push_back(SyncRow{"github", "issues", "every 30s", 30'000, true, 0, 0, ""});
      batch.integrations.push_back(IntegrationRow{"github", 4});
      batch.connections_added.push_back(ConnectionRow{"github", "acme"});
      for (std::uint64_t i = 1; i <= 3000; ++i) {
        batch.schedules.push_back(
            Schedule(i, "conn-" + std::to_string(i),
                     i % 500 == 0 ? std::string(40'000, 'e') : "HTTP 502 from upstream"));
        for (std::uint64_t r = 1; r <= 3; ++r) {
          batch.runs.push_back(FinishedRun(i, r, static_cast<std::int8_t>(r % 2)));
        }
      }
      ASSERT_TRUE(store->Commit(batch).ok());
      Batch deleted;
      for (std::uint64_t i = 2001; i <= 3000; ++i) deleted.schedules_deleted.push_back(i);
      ASSERT_TRUE(store->Commit(deleted).ok());
      auto snap = store->Load();
      ASSERT_TRUE(snap.ok());
      digest_ = Digest(*snap);
    }
    ASSERT_FALSE(fs::exists(path_ + "-wal"));
    map_ = MapPages(path_);
    // The reader of MapPages leaves an empty WAL and its index: not part of the database.
    ASSERT_EQ(fs::file_size(path_ + "-wal"), 0u);
    fs::remove(path_ + "-wal");
    fs::remove(path_ + "-shm");
  }

  // Overwrites page `page` (1-based) from byte `from` of the page to its end with garbage.
  void Damage(std::uint32_t page, std::size_t from = 0) {
    std::string bytes = ReadBytes(path_);
    std::size_t at = static_cast<std::size_t>(page - 1) * map_.page_size + from;
    ASSERT_LE(at + (map_.page_size - from), bytes.size());
    bytes.replace(at, map_.page_size - from, Garbage(map_.page_size - from, page));
    WriteBytes(path_, bytes);
  }

  // A commit that reads and writes every page of the schedules, their index and the history:
  // every schedule deleted, plus a new one.
  Batch TouchEverything() const {
    Batch batch;
    for (std::uint64_t i = 1; i <= 2000; ++i) batch.schedules_deleted.push_back(i);
    batch.schedules.push_back(Schedule(5000, "new"));
    return batch;
  }

  std::string digest_;
  PageMap map_;
};

TEST_F(CorruptionTest, EveryKindOfPageIsThere) {
  MakeRichDatabase();
  for (const char* kind :
       {"schedules internal", "schedules leaf", "schedules overflow", "schedules_by_key internal",
        "schedules_by_key leaf", "history internal", "history leaf", "meta leaf", "syncs leaf",
        "connections leaf", "integrations leaf", "freelist trunk"}) {
    EXPECT_EQ(map_.pages.count(kind), 1u) << kind;
  }
}

TEST_F(CorruptionTest, ADamagedHeaderOrSchemaPageIsRefusedAtOpen) {
  MakeRichDatabase();
  std::string good = ReadBytes(path_);
  struct Case {
    const char* what;
    std::size_t from, to;
  } cases[] = {{"the whole header", 0, 100},
               {"the page size", 16, 18},
               {"the schema page", 100, map_.page_size}};
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    std::string bytes = good;
    bytes.replace(c.from, c.to - c.from, Garbage(c.to - c.from, 7));
    WriteBytes(path_, bytes);
    ExpectRefused(Options(), StatusCode::kInternal, "not a syncsched database or is corrupt",
                  path_);
  }
}

// Each kind of page damaged in turn: verify_on_open refuses the file at open; without it, the
// damage is reported by the open, by Load or by a commit that touches the page, as INTERNAL
// naming the file; from then on the store refuses every call (Health says why), and the file is
// left as it was.
TEST_F(CorruptionTest, EachKindOfDamagedPageIsFoundAndNeverSilent) {
  MakeRichDatabase();
  std::string good = ReadBytes(path_);
  for (const auto& [kind, pages] : map_.pages) {
    for (std::uint32_t page : {pages.front(), pages.back()}) {
      SCOPED_TRACE(kind + " page " + std::to_string(page));
      WriteBytes(path_, good);
      Damage(page);
      std::string damaged = ReadBytes(path_);
      // The last page of an overflow chain holds only the end of a value: garbage there changes
      // the value's bytes, which SQLite cannot see (its pages have no checksum) but quick_check
      // can (the chain's length no longer matches): only verify_on_open finds it.
      std::size_t at = static_cast<std::size_t>(page - 1) * map_.page_size;
      bool content_only = kind == "schedules overflow" && good.compare(at, 4, "\0\0\0\0", 4) == 0;
      SqliteStoreOptions verify = Options();
      verify.verify_on_open = true;
      ExpectRefused(verify, StatusCode::kInternal, "not a syncsched database or is corrupt", path_);

      std::string where;
      Status found;
      {
        auto store = OpenSqliteStore(Options());
        if (!store.ok()) {
          where = "open";
          found = store.status();
        } else if (auto snap = (*store)->Load(); !snap.ok()) {
          where = "load";
          found = snap.status();
        } else if (Status s = (*store)->Commit(TouchEverything()); !s.ok()) {
          where = "commit";
          found = s;
        }
        if (store.ok() && !found.ok()) {
          // Broken for good: every later call refuses, and Health says so.
          EXPECT_EQ((*store)->Health().code(), StatusCode::kInternal);
          EXPECT_TRUE(Contains((*store)->Health(), "SQLite found the file corrupt"))
              << (*store)->Health();
          Batch small;
          small.schedules = {Schedule(9000, "after")};
          Status again = (*store)->Commit(small);
          EXPECT_EQ(again.code(), StatusCode::kInternal) << again;
          EXPECT_TRUE(Contains(again, "refuses to commit or load")) << again;
          EXPECT_EQ((*store)->Load().status().code(), StatusCode::kInternal);
        }
      }
      if (content_only && found.ok()) {
        std::printf("  %-28s page %5u: content only, found by verify_on_open alone\n", kind.c_str(),
                    page);
        continue;
      }
      ASSERT_FALSE(found.ok()) << "the damage went unnoticed";
      EXPECT_EQ(found.code(), StatusCode::kInternal) << where << ": " << found;
      EXPECT_TRUE(Contains(found, path_)) << found;
      EXPECT_TRUE(Contains(found, "corrupt")) << found;
      EXPECT_TRUE(ReadBytes(path_) == damaged)
          << "the damaged file was written to (" << where << ")";
      EXPECT_EQ(Listing(), (std::set<std::string>{"state.db"}));
      std::printf("  %-28s page %5u: found at %s\n", kind.c_str(), page, where.c_str());
    }
  }
  WriteBytes(path_, good);
  EXPECT_EQ(Reopened(Options()), digest_);
}

// ---- Page checksums (SqliteStoreOptions::page_checksums, on by default) ----

// Whether every page of the database file at `path` carries its checksum; "" if so, else the
// first page that does not.
std::string PagesThatFail(const std::string& path) {
  std::string bytes = ReadBytes(path);
  if (bytes.size() < 100) return "no header";
  std::size_t size = (static_cast<std::size_t>(static_cast<unsigned char>(bytes[16])) << 8) |
                     static_cast<unsigned char>(bytes[17]);
  if (size == 1) size = 65536;
  if (static_cast<unsigned char>(bytes[20]) != cksum::kReserveBytes) return "no reserved bytes";
  std::string failing;
  for (std::size_t at = 0; at + size <= bytes.size(); at += size) {
    const auto* page = reinterpret_cast<const unsigned char*>(bytes.data() + at);
    auto number = static_cast<std::uint32_t>(at / size + 1);
    std::uint64_t stored = 0;
    for (int i = 0; i < 8; ++i) stored |= std::uint64_t{page[size - 8 + i]} << (8 * i);
    if (stored != cksum::PageChecksum(page, size, number)) {
      failing += (failing.empty() ? "page " : ", ") + std::to_string(number);
    }
  }
  return failing;
}

// Writes `bytes` at `offset` of the file at `path` in place (same inode), as a damaged disk or a
// stray write would, bypassing SQLite.
void Poke(const std::string& path, std::size_t offset, const std::string& bytes) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0) << path;
  ASSERT_EQ(::pwrite(fd, bytes.data(), bytes.size(), static_cast<off_t>(offset)),
            static_cast<ssize_t>(bytes.size()));
  ::close(fd);
}

TEST(PageChecksumTest, EveryBitCountsAndSoDoesThePlace) {
  std::vector<unsigned char> page(16384);
  std::mt19937 gen(11);
  for (auto& b : page) b = static_cast<unsigned char>(gen());
  const std::uint64_t sum = cksum::PageChecksum(page.data(), page.size(), 7);
  // Every single-bit flip outside the reserved bytes changes the checksum.
  for (std::size_t byte = 0; byte < page.size() - 8; ++byte) {
    for (int bit = 0; bit < 8; ++bit) {
      page[byte] ^= static_cast<unsigned char>(1 << bit);
      ASSERT_NE(cksum::PageChecksum(page.data(), page.size(), 7), sum) << byte << ":" << bit;
      page[byte] ^= static_cast<unsigned char>(1 << bit);
    }
  }
  // The reserved bytes are not part of it; the page number is.
  page[page.size() - 1] ^= 0xff;
  EXPECT_EQ(cksum::PageChecksum(page.data(), page.size(), 7), sum);
  EXPECT_NE(cksum::PageChecksum(page.data(), page.size(), 8), sum);
  // Two 8-byte words swapped (a reordering that a plain sum would miss).
  std::swap_ranges(page.begin() + 64, page.begin() + 72, page.begin() + 72);
  EXPECT_NE(cksum::PageChecksum(page.data(), page.size(), 7), sum);
  // An all-zero page (a hole in the file) does not verify: its stored checksum would be 0.
  std::vector<unsigned char> zeros(4096);
  for (std::uint32_t n : {1u, 2u, 1000u}) {
    EXPECT_NE(cksum::PageChecksum(zeros.data(), zeros.size(), n), 0u);
  }
}

TEST_F(CorruptionTest, EveryPageCarriesItsChecksum) {
  MakeRichDatabase();
  EXPECT_EQ(PagesThatFail(path_), "");
}

// One byte changed in each kind of page, where SQLite itself sees nothing wrong (the last byte
// before the reserved bytes: the end of a record's payload in a leaf, of a key in an interior
// page, of a value in an overflow page, unused space in a trunk), with the store closed: found at
// open, by Load or by the first commit that reads the page, as INTERNAL naming the file and the
// page; the store then refuses everything, Health says why, and the file is not written. Without
// page checksums, the same damage goes unnoticed in some kinds of page (printed): what this closes.
TEST_F(CorruptionTest, AChangedByteInEachKindOfPageIsFoundByItsChecksum) {
  MakeRichDatabase();
  std::string good = ReadBytes(path_);
  std::map<std::string, std::vector<std::uint32_t>> pages = map_.pages;
  pages["schema"] = {1};
  int unnoticed_without = 0;
  for (const auto& [kind, list] : pages) {
    for (std::uint32_t page : {list.front(), list.back()}) {
      SCOPED_TRACE(kind + " page " + std::to_string(page));
      std::size_t at = static_cast<std::size_t>(page) * map_.page_size - 9;
      std::string damaged = good;
      damaged[at] = static_cast<char>(damaged[at] ^ 0x01);
      // Without checksums (the reserved bytes stay, unchecked): does anything notice?
      WriteBytes(path_, damaged);
      {
        SqliteStoreOptions plain = Options();
        plain.page_checksums = false;
        auto store = OpenSqliteStore(plain);
        bool noticed = !store.ok();
        if (!noticed) {
          auto snap = (*store)->Load();
          noticed = !snap.ok() || !(*store)->Commit(TouchEverything()).ok();
        }
        if (!noticed) ++unnoticed_without;
        std::printf("  %-28s page %5u: without checksums %s;", kind.c_str(), page,
                    noticed ? "found" : "UNNOTICED");
      }
      WriteBytes(path_, damaged);
      std::string where;
      Status found;
      {
        auto store = OpenSqliteStore(Options());
        if (!store.ok()) {
          where = "open";
          found = store.status();
        } else if (auto snap = (*store)->Load(); !snap.ok()) {
          where = "load";
          found = snap.status();
        } else if (Status s = (*store)->Commit(TouchEverything()); !s.ok()) {
          where = "commit";
          found = s;
        }
        if (store.ok() && !found.ok()) {
          EXPECT_EQ((*store)->Health().code(), StatusCode::kInternal);
          EXPECT_TRUE(Contains((*store)->Health(), "fails its checksum")) << (*store)->Health();
          Batch small;
          small.schedules = {Schedule(9000, "after")};
          EXPECT_EQ((*store)->Commit(small).code(), StatusCode::kInternal);
          EXPECT_EQ((*store)->Load().status().code(), StatusCode::kInternal);
        }
      }
      std::printf(" with them found at %s\n", where.empty() ? "NOWHERE" : where.c_str());
      ASSERT_FALSE(found.ok()) << "the damage went unnoticed";
      EXPECT_EQ(found.code(), StatusCode::kInternal) << where << ": " << found;
      EXPECT_TRUE(Contains(found, path_)) << found;
      EXPECT_TRUE(Contains(found, "page " + std::to_string(page) + " fails its checksum")) << found;
      EXPECT_TRUE(ReadBytes(path_) == damaged)
          << "the damaged file was written to (" << where << ")";
      EXPECT_EQ(Listing(), (std::set<std::string>{"state.db"}));
    }
  }
  EXPECT_GT(unnoticed_without, 0);
  WriteBytes(path_, good);
  EXPECT_EQ(Reopened(Options()), digest_);
}

// A whole, valid page written at the wrong place (a misdirected write) or a hole (zeros, as a
// file system may leave after a crash): the page number and the seed are in the checksum.
TEST_F(CorruptionTest, AMisplacedPageOrAZeroedPageIsFound) {
  MakeRichDatabase();
  std::string good = ReadBytes(path_);
  const auto& leaves = map_.pages.at("schedules leaf");
  ASSERT_GE(leaves.size(), 2u);
  std::size_t size = map_.page_size;
  std::string copied = good;
  copied.replace((leaves.back() - 1) * size, size, good.substr((leaves.front() - 1) * size, size));
  std::string zeroed = good;
  zeroed.replace((leaves.back() - 1) * size, size, std::string(size, '\0'));
  for (const std::string* damaged : {&copied, &zeroed}) {
    SCOPED_TRACE(damaged == &copied ? "misplaced" : "zeroed");
    WriteBytes(path_, *damaged);
    auto store = OpenSqliteStore(Options());
    ASSERT_TRUE(store.ok()) << store.status();
    auto snap = (*store)->Load();
    ASSERT_FALSE(snap.ok());
    EXPECT_EQ(snap.status().code(), StatusCode::kInternal);
    EXPECT_TRUE(
        Contains(snap.status(), "page " + std::to_string(leaves.back()) + " fails its checksum"))
        << snap.status();
    EXPECT_EQ((*store)->Health().code(), StatusCode::kInternal);
    store->reset();
    EXPECT_TRUE(ReadBytes(path_) == *damaged);
  }
}

// The same with the store open: the byte is changed on disk behind SQLite's back, in a page the
// store has not read since it opened (a page SQLite still holds in its cache is not read again,
// and the engine's state is right meanwhile; the next open reads it). Found by the next Load or
// commit that reads the page; nothing is written to the file from then on.
TEST_F(CorruptionTest, AByteChangedWhileTheStoreIsOpenIsFoundAtTheNextRead) {
  MakeRichDatabase();
  std::string good = ReadBytes(path_);
  for (const auto& [kind, list] : map_.pages) {
    // Read (and cached) by the open itself: meta (max_uid) and the run journal (its records).
    if (kind == "meta leaf" || kind == "journal leaf") continue;
    std::uint32_t page = list.back();
    SCOPED_TRACE(kind + " page " + std::to_string(page));
    WriteBytes(path_, good);
    auto store = OpenSqliteStore(Options());
    ASSERT_TRUE(store.ok()) << store.status();
    std::size_t at = static_cast<std::size_t>(page) * map_.page_size - 9;
    Poke(path_, at, std::string(1, static_cast<char>(good[at] ^ 0x20)));
    std::string damaged = ReadBytes(path_);
    Status found = (*store)->Load().status();
    const char* where = "load";
    if (found.ok()) {
      found = (*store)->Commit(TouchEverything());
      where = "commit";
    }
    ASSERT_FALSE(found.ok()) << "the damage went unnoticed";
    EXPECT_EQ(found.code(), StatusCode::kInternal) << found;
    EXPECT_TRUE(Contains(found, path_)) << found;
    EXPECT_TRUE(Contains(found, "fails its checksum")) << found;
    EXPECT_EQ((*store)->Health().code(), StatusCode::kInternal);
    store->reset();
    EXPECT_TRUE(ReadBytes(path_) == damaged) << "the damaged file was written to";
    std::printf("  %-28s page %5u: found at %s\n", kind.c_str(), page, where);
  }
}

// A file written without page checksums (an older syncsched, or page_checksums = false) gets them
// at its next open (one VACUUM), with its contents unchanged; from then on its pages are checked.
// page_checksums = false opens a checksummed file too (unchecked).
TEST_F(CorruptionTest, AFileWithoutChecksumsGetsThemAtOpen) {
  SqliteStoreOptions plain = Options();
  plain.page_checksums = false;
  std::string digest;
  {
    auto store = OpenOrDie(plain);
    ASSERT_NE(store, nullptr);
    Batch batch;
    batch.syncs.push_back(SyncRow{"github", "issues", "every 30s", 30'000, true, 0, 0, ""});
    for (std::uint64_t i = 1; i <= 2000; ++i) {
      batch.schedules.push_back(Schedule(i, "conn-" + std::to_string(i)));
      batch.runs.push_back(FinishedRun(i, 1, 0));
    }
    ASSERT_TRUE(store->Commit(batch).ok());
    digest = Digest(*store->Load());
  }
  ASSERT_EQ(ReadBytes(path_)[20], 0) << "made without reserved bytes";
  EXPECT_EQ(PagesThatFail(path_), "no reserved bytes");
  EXPECT_EQ(Reopened(Options()), digest);  // migrated
  EXPECT_EQ(ReadBytes(path_)[20], cksum::kReserveBytes);
  EXPECT_EQ(PagesThatFail(path_), "");
  EXPECT_EQ(Listing(), (std::set<std::string>{"state.db"}));
  EXPECT_EQ(Reopened(plain), digest);
  EXPECT_EQ(PagesThatFail(path_), "") << "page_checksums = false dropped them";
  // Checked from now on.
  std::string bytes = ReadBytes(path_);
  std::size_t size = (static_cast<std::size_t>(static_cast<unsigned char>(bytes[16])) << 8) |
                     static_cast<unsigned char>(bytes[17]);
  std::size_t at = (bytes.size() / size) * size - 9;  // the end of the last page
  bytes[at] = static_cast<char>(bytes[at] ^ 1);
  WriteBytes(path_, bytes);
  auto store = OpenSqliteStore(Options());
  Status found = store.ok() ? (*store)->Load().status() : store.status();
  if (found.ok())
    found = (*store)->Commit([] {
      Batch b;
      for (std::uint64_t i = 1; i <= 2000; ++i) b.schedules_deleted.push_back(i);
      return b;
    }());
  EXPECT_EQ(found.code(), StatusCode::kInternal) << found;
  EXPECT_TRUE(Contains(found, "fails its checksum")) << found;
}

// The header's count of bytes reserved per page damaged from 8 to 0 (which would turn the checks
// off and make the file look like an older one to migrate): refused, not rewritten.
TEST_F(CorruptionTest, AHeaderThatDropsTheReservedBytesIsRefused) {
  MakeRichDatabase();
  std::string bytes = ReadBytes(path_);
  ASSERT_EQ(bytes[20], cksum::kReserveBytes);
  bytes[20] = 0;
  WriteBytes(path_, bytes);
  ExpectRefused(Options(), StatusCode::kInternal, "the header is damaged", path_);
}

// A crash leaves the WAL with commits not yet in the file. `commits` commits, one schedule each,
// made by a child process that then dies without closing.
class WalTest : public HardeningTest {
 protected:
  void CrashAfterCommits(int commits) {
    MakeDatabase(path_, 1);
    std::string answer = InChild([&]() -> std::string {
      auto store = OpenSqliteStore(Options());
      if (!store.ok()) return store.status().ToString();
      for (int i = 2; i < 2 + commits; ++i) {
        Batch batch;
        batch.schedules = {Schedule(static_cast<std::uint64_t>(i), "c" + std::to_string(i))};
        if (!(*store)->Commit(batch).ok()) return "commit failed";
      }
      ::_exit(0);  // a crash: no close, no checkpoint
    });
    ASSERT_EQ(answer, "");
    ASSERT_GT(fs::file_size(path_ + "-wal"), 0u);
  }

  std::uint32_t WalPageSize() {
    std::string wal = ReadBytes(path_ + "-wal");
    return static_cast<std::uint32_t>(static_cast<unsigned char>(wal[8])) << 24 |
           static_cast<std::uint32_t>(static_cast<unsigned char>(wal[9])) << 16 |
           static_cast<std::uint32_t>(static_cast<unsigned char>(wal[10])) << 8 |
           static_cast<std::uint32_t>(static_cast<unsigned char>(wal[11]));
  }
  std::size_t Frames() { return (fs::file_size(path_ + "-wal") - 32) / (WalPageSize() + 24); }
  // Damages frame `n` (1-based): `header` its 24-byte header, else its page.
  void DamageFrame(std::size_t n, bool header) {
    std::string wal = ReadBytes(path_ + "-wal");
    std::size_t at = 32 + (n - 1) * (WalPageSize() + 24) + (header ? 8 : 24 + 100);
    wal.replace(at, 16, Garbage(16, static_cast<unsigned>(n)));
    WriteBytes(path_ + "-wal", wal);
  }
  std::size_t Schedules() {
    auto store = OpenSqliteStore(Options());
    if (!store.ok()) return 999;
    auto snap = (*store)->Load();
    return snap.ok() ? snap->schedules.size() : 999;
  }
};

TEST_F(WalTest, AnIntactWalIsReplayed) {
  CrashAfterCommits(5);
  EXPECT_EQ(Schedules(), 6u);
}

TEST_F(WalTest, ADamagedFrameInTheMiddleIsRefusedNotSkipped) {
  CrashAfterCommits(5);
  std::size_t frames = Frames();
  ASSERT_GE(frames, 5u);
  for (bool header : {false, true}) {
    SCOPED_TRACE(header ? "frame header" : "frame page");
    std::string wal = ReadBytes(path_ + "-wal");
    DamageFrame(2, header);
    std::string damaged = ReadBytes(path_ + "-wal");
    ExpectRefused(Options(), StatusCode::kInternal, "fails its checksum but frame", path_);
    auto refused = OpenSqliteStore(Options());
    ASSERT_FALSE(refused.ok());
    EXPECT_TRUE(Contains(refused.status(), path_ + "-wal' is damaged")) << refused.status();
    EXPECT_TRUE(ReadBytes(path_ + "-wal") == damaged) << "the WAL was written to";
    WriteBytes(path_ + "-wal", wal);
  }
  EXPECT_EQ(Schedules(), 6u);
}

TEST_F(WalTest, ADamagedHeaderWithFramesIsRefused) {
  CrashAfterCommits(3);
  std::string wal = ReadBytes(path_ + "-wal");
  std::string damaged = wal;
  damaged.replace(16, 8, Garbage(8, 3));  // the salts
  WriteBytes(path_ + "-wal", damaged);
  ExpectRefused(Options(), StatusCode::kInternal, "its header is invalid", path_);
  WriteBytes(path_ + "-wal", wal);
  EXPECT_EQ(Schedules(), 4u);
}

// A write torn by the crash, at the very end of the log: the last commit is dropped, as SQLite
// does, and everything before it kept.
TEST_F(WalTest, ATornLastFrameDropsOnlyTheLastCommit) {
  CrashAfterCommits(4);
  DamageFrame(Frames(), false);
  EXPECT_EQ(Schedules(), 4u);
}

// A WAL frame damaged on disk while the store is open (after SQLite wrote it, before a checkpoint
// copies it into the file): the checkpoint finds it (its checksum was kept when it was written),
// copies nothing damaged into the file, and the store breaks (the commit that triggered the
// checkpoint stands: SQLite ignores a failed automatic checkpoint). The damaged frame is left as
// it is, and the next open refuses the WAL.
TEST_F(WalTest, AFrameDamagedWhileTheStoreIsOpenIsNeverCopiedIntoTheFile) {
  MakeDatabase(path_, 10);
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  Batch first;
  for (std::uint64_t i = 100; i < 400; ++i) {
    first.schedules.push_back(Schedule(i, "w-" + std::to_string(i)));
  }
  ASSERT_TRUE(store->Commit(first).ok());
  ASSERT_GE(Frames(), 3u);
  std::size_t at = 32 + 24 + 200;  // inside the page of frame 1
  std::string wal = ReadBytes(path_ + "-wal");
  Poke(path_ + "-wal", at, std::string(1, static_cast<char>(wal[at] ^ 0x04)));
  std::string damaged_frame = ReadBytes(path_ + "-wal").substr(32, 24 + WalPageSize());
  ASSERT_TRUE(internal::SetAutoCheckpointForTest(*store, 1).ok());
  Batch second;
  second.schedules.push_back(Schedule(500, "after"));
  EXPECT_TRUE(store->Commit(second).ok());  // committed; its checkpoint fails
  Status health = store->Health();
  EXPECT_EQ(health.code(), StatusCode::kInternal) << health;
  EXPECT_TRUE(Contains(health, path_ + "-wal")) << health;
  EXPECT_TRUE(Contains(health, "fails its checksum")) << health;
  EXPECT_EQ(store->Commit(second).code(), StatusCode::kInternal);
  EXPECT_EQ(PagesThatFail(path_), "") << "a damaged page was copied into the file";
  store.reset();  // the checkpoint at close fails the same way
  EXPECT_EQ(PagesThatFail(path_), "") << "a damaged page was copied into the file";
  EXPECT_TRUE(ReadBytes(path_ + "-wal").substr(32, 24 + WalPageSize()) == damaged_frame);
  ExpectRefused(Options(), StatusCode::kInternal, "fails its checksum but frame", path_);
}

// The same for a log left by a crash: its frames were not written by this store, but their
// checksums are learnt when the log is opened, so damage made after the open is found too: a
// byte of every frame's page is changed once the store is open, and the Load that reads the
// pages from the log finds it.
TEST_F(WalTest, AFrameOfACrashLeftLogDamagedAfterTheOpenIsFound) {
  CrashAfterCommits(5);
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  std::string wal = ReadBytes(path_ + "-wal");
  for (std::size_t frame = 1; frame <= Frames(); ++frame) {
    std::size_t at = 32 + (frame - 1) * (24 + WalPageSize()) + 24 + 300;
    Poke(path_ + "-wal", at, std::string(1, static_cast<char>(wal[at] ^ 0x10)));
  }
  auto snap = store->Load();
  ASSERT_FALSE(snap.ok()) << "the damage went unnoticed";
  EXPECT_EQ(snap.status().code(), StatusCode::kInternal) << snap.status();
  EXPECT_TRUE(Contains(snap.status(), path_ + "-wal")) << snap.status();
  EXPECT_TRUE(Contains(snap.status(), "fails its checksum")) << snap.status();
  EXPECT_EQ(store->Health().code(), StatusCode::kInternal);
  store.reset();
  EXPECT_EQ(PagesThatFail(path_), "") << "a damaged page was copied into the file";
}

// The shared-memory index is rebuilt from the WAL when it does not check out.
TEST_F(WalTest, ADamagedShmIsRebuiltFromTheWal) {
  CrashAfterCommits(3);
  ASSERT_TRUE(fs::exists(path_ + "-shm"));
  WriteBytes(path_ + "-shm", Garbage(fs::file_size(path_ + "-shm"), 5));
  EXPECT_EQ(Schedules(), 4u);
}

// ---- What the open-time check costs ----
//
// Not run by default: SYNCSCHED_CHECK_COST_SCHEDULES=1000000 ./syncsched_store_tests
// --gtest_also_run_disabled_tests --gtest_filter='*OpenTimeCheckCost*' (docs/reliability.md).
TEST_F(HardeningTest, DISABLED_OpenTimeCheckCost) {
  const char* env = std::getenv("SYNCSCHED_CHECK_COST_SCHEDULES");
  const std::uint64_t n = env != nullptr ? std::strtoull(env, nullptr, 10) : 1'000'000;
  const char* runs_env = std::getenv("SYNCSCHED_CHECK_COST_RUNS");
  const std::uint64_t runs = runs_env != nullptr ? std::strtoull(runs_env, nullptr, 10) : 1;
  using Clock = std::chrono::steady_clock;
  auto seconds = [](Clock::duration d) { return std::chrono::duration<double>(d).count(); };
  // Written without page checksums (as an older syncsched did), so that the migration is timed.
  SqliteStoreOptions plain = Options();
  plain.page_checksums = false;
  {
    auto store = OpenOrDie(plain);
    ASSERT_NE(store, nullptr);
    for (std::uint64_t first = 1; first <= n; first += 10'000) {
      Batch batch;
      for (std::uint64_t i = first; i < first + 10'000 && i <= n; ++i) {
        batch.schedules.push_back(Schedule(i, "connection-" + std::to_string(i)));
        for (std::uint64_t r = 1; r <= runs; ++r) {
          batch.runs.push_back(FinishedRun(i, r, static_cast<std::int8_t>(r % 2)));
        }
      }
      ASSERT_TRUE(store->Commit(batch).ok());
    }
  }
  // Open, Load and open with verify_on_open, as `options` says; returns the three times.
  auto measure = [&](const SqliteStoreOptions& options) {
    auto t0 = Clock::now();
    auto store = OpenOrDie(options);
    auto t1 = Clock::now();
    EXPECT_NE(store, nullptr);
    if (store == nullptr) return std::string();
    auto snap = store->Load();
    auto t2 = Clock::now();
    EXPECT_TRUE(snap.ok());
    EXPECT_EQ(snap->schedules.size(), n);
    store.reset();
    SqliteStoreOptions verify = options;
    verify.verify_on_open = true;
    auto t3 = Clock::now();
    auto checked = OpenOrDie(verify);
    auto t4 = Clock::now();
    EXPECT_NE(checked, nullptr);
    char line[200];
    std::snprintf(line, sizeof line, "open %.4f s, Load %.2f s, open with verify_on_open %.2f s",
                  seconds(t1 - t0), seconds(t2 - t1), seconds(t4 - t3));
    return std::string(line);
  };
  double size_mb = static_cast<double>(fs::file_size(path_)) / 1e6;
  std::string before = measure(plain);
  auto t0 = Clock::now();
  ASSERT_NE(OpenOrDie(), nullptr);  // migrates: VACUUM
  auto t1 = Clock::now();
  double migrated_mb = static_cast<double>(fs::file_size(path_)) / 1e6;
  std::string with = measure(Options());
  std::string unchecked = measure(plain);  // the same file, its checksums not verified
  std::printf(
      "%llu schedules, %llu runs each\n"
      "  file without checksums (%.0f MB): %s\n"
      "  migration at open (VACUUM): %.2f s, file %.0f MB\n"
      "  with page checksums:                %s\n"
      "  same file, page_checksums = false:  %s\n",
      static_cast<unsigned long long>(n), static_cast<unsigned long long>(runs), size_mb,
      before.c_str(), seconds(t1 - t0), migrated_mb, with.c_str(), unchecked.c_str());
}

}  // namespace
}  // namespace syncsched::store
