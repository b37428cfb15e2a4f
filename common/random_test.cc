// SPDX-License-Identifier: Apache-2.0
#include "common/random.h"

#include <sys/wait.h>
#include <unistd.h>

#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace statestream {
namespace {

// 32 lowercase hex digits, and no two alike across threads (each thread's
// generator is seeded on its own).
TEST(RandomTest, Hex128IsThirtyTwoHexDigitsAndUnique) {
  std::vector<std::string> ids(64);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < ids.size(); ++i) {
    threads.emplace_back([&ids, i] { ids[i] = RandomHex128(); });
  }
  for (auto& t : threads) t.join();
  for (const std::string& id : ids) {
    ASSERT_EQ(id.size(), 32u) << id;
    EXPECT_EQ(id.find_first_not_of("0123456789abcdef"), std::string::npos)
        << id;
  }
  EXPECT_EQ(std::set<std::string>(ids.begin(), ids.end()).size(), ids.size());
}

// A process forked after drawing ids (a prefork server, a multiprocessing
// pool using the SDK) draws other ids than its parent: the two must never
// send the same request id, or the server would take one's create for a
// resend of the other's.
TEST(RandomTest, AForkedChildDrawsOtherNumbersThanItsParent) {
  (void)RandomHex128();
  (void)ThreadRng()();
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    std::string drawn = RandomHex128();
    drawn += absl::StrCat(absl::Hex(ThreadRng()()));
    _exit(write(fds[1], drawn.data(), drawn.size()) ==
                  static_cast<ssize_t>(drawn.size())
              ? 0
              : 1);
  }
  close(fds[1]);
  const std::string id = RandomHex128();
  const std::string jitter = absl::StrCat(absl::Hex(ThreadRng()()));
  std::string child(64, '\0');
  const ssize_t got = read(fds[0], child.data(), child.size());
  close(fds[0]);
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  ASSERT_GT(got, 32);
  child.resize(static_cast<size_t>(got));
  EXPECT_NE(child.substr(0, 32), id);
  EXPECT_NE(child.substr(32), jitter);
}

}  // namespace
}  // namespace statestream
