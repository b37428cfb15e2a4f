// SPDX-License-Identifier: Apache-2.0
#include "common/throttled_log.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace statestream {
namespace {

// The one writer of WriteLogLine's lines. Never destroyed: its thread may
// be blocked in a write when the process exits.
class LogWriter {
 public:
  static LogWriter& Get() {
    static LogWriter* writer = [] {
      auto* w = new LogWriter;
      std::atexit([] { Get().Drain(absl::Milliseconds(200)); });
      return w;
    }();
    return *writer;
  }

  void Queue(std::string line) {
    bool start = false;
    {
      absl::MutexLock lock(&mu_);
      if (!no_thread_) {
        if (queue_.size() >= kMaxQueuedLogLines) {
          ++dropped_;
          return;
        }
        queue_.push_back(std::move(line));
        ++queued_;
        if (started_) return;
        started_ = start = true;
      }
    }
    if (start) {
      try {
        std::thread([this] { Run(); }).detach();
        return;
      } catch (...) {  // no thread: each caller writes its own line
        absl::MutexLock lock(&mu_);
        no_thread_ = true;
        line.clear();
        for (const std::string& queued : queue_) line += queued;
        queue_.clear();
        written_ = queued_;
      }
    }
    std::fwrite(line.data(), 1, line.size(), stderr);
  }

  // Waits up to `limit` for the lines queued so far to be written (not
  // for the queue to empty: lines may keep coming).
  bool Drain(absl::Duration limit) {
    absl::MutexLock lock(&mu_);
    struct Due {
      LogWriter* w;
      uint64_t queued;
    } due{this, queued_};
    return mu_.AwaitWithTimeout(absl::Condition(
                                    +[](Due* d) {
                                      d->w->mu_.AssertHeld();
                                      return d->w->written_ >= d->queued;
                                    },
                                    &due),
                                limit);
  }

 private:
  void Run() {
    for (;;) {
      std::string text;
      {
        absl::MutexLock lock(&mu_);
        mu_.Await(absl::Condition(
            +[](std::deque<std::string>* q) { return !q->empty(); }, &queue_));
        text = std::move(queue_.front());
        queue_.pop_front();
        if (dropped_ > 0) {
          absl::StrAppend(&text, "statestream: ", dropped_,
                          " log lines dropped (stderr was not read)\n");
          dropped_ = 0;
        }
      }
      std::fwrite(text.data(), 1, text.size(), stderr);
      std::fflush(stderr);
      absl::MutexLock lock(&mu_);
      ++written_;
    }
  }

  absl::Mutex mu_;
  std::deque<std::string> queue_ ABSL_GUARDED_BY(mu_);
  uint64_t dropped_ ABSL_GUARDED_BY(mu_) = 0;
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool no_thread_ ABSL_GUARDED_BY(mu_) = false;
  // Lines queued and written since the start (Drain waits on these).
  uint64_t queued_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t written_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace

std::string CleanLogLine(absl::string_view line) {
  // Room for "..." and the newline: a whole line is at most
  // kMaxLogLineBytes (PIPE_BUF: one write to a pipe is not interleaved).
  constexpr size_t kRoom = kMaxLogLineBytes - 4;
  std::string out;
  out.reserve(std::min(line.size(), kMaxLogLineBytes));
  for (const char c : line) {
    const auto u = static_cast<unsigned char>(c);
    const bool control = u < 0x20 || u == 0x7f;
    if (out.size() + (control ? 4 : 1) > kRoom) {
      // Cut inside a UTF-8 sequence (`c` continues one): drop its start.
      if ((u & 0xc0) == 0x80) {
        while (!out.empty() &&
               (static_cast<unsigned char>(out.back()) & 0xc0) == 0x80) {
          out.pop_back();
        }
        if (!out.empty()) out.pop_back();  // its first byte
      }
      out.append("...");
      break;
    }
    if (control) {
      absl::StrAppendFormat(&out, "\\x%02x", u);
    } else {
      out.push_back(c);
    }
  }
  return out;
}

bool FlushLogLines(absl::Duration limit) {
  return LogWriter::Get().Drain(limit);
}

void WriteLogLine(absl::string_view line) {
  LogWriter::Get().Queue(absl::StrCat(CleanLogLine(line), "\n"));
}

bool ThrottledLog::Say(absl::FunctionRef<std::string()> make_line) {
  uint64_t unsaid = 0;
  {
    absl::MutexLock lock(&mu_);
    const absl::Time now = clock_->Now();
    if (now - said_ < every_) {
      ++unsaid_;
      return false;
    }
    said_ = now;
    unsaid = std::exchange(unsaid_, 0);
  }
  std::string text = absl::StrCat(prefix_, make_line());
  if (unsaid > 0) {
    absl::StrAppend(&text, "; ", unsaid, " more since the last such line");
  }
  sink_(text);
  return true;
}

}  // namespace statestream
