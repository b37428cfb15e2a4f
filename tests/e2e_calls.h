// SPDX-License-Identifier: Apache-2.0
// Client calls the end-to-end tests of real servers share: a context with
// a deadline and a tenant, one whole Append or Generate call, one export,
// and deterministic text.
#ifndef STATESTREAM_TESTS_E2E_CALLS_H_
#define STATESTREAM_TESTS_E2E_CALLS_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "common/grpc_status.h"
#include "statestream/v1/statestream.grpc.pb.h"

namespace statestream::e2e {

// A client context with a 120 s deadline, for `tenant` when not empty
// (x-statestream-tenant: servers without API keys).
inline std::unique_ptr<grpc::ClientContext> Ctx(
    const std::string& tenant = "") {
  auto ctx = std::make_unique<grpc::ClientContext>();
  ctx->set_deadline(std::chrono::system_clock::now() +
                    std::chrono::seconds(120));
  if (!tenant.empty()) ctx->AddMetadata("x-statestream-tenant", tenant);
  return ctx;
}

// One Append call: `text` at input offset `at` (a fresh request id),
// half-closed, every ack read. Returns the call's status; *ack is the last
// ack (untouched if none came).
inline grpc::Status AppendText(v1::Streams::Stub* streams,
                               const std::string& tenant,
                               const std::string& session, uint64_t at,
                               const std::string& text, bool checkpoint,
                               v1::AppendResponse* ack) {
  static std::atomic<int> next_request{0};
  v1::AppendRequest append;
  append.set_session_id(session);
  append.set_request_id(absl::StrCat("append-", next_request++));
  append.set_expected_input_offset(at);
  append.set_text_utf8(text);
  append.set_checkpoint(checkpoint);
  auto ctx = Ctx(tenant);
  auto stream = streams->Append(ctx.get());
  stream->Write(append);
  stream->WritesDone();
  while (stream->Read(ack)) {
  }
  return stream->Finish();
}

// What one Generate call streamed: its tokens, its GenerateDone (empty if
// none came), how many messages, and how it ended.
struct Generated {
  std::vector<uint32_t> tokens;
  v1::GenerateDone done;
  int messages = 0;
  absl::Status status;
};

// One Generate call of `request`, read to its end.
inline Generated GenerateAll(v1::Streams::Stub* streams,
                             const v1::GenerateRequest& request,
                             const std::string& tenant = "") {
  Generated out;
  auto ctx = Ctx(tenant);
  auto reader = streams->Generate(ctx.get(), request);
  v1::GenerateResponse msg;
  while (reader->Read(&msg)) {
    ++out.messages;
    for (uint32_t t : msg.chunk().tokens()) out.tokens.push_back(t);
    if (msg.has_done()) out.done = msg.done();
  }
  out.status = FromGrpcStatus(reader->Finish());
  return out;
}

// `n` deterministic chunks of `size` printable ASCII bytes.
inline std::vector<std::string> TextChunks(int n, int size, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<std::string> chunks;
  for (int i = 0; i < n; ++i) {
    std::string c;
    for (int j = 0; j < size; ++j) c.push_back(' ' + rng() % 90);
    chunks.push_back(c);
  }
  return chunks;
}

// The session's state as ExportState streams it (its chunks' bytes,
// through `ctx`), or the call's error.
inline absl::StatusOr<std::string> ExportBlob(
    v1::Sessions::Stub* sessions, const std::string& session,
    std::unique_ptr<grpc::ClientContext> ctx) {
  v1::ExportStateRequest req;
  req.set_session_id(session);
  auto reader = sessions->ExportState(ctx.get(), req);
  v1::ExportStateResponse msg;
  std::string blob;
  while (reader->Read(&msg)) {
    if (msg.has_chunk()) blob += msg.chunk().data();
  }
  const grpc::Status st = reader->Finish();
  if (!st.ok()) return FromGrpcStatus(st);
  return blob;
}

}  // namespace statestream::e2e

#endif  // STATESTREAM_TESTS_E2E_CALLS_H_
