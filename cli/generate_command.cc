// SPDX-License-Identifier: Apache-2.0
// `statestream generate`: sample a continuation from a session, streaming
// the text to stdout. Its sampling flags are shared with `chat`.
#include <unistd.h>

#include <cmath>
#include <iostream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "cli/cli_util.h"
#include "cli/client_flags.h"
#include "cli/command.h"
#include "cli/generate_flags.h"
#include "common/status.h"
#include "worker/engine/sampler.h"

ABSL_FLAG(std::string, prompt, "",
          "generate: text appended before sampling (- reads stdin).");
ABSL_FLAG(int32_t, max_tokens, 256,
          "generate/chat: most tokens to sample; 0: the server's default "
          "(256).");
ABSL_FLAG(double, temperature, 1.0,
          "generate/chat: from 0 to 100; 0 is greedy.");
ABSL_FLAG(double, top_p, 1.0,
          "generate/chat: nucleus sampling mass, in (0, 1]; 1 = off.");
ABSL_FLAG(int32_t, top_k, 0, "generate/chat: 0 = no top-k truncation.");
ABSL_FLAG(int64_t, sample_seed, -1,
          "generate/chat: the sampler's seed; -1: derived by the server from "
          "the session and request id.");
ABSL_FLAG(std::vector<std::string>, stop, {},
          "generate/chat: stop strings, comma-separated.");
ABSL_FLAG(bool, commit, false,
          "generate: append prompt and output to the session (default: a "
          "side branch that changes nothing).");

namespace statestream::cli {

const char kGenerateFlagsFile[] = __FILE__;

absl::StatusOr<v1::GenerateRequest> GenerateRequestFromFlags() {
  // Both are uint32 on the wire: a negative value would wrap to ~4e9.
  const int32_t max_tokens = absl::GetFlag(FLAGS_max_tokens);
  if (max_tokens < 0) {
    return UsageError(absl::StrCat("--max-tokens must not be negative (got ",
                                   max_tokens, ")"));
  }
  const int32_t top_k = absl::GetFlag(FLAGS_top_k);
  if (top_k < 0) {
    return UsageError(absl::StrCat("--top-k must not be negative (got ", top_k,
                                   "; 0 = no top-k)"));
  }
  // The sampler's own bounds (worker/engine/sampler.cc, Validate), checked
  // here so that a typo is a usage error before any connection is made.
  const float temperature =
      static_cast<float>(absl::GetFlag(FLAGS_temperature));
  if (!(temperature >= 0.0f && temperature <= engine::kMaxApiTemperature)) {
    return UsageError(absl::StrCat("--temperature must be from 0 to 100 (got ",
                                   absl::GetFlag(FLAGS_temperature),
                                   "; 0 = greedy)"));
  }
  const float top_p = static_cast<float>(absl::GetFlag(FLAGS_top_p));
  if (!(top_p > 0.0f && top_p <= 1.0f)) {
    return UsageError(absl::StrCat("--top-p must be in (0, 1] (got ",
                                   absl::GetFlag(FLAGS_top_p),
                                   "; 1 = no nucleus truncation)"));
  }
  v1::GenerateRequest req;
  req.set_max_tokens(static_cast<uint32_t>(max_tokens));
  v1::SamplingParams* s = req.mutable_sampling();
  s->set_temperature(temperature);
  s->set_top_p(top_p);
  s->set_top_k(static_cast<uint32_t>(top_k));
  if (absl::GetFlag(FLAGS_sample_seed) < -1) {
    return UsageError(absl::StrCat(
        "--sample-seed must be 0 or more, or -1 for the server's (got ",
        absl::GetFlag(FLAGS_sample_seed), ")"));
  }
  if (absl::GetFlag(FLAGS_sample_seed) >= 0) {
    s->set_seed(static_cast<uint64_t>(absl::GetFlag(FLAGS_sample_seed)));
  }
  if (absl::GetFlag(FLAGS_stop).size() > 16) {  // the API's bound
    return UsageError(absl::StrCat("--stop: at most 16 stop strings (got ",
                                   absl::GetFlag(FLAGS_stop).size(), ")"));
  }
  for (const std::string& stop : absl::GetFlag(FLAGS_stop)) {
    // "a,,b" or ",": the API's stop strings are 1-256 bytes each.
    if (stop.empty()) {
      return UsageError(
          "--stop: each stop string must be 1-256 bytes (an "
          "empty one is between two commas)");
    }
    if (stop.size() > 256) {
      return UsageError(
          absl::StrCat("--stop: each stop string must be 1-256 bytes (one has ",
                       stop.size(), ")"));
    }
    SS_RETURN_IF_ERROR(CheckUtf8("--stop", stop));
    req.add_stop_strings(stop);
  }
  return req;
}

absl::StatusOr<v1::GenerateDone> StreamGeneration(
    const client::Session& session, v1::GenerateRequest request, bool json) {
  SS_ASSIGN_OR_RETURN(auto stream, session.Generate(std::move(request)));
  client::GenerateChunk chunk;
  while (stream->Next(&chunk)) {
    if (json) {
      v1::GenerateChunk c;
      c.set_index(chunk.index);
      c.mutable_tokens()->Add(chunk.tokens.begin(), chunk.tokens.end());
      c.set_text_utf8(chunk.text);
      if (chunk.start_input_offset) {
        c.set_start_input_offset(*chunk.start_input_offset);
      }
      std::cout << ToJson(c) << "\n";
    } else {
      std::cout << chunk.text;
    }
    std::cout.flush();
  }
  SS_RETURN_IF_ERROR(stream->status());
  return stream->done();
}

namespace {

absl::Status Generate(const std::vector<std::string>& args) {
  if (!args.empty()) {
    return UsageError(
        "generate takes no arguments: the session is --session ID, the "
        "prompt --prompt TEXT");
  }
  SS_ASSIGN_OR_RETURN(std::string session_id, SessionFlagValue());
  SS_ASSIGN_OR_RETURN(v1::GenerateRequest req, GenerateRequestFromFlags());
  // The client flags first: a usage error is reported at once, not after
  // stdin has been read to its end.
  SS_ASSIGN_OR_RETURN(auto client, ClientFromFlags());
  std::string prompt = absl::GetFlag(FLAGS_prompt);
  if (prompt == "-") {
    SS_ASSIGN_OR_RETURN(prompt, ReadStdin());
  }
  if (!prompt.empty()) req.set_prompt_text_utf8(prompt);
  req.set_commit(absl::GetFlag(FLAGS_commit));
  const bool json = JsonOutputFlag();
  SS_ASSIGN_OR_RETURN(
      v1::GenerateDone done,
      StreamGeneration(client->OpenSession(session_id), req, json));
  if (json) {
    std::cout << ToJson(done) << "\n";
  } else {
    // A terminal gets a line break so that the shell's prompt starts on a
    // line of its own; a pipe or a file gets exactly the generated text.
    if (isatty(STDOUT_FILENO)) std::cout << "\n";
    std::cerr << "[" << v1::FinishReason_Name(done.finish_reason()) << ", "
              << done.usage().output_tokens() << " tokens"
              << (done.committed() ? ", committed" : "") << "]\n";
  }
  return absl::OkStatus();
}

// Usage errors exit 2, other failures 1; so does output that did not
// reach stdout (a full disk).
int Run(const std::vector<std::string>& args) {
  absl::Status s = Generate(args);
  if (s.ok()) s = FlushStdout();
  return ReportStatus(s);
}

}  // namespace

const Command& GenerateCommand() {
  static const Command kCommand{
      "generate",
      "Sample a continuation from a session, streaming the text.",
      "--session ID [--prompt TEXT|-] [--max-tokens N] [--temperature T]\n"
      "    [--sample-seed S] [--stop a,b] [--commit] [--json]\n\n"
      "Prints the text as it arrives (stdout; exactly the generated text,\n"
      "plus a line break on a terminal) and a summary (stderr); with\n"
      "--json one GenerateChunk per line, then the GenerateDone, in the\n"
      "proto3 JSON mapping: a chunk's text_utf8 is a bytes field, so it is\n"
      "base64 (decode it to get the text; a chunk may end inside a UTF-8\n"
      "character); the first chunk of a generation the server sampled\n"
      "carries start_input_offset, the session's input_offset it started\n"
      "from. Resumes transparently after a failure (same tokens).\n"
      "Without --commit the session is not changed. --max-tokens and\n"
      "--top-k must not be negative, --temperature is from 0 to 100,\n"
      "--top-p is in (0, 1]; --sample-seed is 0 or more, or -1\n"
      "(the server derives one).",
      {__FILE__, kClientFlagsFile, kTlsFlagsFile},
      &Run};
  return kCommand;
}

}  // namespace statestream::cli
