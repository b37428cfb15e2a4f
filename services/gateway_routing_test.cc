// SPDX-License-Identifier: Apache-2.0
// The gateway in process in front of scripted workers
// (services/gateway_test_util.h): where calls go and when they stop —
// suspects, unreachable workers, imports authenticated, the models listed,
// idle connections, the tenant session limit. (Imports bounded and the
// gateway's buffers: gateway_import_test.cc.)
#include <arpa/inet.h>
#include <grpcpp/grpcpp.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "common/clock.h"
#include "common/grpc_status.h"
#include "common/session_ids.h"
#include "common/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "services/gateway.h"
#include "services/gateway_internal.h"
#include "services/gateway_metrics.h"
#include "services/gateway_router.h"
#include "services/gateway_test_util.h"
#include "services/server.h"
#include "services/tenants.h"
#include "state_store/memory_state_store.h"
#include "statestream/v1/statestream.grpc.pb.h"
#include "tests/metrics_scrape.h"

namespace statestream {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// ABORTED/FENCED says another worker took that one session, not that the
// worker failed: the call moves on, but the worker is not avoided for the
// sessions it still serves (the next call on its sessions reaches it).
TEST_F(GatewayTest, AFencedAnswerDoesNotMakeTheWorkerSuspect) {
  std::atomic<int> got[2] = {0, 0};
  std::atomic<int> fenced{-1};  // the worker that answered FENCED
  for (int i = 0; i < 2; ++i) {
    workers_[i]->get_session = [&got, &fenced, i](int) {
      got[i].fetch_add(1);
      int none = -1;
      if (fenced.compare_exchange_strong(none, i)) {  // the first call
        return ToGrpcStatus(MakeError(absl::StatusCode::kAborted,
                                      Reason::kFenced, "another owner"));
      }
      return grpc::Status::OK;
    };
  }
  Start();
  auto get = [&] {
    grpc::ClientContext ctx;
    v1::GetSessionRequest req;
    req.set_session_id("s");
    v1::Session resp;
    return v1::Sessions::NewStub(channel_)->GetSession(&ctx, req, &resp);
  };
  ASSERT_TRUE(get().ok());  // the fenced worker, then the other
  ASSERT_NE(fenced.load(), -1);
  ASSERT_EQ(got[0].load() + got[1].load(), 2);
  // "s" ranks the fenced worker first still: it is asked first again.
  ASSERT_TRUE(get().ok());
  EXPECT_EQ(got[fenced.load()].load(), 2);
  EXPECT_EQ(got[1 - fenced.load()].load(), 1);
}

// A caller with a bad key is refused UNAUTHENTICATED as its call starts,
// before it is admitted: a gateway serving as many calls as it may
// (--max-calls, here 1, held by a GetSession its worker sits on) still
// says "unauthenticated", not "overloaded, retry", to every kind of call,
// and such calls take no call slot from real ones.
TEST_F(GatewayTest, ABadKeyIsRefusedBeforeTheCallTakesASlot) {
  absl::Notification release;
  std::atomic<int> waiting{0};
  Script<grpc::Status(int)>(&ScriptedWorker::get_session, [&](int) {
    waiting.fetch_add(1);
    release.WaitForNotificationWithTimeout(absl::Seconds(30));
    return grpc::Status::OK;
  });
  GatewayOptions options;
  options.auth = TenantAuth(
      std::map<std::string, std::string>{{"key-0123456789abcdef", "acme"}});
  options.max_calls = 1;
  Start(options);
  auto get = [&](const std::string& token) {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Bearer " + token);
    v1::GetSessionRequest req;
    req.set_session_id("s");
    v1::Session resp;
    return FromGrpcStatus(
        v1::Sessions::NewStub(channel_)->GetSession(&ctx, req, &resp));
  };
  std::thread holder([&] { EXPECT_TRUE(get("key-0123456789abcdef").ok()); });
  while (waiting.load() == 0) absl::SleepFor(absl::Milliseconds(5));
  const std::string bad = "Bearer wrong-0123456789abcdef";
  std::vector<absl::Status> refused;
  refused.push_back(get("wrong-0123456789abcdef"));
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", bad);
    v1::GenerateRequest req;
    req.set_session_id("s");
    refused.push_back(FromGrpcStatus(
        Drain(&ctx, v1::Streams::NewStub(channel_)->Generate(&ctx, req))
            .status));
  }
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", bad);
    v1::ExportStateRequest req;
    req.set_session_id("s");
    refused.push_back(FromGrpcStatus(
        Drain(&ctx, v1::Sessions::NewStub(channel_)->ExportState(&ctx, req))
            .status));
  }
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", bad);
    v1::Session resp;
    auto writer = v1::Sessions::NewStub(channel_)->ImportState(&ctx, &resp);
    writer->Write(ImportHeader(10));
    writer->WritesDone();
    refused.push_back(FromGrpcStatus(writer->Finish()));
  }
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", bad);
    auto stream = v1::Streams::NewStub(channel_)->Append(&ctx);
    v1::AppendRequest req;
    req.set_session_id("s");
    stream->Write(req);
    stream->WritesDone();
    v1::AppendResponse ack;
    while (stream->Read(&ack)) {
    }
    refused.push_back(FromGrpcStatus(stream->Finish()));
  }
  for (size_t i = 0; i < refused.size(); ++i) {
    EXPECT_EQ(refused[i].code(), absl::StatusCode::kUnauthenticated)
        << i << ": " << refused[i];
    EXPECT_EQ(GetReason(refused[i]), Reason::kUnauthenticated) << i;
  }
  // A good key still finds the one slot taken.
  const absl::Status busy = get("key-0123456789abcdef");
  EXPECT_EQ(GetReason(busy), Reason::kOverloaded) << busy;
  release.Notify();
  holder.join();
}

// With API keys, an import without a valid token ends UNAUTHENTICATED before
// the gateway reads (and buffers) its messages; a valid token gets through.
TEST_F(GatewayTest, AnImportIsAuthenticatedBeforeItIsRead) {
  GatewayOptions options;
  options.auth = TenantAuth(
      std::map<std::string, std::string>{{"key-0123456789abcdef", "acme"}});
  Start(options);
  auto import = [&](const std::string& token, int chunks) {
    grpc::ClientContext ctx;
    if (!token.empty()) ctx.AddMetadata("authorization", "Bearer " + token);
    v1::Session resp;
    auto writer = v1::Sessions::NewStub(channel_)->ImportState(&ctx, &resp);
    int written = 0;
    if (writer->Write(ImportHeader(uint64_t{1} << 28))) {
      v1::ImportStateRequest chunk;
      chunk.mutable_chunk()->set_data(std::string(1 << 20, 'x'));
      while (written < chunks && writer->Write(chunk)) ++written;
    }
    writer->WritesDone();
    return std::make_pair(FromGrpcStatus(writer->Finish()), written);
  };
  // The refusal comes first: the stream breaks long before 256 MiB is sent.
  for (const std::string token : {"", "wrong-0123456789abcdef"}) {
    auto [st, written] = import(token, 1024);
    EXPECT_EQ(st.code(), absl::StatusCode::kUnauthenticated) << st;
    EXPECT_EQ(GetReason(st), Reason::kUnauthenticated);
    EXPECT_LT(written, 1024);
  }
  EXPECT_EQ(workers_[0]->imports() + workers_[1]->imports(), 0);
  // The scripted worker reads it and answers INVALID_ARGUMENT.
  auto [st, written] = import("key-0123456789abcdef", 0);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_EQ(workers_[0]->imports() + workers_[1]->imports(), 1);
}

// A worker that failed one call (a suspect, avoided for a while) still
// serves its models: ListModels lists them instead of answering that no
// worker serves any.
TEST_F(GatewayTest, ASuspectWorkersModelsStayListed) {
  Script<grpc::Status(int)>(&ScriptedWorker::get_session,
                            [](int) { return Lost(); });
  Start();
  auto models = v1::Models::NewStub(channel_);
  {
    grpc::ClientContext ctx;
    v1::ListModelsResponse resp;
    ASSERT_TRUE(models->ListModels(&ctx, {}, &resp).ok());
    ASSERT_EQ(resp.models_size(), 1);
  }
  {
    grpc::ClientContext ctx;
    v1::GetSessionRequest req;
    req.set_session_id("s");
    v1::Session resp;
    EXPECT_EQ(v1::Sessions::NewStub(channel_)
                  ->GetSession(&ctx, req, &resp)
                  .error_code(),
              grpc::StatusCode::UNAVAILABLE);  // both workers now suspect
  }
  grpc::ClientContext ctx;
  v1::ListModelsResponse resp;
  const grpc::Status st = models->ListModels(&ctx, {}, &resp);
  ASSERT_TRUE(st.ok()) << st.error_message();
  ASSERT_EQ(resp.models_size(), 1);
  EXPECT_EQ(resp.models(0).model_id(), "tiny");
  EXPECT_EQ(resp.models(0).workers(), 2u);
}

// A gateway marks a model default only when it is every worker's: a
// create without a model goes to the worker its id hashes to.
TEST(GatewayModelsTest, ADefaultIsMarkedOnlyWhenEveryWorkerHasIt) {
  auto model = [](const std::string& id, bool is_default) {
    v1::Model m;
    m.set_model_id(id);
    m.set_fingerprint("fp-" + id);
    m.set_is_default(is_default);
    return m;
  };
  std::vector<gateway::Gateway::WorkerModels> workers(2);
  workers[0].models = {model("a", true), model("b", false)};
  workers[1].models = {model("a", true)};
  std::vector<v1::Model> merged = gateway::MergeModels(workers);
  ASSERT_EQ(merged.size(), 2u);
  EXPECT_TRUE(merged[0].is_default());  // a, both workers' default
  EXPECT_FALSE(merged[1].is_default());
  workers[1].models = {model("b", true)};  // the defaults differ
  merged = gateway::MergeModels(workers);
  ASSERT_EQ(merged.size(), 2u);
  EXPECT_FALSE(merged[0].is_default());
  EXPECT_FALSE(merged[1].is_default());
  workers[1].models.clear();  // one worker serving nothing it said
  merged = gateway::MergeModels(workers);
  ASSERT_EQ(merged.size(), 2u);
  EXPECT_FALSE(merged[0].is_default());
}

// No worker answering ListModels is the gateway's own UNAVAILABLE, typed
// like the router's "no live worker" (OVERLOADED, when to retry), not a
// bare status a client would take for a failed connection.
TEST_F(GatewayTest, NoWorkerAnsweringListModelsIsTyped) {
  Start();
  for (auto& w : workers_) w.reset();  // both gone: nothing answers
  grpc::ClientContext ctx;
  v1::ListModelsResponse resp;
  const grpc::Status st =
      v1::Models::NewStub(channel_)->ListModels(&ctx, {}, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE)
      << st.error_message();
  EXPECT_EQ(GetReason(FromGrpcStatus(st)), Reason::kOverloaded)
      << st.error_message();
  EXPECT_TRUE(GetErrorMetadata(FromGrpcStatus(st), "retry_after_ms"));
}

// A model no worker is known to serve is NOT_FOUND/MODEL_NOT_FOUND only when
// every worker answered ListModels: one too slow to answer (paused,
// CPU-starved) may serve it, so that is UNAVAILABLE/OVERLOADED (retry),
// not a NOT_FOUND clients take as final. A worker that refuses ListModels
// counts as serving nothing.
TEST_F(GatewayTest, AModelIsNotFoundOnlyWhenEveryWorkerAnswered) {
  // Worker 0 serves "tiny"; worker 1 is slow to answer, or refuses.
  std::atomic<bool> slow{true};
  workers_[1]->list_models = [&](v1::ListModelsResponse*) {
    if (slow) absl::SleepFor(absl::Milliseconds(500));
    return grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "an old build");
  };
  GatewayOptions options;
  options.models_timeout = absl::Milliseconds(100);
  Start(options);
  auto create = [&] {
    grpc::ClientContext ctx;
    v1::CreateSessionRequest req;
    req.set_request_id("r");
    req.set_model_id("other");
    v1::Session resp;
    return FromGrpcStatus(
        v1::Sessions::NewStub(channel_)->CreateSession(&ctx, req, &resp));
  };
  const absl::Status unknown = create();
  EXPECT_EQ(unknown.code(), absl::StatusCode::kUnavailable) << unknown;
  EXPECT_EQ(GetReason(unknown), Reason::kOverloaded) << unknown;
  EXPECT_EQ(GetErrorMetadata(unknown, "model_id"), "other");
  EXPECT_TRUE(GetErrorMetadata(unknown, "retry_after_ms").has_value());
  slow = false;
  const absl::Status refused = create();
  EXPECT_EQ(GetReason(refused), Reason::kModelNotFound) << refused;
}

class GatewayModelRoutingTest : public GatewayTest {
 protected:
  // Worker 1 serves `model_id` with `fingerprint`, worker 0 "tiny" with
  // "fp-tiny": 8 creates of each id through the gateway each go to the
  // worker serving that id, none to the other.
  void ExpectCreatesOnTheirModelsWorker(const std::string& model_id,
                                        const std::string& fingerprint) {
    workers_[1]->list_models = [=](v1::ListModelsResponse* resp) {
      v1::Model* m = resp->add_models();
      m->set_model_id(model_id);
      m->set_fingerprint(fingerprint);
      return grpc::Status::OK;
    };
    std::atomic<int> on[2] = {0, 0};
    for (int i = 0; i < 2; ++i) {
      workers_[i]->create_session = [&on, i](int, v1::Session*) {
        ++on[i];
        return grpc::Status::OK;
      };
    }
    Start();
    for (const std::string& model : {model_id, std::string("tiny")}) {
      for (int i = 0; i < 8; ++i) {
        grpc::ClientContext ctx;
        v1::CreateSessionRequest req;
        req.set_request_id(absl::StrCat("r-", model, i));
        req.set_session_id(absl::StrCat(model, i));
        req.set_model_id(model);
        v1::Session resp;
        const grpc::Status st =
            v1::Sessions::NewStub(channel_)->CreateSession(&ctx, req, &resp);
        EXPECT_TRUE(st.ok()) << st.error_message();
      }
      const int served_by = model == model_id ? 1 : 0;
      EXPECT_EQ(on[served_by].load(), 8) << model;
      EXPECT_EQ(on[1 - served_by].load(), 0) << model;
      on[0] = on[1] = 0;
    }
  }
};

// Static workers (--workers) name no models: the gateway learns them from
// ListModels, so a create of a model goes to a worker serving it, never to
// one that would answer MODEL_NOT_FOUND.
TEST_F(GatewayModelRoutingTest, StaticWorkersGetCreatesOfTheirOwnModel) {
  ExpectCreatesOnTheirModelsWorker("other", "fp-other");
}

// Two workers serving the same weights under two model ids (one
// fingerprint): a create of each id goes to the worker serving that id,
// never to the other, which would answer MODEL_NOT_FOUND (routing by the
// fingerprint alone sent half the creates there).
TEST_F(GatewayModelRoutingTest,
       ACreateGoesToAWorkerServingItsModelIdNotJustItsWeights) {
  ExpectCreatesOnTheirModelsWorker("alias", "fp-tiny");
}

// A model whose worker joined while the gateway was idle: the create's
// NOT_FOUND (final to a client) is decided on a registry list read within
// a refresh, so it finds the new worker instead of the list the gateway
// kept from before (the first create after the pause was MODEL_NOT_FOUND,
// the next one fine).
TEST_F(GatewayTest, AModelOfAWorkerThatJoinedWhileIdleIsFound) {
  workers_[1]->list_models = [](v1::ListModelsResponse* resp) {
    v1::Model* m = resp->add_models();
    m->set_model_id("other");
    m->set_fingerprint("fp-other");
    return grpc::Status::OK;
  };
  for (auto& w : workers_) {
    w->create_session = [](int, v1::Session*) { return grpc::Status::OK; };
  }
  std::shared_ptr<StateStore> store(*NewMemoryStateStore({}));
  auto join = [&](int i, const std::string& fingerprint) {
    WorkerInfo w;
    w.worker_id = absl::StrCat("w", i);
    w.address = workers_[i]->address();
    w.model_fingerprints = {fingerprint};
    ASSERT_TRUE(store->RegisterWorker(w, absl::Minutes(5)).ok());
  };
  join(0, "fp-tiny");
  GatewayOptions options;
  options.router.registry_refresh = absl::Milliseconds(100);
  Start(options, store, /*static_workers=*/false);
  auto create = [&](const std::string& model) {
    grpc::ClientContext ctx;
    v1::CreateSessionRequest req;
    req.set_request_id(absl::StrCat("r-", model));
    req.set_model_id(model);
    v1::Session resp;
    return FromGrpcStatus(
        v1::Sessions::NewStub(channel_)->CreateSession(&ctx, req, &resp));
  };
  EXPECT_EQ(GetReason(create("other")), Reason::kModelNotFound);
  EXPECT_TRUE(create("tiny").ok());
  join(1, "fp-other");
  absl::SleepFor(absl::Milliseconds(300));  // the gateway's list is stale
  const absl::Status found = create("other");
  EXPECT_TRUE(found.ok()) << found;
  EXPECT_EQ(GetReason(create("none")), Reason::kModelNotFound);
}

// A worker that restarted serving another model under the same id and
// address re-registers with that model's fingerprint: the gateway asks it
// again instead of routing by the models it answered before (it found no
// worker for the new model: MODEL_NOT_FOUND).
TEST_F(GatewayTest, AWorkerRestartedWithAnotherModelIsAskedAgain) {
  std::atomic<bool> restarted{false};
  workers_[0]->list_models = [&restarted](v1::ListModelsResponse* resp) {
    v1::Model* m = resp->add_models();
    m->set_model_id(restarted ? "other" : "tiny");
    m->set_fingerprint(restarted ? "fp-other" : "fp-tiny");
    return grpc::Status::OK;
  };
  workers_[0]->create_session = [](int, v1::Session*) {
    return grpc::Status::OK;
  };
  std::shared_ptr<StateStore> store(*NewMemoryStateStore({}));
  auto join = [&](const std::string& fingerprint) {
    WorkerInfo w;
    w.worker_id = "w0";
    w.address = workers_[0]->address();
    w.model_fingerprints = {fingerprint};
    ASSERT_TRUE(store->RegisterWorker(w, absl::Minutes(5)).ok());
  };
  join("fp-tiny");
  GatewayOptions options;
  options.router.registry_refresh = absl::Milliseconds(100);
  Start(options, store, /*static_workers=*/false);
  auto create = [&](const std::string& model) {
    grpc::ClientContext ctx;
    v1::CreateSessionRequest req;
    req.set_request_id(absl::StrCat("r-", model));
    req.set_model_id(model);
    v1::Session resp;
    return FromGrpcStatus(
        v1::Sessions::NewStub(channel_)->CreateSession(&ctx, req, &resp));
  };
  EXPECT_TRUE(create("tiny").ok());
  restarted = true;
  join("fp-other");
  absl::SleepFor(absl::Milliseconds(300));  // the registry is read again
  const absl::Status found = create("other");
  EXPECT_TRUE(found.ok()) << found;
}

// When every worker's answer meant "try another" the call ends UNAVAILABLE
// (retry later), never a worker's CANCELLED (a client would take it for its
// own cancellation) or the internal ABORTED/FENCED.
TEST_F(GatewayTest, ACallNoWorkerCompletedIsUnavailable) {
  for (const grpc::Status& answer :
       {ToGrpcStatus(MakeError(absl::StatusCode::kAborted, Reason::kFenced,
                               "taken over")),
        grpc::Status(grpc::StatusCode::CANCELLED, "shutting down")}) {
    Script<grpc::Status(int)>(&ScriptedWorker::get_session,
                              [answer](int) { return answer; });
    if (server_ == nullptr) Start();
    grpc::ClientContext ctx;
    v1::GetSessionRequest req;
    req.set_session_id("s");
    v1::Session resp;
    const grpc::Status st =
        v1::Sessions::NewStub(channel_)->GetSession(&ctx, req, &resp);
    EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE)
        << st.error_message();
    // The gateway's own answer, typed like a draining worker's.
    EXPECT_EQ(GetReason(FromGrpcStatus(st)), Reason::kOverloaded);
    EXPECT_TRUE(GetErrorMetadata(FromGrpcStatus(st), "retry_after_ms"));
  }
}

// A call no worker could be reached for ends UNAVAILABLE without the
// transport's text, which names the workers' addresses (the cluster's, not
// the caller's to see; the gateway's log has them).
TEST_F(GatewayTest, AGivenUpCallDoesNotNameWorkerAddresses) {
  Start();
  const std::vector<std::string> addresses = {workers_[0]->address(),
                                              workers_[1]->address()};
  for (auto& w : workers_) w.reset();  // both gone: nothing answers
  grpc::ClientContext ctx;
  v1::GetSessionRequest req;
  req.set_session_id("s");
  v1::Session resp;
  const grpc::Status st =
      v1::Sessions::NewStub(channel_)->GetSession(&ctx, req, &resp);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE)
      << st.error_message();
  EXPECT_EQ(GetReason(FromGrpcStatus(st)), Reason::kOverloaded);
  for (const std::string& address : addresses) {
    const std::string port = address.substr(address.rfind(':') + 1);
    EXPECT_THAT(st.error_message(), Not(HasSubstr(port)));
  }
  EXPECT_THAT(st.error_message(), Not(HasSubstr("ipv4")));
}

TEST(GatewayFailoverTest, GivingUpKeepsAWorkersAnswerNotTheTransportsText) {
  const grpc::Status transport = gateway::Gateway::GaveUp(
      grpc::Status(grpc::StatusCode::UNAVAILABLE,
                   "failed to connect to all addresses; last error: UNKNOWN: "
                   "ipv4:10.9.8.7:50051: Connection refused"));
  EXPECT_EQ(transport.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(transport.error_message(), Not(HasSubstr("10.9.8.7")));
  EXPECT_THAT(transport.error_message(),
              HasSubstr("the last one tried did not answer (UNAVAILABLE)"));
  const grpc::Status answered = gateway::Gateway::GaveUp(ToGrpcStatus(
      MakeError(absl::StatusCode::kUnavailable, Reason::kOverloaded,
                "the worker is draining", {{"stopping", "true"}})));
  EXPECT_THAT(answered.error_message(),
              HasSubstr("the last answered UNAVAILABLE: the worker is "
                        "draining"));
}

// A worker that is leaving (draining, or its scheduler shutting down) says
// so with stopping=true, and the gateway moves the call; a worker that is
// only overloaded does not get its call moved (the client backs off).
TEST(GatewayFailoverTest, ALeavingWorkerIsFailedOverAnOverloadedOneIsNot) {
  auto unavailable = [](const char* message, ErrorMetadata metadata) {
    return ToGrpcStatus(MakeError(absl::StatusCode::kUnavailable,
                                  Reason::kOverloaded, message, metadata));
  };
  EXPECT_TRUE(gateway::Gateway::ShouldFailover(
      unavailable("the worker is shutting down",
                  {{"retry_after_ms", "100"}, {"stopping", "true"}})));
  EXPECT_TRUE(gateway::Gateway::ShouldFailover(
      unavailable("the worker is draining", {{"retry_after_ms", "100"}})));
  EXPECT_FALSE(gateway::Gateway::ShouldFailover(
      unavailable("queue full", {{"retry_after_ms", "100"}})));
  EXPECT_TRUE(gateway::Gateway::ShouldFailover(
      grpc::Status(grpc::StatusCode::UNAVAILABLE, "connection refused")));
}

// A loopback port bound but not listening: connections to it are refused,
// as to a killed worker's, and nothing else can take it while this lives.
class RefusingPort {
 public:
  RefusingPort() {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    if (fd_ < 0 || bind(fd_, reinterpret_cast<sockaddr*>(&addr), len) != 0 ||
        getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
      ADD_FAILURE() << "cannot bind a loopback port";
      return;
    }
    address_ = absl::StrCat("127.0.0.1:", ntohs(addr.sin_port));
  }
  ~RefusingPort() {
    if (fd_ >= 0) close(fd_);
  }
  RefusingPort(const RefusingPort&) = delete;
  RefusingPort& operator=(const RefusingPort&) = delete;
  const std::string& address() const { return address_; }

 private:
  int fd_ = -1;
  std::string address_;
};

// After a burst of worker deaths the registry lists dead workers until
// their heartbeats expire. A worker that could not be reached never got
// the call, so a failover from it costs no attempt: with max_attempts 2
// and eight dead workers ranked ahead of the two live ones, unary and
// streaming calls still reach a live worker.
TEST_F(GatewayTest, UnreachableWorkersCostNoAttempts) {
  std::atomic<int> got[2] = {0, 0};
  for (int i = 0; i < 2; ++i) {
    workers_[i]->get_session = [&got, i](int) {
      got[i].fetch_add(1);
      return grpc::Status::OK;
    };
  }
  GatewayOptions options;
  options.max_attempts = 2;
  // Each call meets every dead worker (none stays avoided as a suspect).
  options.router.suspect_for = absl::ZeroDuration();
  std::vector<std::unique_ptr<RefusingPort>> dead;
  for (int i = 0; i < 8; ++i) {
    dead.push_back(std::make_unique<RefusingPort>());
    options.router.static_workers.push_back(dead.back()->address());
  }
  // A session every dead worker outranks.
  std::string session;
  for (int n = 0; session.empty(); ++n) {
    const std::string key = absl::StrCat("default/s", n);
    const double best_live =
        std::max(RendezvousScore(key, workers_[0]->address(), 0),
                 RendezvousScore(key, workers_[1]->address(), 0));
    bool dead_first = true;
    for (const std::string& a : options.router.static_workers) {
      dead_first &= RendezvousScore(key, a, 0) > best_live;
    }
    if (dead_first) session = absl::StrCat("s", n);
  }
  Start(options);
  grpc::ClientContext ctx;
  v1::GetSessionRequest req;
  req.set_session_id(session);
  v1::Session resp;
  const grpc::Status st =
      v1::Sessions::NewStub(channel_)->GetSession(&ctx, req, &resp);
  EXPECT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(got[0].load() + got[1].load(), 1);

  // An Append: every request acked, by a live worker, the ninth tried.
  grpc::ClientContext actx;
  auto stream = v1::Streams::NewStub(channel_)->Append(&actx);
  v1::AppendRequest r;
  r.set_session_id(session);
  r.set_text_utf8("hello");
  ASSERT_TRUE(stream->Write(r));
  stream->WritesDone();
  v1::AppendResponse ack;
  ASSERT_TRUE(stream->Read(&ack));
  EXPECT_EQ(ack.input_offset(), 5u);
  EXPECT_TRUE(stream->Finish().ok());
  auto attempts =
      actx.GetServerTrailingMetadata().find("x-statestream-attempts");
  ASSERT_NE(attempts, actx.GetServerTrailingMetadata().end());
  EXPECT_EQ(std::string(attempts->second.data(), attempts->second.size()), "9");
}

// Connections to worker addresses no call has used for a while are closed
// (a rescheduled pod comes back on another address: without this the
// gateway would keep one per address ever seen).
TEST_F(GatewayTest, IdleWorkerConnectionsAreClosed) {
  Script<grpc::Status(int)>(&ScriptedWorker::get_session,
                            [](int) { return grpc::Status::OK; });
  GatewayOptions options;
  options.metrics = &metrics_;
  options.idle_channel_timeout = absl::Seconds(2);
  Start(options);
  grpc::ClientContext ctx;
  v1::GetSessionRequest req;
  req.set_session_id("s");
  v1::Session resp;
  ASSERT_TRUE(
      v1::Sessions::NewStub(channel_)->GetSession(&ctx, req, &resp).ok());
  auto channels = [&] {
    const std::string text = metrics_.Render();
    const std::string key = "\nstatestream_gateway_worker_channels ";
    const size_t at = text.find(key);
    return at == std::string::npos ? -1
                                   : std::stoi(text.substr(at + key.size()));
  };
  EXPECT_EQ(channels(), 1);
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (channels() != 0 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_EQ(channels(), 0);
}

// A tenant at its session limit may still retry a create that succeeded
// (its reply was lost): the session exists, so the create goes to a worker
// (which returns it) instead of TENANT_LIMIT. A create of a new session is
// refused, and so is a request id whose derived session is past the
// request-id window.
TEST_F(GatewayTest, ARetriedCreateAtTheSessionLimitReachesAWorker) {
  // The store's clock: "old" is created two hours back.
  FakeClock clock(absl::Now() - absl::Hours(2));
  MemoryStateStoreOptions store_options;
  store_options.clock = &clock;
  std::shared_ptr<StateStore> store(*NewMemoryStateStore(store_options));
  auto made = [&](const std::string& id) {
    CreateSessionRequest r;
    r.key = {"default", id};
    r.model_id = "tiny";
    r.initial_state.model_fingerprint = "fp";
    ASSERT_TRUE(store->CreateSession(r).ok());
  };
  made(DerivedSessionId("default", "create-old"));
  clock.Advance(absl::Hours(2));
  made("named");
  made(DerivedSessionId("default", "create-generated"));
  Script<grpc::Status(int, v1::Session*)>(&ScriptedWorker::create_session,
                                          [](int, v1::Session* s) {
                                            s->set_session_id("returned");
                                            return grpc::Status::OK;
                                          });
  TenantLimitsOptions limits;
  limits.defaults.max_sessions = 3;
  GatewayOptions options;
  options.limits = std::make_shared<TenantLimits>(limits, store.get());
  Start(options, store);
  auto create = [&](const std::string& session_id,
                    const std::string& request_id) {
    grpc::ClientContext ctx;
    v1::CreateSessionRequest req;
    req.set_session_id(session_id);
    req.set_request_id(request_id);
    v1::Session resp;
    return FromGrpcStatus(
        v1::Sessions::NewStub(channel_)->CreateSession(&ctx, req, &resp));
  };
  EXPECT_TRUE(create("named", "create-named").ok());
  EXPECT_TRUE(create("", "create-generated").ok());
  EXPECT_EQ(calls_.load(), 2);
  EXPECT_EQ(GetReason(create("new", "create-new")), Reason::kTenantLimit);
  EXPECT_EQ(GetReason(create("", "create-other")), Reason::kTenantLimit);
  // A request id reused past the workers' window (an hour): its derived
  // session is another request's, and a worker would make a new one.
  EXPECT_EQ(GetReason(create("", "create-old")), Reason::kTenantLimit);
  EXPECT_EQ(calls_.load(), 2);
}

}  // namespace
}  // namespace statestream
