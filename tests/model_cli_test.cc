// SPDX-License-Identifier: Apache-2.0
// `statestream model ...`, `tokenize` and `detokenize` as the acceptance
// checks call them: real processes, JSON output compared with the golden
// vectors, save/resume through state files, and bad input.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <deque>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/testing/scratch_dir.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "state_store/state_codec.h"
#include "tests/subprocess.h"
#include "worker/engine/golden.h"
#include "worker/generation_record.h"

namespace statestream::e2e {
namespace {

using engine::testing::LoadJson;
using engine::testing::SharedPath;

RunResult Cli(std::vector<std::string> args) {
  args.insert(args.begin(), STATESTREAM_BIN);
  auto r = Run(args, absl::Seconds(60));
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *r : RunResult{};
}

std::string Temp(const std::string& name) {
  return "/tmp/ss_model_cli_" + std::to_string(getpid()) + "_" + name;
}

std::vector<nlohmann::json> JsonLines(const std::string& out) {
  std::vector<nlohmann::json> lines;
  for (absl::string_view l : absl::StrSplit(out, '\n', absl::SkipEmpty())) {
    lines.push_back(nlohmann::json::parse(std::string(l)));
  }
  return lines;
}

std::string Join(const std::vector<int>& v) { return absl::StrJoin(v, ","); }

void ExpectLogitsClose(const nlohmann::json& got, const nlohmann::json& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    const double w = want[i].get<double>();
    ASSERT_NEAR(got[i].get<double>(), w, 1e-4 + 1e-4 * std::abs(w)) << i;
  }
}

TEST(ModelCliTest, InfoReportsTheShapes) {
  SS_REQUIRE_SHARED_DATA();
  RunResult r = Cli({"model", "info", "--model",
                     SharedPath("testdata/rwkv7-tiny.safetensors")});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["arch"], "x070");
  EXPECT_EQ(j["n_layer"], 2);
  EXPECT_EQ(j["n_embd"], 128);
  EXPECT_EQ(j["n_head"], 2);
  EXPECT_EQ(j["head_size"], 64);
  EXPECT_EQ(j["dim_ffn"], 512);
  EXPECT_EQ(j["vocab"], 512);
  EXPECT_EQ(j["state_bytes"], 4 * 2 * (2 * 128 + 2 * 64 * 64));
  EXPECT_GT(j["params"].get<int64_t>(), 0);
  EXPECT_FALSE(j["fingerprint"].get<std::string>().empty());
  EXPECT_EQ(j["weights_dtype"], "fp32");
  EXPECT_FALSE(j.contains("bf16_activations"));
}

// Every file of the tiny model, at the golden positions, then save/resume.
// A state file names the tokenizer its model is served with, which must
// have the model's vocabulary: the tiny golden models (512 ids) have none.
// This writes an RWKV-7 model of the World vocabulary's 65,536 ids (1
// layer, 64 wide, `seed`) as `name` in `dir`, with the vocabulary beside
// it as serve pairs them; "" (and a test failure) if that fails.
std::string WorldModel(const ::statestream::testing::ScratchDir& dir,
                       const std::string& name, int seed = 1) {
  const std::string vocab = dir.File("rwkv_vocab_v20230424.txt");
  std::error_code ec;
  if (!std::filesystem::exists(vocab)) {
    std::filesystem::create_symlink(
        SharedPath("testdata/rwkv_vocab_v20230424.txt"), vocab, ec);
  }
  EXPECT_FALSE(ec) << ec.message();
  const std::string model = dir.File(name);
  RunResult made =
      Cli({"model", "random", "--layers=1", "--embd=64", "--vocab=65536",
           "--seed=" + std::to_string(seed), "--out=" + model});
  EXPECT_EQ(made.exit_code, 0) << made.err;
  return made.exit_code == 0 && !ec ? model : "";
}

TEST(ModelCliTest, EvalMatchesGoldenAndResumes) {
  SS_REQUIRE_SHARED_DATA();
  nlohmann::json g = LoadJson(SharedPath("testdata/rwkv7-tiny.golden.json"));
  std::vector<int> tokens = g["tokens"].get<std::vector<int>>();
  std::vector<int> positions = g["logits_positions"].get<std::vector<int>>();
  for (const char* file :
       {"rwkv7-tiny.pth", "rwkv7-tiny.safetensors", "rwkv7-tiny-bf16.pth",
        "rwkv7-tiny-bf16.safetensors"}) {
    const bool bf16 = std::string(file).find("bf16") != std::string::npos;
    const std::string model = SharedPath(std::string("testdata/") + file);
    RunResult r = Cli({"model", "eval", "--model", model, "--tokens",
                       Join(tokens), "--positions", Join(positions)});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    auto lines = JsonLines(r.out);
    ASSERT_EQ(lines.size(), positions.size());
    const nlohmann::json& want =
        bf16 ? g["bf16_checkpoint"]["logits"] : g["logits"];
    for (size_t j = 0; j < positions.size(); ++j) {
      EXPECT_EQ(lines[j]["position"], positions[j]);
      ExpectLogitsClose(lines[j]["logits"], want[j]);
    }
    if (!bf16) {
      // The continuation: the golden final state's next tokens.
      std::vector<int> cont =
          g["continuation"]["tokens"].get<std::vector<int>>();
      std::vector<int> all = tokens;
      all.insert(all.end(), cont.begin(), cont.end());
      std::vector<int> at;
      for (size_t j = 0; j < cont.size(); ++j) {
        at.push_back(static_cast<int>(tokens.size() + j));
      }
      RunResult c = Cli({"model", "eval", "--model", model, "--tokens",
                         Join(all), "--positions", Join(at)});
      ASSERT_EQ(c.exit_code, 0) << c.err;
      auto cl = JsonLines(c.out);
      ASSERT_EQ(cl.size(), cont.size());
      for (size_t j = 0; j < cont.size(); ++j) {
        ExpectLogitsClose(cl[j]["logits"], g["continuation"]["logits"][j]);
      }
    }
  }
  // Split after 20 tokens: state out, state in, the same logits from there
  // on as one run (bit for bit, so the printed text is identical).
  ::statestream::testing::ScratchDir dir("ss-model-cli");
  const std::string model = WorldModel(dir, "world.safetensors");
  ASSERT_FALSE(model.empty());
  const std::string state = dir.File("state.bin");
  std::vector<int> head(tokens.begin(), tokens.begin() + 20);
  std::vector<int> tail(tokens.begin() + 20, tokens.end());
  ASSERT_EQ(Cli({"model", "eval", "--model", model, "--tokens", Join(head),
                 "--state-out", state})
                .exit_code,
            0);
  std::vector<int> tail_positions, whole_positions;
  for (size_t j = 0; j < tail.size(); ++j) {
    tail_positions.push_back(static_cast<int>(j));
    whole_positions.push_back(static_cast<int>(20 + j));
  }
  RunResult resumed =
      Cli({"model", "eval", "--model", model, "--tokens", Join(tail),
           "--positions", Join(tail_positions), "--state-in", state});
  RunResult whole = Cli({"model", "eval", "--model", model, "--tokens",
                         Join(tokens), "--positions", Join(whole_positions)});
  ASSERT_EQ(resumed.exit_code, 0) << resumed.err;
  ASSERT_EQ(whole.exit_code, 0) << whole.err;
  auto a = JsonLines(resumed.out), b = JsonLines(whole.out);
  ASSERT_EQ(a.size(), tail.size());
  ASSERT_EQ(b.size(), tail.size());
  for (size_t j = 0; j < tail.size(); ++j) {
    EXPECT_EQ(a[j]["logits"], b[j]["logits"]) << j;
  }
}

// A state file is a session's: --state-in applies --tokens as the service
// applies a token append. Undecided text bytes run first (and a state that
// ends inside a UTF-8 character is refused), a generation checkpointed
// mid-run is dropped, input_offset counts the tokens given; files written
// before states named their tokenizer still load.
TEST(ModelCliTest, EvalAppliesTokensAsATokenAppend) {
  SS_REQUIRE_SHARED_DATA();
  ::statestream::testing::ScratchDir dir("ss-model-cli");
  const std::string model = WorldModel(dir, "world.safetensors");
  ASSERT_FALSE(model.empty());
  const std::string start = dir.File("start.state");
  RunResult r = Cli({"model", "eval", "--model", model, "--tokens=5,6,7",
                     "--state-out", start});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto read = [](const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    std::stringstream bytes;
    bytes << f.rdbuf();
    auto snapshot = DecodeState(bytes.str());
    EXPECT_TRUE(snapshot.ok()) << snapshot.status();
    return snapshot.ok() ? *snapshot : StateSnapshot{};
  };
  auto write = [&](const StateSnapshot& snapshot, const std::string& name) {
    const std::string path = dir.File(name);
    std::ofstream(path, std::ios::binary) << EncodeState(snapshot);
    return path;
  };
  const StateSnapshot begun = read(start);
  EXPECT_EQ(begun.position, 3u);
  EXPECT_EQ(begun.input_offset, 3u);
  EXPECT_TRUE(absl::StrContains(begun.model_fingerprint, "+rwkv_world"))
      << begun.model_fingerprint;

  // Text "a b" appended without a flush, and a generation checkpointed.
  StateSnapshot pending = begun;
  pending.tokenizer_tail = "a b";
  pending.input_offset += 3;
  worker::GenerationRecord checkpointed;
  checkpointed.request_id = "gen-1";
  checkpointed.finish = worker::kGenerationInProgress;
  checkpointed.tokens = {9, 9};
  // (Beside the sampler it continues with, as a worker writes it.)
  pending.sampler_state =
      worker::EncodeSamplerSideData("SAMPLER", {checkpointed}, {});
  r = Cli({"model", "eval", "--model", model, "--tokens=8,9", "--state-in",
           write(pending, "pending.state"), "--state-out",
           dir.File("after.state"), "--positions=0,1"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  // "a b" is 98,333 in the World vocabulary: those run first.
  RunResult whole = Cli({"model", "eval", "--model", model, "--tokens",
                         "5,6,7,98,333,8,9", "--positions=5,6"});
  ASSERT_EQ(whole.exit_code, 0) << whole.err;
  auto got = JsonLines(r.out), want = JsonLines(whole.out);
  ASSERT_EQ(got.size(), 2u);
  ASSERT_EQ(want.size(), 2u);
  for (size_t j = 0; j < 2; ++j) {
    EXPECT_EQ(got[j]["position"], j);  // indices into --tokens
    EXPECT_EQ(got[j]["logits"], want[j]["logits"]) << j;
  }
  const StateSnapshot after = read(dir.File("after.state"));
  EXPECT_EQ(after.tokenizer_tail, "");
  EXPECT_EQ(after.position, 7u);
  EXPECT_EQ(after.input_offset, 8u);  // 6 + the two tokens given
  std::string sampler;
  std::deque<worker::GenerationRecord> records;
  ASSERT_TRUE(
      worker::DecodeSamplerSideData(after.sampler_state, &sampler, &records)
          .ok());
  EXPECT_TRUE(records.empty());

  // Text that ends inside a character: no token may follow it.
  StateSnapshot open = begun;
  open.tokenizer_tail = "\xe4\xb8";
  open.input_offset += 2;
  r = Cli({"model", "eval", "--model", model, "--tokens=8", "--state-in",
           write(open, "open.state")});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("INVALID_UTF8"), std::string::npos) << r.err;

  // A file of the model's fingerprint alone (before tokenizers were named).
  StateSnapshot legacy = begun;
  legacy.model_fingerprint =
      begun.model_fingerprint.substr(0, begun.model_fingerprint.find('+'));
  r = Cli({"model", "eval", "--model", model, "--tokens=8,9", "--state-in",
           write(legacy, "legacy.state")});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  whole = Cli({"model", "eval", "--model", model, "--tokens=5,6,7,8,9"});
  ASSERT_EQ(whole.exit_code, 0) << whole.err;
  EXPECT_EQ(JsonLines(r.out)[0]["logits"], JsonLines(whole.out)[0]["logits"]);

  // Without a vocabulary beside the model, eval runs; a state file needs
  // one (--vocab), since it names the tokenizer.
  ::statestream::testing::ScratchDir elsewhere("ss-model-cli");
  const std::string alone = elsewhere.File("alone.safetensors");
  std::filesystem::copy_file(model, alone);
  EXPECT_EQ(Cli({"model", "eval", "--model", alone, "--tokens=5"}).exit_code,
            0);
  r = Cli({"model", "eval", "--model", alone, "--tokens=5", "--state-out",
           elsewhere.File("alone.state")});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("--vocab"), std::string::npos) << r.err;
  r = Cli({"model", "eval", "--model", alone, "--tokens=8,9", "--state-in",
           start, "--vocab", SharedPath("testdata/rwkv_vocab_v20230424.txt")});
  EXPECT_EQ(r.exit_code, 0) << r.err;
}

TEST(ModelCliTest, EvalRejectsBadInput) {
  SS_REQUIRE_SHARED_DATA();
  const std::string model = SharedPath("testdata/rwkv7-tiny.pth");
  RunResult r = Cli({"model", "eval", "--model", model, "--tokens", "1,512"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("INVALID_TOKEN"), std::string::npos) << r.err;
  // Bad flag values are usage errors (2); the rest failures (1).
  r = Cli({"model", "eval", "--model", model, "--tokens", "1,x"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.err.find("--tokens"), std::string::npos) << r.err;
  r = Cli({"model", "eval", "--model", model, "--tokens", ""});
  EXPECT_EQ(r.exit_code, 2);
  r = Cli({"model", "eval", "--model", model, "--tokens", "1,2", "--positions",
           "5"});
  EXPECT_EQ(r.exit_code, 2);
  r = Cli({"model", "eval", "--model", "/nonexistent.pth", "--tokens", "1"});
  EXPECT_EQ(r.exit_code, 1);
  r = Cli({"model", "eval", "--model",
           SharedPath("testdata/rwkv7-tiny.golden.json"), "--tokens", "1"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("INVALID_MODEL_FILE"), std::string::npos) << r.err;

  // A state file needs a tokenizer of the model's vocabulary: the World
  // vocabulary (65,536 ids) is refused for a 512-id model, even though
  // some text would tokenize below 512.
  ::statestream::testing::ScratchDir dir("ss-model-cli");
  for (const char* flag : {"--state-out", "--state-in"}) {
    r = Cli({"model", "eval", "--model", model, "--tokens", "1", flag,
             dir.File("never.bin"), "--vocab",
             SharedPath("testdata/rwkv_vocab_v20230424.txt")});
    EXPECT_EQ(r.exit_code, 1) << flag;
    EXPECT_NE(r.err.find("MODEL_MISMATCH"), std::string::npos) << r.err;
    EXPECT_NE(r.err.find("65536 token ids but model"), std::string::npos)
        << r.err;
  }
  EXPECT_FALSE(std::filesystem::exists(dir.File("never.bin")));
  // The logits lines are on stdout: a state there would be mixed in.
  for (const char* name : {"-", "/dev/stdout", "/dev/fd/1"}) {
    r = Cli({"model", "eval", "--model", model, "--tokens", "1", "--state-out",
             name});
    EXPECT_EQ(r.exit_code, 2) << name;
    EXPECT_NE(r.err.find("stdout holds the logits lines"), std::string::npos)
        << r.err;
  }

  // A corrupt state file and a state of another model.
  const std::string world = WorldModel(dir, "a.safetensors", 1);
  const std::string other = WorldModel(dir, "b.safetensors", 2);
  ASSERT_FALSE(world.empty());
  ASSERT_FALSE(other.empty());
  const std::string state = dir.File("bad_state.bin");
  ASSERT_EQ(Cli({"model", "eval", "--model", world, "--tokens", "1,2",
                 "--state-out", state})
                .exit_code,
            0);
  r = Cli({"model", "eval", "--model", other, "--tokens", "3", "--state-in",
           state});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("MODEL_MISMATCH"), std::string::npos) << r.err;
  // The model's state under a header naming another shape (without
  // last_hidden, which the decoder checks against n_embd) is refused, as an
  // import refuses it: the file written after it never decoded. With the
  // shape left unset, the file written names the model's.
  {
    std::ifstream f(state, std::ios::binary);
    auto decoded = DecodeState(std::string(std::istreambuf_iterator<char>(f),
                                           std::istreambuf_iterator<char>()));
    ASSERT_TRUE(decoded.ok()) << decoded.status();
    StateSnapshot odd = *decoded;
    odd.last_hidden.clear();
    odd.n_embd = 999;
    const std::string odd_path = dir.File("odd_shape.bin");
    std::ofstream(odd_path, std::ios::binary) << EncodeState(odd);
    r = Cli({"model", "eval", "--model", world, "--tokens", "3", "--state-in",
             odd_path, "--state-out", dir.File("odd_out.bin")});
    EXPECT_EQ(r.exit_code, 1);
    EXPECT_NE(r.err.find("MODEL_MISMATCH"), std::string::npos) << r.err;
    EXPECT_FALSE(std::filesystem::exists(dir.File("odd_out.bin")));
    StateSnapshot unset = *decoded;
    unset.last_hidden.clear();
    unset.architecture.clear();
    unset.n_layer = unset.n_embd = unset.n_head = unset.head_size = 0;
    std::ofstream(odd_path, std::ios::binary) << EncodeState(unset);
    r = Cli({"model", "eval", "--model", world, "--tokens", "3", "--state-in",
             odd_path, "--state-out", dir.File("unset_out.bin")});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    std::ifstream written(dir.File("unset_out.bin"), std::ios::binary);
    auto out = DecodeState(std::string(std::istreambuf_iterator<char>(written),
                                       std::istreambuf_iterator<char>()));
    ASSERT_TRUE(out.ok()) << out.status();
    EXPECT_EQ(out->n_embd, decoded->n_embd);
    EXPECT_EQ(out->architecture, decoded->architecture);
  }
  {
    std::fstream f(state, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(100);
    f.put('\x7f');
  }
  r = Cli({"model", "eval", "--model", world, "--tokens", "3", "--state-in",
           state});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("STATE_CORRUPT"), std::string::npos) << r.err;
  EXPECT_EQ(Cli({"model", "frobnicate"}).exit_code, 2);
}

TEST(ModelCliTest, RandomModelsLoadInBothFormats) {
  for (const char* ext : {".pth", ".safetensors"}) {
    const std::string path = Temp(std::string("random") + ext);
    RunResult r =
        Cli({"model",       "random",  "--arch", "x070",    "--layers",
             "3",           "--embd",  "96",     "--vocab", "300",
             "--head-size", "32",      "--ffn",  "320",     "--seed",
             "9",           "--dtype", "bf16",   "--out",   path});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    r = Cli({"model", "info", "--model", path});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    auto j = nlohmann::json::parse(r.out);
    EXPECT_EQ(j["n_layer"], 3);
    EXPECT_EQ(j["n_head"], 3);
    EXPECT_EQ(j["dim_ffn"], 320);
    EXPECT_EQ(j["vocab"], 300);
    EXPECT_EQ(j["weights_dtype"], "bf16");  // kept as stored
    EXPECT_EQ(j["bf16_activations"], "split");
    r = Cli({"model", "info", "--model", path, "--precision", "int8"});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(nlohmann::json::parse(r.out)["weights_dtype"], "int8");
    r = Cli({"model", "eval", "--model", path, "--tokens", "1,2,299"});
    EXPECT_EQ(r.exit_code, 0) << r.err;
    std::remove(path.c_str());
  }
  // Bad flag values are usage errors (the dimensions: below).
  RunResult bad = Cli({"model", "random", "--arch", "x999", "--vocab", "64",
                       "--out", Temp("x.pth")});
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_NE(bad.err.find("unknown architecture 'x999'"), std::string::npos)
      << bad.err;
  bad = Cli({"model", "random", "--embd", "100", "--head-size", "64", "--vocab",
             "64", "--out", Temp("x.pth")});
  EXPECT_EQ(bad.exit_code, 2);
  EXPECT_NE(bad.err.find("not a multiple of head_size (--head-size) 64"),
            std::string::npos)
      << bad.err;
  EXPECT_EQ(Cli({"model", "random", "--out", Temp("x.pth")}).exit_code, 2);
  EXPECT_EQ(Cli({"model", "random", "--vocab", "64", "--dtype", "f8", "--out",
                 Temp("x.pth")})
                .exit_code,
            2);
}

// A model file is written whole or not at all: one cut short (here by a
// file-size limit; a full disk or a kill alike) leaves the earlier file
// at the path as it was and no partial file beside it. (A truncated model
// was left at the path, and the quick start, which only makes the model
// when the file is missing, failed at every later run.)
TEST(ModelCliTest, ARandomModelCutShortLeavesTheEarlierFile) {
  testing::ScratchDir dir("model_cli_cut");
  const std::string path = dir.path() + "/model.safetensors";
  const std::vector<std::string> small = {
      "model",  "random", "--vocab",     "64", "--layers", "1",
      "--embd", "64",     "--head-size", "32", "--out",    path};
  ASSERT_EQ(Cli(small).exit_code, 0);
  RunResult before = Cli({"model", "info", "--model", path});
  ASSERT_EQ(before.exit_code, 0) << before.err;
  // A bigger one under a 64 KiB file-size limit (SIGXFSZ ignored: the
  // write fails with EFBIG instead of killing the process).
  auto cut = e2e::Run(
      {"/bin/bash", "-c",
       std::string("trap '' XFSZ; ulimit -f 64; exec ") + STATESTREAM_BIN +
           " model random --vocab 4096 --layers 2 --embd 256 "
           "--out " +
           path},
      absl::Seconds(60));
  ASSERT_TRUE(cut.ok()) << cut.status();
  EXPECT_NE(cut->exit_code, 0);
  RunResult after = Cli({"model", "info", "--model", path});
  EXPECT_EQ(after.exit_code, 0) << after.err;
  EXPECT_EQ(after.out, before.out);
  int entries = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir.path())) {
    ++entries;
    EXPECT_EQ(e.path().string(), path);
  }
  EXPECT_EQ(entries, 1);
}

// Dimensions past what the engine loads (worker/engine/rwkv_common.h:
// n_embd <= 32768, dim_ffn <= 16 n_embd and 2^17, vocab <= 2^21, head size
// <= 256)
// are refused before anything is allocated, naming the flag: usage errors
// like the other bad dimensions, where --ffn 2000000000 used to pass the
// checks and abort on bad_alloc. At the limit, the model loads.
TEST(ModelCliTest, RandomDimensionsPastTheEnginesLimitsAreUsageErrors) {
  const std::string path = Temp("limits.safetensors");
  struct Case {
    std::vector<std::string> flags;
    std::string error;
  };
  const std::vector<Case> cases = {
      {{"--ffn", "2000000000"},
       "dim_ffn (--ffn) 2000000000 is outside [0, 1024]"},
      {{"--ffn", "1025"}, "dim_ffn (--ffn) 1025"},
      {{"--ffn", "-1"}, "dim_ffn (--ffn) -1"},
      // Past 2^17 inputs an int8 product could overflow int32.
      {{"--embd", "16384", "--ffn", "131073"},
       "dim_ffn (--ffn) 131073 is outside [0, 131072]"},
      {{"--embd", "65536"}, "n_embd (--embd) 65536 is outside [1, 32768]"},
      {{"--embd", "2000000000"}, "n_embd (--embd) 2000000000"},
      {{"--vocab", "2097153"},
       "vocab_size (--vocab) 2097153 is outside [1, 2097152]"},
      {{"--vocab", "0"}, "vocab_size (--vocab) 0"},
      {{"--layers", "0"}, "n_layer (--layers) 0"},
      {{"--layers", "100000"}, "n_layer (--layers) 100000"},
  };
  const std::vector<Case> head_cases = {
      {{"--embd", "512", "--head-size", "512"},
       "head_size (--head-size) 512 is outside [1, 256]"},
      {{"--head-size", "0"}, "head_size (--head-size) 0"},
  };
  for (const char* arch : {"x070", "x060", "x052", "v4"}) {
    std::vector<Case> all = cases;
    if (std::string(arch) != "v4") {
      all.insert(all.end(), head_cases.begin(), head_cases.end());
    }
    for (const Case& c : all) {
      std::vector<std::string> args = {"model",       "random", "--arch",  arch,
                                       "--layers",    "1",      "--embd",  "64",
                                       "--head-size", "32",     "--vocab", "64",
                                       "--out",       path};
      args.insert(args.end(), c.flags.begin(), c.flags.end());
      RunResult r = Cli(args);
      EXPECT_EQ(r.exit_code, 2) << arch << " " << c.flags[1] << ": " << r.err;
      EXPECT_NE(r.err.find(c.error), std::string::npos)
          << arch << " " << c.flags[1] << ": " << r.err;
      EXPECT_NE(r.err.find("[INVALID_ARGUMENT]"), std::string::npos) << r.err;
      EXPECT_NE(access(path.c_str(), F_OK), 0) << arch << " wrote " << path;
    }
  }
  // dim_ffn = 16 n_embd is the largest the loader takes.
  RunResult r = Cli({"model", "random", "--arch", "x070", "--layers", "1",
                     "--embd", "64", "--head-size", "32", "--vocab", "64",
                     "--ffn", "1024", "--out", path});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  r = Cli({"model", "info", "--model", path});
  std::remove(path.c_str());
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["dim_ffn"], 1024);
}

// int8 (and bf16) weights beside the same checkpoint in f32.
TEST(ModelCliTest, CompareReportsReducedPrecisionAccuracy) {
  SS_REQUIRE_SHARED_DATA();
  const std::string model = SharedPath("testdata/rwkv7-tiny.pth");
  RunResult r = Cli({"model", "compare", "--model", model, "--precision",
                     "int8", "--length", "200", "--seed", "3"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["precision"], "int8");
  EXPECT_EQ(j["positions"], 200);
  EXPECT_GT(j["max_abs_logit_error"].get<double>(), 0);
  EXPECT_LT(j["max_abs_logit_error"].get<double>(),
            0.1 * j["max_abs_reference_logit"].get<double>());
  EXPECT_GE(j["top1_agreement"].get<double>(), 0.9);
  EXPECT_LT(j["mean_kl_nats"].get<double>(), 0.01);
  // The same tokens give the same report (deterministic end to end).
  RunResult again = Cli({"model", "compare", "--model", model, "--precision",
                         "int8", "--length", "200", "--seed", "3"});
  EXPECT_EQ(again.out, r.out);
  r = Cli({"model", "compare", "--model", model, "--precision", "int8",
           "--tokens", "1,2,3"});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  EXPECT_EQ(nlohmann::json::parse(r.out)["positions"], 3);
  // Bad input: nothing to compare with, a bad length (usage errors), an
  // out-of-range token (a failure).
  EXPECT_EQ(Cli({"model", "compare", "--model", model, "--precision", "f32"})
                .exit_code,
            2);
  EXPECT_EQ(Cli({"model", "compare", "--model", model, "--precision", "int8",
                 "--length", "0"})
                .exit_code,
            2);
  EXPECT_EQ(Cli({"model", "compare", "--model", model, "--precision", "int8",
                 "--tokens", "1,99999"})
                .exit_code,
            1);
  EXPECT_EQ(Cli({"model", "compare", "--model", model, "--precision", "int4"})
                .exit_code,
            2);
  // bf16 weights with the activations rounded to bf16: closer than int8,
  // further than two terms; the field says which.
  RunResult split = Cli({"model", "compare", "--model", model, "--precision",
                         "bf16", "--length", "100", "--seed", "3"});
  RunResult round =
      Cli({"model", "compare", "--model", model, "--precision", "bf16",
           "--bf16-activations", "round", "--length", "100", "--seed", "3"});
  ASSERT_EQ(split.exit_code, 0) << split.err;
  ASSERT_EQ(round.exit_code, 0) << round.err;
  const auto js = nlohmann::json::parse(split.out);
  const auto jr = nlohmann::json::parse(round.out);
  EXPECT_EQ(js["bf16_activations"], "split");
  EXPECT_EQ(jr["bf16_activations"], "round");
  EXPECT_EQ(js["fingerprint"], jr["fingerprint"]);
  EXPECT_GT(jr["rms_logit_error"].get<double>(),
            js["rms_logit_error"].get<double>());
  EXPECT_GE(jr["top1_agreement"].get<double>(), 0.9);
  EXPECT_LT(jr["mean_kl_nats"].get<double>(), 0.01);
  EXPECT_EQ(Cli({"model", "compare", "--model", model, "--precision", "bf16",
                 "--bf16-activations", "half"})
                .exit_code,
            2);
}

// `bench engine` in every dtype and mode prints one JSON line with the
// fields the acceptance checks read; bad flags are usage errors.
TEST(ModelCliTest, BenchEngineRunsEveryDtype) {
  SS_REQUIRE_SHARED_DATA();
  const std::string model = SharedPath("testdata/rwkv7-tiny.pth");
  RunResult info_run = Cli({"model", "info", "--model", model});
  ASSERT_EQ(info_run.exit_code, 0) << info_run.err;
  auto info_lines = JsonLines(info_run.out);
  ASSERT_EQ(info_lines.size(), 1u) << info_run.out;
  const auto info = info_lines[0];
  for (const char* dtype : {"fp32", "bf16", "int8"}) {
    for (const char* mode : {"decode", "prefill"}) {
      RunResult r = Cli({"bench", "engine", "--model", model, "--mode", mode,
                         "--dtype", dtype, "--batch", "3", "--tokens", "20",
                         "--seconds", "0.05", "--threads", "2"});
      ASSERT_EQ(r.exit_code, 0) << dtype << " " << mode << ": " << r.err;
      auto lines = JsonLines(r.out);
      ASSERT_EQ(lines.size(), 1u) << r.out;
      const auto& j = lines[0];
      EXPECT_EQ(j["dtype"], dtype);
      EXPECT_EQ(j["mode"], mode);
      EXPECT_GT(j["tokens_per_s"].get<double>(), 0);
      EXPECT_GT(j["read_bandwidth_gb_s"].get<double>(), 0);
      // Probed before the load and after the steps; the higher one counts.
      const auto& probes = j["read_bandwidth_probes_gb_s"];
      ASSERT_TRUE(probes.is_array()) << j.dump();
      ASSERT_GE(probes.size(), 1u);
      ASSERT_LE(probes.size(), 2u);
      double best = 0;
      for (const auto& p : probes) best = std::max(best, p.get<double>());
      EXPECT_EQ(j["read_bandwidth_gb_s"].get<double>(), best);
      // The first probe's 512 MiB never count as the model's memory.
      EXPECT_GT(j["peak_rss_mib"].get<double>(), 0);
      EXPECT_LT(j["peak_rss_mib"].get<double>(), 400);
      EXPECT_EQ(j["batch"], std::string(mode) == "decode" ? 3 : 1);
      EXPECT_GT(j["roofline_fraction"].get<double>(), 0);
      if (std::string(mode) == "prefill") {
        // Units, not speed: both are GFLOP/s, timed apart on a shared
        // machine (a loaded run measured the peak at 0.48 of the model's
        // rate), so only a wrong power of ten fails this.
        EXPECT_GT(j["peak_gflop_per_s"].get<double>(),
                  j["gflop_per_s"].get<double>() / 50);
        // The head counts once (one logits row), the layers per token.
        const double head = static_cast<double>(info["vocab"].get<int>()) *
                            info["n_embd"].get<int>();
        const double layers = info["params"].get<double>() - 2 * head;
        EXPECT_DOUBLE_EQ(j["flop_per_step"].get<double>(),
                         2 * (layers * 20 + head));
        EXPECT_NEAR(j["gflop_per_s"].get<double>(),
                    j["flop_per_step"].get<double>() /
                        j["ms_per_step_median"].get<double>() / 1e6,
                    1e-6 * j["gflop_per_s"].get<double>());
      }
    }
  }
  // bf16 with the activations rounded: the field says so, and the kernel
  // peak beside it is the one-term products'.
  RunResult round = Cli({"bench", "engine", "--model", model, "--mode",
                         "prefill", "--dtype", "bf16", "--bf16-activations",
                         "round", "--tokens", "20", "--seconds", "0.05"});
  ASSERT_EQ(round.exit_code, 0) << round.err;
  auto round_lines = JsonLines(round.out);
  ASSERT_EQ(round_lines.size(), 1u) << round.out;
  EXPECT_EQ(round_lines[0]["bf16_activations"], "round");
  EXPECT_GT(round_lines[0]["tokens_per_s"].get<double>(), 0);
  // Two batches' steps alternated in one process: both throughputs and
  // their ratio, beside the usual fields of the first.
  RunResult versus = Cli({"bench", "engine", "--model", model, "--batch", "4",
                          "--versus-batch", "1", "--seconds", "0.05"});
  ASSERT_EQ(versus.exit_code, 0) << versus.err;
  auto versus_lines = JsonLines(versus.out);
  ASSERT_EQ(versus_lines.size(), 1u) << versus.out;
  const auto& v = versus_lines[0];
  EXPECT_EQ(v["batch"], 4);
  EXPECT_EQ(v["versus_batch"], 1);
  EXPECT_GT(v["versus_tokens_per_s"].get<double>(), 0);
  EXPECT_NEAR(
      v["versus_ratio"].get<double>(),
      v["tokens_per_s"].get<double>() / v["versus_tokens_per_s"].get<double>(),
      1e-9 * v["versus_ratio"].get<double>());
  // Without the flag there is no versus field.
  EXPECT_FALSE(round_lines[0].contains("versus_ratio"));
  // Bad flags are usage errors (exit 2), as for every command.
  for (const std::vector<std::string>& bad :
       {std::vector<std::string>{"--versus-batch", "-1"},
        {"--versus-batch", "4097"},
        {"--versus-batch", "1", "--mode", "prefill"}}) {
    std::vector<std::string> args = {"bench", "engine", "--model", model};
    args.insert(args.end(), bad.begin(), bad.end());
    EXPECT_EQ(Cli(args).exit_code, 2) << bad[1];
  }
  EXPECT_EQ(Cli({"bench", "engine", "--model", model, "--dtype", "bf16",
                 "--bf16-activations", "fp8"})
                .exit_code,
            2);
  EXPECT_EQ(
      Cli({"bench", "engine", "--model", model, "--dtype", "int4"}).exit_code,
      2);
  EXPECT_EQ(
      Cli({"bench", "engine", "--model", model, "--mode", "train"}).exit_code,
      2);
  EXPECT_EQ(
      Cli({"bench", "engine", "--model", model, "--batch", "0"}).exit_code, 2);
  EXPECT_EQ(Cli({"bench", "engine", "--mode", "decode"}).exit_code, 2);
  EXPECT_NE(Cli({"bench", "nothing"}).exit_code, 0);
  // Decode with --tokens N (no --seconds): N timed steps, N tokens a
  // session.
  RunResult counted =
      Cli({"bench", "engine", "--model", model, "--mode", "decode", "--batch",
           "2", "--tokens", "7", "--threads", "1"});
  ASSERT_EQ(counted.exit_code, 0) << counted.err;
  auto counted_lines = JsonLines(counted.out);
  ASSERT_EQ(counted_lines.size(), 1u) << counted.out;
  EXPECT_EQ(counted_lines[0]["steps"], 7);
  EXPECT_EQ(counted_lines[0]["batch"], 2);
}

TEST(ModelCliTest, TokenizeAndDetokenize) {
  SS_REQUIRE_SHARED_DATA();
  const std::string vocab = SharedPath("testdata/rwkv_vocab_v20230424.txt");
  nlohmann::json g =
      LoadJson(SharedPath("testdata/world-tokenizer.golden.json"));
  int checked = 0;
  for (const auto& c : g["encode_cases"]) {
    const std::string text = c["text"].get<std::string>();
    if (text.empty() || text[0] == '-') continue;  // not a CLI argument
    RunResult r = Cli({"tokenize", "--vocab", vocab, text});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(nlohmann::json::parse(r.out), c["ids"]) << c["name"];
    r = Cli({"detokenize", "--vocab", vocab, "--tokens",
             Join(c["ids"].get<std::vector<int>>())});
    ASSERT_EQ(r.exit_code, 0) << r.err;
    EXPECT_EQ(r.out, text) << c["name"];
    if (++checked == 12) break;
  }
  RunResult r = Cli({"detokenize", "--vocab", vocab, "--tokens", "70000"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.err.find("INVALID_TOKEN"), std::string::npos) << r.err;
  r = Cli({"tokenize", "--vocab", "bytes", "hi"});
  EXPECT_EQ(r.out, "[104,105]\n");
  EXPECT_EQ(Cli({"tokenize", "--vocab", "/nonexistent", "x"}).exit_code, 1);
}

}  // namespace
}  // namespace statestream::e2e
