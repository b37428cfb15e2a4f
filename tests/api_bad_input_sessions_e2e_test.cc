// SPDX-License-Identifier: Apache-2.0
// Bad input to the Sessions rpcs but ImportState (CreateSession,
// GetSession, UpdateSession, ListSessions, ListVersions, RollbackSession,
// ExportState), and durabilities the store never reaches: a typed error,
// nothing changed (tests/api_bad_input_fixture.h).
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "statestream/v1/statestream.grpc.pb.h"
#include "tests/api_bad_input_fixture.h"

namespace statestream {
namespace {

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

}  // namespace
}  // namespace statestream
