// SPDX-License-Identifier: Apache-2.0
#include "common/throttled_log.h"

#include <iostream>
#include <utility>

#include "absl/strings/str_cat.h"

namespace statestream {

bool ThrottledLog::Say(absl::string_view line) {
  uint64_t unsaid = 0;
  {
    absl::MutexLock lock(&mu_);
    const absl::Time now = absl::Now();
    if (now - said_ < every_) {
      ++unsaid_;
      return false;
    }
    said_ = now;
    unsaid = std::exchange(unsaid_, 0);
  }
  std::string text = absl::StrCat(prefix_, line);
  if (unsaid > 0) {
    absl::StrAppend(&text, "; ", unsaid, " more since the last such line");
  }
  std::cerr << text << "\n";
  return true;
}

}  // namespace statestream
