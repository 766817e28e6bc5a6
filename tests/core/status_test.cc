#include "syncsched/status.h"

#include <gtest/gtest.h>

#include <atomic>
#include <boost/asio/io_context.hpp>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "syncsched/syncsched.h"

namespace syncsched {
namespace {

TEST(StatusCodeNameTest, EveryCode) {
  const std::vector<std::pair<StatusCode, std::string_view>> cases = {
      {StatusCode::kOk, "OK"},
      {StatusCode::kInvalidArgument, "INVALID_ARGUMENT"},
      {StatusCode::kNotFound, "NOT_FOUND"},
      {StatusCode::kAlreadyExists, "ALREADY_EXISTS"},
      {StatusCode::kFailedPrecondition, "FAILED_PRECONDITION"},
      {StatusCode::kUnavailable, "UNAVAILABLE"},
      {StatusCode::kCancelled, "CANCELLED"},
      {StatusCode::kDeadlineExceeded, "DEADLINE_EXCEEDED"},
      {StatusCode::kInternal, "INTERNAL"},
  };
  for (const auto& [code, name] : cases) EXPECT_EQ(StatusCodeName(code), name);
}

TEST(StatusTest, DefaultIsOk) {
  Status s;
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kOk);
  EXPECT_EQ(s.message(), "");
  EXPECT_EQ(s.ToString(), "OK");
  EXPECT_EQ(s, Status::Ok());
}

TEST(StatusTest, OkCodeYieldsOkStatusAndDropsMessage) {
  Status s(StatusCode::kOk, "ignored");
  EXPECT_TRUE(s.ok());
  EXPECT_EQ(s.message(), "");
  EXPECT_EQ(s.ToString(), "OK");
  EXPECT_EQ(s, Status());
}

TEST(StatusTest, OkMessageIsSharedStaticEmptyString) {
  Status a, b;
  EXPECT_EQ(&a.message(), &b.message());
  EXPECT_TRUE(a.message().empty());
}

TEST(StatusTest, FactoriesSetCodeAndMessage) {
  struct Case {
    Status status;
    StatusCode code;
    std::string text;
  };
  const std::vector<Case> cases = {
      {Status::InvalidArgument("a"), StatusCode::kInvalidArgument, "INVALID_ARGUMENT: a"},
      {Status::NotFound("b"), StatusCode::kNotFound, "NOT_FOUND: b"},
      {Status::AlreadyExists("c"), StatusCode::kAlreadyExists, "ALREADY_EXISTS: c"},
      {Status::FailedPrecondition("d"), StatusCode::kFailedPrecondition, "FAILED_PRECONDITION: d"},
      {Status::Unavailable("e"), StatusCode::kUnavailable, "UNAVAILABLE: e"},
      {Status::Cancelled("f"), StatusCode::kCancelled, "CANCELLED: f"},
      {Status::DeadlineExceeded("g"), StatusCode::kDeadlineExceeded, "DEADLINE_EXCEEDED: g"},
      {Status::Internal("h"), StatusCode::kInternal, "INTERNAL: h"},
  };
  for (const Case& c : cases) {
    EXPECT_FALSE(c.status.ok());
    EXPECT_EQ(c.status.code(), c.code);
    EXPECT_EQ(c.status.ToString(), c.text);
  }
  EXPECT_TRUE(Status::InvalidArgument("x").IsInvalidArgument());
  EXPECT_TRUE(Status::NotFound("x").IsNotFound());
  EXPECT_TRUE(Status::AlreadyExists("x").IsAlreadyExists());
  EXPECT_TRUE(Status::FailedPrecondition("x").IsFailedPrecondition());
  EXPECT_TRUE(Status::Unavailable("x").IsUnavailable());
  EXPECT_FALSE(Status::Internal("x").IsInvalidArgument());
}

TEST(StatusTest, ErrorWithEmptyMessage) {
  Status s = Status::Internal("");
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.message(), "");
  EXPECT_EQ(s.ToString(), "INTERNAL: ");
}

TEST(StatusTest, EqualityComparesCodeMessageAndSubject) {
  EXPECT_EQ(Status::NotFound("x"), Status::NotFound("x"));
  EXPECT_FALSE(Status::NotFound("x") == Status::NotFound("y"));
  EXPECT_FALSE(Status::NotFound("x") == Status::Internal("x"));
  EXPECT_FALSE(Status::NotFound("") == Status());
  EXPECT_FALSE(Status::NotFound("x", StatusSubject::kSync) == Status::NotFound("x"));
  EXPECT_FALSE(Status::InvalidField("a", "x") == Status::InvalidField("b", "x"));
}

TEST(StatusTest, SubjectSaysWhichInputIsAtFault) {
  EXPECT_EQ(Status().subject(), StatusSubject::kNone);
  EXPECT_EQ(Status::Internal("x").subject(), StatusSubject::kNone);
  Status s = Status::NotFound("connection \"a\" does not exist", StatusSubject::kConnection);
  EXPECT_EQ(s.subject(), StatusSubject::kConnection);
  EXPECT_EQ(s.field(), "");
  Status f = Status::InvalidField("frequency", "bad");
  EXPECT_TRUE(f.IsInvalidArgument());
  EXPECT_EQ(f.subject(), StatusSubject::kField);
  EXPECT_EQ(f.field(), "frequency");
  Status moved = Status::InvalidArgument("bad").WithSubject(StatusSubject::kField, "horizon");
  EXPECT_EQ(moved.message(), "bad");
  EXPECT_EQ(moved.field(), "horizon");
  // A field name is kept only with kField.
  EXPECT_EQ(Status(StatusCode::kNotFound, "x", StatusSubject::kSync, "y").field(), "");
  EXPECT_TRUE(Status().WithSubject(StatusSubject::kSync).ok());
  EXPECT_EQ(StatusSubjectName(StatusSubject::kVariant), "variant");
  EXPECT_EQ(StatusSubjectName(StatusSubject::kField), "field");
}

TEST(StatusTest, CopiesShareAndSurviveOriginal) {
  Status copy;
  {
    Status original = Status::Unavailable("disk full");
    copy = original;
    EXPECT_EQ(&copy.message(), &original.message());
  }
  EXPECT_EQ(copy.ToString(), "UNAVAILABLE: disk full");
  Status moved = std::move(copy);
  EXPECT_EQ(moved.message(), "disk full");
}

TEST(StatusTest, StreamsToString) {
  std::ostringstream os;
  os << Status::NotFound("sync \"x\"") << "|" << Status();
  EXPECT_EQ(os.str(), "NOT_FOUND: sync \"x\"|OK");
}

TEST(ResultTest, HoldsValue) {
  Result<int> r = 42;
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, 42);
  EXPECT_TRUE(r.status().ok());
}

TEST(ResultTest, HoldsError) {
  Result<std::string> r = Status::NotFound("nope");
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.status(), Status::NotFound("nope"));
}

TEST(ResultTest, MovesValueOut) {
  Result<std::string> r = std::string("abc");
  EXPECT_EQ(r->size(), 3u);
  std::string v = std::move(r).value();
  EXPECT_EQ(v, "abc");
}

// ---- CancellationToken: OnCancel functions that throw (issue 9, item 10) ----

struct NotAStdException {
  int code;
};

TEST(CancellationTokenTest, CancelCallsEveryFunctionInOrderThoughOneThrowsStdException) {
  CancellationToken token;
  std::vector<int> called;
  token.OnCancel([&] { called.push_back(1); });
  token.OnCancel([&] {
    called.push_back(2);
    throw std::runtime_error("boom");
  });
  token.OnCancel([&] { called.push_back(3); });
  bool first = false;
  EXPECT_NO_THROW(first = token.Cancel(Status::Cancelled("paused")));
  EXPECT_TRUE(first);
  EXPECT_EQ(called, (std::vector<int>{1, 2, 3})) << "a throwing function skipped the later ones";
  EXPECT_TRUE(token.cancelled());
  EXPECT_EQ(token.reason(), Status::Cancelled("paused"));
}

TEST(CancellationTokenTest, CancelContainsExceptionsOfNonStdTypes) {
  CancellationToken token;
  std::vector<int> called;
  token.OnCancel([&] {
    called.push_back(1);
    throw 42;
  });
  token.OnCancel([&] {
    called.push_back(2);
    throw NotAStdException{7};
  });
  token.OnCancel([&] {
    called.push_back(3);
    throw "a string literal";
  });
  token.OnCancel([&] { called.push_back(4); });
  bool first = false;
  EXPECT_NO_THROW(first = token.Cancel(Status::DeadlineExceeded("timed out")));
  EXPECT_TRUE(first);
  EXPECT_EQ(called, (std::vector<int>{1, 2, 3, 4}));
  EXPECT_EQ(token.reason().code(), StatusCode::kDeadlineExceeded);
}

TEST(CancellationTokenTest, OnCancelOfACancelledTokenCallsAtOnceAndContainsTheException) {
  CancellationToken token;
  ASSERT_TRUE(token.Cancel(Status::Cancelled("deleted")));
  int calls = 0;
  EXPECT_NO_THROW(token.OnCancel([&] {
    ++calls;
    throw std::logic_error("boom");
  }));
  EXPECT_NO_THROW(token.OnCancel([&] {
    ++calls;
    throw NotAStdException{1};
  }));
  EXPECT_EQ(calls, 2);
}

TEST(CancellationTokenTest, SecondCancelReturnsFalseKeepsTheFirstReasonAndCallsNothingAgain) {
  CancellationToken token;
  CancellationToken copy = token;  // copies share one state
  int calls = 0;
  copy.OnCancel([&] {
    ++calls;
    throw std::runtime_error("boom");
  });
  EXPECT_TRUE(token.Cancel(Status::Cancelled("first")));
  bool again = true;
  EXPECT_NO_THROW(again = copy.Cancel(Status::DeadlineExceeded("second")));
  EXPECT_FALSE(again);
  EXPECT_EQ(calls, 1);
  EXPECT_TRUE(copy.cancelled());
  EXPECT_EQ(copy.reason(), Status::Cancelled("first"));
}

TEST(CancellationTokenTest, FunctionsRunOnTheCancellingThread) {
  CancellationToken token;
  std::thread::id ran_on;
  token.OnCancel([] { throw std::runtime_error("boom"); });
  token.OnCancel([&] { ran_on = std::this_thread::get_id(); });
  std::thread::id canceller;
  bool escaped = false;
  std::thread t([&] {
    canceller = std::this_thread::get_id();
    // Caught here only to report it: on the engine's alarm thread nothing would catch it, and the
    // process would terminate.
    try {
      (void)token.Cancel(Status::Cancelled("paused"));
    } catch (...) {
      escaped = true;
    }
  });
  t.join();
  EXPECT_FALSE(escaped) << "an OnCancel exception escaped Cancel on the cancelling thread";
  EXPECT_EQ(ran_on, canceller);
  EXPECT_NE(ran_on, std::this_thread::get_id());
}

TEST(CancellationTokenTest, EmptyFunctionIsIgnored) {
  CancellationToken token;
  int calls = 0;
  token.OnCancel(nullptr);
  token.OnCancel([&] { ++calls; });
  EXPECT_NO_THROW((void)token.Cancel(Status::Cancelled("paused")));
  EXPECT_EQ(calls, 1);
  EXPECT_NO_THROW(token.OnCancel(std::function<void()>()));
}

// The same through the engine: a command that has committed finishes its work, and a timeout on
// the alarm's thread does not unwind it. One io_context runs the alarm and the (asynchronous)
// runs; the test thread drives it in virtual time, so nothing races and nothing sleeps.
class OnCancelThrowsTest : public ::testing::Test {
 protected:
  struct Run {
    RunContext ctx;
    RunDone done;
    int later_calls = 0;  // calls of the OnCancel function registered after the throwing one
  };

  void Open() {
    Options o;
    o.clock = &clock_;
    o.executor = io_.get_executor();
    o.run_executor = io_.get_executor();
    auto opened = Engine::Open(std::move(o));
    ASSERT_TRUE(opened.ok()) << opened.status();
    engine_ = std::move(opened).value();
    // Each run registers a throwing function and then one that counts; it finishes when the test
    // says so.
    ASSERT_TRUE(engine_
                    ->RegisterAsyncCallback(
                        "github", "issues",
                        [this](const RunContext& ctx, RunDone done) {
                          runs_.push_back(std::make_unique<Run>(Run{ctx, done}));
                          Run* run = runs_.back().get();
                          ctx.cancel.OnCancel([] { throw std::runtime_error("OnCancel threw"); });
                          ctx.cancel.OnCancel([run] { ++run->later_calls; });
                        })
                    .ok());
    SyncDefinition def;
    def.name = "issues";
    def.frequency = "1h";
    def.timeout = std::chrono::minutes(1);
    ASSERT_TRUE(engine_->DefineSync("github", def).ok());
  }

  void TearDown() override {
    // Finish what is still in flight, then destroy the engine before the runs and the io_context
    // its callbacks and alarm use.
    for (auto& run : runs_) run->done(RunReport::Success());
    clock_.RunFor(io_, std::chrono::milliseconds(0));
    engine_.reset();
  }

  VirtualClock clock_;
  boost::asio::io_context io_;
  std::vector<std::unique_ptr<Run>> runs_;
  std::unique_ptr<Engine> engine_;
};

TEST_F(OnCancelThrowsTest, PauseCancelsEveryRunAndSucceeds) {
  Open();
  for (const char* c : {"c0", "c1", "c2"}) ASSERT_TRUE(engine_->AddConnection("github", c).ok());
  clock_.RunFor(io_, std::chrono::milliseconds(0));  // the immediate runs start
  ASSERT_EQ(runs_.size(), 3u);

  Result<CommandResult> paused = Status::Internal("Pause threw");
  EXPECT_NO_THROW(paused = engine_->Pause(Target{"github", std::nullopt, {}}));
  ASSERT_TRUE(paused.ok()) << paused.status();
  EXPECT_EQ(paused->Count(Outcome::kPaused), 3u);
  for (const auto& run : runs_) {
    EXPECT_TRUE(run->ctx.cancel.cancelled()) << run->ctx.run_id << " was not cancelled";
    EXPECT_EQ(run->ctx.cancel.reason().code(), StatusCode::kCancelled) << run->ctx.run_id;
    EXPECT_EQ(run->later_calls, 1) << run->ctx.run_id;
  }
  // The cancelled runs end as the pause says, and the engine carries on.
  for (auto& run : runs_) {
    RunReport report;
    report.status = run->ctx.cancel.reason();
    run->done(std::move(report));
  }
  clock_.RunFor(io_, std::chrono::milliseconds(0));
  auto status = engine_->GetStatus(Target{"github", std::nullopt, {}});
  ASSERT_TRUE(status.ok()) << status.status();
  ASSERT_EQ(status->size(), 3u);
  for (const ScheduleStatus& s : *status) {
    EXPECT_EQ(s.state, ScheduleState::kPaused) << ToString(s.key);
    EXPECT_NE(s.status, RunStatus::kRunning) << ToString(s.key);
  }
  EXPECT_EQ(engine_->GetMetrics().runs_in_flight, 0u);
}

TEST_F(OnCancelThrowsTest, TimeoutOnTheAlarmDoesNotUnwindIt) {
  Open();
  for (const char* c : {"c0", "c1"}) ASSERT_TRUE(engine_->AddConnection("github", c).ok());
  clock_.RunFor(io_, std::chrono::milliseconds(0));
  ASSERT_EQ(runs_.size(), 2u);
  // Both runs time out in one wake-up of the alarm, which runs on this thread here (on the
  // engine's own thread, an escaping exception would terminate the process).
  EXPECT_NO_THROW(clock_.RunFor(io_, std::chrono::minutes(2)));
  for (const auto& run : runs_) {
    EXPECT_TRUE(run->ctx.cancel.cancelled()) << run->ctx.run_id;
    EXPECT_EQ(run->ctx.cancel.reason().code(), StatusCode::kDeadlineExceeded) << run->ctx.run_id;
    EXPECT_EQ(run->later_calls, 1) << run->ctx.run_id;
  }
  EngineMetrics m = engine_->GetMetrics();
  EXPECT_EQ(m.runs_timed_out, 2u);
  EXPECT_EQ(m.runs_in_flight, 0u);
}

TEST(CancellationToken, ScopedRegistrationDestroyedBeforeCancelIsNotCalled) {
  CancellationToken token;
  int kept = 0, dropped = 0;
  auto keep = token.OnCancelScoped([&] { ++kept; });
  {
    auto gone = token.OnCancelScoped([&] { ++dropped; });
  }
  auto reset = token.OnCancelScoped([&] { ++dropped; });
  reset.Reset();
  reset.Reset();  // idempotent
  EXPECT_TRUE(token.Cancel(Status::Cancelled("paused")));
  EXPECT_EQ(kept, 1);
  EXPECT_EQ(dropped, 0);
  // Already cancelled: runs at once, and the registration is empty.
  int late = 0;
  auto r = token.OnCancelScoped([&] { ++late; });
  EXPECT_EQ(late, 1);
  auto empty = token.OnCancelScoped({});
}

TEST(CancellationToken, ScopedRegistrationMovesAndMayResetItselfFromItsFunction) {
  CancellationToken token;
  int calls = 0;
  CancellationToken::Registration moved;
  {
    auto r = token.OnCancelScoped([&] { ++calls; });
    moved = std::move(r);
  }  // the moved-from registration deregisters nothing
  CancellationToken::Registration self;
  self = token.OnCancelScoped([&] {
    ++calls;
    self.Reset();  // from inside its own function: returns at once
  });
  EXPECT_TRUE(token.Cancel(Status::Cancelled("x")));
  EXPECT_EQ(calls, 2);
}

// Under TSan this checks that a registration destroyed on one thread while another cancels
// neither races with the function nor lets it run after the destructor returned.
TEST(CancellationToken, ScopedRegistrationDestroyedConcurrentlyWithCancel) {
  for (int round = 0; round < 200; ++round) {
    CancellationToken token;
    auto alive = std::make_unique<std::atomic<int>>(0);
    std::atomic<int>* counter = alive.get();
    auto reg = std::make_unique<CancellationToken::Registration>(
        token.OnCancelScoped([counter] { counter->fetch_add(1); }));
    std::thread canceller([&] { (void)token.Cancel(Status::Cancelled("concurrent")); });
    reg.reset();  // after this returns, the function is not running and never will
    int seen = counter->load();
    EXPECT_LE(seen, 1);
    canceller.join();
    EXPECT_EQ(counter->load(), seen);  // nothing ran after the registration was destroyed
    alive.reset();
  }
}

}  // namespace
}  // namespace syncsched
