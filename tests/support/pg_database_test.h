// A GoogleTest fixture for tests that talk to PostgreSQL directly (the store's, the cluster's): a
// fresh database on the shared test server, dropped after the test; UsePrivateServer moves the
// test to a server of its own, which it may stop and start.
#pragma once

#include <gtest/gtest.h>

#include <cstdlib>
#include <memory>
#include <string>

#include "support/pg_server.h"

namespace syncsched::testing {

class PgDatabaseTest : public ::testing::Test {
 protected:
  void SetUp() override { Use(SharedPgServer()); }
  // Drops the database; a subclass that holds connections to it closes them first, then calls
  // this.
  void TearDown() override {
    if (server_ != nullptr && !db_.empty()) (void)server_->DropDatabase(db_);
    db_.clear();
    server_ = nullptr;
    own_.reset();
  }
  // Moves the test to a server of its own (the shared one's database is dropped first).
  PgServer& UsePrivateServer() {
    TearDown();
    auto own = PgServer::Start();
    EXPECT_TRUE(own.ok()) << own.status();
    if (!own.ok()) std::abort();
    own_ = std::move(own).value();
    Use(*own_);
    return *own_;
  }
  void Use(PgServer& server) {
    server_ = &server;
    auto uri = server.CreateDatabase(&db_);
    ASSERT_TRUE(uri.ok()) << uri.status();
    uri_ = *uri;
  }

  std::unique_ptr<PgServer> own_;
  PgServer* server_ = nullptr;
  std::string db_, uri_;  // the database's name and its URI
};

}  // namespace syncsched::testing
