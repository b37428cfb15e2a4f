// SPDX-License-Identifier: Apache-2.0
// The bad-input tables' fixture: a real `statestream serve` process (demo
// model), or, built into api_gateway_e2e_test (STATESTREAM_E2E_GATEWAY), a
// gateway and a worker over Redis (tests/serve_fixture.h). Each Case is one
// malformed Sessions or Streams call and the gRPC code, ErrorInfo reason
// and `field` (plus `limit`, `token`, `detail`, ...) metadata the server
// must answer with; the tests then check the targeted session unchanged.
// The tables, by rpc family: api_bad_input_sessions_e2e_test.cc,
// api_bad_input_import_e2e_test.cc, api_bad_input_streams_e2e_test.cc.
// `NOTE:` comments there mark where the proto's contract says otherwise.
#ifndef STATESTREAM_TESTS_API_BAD_INPUT_FIXTURE_H_
#define STATESTREAM_TESTS_API_BAD_INPUT_FIXTURE_H_

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/crc32c.h"
#include "common/grpc_status.h"
#include "common/status.h"
#include "gtest/gtest.h"
#include "statestream/v1/statestream.grpc.pb.h"
#include "tests/serve_fixture.h"

namespace statestream {

// SessionManagerOptions::max_generate_tokens (worker/session_manager.h);
// `serve` has no flag that changes it.
inline constexpr uint32_t kMaxGenerateTokens = 8192;
// kMaxAppendTokens and kMaxTextBytes (worker/session_manager_internal.h).
inline constexpr int kMaxAppendTokens = 262144;
inline constexpr size_t kMaxTextBytes = 1 << 20;

// The typed error a malformed request must get.
struct Want {
  absl::StatusCode code;
  Reason reason;
  std::string field;        // the `field` metadata; "" when none is expected
  ErrorMetadata more = {};  // further metadata that must be present
};
inline Want WantField(std::string field,
                      Reason reason = Reason::kInvalidArgument,
                      ErrorMetadata more = {}) {
  return {absl::StatusCode::kInvalidArgument, reason, std::move(field),
          std::move(more)};
}
inline Want WantTooLarge(std::string field, std::string limit) {
  return WantField(std::move(field), Reason::kMessageTooLarge,
                   {{"limit", std::move(limit)}});
}
// An error without `field` and with metadata `key` = `value`.
inline Want WantKey(absl::StatusCode code, Reason reason, std::string key,
                    std::string value) {
  return {code, reason, "", {{std::move(key), std::move(value)}}};
}
inline Want WantNoSession(std::string id) {
  return WantKey(absl::StatusCode::kNotFound, Reason::kSessionNotFound,
                 "session_id", std::move(id));
}
inline Want WantNoVersion(std::string version) {
  return WantKey(absl::StatusCode::kNotFound, Reason::kVersionMismatch,
                 "version", std::move(version));
}
inline Want WantCorrupt(std::string detail) {
  return WantKey(absl::StatusCode::kDataLoss, Reason::kStateCorrupt, "detail",
                 std::move(detail));
}

// One malformed request: `call` sends it.
struct Case {
  std::string name;
  std::function<absl::Status()> call;
  Want want;
};

class ApiBadInputE2eTest : public e2e::ServeTest {
 protected:
  // A unary call, e.g. Call(sessions_.get(), &v1::Sessions::Stub::GetSession,
  // req); the response is dropped.
  template <typename Stub, typename Req, typename Resp>
  static absl::Status Call(Stub* stub,
                           grpc::Status (Stub::*method)(grpc::ClientContext*,
                                                        const Req&, Resp*),
                           const Req& req) {
    Resp resp;
    auto ctx = Ctx();
    return FromGrpcStatus((stub->*method)(ctx.get(), req, &resp));
  }

  // Makes Case calls of one unary method: each sends `base` changed by an
  // edit, e.g. upd([](auto* r) { r->clear_request_id(); }).
  template <typename Stub, typename Req, typename Resp>
  static auto Editor(Stub* stub,
                     grpc::Status (Stub::*method)(grpc::ClientContext*,
                                                  const Req&, Resp*),
                     Req base) {
    return [=](std::function<void(Req*)> edit) {
      return std::function<absl::Status()>([=] {
        Req r = base;
        edit(&r);
        return Call(stub, method, r);
      });
    };
  }

  absl::StatusOr<v1::Session> Get(const std::string& id) {
    v1::GetSessionRequest req;
    req.set_session_id(id);
    v1::Session s;
    const grpc::Status st = sessions_->GetSession(Ctx().get(), req, &s);
    if (!st.ok()) return FromGrpcStatus(st);
    return s;
  }

  // Creates `id` (version 1); a non-empty `text` is appended, flushed and
  // checkpointed (version 2).
  absl::Status CreateWithText(const std::string& id, const std::string& text) {
    v1::CreateSessionRequest req;
    req.set_request_id("create-" + id);
    req.set_session_id(id);
    SS_RETURN_IF_ERROR(
        Call(sessions_.get(), &v1::Sessions::Stub::CreateSession, req));
    if (text.empty()) return absl::OkStatus();
    v1::AppendRequest r = Text(id, 0, text);
    r.set_flush(true);
    r.set_checkpoint(true);
    return Append({r}).status;
  }

  // The vocab_size of `model_id`, from Models.ListModels (0 if not listed).
  uint32_t VocabOf(const std::string& model_id) {
    v1::ListModelsResponse list;
    auto ctx = Ctx();
    grpc::Status st =
        models_->ListModels(ctx.get(), v1::ListModelsRequest(), &list);
    EXPECT_TRUE(st.ok()) << FromGrpcStatus(st);
    for (const v1::Model& m : list.models()) {
      if (m.model_id() == model_id) return m.vocab_size();
    }
    return 0;
  }

  // Reads a Generate call to its end; only the status is kept.
  absl::Status GenerateStatus(const v1::GenerateRequest& req) {
    auto ctx = Ctx();
    auto reader = streams_->Generate(ctx.get(), req);
    v1::GenerateResponse msg;
    while (reader->Read(&msg)) {
    }
    return FromGrpcStatus(reader->Finish());
  }

  // One ExportState call of `version` of `id`; the header and the blob go
  // to `header` and `blob` if given.
  absl::Status Export(const std::string& id, uint64_t version,
                      v1::StateHeader* header = nullptr,
                      std::string* blob = nullptr) {
    v1::ExportStateRequest req;
    req.set_session_id(id);
    req.set_version(version);
    auto ctx = Ctx();
    auto reader = sessions_->ExportState(ctx.get(), req);
    v1::ExportStateResponse msg;
    while (reader->Read(&msg)) {
      if (msg.has_header() && header != nullptr) *header = msg.header();
      if (msg.has_chunk() && blob != nullptr) *blob += msg.chunk().data();
    }
    return FromGrpcStatus(reader->Finish());
  }

  // `header`, then `blob` in chunks of header.state().chunk_bytes, each with
  // its CRC32C.
  static std::vector<v1::ImportStateRequest> ImportMessages(
      const v1::ImportHeader& header, const std::string& blob) {
    std::vector<v1::ImportStateRequest> out(1);
    *out[0].mutable_header() = header;
    const size_t chunk = header.state().chunk_bytes();
    uint32_t index = 0;
    for (size_t at = 0; chunk > 0 && at < blob.size(); at += chunk) {
      const std::string piece = blob.substr(at, chunk);
      v1::StateChunk* c = out.emplace_back().mutable_chunk();
      c->set_index(index++);
      c->set_crc32c(Crc32c(0, piece.data(), piece.size()));
      c->set_data(piece);
    }
    return out;
  }

  // One ImportState call sending `messages` as they are.
  absl::Status ImportRaw(const std::vector<v1::ImportStateRequest>& messages) {
    auto ctx = Ctx();
    v1::Session out;
    auto writer = sessions_->ImportState(ctx.get(), &out);
    for (const auto& m : messages) {
      if (!writer->Write(m)) break;
    }
    writer->WritesDone();
    return FromGrpcStatus(writer->Finish());
  }

  static void ExpectCase(const Case& c) {
    SCOPED_TRACE(c.name);
    const absl::Status st = c.call();
    const Want& w = c.want;
    EXPECT_EQ(st.code(), w.code) << st;
    EXPECT_EQ(ReasonName(GetReason(st)), ReasonName(w.reason)) << st;
    const std::optional<std::string> field =
        w.field.empty() ? std::nullopt : std::optional<std::string>(w.field);
    EXPECT_EQ(GetErrorMetadata(st, "field"), field) << st;
    for (const auto& [key, value] : w.more) {
      EXPECT_EQ(GetErrorMetadata(st, key), value) << key << "; " << st;
    }
  }
  static void ExpectCases(const std::vector<Case>& cases) {
    for (const Case& c : cases) ExpectCase(c);
  }

  // Nothing was applied: `id` is at `version` and `input_offset`.
  void ExpectAt(const std::string& id, uint64_t version, uint64_t offset) {
    auto s = Get(id);
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_EQ(s->version(), version) << id;
    EXPECT_EQ(s->input_offset(), offset) << id;
  }
  // Nothing was created.
  void ExpectGone(const std::vector<std::string>& ids) {
    for (const std::string& id : ids) {
      EXPECT_EQ(GetReason(Get(id).status()), Reason::kSessionNotFound) << id;
    }
  }
};

}  // namespace statestream

#endif  // STATESTREAM_TESTS_API_BAD_INPUT_FIXTURE_H_
