// SPDX-License-Identifier: Apache-2.0
// One real `statestream serve` process serving two models of different
// architectures (random tiny x070 and x060, byte-level) beside two
// single-model servers of the same models: sessions of both coexist, run
// concurrently and give exactly what the single-model servers give; every
// per-session rpc reaches the session's model; states never cross models
// (MODEL_MISMATCH); unknown model ids are typed errors. Then a cluster
// (tests/cluster_harness.h): a gateway routes sessions of every model of a
// multi-model worker to it.
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <unistd.h>

#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/crc32c.h"
#include "common/grpc_status.h"
#include "common/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "statestream/v1/statestream.grpc.pb.h"
#include "tests/cluster_harness.h"
#include "tests/subprocess.h"

namespace statestream {
namespace {

constexpr absl::Duration kStartTimeout = absl::Seconds(60);

// A `statestream serve` process and stubs on it.
struct Server {
  std::unique_ptr<e2e::Subprocess> process;
  std::unique_ptr<v1::Sessions::Stub> sessions;
  std::unique_ptr<v1::Streams::Stub> streams;
  std::unique_ptr<v1::Models::Stub> models;
};

std::unique_ptr<Server> StartServe(const std::vector<std::string>& flags) {
  std::vector<std::string> argv = {STATESTREAM_BIN, "serve",
                                   "--listen=127.0.0.1:0"};
  argv.insert(argv.end(), flags.begin(), flags.end());
  auto started = e2e::StartServer(argv, kStartTimeout);
  EXPECT_TRUE(started.ok()) << started.status();
  if (!started.ok()) return nullptr;
  auto s = std::make_unique<Server>();
  s->process = std::move(started->process);
  auto channel =
      grpc::CreateChannel(started->address, grpc::InsecureChannelCredentials());
  s->sessions = v1::Sessions::NewStub(channel);
  s->streams = v1::Streams::NewStub(channel);
  s->models = v1::Models::NewStub(channel);
  return s;
}

using e2e::ClientContext;  // 120 s deadline (tests/cluster_harness.h)

// Request id "create-ID" unless `request_id` is given (a create of a
// deleted session's id is another request: it needs another id).
absl::StatusOr<v1::Session> Create(Server& s, const std::string& id,
                                   const std::string& model_id,
                                   const std::string& request_id = "") {
  v1::CreateSessionRequest req;
  req.set_request_id(request_id.empty() ? "create-" + id : request_id);
  req.set_session_id(id);
  req.set_model_id(model_id);
  v1::Session out;
  auto ctx = ClientContext();
  grpc::Status st = s.sessions->CreateSession(ctx.get(), req, &out);
  if (!st.ok()) return FromGrpcStatus(st);
  return out;
}

absl::StatusOr<v1::Session> Get(Server& s, const std::string& id) {
  v1::GetSessionRequest req;
  req.set_session_id(id);
  v1::Session out;
  auto ctx = ClientContext();
  grpc::Status st = s.sessions->GetSession(ctx.get(), req, &out);
  if (!st.ok()) return FromGrpcStatus(st);
  return out;
}

// Appends `chunks` in one call, the last flushed and checkpointed.
// Returns the acks.
absl::StatusOr<std::vector<v1::AppendResponse>> Append(
    Server& s, const std::string& id, const std::vector<std::string>& chunks) {
  auto ctx = ClientContext();
  auto stream = s.streams->Append(ctx.get());
  std::vector<v1::AppendResponse> acks;
  uint64_t offset = 0;
  for (size_t i = 0; i < chunks.size(); ++i) {
    v1::AppendRequest r;
    r.set_session_id(id);
    r.set_expected_input_offset(offset);
    r.set_text_utf8(chunks[i]);
    r.set_flush(i + 1 == chunks.size());
    r.set_checkpoint(i + 1 == chunks.size());
    offset += chunks[i].size();
    if (!stream->Write(r)) break;
    v1::AppendResponse ack;
    if (!stream->Read(&ack)) break;
    acks.push_back(ack);
  }
  stream->WritesDone();
  v1::AppendResponse extra;
  while (stream->Read(&extra)) acks.push_back(extra);
  absl::Status st = FromGrpcStatus(stream->Finish());
  if (!st.ok()) return st;
  return acks;
}

struct Generated {
  std::vector<uint32_t> tokens;
  std::string text;
  v1::GenerateDone done;
};

absl::StatusOr<Generated> Generate(Server& s, const std::string& id,
                                   const std::string& request_id) {
  v1::GenerateRequest req;
  req.set_session_id(id);
  req.set_request_id(request_id);
  req.set_max_tokens(24);
  req.set_commit(true);
  req.set_logprobs(true);
  req.mutable_sampling()->set_seed(7);
  req.mutable_sampling()->set_temperature(0.9f);
  auto ctx = ClientContext();
  auto reader = s.streams->Generate(ctx.get(), req);
  Generated out;
  v1::GenerateResponse msg;
  while (reader->Read(&msg)) {
    if (msg.has_chunk()) {
      for (uint32_t t : msg.chunk().tokens()) out.tokens.push_back(t);
      out.text += msg.chunk().text_utf8();
    } else {
      out.done = msg.done();
    }
  }
  absl::Status st = FromGrpcStatus(reader->Finish());
  if (!st.ok()) return st;
  return out;
}

absl::StatusOr<v1::ScoreResponse> Score(Server& s, const std::string& id) {
  v1::ScoreRequest req;
  req.set_session_id(id);
  req.set_text_utf8("and then");
  req.set_top_logprobs(2);
  v1::ScoreResponse out;
  auto ctx = ClientContext();
  grpc::Status st = s.streams->Score(ctx.get(), req, &out);
  if (!st.ok()) return FromGrpcStatus(st);
  return out;
}

absl::StatusOr<std::pair<v1::StateHeader, std::string>> Export(
    Server& s, const std::string& id) {
  v1::ExportStateRequest req;
  req.set_session_id(id);
  auto ctx = ClientContext();
  auto reader = s.sessions->ExportState(ctx.get(), req);
  v1::ExportStateResponse msg;
  std::pair<v1::StateHeader, std::string> out;
  while (reader->Read(&msg)) {
    if (msg.has_header()) out.first = msg.header();
    if (msg.has_chunk()) out.second += msg.chunk().data();
  }
  absl::Status st = FromGrpcStatus(reader->Finish());
  if (!st.ok()) return st;
  return out;
}

absl::StatusOr<v1::Session> Import(Server& s, const v1::StateHeader& header,
                                   const std::string& blob, v1::ImportMode mode,
                                   const std::string& session_id) {
  auto ctx = ClientContext();
  v1::Session out;
  auto writer = s.sessions->ImportState(ctx.get(), &out);
  v1::ImportStateRequest h;
  h.mutable_header()->set_request_id("import-" + session_id);
  h.mutable_header()->set_session_id(session_id);
  h.mutable_header()->set_mode(mode);
  *h.mutable_header()->mutable_state() = header;
  writer->Write(h);
  for (uint32_t i = 0; i < header.chunk_count(); ++i) {
    v1::ImportStateRequest c;
    const size_t at = size_t{i} * header.chunk_bytes();
    const std::string data = blob.substr(
        at, std::min<size_t>(header.chunk_bytes(), blob.size() - at));
    c.mutable_chunk()->set_index(i);
    c.mutable_chunk()->set_data(data);
    c.mutable_chunk()->set_crc32c(Crc32c(0, data.data(), data.size()));
    if (!writer->Write(c)) break;
  }
  writer->WritesDone();
  absl::Status st = FromGrpcStatus(writer->Finish());
  if (!st.ok()) return st;
  return out;
}

// What one session went through, to compare across servers.
struct SessionRun {
  std::vector<v1::AppendResponse> acks;
  Generated generated;
  v1::ScoreResponse score;
};

void Exercise(Server& s, const std::string& id, const std::string& model_id,
              SessionRun* out) {
  auto created = Create(s, id, model_id);
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_EQ(created->model_id(), model_id);
  auto acks =
      Append(s, id, {"The quick brown ", "fox jumps over ", "the lazy"});
  ASSERT_TRUE(acks.ok()) << acks.status();
  out->acks = *acks;
  auto generated = Generate(s, id, "gen-" + id);
  ASSERT_TRUE(generated.ok()) << generated.status();
  out->generated = *generated;
  auto score = Score(s, id);
  ASSERT_TRUE(score.ok()) << score.status();
  out->score = *score;
}

class MultiModelServeTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(::testing::TempDir() + "/multi_model_" +
                           std::to_string(getpid()));
    std::filesystem::create_directories(*dir_);
    for (const char* arch : {"x070", "x060"}) {
      auto made = e2e::Run(
          {STATESTREAM_BIN, "model", "random", absl::StrCat("--arch=", arch),
           "--layers=2", "--embd=64", "--head-size=32", "--vocab=256",
           "--seed=3", "--out=" + Path(arch)},
          absl::Seconds(60));
      ASSERT_TRUE(made.ok() && made->exit_code == 0) << made->err;
    }
    // Ids "seven" (x070, the default) and "six" (x060). A residency of
    // one byte keeps about one session resident: the others' calls are
    // routed by their heads in the store.
    both_ =
        StartServe({"--model=seven=" + Path("x070") + ",six=" + Path("x060"),
                    "--residency-bytes=1"})
            .release();
    seven_ = StartServe({"--model=seven=" + Path("x070")}).release();
    six_ =
        StartServe({"--model=six=" + Path("x060"), "--device=cpu"}).release();
  }
  static void TearDownTestSuite() {
    delete both_;
    delete seven_;
    delete six_;
    std::filesystem::remove_all(*dir_);
    delete dir_;
  }
  void SetUp() override {
    ASSERT_NE(both_, nullptr);
    ASSERT_NE(seven_, nullptr);
    ASSERT_NE(six_, nullptr);
  }
  void TearDown() override {
    if (HasFailure() && both_ != nullptr) {
      ADD_FAILURE() << "server stderr:\n" << both_->process->stderr_text();
    }
  }

  static std::string Path(const std::string& arch) {
    return *dir_ + "/" + arch + ".safetensors";
  }

  static std::string* dir_;
  static Server* both_;
  static Server* seven_;
  static Server* six_;
};

std::string* MultiModelServeTest::dir_ = nullptr;
Server* MultiModelServeTest::both_ = nullptr;
Server* MultiModelServeTest::seven_ = nullptr;
Server* MultiModelServeTest::six_ = nullptr;

TEST_F(MultiModelServeTest, ListsAndGetsEveryModel) {
  v1::ListModelsResponse list;
  auto ctx = ClientContext();
  ASSERT_TRUE(both_->models->ListModels(ctx.get(), {}, &list).ok());
  ASSERT_EQ(list.models_size(), 2);
  EXPECT_EQ(list.models(0).model_id(), "seven");  // ordered by id
  EXPECT_EQ(list.models(0).architecture(), "x070");
  EXPECT_EQ(list.models(1).model_id(), "six");
  EXPECT_EQ(list.models(1).architecture(), "x060");
  // The first configured is the default (--model seven=...,six=...).
  EXPECT_TRUE(list.models(0).is_default());
  EXPECT_FALSE(list.models(1).is_default());
  for (const v1::Model& m : list.models()) {  // fp32 files, as stored
    EXPECT_EQ(m.weights_dtype(), "fp32") << m.model_id();
    EXPECT_EQ(m.bf16_activations(), "") << m.model_id();
  }
  // The same fingerprints as the single-model servers.
  for (Server* single : {seven_, six_}) {
    v1::ListModelsResponse one;
    auto c = ClientContext();
    ASSERT_TRUE(single->models->ListModels(c.get(), {}, &one).ok());
    ASSERT_EQ(one.models_size(), 1);
    EXPECT_TRUE(one.models(0).is_default());  // its only model
    const int i = one.models(0).model_id() == "seven" ? 0 : 1;
    EXPECT_EQ(one.models(0).fingerprint(), list.models(i).fingerprint());
  }
  v1::GetModelRequest req;
  req.set_model_id("six");
  v1::Model model;
  auto c2 = ClientContext();
  ASSERT_TRUE(both_->models->GetModel(c2.get(), req, &model).ok());
  EXPECT_EQ(model.architecture(), "x060");
  EXPECT_FALSE(model.is_default());
  req.set_model_id("eight");
  auto c3 = ClientContext();
  absl::Status missing =
      FromGrpcStatus(both_->models->GetModel(c3.get(), req, &model));
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(GetReason(missing), Reason::kModelNotFound);
}

TEST_F(MultiModelServeTest, BothModelsConcurrentlyEqualSingleModelServers) {
  SessionRun on_both[2], alone[2];
  // Both sessions at once on the two-model server.
  std::thread six_thread(
      [&] { Exercise(*both_, "det-six", "six", &on_both[1]); });
  Exercise(*both_, "det-seven", "seven", &on_both[0]);
  six_thread.join();
  Exercise(*seven_, "det-seven", "seven", &alone[0]);
  Exercise(*six_, "det-six", "six", &alone[1]);
  ASSERT_FALSE(HasFailure());
  for (int i = 0; i < 2; ++i) {
    SCOPED_TRACE(i == 0 ? "seven" : "six");
    ASSERT_EQ(on_both[i].acks.size(), alone[i].acks.size());
    for (size_t k = 0; k < alone[i].acks.size(); ++k) {
      EXPECT_EQ(on_both[i].acks[k].position(), alone[i].acks[k].position());
      EXPECT_EQ(on_both[i].acks[k].version(), alone[i].acks[k].version());
    }
    EXPECT_EQ(on_both[i].generated.tokens, alone[i].generated.tokens);
    EXPECT_EQ(on_both[i].generated.text, alone[i].generated.text);
    EXPECT_EQ(on_both[i].generated.tokens.size(), 24u);
    EXPECT_EQ(on_both[i].generated.done.position(),
              alone[i].generated.done.position());
    ASSERT_EQ(on_both[i].score.tokens_size(), alone[i].score.tokens_size());
    for (int k = 0; k < alone[i].score.tokens_size(); ++k) {
      EXPECT_EQ(on_both[i].score.tokens(k).logprob(),
                alone[i].score.tokens(k).logprob());
    }
  }
  // Two architectures really answered differently.
  EXPECT_NE(on_both[0].generated.tokens, on_both[1].generated.tokens);
}

TEST_F(MultiModelServeTest, EmptyModelIdIsTheFirstUnknownIsTyped) {
  auto created = Create(*both_, "default-model", "");
  ASSERT_TRUE(created.ok()) << created.status();
  EXPECT_EQ(created->model_id(), "seven");
  auto unknown = Create(*both_, "unknown-model", "eight");
  EXPECT_EQ(unknown.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(GetReason(unknown.status()), Reason::kModelNotFound);
  EXPECT_EQ(GetErrorMetadata(unknown.status(), "model_id"), "eight");
  EXPECT_EQ(GetReason(Get(*both_, "unknown-model").status()),
            Reason::kSessionNotFound);
}

TEST_F(MultiModelServeTest, SessionCallsReachTheSessionsModel) {
  ASSERT_TRUE(Create(*both_, "calls-six", "six").ok());
  ASSERT_TRUE(Create(*both_, "calls-seven", "seven").ok());
  ASSERT_TRUE(Append(*both_, "calls-six", {"abc"}).ok());
  // Rollback, versions, update, list and delete on a six session.
  v1::RollbackSessionRequest rollback;
  rollback.set_request_id("rb");
  rollback.set_session_id("calls-six");
  rollback.set_version(1);
  v1::Session rolled;
  auto c1 = ClientContext();
  ASSERT_TRUE(
      both_->sessions->RollbackSession(c1.get(), rollback, &rolled).ok());
  EXPECT_EQ(rolled.position(), 0u);
  EXPECT_EQ(rolled.model_id(), "six");
  v1::ListVersionsRequest versions;
  versions.set_session_id("calls-six");
  v1::ListVersionsResponse listed_versions;
  auto c2 = ClientContext();
  ASSERT_TRUE(
      both_->sessions->ListVersions(c2.get(), versions, &listed_versions).ok());
  EXPECT_EQ(listed_versions.versions_size(), 3);
  v1::UpdateSessionRequest update;
  update.set_request_id("up");
  update.set_session_id("calls-six");
  (*update.mutable_labels())["arch"] = "x060";
  update.mutable_update_mask()->add_paths("labels");
  v1::Session updated;
  auto c3 = ClientContext();
  ASSERT_TRUE(both_->sessions->UpdateSession(c3.get(), update, &updated).ok());
  EXPECT_EQ(updated.labels().at("arch"), "x060");
  // ListSessions covers both models; model_id filters.
  for (const char* filter : {"", "six", "seven"}) {
    v1::ListSessionsRequest list;
    list.set_model_id(filter);
    list.set_page_size(1000);
    v1::ListSessionsResponse page;
    auto c = ClientContext();
    ASSERT_TRUE(both_->sessions->ListSessions(c.get(), list, &page).ok());
    bool saw_six = false, saw_seven = false;
    for (const v1::Session& s : page.sessions()) {
      if (*filter != '\0') {
        EXPECT_EQ(s.model_id(), filter);
      }
      saw_six |= s.session_id() == "calls-six";
      saw_seven |= s.session_id() == "calls-seven";
    }
    EXPECT_EQ(saw_six, std::string(filter) != "seven") << filter;
    EXPECT_EQ(saw_seven, std::string(filter) != "six") << filter;
  }
  v1::DeleteSessionRequest del;
  del.set_request_id("del");
  del.set_session_id("calls-six");
  v1::DeleteSessionResponse deleted;
  auto c4 = ClientContext();
  ASSERT_TRUE(both_->sessions->DeleteSession(c4.get(), del, &deleted).ok());
  EXPECT_EQ(GetReason(Get(*both_, "calls-six").status()),
            Reason::kSessionNotFound);
  // Its retry succeeds, though the session (of the second model) is gone
  // and the call now lands on the first model's manager: the models share
  // one request-id memo.
  auto c5 = ClientContext();
  grpc::Status retried =
      both_->sessions->DeleteSession(c5.get(), del, &deleted);
  EXPECT_TRUE(retried.ok()) << retried.error_message();
  // Re-created under the other model, the id now belongs to that model.
  ASSERT_TRUE(Create(*both_, "calls-six", "seven", "recreate-calls-six").ok());
  // Reusing the first create's id for this other create is a duplicate.
  EXPECT_EQ(GetReason(Create(*both_, "calls-six", "seven").status()),
            Reason::kDuplicateRequest);
  auto again = Append(*both_, "calls-six", {"xyz"});
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(Get(*both_, "calls-six")->model_id(), "seven");
}

TEST_F(MultiModelServeTest, SessionsNotResidentAreRoutedByTheirHeads) {
  // Created, never loaded: Generate (a prompt, committed), then Score
  // after another session evicted it, reach the six manager (the default
  // one would answer MODEL_MISMATCH).
  ASSERT_TRUE(Create(*both_, "cold-six", "six").ok());
  ASSERT_TRUE(Create(*both_, "cold-other", "six").ok());
  for (const char* id : {"cold-six", "cold-other"}) {
    v1::GenerateRequest req;
    req.set_session_id(id);
    req.set_request_id(std::string("gen-") + id);
    req.set_prompt_text_utf8("Once upon");
    req.set_max_tokens(4);
    req.set_commit(true);
    auto ctx = ClientContext();
    auto reader = both_->streams->Generate(ctx.get(), req);
    v1::GenerateResponse msg;
    while (reader->Read(&msg)) {
    }
    grpc::Status st = reader->Finish();
    ASSERT_TRUE(st.ok()) << id << ": " << st.error_message();
  }
  auto score = Score(*both_, "cold-six");
  ASSERT_TRUE(score.ok()) << score.status();
  EXPECT_EQ(score->position(), 13u);
  auto acks = Append(*both_, "cold-other", {});
  EXPECT_TRUE(acks.ok()) << acks.status();
}

TEST_F(MultiModelServeTest, StatesNeverCrossModels) {
  ASSERT_TRUE(Create(*both_, "x-seven", "seven").ok());
  ASSERT_TRUE(Create(*both_, "x-six", "six").ok());
  ASSERT_TRUE(Append(*both_, "x-seven", {"state of seven"}).ok());
  auto exported = Export(*both_, "x-seven");
  ASSERT_TRUE(exported.ok()) << exported.status();
  const v1::StateHeader& header = exported->first;
  EXPECT_EQ(header.model_id(), "seven");
  EXPECT_EQ(header.architecture(), "x070");
  // Into a session of the other model.
  auto into_six = Import(*both_, header, exported->second,
                         v1::IMPORT_MODE_NEW_VERSION, "x-six");
  EXPECT_EQ(into_six.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(GetReason(into_six.status()), Reason::kModelMismatch);
  // Both models are served here: the message says what is wrong.
  EXPECT_THAT(std::string(into_six.status().message()),
              ::testing::HasSubstr("session x-six is of another model than "
                                   "the imported state"));
  // As the other model (a header claiming six's fingerprint).
  auto six_header = Export(*both_, "x-six");
  ASSERT_TRUE(six_header.ok());
  v1::StateHeader lying = header;
  lying.set_model_fingerprint(six_header->first.model_fingerprint());
  auto as_six = Import(*both_, lying, exported->second, v1::IMPORT_MODE_CREATE,
                       "x-as-six");
  EXPECT_EQ(GetReason(as_six.status()), Reason::kModelMismatch);
  // A model nobody serves here.
  lying.set_model_fingerprint("x050-unknown");
  EXPECT_EQ(GetReason(Import(*both_, lying, exported->second,
                             v1::IMPORT_MODE_CREATE, "x-unknown")
                          .status()),
            Reason::kModelMismatch);
  // Nothing changed; the state imports fine as its own model.
  EXPECT_EQ(Get(*both_, "x-six")->version(), 1u);
  auto copy = Import(*both_, header, exported->second, v1::IMPORT_MODE_CREATE,
                     "x-seven-copy");
  ASSERT_TRUE(copy.ok()) << copy.status();
  EXPECT_EQ(copy->model_id(), "seven");
  EXPECT_EQ(copy->position(), header.position());
  // A fork across models; without model_id a fork takes the source's.
  v1::CreateSessionRequest fork;
  fork.set_request_id("fork-1");
  fork.set_session_id("x-fork");
  fork.set_model_id("six");
  fork.mutable_fork_from()->set_session_id("x-seven");
  v1::Session forked;
  auto c1 = ClientContext();
  absl::Status cross =
      FromGrpcStatus(both_->sessions->CreateSession(c1.get(), fork, &forked));
  EXPECT_EQ(GetReason(cross), Reason::kModelMismatch);
  fork.set_request_id("fork-2");
  fork.set_model_id("");
  fork.mutable_fork_from()->set_session_id("x-six");
  auto c2 = ClientContext();
  ASSERT_TRUE(both_->sessions->CreateSession(c2.get(), fork, &forked).ok());
  EXPECT_EQ(forked.model_id(), "six");
}

// A cluster of one worker (serving `tiny`) and one gateway.
absl::StatusOr<std::unique_ptr<e2e::Cluster>> OneWorkerCluster() {
  e2e::ClusterOptions options;
  options.workers = 1;
  options.gateways = 1;
  return e2e::Cluster::Start(STATESTREAM_BIN, options);
}

// Appends "hello" to `id` through gateway 0, flushed and checkpointed, in
// one Append call: its ack.
absl::StatusOr<v1::AppendResponse> AppendHello(e2e::Cluster& c,
                                               const std::string& id) {
  v1::AppendRequest r;
  r.set_session_id(id);
  r.set_text_utf8("hello");
  r.set_flush(true);
  r.set_checkpoint(true);
  auto ctx = e2e::ClientContext();
  auto stream = c.streams(0)->Append(ctx.get());
  v1::AppendResponse ack;
  const bool acked = stream->Write(r) && stream->Read(&ack);
  stream->WritesDone();
  const absl::Status st = FromGrpcStatus(stream->Finish());
  if (!st.ok()) return st;
  if (!acked) return absl::InternalError("the stream ended without an ack");
  return ack;
}

// A gateway in front of a worker serving two models and one serving the
// cluster's `tiny`: sessions of every model reach a worker serving it.
TEST(MultiModelClusterTest, GatewayRoutesEveryModelOfAWorker) {
  auto cluster = OneWorkerCluster();
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  e2e::Cluster& c = **cluster;
  auto m1 = c.MakeModel("m1", 11);
  auto m2 = c.MakeModel("m2", 12);
  ASSERT_TRUE(m1.ok() && m2.ok());
  auto w = c.AddWorker(*m1 + "," + *m2);
  ASSERT_TRUE(w.ok()) << w.status();
  // The gateway learns of the worker with its next registry read.
  v1::ListModelsResponse list;
  for (int i = 0; i < 100 && list.models_size() < 3; ++i) {
    list.Clear();
    auto ctx = e2e::ClientContext();
    ASSERT_TRUE(c.models(0)->ListModels(ctx.get(), {}, &list).ok());
    if (list.models_size() < 3) absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_EQ(list.models_size(), 3) << c.Logs();
  EXPECT_EQ(list.models(0).model_id(), "m1");
  EXPECT_EQ(list.models(1).model_id(), "m2");
  EXPECT_EQ(list.models(2).model_id(), "tiny");
  // The workers' defaults differ (tiny, m1): a create without a model gets
  // either, so none is the gateway's.
  for (const v1::Model& m : list.models()) {
    EXPECT_FALSE(m.is_default()) << m.model_id();
  }
  for (int i = 0; i < 6; ++i) {
    const std::string model = i % 2 == 0 ? "m1" : "m2";
    const std::string id = absl::StrCat("routed-", i);
    ASSERT_TRUE(c.Create(id, 0, model).ok()) << id << c.Logs();
    // An Append through the gateway lands on the worker serving the model.
    auto ack = AppendHello(c, id);
    ASSERT_TRUE(ack.ok()) << ack.status() << c.Logs();
    EXPECT_EQ(ack->position(), 5u);
    auto s = c.Get(id);
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_EQ(s->model_id(), model);
    EXPECT_EQ(c.Owner(id), c.workers()[*w].get()) << id;
  }
}

// A model retired from the cluster (its last worker stopped) leaves its
// sessions readable, exportable (the header still names their model) and
// deletable through a gateway: those calls need no model, so another
// worker answers them.
TEST(MultiModelClusterTest, ASessionOfARetiredModelCanBeReadExportedDeleted) {
  auto cluster = OneWorkerCluster();
  ASSERT_TRUE(cluster.ok()) << cluster.status();
  e2e::Cluster& c = **cluster;
  auto m1 = c.MakeModel("m1", 11);
  ASSERT_TRUE(m1.ok()) << m1.status();
  auto w = c.AddWorker(*m1);
  ASSERT_TRUE(w.ok()) << w.status();
  absl::Status created;
  for (int i = 0; i < 100; ++i) {  // until the gateway has read the worker
    created = c.Create("retiring", 0, "m1");
    if (created.ok()) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  ASSERT_TRUE(created.ok()) << created << c.Logs();
  ASSERT_TRUE(AppendHello(c, "retiring").ok()) << c.Logs();
  auto before = c.Get("retiring");
  ASSERT_TRUE(before.ok()) << before.status();
  EXPECT_EQ(c.Owner("retiring"), c.workers()[*w].get());
  EXPECT_EQ(c.workers()[*w]->Terminate(), 0) << c.Logs();  // unregisters

  auto after = c.Get("retiring");
  ASSERT_TRUE(after.ok()) << after.status() << c.Logs();
  EXPECT_EQ(after->model_id(), "m1");
  EXPECT_EQ(after->model_fingerprint(), before->model_fingerprint());
  EXPECT_EQ(after->committed_input_offset(), 5u);
  {
    v1::ListVersionsRequest req;
    req.set_session_id("retiring");
    v1::ListVersionsResponse resp;
    auto ctx = e2e::ClientContext();
    const grpc::Status st = c.sessions(0)->ListVersions(ctx.get(), req, &resp);
    ASSERT_TRUE(st.ok()) << st.error_message();
    EXPECT_GE(resp.versions_size(), 2);
  }
  {
    v1::ExportStateRequest req;
    req.set_session_id("retiring");
    auto ctx = e2e::ClientContext();
    auto reader = c.sessions(0)->ExportState(ctx.get(), req);
    v1::ExportStateResponse msg;
    v1::StateHeader header;
    size_t bytes = 0;
    while (reader->Read(&msg)) {
      if (msg.has_header()) header = msg.header();
      if (msg.has_chunk()) bytes += msg.chunk().data().size();
    }
    const grpc::Status st = reader->Finish();
    ASSERT_TRUE(st.ok()) << st.error_message();
    EXPECT_EQ(header.model_id(), "m1");
    EXPECT_EQ(header.model_fingerprint(), before->model_fingerprint());
    EXPECT_EQ(header.architecture(), "x070");
    EXPECT_EQ(header.input_offset(), 5u);
    EXPECT_EQ(bytes, header.total_bytes());
  }
  {
    v1::UpdateSessionRequest req;
    req.set_request_id("label-retired");
    req.set_session_id("retiring");
    (*req.mutable_labels())["state"] = "retired";
    req.mutable_update_mask()->add_paths("labels");
    v1::Session resp;
    auto ctx = e2e::ClientContext();
    const grpc::Status st = c.sessions(0)->UpdateSession(ctx.get(), req, &resp);
    ASSERT_TRUE(st.ok()) << st.error_message();
    EXPECT_EQ(resp.labels().at("state"), "retired");
  }
  {
    v1::DeleteSessionRequest req;
    req.set_request_id("delete-retired");
    req.set_session_id("retiring");
    v1::DeleteSessionResponse resp;
    auto ctx = e2e::ClientContext();
    const grpc::Status st = c.sessions(0)->DeleteSession(ctx.get(), req, &resp);
    ASSERT_TRUE(st.ok()) << st.error_message();
  }
  EXPECT_EQ(GetReason(c.Get("retiring").status()), Reason::kSessionNotFound);

  // Once the gateway's list has dropped the worker, the model it served
  // lately is UNAVAILABLE (its workers may be restarting: clients retry),
  // not a MODEL_NOT_FOUND they would give up on.
  absl::Status model = absl::OkStatus();
  for (int i = 0; i < 100 && model.ok(); ++i) {
    v1::GetModelRequest req;
    req.set_model_id("m1");
    v1::Model resp;
    auto ctx = e2e::ClientContext();
    model = FromGrpcStatus(c.models(0)->GetModel(ctx.get(), req, &resp));
    if (model.ok()) absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(model.code(), absl::StatusCode::kUnavailable) << model;
  const absl::Status create = c.Create("after-retirement", 0, "m1");
  EXPECT_EQ(create.code(), absl::StatusCode::kUnavailable) << create;
  EXPECT_EQ(GetErrorMetadata(create, "model_id"), "m1");
  // A model never served is still NOT_FOUND.
  const absl::Status never = c.Create("never", 0, "m9");
  EXPECT_EQ(GetReason(never), Reason::kModelNotFound) << never;
}

}  // namespace
}  // namespace statestream
