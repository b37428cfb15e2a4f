// SPDX-License-Identifier: Apache-2.0
// The public API of a real `statestream serve` process refusing what it
// must: typed errors for bad input, another tenant's sessions out of reach
// of every call, rollback and import checking the head and the kept
// versions. Built a second time (api_gateway_e2e_test), the same through
// a gateway and a worker over Redis (tests/serve_fixture.h).
#include <string>
#include <vector>

#include "tests/worker_e2e_fixture.h"

namespace statestream {
namespace {

TEST_F(WorkerE2eTest, BadInputGetsTypedErrors) {
  Create("bad");
  v1::AppendRequest tokens;
  tokens.set_session_id("bad");
  tokens.mutable_tokens()->add_ids(65);
  tokens.mutable_tokens()->add_ids(300);  // vocab is 256
  absl::Status st = Append({tokens}).status;
  EXPECT_EQ(GetReason(st), Reason::kInvalidToken) << st;
  st = Append({Text("bad", 0, "ok\xFF")}).status;
  EXPECT_EQ(GetReason(st), Reason::kInvalidUtf8) << st;
  // input_offset: the input offset of the first invalid byte.
  EXPECT_EQ(GetErrorMetadata(st, "input_offset"), "2") << st;
  st = Append({Text("bad", 0, "caf\xC3", true)}).status;  // incomplete
  EXPECT_EQ(GetReason(st), Reason::kInvalidUtf8) << st;
  EXPECT_EQ(GetErrorMetadata(st, "input_offset"), "3") << st;
  // Half a character pending: text that does not continue it is refused,
  // and the message says why (the session otherwise looks stuck).
  Create("half");
  ASSERT_TRUE(Append({Text("half", 0, "ok \xE2\x82")}).status.ok());
  st = Append({Text("half", 5, "next")}).status;
  EXPECT_EQ(GetReason(st), Reason::kInvalidUtf8) << st;
  EXPECT_NE(st.message().find("does not continue the incomplete UTF-8 "
                              "character the session's text ends with (2 "
                              "bytes from input_offset 3)"),
            std::string::npos)
      << st;
  // Its rest ("\xAC" of the euro sign) is taken.
  EXPECT_TRUE(Append({Text("half", 5, "\xAC.", true)}).status.ok());
  st = Append({Text("bad", 0, std::string((1 << 20) + 1, 'a'))}).status;
  EXPECT_EQ(GetReason(st), Reason::kMessageTooLarge) << st;
  auto got = Get("bad");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->input_offset(), 0u);  // nothing applied

  v1::GenerateRequest g = GenRequest("bad", "nothing-yet", 4, false);
  st = Generate(g).status;
  EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition) << st;
  EXPECT_EQ(GetReason(st), Reason::kInvalidArgument) << st;
  g.mutable_sampling()->set_top_p(2);
  g.mutable_prompt_tokens()->add_ids(1);
  st = Generate(g).status;
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(GetReason(st), Reason::kInvalidArgument) << st;
  EXPECT_EQ(GetErrorMetadata(st, "field"), "sampling.top_p") << st;
  g.mutable_sampling()->clear_top_p();
  g.add_stop_tokens(999);
  st = Generate(g).status;
  EXPECT_EQ(GetReason(st), Reason::kInvalidToken) << st;
  EXPECT_EQ(GetErrorMetadata(st, "field"), "stop_tokens") << st;
  EXPECT_EQ(GetErrorMetadata(st, "vocab_size"), "256") << st;
  // An id beyond int32 is reported as sent.
  g.clear_stop_tokens();
  g.mutable_prompt_tokens()->add_ids(4000000000u);
  st = Generate(g).status;
  EXPECT_EQ(GetReason(st), Reason::kInvalidToken) << st;
  EXPECT_EQ(GetErrorMetadata(st, "token"), "4000000000") << st;
  EXPECT_EQ(GetErrorMetadata(st, "field"), "prompt_tokens.ids") << st;

  v1::CreateSessionRequest create;
  create.set_request_id("wrong-model");
  create.set_model_id("no-such-model");
  v1::Session s;
  auto ctx = Ctx();
  st = FromGrpcStatus(sessions_->CreateSession(ctx.get(), create, &s));
  EXPECT_EQ(GetReason(st), Reason::kModelNotFound);
  create.set_model_id("");
  create.clear_request_id();
  auto ctx2 = Ctx();
  st = FromGrpcStatus(sessions_->CreateSession(ctx2.get(), create, &s));
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(GetReason(st), Reason::kInvalidArgument) << st;
  EXPECT_EQ(GetErrorMetadata(st, "field"), "request_id") << st;
  // A durability level this version does not know is refused, not taken
  // for the default (a lower level than asked).
  create.set_request_id("future-durability");
  create.set_durability(static_cast<v1::Durability>(4));
  auto ctx3 = Ctx();
  st = FromGrpcStatus(sessions_->CreateSession(ctx3.get(), create, &s));
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_EQ(GetErrorMetadata(st, "field"), "durability");
  v1::AppendRequest future = Text("bad", 0, "x", true, true);
  future.set_durability(static_cast<v1::Durability>(4));
  st = Append({future}).status;
  EXPECT_EQ(GetErrorMetadata(st, "field"), "durability") << st;

  EXPECT_EQ(GetReason(Get("missing").status()), Reason::kSessionNotFound);
  EXPECT_EQ(GetReason(Append({Text("missing", 0, "x")}).status),
            Reason::kSessionNotFound);
}

TEST_F(WorkerE2eTest, AnotherTenantsSessionIsNotFound) {
  Create("mine", "alice");
  ASSERT_TRUE(
      Append({Text("mine", 0, "secret", true, true)}, "alice").status.ok());
  auto theirs = Get("mine", "bob");
  EXPECT_EQ(theirs.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(GetReason(theirs.status()), Reason::kSessionNotFound);
  EXPECT_EQ(GetReason(Append({Text("mine", 6, "x")}, "bob").status),
            Reason::kSessionNotFound);
  EXPECT_EQ(
      GetReason(Generate(GenRequest("mine", "g", 2, false), "bob").status),
      Reason::kSessionNotFound);
  absl::Status st;
  Export("mine", &st, nullptr, "bob");
  EXPECT_EQ(GetReason(st), Reason::kSessionNotFound);
  EXPECT_TRUE(Get("mine", "alice").ok());
  // A malformed tenant is UNAUTHENTICATED.
  EXPECT_EQ(Get("mine", "Not A Tenant").status().code(),
            absl::StatusCode::kUnauthenticated);
}

// Every call that names a session finds another tenant's NOT_FOUND: none
// reads, changes, forks, replaces or deletes it, and the same id is free
// in the caller's own tenant.
TEST_F(WorkerE2eTest, NoCallReachesAnotherTenantsSession) {
  Create("held", "alice");
  ASSERT_TRUE(
      Append({Text("held", 0, "secret", true, true)}, "alice").status.ok());
  ASSERT_TRUE(Append({Text("held", 6, "!", true, true)}, "alice").status.ok());
  v1::StateHeader header;
  const std::string blob = Export("held", nullptr, &header, "alice");
  auto not_found = [](const grpc::Status& st) {
    const absl::Status s = FromGrpcStatus(st);
    EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
    EXPECT_EQ(GetReason(s), Reason::kSessionNotFound) << s;
  };
  v1::Session out;
  {
    v1::UpdateSessionRequest u;
    u.set_request_id("bob-update");
    u.set_session_id("held");
    (*u.mutable_labels())["owner"] = "bob";
    u.mutable_update_mask()->add_paths("labels");
    not_found(sessions_->UpdateSession(Ctx("bob").get(), u, &out));
  }
  {
    v1::ListVersionsRequest l;
    l.set_session_id("held");
    v1::ListVersionsResponse r;
    not_found(sessions_->ListVersions(Ctx("bob").get(), l, &r));
  }
  {
    v1::RollbackSessionRequest r;
    r.set_request_id("bob-rollback");
    r.set_session_id("held");
    r.set_version(1);
    not_found(sessions_->RollbackSession(Ctx("bob").get(), r, &out));
  }
  {
    v1::ScoreRequest r;
    r.set_session_id("held");
    r.set_text_utf8("x");
    v1::ScoreResponse resp;
    not_found(streams_->Score(Ctx("bob").get(), r, &resp));
  }
  {
    v1::CreateSessionRequest fork;
    fork.set_request_id("bob-fork");
    fork.set_session_id("bobs-copy");
    fork.mutable_fork_from()->set_session_id("held");
    not_found(sessions_->CreateSession(Ctx("bob").get(), fork, &out));
  }
  {
    v1::ImportHeader h;
    h.set_request_id("bob-import");
    h.set_session_id("held");
    h.set_mode(v1::IMPORT_MODE_NEW_VERSION);
    *h.mutable_state() = header;
    const absl::Status st = Import(h, blob, "bob");
    EXPECT_EQ(GetReason(st), Reason::kSessionNotFound) << st;
  }
  {
    v1::DeleteSessionRequest d;
    d.set_request_id("bob-delete");
    d.set_session_id("held");
    v1::DeleteSessionResponse r;
    not_found(sessions_->DeleteSession(Ctx("bob").get(), d, &r));
    d.set_request_id("bob-delete-missing");
    d.set_allow_missing(true);
    EXPECT_TRUE(sessions_->DeleteSession(Ctx("bob").get(), d, &r).ok());
  }
  {
    v1::ListSessionsRequest l;
    v1::ListSessionsResponse r;
    ASSERT_TRUE(sessions_->ListSessions(Ctx("bob").get(), l, &r).ok());
    for (const v1::Session& s : r.sessions()) EXPECT_NE(s.session_id(), "held");
  }
  // Alice's session is as she left it.
  auto mine = Get("held", "alice");
  ASSERT_TRUE(mine.ok()) << mine.status();
  EXPECT_EQ(mine->version(), 3u);
  EXPECT_EQ(mine->input_offset(), 7u);
  EXPECT_TRUE(mine->labels().empty());
  EXPECT_EQ(Export("held", nullptr, nullptr, "alice"), blob);
  // The id is bob's to use in his tenant, apart from alice's.
  v1::Session bobs = Create("held", "bob");
  EXPECT_EQ(bobs.input_offset(), 0u);
  EXPECT_EQ(Get("held", "alice")->input_offset(), 7u);
}

// Compare-and-set and kept versions: a Rollback or a NEW_VERSION Import
// whose expected_version is not the head is FAILED_PRECONDITION with the
// head's number and changes nothing; a version not kept (never made, or
// expired past the newest 8) is NOT_FOUND, both VERSION_MISMATCH.
TEST_F(WorkerE2eTest, RollbackAndImportCheckTheHeadAndKeptVersions) {
  Create("cas");
  uint64_t offset = 0;
  for (int i = 0; i < 10; ++i) {  // versions 2..11: 1-3 expire
    ASSERT_TRUE(
        Append({Text("cas", offset, absl::StrCat(i), true, true)}).status.ok());
    offset += 1;
  }
  auto rollback = [&](const std::string& request_id, uint64_t version,
                      std::optional<uint64_t> expected) {
    v1::RollbackSessionRequest r;
    r.set_request_id(request_id);
    r.set_session_id("cas");
    r.set_version(version);
    if (expected) r.set_expected_version(*expected);
    v1::Session out;
    grpc::Status st = sessions_->RollbackSession(Ctx().get(), r, &out);
    if (!st.ok()) return absl::StatusOr<v1::Session>(FromGrpcStatus(st));
    return absl::StatusOr<v1::Session>(out);
  };
  auto stale = rollback("stale", 8, 10);
  EXPECT_EQ(stale.status().code(), absl::StatusCode::kFailedPrecondition)
      << stale.status();
  EXPECT_EQ(GetReason(stale.status()), Reason::kVersionMismatch);
  EXPECT_EQ(GetErrorMetadata(stale.status(), "head_version"), "11");
  for (uint64_t gone : {uint64_t{2}, uint64_t{12}}) {
    auto missing = rollback(absl::StrCat("missing-", gone), gone, 11);
    EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound)
        << missing.status();
    EXPECT_EQ(GetReason(missing.status()), Reason::kVersionMismatch);
    EXPECT_EQ(GetErrorMetadata(missing.status(), "head_version"), "11");
  }
  ASSERT_EQ(Get("cas")->version(), 11u);
  auto done = rollback("exact", 8, 11);  // v8 holds 7 bytes of input
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_EQ(done->version(), 12u);
  EXPECT_EQ(done->input_offset(), 7u);

  v1::StateHeader header;
  const std::string blob = Export("cas", nullptr, &header);
  v1::ImportHeader h;
  h.set_request_id("import-stale");
  h.set_session_id("cas");
  h.set_mode(v1::IMPORT_MODE_NEW_VERSION);
  *h.mutable_state() = header;
  h.set_expected_version(11);
  const absl::Status refused = Import(h, blob);
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition) << refused;
  EXPECT_EQ(GetReason(refused), Reason::kVersionMismatch);
  EXPECT_EQ(GetErrorMetadata(refused, "head_version"), "12");
  h.set_request_id("import-exact");
  h.set_expected_version(12);
  ASSERT_TRUE(Import(h, blob).ok());
  EXPECT_EQ(Get("cas")->version(), 13u);
}

// Stop strings, logit bias and top_k reach the sampler through the API: a
// stop string spanning tokens ends the output at the token completing it
// (and a committing run commits exactly that output), a bias of -1e9 bans
// a token, top_k = 1 is greedy at any temperature.
}  // namespace
}  // namespace statestream
