// SPDX-License-Identifier: Apache-2.0
// The C++ SDK against fake servers (gRPC services of the test's own on a
// loopback port): corrupt exports, resumed generations that end early,
// writers whose input is committed below their durability, and retries
// with their backoff, reasons and cancellation. The real-server tests are
// in sdk_cpp_test.cc.
#include <grpcpp/server_builder.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/crc32c.h"
#include "common/grpc_status.h"
#include "common/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "statestream/client.h"
#include "statestream/v1/statestream.grpc.pb.h"
#include "tests/subprocess.h"

namespace statestream {
namespace {

// A fake server (a gRPC service of the test's) on a free loopback port, and
// a client of it; the client goes first.
struct FakeServer {
  std::unique_ptr<grpc::Server> server;
  std::unique_ptr<client::Client> client;
  ~FakeServer() {
    client.reset();
    if (server != nullptr) server->Shutdown();
  }
};

// A server of `service` on a free loopback port, its "host:port" in
// `address`; null if it did not start.
std::unique_ptr<grpc::Server> Listen(grpc::Service* service,
                                     std::string* address) {
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                           &port);
  builder.RegisterService(service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  *address = absl::StrCat("127.0.0.1:", port);
  return server;
}

// Serves `service` into `out`; its client retries after 1 ms at first, at
// most `max_attempts` times (0: the default), with `more_targets` after the
// service's address.
void Serve(grpc::Service* service, FakeServer* out, int max_attempts = 0,
           const std::vector<std::string>& more_targets = {}) {
  std::string address;
  out->server = Listen(service, &address);
  ASSERT_NE(out->server, nullptr);
  client::ClientOptions options;
  options.targets = {address};
  options.targets.insert(options.targets.end(), more_targets.begin(),
                         more_targets.end());
  if (max_attempts > 0) options.max_attempts = max_attempts;
  options.initial_backoff = absl::Milliseconds(1);
  auto c = client::Client::Create(options);
  ASSERT_TRUE(c.ok()) << c.status();
  out->client = std::move(*c);
}

// A Sessions server whose ExportState sends a corrupt blob: a chunk that
// fails its CRC-32C, or chunks out of order.
class CorruptExport final : public v1::Sessions::Service {
 public:
  explicit CorruptExport(bool reorder) : reorder_(reorder) {}
  grpc::Status ExportState(
      grpc::ServerContext*, const v1::ExportStateRequest*,
      grpc::ServerWriter<v1::ExportStateResponse>* writer) override {
    v1::ExportStateResponse header;
    header.mutable_header()->set_total_bytes(8);
    writer->Write(header);
    for (uint32_t i : {0u, 1u}) {
      v1::ExportStateResponse part;
      v1::StateChunk* c = part.mutable_chunk();
      c->set_index(reorder_ ? 1 - i : i);
      c->set_data("abcd");
      c->set_crc32c(Crc32c(0, "abcd", 4) ^ (reorder_ ? 0 : i));
      writer->Write(part);
    }
    return grpc::Status::OK;
  }

 private:
  bool reorder_;
};

// An api_key or tenant gRPC cannot send as a header (outside 0x20-0x7E)
// is refused when the client is made: at the first call it aborted the
// process (grpc++ asserts on a header it cannot add).
TEST(SdkOptionsTest, HeaderValuesOutsidePrintableAsciiAreRefused) {
  for (const auto& [key, tenant] :
       std::vector<std::pair<std::string, std::string>>{
           {"key\r", ""}, {"", "caf\xc3\xa9"}, {"a\nb", "t"}}) {
    client::ClientOptions options;
    options.targets = {"127.0.0.1:1"};
    options.api_key = key;
    options.tenant = tenant;
    auto c = client::Client::Create(options);
    EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(c.status().message()),
                ::testing::HasSubstr("printable ASCII"));
  }
  client::ClientOptions fine;
  fine.targets = {"127.0.0.1:1"};
  fine.api_key = "k3y-with.symbols_~!";
  fine.tenant = "acme";
  EXPECT_TRUE(client::Client::Create(fine).ok());
}

TEST(SdkExportTest, ACorruptOrReorderedExportIsDataLoss) {
  for (bool reorder : {false, true}) {
    CorruptExport service(reorder);
    FakeServer fake;
    ASSERT_NO_FATAL_FAILURE(Serve(&service, &fake));
    auto exported = fake.client->OpenSession("s").Export(0);
    EXPECT_EQ(exported.status().code(), absl::StatusCode::kDataLoss)
        << reorder << " " << exported.status();
  }
}

// A Sessions server whose ExportState ends OK having sent nothing.
class EmptyExport final : public v1::Sessions::Service {
 public:
  grpc::Status ExportState(
      grpc::ServerContext*, const v1::ExportStateRequest*,
      grpc::ServerWriter<v1::ExportStateResponse>*) override {
    return grpc::Status::OK;
  }
};

// An export that ends without its header is no state (it used to come back
// as an empty ExportedState: 0 bytes of 0).
TEST(SdkExportTest, AnExportWithoutAHeaderIsDataLoss) {
  EmptyExport service;
  FakeServer fake;
  ASSERT_NO_FATAL_FAILURE(Serve(&service, &fake));
  auto exported = fake.client->OpenSession("s").Export(0);
  EXPECT_EQ(exported.status().code(), absl::StatusCode::kDataLoss)
      << exported.status();
}

// A Streams server whose first Generate sends tokens [1, 2] and is lost;
// the resumed call sends [1] and ends: it stopped sooner. With `committed`
// its done says the server committed it (a committing request whose
// resume ran out of time on a slower worker). With `diverge` the resumed
// call sends [1, 5, 6] instead: another output.
class ShorterResume final : public v1::Streams::Service {
 public:
  explicit ShorterResume(bool committed = false, bool diverge = false)
      : committed_(committed), diverge_(diverge) {}
  grpc::Status Generate(grpc::ServerContext*, const v1::GenerateRequest*,
                        grpc::ServerWriter<v1::GenerateResponse>* w) override {
    const bool first = calls_.fetch_add(1) == 0;
    v1::GenerateResponse chunk;
    chunk.mutable_chunk()->set_start_input_offset(7);
    chunk.mutable_chunk()->add_tokens(1);
    chunk.mutable_chunk()->set_text_utf8("a");
    if (first) {
      chunk.mutable_chunk()->add_tokens(2);
      chunk.mutable_chunk()->set_text_utf8("ab");
      w->Write(chunk);
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "lost");
    }
    if (diverge_) {
      chunk.mutable_chunk()->add_tokens(5);
      chunk.mutable_chunk()->add_tokens(6);
      chunk.mutable_chunk()->set_text_utf8("aef");
    }
    w->Write(chunk);
    v1::GenerateResponse done;
    done.mutable_done()->set_finish_reason(v1::FINISH_REASON_STOP_TOKEN);
    if (committed_) {
      done.mutable_done()->set_committed(true);
      done.mutable_done()->set_position(12);
      done.mutable_done()->set_input_offset(8);
      done.mutable_done()->set_version(5);
    }
    w->Write(done);
    return grpc::Status::OK;
  }

 private:
  const bool committed_;
  const bool diverge_;
  std::atomic<int> calls_{0};
};

// A Streams server whose first Generate sends token 1 (started at input
// offset 7) and is lost; the resumed call sends it again and ends. It
// keeps the requests.
class LostAfterOneToken final : public v1::Streams::Service {
 public:
  grpc::Status Generate(grpc::ServerContext*, const v1::GenerateRequest* r,
                        grpc::ServerWriter<v1::GenerateResponse>* w) override {
    bool first;
    {
      absl::MutexLock lock(&mu_);
      requests_.push_back(*r);
      first = requests_.size() == 1;
    }
    v1::GenerateResponse chunk;
    chunk.mutable_chunk()->set_start_input_offset(7);
    chunk.mutable_chunk()->add_tokens(1);
    w->Write(chunk);
    if (first) return grpc::Status(grpc::StatusCode::UNAVAILABLE, "lost");
    v1::GenerateResponse done;
    done.mutable_done()->set_finish_reason(v1::FINISH_REASON_MAX_TOKENS);
    w->Write(done);
    return grpc::Status::OK;
  }
  std::vector<v1::GenerateRequest> requests() {
    absl::MutexLock lock(&mu_);
    return requests_;
  }

 private:
  absl::Mutex mu_;
  std::vector<v1::GenerateRequest> requests_ ABSL_GUARDED_BY(mu_);
};

// A Streams server whose first Generate sends tokens 1 and 2 with their
// logprobs and is lost; the resumed call replays 1-3 from a checkpoint
// (without logprobs, as the server does), then samples 4 (with).
class ReplaysACheckpoint final : public v1::Streams::Service {
 public:
  grpc::Status Generate(grpc::ServerContext*, const v1::GenerateRequest*,
                        grpc::ServerWriter<v1::GenerateResponse>* w) override {
    const bool first = calls_.fetch_add(1) == 0;
    auto sampled = [](uint32_t index, std::vector<uint32_t> tokens) {
      v1::GenerateResponse r;
      r.mutable_chunk()->set_index(index);
      for (uint32_t t : tokens) {
        r.mutable_chunk()->add_tokens(t);
        v1::TokenLogprob* lp = r.mutable_chunk()->add_logprobs();
        lp->set_token(t);
        lp->set_logprob(-0.5f * static_cast<float>(t));
      }
      return r;
    };
    if (first) {
      w->Write(sampled(0, {1, 2}));
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "lost");
    }
    v1::GenerateResponse replayed;
    for (uint32_t t : {1, 2, 3}) replayed.mutable_chunk()->add_tokens(t);
    w->Write(replayed);
    w->Write(sampled(3, {4}));
    v1::GenerateResponse done;
    done.mutable_done()->set_finish_reason(v1::FINISH_REASON_MAX_TOKENS);
    w->Write(done);
    return grpc::Status::OK;
  }

 private:
  std::atomic<int> calls_{0};
};

// Logprobs stay parallel to the tokens across a resume that replays
// checkpointed output: the replayed token not delivered before gets a NaN
// entry, and the next sampled one keeps its own (they were shifted).
TEST(SdkGenerateTest, LogprobsStayParallelToTokensAcrossAReplay) {
  ReplaysACheckpoint service;
  FakeServer fake;
  ASSERT_NO_FATAL_FAILURE(Serve(&service, &fake));
  v1::GenerateRequest request;
  request.set_max_tokens(4);
  request.set_logprobs(true);
  auto result = fake.client->OpenSession("s").GenerateAll(request);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->tokens, (std::vector<uint32_t>{1, 2, 3, 4}));
  ASSERT_EQ(result->logprobs.size(), 4u);
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(result->logprobs[i].token(), result->tokens[i]) << i;
  }
  EXPECT_FLOAT_EQ(result->logprobs[1].logprob(), -1.0f);
  EXPECT_TRUE(std::isnan(result->logprobs[2].logprob()));
  EXPECT_FLOAT_EQ(result->logprobs[3].logprob(), -2.0f);
}

// A resume is pinned to the input the generation started from, unless the
// request commits: the server knows a committing retry by the request's
// digest, which the pin would change (a finished generation was refused
// DUPLICATE_REQUEST instead of replayed).
TEST(SdkGenerateTest, OnlyASideBranchResumeIsPinnedToItsStart) {
  for (const bool commit : {false, true}) {
    LostAfterOneToken service;
    FakeServer fake;
    ASSERT_NO_FATAL_FAILURE(Serve(&service, &fake));
    v1::GenerateRequest request;
    request.set_max_tokens(1);
    request.set_commit(commit);
    request.set_request_id("turn-1");
    auto stream = fake.client->OpenSession("s").Generate(request);
    ASSERT_TRUE(stream.ok()) << stream.status();
    // Token 1 once: the first chunk delivered says where it started.
    client::GenerateChunk chunk;
    ASSERT_TRUE((*stream)->Next(&chunk)) << (*stream)->status();
    EXPECT_EQ(chunk.tokens, std::vector<uint32_t>{1});
    EXPECT_EQ(chunk.start_input_offset, std::optional<uint64_t>(7));
    EXPECT_FALSE((*stream)->Next(&chunk));
    EXPECT_TRUE((*stream)->status().ok()) << (*stream)->status();
    stream->reset();
    const std::vector<v1::GenerateRequest> sent = service.requests();
    ASSERT_EQ(sent.size(), 2u) << commit;
    EXPECT_FALSE(sent[0].has_expected_input_offset());
    EXPECT_EQ(sent[1].has_expected_input_offset(), !commit);
    if (!commit) {
      EXPECT_EQ(sent[1].expected_input_offset(), 7u);
    }
  }
}

// A Streams server whose Append commits everything at MEMORY (a policy
// commit short of its level) and loses the first call after its second
// request; the offsets each call received.
class MemoryOnlyAppends final : public v1::Streams::Service {
 public:
  grpc::Status Append(
      grpc::ServerContext*,
      grpc::ServerReaderWriter<v1::AppendResponse, v1::AppendRequest>* stream)
      override {
    const int call = calls_.fetch_add(1);
    v1::AppendRequest req;
    int n = 0;
    while (stream->Read(&req)) {
      {
        absl::MutexLock lock(&mu_);
        offsets_[call].push_back(req.expected_input_offset());
      }
      if (call == 0 && ++n == 2) {
        return grpc::Status(grpc::StatusCode::UNAVAILABLE, "lost");
      }
      const uint64_t end = req.expected_input_offset() + req.text_utf8().size();
      v1::AppendResponse ack;
      ack.set_input_offset(end);
      ack.set_committed_input_offset(end);
      ack.set_version(call + 2);
      ack.set_durability(req.checkpoint() ? req.durability()
                                          : v1::DURABILITY_MEMORY);
      if (!stream->Write(ack)) break;
    }
    return grpc::Status::OK;
  }
  std::vector<uint64_t> offsets(int call) {
    absl::MutexLock lock(&mu_);
    return offsets_[call];
  }

 private:
  std::atomic<int> calls_{0};
  absl::Mutex mu_;
  std::map<int, std::vector<uint64_t>> offsets_ ABSL_GUARDED_BY(mu_);
};

// A writer that asked FSYNC keeps input that acks cover only with a MEMORY
// version, and resends it after a reconnect (it used to drop it).
TEST(SdkAppendTest, AWriterKeepsInputCommittedBelowItsDurability) {
  MemoryOnlyAppends service;
  FakeServer fake;
  ASSERT_NO_FATAL_FAILURE(Serve(&service, &fake));
  client::AppendOptions options;
  options.durability = v1::DURABILITY_FSYNC;
  options.start_offset = 0;
  auto writer = fake.client->OpenSession("s").OpenAppend(options);
  ASSERT_TRUE(writer.ok()) << writer.status();
  ASSERT_TRUE((*writer)->Write("abc").ok());
  ASSERT_TRUE((*writer)->Sync().ok());
  ASSERT_TRUE((*writer)->Write("def").ok());
  ASSERT_TRUE((*writer)->Sync().ok());
  auto closed = (*writer)->Close();
  ASSERT_TRUE(closed.ok()) << closed.status();
  const std::vector<uint64_t> resent = service.offsets(1);
  ASSERT_FALSE(resent.empty());
  EXPECT_EQ(resent.front(), 0u);  // "abc" again, not only "def"
}

// A Streams server that acknowledges its first Append request twice (as a
// buggy proxy might), then every request once, nothing committed.
class DoubleFirstAck final : public v1::Streams::Service {
 public:
  grpc::Status Append(
      grpc::ServerContext*,
      grpc::ServerReaderWriter<v1::AppendResponse, v1::AppendRequest>* stream)
      override {
    v1::AppendRequest req;
    bool first = true;
    while (stream->Read(&req)) {
      v1::AppendResponse ack;
      ack.set_input_offset(req.expected_input_offset() +
                           req.text_utf8().size());
      ack.set_version(1);
      ack.set_durability(v1::DURABILITY_MEMORY);
      if (!stream->Write(ack)) break;
      if (first && !stream->Write(ack)) break;
      first = false;
    }
    return grpc::Status::OK;
  }
};

// An ack that cannot be its request's (below the end of the input it
// names) is a server's error the writer reports (INTERNAL), not matched
// to the next request: a checkpoint taking "abc"'s second ack would drop
// "abc" from what it resends while nothing was committed.
TEST(SdkAppendTest, AnAckThatIsNotItsRequestsFailsTheWriter) {
  DoubleFirstAck service;
  FakeServer fake;
  ASSERT_NO_FATAL_FAILURE(Serve(&service, &fake));
  client::AppendOptions options;
  options.start_offset = 0;
  auto writer = fake.client->OpenSession("s").OpenAppend(options);
  ASSERT_TRUE(writer.ok()) << writer.status();
  ASSERT_TRUE((*writer)->Write("abc").ok());
  absl::Status st = (*writer)->Sync();
  if (st.ok()) {
    auto ck = (*writer)->Checkpoint();
    st = ck.status();
    if (ck.ok()) {
      EXPECT_GE(ck->committed_input_offset(), 3u) << "abc was dropped";
    }
  }
  EXPECT_EQ(st.code(), absl::StatusCode::kInternal) << st;
}

// A resumed Generate that ends before the output already delivered is
// another generation: FAILED_PRECONDITION (not retried), not a `done`
// after 2 delivered tokens that reports 1.
// When the server committed that shorter output, the error says where the
// session is (it holds less than the caller saw).
TEST(SdkGenerateTest, AResumeThatEndsBeforeTheDeliveredOutputIsNotJoined) {
  for (bool committed : {false, true}) {
    SCOPED_TRACE(committed ? "committed" : "side branch");
    ShorterResume service(committed);
    FakeServer fake;
    ASSERT_NO_FATAL_FAILURE(Serve(&service, &fake));
    v1::GenerateRequest request;
    request.set_max_tokens(3);
    request.set_commit(committed);
    request.set_request_id("gen-1");  // no pin read (the fake has no Get)
    auto stream = fake.client->OpenSession("s").Generate(request);
    ASSERT_TRUE(stream.ok()) << stream.status();
    std::vector<uint32_t> delivered;
    client::GenerateChunk chunk;
    while ((*stream)->Next(&chunk)) {
      delivered.insert(delivered.end(), chunk.tokens.begin(),
                       chunk.tokens.end());
    }
    const absl::Status st = (*stream)->status();
    EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
    EXPECT_EQ(GetReason(st), Reason::kResumeDiverged) << st;
    EXPECT_FALSE(client::IsRetryable(st));
    EXPECT_EQ(delivered, (std::vector<uint32_t>{1, 2}));
    EXPECT_EQ(GetErrorMetadata(st, "committed").has_value(), committed) << st;
    if (committed) {
      EXPECT_EQ(GetErrorMetadata(st, "input_offset").value_or(""), "8");
      EXPECT_EQ(GetErrorMetadata(st, "version").value_or(""), "5");
      EXPECT_EQ(GetErrorMetadata(st, "position").value_or(""), "12");
    }
    stream->reset();
  }
}

// A resumed Generate whose output differs from what was delivered is
// another generation: FAILED_PRECONDITION/RESUME_DIVERGED, not retried,
// nothing of it delivered.
TEST(SdkGenerateTest, AResumeWithOtherOutputIsNotJoined) {
  ShorterResume service(/*committed=*/false, /*diverge=*/true);
  FakeServer fake;
  ASSERT_NO_FATAL_FAILURE(Serve(&service, &fake));
  v1::GenerateRequest request;
  request.set_max_tokens(3);
  request.set_request_id("gen-1");
  auto stream = fake.client->OpenSession("s").Generate(request);
  ASSERT_TRUE(stream.ok()) << stream.status();
  std::vector<uint32_t> delivered;
  client::GenerateChunk chunk;
  while ((*stream)->Next(&chunk)) {
    delivered.insert(delivered.end(), chunk.tokens.begin(), chunk.tokens.end());
  }
  const absl::Status st = (*stream)->status();
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  EXPECT_EQ(GetReason(st), Reason::kResumeDiverged) << st;
  EXPECT_FALSE(client::IsRetryable(st));
  EXPECT_THAT(std::string(st.message()),
              ::testing::HasSubstr("diverged from the 2"));
  EXPECT_EQ(delivered, (std::vector<uint32_t>{1, 2}));
}

}  // namespace
}  // namespace statestream

namespace statestream {
namespace {

// A Sessions server whose GetSession always fails RESOURCE_EXHAUSTED/
// OVERLOADED with a retry_after_ms hint; it records when each call came.
class OverloadedSessions final : public v1::Sessions::Service {
 public:
  explicit OverloadedSessions(int retry_after_ms)
      : retry_after_ms_(retry_after_ms) {}
  grpc::Status GetSession(grpc::ServerContext*, const v1::GetSessionRequest*,
                          v1::Session*) override {
    {
      absl::MutexLock lock(&mu_);
      calls_.push_back(absl::Now());
    }
    return ToGrpcStatus(MakeError(
        absl::StatusCode::kResourceExhausted, Reason::kOverloaded, "queue full",
        {{"retry_after_ms", absl::StrCat(retry_after_ms_)}}));
  }
  std::vector<absl::Time> calls() {
    absl::MutexLock lock(&mu_);
    return calls_;
  }

 private:
  const int retry_after_ms_;
  absl::Mutex mu_;
  std::vector<absl::Time> calls_ ABSL_GUARDED_BY(mu_);
};

// A Sessions server whose DeleteSession answers with `answers`, one per
// call (the last repeats), as a worker might after a lost reply.
class ScriptedDeletes final : public v1::Sessions::Service {
 public:
  explicit ScriptedDeletes(std::vector<absl::Status> answers)
      : answers_(std::move(answers)) {}
  grpc::Status DeleteSession(grpc::ServerContext*,
                             const v1::DeleteSessionRequest*,
                             v1::DeleteSessionResponse*) override {
    absl::MutexLock lock(&mu_);
    const absl::Status& s = answers_[std::min(calls_++, answers_.size() - 1)];
    return ToGrpcStatus(s);
  }

 private:
  const std::vector<absl::Status> answers_;
  absl::Mutex mu_;
  size_t calls_ ABSL_GUARDED_BY(mu_) = 0;
};

// A Sessions server at version 5 whose first RollbackSession is lost
// (UNAVAILABLE after it was received); every request is recorded.
class LostFirstRollback final : public v1::Sessions::Service {
 public:
  grpc::Status GetSession(grpc::ServerContext*, const v1::GetSessionRequest* r,
                          v1::Session* out) override {
    out->set_session_id(r->session_id());
    out->set_version(5);
    return grpc::Status::OK;
  }
  grpc::Status RollbackSession(grpc::ServerContext*,
                               const v1::RollbackSessionRequest* r,
                               v1::Session* out) override {
    absl::MutexLock lock(&mu_);
    requests_.push_back(*r);
    if (requests_.size() == 1) {
      return grpc::Status(grpc::StatusCode::UNAVAILABLE, "reply lost");
    }
    out->set_session_id(r->session_id());
    out->set_version(6);
    return grpc::Status::OK;
  }
  std::vector<v1::RollbackSessionRequest> requests() {
    absl::MutexLock lock(&mu_);
    return requests_;
  }

 private:
  absl::Mutex mu_;
  std::vector<v1::RollbackSessionRequest> requests_ ABSL_GUARDED_BY(mu_);
};

// `statestream session rollback` pins the head it read: its retry after a
// lost reply, reaching a worker that knows nothing of the first attempt
// after the session moved on, is VERSION_MISMATCH, not a second rollback
// over the newer input. It sent no expected_version.
TEST(CliRollbackTest, ARetriedRollbackIsPinnedToTheHeadItRead) {
  LostFirstRollback service;
  std::string address;
  std::unique_ptr<grpc::Server> server = Listen(&service, &address);
  ASSERT_NE(server, nullptr);
  auto ran = e2e::Run(
      {STATESTREAM_BIN, "session", "rollback", "s", "2", "--target", address});
  ASSERT_TRUE(ran.ok()) << ran.status();
  EXPECT_EQ(ran->exit_code, 0) << ran->err;
  const std::vector<v1::RollbackSessionRequest> sent = service.requests();
  ASSERT_EQ(sent.size(), 2u);
  for (const v1::RollbackSessionRequest& r : sent) {
    EXPECT_EQ(r.version(), 2u);
    EXPECT_TRUE(r.has_expected_version());
    EXPECT_EQ(r.expected_version(), 5u);
    EXPECT_EQ(r.request_id(), sent[0].request_id());
  }
  server->Shutdown();
}

// A Sessions server whose every ListSessions page names itself as the next.
class RepeatingListing final : public v1::Sessions::Service {
 public:
  grpc::Status ListSessions(grpc::ServerContext*,
                            const v1::ListSessionsRequest*,
                            v1::ListSessionsResponse* out) override {
    out->add_sessions()->set_session_id("again");
    out->set_next_page_token("same");
    return grpc::Status::OK;
  }
};

// `statestream session list` against a server repeating its page token
// ends (exit 1, the error said) instead of printing the same page forever.
TEST(CliListTest, ARepeatedPageTokenEndsTheListing) {
  RepeatingListing service;
  std::string address;
  std::unique_ptr<grpc::Server> server = Listen(&service, &address);
  ASSERT_NE(server, nullptr);
  auto ran = e2e::Run({STATESTREAM_BIN, "session", "list", "--target", address},
                      absl::Seconds(5));  // (forever: killed)
  ASSERT_TRUE(ran.ok()) << ran.status();
  EXPECT_EQ(ran->exit_code, 1) << ran->err;
  EXPECT_THAT(ran->err, ::testing::HasSubstr("repeated its page token"));
  server->Shutdown();
}

// A retried delete that finds no session after an attempt whose outcome is
// unknown (UNAVAILABLE: the reply was lost) is that attempt's delete: done.
// NOT_FOUND at the first attempt, or after an OVERLOADED refusal (nothing
// was done), stays SESSION_NOT_FOUND.
TEST(SdkDeleteTest, ARetryThatFindsNoSessionAfterALostReplyIsDone) {
  const absl::Status lost = absl::UnavailableError("connection reset");
  const absl::Status gone = MakeError(absl::StatusCode::kNotFound,
                                      Reason::kSessionNotFound, "no session");
  const absl::Status overloaded = MakeError(
      absl::StatusCode::kResourceExhausted, Reason::kOverloaded, "queue full");
  struct Case {
    std::vector<absl::Status> answers;
    absl::StatusCode want;
  };
  for (const Case& c :
       std::vector<Case>{{{lost, gone}, absl::StatusCode::kOk},
                         {{lost, lost, gone}, absl::StatusCode::kOk},
                         {{gone}, absl::StatusCode::kNotFound},
                         {{overloaded, gone}, absl::StatusCode::kNotFound}}) {
    ScriptedDeletes service(c.answers);
    FakeServer fake;
    ASSERT_NO_FATAL_FAILURE(Serve(&service, &fake));
    const absl::Status s = fake.client->OpenSession("s").Delete();
    EXPECT_EQ(s.code(), c.want) << s << " after " << c.answers.size();
    if (!s.ok()) {
      EXPECT_EQ(GetReason(s), Reason::kSessionNotFound);
    }
  }
  // Only SESSION_NOT_FOUND is the lost attempt's delete: another NOT_FOUND
  // (a route, a model) after a lost reply is the answer.
  ScriptedDeletes other({lost, absl::NotFoundError("no route")});
  FakeServer fake;
  ASSERT_NO_FATAL_FAILURE(Serve(&other, &fake));
  const absl::Status s = fake.client->OpenSession("s").Delete();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
}

// An INTERNAL carrying a reason newer than this SDK is the server's typed
// answer, not a transport failure: not retried (it was, as only a reason
// this build knows counted).
TEST(SdkDeleteTest, AnInternalErrorWithANewerReasonIsNotRetried) {
  absl::Status future = absl::InternalError("a newer server's answer");
  SetReasonName(future, "FROM_THE_FUTURE");
  ScriptedDeletes service({future, absl::OkStatus()});
  FakeServer fake;
  ASSERT_NO_FATAL_FAILURE(Serve(&service, &fake));
  const absl::Status s = fake.client->OpenSession("s").Delete();
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal) << s;
  EXPECT_EQ(GetReasonName(s), "FROM_THE_FUTURE") << s;
}

// SESSION_NOT_FOUND says nothing against the target that answered: the
// client stays on it. (It used to move on, here to a dead port, and the
// next delete, failing there UNAVAILABLE and then finding no session, was
// taken for a delete whose reply was lost: done.)
TEST(SdkDeleteTest, AnAnswerThatIsNotRetriedKeepsTheTarget) {
  ScriptedDeletes service({MakeError(absl::StatusCode::kNotFound,
                                     Reason::kSessionNotFound, "no session")});
  FakeServer fake;
  ASSERT_NO_FATAL_FAILURE(Serve(&service, &fake, 0, {"127.0.0.1:1"}));
  for (int i = 0; i < 2; ++i) {
    const absl::Status s = fake.client->OpenSession("s").Delete();
    EXPECT_EQ(GetReason(s), Reason::kSessionNotFound) << s << " delete " << i;
  }
}

// A typed INTERNAL (a gateway misconfigured: "a worker refused this
// gateway's credentials") is not retried, but it is the target's fault:
// the next call goes to the next target.
TEST(SdkDeleteTest, AnInternalErrorMovesToTheNextTarget) {
  ScriptedDeletes healthy({MakeError(absl::StatusCode::kNotFound,
                                     Reason::kSessionNotFound, "no session")});
  std::string second_address;
  std::unique_ptr<grpc::Server> second = Listen(&healthy, &second_address);
  ASSERT_NE(second, nullptr);
  ScriptedDeletes broken({MakeError(absl::StatusCode::kInternal,
                                    Reason::kInternal, "misconfigured")});
  FakeServer fake;
  ASSERT_NO_FATAL_FAILURE(Serve(&broken, &fake, 0, {second_address}));
  EXPECT_EQ(GetReason(fake.client->OpenSession("s").Delete()),
            Reason::kInternal);
  EXPECT_EQ(GetReason(fake.client->OpenSession("s").Delete()),
            Reason::kSessionNotFound);
  fake.client.reset();
  second->Shutdown();
}

// A Sessions server whose DeleteSession answers OK after `delay`, counting
// its calls.
class SlowDeletes final : public v1::Sessions::Service {
 public:
  explicit SlowDeletes(absl::Duration delay) : delay_(delay) {}
  grpc::Status DeleteSession(grpc::ServerContext*,
                             const v1::DeleteSessionRequest*,
                             v1::DeleteSessionResponse*) override {
    calls_.fetch_add(1);
    absl::SleepFor(delay_);
    return grpc::Status::OK;
  }
  int calls() const { return calls_.load(); }

 private:
  const absl::Duration delay_;
  std::atomic<int> calls_{0};
};

// A call that runs out of its caller's own deadline says nothing against
// the target: the next call goes to the same one. (The shared client
// moved on, so one caller's short deadline sent every other caller to
// the next target, here one that knows no session.)
TEST(SdkDeleteTest, TheCallersOwnDeadlineKeepsTheTarget) {
  ScriptedDeletes other({MakeError(absl::StatusCode::kNotFound,
                                   Reason::kSessionNotFound, "no session")});
  std::string other_address;
  std::unique_ptr<grpc::Server> second = Listen(&other, &other_address);
  ASSERT_NE(second, nullptr);
  SlowDeletes slow(absl::Milliseconds(300));
  FakeServer fake;
  ASSERT_NO_FATAL_FAILURE(Serve(&slow, &fake, 0, {other_address}));
  // Connected first: the hurried call's deadline then passes at the
  // server, not while the channel connects.
  ASSERT_TRUE(fake.client->OpenSession("s").Delete().ok());
  client::CallOptions hurried;
  hurried.deadline = absl::Now() + absl::Milliseconds(50);
  const absl::Status s = fake.client->OpenSession("s").Delete(false, hurried);
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  const absl::Status next = fake.client->OpenSession("s").Delete();
  EXPECT_TRUE(next.ok()) << next;
  EXPECT_EQ(slow.calls(), 3);
  fake.client.reset();
  second->Shutdown();
}

// A Sessions server whose every ListVersions page names itself as the
// next.
class LoopingVersions final : public v1::Sessions::Service {
 public:
  grpc::Status ListVersions(grpc::ServerContext*,
                            const v1::ListVersionsRequest*,
                            v1::ListVersionsResponse* out) override {
    out->add_versions()->set_version(1);
    out->set_next_page_token("again");
    return grpc::Status::OK;
  }
};

// A repeated page token ends the listing INTERNAL: it was read forever, the
// list growing.
TEST(SdkListTest, ARepeatedPageTokenEndsTheListing) {
  LoopingVersions service;
  FakeServer fake;
  ASSERT_NO_FATAL_FAILURE(Serve(&service, &fake));
  auto versions = fake.client->OpenSession("s").Versions();
  EXPECT_EQ(versions.status().code(), absl::StatusCode::kInternal)
      << versions.status();
}

class SdkRetryTest : public ::testing::Test {
 protected:
  // Serves an OverloadedSessions(retry_after_ms); a client of it with
  // `max_attempts` and a 1 ms initial backoff.
  void Start(int retry_after_ms, int max_attempts) {
    service_ = std::make_unique<OverloadedSessions>(retry_after_ms);
    ASSERT_NO_FATAL_FAILURE(Serve(service_.get(), &fake_, max_attempts));
  }

  // Declared before fake_: destroyed after it.
  std::unique_ptr<OverloadedSessions> service_;
  FakeServer fake_;
};

// Attempts run out: the last error comes back with its code, Reason and
// metadata (it used to be a new status with the code only: reason
// REASON_UNSPECIFIED, retry_after_ms lost). Every retry waited at least
// retry_after_ms (the jitter used to apply after that floor, so a wait
// could fall 20% short of it).
TEST_F(SdkRetryTest, AnErrorGivenUpOnKeepsItsReasonAndMetadata) {
  ASSERT_NO_FATAL_FAILURE(Start(/*retry_after_ms=*/100, /*max_attempts=*/5));
  absl::Status s = fake_.client->OpenSession("s").Get().status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_EQ(GetReason(s), Reason::kOverloaded) << s;
  EXPECT_EQ(GetErrorMetadata(s, "retry_after_ms").value_or(""), "100") << s;
  EXPECT_TRUE(absl::StrContains(s.message(), "giving up after 5 attempts"))
      << s;
  const std::vector<absl::Time> calls = service_->calls();
  ASSERT_EQ(calls.size(), 5u);
  for (size_t i = 1; i < calls.size(); ++i) {
    EXPECT_GE(calls[i] - calls[i - 1], absl::Milliseconds(100)) << i;
  }
}

// A retry moved to another target (failed over to an idle channel) still
// waits out the server's retry_after_ms: the overloaded worker behind both
// is the same. It went as soon as the new channel connected.
TEST(SdkRetryFailoverTest, TheHintHoldsOnTheNextTargetToo) {
  OverloadedSessions second_service(/*retry_after_ms=*/300);
  std::string second_address;
  std::unique_ptr<grpc::Server> second =
      Listen(&second_service, &second_address);
  ASSERT_NE(second, nullptr);
  OverloadedSessions first_service(/*retry_after_ms=*/300);
  FakeServer fake;
  ASSERT_NO_FATAL_FAILURE(
      Serve(&first_service, &fake, /*max_attempts=*/3, {second_address}));
  absl::Status s = fake.client->OpenSession("s").Get().status();
  EXPECT_EQ(GetReason(s), Reason::kOverloaded) << s;
  std::vector<absl::Time> calls = first_service.calls();
  for (absl::Time t : second_service.calls()) calls.push_back(t);
  std::sort(calls.begin(), calls.end());
  ASSERT_EQ(calls.size(), 3u);
  EXPECT_FALSE(second_service.calls().empty());  // it did move
  for (size_t i = 1; i < calls.size(); ++i) {
    EXPECT_GE(calls[i] - calls[i - 1], absl::Milliseconds(300)) << i;
  }
  fake.client.reset();
  second->Shutdown();
}

// The deadline passes during the backoff: the error is still the server's
// (it used to become DEADLINE_EXCEEDED without a reason).
TEST_F(SdkRetryTest, AnErrorAtTheDeadlineKeepsItsReasonAndMetadata) {
  ASSERT_NO_FATAL_FAILURE(Start(/*retry_after_ms=*/5000, /*max_attempts=*/5));
  client::CallOptions call;
  call.deadline = absl::Now() + absl::Seconds(2);
  absl::Status s = fake_.client->OpenSession("s").Get(call).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_EQ(GetReason(s), Reason::kOverloaded) << s;
  EXPECT_EQ(GetErrorMetadata(s, "retry_after_ms").value_or(""), "5000") << s;
  EXPECT_EQ(service_->calls().size(), 1u);
}

// A Cancel() during a retry's backoff ends the wait at once (the server's
// retry_after_ms hint here is a minute), and a cancelled call does not
// move the client off its target.
TEST_F(SdkRetryTest, ACancelEndsTheBackoffAtOnce) {
  ASSERT_NO_FATAL_FAILURE(Start(/*retry_after_ms=*/60000, /*max_attempts=*/5));
  client::Cancellation cancel;
  client::CallOptions call;
  call.cancellation = &cancel;
  std::thread canceller([&] {
    while (service_->calls().empty()) absl::SleepFor(absl::Milliseconds(5));
    absl::SleepFor(absl::Milliseconds(100));
    cancel.Cancel();
  });
  const absl::Time start = absl::Now();
  absl::Status s = fake_.client->OpenSession("s").Get(call).status();
  const absl::Duration took = absl::Now() - start;
  canceller.join();
  EXPECT_EQ(s.code(), absl::StatusCode::kCancelled) << s;
  EXPECT_FALSE(client::IsRetryable(s)) << s;
  EXPECT_LT(took, absl::Seconds(30)) << "waited out the hint";
  EXPECT_EQ(service_->calls().size(), 1u);
}

}  // namespace
}  // namespace statestream
