// SPDX-License-Identifier: Apache-2.0
// The Redis StateStore: setup, scripts, reads and the factory
// (internal/redis_store.h says where the rest is).
#include "state_store/redis_state_store.h"

#include <algorithm>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "state_store/internal/redis_client.h"
#include "state_store/internal/redis_store.h"
#include "state_store/internal/store_util.h"

namespace statestream::store_internal {

absl::Status RedisStateStore::Init() {
  for (int s = 0; s < kScriptCount; ++s) {
    const std::string src = ScriptSource(static_cast<Script>(s));
    SS_ASSIGN_OR_RETURN(auto r,
                        client_->RunOnEveryPrimary({"SCRIPT", "LOAD", src}));
    // Every primary answers (on Cluster each has its own ACL).
    for (const Reply& each : r) {
      if (IsAccessRefusal(each.get())) {
        // Missing or insufficient credentials do not pass by waiting.
        return AccessRefused(false, absl::StrCat("Redis refused SCRIPT LOAD: ",
                                                 Str(each.get())));
      }
      if (each->type != REDIS_REPLY_STRING) {
        return Unavailable(
            absl::StrCat("SCRIPT LOAD failed: ", Str(each.get())));
      }
    }
    if (r.empty()) return Unavailable("SCRIPT LOAD failed: no primary");
    sha_[s] = Str(r[0].get());
  }
  SS_ASSIGN_OR_RETURN(auto info,
                      client_->RunOnEveryPrimary({"INFO", "server"}));
  std::vector<std::string> texts;
  for (const auto& each : info) texts.push_back(Str(each.get()));
  have_waitaof_ = AllHaveWaitaof(texts);
  (void)BaseDurability();
  WarnIfEvicting();
  return absl::OkStatus();
}

void RedisStateStore::WarnIfEvicting() {
  if (!options_.on_warning) return;
  auto policies =
      client_->RunOnEveryPrimary({"CONFIG", "GET", "maxmemory-policy"});
  if (!policies.ok()) return;
  for (const auto& reply : *policies) {
    const std::string policy = Get(Pairs(reply.get()), "maxmemory-policy");
    if (!policy.empty() && policy != "noeviction") {
      options_.on_warning(absl::StrCat(
          "Redis maxmemory-policy is ", policy,
          ": at maxmemory it evicts keys with a TTL, which every session "
          "state has, so committed states can vanish; set "
          "maxmemory-policy noeviction (docs/deploy.md)"));
      return;
    }
  }
}

Durability RedisStateStore::BaseDurability() {
  if (have_waitaof_) return Durability::kMemory;
  const absl::Time now = clock_->Now();
  {
    absl::MutexLock lock(&fsync_mu_);
    if (fsync_checking_ || now - fsync_checked_at_ < absl::Seconds(1)) {
      return fsync_always_ ? Durability::kFsync : Durability::kMemory;
    }
    fsync_checking_ = true;
  }
  bool all = false;
  auto append = client_->RunOnEveryPrimary({"CONFIG", "GET", "append*"});
  // Not after a failure: a hung primary would cost a second timeout.
  absl::StatusOr<std::vector<Reply>> rewrite =
      append.ok() ? client_->RunOnEveryPrimary(
                        {"CONFIG", "GET", "no-appendfsync-on-rewrite"})
                  : append.status();
  if (append.ok() && !append->empty() && rewrite.ok() &&
      rewrite->size() == append->size()) {
    all = true;
    for (size_t i = 0; i < append->size(); ++i) {
      const Fields a = Pairs((*append)[i].get());
      const Fields w = Pairs((*rewrite)[i].get());
      all = all && Get(a, "appendonly") == "yes" &&
            Get(a, "appendfsync") == "always" &&
            Get(w, "no-appendfsync-on-rewrite") == "no";
    }
  }
  absl::MutexLock lock(&fsync_mu_);
  fsync_always_ = all;
  fsync_checked_at_ = now;
  fsync_checking_ = false;
  return all ? Durability::kFsync : Durability::kMemory;
}

absl::Status RedisStateStore::Ping() { return client_->Ping(); }

std::string RedisStateStore::Prefix(const SessionKey& k) const {
  return absl::StrCat(options_.key_prefix, ":{", k.tenant, "/", k.session_id,
                      "}:");
}

std::string RedisStateStore::HeadKey(const SessionKey& k) const {
  return absl::StrCat(Prefix(k), "head");
}

std::string RedisStateStore::ChunkKey(const SessionKey& k, uint64_t version,
                                      const std::string& nonce,
                                      uint32_t i) const {
  return absl::StrCat(Prefix(k), "v", version, ":", nonce, ":c", i);
}

std::string RedisStateStore::IndexKey(const std::string& tenant) const {
  return absl::StrCat(options_.key_prefix, ":{t:", tenant, "}:sessions");
}

std::string RedisStateStore::WorkersKey() const {
  return absl::StrCat(options_.key_prefix, ":{workers}:index");
}

absl::Status RedisStateStore::Unexpected(absl::string_view what) {
  return WithPublicMessage(
      MakeError(absl::StatusCode::kInternal, Reason::kInternal,
                absl::StrCat("unexpected Redis reply: ", what)),
      "unexpected Redis reply (the server's log has it)");
}

namespace {

// STATE_CORRUPT whose message (for the logs) names Redis keys or a
// script's insides, and `shown`, its form for clients (message and the
// `detail` metadata): the store's layout is the deployment's, not the
// caller's.
absl::Status CorruptReply(absl::string_view whole, absl::string_view shown) {
  const std::string shown_message = absl::StrCat("state is corrupt: ", shown);
  return WithPublicMessage(
      MakeError(absl::StatusCode::kDataLoss, Reason::kStateCorrupt,
                absl::StrCat("state is corrupt: ", whole),
                {{"detail", shown_message}}),
      shown_message);
}

}  // namespace

absl::Status RedisStateStore::BadReply(const redisReply* r) {
  const std::string text = Str(r);
  if (r->type == REDIS_REPLY_ERROR) {
    const std::string code = text.substr(0, text.find(' '));
    // A script found a count in the session's hashes out of range
    // (internal/redis_scripts.h): damaged data, refused before any write.
    absl::string_view what = text;
    what = what.substr(0, what.find(" script: "));  // Redis's suffix
    if (code == "SSCORRUPT") {
      // "SSCORRUPT <the session's key prefix> records ...": a client is
      // told "the session records ...".
      what.remove_prefix(std::min(what.size(), code.size() + 1));
      const size_t space = what.find(' ');
      return CorruptReply(what,
                          absl::StartsWith(what, options_.key_prefix) &&
                                  space != absl::string_view::npos
                              ? absl::StrCat("the session", what.substr(space))
                              : std::string(what));
    }
    // A key of the session of another type than the store writes, or a
    // script's Lua error on a value not as the store wrote it (the scripts
    // check the values they rely on, so this is one they did not foresee):
    // damage, the same error on every call, as SSCORRUPT. (A script's
    // error on a Redis command is "ERR ... script: ..., on @user_script";
    // only Lua's own start "ERR user_script:".)
    if (code == "WRONGTYPE") {
      return DataLossError(
          Reason::kStateCorrupt,
          absl::StrCat("state is corrupt: a key holds another type than the "
                       "store writes: ",
                       what));
    }
    if (absl::StartsWith(text, "ERR user_script:")) {
      return CorruptReply(
          absl::StrCat("a script failed on a value: ", what),
          "a script failed on a stored value (the server's log has Lua's "
          "error)");
    }
    for (absl::string_view refusal : {"OOM", "MISCONF", "READONLY", "BUSY",
                                      "NOREPLICAS", "NOAUTH", "NOPERM"}) {
      if (code == refusal) {
        // Redis's text may name the store's ACL user (NOPERM) or a
        // script: a client is told the refusal's code.
        return WithPublicMessage(
            MakeError(absl::StatusCode::kUnavailable, Reason::kStoreUnavailable,
                      absl::StrCat("Redis refused the command: ", text),
                      {{"redis_error", code}}),
            absl::StrCat("Redis refused the command (", code, ")"));
      }
    }
  }
  return Unexpected(text);
}

absl::StatusOr<std::vector<Reply>> RedisStateStore::RunScript(
    absl::string_view routing, Script script,
    const std::vector<std::string>& keys,
    const std::vector<absl::string_view>& args,
    const std::vector<Command>& extra) {
  const std::string nkeys = absl::StrCat(keys.size());
  std::string source;
  for (int attempt = 0; attempt < 2; ++attempt) {
    Command cmd;
    if (attempt == 0) {
      cmd = {"EVALSHA", sha_[script], nkeys};
    } else {
      source = ScriptSource(script);
      cmd = {"EVAL", source, nkeys};
    }
    for (const std::string& k : keys) cmd.push_back(k);
    cmd.insert(cmd.end(), args.begin(), args.end());
    std::vector<Command> cmds = {cmd};
    cmds.insert(cmds.end(), extra.begin(), extra.end());
    SS_ASSIGN_OR_RETURN(std::vector<Reply> r, client_->Run(routing, cmds));
    const redisReply* first = r[0].get();
    if (first->type == REDIS_REPLY_ERROR &&
        Str(first).rfind("NOSCRIPT", 0) == 0) {
      continue;
    }
    if (first->type != REDIS_REPLY_ARRAY || first->elements == 0) {
      return BadReply(first);
    }
    return r;
  }
  return Unexpected("script cache keeps missing");
}

absl::StatusOr<Reply> RedisStateStore::Eval(const SessionKey& key,
                                            Script script,
                                            std::vector<std::string> args) {
  SS_ASSIGN_OR_RETURN(std::vector<Reply> r,
                      EvalThen(key, script, std::move(args), {}));
  return std::move(r[0]);
}

absl::StatusOr<std::vector<Reply>> RedisStateStore::EvalThen(
    const SessionKey& key, Script script, std::vector<std::string> args,
    const std::vector<Command>& extra) {
  const std::string prefix = Prefix(key);
  const std::string retention = absl::StrCat(Ms(options_.fence_retention));
  const std::string now = absl::StrCat(absl::ToUnixMillis(clock_->Now()));
  std::vector<absl::string_view> argv = {prefix, retention, now};
  for (const std::string& a : args) argv.push_back(a);
  return RunScript(prefix, script, SessionScriptKeys(prefix), argv, extra);
}

std::vector<absl::StatusOr<Reply>> RedisStateStore::EvalEach(
    Script script, const std::vector<SessionKey>& keys,
    const std::vector<std::vector<std::string>>& args) {
  std::vector<absl::StatusOr<Reply>> out;
  out.reserve(keys.size());
  for (size_t i = 0; i < keys.size(); ++i) {
    out.push_back(absl::UnknownError("not run"));
  }
  // The commands point into these strings, which stay put (reserved).
  const std::string retention = absl::StrCat(Ms(options_.fence_retention));
  const std::string now = absl::StrCat(absl::ToUnixMillis(clock_->Now()));
  struct Strings {
    std::string prefix;
    std::vector<std::string> keys;  // SessionScriptKeys
  };
  std::vector<Strings> strings;
  strings.reserve(keys.size());
  std::vector<RedisClient::Keyed> commands;
  commands.reserve(keys.size());
  std::vector<size_t> index;  // command -> key
  for (size_t i = 0; i < keys.size(); ++i) {
    const std::string prefix = Prefix(keys[i]);
    strings.push_back({prefix, SessionScriptKeys(prefix)});
    const Strings& k = strings.back();
    Command cmd = {"EVALSHA", sha_[script], "3",       k.keys[0], k.keys[1],
                   k.keys[2], k.prefix,     retention, now};
    cmd.insert(cmd.end(), args[i].begin(), args[i].end());
    commands.push_back({k.prefix, std::move(cmd)});
    index.push_back(i);
  }
  for (int pass = 0; pass < 2 && !commands.empty(); ++pass) {
    std::vector<absl::StatusOr<Reply>> replies = client_->RunEach(commands);
    std::vector<RedisClient::Keyed> again;
    std::vector<size_t> again_index;
    bool loaded = false;
    for (size_t c = 0; c < replies.size(); ++c) {
      const size_t i = index[c];
      if (!replies[c].ok()) {
        out[i] = replies[c].status();
        continue;
      }
      const redisReply* r = replies[c]->get();
      if (r->type == REDIS_REPLY_ERROR && Str(r).rfind("NOSCRIPT", 0) == 0) {
        if (pass == 0 && loaded) {
          again.push_back(std::move(commands[c]));
          again_index.push_back(i);
        } else {
          out[i] = Eval(keys[i], script, args[i]);
          loaded = true;
        }
      } else if (r->type != REDIS_REPLY_ARRAY || r->elements == 0) {
        out[i] = BadReply(r);
      } else {
        out[i] = std::move(replies[c]);
      }
    }
    commands = std::move(again);
    index = std::move(again_index);
  }
  return out;
}

std::vector<std::string> RedisStateStore::SessionScriptKeys(
    const std::string& prefix) {
  return {prefix + "head", prefix + "fence", prefix + "lease"};
}

absl::Status RedisStateStore::NotKept(const redisReply* r, uint64_t version) {
  uint64_t head = 0, oldest = 0;
  if (r->elements == 3) {
    (void)absl::SimpleAtoi(Str(r->element[1]), &head);
    (void)absl::SimpleAtoi(Str(r->element[2]), &oldest);
  }
  return VersionNotKept(version, head, oldest);
}

bool RedisStateStore::WaitForSlotMove(int attempt) {
  if (!options_.cluster || attempt >= 6) return false;
  clock_->SleepFor(absl::Milliseconds(25 << attempt));
  return true;
}

absl::StatusOr<std::pair<SessionHead, Fields>> RedisStateStore::Read(
    const SessionKey& key, int64_t version) {
  absl::StatusOr<Reply> read = Eval(key, kRead, {absl::StrCat(version)});
  // In a Cluster, a slot moving key by key can have taken the head to its
  // new node before the head version's hash (kLuaRead, run there after
  // ASKING, finds no hash: "has no hash for its head version"). Read again
  // once the move has gone on, as a load does for chunks; only then is it
  // damage.
  for (int attempt = 0;
       !read.ok() &&
       absl::StrContains(read.status().message(), "no hash for its head") &&
       WaitForSlotMove(attempt);
       ++attempt) {
    read = Eval(key, kRead, {absl::StrCat(version)});
  }
  SS_ASSIGN_OR_RETURN(Reply r, std::move(read));
  return ParseRead(key, version, r.get());
}

absl::StatusOr<std::pair<SessionHead, Fields>> RedisStateStore::ParseRead(
    const SessionKey& key, int64_t version, const redisReply* r) {
  const std::string outcome = Str(r->element[0]);
  if (outcome == "NOTFOUND") return SessionNotFound(key);
  if (outcome == "NOTKEPT") {
    return NotKept(r, static_cast<uint64_t>(version));
  }
  if (outcome != "OK" || r->elements != 7) return Unexpected(outcome);
  const Fields h = Pairs(r->element[1]);
  Fields vm = Pairs(r->element[2]);
  const Fields lease = Pairs(r->element[4]);
  SessionHead s;
  s.key = key;
  s.model_id = Get(h, "model_id");
  s.model_fingerprint = Get(h, "fingerprint");
  constexpr absl::string_view kHead = "the session's head";
  SS_ASSIGN_OR_RETURN(s.oldest_version, U64(h, "oldest", kHead));
  s.parent_session_id = Get(h, "parent_sid");
  SS_ASSIGN_OR_RETURN(s.parent_version, U64(h, "parent_ver", kHead));
  s.create_request_id = Get(h, "create_rid");
  SS_ASSIGN_OR_RETURN(s.create_digest, U64(h, "create_dg", kHead));
  if (!DecodeStringMap(Get(h, "labels"), &s.labels)) {
    return DataLossError(Reason::kStateCorrupt, "session labels are corrupt");
  }
  SS_ASSIGN_OR_RETURN(const int64_t ttl, I64(h, "ttl_ms", kHead));
  // -1 (pinned) or at least 1 ms, as the store writes it (the scripts
  // refuse other values alike: 0 would expire the session at its next
  // write).
  if (ttl == 0 || ttl < -1) {
    return DataLossError(
        Reason::kStateCorrupt,
        absl::StrCat("state is corrupt: the session's head records a TTL of ",
                     ttl, " ms"));
  }
  s.ttl = ttl < 0 ? absl::InfiniteDuration() : absl::Milliseconds(ttl);
  SS_ASSIGN_OR_RETURN(const int64_t created, I64(h, "created_ms", kHead));
  SS_ASSIGN_OR_RETURN(const int64_t updated, I64(h, "updated_ms", kHead));
  s.created_at = absl::FromUnixMillis(created);
  s.updated_at = absl::FromUnixMillis(updated);
  (void)absl::SimpleAtoi(Str(r->element[3]), &s.fence);
  const long long pttl = r->element[5]->integer;
  if (!Get(lease, "owner").empty() && pttl > 0) {
    s.owner = Get(lease, "owner");
    s.lease_expires_at = clock_->Now() + absl::Milliseconds(pttl);
  }
  SS_ASSIGN_OR_RETURN(s.head, ParseVersion(Pairs(r->element[6])));
  return std::make_pair(std::move(s), std::move(vm));
}

}  // namespace statestream::store_internal

namespace statestream {

absl::StatusOr<std::unique_ptr<StateStore>> NewRedisStateStore(
    const RedisStateStoreOptions& options) {
  if (options.keep_versions < 1 ||
      options.keep_versions > store_internal::kMaxKeptVersions ||
      options.chunk_bytes < store_internal::kMinChunkBytes) {
    return InvalidArgumentError(
        Reason::kInvalidArgument,
        absl::StrCat("keep_versions must be in [1, ",
                     store_internal::kMaxKeptVersions,
                     "] and chunk_bytes >= ", store_internal::kMinChunkBytes));
  }
  SS_RETURN_IF_ERROR(
      store_internal::ValidateTtl(options.default_ttl, "default_ttl"));
  // Each becomes a PEXPIRE or a wait: one that is not a positive, finite
  // time failed a script mid-way (an infinite fence retention failed
  // touch_session after the head had moved, and the new version's chunks
  // kept their pending TTL), or a call that could never end.
  const std::pair<const char*, absl::Duration> times[] = {
      {"pending_chunk_ttl", options.pending_chunk_ttl},
      {"dropped_version_grace", options.dropped_version_grace},
      {"fence_retention", options.fence_retention},
      {"connect_timeout", options.connect_timeout},
      {"command_timeout", options.command_timeout},
      {"retry_deadline", options.retry_deadline},
      {"durability_timeout", options.durability_timeout}};
  for (const auto& [name, d] : times) {
    if (d <= absl::ZeroDuration() || d == absl::InfiniteDuration()) {
      return InvalidArgumentError(
          Reason::kInvalidArgument,
          absl::StrCat(name, " must be positive and finite (got ",
                       absl::FormatDuration(d), ")"));
    }
  }
  store_internal::RedisClientOptions c;
  c.seeds = options.addresses;
  c.cluster = options.cluster;
  c.user = options.user;
  c.password = options.password;
  c.connect_timeout = options.connect_timeout;
  // A durability wait (WAIT / WAITAOF) legitimately blocks the connection
  // for up to durability_timeout on top of the command itself; a shorter
  // socket timeout would turn "durability not reached" into "store down".
  c.command_timeout = options.command_timeout + options.durability_timeout;
  c.retry_deadline = options.retry_deadline;
  c.backoff_initial = options.backoff_initial;
  c.backoff_max = options.backoff_max;
  c.max_idle_connections_per_node = options.max_idle_connections_per_node;
  c.clock = options.clock;
  SS_ASSIGN_OR_RETURN(auto client, store_internal::RedisClient::Connect(c));
  auto store = std::make_unique<store_internal::RedisStateStore>(
      options, std::move(client));
  SS_RETURN_IF_ERROR(store->Init());
  return std::unique_ptr<StateStore>(std::move(store));
}

}  // namespace statestream
