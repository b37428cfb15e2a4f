// SPDX-License-Identifier: Apache-2.0
// Client: channels, metadata, retries; the unary Session calls.
#include "statestream/client.h"

#include <grpcpp/client_context.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>

#include <algorithm>
#include <chrono>
#include <random>
#include <utility>

#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "common/clock.h"
#include "common/crc32c.h"
#include "common/grpc_status.h"
#include "common/random.h"
#include "common/status.h"
#include "statestream/call_scope.h"
#include "statestream/local_error.h"

namespace statestream::client {

// --- Cancellation ----------------------------------------------------------

void Cancellation::Cancel() {
  absl::MutexLock lock(&mu_);
  cancelled_ = true;
  cancelled_cv_.notify_all();
  for (grpc::ClientContext* ctx : contexts_) ctx->TryCancel();
}

bool Cancellation::cancelled() const {
  absl::MutexLock lock(&mu_);
  return cancelled_;
}

bool Cancellation::WaitForCancel(absl::Duration timeout) const {
  absl::MutexLock lock(&mu_);
  // On the steady clock: a wall clock stepped back must not hold a
  // retry's backoff (Abseil's own timed waits follow the wall clock).
  return SteadyWaiter::AwaitOn(
      &cancelled_cv_, &mu_,
      [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return cancelled_; },
      timeout);
}

bool Cancellation::Register(grpc::ClientContext* ctx) {
  absl::MutexLock lock(&mu_);
  if (cancelled_) return false;
  contexts_.push_back(ctx);
  return true;
}

void Cancellation::Unregister(grpc::ClientContext* ctx) {
  absl::MutexLock lock(&mu_);
  contexts_.erase(std::remove(contexts_.begin(), contexts_.end(), ctx),
                  contexts_.end());
}

// --- helpers -----------------------------------------------------------------

namespace {

// INVALID_ARGUMENT/INVALID_ARGUMENT for a ClientOptions field no client
// could be made with (`field`: "targets", ...), made by the SDK.
absl::Status BadOption(absl::string_view field, absl::string_view message) {
  return LocalError(absl::StatusCode::kInvalidArgument,
                    Reason::kInvalidArgument, message,
                    {{"field", absl::StrCat("ClientOptions.", field)}});
}

// Marks the SDK's own CANCELLED for a caller's Cancel() (kept by
// WithMessage, which keeps every payload).
constexpr char kCallerCancelledUrl[] =
    "type.statestream.dev/statestream.client.CallerCancelled";
}  // namespace

absl::Status CallerCancelled() {
  absl::Status status = absl::CancelledError("cancelled");
  status.SetPayload(kCallerCancelledUrl, absl::Cord("1"));
  return status;
}

bool IsCallerCancelled(const absl::Status& status) {
  return status.code() == absl::StatusCode::kCancelled &&
         status.GetPayload(kCallerCancelledUrl).has_value();
}

bool IsRetryable(const absl::Status& status) {
  if (IsCallerCancelled(status)) return false;
  switch (status.code()) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
    case absl::StatusCode::kCancelled:
      return true;
    case absl::StatusCode::kResourceExhausted:
      // The worker's admission limits; not a message over a size limit.
      return GetReason(status) == Reason::kOverloaded;
    case absl::StatusCode::kAborted:
      // Superseded by another writer: that writer owns the session now.
      return GetReason(status) != Reason::kSessionBusy;
    case absl::StatusCode::kUnknown:
    case absl::StatusCode::kInternal:
      // Transport failures ("stream removed", RST_STREAM) carry no reason;
      // the server's own INTERNAL errors do, even one newer than this SDK.
      return GetReasonName(status).empty() ||
             GetReasonName(status) == ReasonName(Reason::kUnspecified);
    default:
      return false;
  }
}

bool BlamesTarget(const absl::Status& error) {
  switch (error.code()) {
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kAlreadyExists:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
      return false;
    case absl::StatusCode::kAborted:
      return GetReason(error) != Reason::kSessionBusy;
    case absl::StatusCode::kResourceExhausted:
      return GetReason(error) == Reason::kOverloaded;
    default:
      return true;
  }
}

std::string NewRequestId() { return RandomHex128(); }

// --- Client ------------------------------------------------------------------

Client::Client(ClientOptions options) : options_(std::move(options)) {}
Client::~Client() = default;

absl::StatusOr<std::unique_ptr<Client>> Client::Create(ClientOptions options) {
  if (options.targets.empty()) {
    return BadOption("targets", "ClientOptions.targets is empty");
  }
  // Metadata values go out as they are: a byte gRPC refuses in a header
  // (outside 0x20-0x7E) would abort the process on the first call.
  const std::pair<const char*, const std::string*> headers[] = {
      {"api_key", &options.api_key}, {"tenant", &options.tenant}};
  for (const auto& [name, value] : headers) {
    for (char c : *value) {
      if (c < 0x20 || c > 0x7E) {
        return BadOption(
            name,
            absl::StrCat(
                "ClientOptions.", name,
                " may hold only printable ASCII (a header value); "
                "found byte 0x",
                absl::Hex(static_cast<unsigned char>(c), absl::kZeroPad2)));
      }
    }
  }
  // Values no call could run with: refused, not bent into something.
  if (options.max_attempts < 1) {
    return BadOption(
        "max_attempts",
        absl::StrCat("ClientOptions.max_attempts must be at least 1 (got ",
                     options.max_attempts, ")"));
  }
  if (options.timeout <= absl::ZeroDuration()) {
    return BadOption(
        "timeout",
        absl::StrCat(
            "ClientOptions.timeout must be positive (InfiniteDuration: no "
            "bound; got ",
            absl::FormatDuration(options.timeout), ")"));
  }
  if (options.initial_backoff < absl::ZeroDuration() ||
      options.initial_backoff == absl::InfiniteDuration() ||
      options.max_backoff < absl::ZeroDuration()) {
    const bool initial = options.initial_backoff < absl::ZeroDuration() ||
                         options.initial_backoff == absl::InfiniteDuration();
    return BadOption(
        initial ? "initial_backoff" : "max_backoff",
        "ClientOptions.initial_backoff must be 0 or more and finite, "
        "max_backoff 0 or more (InfiniteDuration: no cap)");
  }
  // Below what the server sends (export chunks of 1 MiB, listing pages of
  // up to 2 MiB), every such call would fail with gRPC's bare size error.
  if (options.max_receive_message_bytes != -1 &&
      options.max_receive_message_bytes < kMinReceiveMessageBytes) {
    return BadOption("max_receive_message_bytes",
                     absl::StrCat("ClientOptions.max_receive_message_bytes "
                                  "must be -1 (unlimited) or at least ",
                                  kMinReceiveMessageBytes));
  }
  // TLS material without tls would be ignored on a plaintext channel (and
  // the api_key sent in the clear): refused, naming the field only.
  if (!options.tls) {
    const std::pair<const char*, const std::string*> tls_only[] = {
        {"tls_root_certs_pem", &options.tls_root_certs_pem},
        {"tls_cert_chain_pem", &options.tls_cert_chain_pem},
        {"tls_private_key_pem", &options.tls_private_key_pem},
        {"tls_server_name", &options.tls_server_name}};
    for (const auto& [name, value] : tls_only) {
      if (!value->empty()) {
        return BadOption(
            name,
            absl::StrCat(
                "ClientOptions.", name,
                " needs tls = true (without it the channel is plaintext and ",
                name, " is ignored)"));
      }
    }
  }
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (options.tls) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = options.tls_root_certs_pem;
    ssl.pem_cert_chain = options.tls_cert_chain_pem;
    ssl.pem_private_key = options.tls_private_key_pem;
    creds = grpc::SslCredentials(ssl);
  } else {
    creds = grpc::InsecureChannelCredentials();
  }
  std::unique_ptr<Client> client(new Client(std::move(options)));
  const ClientOptions& o = client->options_;
  for (const std::string& target : o.targets) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(o.max_receive_message_bytes);
    // Appends (up to ~1.3 MiB of tokens) and import chunks (1 MiB) go out
    // whatever the receive limit; -1 (unlimited) stays unlimited.
    args.SetMaxSendMessageSize(
        o.max_receive_message_bytes < 0
            ? -1
            : std::max(o.max_receive_message_bytes, 8 << 20));
    // Reconnect quickly after a server restart: the retry loop, not the
    // channel's (up to 120 s) reconnect backoff, decides how long to wait.
    // GRPC_ARG_MIN_RECONNECT_BACKOFF_MS is, in gRPC core, the least time a
    // connection attempt is given (default 20 s): 5 s lets a slow link's
    // handshake finish (100 ms, set before, failed every one slower than
    // that) and still gives up on a host that drops packets soon enough to
    // fail over to the next target.
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
    args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 5000);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
    // HTTP/2 pings while calls are open: a stream to a server that stopped
    // answering without closing the connection (paused, partitioned) fails
    // within ~30 s and resumes elsewhere, instead of waiting forever (streams
    // have no deadline by default). Servers accept a ping every 500 ms.
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 20000);
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
    args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 0);
    // Keep pinging a call that sends nothing (a Generate stream).
    args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
    for (const auto& [name, value] : o.channel_args) args.SetInt(name, value);
    if (!o.tls_server_name.empty()) {
      args.SetSslTargetNameOverride(o.tls_server_name);
    }
    auto channel = grpc::CreateCustomChannel(target, creds, args);
    Stubs stubs;
    stubs.channel = channel;
    stubs.sessions = v1::Sessions::NewStub(channel);
    stubs.streams = v1::Streams::NewStub(channel);
    stubs.models = v1::Models::NewStub(channel);
    client->stubs_.push_back(std::move(stubs));
  }
  return client;
}

Client::Stubs& Client::Current() {
  absl::MutexLock lock(&mu_);
  return stubs_[current_];
}

std::shared_ptr<grpc::Channel> Client::CurrentChannel() const {
  absl::MutexLock lock(&mu_);
  return stubs_[current_].channel;
}

void Client::Rotate(const Stubs* failed, const absl::Status& error,
                    const CallOptions& call) {
  if (call.cancellation != nullptr && call.cancellation->cancelled()) return;
  if (!BlamesTarget(error)) return;
  // The caller's own deadline passing says nothing against the target (a
  // short deadline on a long call); a per-attempt timeout still does.
  if (error.code() == absl::StatusCode::kDeadlineExceeded &&
      absl::Now() >= call.deadline) {
    return;
  }
  absl::MutexLock lock(&mu_);
  // Only the first caller to see a target fail moves on from it.
  if (&stubs_[current_] == failed) current_ = (current_ + 1) % stubs_.size();
}

void Client::Prepare(grpc::ClientContext* ctx, const CallOptions& call,
                     bool unary) const {
  if (!options_.api_key.empty()) {
    ctx->AddMetadata("authorization", "Bearer " + options_.api_key);
  }
  if (!options_.tenant.empty()) {
    ctx->AddMetadata("x-statestream-tenant", options_.tenant);
  }
  // gRPC reads a time before 1970 (absl::InfinitePast()) as no deadline
  // at all: such a deadline, long past, is 1970's.
  absl::Time deadline = std::max(call.deadline, absl::UnixEpoch());
  if (unary) deadline = std::min(deadline, absl::Now() + options_.timeout);
  if (deadline != absl::InfiniteFuture()) {
    ctx->set_deadline(absl::ToChronoTime(deadline));
  }
}

namespace {

// `error` with `prefix` before its message, keeping its code and payloads
// (the Reason and metadata: GetReason, GetErrorMetadata).
absl::Status Prefixed(const absl::Status& error, absl::string_view prefix) {
  return WithMessage(error, absl::StrCat(prefix, error.message()));
}

}  // namespace

absl::Status Client::RetryOrFail(const absl::Status& error, int attempt,
                                 const CallOptions& call) const {
  if (call.cancellation != nullptr && call.cancellation->cancelled()) {
    return CallerCancelled();
  }
  // Not retried: the error itself, with its code, Reason and metadata (as
  // Python's _retry_or_raise re-raises it).
  if (!IsRetryable(error)) return error;
  if (attempt >= options_.max_attempts) {
    return Prefixed(error,
                    absl::StrCat("giving up after ", attempt, " attempts: "));
  }
  if (absl::Now() >= call.deadline) {
    return Prefixed(error, "deadline passed: ");
  }
  absl::Duration backoff = options_.initial_backoff;
  for (int i = 1; i < attempt && backoff > absl::ZeroDuration() &&
                  backoff < options_.max_backoff;
       ++i) {
    backoff *= 2;
  }
  backoff = std::min(backoff, options_.max_backoff);
  backoff *= std::uniform_real_distribution<double>(0.8, 1.2)(ThreadRng());
  // OVERLOADED carries the server's hint: wait at least that long (a floor
  // after the jitter, so the wait is never below it).
  absl::Duration hinted = absl::ZeroDuration();
  if (auto hint = GetErrorMetadata(error, "retry_after_ms")) {
    int64_t ms = 0;
    if (absl::SimpleAtoi(*hint, &ms) && ms > 0) {
      hinted = absl::Milliseconds(std::min<int64_t>(ms, 60000));
      backoff = std::max(backoff, hinted);
    }
  }
  if (absl::Now() + backoff >= call.deadline) {
    return Prefixed(error, "deadline passes during backoff: ");
  }
  // A channel that is not connected is waited on, not slept beside: a
  // sync channel reconnects (its connect attempts complete, its backoff
  // timer fires) only while a thread waits on it, so an unwatched one
  // kept failing "Connection refused" ~14 s after its server was back.
  // Connected again, the next attempt goes at once, but never before a
  // server's retry_after_ms hint is out: the error may have come from
  // another target than the one now current (failed over to an idle
  // channel), and the overloaded worker behind both is the same.
  const std::shared_ptr<grpc::Channel> channel = CurrentChannel();
  if (channel->GetState(/*try_to_connect=*/true) != GRPC_CHANNEL_READY) {
    // On the steady clock: a wall clock stepped back must not hold the
    // retry, nor the failover to the next target, for the step's length.
    const absl::Time until = SteadyNow() + backoff;
    const absl::Time floor = SteadyNow() + hinted;
    for (absl::Time now = SteadyNow(); now < until; now = SteadyNow()) {
      if (call.cancellation != nullptr && call.cancellation->cancelled()) {
        return CallerCancelled();
      }
      // In slices, to see a cancellation within 50 ms. gRPC takes each
      // slice's deadline as the time of day and measures it at once.
      const absl::Duration slice =
          std::min(until - now, absl::Milliseconds(50));
      if (channel->WaitForConnected(absl::ToChronoTime(absl::Now() + slice))) {
        return Pause(floor - SteadyNow(), call);
      }
    }
    return absl::OkStatus();
  }
  return Pause(backoff, call);
}

absl::Status Client::Pause(absl::Duration d, const CallOptions& call) {
  if (d <= absl::ZeroDuration()) return absl::OkStatus();
  // Cancelled during the backoff: no further attempt, and no wait for the
  // rest of it (a server's retry_after_ms hint may be up to a minute).
  if (call.cancellation != nullptr) {
    if (call.cancellation->WaitForCancel(d)) {
      return CallerCancelled();
    }
  } else {
    absl::SleepFor(d);
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::Session> Client::CreateSession(
    v1::CreateSessionRequest request, const CallOptions& call) {
  if (request.request_id().empty()) request.set_request_id(NewRequestId());
  v1::Session out;
  absl::Status s = Unary(call, [&](Stubs& stubs, grpc::ClientContext* ctx) {
    return stubs.sessions->CreateSession(ctx, request, &out);
  });
  if (!s.ok()) return s;
  return out;
}

absl::StatusOr<v1::ListSessionsResponse> Client::ListSessions(
    v1::ListSessionsRequest request, const CallOptions& call) {
  v1::ListSessionsResponse out;
  absl::Status s = Unary(call, [&](Stubs& stubs, grpc::ClientContext* ctx) {
    return stubs.sessions->ListSessions(ctx, request, &out);
  });
  if (!s.ok()) return s;
  return out;
}

absl::StatusOr<v1::ListModelsResponse> Client::ListModels(
    const CallOptions& call) {
  v1::ListModelsResponse out;
  absl::Status s = Unary(call, [&](Stubs& stubs, grpc::ClientContext* ctx) {
    return stubs.models->ListModels(ctx, v1::ListModelsRequest(), &out);
  });
  if (!s.ok()) return s;
  return out;
}

absl::StatusOr<v1::Model> Client::GetModel(const std::string& model_id,
                                           const CallOptions& call) {
  v1::GetModelRequest request;
  request.set_model_id(model_id);
  v1::Model out;
  absl::Status s = Unary(call, [&](Stubs& stubs, grpc::ClientContext* ctx) {
    return stubs.models->GetModel(ctx, request, &out);
  });
  if (!s.ok()) return s;
  return out;
}

namespace {

google::protobuf::Duration TtlProto(absl::Duration ttl) {
  google::protobuf::Duration out;
  const int64_t seconds = absl::ToInt64Seconds(ttl);
  out.set_seconds(seconds);
  out.set_nanos(static_cast<int32_t>(
      absl::ToInt64Nanoseconds(ttl - absl::Seconds(seconds))));
  return out;
}

// An import attempt's bound: the client's timeout for each chunk, the
// header and the answer. Its writes are watched for stalls, but the last
// ones may wait in the connection's buffers (megabytes) after the last
// write returns.
absl::Duration ImportBudget(const ClientOptions& options,
                            const ExportedState& state) {
  const uint64_t chunk = state.header.chunk_bytes() > 0
                             ? state.header.chunk_bytes()
                             : uint64_t{1} << 20;
  const uint64_t chunks = (state.blob.size() + chunk - 1) / chunk;
  const absl::Duration budget =
      options.timeout * static_cast<double>(chunks + 2);
  // Past a century, no bound (a deadline that far is not gRPC's to keep).
  return budget > absl::Hours(24 * 365 * 100) ? absl::InfiniteDuration()
                                              : budget;
}

// An exported blob that fails the SDK's checks (order, CRC-32C, size):
// DATA_LOSS/STATE_CORRUPT with `detail`, as the server reports its own.
absl::Status CorruptExport(const std::string& detail) {
  return LocalError(absl::StatusCode::kDataLoss, Reason::kStateCorrupt, detail,
                    {{"detail", detail}});
}

// One ImportState call: header, then the blob in 1 MiB chunks, each
// message sent a sign of progress to `guard`.
grpc::Status ImportOnce(v1::Sessions::Stub& sessions, grpc::ClientContext* ctx,
                        StallGuard& guard, const v1::ImportHeader& header,
                        const std::string& blob, v1::Session* out) {
  auto writer = sessions.ImportState(ctx, out);
  v1::ImportStateRequest req;
  *req.mutable_header() = header;
  bool ok = writer->Write(req);
  guard.Progress();
  const size_t chunk = header.state().chunk_bytes() > 0
                           ? header.state().chunk_bytes()
                           : size_t{1} << 20;
  for (uint32_t i = 0; ok && i * chunk < blob.size(); ++i) {
    v1::ImportStateRequest part;
    v1::StateChunk* c = part.mutable_chunk();
    c->set_index(i);
    c->set_data(blob.substr(i * chunk, chunk));
    c->set_crc32c(Crc32c(0, c->data().data(), c->data().size()));
    ok = writer->Write(part);
    guard.Progress();
  }
  guard.Disarm();
  writer->WritesDone();
  return writer->Finish();
}

// The header of an import of `state` (options.request_id, else a fresh one,
// kept across the call's retries) with `options`' fields.
v1::ImportHeader ImportHeaderOf(const ExportedState& state,
                                const std::string& session_id,
                                v1::ImportMode mode,
                                const CommitOptions& options) {
  v1::ImportHeader header;
  header.set_request_id(options.request_id.empty() ? NewRequestId()
                                                   : options.request_id);
  header.set_session_id(session_id);
  header.set_mode(mode);
  *header.mutable_state() = state.header;
  if (options.expected_version) {
    header.set_expected_version(*options.expected_version);
  }
  header.set_durability(options.durability);
  header.mutable_labels()->insert(options.labels.begin(), options.labels.end());
  if (options.ttl) *header.mutable_ttl() = TtlProto(*options.ttl);
  return header;
}

}  // namespace

absl::StatusOr<v1::Session> Client::ImportSession(const ExportedState& state,
                                                  const std::string& session_id,
                                                  const CallOptions& call) {
  return ImportSessionWith(state, session_id, CommitOptions(), call);
}

absl::StatusOr<v1::Session> Client::ImportSessionWith(
    const ExportedState& state, const std::string& session_id,
    const CommitOptions& options, const CallOptions& call) {
  const v1::ImportHeader header =
      ImportHeaderOf(state, session_id, v1::IMPORT_MODE_CREATE, options);
  v1::Session out;
  absl::Status s =
      Transfer(call, ImportBudget(options_, state),
               [&](Stubs& stubs, grpc::ClientContext* ctx, StallGuard& guard) {
                 return ImportOnce(*stubs.sessions, ctx, guard, header,
                                   state.blob, &out);
               });
  if (!s.ok()) return s;
  return out;
}

// --- Session: unary calls ----------------------------------------------------

absl::StatusOr<v1::Session> Session::Get(const CallOptions& call) const {
  v1::GetSessionRequest req;
  req.set_session_id(id_);
  v1::Session out;
  absl::Status s =
      client_->Unary(call, [&](Client::Stubs& stubs, grpc::ClientContext* ctx) {
        return stubs.sessions->GetSession(ctx, req, &out);
      });
  if (!s.ok()) return s;
  return out;
}

absl::StatusOr<v1::ScoreResponse> Session::Score(
    v1::ScoreRequest request, const CallOptions& call) const {
  request.set_session_id(id_);
  v1::ScoreResponse out;
  absl::Status s =
      client_->Unary(call, [&](Client::Stubs& stubs, grpc::ClientContext* ctx) {
        return stubs.streams->Score(ctx, request, &out);
      });
  if (!s.ok()) return s;
  return out;
}

absl::StatusOr<Session> Session::Fork(uint64_t version,
                                      const std::string& new_id,
                                      const CallOptions& call) const {
  return ForkWith(version, new_id, CommitOptions(), call);
}

absl::StatusOr<Session> Session::ForkWith(uint64_t version,
                                          const std::string& new_id,
                                          const CommitOptions& options,
                                          const CallOptions& call) const {
  v1::CreateSessionRequest req;
  req.set_request_id(options.request_id);  // "": CreateSession makes one
  req.set_session_id(new_id);
  req.mutable_fork_from()->set_session_id(id_);
  req.mutable_fork_from()->set_version(version);
  req.set_durability(options.durability);
  req.mutable_labels()->insert(options.labels.begin(), options.labels.end());
  if (options.ttl) *req.mutable_ttl() = TtlProto(*options.ttl);
  auto created = client_->CreateSession(std::move(req), call);
  if (!created.ok()) return created.status();
  return Session(client_, created->session_id());
}

absl::StatusOr<std::vector<v1::Version>> Session::Versions(
    const CallOptions& call) const {
  std::vector<v1::Version> all;
  v1::ListVersionsRequest req;
  req.set_session_id(id_);
  do {
    v1::ListVersionsResponse page;
    absl::Status s = client_->Unary(
        call, [&](Client::Stubs& stubs, grpc::ClientContext* ctx) {
          return stubs.sessions->ListVersions(ctx, req, &page);
        });
    if (!s.ok()) return s;
    // A server that names the page it just gave would be read forever,
    // the list growing. INTERNAL with a reason: not retried (a caller's
    // retry loop would list forever too).
    if (!page.next_page_token().empty() &&
        page.next_page_token() == req.page_token()) {
      return LocalError(absl::StatusCode::kInternal, Reason::kInternal,
                        "ListVersions: the server repeated its page token");
    }
    all.insert(all.end(), page.versions().begin(), page.versions().end());
    req.set_page_token(page.next_page_token());
  } while (!req.page_token().empty());
  return all;
}

absl::StatusOr<v1::Session> Session::Rollback(
    uint64_t version, std::optional<uint64_t> expected_version,
    const CallOptions& call) const {
  CommitOptions options;
  options.expected_version = expected_version;
  return RollbackWith(version, options, call);
}

absl::StatusOr<v1::Session> Session::RollbackWith(
    uint64_t version, const CommitOptions& options,
    const CallOptions& call) const {
  v1::RollbackSessionRequest req;
  req.set_request_id(options.request_id.empty() ? NewRequestId()
                                                : options.request_id);
  req.set_session_id(id_);
  req.set_version(version);
  if (options.expected_version) {
    req.set_expected_version(*options.expected_version);
  }
  req.set_durability(options.durability);
  v1::Session out;
  absl::Status s =
      client_->Unary(call, [&](Client::Stubs& stubs, grpc::ClientContext* ctx) {
        return stubs.sessions->RollbackSession(ctx, req, &out);
      });
  if (!s.ok()) return s;
  return out;
}

absl::StatusOr<ExportedState> Session::Export(uint64_t version,
                                              const CallOptions& call) const {
  v1::ExportStateRequest req;
  req.set_session_id(id_);
  req.set_version(version);
  ExportedState out;
  // The attempt's corrupt blob, as the SDK tells it (DATA_LOSS/STATE_CORRUPT,
  // as a server's own check would): the call ends DATA_LOSS, not retried.
  absl::Status corrupt_error;
  absl::Status s = client_->Transfer(
      call, absl::InfiniteDuration(),
      [&](Client::Stubs& stubs, grpc::ClientContext* ctx, StallGuard& guard) {
        out = ExportedState();
        corrupt_error = absl::OkStatus();
        auto reader = stubs.sessions->ExportState(ctx, req);
        v1::ExportStateResponse part;
        uint32_t next = 0;
        bool header = false;
        std::string corrupt;
        while (reader->Read(&part)) {
          guard.Progress();
          if (part.has_header()) {
            out.header = part.header();
            header = true;
          }
          if (!part.has_chunk() || !corrupt.empty()) continue;
          // In order, each as its CRC-32C says (else the blob is corrupt:
          // DATA_LOSS, not retried).
          const v1::StateChunk& c = part.chunk();
          if (c.index() != next) {
            corrupt = absl::StrCat("export: chunk ", c.index(),
                                   " arrived in place of ", next);
          } else if (Crc32c(0, c.data().data(), c.data().size()) !=
                     c.crc32c()) {
            corrupt =
                absl::StrCat("export: chunk ", c.index(), " fails its CRC-32C");
          } else {
            ++next;
            out.blob += c.data();
            continue;
          }
          ctx->TryCancel();
        }
        grpc::Status finished = reader->Finish();
        if (corrupt.empty() && finished.ok() && !header) {
          corrupt = "export: the stream ended without a header";
        }
        if (!corrupt.empty()) {
          corrupt_error = CorruptExport(corrupt);
          return grpc::Status(grpc::StatusCode::DATA_LOSS, corrupt);
        }
        return finished;
      });
  if (!s.ok()) {
    // (Not after a cancel of the caller's: RetryOrFail's CANCELLED.)
    if (!corrupt_error.ok() && s.code() == absl::StatusCode::kDataLoss) {
      return corrupt_error;
    }
    return s;
  }
  if (out.blob.size() != out.header.total_bytes()) {
    return CorruptExport(absl::StrCat("export: received ", out.blob.size(),
                                      " of ", out.header.total_bytes(),
                                      " bytes"));
  }
  return out;
}

absl::StatusOr<v1::Session> Session::Import(const ExportedState& state,
                                            const CallOptions& call) const {
  return ImportWith(state, CommitOptions(), call);
}

absl::StatusOr<v1::Session> Session::ImportWith(const ExportedState& state,
                                                const CommitOptions& options,
                                                const CallOptions& call) const {
  const v1::ImportHeader header =
      ImportHeaderOf(state, id_, v1::IMPORT_MODE_NEW_VERSION, options);
  v1::Session out;
  absl::Status s = client_->Transfer(
      call, ImportBudget(client_->options(), state),
      [&](Client::Stubs& stubs, grpc::ClientContext* ctx, StallGuard& guard) {
        return ImportOnce(*stubs.sessions, ctx, guard, header, state.blob,
                          &out);
      });
  if (!s.ok()) return s;
  return out;
}

absl::StatusOr<v1::Session> Session::Update(v1::UpdateSessionRequest request,
                                            const CallOptions& call) const {
  request.set_session_id(id_);
  if (request.request_id().empty()) request.set_request_id(NewRequestId());
  v1::Session out;
  absl::Status s =
      client_->Unary(call, [&](Client::Stubs& stubs, grpc::ClientContext* ctx) {
        return stubs.sessions->UpdateSession(ctx, request, &out);
      });
  if (!s.ok()) return s;
  return out;
}

absl::Status Session::Delete(bool allow_missing,
                             const CallOptions& call) const {
  v1::DeleteSessionRequest req;
  req.set_request_id(NewRequestId());
  req.set_session_id(id_);
  req.set_allow_missing(allow_missing);
  v1::DeleteSessionResponse out;
  // A retry that finds no session after an attempt whose outcome is not
  // known (a lost reply, a dead gateway; not a RESOURCE_EXHAUSTED refusal)
  // is that attempt's delete, seen by a server that does not remember its
  // request id (another worker, a restart): done, not SESSION_NOT_FOUND.
  // An UNAVAILABLE/OVERLOADED counts as unknown: a gateway gives up with
  // it after workers that may have applied the call failed.
  bool maybe_deleted = false;
  return client_->Unary(call, [&](Client::Stubs& stubs,
                                  grpc::ClientContext* ctx) {
    grpc::Status st = stubs.sessions->DeleteSession(ctx, req, &out);
    if (maybe_deleted && st.error_code() == grpc::StatusCode::NOT_FOUND &&
        GetReason(FromGrpcStatus(st)) == Reason::kSessionNotFound) {
      return grpc::Status::OK;
    }
    if (!st.ok() && st.error_code() != grpc::StatusCode::RESOURCE_EXHAUSTED) {
      maybe_deleted = true;
    }
    return st;
  });
}

}  // namespace statestream::client
