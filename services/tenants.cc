// SPDX-License-Identifier: Apache-2.0
#include "services/tenants.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include <algorithm>
#include <iostream>
#include <sstream>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/files.h"
#include "common/random.h"
#include "common/session_ids.h"
#include "common/status.h"
#include "common/throttled_log.h"
#include "state_store/state_store.h"

namespace statestream {
namespace {

absl::Status Unauthenticated(absl::string_view message) {
  return MakeError(absl::StatusCode::kUnauthenticated, Reason::kUnauthenticated,
                   message);
}

bool IsValidToken(absl::string_view token) {
  if (token.size() < 16 || token.size() > 256) return false;
  for (char c : token) {
    if (c <= ' ' || c > '~') return false;
  }
  return true;
}

// A token of the example manifests (deploy/k8s/overlays/dev, the
// placeholders in the others): public, so anyone can show it.
bool IsPlaceholder(absl::string_view token) {
  return absl::StartsWith(token, "CHANGE-ME") ||
         absl::StartsWith(token, "dev-only-insecure");
}

constexpr int kMaxLimit = 1000000;

// "max_sessions=N" or "max_streams=N" into `out`; false if malformed.
bool ParseLimit(absl::string_view word, TenantLimitOverride* out) {
  size_t eq = word.find('=');
  if (eq == absl::string_view::npos) return false;
  absl::string_view name = word.substr(0, eq);
  int value = 0;
  if (!absl::SimpleAtoi(word.substr(eq + 1), &value) || value < 0 ||
      value > kMaxLimit) {
    return false;
  }
  if (name == "max_sessions" && !out->max_sessions) {
    out->max_sessions = value;
  } else if (name == "max_streams" && !out->max_streams) {
    out->max_streams = value;
  } else {
    return false;
  }
  return true;
}

// Merges one line's limits into the tenant's; false on a conflict.
bool MergeLimit(const std::optional<int>& line, std::optional<int>* tenant) {
  if (!line) return true;
  if (*tenant && **tenant != *line) return false;
  *tenant = line;
  return true;
}

absl::Status TenantLimitError(absl::string_view limit, int max,
                              absl::string_view what) {
  return MakeError(
      absl::StatusCode::kResourceExhausted, Reason::kTenantLimit,
      absl::StrCat("tenant limit reached: ", what, " (", limit, "=", max, ")"),
      {{"limit", std::string(limit)}, {"max", absl::StrCat(max)}});
}

}  // namespace

bool IsValidTenant(absl::string_view tenant) {
  if (tenant.empty() || tenant.size() > 64) return false;
  for (char c : tenant) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
          c == '-')) {
      return false;
    }
  }
  return true;
}

namespace {

// SHA-256 of `data`; nullopt if the library cannot compute it (e.g. an
// OpenSSL configured for a provider that is missing).
std::optional<std::array<unsigned char, 32>> Sha256(absl::string_view data) {
  std::array<unsigned char, 32> digest{};
  unsigned int size = 0;
  if (EVP_Digest(data.data(), data.size(), digest.data(), &size, EVP_sha256(),
                 nullptr) != 1 ||
      size != digest.size()) {
    return std::nullopt;
  }
  return digest;
}

// Whether `digest` is one of `held`, each compared in constant time (a
// handful of internal tokens: neither timing nor the order tells which).
bool HoldsDigest(const std::vector<std::array<unsigned char, 32>>& held,
                 const std::array<unsigned char, 32>& digest) {
  bool found = false;
  for (const std::array<unsigned char, 32>& want : held) {
    found |= CRYPTO_memcmp(want.data(), digest.data(), digest.size()) == 0;
  }
  return found;
}

}  // namespace

std::string Sha256Of(absl::string_view data) {
  const std::optional<std::array<unsigned char, 32>> digest = Sha256(data);
  if (!digest) return "";
  return std::string(digest->begin(), digest->end());
}

std::optional<TenantAuth::KeySet> TenantAuth::MakeKeySet(
    std::map<std::string, std::string> api_keys) {
  KeySet set;
  for (auto& [token, tenant] : api_keys) {
    std::optional<std::array<unsigned char, 32>> digest = Sha256(token);
    if (!digest) return std::nullopt;
    set.placeholder = set.placeholder || IsPlaceholder(token);
    set.tenants.emplace(*digest, std::move(tenant));
  }
  return set;
}

TenantAuth::TenantAuth(KeySet keys) : shared_(std::make_shared<Shared>()) {
  absl::MutexLock lock(&shared_->mu);
  shared_->current = std::make_shared<const KeySet>(std::move(keys));
}

TenantAuth::TenantAuth(std::map<std::string, std::string> api_keys) {
  if (api_keys.empty()) return;  // development mode
  std::optional<KeySet> set = MakeKeySet(std::move(api_keys));
  if (!set) {
    // Without digests no token can be checked: every call is refused.
    set.emplace();
    set->digests_failed = true;
  }
  *this = TenantAuth(*std::move(set));
}

absl::StatusOr<TenantAuth> TenantAuth::FromFile(const std::string& path) {
  absl::StatusOr<std::string> text =
      ReadRegularFile(path, kMaxSecretsFileBytes);
  if (!text.ok()) return absl::NotFoundError(text.status().message());
  return FromText(path, *text);
}

absl::StatusOr<TenantAuth> TenantAuth::FromText(absl::string_view name,
                                                absl::string_view text) {
  std::map<std::string, std::string> keys;
  std::map<std::string, TenantLimitOverride> limits;
  int number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++number;
    std::istringstream words{std::string(line)};
    std::string token, tenant, word;
    if (!(words >> token) || token[0] == '#') continue;
    TenantLimitOverride limit;
    bool ok = (words >> tenant) && IsValidToken(token) && IsValidTenant(tenant);
    while (ok && (words >> word)) ok = ParseLimit(word, &limit);
    if (!ok) {
      return absl::InvalidArgumentError(absl::StrCat(
          name, ":", number,
          ": expected \"TOKEN TENANT [max_sessions=N] [max_streams=N]\" "
          "(token: 16-256 printable bytes; tenant: 1-64 bytes of [a-z0-9_-]; "
          "N: 0-",
          kMaxLimit, ", 0 = unlimited)"));
    }
    if (!keys.emplace(token, tenant).second) {
      return absl::InvalidArgumentError(
          absl::StrCat(name, ":", number, ": duplicate token"));
    }
    if (limit.max_sessions || limit.max_streams) {
      TenantLimitOverride& merged = limits[tenant];
      if (!MergeLimit(limit.max_sessions, &merged.max_sessions) ||
          !MergeLimit(limit.max_streams, &merged.max_streams)) {
        return absl::InvalidArgumentError(absl::StrCat(
            name, ":", number, ": tenant ", tenant,
            " has different limits on another line (limits are per tenant)"));
      }
    }
  }
  if (keys.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": no API keys"));
  }
  std::optional<KeySet> set = MakeKeySet(std::move(keys));
  if (!set) {
    return absl::FailedPreconditionError(
        "cannot compute SHA-256 (OpenSSL) to hold the API keys");
  }
  set->limits = std::move(limits);
  return TenantAuth(*std::move(set));
}

std::shared_ptr<const TenantAuth::KeySet> TenantAuth::Current() const {
  if (shared_ == nullptr) return nullptr;
  absl::MutexLock lock(&shared_->mu);
  return shared_->current;
}

std::map<std::string, TenantLimitOverride> TenantAuth::limits() const {
  std::shared_ptr<const KeySet> set = Current();
  return set == nullptr ? std::map<std::string, TenantLimitOverride>{}
                        : set->limits;
}

size_t TenantAuth::key_count() const {
  std::shared_ptr<const KeySet> set = Current();
  return set == nullptr ? 0 : set->tenants.size();
}

absl::Status TenantAuth::Replace(const TenantAuth& newer) {
  if (development_mode() || newer.development_mode()) {
    return absl::FailedPreconditionError(
        "API keys cannot be turned on or off while running");
  }
  std::shared_ptr<const KeySet> set = newer.Current();
  absl::MutexLock lock(&shared_->mu);
  shared_->current = std::move(set);
  shared_->generation.fetch_add(1, std::memory_order_release);
  return absl::OkStatus();
}

uint64_t TenantAuth::generation() const {
  return shared_ == nullptr
             ? 0
             : shared_->generation.load(std::memory_order_acquire);
}

absl::Status TenantAuth::Recheck(const Credentials& credentials,
                                 const std::string& tenant,
                                 uint64_t* seen) const {
  if (shared_ == nullptr) return absl::OkStatus();  // nothing to revoke
  // Read before the keys: a Replace in between is checked next time.
  const uint64_t now = generation();
  if (*seen == now) return absl::OkStatus();
  absl::StatusOr<std::string> named = Authenticate(credentials);
  if (!named.ok() && GetReason(named.status()) != Reason::kUnauthenticated) {
    return named.status();  // not the caller's doing (SHA-256 failed)
  }
  if (!named.ok() || *named != tenant) {
    return Unauthenticated(
        "the API key this call was made with was revoked (or now names "
        "another tenant)");
  }
  *seen = now;
  return absl::OkStatus();
}

Credentials Credentials::Of(std::optional<absl::string_view> authorization,
                            std::optional<absl::string_view> tenant_header) {
  Credentials kept;
  if (tenant_header) kept.tenant_header = std::string(*tenant_header);
  constexpr absl::string_view kBearer = "bearer ";
  if (!authorization) return kept;
  if (!absl::StartsWithIgnoreCase(*authorization, kBearer)) {
    kept.key = Key::kNotBearer;
    return kept;
  }
  const std::optional<std::array<unsigned char, 32>> digest =
      Sha256(authorization->substr(kBearer.size()));
  kept.key = digest ? Key::kDigest : Key::kFailed;
  if (digest) kept.digest = *digest;
  return kept;
}

absl::StatusOr<std::string> TenantAuth::Authenticate(
    std::optional<absl::string_view> authorization,
    std::optional<absl::string_view> tenant_header) const {
  if (development_mode()) {  // the token is not looked at: not hashed
    return Authenticate(Credentials::Of(std::nullopt, tenant_header));
  }
  return Authenticate(Credentials::Of(authorization, tenant_header));
}

absl::StatusOr<std::string> TenantAuth::Authenticate(
    const Credentials& credentials) const {
  const std::optional<std::string>& tenant_header = credentials.tenant_header;
  if (development_mode()) {
    if (!tenant_header.has_value()) return std::string("default");
    if (!IsValidTenant(*tenant_header)) {
      return Unauthenticated(
          "x-statestream-tenant must be 1-64 bytes of [a-z0-9_-]");
    }
    return *tenant_header;
  }
  if (tenant_header.has_value()) {
    return Unauthenticated(
        "x-statestream-tenant is not accepted: this server authenticates "
        "with API keys (authorization: Bearer <token>)");
  }
  using Key = Credentials::Key;
  if (credentials.key == Key::kAbsent || credentials.key == Key::kNotBearer) {
    return Unauthenticated("missing credentials (authorization: Bearer ...)");
  }
  const std::shared_ptr<const KeySet> set = Current();
  if (credentials.key == Key::kFailed || set->digests_failed) {
    // Not the caller's fault: INTERNAL, logged, not "fix credentials".
    std::cerr << "statestream: SHA-256 failed; an API key was not checked\n";
    return MakeError(absl::StatusCode::kInternal, Reason::kInternal,
                     "API keys cannot be checked (SHA-256 failed)");
  }
  const auto found = set->tenants.find(credentials.digest);
  if (found == set->tenants.end()) return Unauthenticated("unknown API key");
  return found->second;
}

absl::Status InternalToken::TokenSet::Add(absl::string_view token) {
  if (!IsValidToken(token)) {
    return absl::InvalidArgumentError(
        "an internal token must be 16-256 printable ASCII bytes without "
        "spaces");
  }
  const std::optional<std::array<unsigned char, 32>> digest = Sha256(token);
  if (!digest) {
    return MakeError(absl::StatusCode::kInternal, Reason::kInternal,
                     "the internal token cannot be hashed (SHA-256 failed)");
  }
  if (value.empty()) value = std::string(token);
  for (const auto& held : digests) {
    if (held == *digest) return absl::OkStatus();  // listed twice
  }
  digests.push_back(*digest);
  placeholder = placeholder || IsPlaceholder(token);
  return absl::OkStatus();
}

InternalToken::InternalToken(TokenSet tokens)
    : shared_(std::make_shared<Shared>()) {
  absl::MutexLock lock(&shared_->mu);
  shared_->current = std::make_shared<const TokenSet>(std::move(tokens));
}

std::shared_ptr<const InternalToken::TokenSet> InternalToken::Current() const {
  if (shared_ == nullptr) return nullptr;
  absl::MutexLock lock(&shared_->mu);
  return shared_->current;
}

absl::StatusOr<InternalToken> InternalToken::FromValue(
    absl::string_view token) {
  TokenSet tokens;
  SS_RETURN_IF_ERROR(tokens.Add(absl::StripAsciiWhitespace(token)));
  return InternalToken(std::move(tokens));
}

absl::StatusOr<InternalToken> InternalToken::FromFile(const std::string& path) {
  absl::StatusOr<std::string> text =
      ReadRegularFile(path, kMaxSecretsFileBytes);
  if (!text.ok()) return absl::NotFoundError(text.status().message());
  return FromText(path, *text);
}

absl::StatusOr<InternalToken> InternalToken::FromText(absl::string_view name,
                                                      absl::string_view text) {
  TokenSet tokens;
  int number = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++number;
    const absl::string_view token = absl::StripAsciiWhitespace(line);
    if (token.empty() || token[0] == '#') continue;
    if (absl::Status st = tokens.Add(token); !st.ok()) {
      return absl::Status(st.code(),
                          absl::StrCat(name, ":", number, ": ", st.message()));
    }
  }
  if (tokens.digests.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(name, ": no token (one per line)"));
  }
  return InternalToken(std::move(tokens));
}

std::string InternalToken::value() const {
  std::shared_ptr<const TokenSet> tokens = Current();
  return tokens == nullptr ? "" : tokens->value;
}

size_t InternalToken::count() const {
  std::shared_ptr<const TokenSet> tokens = Current();
  return tokens == nullptr ? 0 : tokens->digests.size();
}

bool TenantAuth::holds_placeholder() const {
  std::shared_ptr<const KeySet> keys = Current();
  return keys != nullptr && keys->placeholder;
}

bool InternalToken::holds_placeholder() const {
  std::shared_ptr<const TokenSet> tokens = Current();
  return tokens != nullptr && tokens->placeholder;
}

absl::Status InternalToken::Replace(const InternalToken& newer) {
  if (!configured() || !newer.configured()) {
    return absl::FailedPreconditionError(
        "the internal token cannot be turned on or off while running");
  }
  std::shared_ptr<const TokenSet> tokens = newer.Current();
  absl::MutexLock lock(&shared_->mu);
  shared_->current = std::move(tokens);
  return absl::OkStatus();
}

absl::Status InternalToken::Check(
    std::optional<absl::string_view> shown) const {
  std::shared_ptr<const TokenSet> tokens = Current();
  if (tokens == nullptr) return absl::OkStatus();
  const std::optional<std::array<unsigned char, 32>> digest =
      shown.has_value() ? Sha256(*shown) : std::nullopt;
  if (!digest.has_value() || !HoldsDigest(tokens->digests, *digest)) {
    return Unauthenticated(
        "this worker takes calls only from gateways that show its internal "
        "token (x-statestream-internal-token)");
  }
  return absl::OkStatus();
}

bool TenantLimitsOptions::LimitsSessions() const {
  if (defaults.max_sessions > 0) return true;
  for (const auto& [tenant, limit] : tenants) {
    if (limit.max_sessions.value_or(0) > 0) return true;
  }
  return false;
}

bool TenantLimitsOptions::LimitsStreams() const {
  if (defaults.max_streams > 0) return true;
  for (const auto& [tenant, limit] : tenants) {
    if (limit.max_streams.value_or(0) > 0) return true;
  }
  return false;
}

TenantLimits::TenantLimits(TenantLimitsOptions options, StateStore* store)
    : options_(std::move(options)),
      store_(store),
      in_store_(store != nullptr && store->CountsTenantSlots()),
      overrides_(options_.tenants),
      // Random bits: this process's slots never share names with
      // another's, a restarted one's under the same id included.
      holder_(absl::StrCat(options_.slot_holder.substr(0, 64), ":",
                           RandomHex128())) {}

TenantLimits::~TenantLimits() {
  std::thread renewer;
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
    renewer = std::move(renewer_);
  }
  renew_wake_.Notify();
  if (renewer.joinable()) renewer.join();
}

TenantLimit TenantLimits::For(const std::string& tenant) const {
  TenantLimit limit = options_.defaults;
  absl::MutexLock lock(&overrides_mu_);
  auto it = overrides_.find(tenant);
  if (it != overrides_.end()) {
    limit.max_sessions = it->second.max_sessions.value_or(limit.max_sessions);
    limit.max_streams = it->second.max_streams.value_or(limit.max_streams);
  }
  return limit;
}

void TenantLimits::SetOverrides(
    std::map<std::string, TenantLimitOverride> tenants) {
  absl::MutexLock lock(&overrides_mu_);
  overrides_ = std::move(tenants);
}

TenantLimits::StreamSlot::StreamSlot(TenantLimits* limits, std::string tenant,
                                     std::string slot)
    : limits_(limits), tenant_(std::move(tenant)), slot_(std::move(slot)) {}

TenantLimits::StreamSlot::StreamSlot(StreamSlot&& other)
    : limits_(other.limits_),
      tenant_(std::move(other.tenant_)),
      slot_(std::move(other.slot_)) {
  other.limits_ = nullptr;
}

TenantLimits::StreamSlot::~StreamSlot() {
  if (limits_ != nullptr) limits_->Release(tenant_, slot_);
}

absl::StatusOr<TenantLimits::StreamSlot> TenantLimits::AcquireStream(
    const std::string& tenant) {
  const int max = For(tenant).max_streams;
  std::string slot;
  bool ask_store = false;
  {
    absl::MutexLock lock(&mu_);
    int& open = open_[tenant];
    if (max > 0 && open >= max) {
      if (open == 0) open_.erase(tenant);
      return TenantLimitError("max_streams", max,
                              "too many concurrent streams");
    }
    ++open;
    if (in_store_ && max > 0) {
      slot = absl::StrCat(holder_, ":", next_slot_++);
      ask_store = !store_down_ && !stopping_;
    }
  }
  if (slot.empty()) return StreamSlot(this, tenant, "");
  absl::Status failed;
  if (ask_store) {
    absl::StatusOr<bool> taken =
        store_->AcquireTenantSlot(tenant, slot, max, options_.slot_ttl);
    if (taken.ok() && !*taken) {
      Release(tenant, "");
      return TenantLimitError("max_streams", max,
                              "too many concurrent streams across gateways");
    }
    if (!taken.ok()) failed = taken.status();
  }
  // Taken, or the store is not answering: admitted on this process's count
  // (limits fail open); the renewals add the slot once the store answers.
  absl::MutexLock lock(&mu_);
  if (!failed.ok()) SetStoreDown(failed, tenant);
  if (stopping_ && failed.ok() && ask_store) {
    // Taken as the gateway stops: its slots are being removed.
    mu_.Unlock();
    store_->ReleaseTenantSlot(tenant, slot).IgnoreError();
    mu_.Lock();
  }
  held_[tenant].insert(slot);
  if (!renewer_.joinable() && !stop_) {
    try {
      renewer_ = std::thread([this] { RenewLoop(); });
    } catch (const std::system_error&) {
      // Out of threads: the slot expires after slot_ttl; the next stream
      // tries again.
    }
  }
  return StreamSlot(this, tenant, std::move(slot));
}

void TenantLimits::Release(const std::string& tenant, const std::string& slot) {
  {
    absl::MutexLock lock(&mu_);
    auto it = open_.find(tenant);
    if (it != open_.end() && --it->second <= 0) open_.erase(it);
    if (slot.empty()) return;
    auto held = held_.find(tenant);
    if (held == held_.end() || held->second.erase(slot) == 0) return;
    if (held->second.empty()) held_.erase(held);
    // Stopping, or not answering: every stream's end does not wait on the
    // store. The renewer's stopping pass removes the slot if it has not
    // run yet (once it has, it removed every slot held then); else the
    // renewer removes it once the store answers (else it expires).
    if (stopping_) {
      if (!stop_released_) Unreleased(tenant, slot);
      return;
    }
    if (store_down_) {
      Unreleased(tenant, slot);
      return;
    }
  }
  if (absl::Status released = store_->ReleaseTenantSlot(tenant, slot);
      !released.ok()) {
    absl::MutexLock lock(&mu_);
    SetStoreDown(released, tenant);
    Unreleased(tenant, slot);
  }
}

void TenantLimits::SetStoreDown(const absl::Status& why,
                                const std::string& tenant) {
  const bool down = !why.ok();
  if (down) {
    ++failures_;
    down_tenant_ = tenant;
  }
  if (down == store_down_ || stopping_) return;
  store_down_ = down;
  // Said under mu_, which every stream's admission takes: queued, never
  // waiting on stderr.
  if (down) {
    WriteLogLine(absl::StrCat(
        "statestream: tenant stream slots: the store failed (", why.message(),
        "); stream limits count per process until it answers"));
  } else {
    WriteLogLine(
        "statestream: tenant stream slots: the store answers again; stream "
        "limits hold across processes");
  }
}

void TenantLimits::ReleaseStoreSlots() {
  absl::MutexLock lock(&mu_);
  if (stopping_) return;
  stopping_ = true;  // nothing is renewed from now on
  // The renewer's stopping pass also releases what unreleased_ holds.
  renew_wake_.Notify();
  if (!renewer_.joinable() || held_.empty()) return;
  // The renewer removes them once any pass of its own is over (which might
  // otherwise add them back); a store that hangs gets a second of it, then
  // the store is interrupted and the slots expire.
  auto released = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stop_released_;
  };
  renew_wake_.Await(&mu_, released, absl::Seconds(1));
}

void TenantLimits::RenewLoop() {
  const absl::Duration every = options_.slot_ttl / 3;
  // After a failed pass, sooner: slots expire slot_ttl after their last
  // renewal.
  const absl::Duration retry = std::min(every, absl::Seconds(1));
  auto wake = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stop_ || (stopping_ && !stop_released_);
  };
  // On the steady clock: a wall clock stepped back must not hold the
  // renewals (the slots would expire in the store, and other gateways
  // admit streams past the limit).
  absl::MutexLock lock(&mu_);
  absl::Time next = SteadyNow() + every;
  while (!stop_) {
    renew_wake_.Await(&mu_, wake, next - SteadyNow());
    if (stop_) break;
    const absl::Time began = SteadyNow();
    next = began + every;
    if (stopping_) {
      // Once: every slot held goes (the streams are being cancelled), and
      // those of streams that ended without removing theirs.
      if (stop_released_) continue;
      std::vector<std::pair<std::string, std::string>> slots =
          std::move(unreleased_);
      unreleased_.clear();
      for (const auto& [tenant, held] : held_) {
        for (const std::string& slot : held) slots.emplace_back(tenant, slot);
      }
      mu_.Unlock();
      for (const auto& [tenant, slot] : slots) {
        if (!store_->ReleaseTenantSlot(tenant, slot).ok()) break;  // expire
      }
      mu_.Lock();
      stop_released_ = true;
      renew_wake_.Notify();
      continue;
    }
    const std::map<std::string, std::set<std::string>> renew = held_;
    const std::string probe = store_down_ ? down_tenant_ : "";
    const uint64_t failures = failures_;
    mu_.Unlock();
    absl::Status status;
    // A slot script, as the calls that failed: a server that answers PING
    // but refuses scripts (full, read-only) is still down for them.
    if (!probe.empty()) status = store_->CountTenantSlots(probe).status();
    std::string failed_tenant = probe;
    for (auto it = renew.begin(); status.ok() && it != renew.end(); ++it) {
      status = store_->RenewTenantSlots(
          it->first, {it->second.begin(), it->second.end()}, options_.slot_ttl);
      failed_tenant = it->first;
    }
    const bool ok = status.ok();
    mu_.Lock();
    // Up again only if nothing failed since this pass began.
    if (!ok || failures == failures_) SetStoreDown(status, failed_tenant);
    // A slot released while it was being renewed may have been added back
    // after its release removed it: remove it again.
    std::vector<std::pair<std::string, std::string>> released;
    for (const auto& [tenant, slots] : renew) {
      auto held = held_.find(tenant);
      for (const std::string& slot : slots) {
        if (held == held_.end() || held->second.count(slot) == 0) {
          released.emplace_back(tenant, slot);
        }
      }
    }
    next = std::max(began + (ok ? every : retry), SteadyNow());
    if (!ok) {
      for (auto& r : released)
        Unreleased(std::move(r.first), std::move(r.second));
      continue;
    }
    released.insert(released.end(), unreleased_.begin(), unreleased_.end());
    unreleased_.clear();
    if (released.empty()) continue;
    mu_.Unlock();
    for (const auto& [tenant, slot] : released) {
      store_->ReleaseTenantSlot(tenant, slot).IgnoreError();
    }
    mu_.Lock();
  }
}

void TenantLimits::Unreleased(std::string tenant, std::string slot) {
  // Beyond this many, the oldest have expired in the store long since.
  constexpr size_t kMaxUnreleased = 1 << 16;
  if (unreleased_.size() >= kMaxUnreleased) return;  // it expires
  unreleased_.emplace_back(std::move(tenant), std::move(slot));
}

int TenantLimits::open_streams(const std::string& tenant) const {
  absl::MutexLock lock(&mu_);
  auto it = open_.find(tenant);
  return it == open_.end() ? 0 : it->second;
}

absl::Status TenantLimits::CheckNewCreate(const std::string& tenant,
                                          const std::string& session_id,
                                          const std::string& request_id,
                                          absl::Duration request_id_window) {
  if (!session_id.empty()) return CheckNewSession(tenant, session_id);
  return CheckNewSession(
      tenant, request_id.empty() ? "" : DerivedSessionId(tenant, request_id),
      request_id_window);
}

absl::Status TenantLimits::CheckNewSession(const std::string& tenant,
                                           const std::string& session_id,
                                           absl::Duration max_age) {
  const int max = For(tenant).max_sessions;
  if (max <= 0 || store_ == nullptr) return absl::OkStatus();
  // One cheap read while well below the limit; the listing (up to `max`
  // head reads, pruning what expired) only near it.
  absl::StatusOr<int64_t> bound = store_->CountSessionsBound(tenant);
  if (bound.ok() && *bound < max) return absl::OkStatus();
  ListSessionsRequest request;
  request.tenant = tenant;
  request.page_size = std::min(max, 1000);
  int count = 0;
  do {
    absl::StatusOr<ListSessionsPage> page = store_->ListSessions(request);
    if (!page.ok()) return page.status();
    count += static_cast<int>(page->sessions.size());
    request.page_token = page->next_page_token;
  } while (count < max && !request.page_token.empty());
  if (count >= max) {
    if (!session_id.empty()) {
      auto head = store_->GetHead({tenant, session_id});
      if (head.ok() && absl::Now() - head->created_at <= max_age) {
        return absl::OkStatus();
      }
    }
    return TenantLimitError("max_sessions", max, "too many sessions");
  }
  return absl::OkStatus();
}

}  // namespace statestream
