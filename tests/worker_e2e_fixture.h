// SPDX-License-Identifier: Apache-2.0
// The fixture of the tests of the public API served by a real `statestream
// serve` process (worker_e2e_test.cc, worker_e2e_errors_test.cc): typed
// helpers for the calls the tests make.
#ifndef STATESTREAM_TESTS_WORKER_E2E_FIXTURE_H_
#define STATESTREAM_TESTS_WORKER_E2E_FIXTURE_H_

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/crc32c.h"
#include "common/grpc_status.h"
#include "common/status.h"
#include "gtest/gtest.h"
#include "statestream/v1/statestream.grpc.pb.h"
#include "tests/serve_fixture.h"
#include "tests/subprocess.h"

namespace statestream {

class WorkerE2eTest : public e2e::ServeTest {
 protected:
  v1::Session Create(const std::string& id, const std::string& tenant = "") {
    v1::CreateSessionRequest req;
    req.set_request_id("create-" + id);
    req.set_session_id(id);
    v1::Session s;
    auto ctx = Ctx(tenant);
    grpc::Status st = sessions_->CreateSession(ctx.get(), req, &s);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return s;
  }

  absl::StatusOr<v1::Session> Get(const std::string& id,
                                  const std::string& tenant = "") {
    v1::GetSessionRequest req;
    req.set_session_id(id);
    v1::Session s;
    auto ctx = Ctx(tenant);
    grpc::Status st = sessions_->GetSession(ctx.get(), req, &s);
    if (!st.ok()) return FromGrpcStatus(st);
    return s;
  }

  std::string Export(const std::string& id, absl::Status* status = nullptr,
                     v1::StateHeader* header = nullptr,
                     const std::string& tenant = "") {
    v1::ExportStateRequest req;
    req.set_session_id(id);
    auto ctx = Ctx(tenant);
    auto reader = sessions_->ExportState(ctx.get(), req);
    v1::ExportStateResponse msg;
    std::string blob;
    while (reader->Read(&msg)) {
      if (msg.has_header() && header != nullptr) *header = msg.header();
      if (msg.has_chunk()) blob += msg.chunk().data();
    }
    absl::Status st = FromGrpcStatus(reader->Finish());
    if (status != nullptr) *status = st;
    EXPECT_TRUE(status != nullptr || st.ok()) << st;
    return blob;
  }

  // One ImportState call: `header`, then `data` in chunks of the state
  // header's chunk_bytes.
  absl::Status Import(const v1::ImportHeader& header, const std::string& data,
                      const std::string& tenant = "") {
    auto ctx = Ctx(tenant);
    v1::Session out;
    auto writer = sessions_->ImportState(ctx.get(), &out);
    v1::ImportStateRequest first;
    *first.mutable_header() = header;
    writer->Write(first);
    const uint32_t chunk = header.state().chunk_bytes();
    for (uint32_t i = 0; chunk > 0 && size_t{i} * chunk < data.size(); ++i) {
      v1::ImportStateRequest c;
      c.mutable_chunk()->set_index(i);
      std::string piece = data.substr(size_t{i} * chunk, chunk);
      c.mutable_chunk()->set_crc32c(Crc32c(0, piece.data(), piece.size()));
      c.mutable_chunk()->set_data(std::move(piece));
      if (!writer->Write(c)) break;
    }
    writer->WritesDone();
    return FromGrpcStatus(writer->Finish());
  }

  struct GenResult {
    std::vector<uint32_t> tokens;
    std::string text;
    v1::GenerateDone done;
    int dones = 0;
    // start_input_offset of the chunks that carry one, by chunk index.
    std::vector<std::pair<uint32_t, uint64_t>> starts;
    std::vector<v1::TokenLogprob> logprobs;  // with logprobs asked for
    absl::Status status;
  };
  GenResult Generate(const v1::GenerateRequest& req,
                     const std::string& tenant = "") {
    GenResult out;
    auto ctx = Ctx(tenant);
    auto reader = streams_->Generate(ctx.get(), req);
    v1::GenerateResponse msg;
    while (reader->Read(&msg)) {
      if (msg.has_chunk()) {
        EXPECT_EQ(msg.chunk().index(), out.tokens.size());
        if (msg.chunk().has_start_input_offset()) {
          out.starts.emplace_back(msg.chunk().index(),
                                  msg.chunk().start_input_offset());
        }
        for (uint32_t t : msg.chunk().tokens()) out.tokens.push_back(t);
        for (const auto& lp : msg.chunk().logprobs())
          out.logprobs.push_back(lp);
        out.text += msg.chunk().text_utf8();
      } else {
        out.done = msg.done();
        ++out.dones;
      }
    }
    out.status = FromGrpcStatus(reader->Finish());
    // Exactly one `done`, last, on success; its usage counts every token.
    if (out.status.ok()) {
      EXPECT_EQ(out.dones, 1);
      EXPECT_EQ(out.done.usage().output_tokens(), out.tokens.size());
    }
    return out;
  }

  static v1::GenerateRequest GenRequest(const std::string& id,
                                        const std::string& request_id,
                                        int max_tokens, bool commit) {
    v1::GenerateRequest g;
    g.set_session_id(id);
    g.set_request_id(request_id);
    g.set_max_tokens(max_tokens);
    g.set_commit(commit);
    g.mutable_sampling()->set_seed(42);
    g.mutable_sampling()->set_temperature(0.8f);
    return g;
  }
};

}  // namespace statestream

#endif  // STATESTREAM_TESTS_WORKER_E2E_FIXTURE_H_
