#include "syncsched/status.h"

#include <gtest/gtest.h>

#include <sstream>
#include <string>
#include <utility>
#include <vector>

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

TEST(StatusTest, EqualityComparesCodeAndMessage) {
  EXPECT_EQ(Status::NotFound("x"), Status::NotFound("x"));
  EXPECT_FALSE(Status::NotFound("x") == Status::NotFound("y"));
  EXPECT_FALSE(Status::NotFound("x") == Status::Internal("x"));
  EXPECT_FALSE(Status::NotFound("") == Status());
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

}  // namespace
}  // namespace syncsched
