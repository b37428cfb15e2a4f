// SPDX-License-Identifier: Apache-2.0
// Who is calling: API keys (bearer tokens) mapped to tenants, or, with no
// keys configured, development mode (the `x-statestream-tenant` header, or
// "default"), as the public API's TENANCY AND AUTHENTICATION describes.
// And how much a tenant may hold: TenantLimits (sessions, concurrent
// streams). No gRPC in here: the services pass the metadata values in.
#ifndef STATESTREAM_SERVICES_TENANTS_H_
#define STATESTREAM_SERVICES_TENANTS_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"

namespace statestream {

class StateStore;

// A tenant's limits; 0 means unlimited.
struct TenantLimit {
  // Live sessions of the tenant in the state store (counted there, so it
  // holds across gateways and workers). Checked before a session is
  // created (CreateSession, fork, ImportState in create mode); calls that
  // race past the check together may overshoot by their number.
  int max_sessions = 0;
  // Append, Generate, ImportState, ExportState and Score calls open at
  // once: across every gateway when their store counts tenant slots
  // (Redis), else by each process that enforces it (a serve process).
  int max_streams = 0;
};

// Per-tenant overrides from the API keys file; an unset field falls back to
// TenantLimitsOptions::defaults.
struct TenantLimitOverride {
  std::optional<int> max_sessions;
  std::optional<int> max_streams;
};

struct TenantLimitsOptions {
  // Every tenant's limits unless overridden (flags --tenant-max-sessions,
  // --tenant-max-streams).
  TenantLimit defaults;
  std::map<std::string, TenantLimitOverride> tenants;

  // Whether any tenant has a session (stream) limit.
  bool LimitsSessions() const;
  bool LimitsStreams() const;

  // Where the store counts tenant slots (StateStore::CountsTenantSlots),
  // each stream also takes one there, so max_streams holds across the
  // processes sharing the store: named "<slot_holder>:<random>:<n>",
  // renewed every slot_ttl / 3 while open, freed as the stream ends, or
  // slot_ttl after its process died.
  std::string slot_holder = "limits";
  absl::Duration slot_ttl = absl::Seconds(15);
};

// Thread-safe. Counts open streams per tenant (here, and in the store
// where it counts tenant slots).
class TenantLimits {
 public:
  // `store` (not owned, must outlive this) is where sessions (and, if it
  // counts them, stream slots) are counted; null: max_sessions is not
  // enforced here.
  TenantLimits(TenantLimitsOptions options, StateStore* store);
  ~TenantLimits();  // stops the slot renewals
  TenantLimits(const TenantLimits&) = delete;
  TenantLimits& operator=(const TenantLimits&) = delete;

  TenantLimit For(const std::string& tenant) const;

  // Replaces the per-tenant overrides (a reloaded keys file's): streams
  // and creates from now on are checked against them.
  void SetOverrides(std::map<std::string, TenantLimitOverride> tenants);

  // Holds one of a tenant's stream slots until destroyed. Move-only.
  class StreamSlot {
   public:
    StreamSlot(StreamSlot&& other);
    StreamSlot& operator=(StreamSlot&&) = delete;
    ~StreamSlot();

   private:
    friend class TenantLimits;
    StreamSlot(TenantLimits* limits, std::string tenant, std::string slot);
    TenantLimits* limits_;  // null once moved from
    std::string tenant_;
    std::string slot_;  // in the store; "" when counted here only
  };
  // A slot for one Append, Generate, ImportState, ExportState or Score, or
  // RESOURCE_EXHAUSTED/kTenantLimit (metadata limit=max_streams, max) when
  // the tenant already has max_streams open here or, where the store
  // counts tenant slots, across the processes sharing it (one store call).
  // A store that cannot be reached admits the stream on this process's
  // count alone (and so do the next ones without asking it, until it
  // answers again), and the renewals register its slot once it answers.
  // The slot must not outlive this object.
  absl::StatusOr<StreamSlot> AcquireStream(const std::string& tenant);

  // OK if `tenant` may create one more session: fewer than max_sessions
  // live sessions in the store (StateStore::CountSessionsBound, one read;
  // only when that is at the limit, listed: up to max_sessions head reads;
  // OK at once when unlimited or without a store), or at the limit
  // a session under `session_id` (the id the create will use, when known)
  // exists already, created at most `max_age` ago: that create is a retry
  // of one that succeeded (or SESSION_EXISTS), not one more session. (A
  // worker creates a fresh session for a request id whose derived session
  // is older than its request-id window: pass that window as max_age.)
  // RESOURCE_EXHAUSTED/kTenantLimit (metadata limit=max_sessions, max) at
  // the limit; the store's errors (UNAVAILABLE) otherwise.
  absl::Status CheckNewSession(
      const std::string& tenant, const std::string& session_id = "",
      absl::Duration max_age = absl::InfiniteDuration());

  // CheckNewSession for a create (or creating import) with these ids: its
  // session is `session_id`; when that is empty, the one derived from
  // `request_id` (DerivedSessionId), which counts as existing only within
  // `request_id_window` (older, a worker creates a fresh session); with
  // neither, any new session.
  absl::Status CheckNewCreate(const std::string& tenant,
                              const std::string& session_id,
                              const std::string& request_id,
                              absl::Duration request_id_window);

  // Streams `tenant` has open here.
  int open_streams(const std::string& tenant) const;

  // For a process that is stopping, before its store is interrupted:
  // frees every store slot held (the streams are about to be cancelled, so
  // their clients may resume through another gateway at once); from then
  // on streams are counted here only. Stops at the first store error.
  void ReleaseStoreSlots();

 private:
  void Release(const std::string& tenant, const std::string& slot);
  // Renews the held slots every slot_ttl / 3 until stopped.
  void RenewLoop();
  // Records the outcome of a slot call (OK: the store answers) on
  // `tenant`'s slots, saying so on stderr when it changes.
  void SetStoreDown(const absl::Status& why, const std::string& tenant)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Adds to unreleased_ (bounded).
  void Unreleased(std::string tenant, std::string slot)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const TenantLimitsOptions options_;  // its `tenants`: see overrides_
  StateStore* const store_;
  // Slots of tenants with a stream limit are counted in the store (it
  // counts them).
  const bool in_store_;
  mutable absl::Mutex overrides_mu_;
  std::map<std::string, TenantLimitOverride> overrides_
      ABSL_GUARDED_BY(overrides_mu_);
  // "<slot_holder>:<random>": this object's slots' prefix.
  const std::string holder_;
  mutable absl::Mutex mu_;
  std::map<std::string, int> open_ ABSL_GUARDED_BY(mu_);
  // The store slots held, by tenant.
  std::map<std::string, std::set<std::string>> held_ ABSL_GUARDED_BY(mu_);
  uint64_t next_slot_ ABSL_GUARDED_BY(mu_) = 0;
  // The store's last slot call failed: until a renewal pass succeeds (or,
  // with none held, a Ping), streams open and end without asking it, so
  // a hung store costs each of them nothing, and their slots are added by
  // the renewals (or expire).
  bool store_down_ ABSL_GUARDED_BY(mu_) = false;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;  // ReleaseStoreSlots ran
  // The renewer has removed the slots held when stopping began.
  bool stop_released_ ABSL_GUARDED_BY(mu_) = false;
  // Slot calls failed so far, and the tenant of the last one (the
  // renewer's probe while the store is down).
  uint64_t failures_ ABSL_GUARDED_BY(mu_) = 0;
  std::string down_tenant_ ABSL_GUARDED_BY(mu_);
  // Slots of streams that ended while the store was down, for the renewer
  // to remove once it answers.
  std::vector<std::pair<std::string, std::string>> unreleased_
      ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  // Told when stop_, stopping_ or stop_released_ is set (the renewer and
  // ReleaseStoreSlots wait on it).
  SteadyWaiter renew_wake_;
  std::thread renewer_ ABSL_GUARDED_BY(mu_);
};

// A call's credentials, kept by a long call to Recheck them (the call's
// metadata may be gone before its last read returns). The token is kept
// only as its SHA-256 digest, as the key sets keep theirs: a memory dump
// of a gateway with open streams gives no token.
struct Credentials {
  enum class Key {
    kAbsent,     // no `authorization`
    kNotBearer,  // `authorization` is not "Bearer <token>"
    kDigest,     // `digest` is the token's SHA-256
    kFailed,     // SHA-256 could not be computed
  };
  // `authorization` and `x-statestream-tenant` as the call sent them
  // (nullopt = absent).
  static Credentials Of(std::optional<absl::string_view> authorization,
                        std::optional<absl::string_view> tenant_header);

  Key key = Key::kAbsent;
  std::array<unsigned char, 32> digest{};
  std::optional<std::string> tenant_header;  // `x-statestream-tenant`
};

// The largest API keys or internal token file read (about 300,000 keys):
// a larger one is refused, not held.
inline constexpr size_t kMaxSecretsFileBytes = size_t{16} << 20;

// SHA-256 of `data` (32 bytes), or "" if it cannot be computed: to tell
// whether a secrets file changed without keeping its bytes.
std::string Sha256Of(absl::string_view data);

// Thread-safe. Copies share one key set: Replace() through any of them
// (an ApiKeysReloader's) is seen by all (the services').
class TenantAuth {
 public:
  // Development mode: no keys.
  TenantAuth() = default;
  // `api_keys`: token -> tenant.
  explicit TenantAuth(std::map<std::string, std::string> api_keys);

  // Reads an API keys file: one "TOKEN TENANT [max_sessions=N]
  // [max_streams=N]" entry per line (whitespace separated); blank lines and
  // lines starting with '#' are skipped. Tokens are 16-256 printable ASCII
  // bytes without spaces; tenants 1-64 bytes of [a-z0-9_-]; limits 0 (none)
  // to 1000000. A tenant with several tokens shares one set of limits: a
  // limit may be repeated on its lines only with the same value.
  // INVALID_ARGUMENT naming the line; NOT_FOUND if the file cannot be read
  // (or is no regular file of at most kMaxSecretsFileBytes).
  static absl::StatusOr<TenantAuth> FromFile(const std::string& path);
  // The same from a file's contents; `name` (the path) prefixes errors.
  static absl::StatusOr<TenantAuth> FromText(absl::string_view name,
                                             absl::string_view text);

  // Fixed at construction: a reload never turns authentication off or on.
  bool development_mode() const { return shared_ == nullptr; }
  // The limits the keys file sets, by tenant (as of now).
  std::map<std::string, TenantLimitOverride> limits() const;
  // Keys held now.
  size_t key_count() const;
  // Whether any key is a public example's placeholder (the dev overlay's
  // "dev-only-insecure-...", "CHANGE-ME..."): anyone who has read it can
  // act as its tenant.
  bool holds_placeholder() const;

  // From now on, this object and every copy of it hold `newer`'s keys and
  // limits (calls already authenticated are not affected until they
  // Recheck). FAILED_PRECONDITION, changing nothing, if either is in
  // development mode.
  absl::Status Replace(const TenantAuth& newer);

  // Which key set is in use: read it before Authenticate, and a call
  // authenticated then passes it to Recheck.
  uint64_t generation() const;

  // For a call that outlives a Replace (a long Append): OK while
  // `credentials` still name `tenant`; UNAUTHENTICATED/kUnauthenticated
  // ("revoked") once they do not. `*seen` (generation() before the call
  // was authenticated) holds which key set was last checked: while no
  // Replace happened since, this is one atomic read.
  absl::Status Recheck(const Credentials& credentials,
                       const std::string& tenant, uint64_t* seen) const;

  // The caller's tenant from its `authorization` and `x-statestream-tenant`
  // metadata (nullopt = absent). With keys: "Bearer <token>" (the scheme in
  // any case, RFC 7235) of a known token is required and the tenant header is
  // refused; without keys: the header, or "default".
  // UNAUTHENTICATED/kUnauthenticated otherwise (the message never echoes the
  // token).
  absl::StatusOr<std::string> Authenticate(
      std::optional<absl::string_view> authorization,
      std::optional<absl::string_view> tenant_header) const;
  // The same from credentials kept.
  absl::StatusOr<std::string> Authenticate(
      const Credentials& credentials) const;

 private:
  // Tokens are kept only as SHA-256 digests, so a memory dump gives no
  // token; a call's token is hashed and its digest looked up in a hash
  // table (one lookup whatever the number of keys). The lookup's timing
  // can only tell how close a shown token's digest came to a held one,
  // which does not help to find a token (docs/gateway.md, "Tenants").
  struct KeySet {
    absl::flat_hash_map<std::array<unsigned char, 32>, std::string> tenants;
    bool digests_failed = false;  // then every call is refused
    bool placeholder = false;     // holds_placeholder()
    std::map<std::string, TenantLimitOverride> limits;
  };
  // What the copies share: the key set in use, swapped whole, and how
  // many sets have been in use (from 1).
  struct Shared {
    mutable absl::Mutex mu;
    std::shared_ptr<const KeySet> current ABSL_GUARDED_BY(mu);
    std::atomic<uint64_t> generation{1};
  };
  // The keys' digests; nullopt if SHA-256 failed for one of them.
  static std::optional<KeySet> MakeKeySet(
      std::map<std::string, std::string> api_keys);
  explicit TenantAuth(KeySet keys);
  std::shared_ptr<const KeySet> Current() const;

  std::shared_ptr<Shared> shared_;  // null: development mode
};

// The secret gateways show their workers (`x-statestream-internal-token`,
// proto/statestream/v1/internal.proto): a worker that has one takes the
// tenant header only from callers that show it, so a client that reaches a
// worker directly cannot pick a tenant. Thread-safe. Copies share one set
// of tokens: Replace() through any of them (a SecretFileReloader's) is
// seen by all.
class InternalToken {
 public:
  // None: every caller is trusted (development, or mutual TLS alone).
  InternalToken() = default;
  // The tokens in `path`, one per line (blank lines and lines starting
  // with '#' skipped; surrounding whitespace ignored), each 16-256
  // printable ASCII bytes without spaces, at least one. The first is the
  // one a gateway sends; a worker accepts any, so a token is rotated by
  // adding the new one second everywhere, then first, then removing the
  // old. INVALID_ARGUMENT (naming the line and the rule, never a token);
  // NOT_FOUND if the file cannot be read.
  static absl::StatusOr<InternalToken> FromFile(const std::string& path);
  // The same from a file's contents; `name` (the path) prefixes errors.
  static absl::StatusOr<InternalToken> FromText(absl::string_view name,
                                                absl::string_view text);
  // One token (the same rules); for tests and embedding.
  static absl::StatusOr<InternalToken> FromValue(absl::string_view token);

  // Fixed at construction: a reload never turns the token on or off.
  bool configured() const { return shared_ != nullptr; }
  // What a gateway sends: the first token ("" when none is configured).
  std::string value() const;
  // Tokens held now.
  size_t count() const;
  // Whether any of the tokens is the example manifests' placeholder (it
  // starts with "CHANGE-ME" or "dev-only-insecure"): anyone who has read
  // them could act as a gateway. The CLI warns.
  bool holds_placeholder() const;
  // OK when none is configured or `shown` is one of the tokens (compared as
  // SHA-256 digests in constant time, against all of them);
  // UNAUTHENTICATED otherwise.
  absl::Status Check(std::optional<absl::string_view> shown) const;

  // From now on this object and every copy of it hold `newer`'s tokens
  // (calls already admitted are not affected). FAILED_PRECONDITION,
  // changing nothing, if either has none.
  absl::Status Replace(const InternalToken& newer);

 private:
  struct TokenSet {
    std::string value;
    std::vector<std::array<unsigned char, 32>> digests;
    bool placeholder = false;
    absl::Status Add(absl::string_view token);
  };
  struct Shared {
    mutable absl::Mutex mu;
    std::shared_ptr<const TokenSet> current ABSL_GUARDED_BY(mu);
  };
  explicit InternalToken(TokenSet tokens);
  std::shared_ptr<const TokenSet> Current() const;

  std::shared_ptr<Shared> shared_;  // null: none configured
};

// The metadata key gateways send the internal token under.
inline constexpr char kInternalTokenHeader[] = "x-statestream-internal-token";
// The caller tenant's session limit, sent by a gateway on the calls it
// forwards (a worker passes it to the store with each create, which holds
// it atomically: CreateSessionRequest::max_tenant_sessions).
inline constexpr char kSessionLimitHeader[] = "x-statestream-max-sessions";

// 1-64 bytes of [a-z0-9_-].
bool IsValidTenant(absl::string_view tenant);

}  // namespace statestream

#endif  // STATESTREAM_SERVICES_TENANTS_H_
