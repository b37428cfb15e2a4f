// SPDX-License-Identifier: Apache-2.0
#include "common/files.h"

#include <sys/stat.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "common/testing/scratch_dir.h"
#include "gtest/gtest.h"

namespace statestream {
namespace {

class FilesTest : public ::testing::Test {
 protected:
  testing::ScratchDir scratch_{"ss-files"};
  const std::string dir_ = scratch_.path();
};

TEST_F(FilesTest, ReadsAWholeFile) {
  std::ofstream(dir_ + "/f") << "one\ntwo\n";
  EXPECT_EQ(*ReadFile(dir_ + "/f"), "one\ntwo\n");
  EXPECT_EQ(*ReadRegularFile(dir_ + "/f", 8), "one\ntwo\n");
  EXPECT_EQ(ReadFile(dir_ + "/missing").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_FALSE(ReadFile(dir_).ok());  // a directory is no empty file
  EXPECT_FALSE(ReadRegularFile(dir_, 8).ok());
}

// A directory syncs; a missing one, or a file, is an error naming it.
TEST_F(FilesTest, SyncsADirectoryAndNothingElse) {
  EXPECT_TRUE(SyncDirectory(dir_).ok());
  const absl::Status missing = SyncDirectory(dir_ + "/missing");
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound) << missing;
  EXPECT_NE(missing.message().find(dir_ + "/missing"), std::string::npos);
  std::ofstream(dir_ + "/f") << "x";
  EXPECT_FALSE(SyncDirectory(dir_ + "/f").ok());
}

// What a running server rereads must not hang it or fill its memory: a
// FIFO with no writer, an endless device, a file over the bound.
TEST_F(FilesTest, ARegularFileReadRefusesWhatCouldHangOrFillMemory) {
  ASSERT_EQ(mkfifo((dir_ + "/fifo").c_str(), 0600), 0);
  absl::StatusOr<std::string> fifo = ReadRegularFile(dir_ + "/fifo", 1 << 20);
  EXPECT_EQ(fifo.status().code(), absl::StatusCode::kFailedPrecondition)
      << fifo.status();
  EXPECT_NE(fifo.status().message().find("not a regular file"),
            std::string::npos);
  EXPECT_EQ(ReadRegularFile("/dev/zero", 1 << 20).status().code(),
            absl::StatusCode::kFailedPrecondition);
  std::ofstream(dir_ + "/big") << std::string(1025, 'x');
  absl::StatusOr<std::string> big = ReadRegularFile(dir_ + "/big", 1024);
  EXPECT_EQ(big.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(big.status().message().find("larger than 1024 bytes"),
            std::string::npos);
  EXPECT_EQ(ReadRegularFile(dir_ + "/big", 1025)->size(), 1025u);
  // Any kind of file, bounded.
  EXPECT_EQ(ReadFileUpTo(dir_ + "/big", 1024).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(ReadFileUpTo("/dev/zero", 1 << 16).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(*ReadFileUpTo("/dev/null", 16), "");
}

}  // namespace
}  // namespace statestream
