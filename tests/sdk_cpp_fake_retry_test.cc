// SPDX-License-Identifier: Apache-2.0
// The C++ SDK and the CLI against fake servers (tests/sdk_cpp_fake_server.h):
// retries with their backoff, reasons, targets and cancellation, deletes
// whose replies were lost, listings whose server repeats its page token,
// and the CLI's rollback retries.
#include <grpcpp/server_builder.h>

#include <algorithm>
#include <atomic>
#include <cmath>
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
#include "common/grpc_status.h"
#include "common/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "statestream/client.h"
#include "statestream/v1/statestream.grpc.pb.h"
#include "tests/sdk_cpp_fake_server.h"
#include "tests/subprocess.h"

namespace statestream {
namespace {

using sdk_test::FakeServer;
using sdk_test::Listen;
using sdk_test::Serve;

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

// A Sessions server that creates every fork asked for and cannot read a
// session (its GetSession is down).
class ForksButCannotRead final : public v1::Sessions::Service {
 public:
  grpc::Status CreateSession(grpc::ServerContext*,
                             const v1::CreateSessionRequest* r,
                             v1::Session* out) override {
    forks_++;
    out->set_session_id(r->session_id().empty() ? "made-by-server"
                                                : r->session_id());
    out->set_version(1);
    return grpc::Status::OK;
  }
  grpc::Status GetSession(grpc::ServerContext*, const v1::GetSessionRequest*,
                          v1::Session*) override {
    return grpc::Status(grpc::StatusCode::UNAVAILABLE, "down");
  }
  int forks() const { return forks_; }

 private:
  std::atomic<int> forks_{0};
};

// `statestream session fork` prints the fork CreateSession made: a read
// after it that failed lost the server-chosen id (exit 1, nothing said)
// and a rerun made a second fork.
TEST(CliForkTest, AForkIsPrintedAsItWasMade) {
  ForksButCannotRead service;
  std::string address;
  std::unique_ptr<grpc::Server> server = Listen(&service, &address);
  ASSERT_NE(server, nullptr);
  auto ran = e2e::Run({STATESTREAM_BIN, "session", "fork", "s", "--target",
                       address, "--max-attempts=2"});
  ASSERT_TRUE(ran.ok()) << ran.status();
  EXPECT_EQ(ran->exit_code, 0) << ran->err;
  EXPECT_THAT(ran->out, ::testing::HasSubstr("made-by-server"));
  EXPECT_EQ(service.forks(), 1);
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
