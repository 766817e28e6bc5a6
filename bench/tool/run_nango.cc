// Baseline "nango": Nango's scheduling design (its orchestrator's scheduler and task queue) on
// SQLite. A `schedules` table with `next_execution_at` is polled every 100 ms: in one transaction
// per tick, each due schedule gets one `tasks` row (unless its last task is still CREATED or
// STARTED: then the slot is skipped), and its next slot is written back. Workers dequeue CREATED
// tasks in batches (marking them STARTED), run them, and write each outcome back (SUCCEEDED or
// FAILED; a failure may insert a retry task, due after its backoff). One connection serialises
// every statement, as one SQLite writer does; the file is in WAL mode with synchronous=NORMAL, as
// syncsched's store is. In virtual time one thread ticks the clock by 100 ms and runs the workers'
// part inline after each poll.
#include <sqlite3.h>

#include <condition_variable>
#include <filesystem>
#include <queue>
#include <thread>

#include "tool/baseline.h"
#include "tool/runners.h"

namespace syncsched::benchtool {

namespace {

constexpr std::int64_t kPollMs = 100;
constexpr int kDequeueBatch = 256;

double MsSince(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count();
}

struct Task {
  std::int64_t id;
  std::uint32_t idx;  // schedule index (rowid - 1)
  std::int64_t slot_ms;
  int attempt;
};

struct Outcome {
  Task task;
  bool fail;
};

class NangoDb {
 public:
  ~NangoDb() { Close(); }

  std::string Open(const std::string& path) {
    if (sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, nullptr) !=
        SQLITE_OK) {
      return "opening " + path + ": " + (db_ ? sqlite3_errmsg(db_) : "out of memory");
    }
    return Exec(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA cache_size=-65536;"
        "CREATE TABLE IF NOT EXISTS schedules(id INTEGER PRIMARY KEY, name TEXT NOT NULL,"
        " state TEXT NOT NULL, starts_at INTEGER NOT NULL, frequency_ms INTEGER NOT NULL,"
        " next_execution_at INTEGER NOT NULL, last_task_id INTEGER, created_at INTEGER,"
        " updated_at INTEGER);"
        "CREATE INDEX IF NOT EXISTS schedules_due ON schedules(next_execution_at)"
        " WHERE state = 'STARTED';"
        "CREATE TABLE IF NOT EXISTS tasks(id INTEGER PRIMARY KEY, name TEXT NOT NULL,"
        " payload TEXT NOT NULL, schedule_id INTEGER NOT NULL, state TEXT NOT NULL,"
        " scheduled_at INTEGER NOT NULL, starts_after INTEGER NOT NULL, attempt INTEGER NOT NULL,"
        " created_at INTEGER NOT NULL, last_state_transition_at INTEGER NOT NULL, output TEXT);"
        "CREATE INDEX IF NOT EXISTS tasks_todo ON tasks(id) WHERE state = 'CREATED';");
  }

  void Close() {
    for (auto* s : {due_, insert_task_, update_schedule_, dequeue_, mark_started_, complete_,
                    next_of_, insert_schedule_}) {
      sqlite3_finalize(s);
    }
    due_ = insert_task_ = update_schedule_ = dequeue_ = mark_started_ = complete_ = next_of_ =
        insert_schedule_ = nullptr;
    if (db_) sqlite3_close(db_);
    db_ = nullptr;
  }

  std::string Prepare() {
    struct {
      sqlite3_stmt** stmt;
      const char* sql;
    } all[] = {
        {&due_,
         "SELECT s.id, s.next_execution_at, s.frequency_ms, s.starts_at, t.state FROM schedules s"
         " LEFT JOIN tasks t ON t.id = s.last_task_id"
         " WHERE s.state = 'STARTED' AND s.next_execution_at <= ?1 ORDER BY s.next_execution_at"},
        {&insert_task_,
         "INSERT INTO tasks(name, payload, schedule_id, state, scheduled_at, starts_after, attempt,"
         " created_at, last_state_transition_at) VALUES(?1, ?2, ?3, 'CREATED', ?4, ?5, ?6, ?7, "
         "?7)"},
        {&update_schedule_,
         "UPDATE schedules SET next_execution_at = ?1, last_task_id = COALESCE(?2, last_task_id),"
         " updated_at = ?3 WHERE id = ?4"},
        {&dequeue_,
         "SELECT id, schedule_id, scheduled_at, attempt FROM tasks"
         " WHERE state = 'CREATED' AND starts_after <= ?1 ORDER BY id LIMIT ?2"},
        {&mark_started_,
         "UPDATE tasks SET state = 'STARTED', last_state_transition_at = ?1 WHERE id = ?2"},
        {&complete_,
         "UPDATE tasks SET state = ?1, output = ?2, last_state_transition_at = ?3 WHERE id = ?4"},
        {&next_of_, "SELECT next_execution_at FROM schedules WHERE id = ?1"},
        {&insert_schedule_,
         "INSERT INTO schedules(id, name, state, starts_at, frequency_ms, next_execution_at,"
         " created_at, updated_at) VALUES(?1, ?2, 'STARTED', ?3, ?4, ?3, ?3, ?3)"},
    };
    for (auto& a : all) {
      if (sqlite3_prepare_v3(db_, a.sql, -1, SQLITE_PREPARE_PERSISTENT, a.stmt, nullptr) !=
          SQLITE_OK) {
        return std::string("preparing: ") + sqlite3_errmsg(db_);
      }
    }
    return "";
  }

  std::string Exec(const char* sql) {
    char* err = nullptr;
    if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
      std::string e = err ? err : "error";
      sqlite3_free(err);
      return e;
    }
    return "";
  }

  // The start: one row per schedule, due now (the immediate run), in one transaction.
  std::string InsertSchedules(const ScheduleTable& table, std::int64_t now) {
    std::lock_guard lock(mu_);
    if (auto e = Exec("BEGIN IMMEDIATE"); !e.empty()) return e;
    std::string name;
    for (std::uint32_t i = 0; i < table.n; ++i) {
      name = "sync:m" + std::to_string(table.entry_of[i]) + ":c" + std::to_string(i);
      sqlite3_bind_int64(insert_schedule_, 1, i + 1);
      sqlite3_bind_text(insert_schedule_, 2, name.data(), static_cast<int>(name.size()),
                        SQLITE_STATIC);
      sqlite3_bind_int64(insert_schedule_, 3, now);
      sqlite3_bind_int64(insert_schedule_, 4, table.Period(i));
      if (sqlite3_step(insert_schedule_) != SQLITE_DONE) return sqlite3_errmsg(db_);
      sqlite3_reset(insert_schedule_);
    }
    return Exec("COMMIT");
  }

  // One tick of the scheduler. Returns the tasks created.
  std::int64_t Poll(std::int64_t now, bool spread, std::uint64_t* skipped, std::string* error) {
    std::lock_guard lock(mu_);
    if (auto e = Exec("BEGIN IMMEDIATE"); !e.empty()) {
      *error = e;
      return 0;
    }
    due_rows_.clear();
    sqlite3_bind_int64(due_, 1, now);
    while (sqlite3_step(due_) == SQLITE_ROW) {
      const unsigned char* st = sqlite3_column_text(due_, 4);
      bool busy = st && (std::string_view(reinterpret_cast<const char*>(st)) == "CREATED" ||
                         std::string_view(reinterpret_cast<const char*>(st)) == "STARTED");
      due_rows_.push_back({sqlite3_column_int64(due_, 0), sqlite3_column_int64(due_, 1),
                           sqlite3_column_int64(due_, 2), sqlite3_column_int64(due_, 3), busy});
    }
    sqlite3_reset(due_);
    std::int64_t created = 0;
    std::string name, payload;
    for (const auto& d : due_rows_) {
      std::optional<std::int64_t> task;
      if (d.busy) {
        ++*skipped;
      } else {
        name = "sync:" + std::to_string(d.id);
        payload =
            "{\"schedule\":" + std::to_string(d.id) + ",\"slot\":" + std::to_string(d.next) + "}";
        sqlite3_bind_text(insert_task_, 1, name.data(), static_cast<int>(name.size()),
                          SQLITE_STATIC);
        sqlite3_bind_text(insert_task_, 2, payload.data(), static_cast<int>(payload.size()),
                          SQLITE_STATIC);
        sqlite3_bind_int64(insert_task_, 3, d.id);
        sqlite3_bind_int64(insert_task_, 4, d.next);
        sqlite3_bind_int64(insert_task_, 5, d.next);
        sqlite3_bind_int64(insert_task_, 6, 1);
        sqlite3_bind_int64(insert_task_, 7, now);
        if (sqlite3_step(insert_task_) != SQLITE_DONE) *error = sqlite3_errmsg(db_);
        sqlite3_reset(insert_task_);
        task = sqlite3_last_insert_rowid(db_);
        ++created;
      }
      std::int64_t next = d.next == d.starts_at ? FirstSlot(static_cast<std::uint64_t>(d.id - 1),
                                                            d.starts_at, d.freq, spread)
                                                : d.next;
      if (next <= now) next = NextFutureSlot(next, d.freq, now, skipped);
      sqlite3_bind_int64(update_schedule_, 1, next);
      if (task)
        sqlite3_bind_int64(update_schedule_, 2, *task);
      else
        sqlite3_bind_null(update_schedule_, 2);
      sqlite3_bind_int64(update_schedule_, 3, now);
      sqlite3_bind_int64(update_schedule_, 4, d.id);
      if (sqlite3_step(update_schedule_) != SQLITE_DONE) *error = sqlite3_errmsg(db_);
      sqlite3_reset(update_schedule_);
    }
    if (auto e = Exec("COMMIT"); !e.empty()) *error = e;
    return created;
  }

  // Dequeues up to `limit` CREATED tasks due by `now`, marking them STARTED.
  std::string Dequeue(std::int64_t now, int limit, std::vector<Task>* out) {
    std::lock_guard lock(mu_);
    if (auto e = Exec("BEGIN IMMEDIATE"); !e.empty()) return e;
    sqlite3_bind_int64(dequeue_, 1, now);
    sqlite3_bind_int64(dequeue_, 2, limit);
    while (sqlite3_step(dequeue_) == SQLITE_ROW) {
      out->push_back({sqlite3_column_int64(dequeue_, 0),
                      static_cast<std::uint32_t>(sqlite3_column_int64(dequeue_, 1) - 1),
                      sqlite3_column_int64(dequeue_, 2),
                      static_cast<int>(sqlite3_column_int64(dequeue_, 3))});
    }
    sqlite3_reset(dequeue_);
    for (const Task& t : *out) {
      sqlite3_bind_int64(mark_started_, 1, now);
      sqlite3_bind_int64(mark_started_, 2, t.id);
      if (sqlite3_step(mark_started_) != SQLITE_DONE) return sqlite3_errmsg(db_);
      sqlite3_reset(mark_started_);
    }
    return Exec("COMMIT");
  }

  // Writes outcomes back; a failure with retries left inserts its retry task (due after the
  // backoff, unless that reaches the schedule's next slot). Returns the retries inserted.
  std::int64_t Complete(const std::vector<Outcome>& outcomes, std::int64_t now, const Workload& w,
                        std::string* error) {
    std::lock_guard lock(mu_);
    if (auto e = Exec("BEGIN IMMEDIATE"); !e.empty()) {
      *error = e;
      return 0;
    }
    std::int64_t retries = 0;
    static const std::string kOk = "{\"status\":\"success\"}";
    static const std::string kFail = "{\"error\":\"injected failure\"}";
    for (const Outcome& o : outcomes) {
      sqlite3_bind_text(complete_, 1, o.fail ? "FAILED" : "SUCCEEDED", -1, SQLITE_STATIC);
      const std::string& out = o.fail ? kFail : kOk;
      sqlite3_bind_text(complete_, 2, out.data(), static_cast<int>(out.size()), SQLITE_STATIC);
      sqlite3_bind_int64(complete_, 3, now);
      sqlite3_bind_int64(complete_, 4, o.task.id);
      if (sqlite3_step(complete_) != SQLITE_DONE) *error = sqlite3_errmsg(db_);
      sqlite3_reset(complete_);
      if (!o.fail || o.task.attempt > w.retries) continue;
      std::int64_t at = RetryAt(w, now, o.task.attempt);
      sqlite3_bind_int64(next_of_, 1, o.task.idx + 1);
      std::int64_t next =
          sqlite3_step(next_of_) == SQLITE_ROW ? sqlite3_column_int64(next_of_, 0) : 0;
      sqlite3_reset(next_of_);
      if (at >= next) continue;
      std::string name = "sync:" + std::to_string(o.task.idx + 1);
      sqlite3_bind_text(insert_task_, 1, name.data(), static_cast<int>(name.size()),
                        SQLITE_TRANSIENT);
      sqlite3_bind_text(insert_task_, 2, "{}", -1, SQLITE_STATIC);
      sqlite3_bind_int64(insert_task_, 3, o.task.idx + 1);
      sqlite3_bind_int64(insert_task_, 4, o.task.slot_ms);
      sqlite3_bind_int64(insert_task_, 5, at);
      sqlite3_bind_int64(insert_task_, 6, o.task.attempt + 1);
      sqlite3_bind_int64(insert_task_, 7, now);
      if (sqlite3_step(insert_task_) != SQLITE_DONE) *error = sqlite3_errmsg(db_);
      sqlite3_reset(insert_task_);
      std::int64_t task = sqlite3_last_insert_rowid(db_);
      sqlite3_bind_int64(update_schedule_, 1, next);
      sqlite3_bind_int64(update_schedule_, 2, task);
      sqlite3_bind_int64(update_schedule_, 3, now);
      sqlite3_bind_int64(update_schedule_, 4, o.task.idx + 1);
      if (sqlite3_step(update_schedule_) != SQLITE_DONE) *error = sqlite3_errmsg(db_);
      sqlite3_reset(update_schedule_);
      ++retries;
    }
    if (auto e = Exec("COMMIT"); !e.empty()) *error = e;
    return retries;
  }

  std::int64_t Count(const char* sql) {
    std::lock_guard lock(mu_);
    sqlite3_stmt* s = nullptr;
    std::int64_t n = -1;
    if (sqlite3_prepare_v2(db_, sql, -1, &s, nullptr) == SQLITE_OK && sqlite3_step(s) == SQLITE_ROW)
      n = sqlite3_column_int64(s, 0);
    sqlite3_finalize(s);
    return n;
  }

 private:
  struct DueRow {
    std::int64_t id, next, freq, starts_at;
    bool busy;
  };
  std::mutex mu_;
  sqlite3* db_ = nullptr;
  sqlite3_stmt *due_ = nullptr, *insert_task_ = nullptr, *update_schedule_ = nullptr,
               *dequeue_ = nullptr, *mark_started_ = nullptr, *complete_ = nullptr,
               *next_of_ = nullptr, *insert_schedule_ = nullptr;
  std::vector<DueRow> due_rows_;
};

std::string DbPath(const Workload& w) { return w.durable() ? w.store : ":memory:"; }

}  // namespace

std::string RunNango(Harness& h) {
  const Workload& w = h.workload();
  Recorder& rec = h.recorder();
  if (w.durable() && std::filesystem::exists(w.store)) {
    return "--store: " + w.store + " exists; give a path to a new file";
  }
  h.BeforeSetup();
  auto t0 = std::chrono::steady_clock::now();
  ScheduleTable table(w);
  auto db = std::make_unique<NangoDb>();
  if (auto e = db->Open(DbPath(w)); !e.empty()) return e;
  if (auto e = db->Prepare(); !e.empty()) return e;
  h.stats().setup_ms = MsSince(t0);

  const bool virt = w.virtual_time;
  std::atomic<std::int64_t> vnow{1'767'225'600'000};
  auto now_ms = [&] { return virt ? vnow.load(std::memory_order_relaxed) : SteadyUs() / 1000; };
  const std::int64_t start_ms = now_ms();
  h.BeginStart();
  if (auto e = db->InsertSchedules(table, start_ms); !e.empty()) return "start: " + e;
  h.EndStart();

  std::string error;
  std::mutex err_mu;
  auto set_error = [&](const std::string& e) {
    std::lock_guard lock(err_mu);
    if (error.empty()) error = e;
  };
  std::atomic<std::uint64_t> tasks_created{0};
  std::atomic<std::int64_t> running{0};
  auto is_initial = [start_ms](const Task& t) { return t.attempt == 1 && t.slot_ms == start_ms; };
  auto start_task = [&](const Task& t) {
    std::int64_t now = now_ms();
    bool initial = is_initial(t);
    rec.Started(now - t.slot_ms, !initial && t.attempt == 1, initial, t.attempt > 1);
    return PlanRun(w, t.idx, t.slot_ms, t.attempt);
  };
  auto dequeue_limit = [&] {
    if (w.max_concurrency <= 0) return kDequeueBatch;
    return static_cast<int>(
        std::clamp<std::int64_t>(w.max_concurrency - running.load(), 0, kDequeueBatch));
  };

  if (virt) {
    // One thread: tick, poll, complete what is due, dequeue and run.
    using Pending = std::pair<std::int64_t, Outcome>;
    auto later = [](const Pending& a, const Pending& b) { return a.first > b.first; };
    std::priority_queue<Pending, std::vector<Pending>, decltype(later)> pending(later);
    std::vector<Outcome> done;
    std::vector<Task> tasks;
    std::uint64_t skipped = 0;
    h.BeginWindow([&vnow] { return vnow.load(std::memory_order_relaxed); });
    for (std::int64_t tick = start_ms; !h.Done() && error.empty(); tick += kPollMs) {
      vnow.store(tick);
      std::string e;
      // Runs that ended by now write their outcomes back; then the scheduler's tick; then the
      // workers dequeue and run what is due.
      while (!pending.empty() && pending.top().first <= tick) {
        const Outcome& o = pending.top().second;
        rec.Finished(!o.fail, is_initial(o.task));
        running.fetch_sub(1);
        done.push_back(o);
        pending.pop();
      }
      if (!done.empty()) {
        db->Complete(done, tick, w, &e);
        done.clear();
      }
      tasks_created += static_cast<std::uint64_t>(db->Poll(tick, w.spread, &skipped, &e));
      rec.skipped = skipped;
      for (;;) {
        int limit = dequeue_limit();
        if (limit == 0) break;
        tasks.clear();
        if (auto de = db->Dequeue(tick, limit, &tasks); !de.empty()) e = de;
        if (tasks.empty()) break;
        for (const Task& t : tasks) {
          RunPlan p = start_task(t);
          if (p.duration_us == 0) {
            rec.Finished(!p.fail, is_initial(t));
            done.push_back({t, p.fail});
          } else {
            running.fetch_add(1);
            pending.push({tick + (p.duration_us + 999) / 1000, {t, p.fail}});
          }
        }
        if (!done.empty()) {
          db->Complete(done, tick, w, &e);
          done.clear();
        }
      }
      if (!e.empty()) set_error(e);
    }
    h.EndWindow();
  } else {
    std::unique_ptr<ThreadDelayer> delayer;
    if (w.callback.kind != DurationDist::Kind::kZero) delayer = std::make_unique<ThreadDelayer>();
    std::mutex mu;
    std::condition_variable cv;
    bool stop = false;
    std::vector<Outcome> finished;  // by the delayer, written back by a worker
    std::uint64_t skipped = 0;
    std::thread poller([&] {
      auto next = std::chrono::steady_clock::now();
      std::unique_lock lock(mu);
      while (!stop) {
        lock.unlock();
        std::string e;
        std::int64_t n = db->Poll(SteadyUs() / 1000, w.spread, &skipped, &e);
        rec.skipped.store(skipped, std::memory_order_relaxed);
        tasks_created += static_cast<std::uint64_t>(n);
        if (!e.empty()) set_error(e);
        lock.lock();
        if (n) cv.notify_all();
        next += std::chrono::milliseconds(kPollMs);
        cv.wait_until(lock, next, [&] { return stop; });
      }
    });
    std::vector<std::thread> workers;
    for (int i = 0; i < w.workers; ++i) {
      workers.emplace_back([&] {
        std::vector<Task> tasks;
        std::vector<Outcome> outcomes;
        while (true) {
          {
            std::lock_guard lock(mu);
            if (stop) return;
            outcomes.insert(outcomes.end(), finished.begin(), finished.end());
            finished.clear();
          }
          std::string e;
          if (!outcomes.empty()) {
            db->Complete(outcomes, SteadyUs() / 1000, w, &e);
            outcomes.clear();
          }
          tasks.clear();
          int limit = dequeue_limit();
          if (limit > 0) {
            if (auto de = db->Dequeue(SteadyUs() / 1000, limit, &tasks); !de.empty()) e = de;
          }
          if (!e.empty()) set_error(e);
          if (tasks.empty()) {
            std::unique_lock lock(mu);
            if (finished.empty() && !stop) cv.wait_for(lock, std::chrono::milliseconds(kPollMs));
            continue;
          }
          for (const Task& t : tasks) {
            RunPlan p = start_task(t);
            running.fetch_add(1);
            if (p.duration_us == 0) {
              rec.Finished(!p.fail, is_initial(t));
              running.fetch_sub(1);
              outcomes.push_back({t, p.fail});
            } else {
              delayer->After(p.duration_us, [&, t, fail = p.fail] {
                rec.Finished(!fail, is_initial(t));
                running.fetch_sub(1);
                std::lock_guard lock(mu);
                finished.push_back({t, fail});
                cv.notify_one();
              });
            }
          }
        }
      });
    }
    h.BeginWindow();
    h.SleepWindow();
    h.EndWindow();
    {
      std::lock_guard lock(mu);
      stop = true;
    }
    cv.notify_all();
    poller.join();
    for (auto& t : workers) t.join();
    delayer.reset();
  }
  h.stats().extra = {
      {"tasks_created", tasks_created.load()},
      {"task_rows", db->Count("SELECT count(*) FROM tasks")},
      {"poll_interval_ms", kPollMs},
  };
  if (!error.empty()) return "sqlite: " + error;

  if (w.recovery) {
    db.reset();
    auto t3 = std::chrono::steady_clock::now();
    NangoDb again;
    if (auto e = again.Open(w.store); !e.empty()) return e;
    if (auto e = again.Prepare(); !e.empty()) return e;
    h.stats().recovered_schedules =
        again.Count("SELECT count(*) FROM schedules WHERE state = 'STARTED'");
    h.stats().recovery_ms = MsSince(t3);
  }
  return "";
}

}  // namespace syncsched::benchtool
