// SPDX-License-Identifier: Apache-2.0
#include "common/random.h"

#include <pthread.h>
#include <sys/random.h>

#include <atomic>
#include <cerrno>
#include <cstdint>

#include "absl/strings/str_cat.h"

namespace statestream {
namespace {

// Bumped in a forked child, so each thread's generator there reseeds
// instead of going on with the sequence its parent goes on with too.
std::atomic<uint64_t> fork_generation{0};

void CountFork() { fork_generation.fetch_add(1, std::memory_order_relaxed); }

std::mt19937_64 Seeded() {
  static const bool registered =
      pthread_atfork(nullptr, nullptr, &CountFork) == 0;
  (void)registered;
  std::random_device rd;
  std::seed_seq seed{rd(), rd(), rd(), rd(), rd(), rd(), rd(), rd()};
  return std::mt19937_64(seed);
}

// `n` bytes from the kernel's generator (getrandom: blocks only until it
// is seeded at boot); false if it cannot give them.
bool OsRandom(void* out, size_t n) {
  auto* p = static_cast<unsigned char*>(out);
  while (n > 0) {
    const ssize_t got = getrandom(p, n, 0);
    if (got < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += got;
    n -= static_cast<size_t>(got);
  }
  return true;
}

}  // namespace

std::mt19937_64& ThreadRng() {
  thread_local uint64_t generation = fork_generation.load();
  thread_local std::mt19937_64 rng = Seeded();
  const uint64_t now = fork_generation.load(std::memory_order_relaxed);
  if (generation != now) {
    generation = now;
    rng = Seeded();
  }
  return rng;
}

std::string RandomHex128() {
  uint64_t word[2];
  if (!OsRandom(word, sizeof(word))) {
    std::mt19937_64& rng = ThreadRng();
    word[0] = rng();
    word[1] = rng();
  }
  return absl::StrCat(absl::Hex(word[0], absl::kZeroPad16),
                      absl::Hex(word[1], absl::kZeroPad16));
}

}  // namespace statestream
