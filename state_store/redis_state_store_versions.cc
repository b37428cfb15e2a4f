// SPDX-License-Identifier: Apache-2.0
// The Redis StateStore's versions: creates, commits, loads, durability
// waits and the version history (internal/redis_store.h).
#include <algorithm>
#include <limits>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "state_store/internal/redis_client.h"
#include "state_store/internal/redis_store.h"
#include "state_store/internal/store_util.h"

namespace statestream::store_internal {

absl::StatusOr<CommitResult> RedisStateStore::CreateSession(
    const CreateSessionRequest& r) {
  SS_RETURN_IF_ERROR(ValidateKey(r.key));
  const absl::Duration ttl =
      r.ttl == absl::ZeroDuration() ? options_.default_ttl : r.ttl;
  SS_RETURN_IF_ERROR(ValidateTtl(ttl, "ttl"));
  SS_RETURN_IF_ERROR(CheckEncodable(r.initial_state));
  const EncodedStateParts encoded = EncodeStateParts(r.initial_state);
  const std::vector<absl::string_view> chunks = ChunkViews(encoded);
  SS_RETURN_IF_ERROR(CheckChunkCount(chunks.size(), encoded.size()));
  const std::string nonce = NewNonce();
  const std::string now = absl::StrCat(absl::ToUnixMillis(clock_->Now()));
  // Index first (idempotent): a session is never missing from ListSessions.
  // With a limit, the index entry is the create's reservation, marked in
  // flight until the create ends, so a listing that meets it before the
  // head (one at the limit, say) does not prune it and let another create
  // take its place (DropFromIndex).
  // The mark holds the nonce of each create of this id in flight (a retry
  // may overlap the first attempt): CreateMark.
  const std::string marks = Prefix(r.key) + "creates";
  const std::string mark_ms = absl::StrCat(Ms(kCreateInFlight));
  bool marked = false;  // only a create that marked unmarks
  absl::Cleanup unmark = [&] {
    if (marked) client_->Run(marks, {CreateUnmark(marks, nonce)}).IgnoreError();
  };
  if (r.max_tenant_sessions > 0) {
    SS_RETURN_IF_ERROR(
        client_->Run(marks, CreateMark(marks, nonce, mark_ms)).status());
    marked = true;
    SS_RETURN_IF_ERROR(ReserveInIndex(r.key, r.max_tenant_sessions));
  } else {
    SS_RETURN_IF_ERROR(AddToIndex(r.key));
  }
  VersionInfo v =
      DescribeVersion(r.initial_state, encoded.size(), encoded.crc(), 1, 0,
                      static_cast<uint32_t>(chunks.size()));
  v.committed_at = clock_->Now();
  v.durability = Durability::kMemory;
  RecordCause(r, &v);
  const std::vector<std::string> head = {
      "version",     "1",
      "oldest",      "1",
      "nonce",       nonce,
      "fingerprint", r.initial_state.model_fingerprint,
      "model_id",    r.model_id,
      "parent_sid",  r.parent_session_id,
      "parent_ver",  absl::StrCat(r.parent_version),
      "labels",      EncodeStringMap(r.labels),
      "ttl_ms",      absl::StrCat(TtlMs(ttl)),
      "created_ms",  now,
      "updated_ms",  now,
      "create_rid",  r.request_id,
      "create_dg",   absl::StrCat(r.request_digest)};
  std::vector<std::string> args = {nonce, FenceSalt(),
                                   absl::StrCat(head.size())};
  args.insert(args.end(), head.begin(), head.end());
  for (std::string& f : VersionFields(v, nonce)) args.push_back(std::move(f));
  Durability reached = BaseDurability();
  SS_ASSIGN_OR_RETURN(Reply reply,
                      WriteVersion(r.key, kCreate, 1, nonce, chunks, args,
                                   r.durability, &reached));
  const std::string outcome = Str(reply->element[0]);
  if (outcome == "EXISTS") return SessionExists(r.key);
  if (outcome != "OK" && outcome != "DUP") return Unexpected(outcome);
  uint64_t granted = 0;  // DUP (a resend): version 1 records it
  if (outcome == "OK" &&
      (reply->elements < 2 ||
       !absl::SimpleAtoi(Str(reply->element[1]), &granted))) {
    return Unexpected("a create granted no fence");
  }
  // And again now that the head exists: a listing that ran between the
  // two saw no head and dropped the entry (ListSessions).
  SS_RETURN_IF_ERROR(AddToIndex(r.key));
  QueueIndexPrune(r.key.tenant);
  SS_ASSIGN_OR_RETURN(CommitResult out,
                      Finish(r.key, v, nonce, r.durability, reached));
  // The fence this create granted, not the head's as Finish read it: a
  // lease taken since bumped that one, and it is the lease holder's. (A
  // resent create's from version 1; 0, none, if newer commits dropped
  // version 1 already: then someone took the lease.)
  out.session.fence = granted != 0 ? granted : out.version.fence;
  return out;
}

absl::StatusOr<LoadedVersion> RedisStateStore::LoadVersion(
    const SessionKey& key, uint64_t version) {
  SS_RETURN_IF_ERROR(ValidateKey(key));
  // Each try reads the version again: a session deleted and created again
  // mid-load is loaded as it is now (its head, or the version asked for),
  // not reported corrupt.
  constexpr int kTries = 3;
  for (int i = 0; i < kTries; ++i) {
    SS_ASSIGN_OR_RETURN(std::optional<LoadedVersion> loaded,
                        LoadVersionOnce(key, version));
    if (loaded.has_value()) return *std::move(loaded);
  }
  return MakeError(
      absl::StatusCode::kUnavailable, Reason::kStoreUnavailable,
      absl::StrCat("the session's version was replaced during each of ", kTries,
                   " loads; retry"),
      {{"retry_after_ms", "0"}});
}

absl::StatusOr<std::optional<LoadedVersion>> RedisStateStore::LoadVersionOnce(
    const SessionKey& key, uint64_t version) {
  // The script reads 0 and below as the head: a version past int64's
  // range (no session gets there) must stay a version nobody has.
  constexpr uint64_t kMaxVersion = std::numeric_limits<int64_t>::max();
  const int64_t asked = static_cast<int64_t>(std::min(version, kMaxVersion));
  SS_ASSIGN_OR_RETURN(auto read, Read(key, asked));
  const auto& [head, vm] = read;
  SS_ASSIGN_OR_RETURN(const VersionInfo info, ParseVersion(vm));
  const std::string nonce = Get(vm, "nonce");
  // Each chunk but one per part holds at least the smallest chunk_bytes a
  // writer may use: more chunks than that is a damaged hash, not a reason
  // to build billions of GETs.
  if (info.chunk_count > kMaxVersionChunks ||
      info.chunk_count > info.state_bytes / kMinChunkBytes + 4) {
    return DataLossError(
        Reason::kStateCorrupt,
        absl::StrCat("state is corrupt: version ", info.version, " records ",
                     info.chunk_count, " chunks for ", info.state_bytes,
                     " bytes"));
  }
  // The chunks are received straight into one uninitialised buffer of the
  // recorded size, in order (every byte is written, or the load fails); a
  // chunk that would overrun it gets its own allocation and is reported
  // as corruption below. They are asked for ~kLoadBytesPerRound at a time,
  // so a damaged size commits no memory (the pages are touched only as
  // chunks arrive) and a damaged count builds no pipeline of millions.
  const size_t size = info.state_bytes;
  std::unique_ptr<char[]> buffer(
      new (std::nothrow) char[std::max<size_t>(size, 1)]);
  if (buffer == nullptr) {
    return DataLossError(
        Reason::kStateCorrupt,
        absl::StrCat("state is corrupt: version ", info.version,
                     " records an impossible size of ", size, " bytes"));
  }
  size_t filled = 0, round_start = 0;
  const BulkSink sink = [&](size_t command, size_t n) {
    if (command == 0) filled = round_start;  // a retried round starts over
    if (n > size - filled) return static_cast<char*>(nullptr);
    char* at = buffer.get() + filled;
    filled += n;
    return at;
  };
  const uint64_t per_chunk = std::max<uint64_t>(
      1, info.state_bytes / std::max<uint32_t>(info.chunk_count, 1));
  const uint32_t per_round = static_cast<uint32_t>(
      std::clamp<uint64_t>(kLoadBytesPerRound / per_chunk,
                           kMinLoadChunksPerRound, kMaxVersionChunks));
  for (int attempt = 0;; ++attempt) {
    filled = 0;
    bool overran = false;
    uint32_t missing = info.chunk_count;
    for (uint32_t first = 0;
         first < info.chunk_count && missing == info.chunk_count && !overran;
         first += per_round) {
      const uint32_t end = std::min(info.chunk_count, first + per_round);
      std::vector<std::string> keys;  // the commands view them
      for (uint32_t i = first; i < end; ++i) {
        keys.push_back(ChunkKey(key, info.version, nonce, i));
      }
      std::vector<Command> gets;
      for (const std::string& k : keys) gets.push_back({"GET", k});
      round_start = filled;
      SS_ASSIGN_OR_RETURN(std::vector<Reply> replies,
                          client_->Run(HeadKey(key), gets, sink));
      // A refusal (OOM does not touch reads, but NOPERM or a busy script
      // does) is not a missing chunk.
      for (const Reply& r : replies) {
        if (r->type == REDIS_REPLY_ERROR) return BadReply(r.get());
      }
      for (size_t i = 0; i < replies.size(); ++i) {
        if (replies[i]->type != REDIS_REPLY_STRING) {
          missing = first + static_cast<uint32_t>(i);
          break;
        }
        if (replies[i]->str != nullptr) overran = true;  // not in the buffer
      }
    }
    if (overran) {
      filled = size + 1;
      break;
    }
    if (missing == info.chunk_count) break;
    // Expired since the read (dropped beyond keep_versions: a version
    // asked for by number is not kept; a head has moved on)? Or another
    // record under the number (the session created again): its chunks
    // have another nonce. Either way what was read is gone.
    auto again = Read(key, asked);
    if (!again.ok()) return again.status();
    if (Get(again->second, "nonce") != nonce) return std::nullopt;
    // In a Cluster, the session's slot may be migrating: the pipeline
    // was resent whole to the target (ASK), where the chunks not moved
    // yet read as nil. Read again once the move has gone on.
    if (WaitForSlotMove(attempt)) continue;
    return DataLossError(
        Reason::kStateCorrupt,
        absl::StrCat("state is corrupt: chunk ", missing, " of version ",
                     info.version, " is missing"));
  }
  const absl::string_view bytes(buffer.get(), size);
  if (filled != size || EncodedStateCrc(bytes) != info.state_crc32c) {
    return DataLossError(
        Reason::kStateCorrupt,
        absl::StrCat("state is corrupt: version ", info.version,
                     " does not match its recorded size and checksum"));
  }
  LoadedVersion out;
  out.version = info;
  SS_ASSIGN_OR_RETURN(out.state, DecodeState(bytes));
  SS_RETURN_IF_ERROR(CheckVersionMatchesState(info, out.state));
  return out;
}

absl::StatusOr<CommitResult> RedisStateStore::Commit(const CommitRequest& r) {
  SS_RETURN_IF_ERROR(ValidateKey(r.key));
  SS_RETURN_IF_ERROR(CheckEncodable(r.state));
  const EncodedStateParts encoded = EncodeStateParts(r.state);
  const std::vector<absl::string_view> chunks = ChunkViews(encoded);
  SS_RETURN_IF_ERROR(CheckChunkCount(chunks.size(), encoded.size()));
  const std::string nonce = NewNonce();
  const uint64_t version = r.expected_version + 1;
  VersionInfo v =
      DescribeVersion(r.state, encoded.size(), encoded.crc(), version, r.fence,
                      static_cast<uint32_t>(chunks.size()));
  RecordCause(r, &v);
  v.committed_at = clock_->Now();
  Durability reached = BaseDurability();
  v.durability = reached;
  std::vector<std::string> args = {
      absl::StrCat(r.expected_version),
      absl::StrCat(r.fence),
      r.state.model_fingerprint,
      nonce,
      absl::StrCat(options_.keep_versions),
      absl::StrCat(Ms(options_.dropped_version_grace))};
  for (std::string& f : VersionFields(v, nonce)) args.push_back(std::move(f));
  SS_ASSIGN_OR_RETURN(Reply reply,
                      WriteVersion(r.key, kCommit, version, nonce, chunks, args,
                                   r.durability, &reached));
  const std::string outcome = Str(reply->element[0]);
  const std::string arg = reply->elements > 1 ? Str(reply->element[1]) : "";
  uint64_t n = 0;
  if (outcome == "NOTFOUND") return SessionNotFound(r.key);
  if (outcome == "VERSION" && absl::SimpleAtoi(arg, &n)) {
    return HeadMismatch(r.expected_version, n);
  }
  if (outcome == "FENCED" && absl::SimpleAtoi(arg, &n)) {
    return Fenced(r.fence, n);
  }
  if (outcome == "MODEL") {
    return FingerprintMismatch(arg, r.state.model_fingerprint);
  }
  if (outcome != "OK" && outcome != "DUP") return Unexpected(outcome);
  return Finish(r.key, v, nonce, r.durability, reached);
}

absl::StatusOr<VersionInfo> RedisStateStore::AwaitDurability(
    const SessionKey& key, uint64_t version, Durability wanted) {
  SS_RETURN_IF_ERROR(ValidateKey(key));
  // The script reads 0 and below as the head: 0 and versions past int64's
  // range are versions nobody has.
  if (version == 0 || version > std::numeric_limits<int64_t>::max()) {
    SS_ASSIGN_OR_RETURN(auto head, Read(key, -1));
    return VersionNotKept(version, head.first.head.version,
                          head.first.oldest_version);
  }
  SS_ASSIGN_OR_RETURN(auto read, Read(key, static_cast<int64_t>(version)));
  SS_ASSIGN_OR_RETURN(VersionInfo v, ParseVersion(read.second));
  if (v.durability >= wanted) return v;
  const std::string number = absl::StrCat(version);
  SS_ASSIGN_OR_RETURN(
      std::vector<Reply> r,
      EvalThen(key, kAwaitDurability, {number}, WaitCommands(wanted)));
  const std::string outcome = Str(r[0]->element[0]);
  if (outcome == "NOTFOUND") return SessionNotFound(key);
  if (outcome == "NOTKEPT") return NotKept(r[0].get(), version);
  int level = 0;
  if (outcome != "OK" || r[0]->elements != 3 ||
      !absl::SimpleAtoi(Str(r[0]->element[1]), &level)) {
    return Unexpected(outcome);
  }
  const Durability recorded = RecordedDurability(level);
  Durability reached = std::max(recorded, BaseDurability());
  if (r.size() > 1) ReadWait(r[1].get(), &reached);
  if (reached > recorded) {
    SS_RETURN_IF_ERROR(Eval(key, kRecordDurability,
                            {number, Str(r[0]->element[2]),
                             absl::StrCat(static_cast<int>(reached))})
                           .status());
  }
  v.durability = reached;
  if (reached < wanted) return DurabilityNotReached(version, wanted, reached);
  return v;
}

absl::StatusOr<CommitResult> RedisStateStore::Rollback(
    const SessionKey& key, uint64_t expected_version, uint64_t fence,
    uint64_t version, Durability durability, const std::string& request_id) {
  return RollbackByCommit(*this, key, expected_version, fence, version,
                          durability, request_id);
}

absl::StatusOr<std::vector<VersionInfo>> RedisStateStore::ListVersions(
    const SessionKey& key) {
  SS_RETURN_IF_ERROR(ValidateKey(key));
  SS_ASSIGN_OR_RETURN(Reply r, Eval(key, kVersions, {}));
  if (Str(r->element[0]) == "NOTFOUND") {
    return SessionNotFound(key);
  }
  std::vector<VersionInfo> out;
  for (size_t i = 1; i < r->elements; ++i) {
    SS_ASSIGN_OR_RETURN(VersionInfo v, ParseVersion(Pairs(r->element[i])));
    out.push_back(std::move(v));
  }
  return out;
}

absl::Status RedisStateStore::CheckChunkCount(size_t chunks,
                                              size_t bytes) const {
  if (chunks <= kMaxVersionChunks) return absl::OkStatus();
  return InvalidArgumentError(
      Reason::kMessageTooLarge,
      absl::StrCat("a state of ", bytes, " bytes takes ", chunks, " chunks of ",
                   options_.chunk_bytes, " bytes; the store writes at most ",
                   kMaxVersionChunks));
}

std::vector<absl::string_view> RedisStateStore::ChunkViews(
    const EncodedStateParts& parts) const {
  std::vector<absl::string_view> out;
  for (absl::string_view p :
       {absl::string_view(parts.prefix), parts.state, parts.last_hidden,
        absl::string_view(parts.suffix)}) {
    while (!p.empty()) {
      out.push_back(p.substr(0, options_.chunk_bytes));
      p.remove_prefix(out.back().size());
    }
  }
  return out;
}

absl::StatusOr<Reply> RedisStateStore::WriteVersion(
    const SessionKey& key, Script script, uint64_t version,
    const std::string& nonce, const std::vector<absl::string_view>& chunks,
    const std::vector<std::string>& args, Durability wanted,
    Durability* reached) {
  const std::string prefix = Prefix(key);
  const uint32_t n = static_cast<uint32_t>(chunks.size());
  std::vector<std::string> keys = {prefix + "head", prefix + "fence",
                                   absl::StrCat(prefix, "v", version)};
  for (uint32_t i = 0; i < n; ++i) {
    keys.push_back(ChunkKey(key, version, nonce, i));
  }
  const std::string pending = absl::StrCat(Ms(options_.pending_chunk_ttl));
  auto chunk_writes = [&](bool again) {
    std::vector<Command> sets;
    for (uint32_t i = 0; i < n; ++i) {
      sets.push_back(PendingChunkWrite(keys[3 + i], chunks[i], pending));
      if (again) sets.push_back(PendingChunkRenewal(keys[3 + i], pending));
    }
    return sets;
  };
  const std::string retention = absl::StrCat(Ms(options_.fence_retention));
  const std::string now = absl::StrCat(absl::ToUnixMillis(clock_->Now()));
  std::vector<absl::string_view> argv = {prefix, retention, now};
  for (const std::string& a : args) argv.push_back(a);
  const std::vector<Command> wait = WaitCommands(wanted);
  // Chunks can vanish before the head swap (a Redis restart without
  // persistence, or a commit slower than pending_chunk_ttl): rewrite them.
  for (int attempt = 0; attempt < 3; ++attempt) {
    SS_ASSIGN_OR_RETURN(std::vector<Reply> set_replies,
                        client_->Run(prefix, chunk_writes(attempt > 0)));
    for (const Reply& r : set_replies) {
      if (r->type == REDIS_REPLY_ERROR) return BadReply(r.get());
    }
    SS_ASSIGN_OR_RETURN(std::vector<Reply> r,
                        RunScript(prefix, script, keys, argv, wait));
    // (A refused write's script deleted its chunks: drop_chunks.)
    if (Str(r[0]->element[0]) == "CHUNKS") continue;
    if (reached != nullptr && r.size() > 1) ReadWait(r[1].get(), reached);
    return std::move(r[0]);
  }
  return Unavailable("state chunks keep disappearing");
}

std::vector<Command> RedisStateStore::WaitCommands(Durability wanted) const {
  std::vector<Command> wait;
  if (wanted == Durability::kFsync && have_waitaof_) {
    wait.push_back({"WAITAOF", "1", "0", wait_timeout_});
  } else if (wanted == Durability::kReplicated) {
    if (have_waitaof_) {  // REPLICATED includes FSYNC: both at once
      wait.push_back({"WAITAOF", "1", "1", wait_timeout_});
    } else {
      wait.push_back({"WAIT", "1", wait_timeout_});
    }
  }
  return wait;
}

void RedisStateStore::ReadWait(const redisReply* w, Durability* reached) {
  int64_t replicas = 0;
  if (w->type == REDIS_REPLY_ARRAY && w->elements == 2 &&
      w->element[0]->type == REDIS_REPLY_INTEGER &&
      w->element[1]->type == REDIS_REPLY_INTEGER) {  // WAITAOF
    if (w->element[0]->integer >= 1) {
      *reached = std::max(*reached, Durability::kFsync);
    }
    replicas = w->element[1]->integer;
  } else if (w->type == REDIS_REPLY_INTEGER) {  // WAIT
    replicas = w->integer;
  }
  // The levels nest: a replica's copy counts once the write is fsynced
  // here too (else a primary restarted empty would hand its replicas the
  // loss). (An error reply, e.g. WAITAOF on a primary without AOF, raises
  // nothing.)
  if (replicas >= 1 && *reached >= Durability::kFsync) {
    *reached = Durability::kReplicated;
  }
}

absl::StatusOr<CommitResult> RedisStateStore::Finish(const SessionKey& key,
                                                     const VersionInfo& written,
                                                     const std::string& nonce,
                                                     Durability wanted,
                                                     Durability reached) {
  const uint64_t version = written.version;
  if (reached > written.durability) {
    SS_RETURN_IF_ERROR(Eval(key, kRecordDurability,
                            {absl::StrCat(version), nonce,
                             absl::StrCat(static_cast<int>(reached))})
                           .status());
  }
  auto read = Read(key, static_cast<int64_t>(version));
  CommitResult out;
  if (read.ok()) {
    SS_ASSIGN_OR_RETURN(out.version, ParseVersion(read->second));
  } else if (read.status().code() == absl::StatusCode::kNotFound &&
             GetReason(read.status()) == Reason::kVersionMismatch) {
    // Newer commits (another writer's, during a durability wait) dropped
    // the version already (keep_versions): it was written all the same,
    // so report it and the head as it is now, not an error.
    SS_ASSIGN_OR_RETURN(read, Read(key, 0));
    out.version = written;
  } else {
    return read.status();
  }
  out.version.durability = reached;
  out.session = std::move(read->first);
  if (out.session.head.version == version) {
    out.session.head.durability = reached;
  }
  if (reached < wanted) {
    return DurabilityNotReached(version, wanted, reached);
  }
  return out;
}

}  // namespace statestream::store_internal
