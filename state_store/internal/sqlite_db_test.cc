// SPDX-License-Identifier: Apache-2.0
// SqliteError's mapping, on real SQLite failures: what a retry repeats is
// INTERNAL, what may pass is UNAVAILABLE.
#include "state_store/internal/sqlite_db.h"

#include <sqlite3.h>
#include <stdlib.h>

#include <filesystem>
#include <string>

#include "common/status.h"
#include "gtest/gtest.h"

namespace statestream::store_internal {
namespace {

class SqliteDbTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/ss-sqlite-db-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    auto db = OpenDatabase(path(), absl::Milliseconds(1));
    ASSERT_TRUE(db.ok()) << db.status();
    db_ = *db;
    ASSERT_TRUE(Stmt(db_, "CREATE TABLE t (k INTEGER PRIMARY KEY)").Run().ok());
  }
  void TearDown() override {
    sqlite3_close(db_);
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  std::string path() const { return dir_ + "/state.db"; }

  std::string dir_;
  sqlite3* db_ = nullptr;
};

// A constraint the store broke, or a statement SQLite cannot run, is the
// store's bug: INTERNAL, which clients do not retry (it was UNAVAILABLE,
// retried until their deadline), its SQLite text kept from the caller.
TEST_F(SqliteDbTest, AStatementTheStoreGotWrongIsInternal) {
  ASSERT_TRUE(Stmt(db_, "INSERT INTO t VALUES (1)").Run().ok());
  const absl::Status twice = Stmt(db_, "INSERT INTO t VALUES (1)").Run();
  EXPECT_EQ(twice.code(), absl::StatusCode::kInternal) << twice;
  EXPECT_EQ(GetReason(twice), Reason::kInternal);
  EXPECT_NE(twice.message().find("UNIQUE"), absl::string_view::npos);
  const std::optional<std::string> shown = GetPublicMessage(twice);
  ASSERT_TRUE(shown.has_value());
  EXPECT_EQ(shown->find("UNIQUE"), std::string::npos) << *shown;
  const absl::Status bad = Stmt(db_, "SELECT nope FROM t").Run();
  EXPECT_EQ(bad.code(), absl::StatusCode::kInternal) << bad;
}

// Another connection holding the write lock past the busy timeout may let
// go: UNAVAILABLE/STORE_UNAVAILABLE, retried.
TEST_F(SqliteDbTest, AWriteLockHeldElsewhereIsUnavailable) {
  sqlite3* other = nullptr;
  ASSERT_EQ(sqlite3_open(path().c_str(), &other), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(other, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr),
            SQLITE_OK);
  const absl::Status busy = Stmt(db_, "INSERT INTO t VALUES (2)").Run();
  EXPECT_EQ(busy.code(), absl::StatusCode::kUnavailable) << busy;
  EXPECT_EQ(GetReason(busy), Reason::kStoreUnavailable);
  sqlite3_exec(other, "ROLLBACK", nullptr, nullptr, nullptr);
  sqlite3_close(other);
  EXPECT_TRUE(Stmt(db_, "INSERT INTO t VALUES (2)").Run().ok());
}

// A value SQLite cannot bind (over its length limit, 1e9 bytes by default:
// a state that large) fails the statement. SQLite leaves such a parameter
// NULL, and the insert ran, storing a version without its state after an
// OK reply.
TEST_F(SqliteDbTest, AValueTooLongToBindFailsTheStatement) {
  ASSERT_TRUE(
      Stmt(db_, "CREATE TABLE b (k INTEGER PRIMARY KEY, v BLOB)").Run().ok());
  sqlite3_limit(db_, SQLITE_LIMIT_LENGTH, 1000);
  const std::string big(2000, 'x');
  const absl::Status blob =
      Stmt(db_, "INSERT INTO b VALUES (1, ?)").BindBlob(big).Run();
  EXPECT_FALSE(blob.ok());
  const absl::Status text =
      Stmt(db_, "INSERT INTO b VALUES (2, ?)").Bind(big).Run();
  EXPECT_FALSE(text.ok());
  Stmt count(db_, "SELECT COUNT(*) FROM b");
  ASSERT_TRUE(count.Step());
  EXPECT_EQ(count.Int(0), 0);
  // A value within the limit still binds.
  EXPECT_TRUE(Stmt(db_, "INSERT INTO b VALUES (3, ?)")
                  .BindBlob(std::string(10, 'y'))
                  .Run()
                  .ok());
}

}  // namespace
}  // namespace statestream::store_internal
