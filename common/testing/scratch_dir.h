// SPDX-License-Identifier: Apache-2.0
// Private directories for the files a test writes, removed with everything
// in them when they go: a test run on a long-lived machine (a developer's,
// a CI runner) leaves nothing behind in the shared temporary directory.
#ifndef STATESTREAM_COMMON_TESTING_SCRATCH_DIR_H_
#define STATESTREAM_COMMON_TESTING_SCRATCH_DIR_H_

#include <stdlib.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <string_view>
#include <system_error>

namespace statestream::testing {

class ScratchDir {
 public:
  // mkdtemp(3) under $TEST_TMPDIR, else the system's temporary directory
  // ($TMPDIR, else /tmp), named `prefix` and six random characters (mode
  // 0700). A test cannot go on without it, so failing to make it aborts.
  explicit ScratchDir(std::string_view prefix = "ss-test") {
    const char* test_tmpdir = std::getenv("TEST_TMPDIR");
    std::error_code ec;
    const std::filesystem::path parent =
        test_tmpdir != nullptr && *test_tmpdir != '\0'
            ? std::filesystem::path(test_tmpdir)
            : std::filesystem::temp_directory_path(ec);
    std::string tmpl = (parent / (std::string(prefix) + "-XXXXXX")).string();
    if (ec || mkdtemp(tmpl.data()) == nullptr) {
      std::fprintf(stderr, "cannot make a scratch directory like %s\n",
                   tmpl.c_str());
      std::abort();
    }
    path_ = std::move(tmpl);
  }
  ~ScratchDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  ScratchDir(const ScratchDir&) = delete;
  ScratchDir& operator=(const ScratchDir&) = delete;

  const std::string& path() const { return path_; }
  // path()/name (the file is not created).
  std::string File(std::string_view name) const {
    return path_ + "/" + std::string(name);
  }

 private:
  std::string path_;
};

// One directory for the whole test process, made on first use and removed
// at exit: for helpers that hand out paths outliving any one test.
inline const ScratchDir& ProcessScratchDir() {
  static const ScratchDir dir("ss-test");
  return dir;
}

}  // namespace statestream::testing

#endif  // STATESTREAM_COMMON_TESTING_SCRATCH_DIR_H_
