// SPDX-License-Identifier: Apache-2.0
// Bad input to the public API of a real `statestream serve` process (demo
// model) gets a typed error and changes nothing; built a second time
// (api_gateway_e2e_test), the same through a gateway and a
// worker over Redis (tests/serve_fixture.h). Table-driven: each case is
// one malformed Sessions or Streams call and the gRPC code, ErrorInfo reason
// and `field` (plus `limit`, `token`, `detail`, ...) metadata the server
// code answers with; the targeted session is then checked unchanged.
// `NOTE:` comments mark where the proto's contract says otherwise.
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "common/crc32c.h"
#include "common/grpc_status.h"
#include "common/status.h"
#include "gtest/gtest.h"
#include "statestream/v1/statestream.grpc.pb.h"
#include "tests/serve_fixture.h"
#include "tests/subprocess.h"

namespace statestream {
namespace {

// SessionManagerOptions::max_generate_tokens (worker/session_manager.h);
// `serve` has no flag that changes it.
constexpr uint32_t kMaxGenerateTokens = 8192;
// kMaxAppendTokens and kMaxTextBytes (worker/session_manager_internal.h).
constexpr int kMaxAppendTokens = 262144;
constexpr size_t kMaxTextBytes = 1 << 20;

// The typed error a malformed request must get.
struct Want {
  absl::StatusCode code;
  Reason reason;
  std::string field;        // the `field` metadata; "" when none is expected
  ErrorMetadata more = {};  // further metadata that must be present
};
Want WantField(std::string field, Reason reason = Reason::kInvalidArgument,
               ErrorMetadata more = {}) {
  return {absl::StatusCode::kInvalidArgument, reason, std::move(field),
          std::move(more)};
}
Want WantTooLarge(std::string field, std::string limit) {
  return WantField(std::move(field), Reason::kMessageTooLarge,
                   {{"limit", std::move(limit)}});
}
// An error without `field` and with metadata `key` = `value`.
Want WantKey(absl::StatusCode code, Reason reason, std::string key,
             std::string value) {
  return {code, reason, "", {{std::move(key), std::move(value)}}};
}
Want WantNoSession(std::string id) {
  return WantKey(absl::StatusCode::kNotFound, Reason::kSessionNotFound,
                 "session_id", std::move(id));
}
Want WantNoVersion(std::string version) {
  return WantKey(absl::StatusCode::kNotFound, Reason::kVersionMismatch,
                 "version", std::move(version));
}
Want WantCorrupt(std::string detail) {
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

TEST_F(ApiBadInputE2eTest, UpdateSession) {
  ASSERT_TRUE(CreateWithText("upd", "").ok());
  v1::UpdateSessionRequest base;
  base.set_request_id("upd-1");
  base.set_session_id("upd");
  // Control: a valid update, which the bad ones below must not change.
  v1::UpdateSessionRequest good = base;
  (*good.mutable_labels())["keep"] = "yes";
  good.mutable_ttl()->set_seconds(3600);
  good.mutable_ttl()->set_nanos(250000000);
  good.mutable_update_mask()->add_paths("labels");
  good.mutable_update_mask()->add_paths("ttl");
  const absl::Status applied =
      Call(sessions_.get(), &v1::Sessions::Stub::UpdateSession, good);
  ASSERT_TRUE(applied.ok()) << applied;
  (*base.mutable_labels())["keep"] = "no";  // would show if applied
  base.mutable_update_mask()->add_paths("labels");
  auto upd = Editor(sessions_.get(), &v1::Sessions::Stub::UpdateSession, base);
  ExpectCases({
      {"empty update_mask", upd([](auto* r) { r->clear_update_mask(); }),
       WantField("update_mask")},
      // After "labels", which is not applied either.
      {"unknown mask path model_id",
       upd([](auto* r) { r->mutable_update_mask()->add_paths("model_id"); }),
       WantField("update_mask")},
      {"repeated mask path labels",
       upd([](auto* r) { r->mutable_update_mask()->add_paths("labels"); }),
       WantField("update_mask")},
      {"label key 'a b'",
       upd([](auto* r) { (*r->mutable_labels())["a b"] = "v"; }),
       WantField("labels")},
      {"ttl 0.5 s", upd([](auto* r) {
         r->mutable_ttl()->set_nanos(500000000);
         r->mutable_update_mask()->set_paths(0, "ttl");
       }),
       WantField("ttl")},
      {"missing request_id", upd([](auto* r) { r->clear_request_id(); }),
       WantField("request_id")},
      {"unknown session",
       upd([](auto* r) { r->set_session_id("upd-missing"); }),
       WantNoSession("upd-missing")},
  });
  auto s = Get("upd");
  ASSERT_TRUE(s.ok()) << s.status();
  ASSERT_EQ(s->labels().size(), 1u);
  EXPECT_EQ(s->labels().at("keep"), "yes");
  // As set, to the millisecond (it was cut to whole seconds).
  EXPECT_EQ(s->ttl().seconds(), 3600);
  EXPECT_EQ(s->ttl().nanos(), 250000000);
}

TEST_F(ApiBadInputE2eTest, ListRollbackAndExport) {
  ASSERT_TRUE(CreateWithText("rb", "abc").ok());  // versions 1, 2
  v1::ListVersionsRequest list;
  list.set_session_id("rb");
  auto lv = Editor(sessions_.get(), &v1::Sessions::Stub::ListVersions, list);
  auto ls = Editor(sessions_.get(), &v1::Sessions::Stub::ListSessions,
                   v1::ListSessionsRequest());
  v1::RollbackSessionRequest rollback;
  rollback.set_request_id("rb-1");
  rollback.set_session_id("rb");
  rollback.set_version(1);
  auto rb =
      Editor(sessions_.get(), &v1::Sessions::Stub::RollbackSession, rollback);
  auto exp = [this](const std::string& id, uint64_t version) {
    return std::function<absl::Status()>(
        [this, id, version] { return Export(id, version); });
  };
  ASSERT_TRUE(lv([](auto*) {})().ok());  // controls
  ASSERT_TRUE(exp("rb", 2)().ok());
  ExpectCases({
      // NOTE: the proto lists only NOT_FOUND/SESSION_NOT_FOUND for
      // ListVersions; the code (sessions_service.cc) answers a malformed
      // page_token INVALID_ARGUMENT (field page_token), after the session
      // lookup (so an unknown session with a bad token is NOT_FOUND).
      {"ListVersions page_token 'x'",
       lv([](auto* r) { r->set_page_token("x"); }), WantField("page_token")},
      {"ListVersions unknown session",
       lv([](auto* r) { r->set_session_id("lv-missing"); }),
       WantNoSession("lv-missing")},
      {"ListSessions page_token 'garbage!'",
       ls([](auto* r) { r->set_page_token("garbage!"); }),
       WantField("page_token")},
      // A selector no label could match is malformed, as labels are.
      {"ListSessions label_selector with an empty key",
       ls([](auto* r) { (*r->mutable_label_selector())[""] = "x"; }),
       WantField("label_selector")},
      {"ListSessions label_selector key 'a b'",
       ls([](auto* r) { (*r->mutable_label_selector())["a b"] = "x"; }),
       WantField("label_selector")},
      {"ListSessions label_selector value of 256 bytes", ls([](auto* r) {
         (*r->mutable_label_selector())["k"] = std::string(256, 'v');
       }),
       WantTooLarge("label_selector", "255")},
      {"ListSessions label_selector of 65 labels", ls([](auto* r) {
         for (int i = 0; i < 65; ++i) {
           const std::string key = {'k', static_cast<char>('a' + i / 26),
                                    static_cast<char>('a' + i % 26)};
           r->mutable_label_selector()->insert({key, "v"});
         }
       }),
       WantTooLarge("label_selector", "64")},
      {"Rollback version 0", rb([](auto* r) { r->set_version(0); }),
       WantField("version")},
      {"Rollback unknown session",
       rb([](auto* r) { r->set_session_id("rb-missing"); }),
       WantNoSession("rb-missing")},
      {"Rollback durability 9",
       rb([](auto* r) { r->set_durability(static_cast<v1::Durability>(9)); }),
       WantField("durability")},
      {"Export version 99", exp("rb", 99), WantNoVersion("99")},
      // NOTE: the proto's ExportState errors list no INVALID_ARGUMENT; the
      // code (ExportReactor) checks session_id first: INVALID_ARGUMENT,
      // field session_id.
      {"Export session_id 'bad id'", exp("bad id", 0), WantField("session_id")},
  });
  ExpectAt("rb", 2, 3);
}

TEST_F(ApiBadInputE2eTest, ImportState) {
  // A valid blob and header: an export of a session with some input.
  ASSERT_TRUE(CreateWithText("imp-src", "some state").ok());  // versions 1, 2
  v1::StateHeader header;
  std::string blob;
  const absl::Status exported = Export("imp-src", 0, &header, &blob);
  ASSERT_TRUE(exported.ok()) << exported;
  ASSERT_EQ(header.total_bytes(), blob.size());
  ASSERT_GE(blob.size(), 16u);
  // A CREATE import of the blob as `id`, its messages changed by `edit`.
  using Messages = std::vector<v1::ImportStateRequest>;
  auto imp = [&](const std::string& id, std::function<void(Messages*)> edit) {
    return std::function<absl::Status()>([&, id, edit] {
      v1::ImportHeader h;
      h.set_request_id("import-" + id);
      h.set_session_id(id);
      h.set_mode(v1::IMPORT_MODE_CREATE);
      *h.mutable_state() = header;
      Messages m = ImportMessages(h, blob);
      edit(&m);
      return ImportRaw(m);
    });
  };
  // The same blob in 4 chunks, so that one can go missing.
  v1::StateHeader small = header;
  small.set_chunk_bytes(static_cast<uint32_t>((blob.size() + 3) / 4));
  small.set_chunk_count(static_cast<uint32_t>(
      (blob.size() + small.chunk_bytes() - 1) / small.chunk_bytes()));
  ASSERT_GE(small.chunk_count(), 3u);
  auto without_chunk = [&](const std::string& id, uint32_t index) {
    return imp(id, [&, index](Messages* m) {
      v1::ImportHeader h = m->front().header();
      *h.mutable_state() = small;
      *m = ImportMessages(h, blob);
      m->erase(m->begin() + 1 + index);  // (*m)[0] is the header
    });
  };
  auto head = [](Messages* m) { return m->front().mutable_header(); };
  ExpectCases({
      {"mode UNSPECIFIED",
       imp("imp-mode",
           [&](Messages* m) {
             head(m)->set_mode(v1::IMPORT_MODE_UNSPECIFIED);
           }),
       WantField("mode")},
      {"missing request_id",
       imp("imp-rid", [&](Messages* m) { head(m)->clear_request_id(); }),
       WantField("request_id")},
      // The other mode's fields: a compare-and-set that never ran.
      {"CREATE with expected_version",
       imp("imp-cas", [&](Messages* m) { head(m)->set_expected_version(1); }),
       WantField("expected_version")},
      {"header without its state",
       imp("imp-nostate", [&](Messages* m) { head(m)->clear_state(); }),
       WantField("state")},
      // Malformed and of a model nobody serves: the malformed field, as
      // from serve (a gateway once answered for the model first).
      {"a bad label key and a foreign fingerprint",
       imp("imp-foreign",
           [&](Messages* m) {
             head(m)->mutable_state()->set_model_fingerprint("x070-nobody");
             (*head(m)->mutable_labels())["a b"] = "v";
           }),
       WantField("labels")},
      {"a chunk first",
       imp("imp-nohead", [](Messages* m) { m->erase(m->begin()); }),
       WantField("header")},
      {"chunk with a wrong crc32c",
       imp("imp-crc",
           [](Messages* m) {
             v1::StateChunk* c = (*m)[1].mutable_chunk();
             c->set_crc32c(c->crc32c() ^ 1);
           }),
       WantCorrupt("chunk 0 checksum mismatch")},
      {"last chunk missing",
       without_chunk("imp-short", small.chunk_count() - 1),
       WantCorrupt("missing chunks")},
      {"middle chunk missing", without_chunk("imp-gap", 1),
       WantCorrupt("chunk 2 out of order")},
      // A message gRPC cannot parse ends the stream UNIMPLEMENTED, as a
      // unary call's request (it was read as the end of the chunks:
      // "missing chunks").
      {"a message that does not parse (a request_id that is not UTF-8)",
       imp("imp-garbled",
           [](Messages* m) {
             v1::ImportStateRequest garbled;
             garbled.mutable_header()->set_request_id("\xFF");
             m->insert(m->begin() + 1, garbled);
           }),
       {absl::StatusCode::kUnimplemented, Reason::kUnspecified, "", {}}},
      {"NEW_VERSION into an unknown session",
       imp("imp-nowhere",
           [&](Messages* m) {
             head(m)->set_mode(v1::IMPORT_MODE_NEW_VERSION);
           }),
       WantNoSession("imp-nowhere")},
      // Labels that would never arrive (checked before the session).
      {"NEW_VERSION with labels",
       imp("imp-labels",
           [&](Messages* m) {
             head(m)->set_mode(v1::IMPORT_MODE_NEW_VERSION);
             (*head(m)->mutable_labels())["k"] = "v";
           }),
       WantField("labels")},
      {"NEW_VERSION with a ttl",
       imp("imp-ttl",
           [&](Messages* m) {
             head(m)->set_mode(v1::IMPORT_MODE_NEW_VERSION);
             head(m)->mutable_ttl()->set_seconds(60);
           }),
       WantField("ttl")},
      {"CREATE onto an existing id", imp("imp-src", [](Messages*) {}),
       WantKey(absl::StatusCode::kAlreadyExists, Reason::kSessionExists,
               "session_id", "imp-src")},
  });
  ExpectGone({"imp-mode", "imp-foreign", "imp-rid", "imp-nostate", "imp-nohead",
              "imp-crc", "imp-short", "imp-gap", "imp-garbled", "imp-nowhere",
              "imp-cas", "imp-labels", "imp-ttl"});
  ExpectAt("imp-src", 2, 10);
  // Control: the same messages under a free id import fine.
  const absl::Status ok = imp("imp-ok", [](Messages*) {})();
  EXPECT_TRUE(ok.ok()) << ok;
}

TEST_F(ApiBadInputE2eTest, CreateAndGetSession) {
  // A CreateSession of `id` (request_id "c-<id>"), changed by `edit`.
  auto cr = [this](const std::string& id,
                   std::function<void(v1::CreateSessionRequest*)> edit) {
    v1::CreateSessionRequest base;
    base.set_request_id("c-" + id);
    base.set_session_id(id);
    return Editor(sessions_.get(), &v1::Sessions::Stub::CreateSession,
                  base)(std::move(edit));
  };
  auto get = Editor(sessions_.get(), &v1::Sessions::Stub::GetSession,
                    v1::GetSessionRequest());
  ExpectCases({
      {"request_id of 65 bytes",
       cr("c-long-rid",
          [](auto* r) { r->set_request_id(std::string(65, 'r')); }),
       WantField("request_id")},
      {"session_id starting with '-'", cr("-dash", [](auto*) {}),
       WantField("session_id")},
      {"65 labels",
       cr("c-labels",
          [](auto* r) {
            for (int i = 0; i < 65; ++i) {
              r->mutable_labels()->insert({absl::StrCat("k", i), "v"});
            }
          }),
       WantTooLarge("labels", "64")},
      {"a label key of 64 bytes",
       cr("c-long-key",
          [](auto* r) {
            r->mutable_labels()->insert({std::string(64, 'k'), "v"});
          }),
       WantTooLarge("labels", "63")},
      {"a label value of 256 bytes",
       cr("c-long-value",
          [](auto* r) {
            r->mutable_labels()->insert({"k", std::string(256, 'v')});
          }),
       WantTooLarge("labels", "255")},
      {"an empty label key",
       cr("c-empty-key",
          [](auto* r) {
            r->mutable_labels()->insert({"", "v"});
          }),
       WantField("labels")},
      // Malformed and for a model nobody serves: the malformed field, as
      // from serve (a gateway once answered MODEL_NOT_FOUND first, or
      // UNAVAILABLE while it waited on workers, retried in vain).
      {"a bad label key and an unknown model",
       cr("c-bad-model",
          [](auto* r) {
            r->set_model_id("no-such-model");
            r->mutable_labels()->insert({"a b", "v"});
          }),
       WantField("labels")},
      {"an unknown durability and an unknown model",
       cr("c-bad-durability",
          [](auto* r) {
            r->set_model_id("no-such-model");
            r->set_durability(static_cast<v1::Durability>(9));
          }),
       WantField("durability")},
      // NOTE: the proto (label values are "at most 255 bytes of UTF-8") and
      // CheckLabels (api_convert.cc: INVALID_ARGUMENT, field labels) never
      // see this request: `labels` is a proto3 map<string, string>, so the
      // server's protobuf parser rejects the invalid UTF-8 first, and gRPC's
      // callback handler then fails the call UNIMPLEMENTED with an empty
      // message and no ErrorInfo (grpcpp server_callback_handlers.h). The
      // same holds for every `string` field (stop_strings, page_token, ...).
      {"label value \\xff",
       cr("c-utf8", [](auto* r) { (*r->mutable_labels())["k"] = "\xff"; }),
       {absl::StatusCode::kUnimplemented, Reason::kUnspecified, "", {}}},
      {"fork_from an unknown session",
       cr("c-fork",
          [](auto* r) {
            r->mutable_fork_from()->set_session_id("c-no-source");
          }),
       WantNoSession("c-no-source")},
      // NOTE: the proto lists only NOT_FOUND/SESSION_NOT_FOUND for
      // GetSession; the code checks session_id first: INVALID_ARGUMENT.
      {"GetSession with an empty session_id", get([](auto*) {}),
       WantField("session_id")},
  });
  ExpectGone({"c-long-rid", "c-labels", "c-utf8", "c-fork", "c-bad-model",
              "c-bad-durability"});
  // Control: the base request is valid.
  const absl::Status ok = cr("c-ok", [](auto*) {})();
  EXPECT_TRUE(ok.ok()) << ok;
}

// `serve` without --data-dir keeps sessions in memory, which never reaches
// FSYNC: every request asking for it (or REPLICATED) is refused before
// anything is written, FAILED_PRECONDITION (not UNAVAILABLE: a retry
// cannot help). It used to write the version at MEMORY and fail
// UNAVAILABLE, which the SDKs retried for seconds.
// (Not through a gateway: Redis is asked, WAIT or WAITAOF, and reports
// the level it reached; nothing is refused up front. ClusterDurabilityTest
// in cluster_ops_test.cc checks that end to end.)
#ifndef STATESTREAM_E2E_GATEWAY
TEST_F(ApiBadInputE2eTest, DurabilityTheStoreNeverReaches) {
  ASSERT_TRUE(CreateWithText("dur", "abc").ok());  // versions 1, 2
  const Want never = {absl::StatusCode::kFailedPrecondition,
                      Reason::kInvalidArgument,
                      "durability",
                      {{"max_durability", "MEMORY"}}};
  v1::CreateSessionRequest create;
  create.set_request_id("c-dur-new");
  create.set_session_id("dur-new");
  create.set_durability(v1::DURABILITY_FSYNC);
  auto cr = Editor(sessions_.get(), &v1::Sessions::Stub::CreateSession, create);
  v1::RollbackSessionRequest rollback;
  rollback.set_request_id("rb-dur");
  rollback.set_session_id("dur");
  rollback.set_version(1);
  rollback.set_durability(v1::DURABILITY_REPLICATED);
  v1::GenerateRequest generate;
  generate.set_session_id("dur");
  generate.set_request_id("gen-dur");
  generate.set_max_tokens(2);
  generate.set_commit(true);
  generate.set_durability(v1::DURABILITY_FSYNC);
  v1::StateHeader header;
  std::string blob;
  ASSERT_TRUE(Export("dur", 0, &header, &blob).ok());
  v1::ImportHeader import;
  import.set_request_id("import-dur");
  import.set_session_id("dur-imported");
  import.set_mode(v1::IMPORT_MODE_CREATE);
  import.set_durability(v1::DURABILITY_FSYNC);
  *import.mutable_state() = header;
  ExpectCases({
      {"CreateSession FSYNC", cr([](auto*) {}), never},
      {"CreateSession REPLICATED",
       cr([](auto* r) { r->set_durability(v1::DURABILITY_REPLICATED); }),
       never},
      {"a fork at FSYNC",
       cr([](auto* r) { r->mutable_fork_from()->set_session_id("dur"); }),
       never},
      {"RollbackSession REPLICATED",
       [&] {
         return Call(sessions_.get(), &v1::Sessions::Stub::RollbackSession,
                     rollback);
       },
       never},
      {"Append FSYNC",
       [&] {
         v1::AppendRequest r = Text("dur", 3, "de");
         r.set_checkpoint(true);
         r.set_durability(v1::DURABILITY_FSYNC);
         return Append({r}).status;
       },
       never},
      {"committing Generate FSYNC", [&] { return GenerateStatus(generate); },
       never},
      {"ImportState FSYNC",
       [&] { return ImportRaw(ImportMessages(import, blob)); }, never},
  });
  ExpectAt("dur", 2, 3);
  ExpectGone({"dur-new", "dur-imported"});
  // A side branch writes nothing: its durability is not the store's
  // business (an unknown level is still refused, see Generate).
  generate.set_commit(false);
  const absl::Status side = GenerateStatus(generate);
  EXPECT_TRUE(side.ok()) << side;
  ExpectAt("dur", 2, 3);
  // MEMORY (and the default) are fine.
  const absl::Status memory =
      cr([](auto* r) { r->set_durability(v1::DURABILITY_MEMORY); })();
  EXPECT_TRUE(memory.ok()) << memory;
}
#endif  // STATESTREAM_E2E_GATEWAY

TEST_F(ApiBadInputE2eTest, Generate) {
  ASSERT_TRUE(CreateWithText("gen", "hello").ok());  // versions 1, 2
  auto session = Get("gen");
  ASSERT_TRUE(session.ok()) << session.status();
  const uint32_t vocab = VocabOf(session->model_id());
  ASSERT_GT(vocab, 0u) << session->model_id();
  // Committing, so that anything applied would show.
  v1::GenerateRequest base;
  base.set_session_id("gen");
  base.set_request_id("gen-1");
  base.set_max_tokens(4);
  base.set_commit(true);
  base.mutable_sampling()->set_seed(7);
  auto gen = [this, base](std::function<void(v1::GenerateRequest*)> edit) {
    return std::function<absl::Status()>([this, base, edit] {
      v1::GenerateRequest g = base;
      edit(&g);
      return GenerateStatus(g);
    });
  };
  // Control: the base request is valid (as a side branch: no change).
  const absl::Status ok = gen([](auto* g) { g->set_commit(false); })();
  ASSERT_TRUE(ok.ok()) << ok;
  const std::vector<Case> cases = {
      {"unknown session",
       gen([](auto* g) { g->set_session_id("gen-missing"); }),
       WantNoSession("gen-missing")},
      {"prompt_text_utf8 'ok\\xff'",
       gen([](auto* g) { g->set_prompt_text_utf8("ok\xff"); }),
       WantField("prompt_text_utf8", Reason::kInvalidUtf8)},
      {"logit_bias on vocab_size + 44", gen([vocab](auto* g) {
         (*g->mutable_sampling()->mutable_logit_bias())[vocab + 44] = 1;
       }),
       WantField("sampling.logit_bias", Reason::kInvalidToken,
                 {{"token", absl::StrCat(vocab + 44)},
                  {"vocab_size", absl::StrCat(vocab)}})},
      {"max_tokens over the limit",
       gen([](auto* g) { g->set_max_tokens(kMaxGenerateTokens + 1); }),
       WantTooLarge("max_tokens", absl::StrCat(kMaxGenerateTokens))},
      {"17 stop_strings", gen([](auto* g) {
         for (int i = 0; i < 17; ++i) g->add_stop_strings(absl::StrCat(i));
       }),
       WantTooLarge("stop_strings", "16")},
      // A limit, as the count: it was INVALID_ARGUMENT without `limit`.
      {"a stop string of 257 bytes",
       gen([](auto* g) { g->add_stop_strings(std::string(257, 'a')); }),
       WantTooLarge("stop_strings", "256")},
      {"an empty stop string", gen([](auto* g) { g->add_stop_strings(""); }),
       WantField("stop_strings")},
      {"temperature -1",
       gen([](auto* g) { g->mutable_sampling()->set_temperature(-1); }),
       WantField("sampling.temperature")},
      {"top_logprobs 21", gen([](auto* g) {
         g->set_logprobs(true);
         g->set_top_logprobs(21);
       }),
       WantField("top_logprobs")},
      // Alternatives of log-probabilities not asked for were dropped.
      {"top_logprobs without logprobs",
       gen([](auto* g) { g->set_top_logprobs(2); }), WantField("top_logprobs")},
      {"prompt_tokens id = vocab_size",
       gen([vocab](auto* g) { g->mutable_prompt_tokens()->add_ids(vocab); }),
       WantField("prompt_tokens.ids", Reason::kInvalidToken,
                 {{"token", absl::StrCat(vocab)},
                  {"vocab_size", absl::StrCat(vocab)}})},
      {"stop_tokens id = vocab_size",
       gen([vocab](auto* g) { g->add_stop_tokens(vocab); }),
       WantField("stop_tokens", Reason::kInvalidToken,
                 {{"token", absl::StrCat(vocab)}})},
      {"prompt_text_utf8 over the limit", gen([](auto* g) {
         g->set_prompt_text_utf8(std::string(kMaxTextBytes + 1, 'a'));
       }),
       WantTooLarge("prompt_text_utf8", absl::StrCat(kMaxTextBytes))},
      {"durability 9 on a side branch", gen([](auto* g) {
         g->set_commit(false);
         g->set_durability(static_cast<v1::Durability>(9));
       }),
       WantField("durability")},
  };
  for (const Case& c : cases) {
    ExpectCase(c);
    ExpectAt("gen", session->version(), session->input_offset());
  }
}

TEST_F(ApiBadInputE2eTest, Score) {
  ASSERT_TRUE(CreateWithText("score", "hello").ok());  // versions 1, 2
  auto session = Get("score");
  ASSERT_TRUE(session.ok()) << session.status();
  const uint32_t vocab = VocabOf(session->model_id());
  ASSERT_GT(vocab, 0u) << session->model_id();
  v1::ScoreRequest base;
  base.set_session_id("score");
  base.set_text_utf8("x");
  auto score = Editor(streams_.get(), &v1::Streams::Stub::Score, base);
  const absl::Status ok = score([](auto*) {})();
  ASSERT_TRUE(ok.ok()) << ok;  // control
  ExpectCases({
      {"unknown session",
       score([](auto* r) { r->set_session_id("score-missing"); }),
       WantNoSession("score-missing")},
      {"text_utf8 '\\xff'", score([](auto* r) { r->set_text_utf8("\xff"); }),
       WantField("text_utf8", Reason::kInvalidUtf8)},
      {"token id = vocab_size",
       score([vocab](auto* r) { r->mutable_tokens()->add_ids(vocab); }),
       WantField("tokens.ids", Reason::kInvalidToken,
                 {{"token", absl::StrCat(vocab)},
                  {"vocab_size", absl::StrCat(vocab)}})},
      // NOTE: the proto's Score errors list FAILED_PRECONDITION/
      // INVALID_ARGUMENT (nothing consumed yet) but nothing for a missing
      // continuation ("Required"); the code (ScoreReactor) answers
      // INVALID_ARGUMENT/INVALID_ARGUMENT, field continuation.
      {"no continuation", score([](auto* r) { r->clear_continuation(); }),
       WantField("continuation")},
      {"version 99", score([](auto* r) { r->set_version(99); }),
       WantNoVersion("99")},
      // Checked only against the applied state; with a version it was
      // silently ignored.
      {"expected_input_offset with a version", score([](auto* r) {
         r->set_version(1);
         r->set_expected_input_offset(0);
       }),
       WantField("expected_input_offset")},
  });
}

TEST_F(ApiBadInputE2eTest, Append) {
  ASSERT_TRUE(CreateWithText("app", "").ok());
  auto session = Get("app");
  ASSERT_TRUE(session.ok()) << session.status();
  const uint32_t vocab = VocabOf(session->model_id());
  ASSERT_GT(vocab, 0u) << session->model_id();
  v1::AppendRequest bad_token;
  bad_token.set_session_id("app");
  bad_token.mutable_tokens()->add_ids(65);
  bad_token.mutable_tokens()->add_ids(vocab);
  v1::AppendRequest too_many;
  too_many.set_session_id("app");
  too_many.set_expected_input_offset(2);
  for (int i = 0; i <= kMaxAppendTokens; ++i) {
    too_many.mutable_tokens()->add_ids(97);
  }
  ExpectCases({
      {"token id = vocab_size", [&] { return Append({bad_token}).status; },
       WantField("tokens.ids", Reason::kInvalidToken,
                 {{"token", absl::StrCat(vocab)},
                  {"vocab_size", absl::StrCat(vocab)}})},
      {"text 'ok\\xff'",
       [&] { return Append({Text("app", 0, "ok\xFF")}).status; },
       WantField("text_utf8", Reason::kInvalidUtf8, {{"input_offset", "2"}})},
      {"text incomplete at a flush",
       [&] { return Append({Text("app", 0, "caf\xC3", true)}).status; },
       WantField("text_utf8", Reason::kInvalidUtf8, {{"input_offset", "3"}})},
      {"text over the limit",
       [&] {
         return Append({Text("app", 0, std::string(kMaxTextBytes + 1, 'a'))})
             .status;
       },
       WantTooLarge("text_utf8", absl::StrCat(kMaxTextBytes))},
      {"a gap: expected_input_offset 5 at 0",
       [&] { return Append({Text("app", 5, "x")}).status; },
       WantKey(absl::StatusCode::kFailedPrecondition, Reason::kPositionMismatch,
               "actual_input_offset", "0")},
  });
  ExpectAt("app", session->version(), 0);  // none of them applied
  ExpectCases({
      // The first request is applied and acked; the second fails the call.
      {"second request names another session",
       [&] {
         AppendResult r =
             Append({Text("app", 0, "ab"), Text("app-other", 2, "cd")});
         EXPECT_EQ(r.acks.size(), 1u) << r.status;
         return r.status;
       },
       WantField("session_id")},
      {"first request without session_id",
       [&] { return Append({Text("", 2, "cd")}).status; },
       WantField("session_id")},
      {"262145 tokens in one request",
       [&] { return Append({too_many}).status; },
       WantTooLarge("tokens.ids", absl::StrCat(kMaxAppendTokens))},
      // A message gRPC cannot parse ends the call UNIMPLEMENTED, as a
      // unary call's request; it used to read as the client's half-close,
      // the call ending OK without the requests after it.
      {"second request with a request_id that is not UTF-8",
       [&] {
         v1::AppendRequest garbled = Text("app", 4, "ef");
         garbled.set_request_id("\xFF");
         AppendResult r =
             Append({Text("app", 2, "cd"), garbled, Text("app", 4, "gh")});
         EXPECT_EQ(r.acks.size(), 1u) << r.status;
         return r.status;
       },
       {absl::StatusCode::kUnimplemented, Reason::kUnspecified, "", {}}},
  });
  // The acked requests only; those before the message that did not parse
  // committed, as at a half-close (and as a gateway does).
  auto s = Get("app");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->input_offset(), 4u);
  EXPECT_EQ(s->committed_input_offset(), 4u);
}

}  // namespace
}  // namespace statestream
