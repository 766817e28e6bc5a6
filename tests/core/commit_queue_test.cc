// CommitQueue: what a refused commit leaves behind (issue 11, "every failed commit is visible"):
// the rows stay carried into every later commit, the health says so and names the error, the
// health callback fires once per change, and the carried history is bounded.
#include "core/commit_queue.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace syncsched::core {
namespace {

// A store that keeps every committed batch and refuses commits while `refuse` is set.
class RefusingStore : public store::Store {
 public:
  Result<store::Snapshot> Load() override { return store::Snapshot{}; }
  Status Commit(const store::Batch& batch) override {
    std::lock_guard lock(mu);
    ++commits;
    if (refuse) return Status::Unavailable("test.db: database or disk is full");
    committed.push_back(batch);
    return Status();
  }
  // Refused: at once, reading no part (as a store whose first write fails); otherwise gathered.
  Status CommitStream(const store::Batch& first, store::BatchSource& more) override {
    {
      std::lock_guard lock(mu);
      if (refuse) {
        ++commits;
        return Status::Unavailable("test.db: database or disk is full");
      }
    }
    return Store::CommitStream(first, more);
  }
  std::mutex mu;
  bool refuse = false;
  int commits = 0;
  std::vector<store::Batch> committed;
};

store::Batch Outcome(std::uint64_t uid, std::uint64_t number) {
  store::Batch b;
  store::ScheduleRow row;
  row.uid = uid;
  row.update_only = true;
  row.runs = number;
  b.schedules.push_back(row);
  store::RunRow run;
  run.run_id = std::to_string(uid) + "-" + std::to_string(number);
  run.schedule_uid = uid;
  run.number = number;
  run.finished_ms = 1;
  run.ok = 1;
  b.runs.push_back(run);
  return b;
}

class CommitQueueTest : public ::testing::Test {
 protected:
  void Make(std::size_t max_carried_runs = CommitQueue::kMaxCarriedRuns) {
    queue = std::make_unique<CommitQueue>(
        store, [](std::vector<RunPtr>&&, const Status&) {},
        [this](const Status& s) {
          std::lock_guard lock(events_mu);
          events.push_back(s);
        },
        max_carried_runs);
  }
  // Queues `b` as the alarm queues a dispatch (not a command: carried on failure) and waits
  // until the writer has handled it: one commit per call.
  void Outcomes(store::Batch b) { (void)queue->Wait(queue->Submit(std::move(b))); }
  std::vector<Status> Events() {
    std::lock_guard lock(events_mu);
    return events;
  }

  RefusingStore store;
  std::mutex events_mu;
  std::vector<Status> events;
  std::unique_ptr<CommitQueue> queue;
};

TEST_F(CommitQueueTest, ARefusedOutcomeIsCarriedShownAndWrittenByTheNextCommit) {
  Make();
  store.refuse = true;
  Outcomes(Outcome(7, 1));
  StoreHealth h = queue->Health();
  EXPECT_FALSE(h.healthy);
  EXPECT_NE(h.error.find("test.db: database or disk is full"), std::string::npos) << h.error;
  EXPECT_EQ(h.commits_failed, 1u);
  EXPECT_EQ(h.rows_unrecorded, 2u);  // the schedule row and its finished run
  ASSERT_TRUE(h.unrecorded_uids);
  EXPECT_EQ(h.unrecorded_uids->count(7), 1u);
  ASSERT_EQ(Events().size(), 1u);
  EXPECT_TRUE(Events()[0].IsUnavailable());

  Outcomes(Outcome(8, 1));  // still refused: one more failure, no second event
  h = queue->Health();
  EXPECT_EQ(h.commits_failed, 2u);
  EXPECT_EQ(h.rows_unrecorded, 4u);
  EXPECT_EQ(Events().size(), 1u);

  store.refuse = false;
  Outcomes(Outcome(9, 1));
  h = queue->Health();
  EXPECT_TRUE(h.healthy);
  EXPECT_EQ(h.error, "");
  EXPECT_EQ(h.rows_unrecorded, 0u);
  EXPECT_FALSE(h.unrecorded_uids);
  ASSERT_EQ(Events().size(), 2u);
  EXPECT_TRUE(Events()[1].ok());
  // The carried rows went with the next commit, before the new ones.
  ASSERT_FALSE(store.committed.empty());
  const store::Batch& first = store.committed.front();
  ASSERT_EQ(first.runs.size(), 3u);
  EXPECT_EQ(first.runs[0].schedule_uid, 7u);
  EXPECT_EQ(first.runs[1].schedule_uid, 8u);
  EXPECT_EQ(first.runs[2].schedule_uid, 9u);
}

// A store with a probe (as the PostgreSQL store's): refused while `refuse` is set, as its commits;
// an empty batch is answered without the database, as both real stores answer it.
class ProbingStore : public RefusingStore {
 public:
  Status Commit(const store::Batch& batch) override {
    if (batch.empty()) return Status();
    return RefusingStore::Commit(batch);
  }
  std::optional<Status> Probe() override {
    std::lock_guard lock(mu);
    ++probes;
    if (refuse) return Status::Unavailable("test.db: database or disk is full");
    return Status();
  }
  int probes = 0;  // under mu
};

// After a failed commit the idle writer probes the store (every kProbeEvery) and becomes healthy
// when a probe succeeds, without waiting for work. Carried rows that the cluster's screen drops
// whole (their partitions were lost meanwhile) leave nothing to commit: that empty commit,
// answered without the database, must not count as the store working again (helper-41 saw
// "database writable again" logged every few seconds while every commit failed).
TEST(CommitQueueProbeTest, AnIdleWriterProbesAndAnEmptyCommitProvesNothing) {
  ProbingStore store;
  std::mutex events_mu;
  std::vector<Status> events;
  CommitQueue::ClusterHooks hooks;
  std::atomic<bool> drop{false};
  hooks.screen = [&](store::Batch& b, std::vector<RunPtr>*, bool) {
    if (drop) b.clear();
    return Status();
  };
  CommitQueue queue(
      store, [](std::vector<RunPtr>&&, const Status&) {},
      [&](const Status& s) {
        std::lock_guard lock(events_mu);
        events.push_back(s);
      },
      CommitQueue::kMaxCarriedRuns, hooks);
  store.refuse = true;
  (void)queue.Wait(queue.Submit(Outcome(7, 1)));  // refused: carried
  ASSERT_FALSE(queue.Health().healthy);
  drop = true;  // the carried rows' partitions are lost: the next try has nothing to write
  auto probes = [&] {
    std::lock_guard lock(store.mu);
    return store.probes;
  };
  for (int i = 0; i < 600 && probes() < 2; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));  // the writer's own cadence
  }
  ASSERT_GE(probes(), 2) << "the idle writer never probed";
  EXPECT_FALSE(queue.Health().healthy) << "healthy while every commit and probe fails";
  {
    std::lock_guard lock(store.mu);
    store.refuse = false;
  }
  for (int i = 0; i < 600 && !queue.Health().healthy; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(queue.Health().healthy) << "a probe that succeeded did not make it healthy";
  std::lock_guard lock(events_mu);
  ASSERT_EQ(events.size(), 2u);  // unhealthy once, healthy once
  EXPECT_TRUE(events[1].ok());
  queue.Stop();
}

// A store whose deferred work comes due 30 ms after each commit (as the SQLite store's aged run
// journal): the idle writer calls Maintain once it is due, with nothing queued, and not again
// once the store says nothing is due.
class MaintainedStore : public RefusingStore {
 public:
  Status Commit(const store::Batch& batch) override {
    Status s = RefusingStore::Commit(batch);
    std::lock_guard lock(mu);
    due = std::chrono::steady_clock::now() + std::chrono::milliseconds(30);
    return s;
  }
  std::optional<std::chrono::steady_clock::time_point> MaintainDue() const override {
    std::lock_guard lock(mu);
    return due;
  }
  void Maintain() override {
    std::lock_guard lock(mu);
    if (due && std::chrono::steady_clock::now() >= *due)
      early = false;
    else
      early = true;
    ++maintained;
    due.reset();
  }
  mutable std::mutex mu;
  std::optional<std::chrono::steady_clock::time_point> due;
  int maintained = 0;
  bool early = false;
};

TEST(CommitQueueMaintainTest, AnIdleWriterDoesTheStoresDeferredWorkOnceItIsDue) {
  MaintainedStore store;
  CommitQueue queue(store, [](std::vector<RunPtr>&&, const Status&) {});
  ASSERT_TRUE(queue.Wait(queue.Submit(Outcome(7, 1))).ok());
  auto maintained = [&] {
    std::lock_guard lock(store.mu);
    return store.maintained;
  };
  for (int i = 0; i < 500 && maintained() == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));  // the writer's own cadence
  }
  ASSERT_EQ(maintained(), 1) << "the idle writer never did the store's deferred work";
  {
    std::lock_guard lock(store.mu);
    EXPECT_FALSE(store.early) << "called before it was due";
    EXPECT_EQ(store.commits, 1) << "it took a commit to get there";
  }
  // Nothing due any more: the writer waits for work and calls nothing else.
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(maintained(), 1);
  queue.Stop();
}

TEST_F(CommitQueueTest, ARefusedCommandIsNotCarriedButCountsAndTheCarryRidesWithTheNext) {
  Make();
  store.refuse = true;
  Outcomes(Outcome(7, 1));
  EXPECT_TRUE(
      queue->Commit(Outcome(1, 5)).IsUnavailable());  // a command: rolled back by its caller
  StoreHealth h = queue->Health();
  EXPECT_EQ(h.commits_failed, 2u);
  EXPECT_EQ(h.rows_unrecorded, 2u);  // the command's rows are not carried
  EXPECT_EQ(h.unrecorded_uids->count(1), 0u);

  store.refuse = false;
  EXPECT_TRUE(queue->Commit(Outcome(1, 6)).ok());
  EXPECT_TRUE(queue->Health().healthy);
  EXPECT_EQ(queue->Health().rows_unrecorded, 0u);
  ASSERT_EQ(store.committed.size(), 1u);
  EXPECT_EQ(store.committed[0].runs.size(), 2u);  // the carried run and the command's
}

TEST_F(CommitQueueTest, TheCarriedHistoryIsBoundedOldestFirst) {
  Make(/*max_carried_runs=*/3);
  store.refuse = true;
  for (std::uint64_t n = 1; n <= 5; ++n) Outcomes(Outcome(7, n));
  StoreHealth h = queue->Health();
  EXPECT_EQ(h.history_dropped, 2u);
  EXPECT_EQ(h.rows_unrecorded, 4u);  // one version of the schedule row, three runs
  store.refuse = false;
  Outcomes(Outcome(8, 1));
  ASSERT_FALSE(store.committed.empty());
  const store::Batch& first = store.committed.front();
  ASSERT_EQ(first.schedules.size(), 2u);
  EXPECT_EQ(first.schedules[0].runs, 5u);  // the last version of the row survives
  ASSERT_EQ(first.runs.size(), 4u);
  EXPECT_EQ(first.runs[0].number, 3u);  // runs 1 and 2 were dropped
  EXPECT_EQ(queue->Health().history_dropped, 2u);
}

// A streamed command (SubmitStream): the parts arrive in order in one commit, at most
// CommitStream::kMaxQueued wait at a time, and the written parts come back for reuse.
TEST_F(CommitQueueTest, AStreamedCommandIsOneCommitOfEveryPartInOrder) {
  Make();
  auto stream = std::make_shared<CommitStream>();
  store::Batch first = Outcome(1, 1);
  CommitQueue::Ticket ticket = queue->SubmitStream(first, stream);
  ASSERT_NE(ticket, nullptr);
  EXPECT_TRUE(first.empty()) << "taken by the queue";
  std::size_t reused = 0;
  for (std::uint64_t uid = 2; uid <= 50; ++uid) {
    store::Batch part = stream->TakeBuffer();
    reused += part.schedules.capacity() != 0;
    EXPECT_TRUE(part.empty());
    part.schedules.push_back(Outcome(uid, 1).schedules[0]);
    ASSERT_TRUE(stream->Put(std::move(part)));
  }
  stream->Close();
  ASSERT_TRUE(queue->Wait(ticket).ok());
  std::lock_guard lock(store.mu);
  ASSERT_EQ(store.commits, 1) << "one transaction";
  ASSERT_EQ(store.committed.size(), 1u);
  const store::Batch& all = store.committed[0];
  ASSERT_EQ(all.schedules.size(), 50u);
  for (std::size_t i = 0; i < all.schedules.size(); ++i) EXPECT_EQ(all.schedules[i].uid, i + 1);
  EXPECT_GT(reused, 0u) << "written parts are handed back";
}

// A refused streamed command: the producer's next Put says so (it stops building, rather than
// waiting forever for a writer that has given up), Wait returns the error, nothing is carried.
TEST_F(CommitQueueTest, ARefusedStreamStopsItsProducer) {
  Make();
  store.refuse = true;
  auto stream = std::make_shared<CommitStream>();
  store::Batch first = Outcome(1, 1);
  CommitQueue::Ticket ticket = queue->SubmitStream(first, stream);
  ASSERT_NE(ticket, nullptr);
  bool stopped = false;
  for (std::uint64_t uid = 2; uid <= 10'000 && !stopped; ++uid) {
    store::Batch part = stream->TakeBuffer();
    part.schedules.push_back(Outcome(uid, 1).schedules[0]);
    stopped = !stream->Put(std::move(part));
  }
  EXPECT_TRUE(stopped) << "the producer was told";
  stream->Close();
  Status st = queue->Wait(ticket);
  EXPECT_TRUE(st.IsUnavailable()) << st;
  EXPECT_EQ(queue->Health().rows_unrecorded, 0u) << "a command's rows are never carried";
  store.refuse = false;
  Outcomes(Outcome(2, 1));
  std::lock_guard lock(store.mu);
  ASSERT_EQ(store.committed.size(), 1u);
  EXPECT_EQ(store.committed[0].schedules.size(), 1u);
}

// After Stop there is no writer to read a stream: SubmitStream refuses and leaves the batch.
TEST_F(CommitQueueTest, AStreamAfterStopIsRefusedAndTheBatchKept) {
  Make();
  queue->Stop();
  store::Batch first = Outcome(1, 1);
  EXPECT_EQ(queue->SubmitStream(first, std::make_shared<CommitStream>()), nullptr);
  EXPECT_EQ(first.schedules.size(), 1u);
}

}  // namespace
}  // namespace syncsched::core
