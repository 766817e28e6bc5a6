// Public-API tests: built with only include/ on the path, as an installed user would be.
#include <gtest/gtest.h>

#include "syncsched/syncsched.h"

namespace {

TEST(PublicApi, StatusIsCheapWhenOkAndNamesItsCode) {
  syncsched::Status ok;
  EXPECT_TRUE(ok.ok());
  EXPECT_EQ(ok.ToString(), "OK");
  auto e = syncsched::Status::NotFound("connection \"x\" does not exist");
  EXPECT_FALSE(e.ok());
  EXPECT_EQ(e.ToString(), "NOT_FOUND: connection \"x\" does not exist");
  syncsched::Result<int> r = e;
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.status(), e);
  syncsched::Result<int> v = 7;
  EXPECT_EQ(*v, 7);
}

TEST(PublicApi, OpenRejectsBadOptionsNamingTheField) {
  syncsched::Options o;
  o.worker_threads = 0;
  auto e = syncsched::Engine::Open(o);
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.status().message().find("worker_threads"), std::string::npos);
  o = {};
  o.frequency_bounds.min = std::chrono::hours(2);
  o.frequency_bounds.max = std::chrono::hours(1);
  e = syncsched::Engine::Open(o);
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.status().message().find("frequency_bounds"), std::string::npos);
  o = {};
  o.run_history = 1001;
  e = syncsched::Engine::Open(o);
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), syncsched::StatusCode::kInvalidArgument);
  EXPECT_NE(e.status().message().find("run_history is 1001"), std::string::npos) << e.status();
  o = {};
  o.database_cache_bytes = 1000;
  e = syncsched::Engine::Open(o);
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), syncsched::StatusCode::kInvalidArgument);
  EXPECT_NE(e.status().message().find("database_cache_bytes is 1000"), std::string::npos)
      << e.status();
}

}  // namespace

namespace {

TEST(PublicApi, ValueOfAnErrorThrowsBadResultAccessCarryingTheStatus) {
  syncsched::Result<int> r = syncsched::Status::NotFound("connection \"x\" does not exist");
  try {
    (void)r.value();
    FAIL() << "value() did not throw";
  } catch (const syncsched::BadResultAccess& e) {
    EXPECT_EQ(e.status().code(), syncsched::StatusCode::kNotFound);
    EXPECT_STREQ(e.what(), "NOT_FOUND: connection \"x\" does not exist");
  }
  const auto& cr = r;
  EXPECT_THROW((void)*cr, syncsched::BadResultAccess);
  EXPECT_THROW((void)std::move(r).value(), std::exception);
  syncsched::Result<std::string> ok = std::string("v");
  EXPECT_EQ(ok->size(), 1u);
  EXPECT_EQ(std::move(ok).value(), "v");
}

}  // namespace
