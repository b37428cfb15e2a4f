// SPDX-License-Identifier: Apache-2.0
// Errors the C++ SDK makes itself (statestream/local_error.h,
// docs/errors.md): each carries a Reason and metadata origin=sdk, so that
// IsRetryable reads it as what it is; the ones that stand for a broken call
// stay reason-less and retryable. Against fake servers (gRPC services of
// the test's own on a loopback port, tests/sdk_cpp_fake_server.h) where a
// call is needed.
#include "statestream/local_error.h"

#include <grpcpp/server_builder.h>

#include <atomic>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/synchronization/mutex.h"
#include "common/crc32c.h"
#include "common/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "statestream/client.h"
#include "statestream/v1/statestream.grpc.pb.h"
#include "tests/sdk_cpp_fake_server.h"

namespace statestream {
namespace {

using client::IsRetryable;
using client::LocalError;
using sdk_test::FakeServer;
using sdk_test::Serve;

TEST(SdkLocalErrorTest, CarriesItsReasonMetadataAndOriginSdk) {
  absl::Status s =
      LocalError(absl::StatusCode::kInvalidArgument, Reason::kInvalidArgument,
                 "bad", {{"field", "x"}});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "bad");
  EXPECT_EQ(GetReason(s), Reason::kInvalidArgument);
  EXPECT_EQ(GetErrorMetadata(s),
            (ErrorMetadata{{"field", "x"}, {"origin", "sdk"}}));
}

TEST(SdkLocalErrorTest, NeverLacksAReason) {
  // INTERNAL without a reason reads as a transport failure (retried).
  absl::Status s =
      LocalError(absl::StatusCode::kInternal, Reason::kUnspecified, "bug");
  EXPECT_EQ(GetReason(s), Reason::kInternal);
  EXPECT_FALSE(IsRetryable(s));
  EXPECT_TRUE(IsRetryable(absl::InternalError("bug")));
}

// --- ClientOptions and AppendOptions ---------------------------------------

TEST(SdkLocalErrorTest, BadClientOptionsNameTheirField) {
  struct Case {
    std::string field;
    void (*set)(client::ClientOptions&);
  };
  const Case cases[] = {
      {"ClientOptions.targets",
       [](client::ClientOptions& o) { o.targets = {}; }},
      {"ClientOptions.api_key",
       [](client::ClientOptions& o) { o.api_key = "a\nb"; }},
      {"ClientOptions.tenant",
       [](client::ClientOptions& o) { o.tenant = "\x7f"; }},
      {"ClientOptions.max_attempts",
       [](client::ClientOptions& o) { o.max_attempts = 0; }},
      {"ClientOptions.timeout",
       [](client::ClientOptions& o) { o.timeout = absl::ZeroDuration(); }},
      {"ClientOptions.initial_backoff",
       [](client::ClientOptions& o) {
         o.initial_backoff = absl::InfiniteDuration();
       }},
      {"ClientOptions.max_backoff",
       [](client::ClientOptions& o) { o.max_backoff = -absl::Seconds(1); }},
      // Below the 2 MiB a listing page or an export chunk takes.
      {"ClientOptions.max_receive_message_bytes",
       [](client::ClientOptions& o) { o.max_receive_message_bytes = 0; }},
      {"ClientOptions.max_receive_message_bytes",
       [](client::ClientOptions& o) { o.max_receive_message_bytes = 1 << 20; }},
      {"ClientOptions.tls_root_certs_pem",
       [](client::ClientOptions& o) { o.tls_root_certs_pem = "pem"; }},
      {"ClientOptions.tls_server_name",
       [](client::ClientOptions& o) { o.tls_server_name = "host"; }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.field);
    client::ClientOptions options;
    options.targets = {"127.0.0.1:1"};
    c.set(options);
    auto made = client::Client::Create(options);
    ASSERT_FALSE(made.ok());
    const absl::Status& s = made.status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_EQ(GetReason(s), Reason::kInvalidArgument) << s;
    EXPECT_EQ(GetErrorMetadata(s, "field"), c.field) << s;
    EXPECT_EQ(GetErrorMetadata(s, "origin"), "sdk") << s;
    EXPECT_FALSE(IsRetryable(s));
  }
}

TEST(SdkLocalErrorTest, ReceiveLimitsFromTheLeastToUnlimitedAreTaken) {
  for (int bytes : {client::kMinReceiveMessageBytes, 64 << 20, -1}) {
    client::ClientOptions options;
    options.targets = {"127.0.0.1:1"};
    options.max_receive_message_bytes = bytes;
    EXPECT_TRUE(client::Client::Create(options).ok()) << bytes;
  }
}

TEST(SdkLocalErrorTest, BadAppendOptionsNameTheirField) {
  client::AppendOptions window;
  window.window = 0;
  client::AppendOptions chunk;
  chunk.max_chunk_bytes = 0;
  for (const auto& [options, field] :
       {std::pair{window, "AppendOptions.window"},
        std::pair{chunk, "AppendOptions.max_chunk_bytes"}}) {
    absl::Status s = client::CheckAppendOptions(options);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_EQ(GetReason(s), Reason::kInvalidArgument) << s;
    EXPECT_EQ(GetErrorMetadata(s, "field"), field) << s;
    EXPECT_EQ(GetErrorMetadata(s, "origin"), "sdk") << s;
  }
}

// --- a repeated page token --------------------------------------------------

// A Sessions server whose every ListVersions page names itself as the next.
class RepeatedPageToken final : public v1::Sessions::Service {
 public:
  grpc::Status ListVersions(grpc::ServerContext*,
                            const v1::ListVersionsRequest* request,
                            v1::ListVersionsResponse* out) override {
    absl::MutexLock lock(&mu_);
    tokens_.push_back(request->page_token());
    out->add_versions()->set_version(1);
    out->set_next_page_token("again");
    return grpc::Status::OK;
  }
  std::vector<std::string> tokens() {
    absl::MutexLock lock(&mu_);
    return tokens_;
  }

 private:
  absl::Mutex mu_;
  std::vector<std::string> tokens_ ABSL_GUARDED_BY(mu_);
};

// INTERNAL with its reason: the reason-less INTERNAL it was read as a
// transport failure, so a caller's retry loop built on IsRetryable listed
// forever.
TEST(SdkLocalErrorTest, ARepeatedPageTokenIsInternalAndNotRetried) {
  RepeatedPageToken service;
  FakeServer fake;
  ASSERT_NO_FATAL_FAILURE(Serve(&service, &fake));
  absl::Status s;
  int tries = 0;
  do {
    s = fake.client->OpenSession("s").Versions().status();
  } while (++tries < 5 && IsRetryable(s));
  EXPECT_EQ(tries, 1);
  EXPECT_EQ(s.code(), absl::StatusCode::kInternal) << s;
  EXPECT_EQ(GetReason(s), Reason::kInternal) << s;
  EXPECT_EQ(GetErrorMetadata(s), (ErrorMetadata{{"origin", "sdk"}})) << s;
  EXPECT_THAT(std::string(s.message()),
              ::testing::HasSubstr("repeated its page token"));
  EXPECT_EQ(service.tokens(), (std::vector<std::string>{"", "again"}));
}

// --- a corrupt export ------------------------------------------------------

// A Sessions server whose ExportState sends `total_bytes` in its header
// (none with 0), then "abcd" as each chunk of `indexes`, chunk `bad_crc`'s
// with a wrong CRC-32C.
class CorruptExport final : public v1::Sessions::Service {
 public:
  CorruptExport(uint64_t total_bytes, std::vector<uint32_t> indexes,
                int bad_crc = -1)
      : total_bytes_(total_bytes),
        indexes_(std::move(indexes)),
        bad_crc_(bad_crc) {}
  grpc::Status ExportState(
      grpc::ServerContext*, const v1::ExportStateRequest*,
      grpc::ServerWriter<v1::ExportStateResponse>* writer) override {
    if (total_bytes_ > 0) {
      v1::ExportStateResponse header;
      header.mutable_header()->set_total_bytes(total_bytes_);
      writer->Write(header);
    }
    for (uint32_t i : indexes_) {
      v1::ExportStateResponse part;
      v1::StateChunk* c = part.mutable_chunk();
      c->set_index(i);
      c->set_data("abcd");
      c->set_crc32c(Crc32c(0, "abcd", 4) ^
                    (static_cast<int>(i) == bad_crc_ ? 1 : 0));
      writer->Write(part);
    }
    return grpc::Status::OK;
  }

 private:
  const uint64_t total_bytes_;
  const std::vector<uint32_t> indexes_;
  const int bad_crc_;
};

// DATA_LOSS/STATE_CORRUPT with `detail`, as the server reports a state
// that fails its own checks; not retried.
TEST(SdkLocalErrorTest, ACorruptExportIsStateCorrupt) {
  struct Case {
    CorruptExport* service;
    std::string detail;
  };
  CorruptExport reordered(8, {1, 0});
  CorruptExport crc(8, {0, 1}, /*bad_crc=*/1);
  CorruptExport short_blob(12, {0, 1});
  CorruptExport no_header(0, {});
  for (const Case& c :
       {Case{&reordered, "export: chunk 1 arrived in place of 0"},
        Case{&crc, "export: chunk 1 fails its CRC-32C"},
        Case{&short_blob, "export: received 8 of 12 bytes"},
        Case{&no_header, "export: the stream ended without a header"}}) {
    SCOPED_TRACE(c.detail);
    FakeServer fake;
    ASSERT_NO_FATAL_FAILURE(Serve(c.service, &fake));
    absl::Status s = fake.client->OpenSession("s").Export(0).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
    EXPECT_EQ(GetReason(s), Reason::kStateCorrupt) << s;
    EXPECT_EQ(s.message(), c.detail);
    EXPECT_EQ(GetErrorMetadata(s),
              (ErrorMetadata{{"detail", c.detail}, {"origin", "sdk"}}))
        << s;
    EXPECT_FALSE(IsRetryable(s));
  }
}

// --- a closed writer --------------------------------------------------------

// A Streams server whose Append acknowledges (and commits) each request;
// with `acks` false it ends each call OK at once, acknowledging nothing.
class Appends final : public v1::Streams::Service {
 public:
  explicit Appends(bool acks = true) : acks_(acks) {}
  grpc::Status Append(
      grpc::ServerContext*,
      grpc::ServerReaderWriter<v1::AppendResponse, v1::AppendRequest>* stream)
      override {
    calls_.fetch_add(1);
    if (!acks_) return grpc::Status::OK;
    v1::AppendRequest req;
    while (stream->Read(&req)) {
      const uint64_t end = req.expected_input_offset() + req.text_utf8().size();
      v1::AppendResponse ack;
      ack.set_input_offset(end);
      ack.set_committed_input_offset(end);
      ack.set_version(2);
      if (!stream->Write(ack)) break;
    }
    return grpc::Status::OK;
  }
  int calls() const { return calls_.load(); }

 private:
  const bool acks_;
  std::atomic<int> calls_{0};
};

void ExpectWriterClosed(const absl::Status& s) {
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_EQ(GetReason(s), Reason::kInvalidArgument) << s;
  EXPECT_EQ(s.message(), "writer closed");
  EXPECT_EQ(GetErrorMetadata(s),
            (ErrorMetadata{{"field", "writer"}, {"origin", "sdk"}}))
      << s;
  EXPECT_FALSE(IsRetryable(s));
}

TEST(SdkLocalErrorTest, EveryCallOfAClosedWriterSaysSo) {
  Appends service;
  FakeServer fake;
  ASSERT_NO_FATAL_FAILURE(Serve(&service, &fake));
  client::AppendOptions options;
  options.start_offset = 0;
  auto writer = fake.client->OpenSession("s").OpenAppend(options);
  ASSERT_TRUE(writer.ok()) << writer.status();
  ASSERT_TRUE((*writer)->Write("a").ok());
  ASSERT_TRUE((*writer)->Close().ok());
  ExpectWriterClosed((*writer)->Write("b"));
  ExpectWriterClosed((*writer)->WriteTokens({1}));
  ExpectWriterClosed((*writer)->Flush());
  ExpectWriterClosed((*writer)->Sync());
  ExpectWriterClosed((*writer)->Checkpoint().status());
  ExpectWriterClosed((*writer)->Close().status());
}

// --- what stands for a broken call stays a transport failure ----------------

// An Append call that ends OK without its acks: UNAVAILABLE "append stream
// ended early", no reason, retried (here until max_attempts).
TEST(SdkLocalErrorTest, AnAppendStreamThatEndsEarlyIsATransportFailure) {
  Appends service(/*acks=*/false);
  FakeServer fake;
  ASSERT_NO_FATAL_FAILURE(Serve(&service, &fake, /*max_attempts=*/2));
  client::AppendOptions options;
  options.start_offset = 0;
  auto writer = fake.client->OpenSession("s").OpenAppend(options);
  ASSERT_TRUE(writer.ok()) << writer.status();
  // Write may see the first call end already; Sync waits for its ack.
  absl::Status s = (*writer)->Write("a");
  if (s.ok()) s = (*writer)->Sync();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_THAT(std::string(s.message()),
              ::testing::HasSubstr("append stream ended early"));
  EXPECT_EQ(GetReasonName(s), "") << s;
  EXPECT_FALSE(GetErrorMetadata(s, "origin").has_value()) << s;
  EXPECT_TRUE(IsRetryable(s));
  EXPECT_EQ(service.calls(), 2);
}

// A Streams server whose Generate ends OK without a `done`.
class NoDone final : public v1::Streams::Service {
 public:
  grpc::Status Generate(grpc::ServerContext*, const v1::GenerateRequest*,
                        grpc::ServerWriter<v1::GenerateResponse>*) override {
    calls_.fetch_add(1);
    return grpc::Status::OK;
  }
  int calls() const { return calls_.load(); }

 private:
  std::atomic<int> calls_{0};
};

TEST(SdkLocalErrorTest, AGenerateWithoutDoneIsATransportFailure) {
  NoDone service;
  FakeServer fake;
  ASSERT_NO_FATAL_FAILURE(Serve(&service, &fake, /*max_attempts=*/2));
  v1::GenerateRequest request;
  request.set_prompt_text_utf8("x");
  request.set_max_tokens(1);
  auto result = fake.client->OpenSession("s").GenerateAll(request);
  ASSERT_FALSE(result.ok());
  const absl::Status& s = result.status();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  EXPECT_THAT(std::string(s.message()),
              ::testing::HasSubstr("generate ended without done"));
  EXPECT_EQ(GetReasonName(s), "") << s;
  EXPECT_TRUE(IsRetryable(s));
  EXPECT_EQ(service.calls(), 2);
}

}  // namespace
}  // namespace statestream
