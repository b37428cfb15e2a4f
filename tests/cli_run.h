// SPDX-License-Identifier: Apache-2.0
// Runs the `statestream` binary under test (STATESTREAM_BIN, defined by
// the e2e test targets) to its end.
#ifndef STATESTREAM_TESTS_CLI_RUN_H_
#define STATESTREAM_TESTS_CLI_RUN_H_

#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/subprocess.h"

namespace statestream {

// `statestream ARGS...`: exit code, stdout, stderr (a failure to run it
// fails the test).
inline e2e::RunResult Statestream(std::vector<std::string> args) {
  args.insert(args.begin(), STATESTREAM_BIN);
  auto result = e2e::Run(args);
  EXPECT_TRUE(result.ok()) << result.status();
  return result.ok() ? *result : e2e::RunResult{};
}

}  // namespace statestream

#endif  // STATESTREAM_TESTS_CLI_RUN_H_
