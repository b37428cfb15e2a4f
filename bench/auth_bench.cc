// SPDX-License-Identifier: Apache-2.0
// What authenticating one call costs with N API keys loaded: every call
// (and every open Append's recheck after a keys reread) runs
// TenantAuth::Authenticate. Hits use a key from the middle of the set;
// misses an unknown key. Run:
//   build/bench/auth_bench --benchmark_counters_tabular=true
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "benchmark/benchmark.h"
#include "services/tenants.h"

namespace statestream {
namespace {

std::string TokenOf(int64_t i) {
  return absl::StrFormat("bench-token-%020d", i);
}

TenantAuth KeysOf(int64_t count) {
  std::map<std::string, std::string> keys;
  for (int64_t i = 0; i < count; ++i) {
    keys.emplace(TokenOf(i), absl::StrCat("tenant-", i % 1000));
  }
  return TenantAuth(std::move(keys));
}

// state.range(0): keys loaded; state.range(1): 1 = a known key, 0 = not.
void BM_Authenticate(benchmark::State& state) {
  const int64_t count = state.range(0);
  const bool known = state.range(1) != 0;
  const TenantAuth auth = KeysOf(count);
  const std::string header =
      absl::StrCat("Bearer ", known ? TokenOf(count / 2)
                                    : std::string("unknown-token-0123456789"));
  for (auto _ : state) {
    absl::StatusOr<std::string> tenant =
        auth.Authenticate(header, std::nullopt);
    if (tenant.ok() != known) {
      state.SkipWithError("unexpected outcome");
      break;
    }
    benchmark::DoNotOptimize(tenant);
  }
  state.counters["keys"] = static_cast<double>(count);
}

BENCHMARK(BM_Authenticate)
    ->ArgsProduct({{1, 100, 10000, 300000}, {1, 0}})
    ->ArgNames({"keys", "known"});

}  // namespace
}  // namespace statestream

BENCHMARK_MAIN();
