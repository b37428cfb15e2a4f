// SPDX-License-Identifier: Apache-2.0
#include "common/byte_budget.h"

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace statestream {

ByteBudget::ByteBudget(int64_t max, std::string what)
    : max_(max), what_(std::move(what)) {}

ByteBudget::Hold& ByteBudget::Hold::operator=(Hold&& other) noexcept {
  Release();
  budget_ = std::exchange(other.budget_, nullptr);
  bytes_ = std::exchange(other.bytes_, 0);
  return *this;
}

void ByteBudget::Hold::Release() {
  if (budget_ != nullptr) budget_->Give(bytes_);
  budget_ = nullptr;
  bytes_ = 0;
}

namespace {

absl::Status Refusal(int64_t held, int64_t max, const std::string& what) {
  return MakeError(
      absl::StatusCode::kResourceExhausted, Reason::kOverloaded,
      absl::StrCat("calls in flight hold ", held,
                   " bytes; this server holds at most ", max, " (", what, ")"),
      {{"retry_after_ms", "500"}});
}

}  // namespace

absl::StatusOr<ByteBudget::Hold> ByteBudget::Acquire(int64_t bytes) {
  absl::MutexLock lock(&mu_);
  if (held_ > 0 && held_ + bytes > max_) return Refusal(held_, max_, what_);
  held_ += bytes;
  return Hold(this, bytes);
}

absl::Status ByteBudget::Grow(Hold* hold, int64_t bytes) {
  absl::MutexLock lock(&mu_);
  if (held_ > hold->bytes_ && held_ + bytes > max_) {
    return Refusal(held_, max_, what_);
  }
  held_ += bytes;
  hold->budget_ = this;
  hold->bytes_ += bytes;
  return absl::OkStatus();
}

void ByteBudget::Take(int64_t bytes) {
  absl::MutexLock lock(&mu_);
  held_ += bytes;
}

void ByteBudget::Give(int64_t bytes) {
  absl::MutexLock lock(&mu_);
  held_ -= bytes;
}

bool ByteBudget::over() const {
  absl::MutexLock lock(&mu_);
  return held_ > max_;
}

int64_t ByteBudget::held() const {
  absl::MutexLock lock(&mu_);
  return held_;
}

}  // namespace statestream
