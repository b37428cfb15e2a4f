// SPDX-License-Identifier: Apache-2.0
// Bad input to ImportState: malformed headers, layouts no state of the
// model has, chunks missing, out of order or corrupt; a typed error and
// no session made (tests/api_bad_input_fixture.h).
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "statestream/v1/statestream.grpc.pb.h"
#include "tests/api_bad_input_fixture.h"

namespace statestream {
namespace {

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
      // A layout no state of the model has: refused at the header (a
      // gateway, which knows the model, before it buffers the chunks).
      {"total_bytes past what the model's state encodes to",
       imp("imp-huge",
           [&](Messages* m) {
             head(m)->mutable_state()->set_total_bytes(uint64_t{1} << 40);
             head(m)->mutable_state()->set_chunk_count(1 << 20);
           }),
       WantCorrupt("total_bytes out of range")},
      {"chunk_count that disagrees with total_bytes",
       imp("imp-count",
           [&](Messages* m) {
             head(m)->mutable_state()->set_chunk_count(
                 head(m)->state().chunk_count() + 1);
           }),
       WantCorrupt("chunk_bytes/chunk_count disagree with total_bytes")},
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
  ExpectGone({"imp-mode", "imp-foreign", "imp-huge", "imp-count", "imp-rid",
              "imp-nostate", "imp-nohead", "imp-crc", "imp-short", "imp-gap",
              "imp-garbled", "imp-nowhere", "imp-cas", "imp-labels",
              "imp-ttl"});
  ExpectAt("imp-src", 2, 10);
  // Control: the same messages under a free id import fine.
  const absl::Status ok = imp("imp-ok", [](Messages*) {})();
  EXPECT_TRUE(ok.ok()) << ok;
}

}  // namespace
}  // namespace statestream
