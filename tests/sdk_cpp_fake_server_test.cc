// SPDX-License-Identifier: Apache-2.0
// The C++ SDK against fake servers (gRPC services of the test's own on a
// loopback port, tests/sdk_cpp_fake_server.h): corrupt exports, resumed
// generations that end early, and writers whose input is committed below
// their durability or whose acks are not their requests'. Retries are in
// sdk_cpp_fake_retry_test.cc; the real-server tests in sdk_cpp_test.cc.

#include "tests/sdk_cpp_fake_server.h"

#include <grpcpp/server_builder.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/crc32c.h"
#include "common/grpc_status.h"
#include "common/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "statestream/client.h"
#include "statestream/v1/statestream.grpc.pb.h"

namespace statestream {
namespace {

using sdk_test::FakeServer;
using sdk_test::Listen;
using sdk_test::Serve;

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
