// SPDX-License-Identifier: Apache-2.0
// WeightFile on bad input: every malformed file must be an INVALID_ARGUMENT
// with Reason::kInvalidModelFile that says what is wrong, never a crash.
// Meant to run under ASan/UBSan too.
#include <sys/resource.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/engine/weight_file.h"
#include "worker/engine/weight_file_internal.h"
#include "worker/engine/weight_file_test_util.h"

namespace statestream::engine {
namespace {

using ::testing::HasSubstr;
using namespace ::statestream::engine::testing;  // NOLINT: test writers

void ExpectBad(const std::string& image, const std::string& message) {
  auto f = WeightFile::FromBuffer(image);
  ASSERT_FALSE(f.ok()) << "accepted; expected an error containing: " << message;
  EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(GetReason(f.status()), Reason::kInvalidModelFile);
  EXPECT_THAT(std::string(f.status().message()), HasSubstr(message));
}

// Parses `image`; if it is accepted, reads every tensor.
bool ParsesAndReads(const std::string& image) {
  auto f = WeightFile::FromBuffer(image);
  if (!f.ok()) {
    EXPECT_EQ(GetReason(f.status()), Reason::kInvalidModelFile);
    return false;
  }
  for (const std::string& name : (*f)->Names()) {
    const TensorView* t = (*f)->Find(name);
    EXPECT_LE(static_cast<size_t>(t->numel()), image.size());
    std::vector<float> out(static_cast<size_t>(t->numel()));
    ReadAsF32(*t, out.data());
    std::vector<uint16_t> out16(out.size());
    ReadAsBF16(*t, out16.data());
  }
  return true;
}

const std::vector<float> kFour = {1, 2, 3, 4};

std::string GoodPickle() {
  return StateDictPickle({{"w", "FloatStorage", "0", 4, 0, {2, 2}, {2, 1}}});
}
std::string GoodPth() { return BuildPth(GoodPickle(), {{"0", Bytes(kFour)}}); }
std::string PthWith(const TensorSpec& spec) {
  return BuildPth(StateDictPickle({spec}), {{"0", Bytes(kFour)}});
}
std::string PthWithPickle(const Pickle& p) {
  return BuildPth(p.bytes(), {{"0", Bytes(kFour)}});
}
const char kGoodHeader[] =
    R"({"w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}})";
std::string GoodSafetensors() {
  return BuildSafetensors(kGoodHeader, Bytes(kFour));
}
std::string St(const std::string& header) {
  return BuildSafetensors(header, Bytes(kFour));
}

TEST(WeightFileBadInput, HandBuiltBaselinesAreGood) {
  EXPECT_TRUE(ParsesAndReads(GoodPth()));
  EXPECT_TRUE(ParsesAndReads(GoodSafetensors()));
}

TEST(WeightFileBadInput, EmptyAndTiny) {
  ExpectBad("", "empty");
  ExpectBad("x", "shorter than 8");
  ExpectBad("PK\x03\x04", "zip");
  ExpectBad(
      std::string("\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
                  "rest",
                  18),
      "legacy");
}

TEST(WeightFileBadInput, EveryPrefixOfSmallFilesIsRejected) {
  for (const std::string& image : {GoodPth(), GoodSafetensors()}) {
    for (size_t n = 0; n < image.size(); ++n) {
      ASSERT_FALSE(WeightFile::FromBuffer(image.substr(0, n)).ok()) << n;
    }
  }
}

TEST(WeightFileBadInput, FlippedBytesNeverCrash) {
  for (const std::string& image : {GoodPth(), GoodSafetensors()}) {
    for (size_t i = 0; i < image.size(); ++i) {
      for (uint8_t x : {0x01, 0x80, 0xff}) {
        std::string bad = image;
        bad[i] = static_cast<char>(bad[i] ^ x);
        ParsesAndReads(bad);
      }
    }
  }
}

std::string ReadTestFile(const std::string& name) {
  std::ifstream in(std::string(STATESTREAM_SHARED_DIR) + "/testdata/" + name,
                   std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), {});
}

TEST(WeightFileBadInput, TruncatedAndCorruptedTestModels) {
  const std::string dir = std::string(STATESTREAM_SHARED_DIR) + "/testdata";
  if (!std::filesystem::is_directory(dir)) {
    if (std::getenv("CI") != nullptr) FAIL() << dir << " is missing";
    GTEST_SKIP() << dir << " is missing; the shared test models are needed";
  }
  for (const char* name :
       {"rwkv7-tiny-bf16.pth", "rwkv7-tiny-bf16.safetensors"}) {
    SCOPED_TRACE(name);
    const std::string image = ReadTestFile(name);
    ASSERT_TRUE(ParsesAndReads(image));
    // 600 cut points across the file, plus every cut in the last 2 KiB
    // (the zip central directory) and the first 2 KiB (pickle, JSON).
    std::vector<size_t> cuts;
    for (size_t k = 0; k < 600; ++k) cuts.push_back(image.size() * k / 600);
    for (size_t k = 1; k <= 2048; ++k) {
      cuts.push_back(image.size() - k);
      cuts.push_back(k);
    }
    for (size_t n : cuts) {
      ASSERT_FALSE(WeightFile::FromBuffer(image.substr(0, n)).ok()) << n;
    }
    // Flip bytes where the structure is: the first and last 4 KiB.
    uint32_t seed = 12345;
    for (int k = 0; k < 400; ++k) {
      seed = seed * 1664525u + 1013904223u;
      size_t span = std::min<size_t>(4096, image.size());
      size_t pos = (k % 2 == 0) ? seed % span : image.size() - 1 - seed % span;
      std::string bad = image;
      bad[pos] = static_cast<char>(bad[pos] ^ (1 + (seed >> 24) % 255));
      ParsesAndReads(bad);
    }
  }
}

TEST(WeightFileBadInput, ZipStructure) {
  std::string compressed = BuildZip({{"archive/data.pkl", GoodPickle(), 8},
                                     {"archive/data/0", Bytes(kFour)}});
  ExpectBad(compressed, "compressed (method 8)");
  ExpectBad(BuildZip({{"archive/data/0", Bytes(kFour)}}), "no data.pkl");
  ExpectBad(BuildZip({{"a/data.pkl", GoodPickle()},
                      {"b/data.pkl", GoodPickle()},
                      {"a/data/0", Bytes(kFour)}}),
            "more than one data.pkl");
  ExpectBad(BuildZip({{"a/data.pkl", GoodPickle()},
                      {"a/data/0", Bytes(kFour)},
                      {"a/data/0", Bytes(kFour)}}),
            "appears twice");
  ExpectBad(BuildZip({{"a/data.pkl", GoodPickle()},
                      {"a/byteorder", "big"},
                      {"a/data/0", Bytes(kFour)}}),
            "little-endian");
  std::string image = GoodPth();
  // The central directory offset (last 6..2 bytes) pointing past the end.
  std::string bad = image;
  bad[bad.size() - 4] = '\x7f';
  ExpectBad(bad, "central directory");
  // A local header offset out of range.
  bad = image;
  size_t dir = image.rfind(std::string("PK\x01\x02", 4));
  bad[dir + 45] = '\x7f';
  ExpectBad(bad, "local header");
}

TEST(WeightFileBadInput, StorageChecks) {
  ExpectBad(BuildPth(GoodPickle(), {{"1", Bytes(kFour)}}), "is missing");
  ExpectBad(BuildPth(GoodPickle(), {{"0", Bytes(std::vector<float>{1})}}),
            "less than 4 elements");
  ExpectBad(PthWith({"w", "FloatStorage", "0", 4, 3, {2}, {1}}),
            "reach element 4");
  ExpectBad(PthWith({"w", "FloatStorage", "0", 4, 0, {2, 2}, {3, 1}}),
            "reach element 4");
  ExpectBad(PthWith({"w", "FloatStorage", "0", 4, 9, {0}, {1}}),
            "storage offset 9");
  ExpectBad(PthWith({"w", "FloatStorage", "0", 4, 0, {-1}, {1}}),
            "non-negative");
  ExpectBad(PthWith({"w", "FloatStorage", "0", 4, 0, {2}, {-1}}),
            "non-negative");
  ExpectBad(PthWith({"w", "FloatStorage", "0", 4, -1, {2}, {1}}),
            "non-negative");
  ExpectBad(PthWith({"w",
                     "FloatStorage",
                     "0",
                     4,
                     0,
                     {1, 1, 1, 1, 1, 1, 1, 1, 1},
                     {1, 1, 1, 1, 1, 1, 1, 1, 1}}),
            "rank 9");
  ExpectBad(PthWith({"w", "FloatStorage", "0", 4, 0, {2, 2}, {1}}),
            "differ in rank");
  ExpectBad(PthWith({"w",
                     "FloatStorage",
                     "0",
                     4,
                     0,
                     {int64_t{1} << 40, int64_t{1} << 40},
                     {0, 0}}),
            "overflows");
  ExpectBad(PthWith({"w",
                     "FloatStorage",
                     "0",
                     4,
                     0,
                     {2, int64_t{1} << 62},
                     {int64_t{1} << 62, 0}}),
            "overflows");
  ExpectBad(PthWith({"w", "FloatStorage", "0", 4, 0, {100}, {0}}),
            "100 elements");
  ExpectBad(PthWith({"w", "FloatStorage", "0", int64_t{1} << 62, 0, {1}, {1}}),
            "less than");
  ExpectBad(PthWith({"w", "DoubleStorage", "0", 2, 0, {2}, {1}}),
            "unsupported storage type");
  // Long storage keys and tensor names (copied into every tensor) are
  // refused, and so are views that name far more bytes than the file has
  // (many tensors on one storage: loading would copy each).
  ExpectBad(
      PthWith({"w", "FloatStorage", std::string(65, '7'), 4, 0, {4}, {1}}),
      "storage key");
  ExpectBad(
      PthWith({std::string(1025, 'w'), "FloatStorage", "0", 4, 0, {4}, {1}}),
      "state_dict key");
  {
    const std::vector<float> big(4096, 1.0f);
    std::vector<TensorSpec> aliases;
    for (int i = 0; i < 8; ++i) {
      aliases.push_back({absl::StrCat("w", i),
                         "FloatStorage",
                         "0",
                         4096,
                         0,
                         {64, 64},
                         {64, 1}});
    }
    ExpectBad(BuildPth(StateDictPickle(aliases), {{"0", Bytes(big)}}),
              "more than twice the file");
    aliases.resize(1);  // one view of it (and a tied copy) is fine
    aliases.push_back(
        {"tied", "FloatStorage", "0", 4096, 0, {64, 64}, {64, 1}});
    EXPECT_TRUE(WeightFile::FromBuffer(
                    BuildPth(StateDictPickle(aliases), {{"0", Bytes(big)}}))
                    .ok());
  }
  // One storage described with two dtypes.
  ExpectBad(
      BuildPth(StateDictPickle({{"a", "FloatStorage", "0", 4, 0, {4}, {1}},
                                {"b", "HalfStorage", "0", 8, 0, {8}, {1}}}),
               {{"0", Bytes(kFour)}}),
      "inconsistently");
}

TEST(WeightFileBadInput, PickleStructure) {
  Pickle os_system;
  os_system.Proto()
      .Global("os", "system")
      .Str("echo")
      .Op(static_cast<unsigned char>(0x85))
      .Op('R')
      .Op('.');
  ExpectBad(PthWithPickle(os_system), "GLOBAL 'os.system' is not allowed");

  Pickle builtins;
  builtins.Proto().Op('}').Str("w").Global("builtins", "eval").Op('s').Op('.');
  ExpectBad(PthWithPickle(builtins), "not allowed");

  Pickle list_top;
  list_top.Proto().Op(']').Op('.');
  ExpectBad(PthWithPickle(list_top), "top object is not a dict");

  Pickle not_tensor;
  not_tensor.Proto().Op('}').Str("epoch").Int(3).Op('s').Op('.');
  ExpectBad(PthWithPickle(not_tensor), "'epoch' is not a tensor");

  Pickle int_key;
  int_key.Proto().Op('}').Int(1).Int(3).Op('s').Op('.');
  ExpectBad(PthWithPickle(int_key), "key is not a string");

  Pickle unset_memo;
  unset_memo.Proto().BinGet(3).Op('.');
  ExpectBad(PthWithPickle(unset_memo), "memo 3 not set");

  Pickle no_stop;
  no_stop.Proto().Op('}');
  ExpectBad(PthWithPickle(no_stop), "no STOP");

  Pickle underflow;
  underflow.Proto().Op('}').Mark().Op('s').Op('.');
  ExpectBad(PthWithPickle(underflow), "stack underflow");

  Pickle pop_mark_empty;
  pop_mark_empty.Proto().Op('1');
  ExpectBad(PthWithPickle(pop_mark_empty), "no MARK");

  Pickle inst;
  inst.Proto().Mark().Op('i').Raw("os\nsystem\n").Op('.');
  ExpectBad(PthWithPickle(inst), "INST/OBJ");

  Pickle unknown;
  unknown.Proto().Op('\xff');
  ExpectBad(PthWithPickle(unknown), "unknown opcode");

  Pickle proto9;
  proto9.Proto(9);
  ExpectBad(PthWithPickle(proto9), "pickle protocol 9");

  Pickle huge_string;
  huge_string.Proto().Op('X').Raw(std::string("\xff\xff\xff\x7f", 4));
  ExpectBad(PthWithPickle(huge_string), "string too long");

  Pickle short_string;
  short_string.Proto().Op('X').Raw(std::string("\x10\0\0\0abc", 7));
  ExpectBad(PthWithPickle(short_string), "truncated string");

  Pickle bad_pid;
  bad_pid.Proto().Op('}').Str("w").Str("storage").Op('Q').Op('s').Op('.');
  ExpectBad(PthWithPickle(bad_pid), "persistent id");

  Pickle call_storage;
  call_storage.Proto().Global("torch", "FloatStorage").Op(')').Op('R').Op('.');
  ExpectBad(PthWithPickle(call_storage), "cannot be called");

  Pickle wrong_arity;
  wrong_arity.Proto()
      .Global("torch._utils", "_rebuild_tensor_v2")
      .Op(')')
      .Op('R');
  ExpectBad(PthWithPickle(wrong_arity), "wrong number of arguments");

  Pickle big_int;
  big_int.Proto().Op('}').Str("w").Global("torch._utils", "_rebuild_tensor");
  big_int.Mark().Mark().Str("storage").Global("torch", "FloatStorage");
  big_int.Str("0").Str("cpu").Op(static_cast<unsigned char>(0x8a)).Byte(9);
  big_int.Raw(std::string("\0\0\0\0\0\0\0\0\x01", 9)).Tuple().Op('Q');
  ExpectBad(PthWithPickle(big_int), "storage size");
}

TEST(WeightFileBadInput, PickleLimits) {
  internal::PickleLimits limits;
  limits.max_marks = 4;
  limits.max_stack = 8;
  limits.max_objects = 16;
  limits.max_memo = 2;
  auto parse = [&](const Pickle& p) {
    return internal::ParseTorchPickle(p.bytes(), limits).status();
  };
  Pickle marks;
  for (int i = 0; i < 5; ++i) marks.Mark();
  EXPECT_THAT(std::string(parse(marks).message()), HasSubstr("MARK"));
  Pickle stack;
  for (int i = 0; i < 9; ++i) stack.Op('N');
  EXPECT_THAT(std::string(parse(stack).message()), HasSubstr("stack too deep"));
  Pickle objects;
  for (int i = 0; i < 17; ++i) objects.Op('N').Op('0');
  EXPECT_THAT(std::string(parse(objects).message()), HasSubstr("too many"));
  Pickle memo;
  memo.Op('N').BinPut(1).BinPut(2).BinPut(1).BinPut(3);
  EXPECT_THAT(std::string(parse(memo).message()), HasSubstr("memo too large"));
  internal::PickleLimits few_items;
  few_items.max_items = 16;
  Pickle items;
  for (int list = 0; list < 2; ++list) {
    items.Op(']').Mark();
    for (int i = 0; i < 10; ++i) items.Op('N');
    items.Op('e');
  }
  EXPECT_THAT(std::string(internal::ParseTorchPickle(items.bytes(), few_items)
                              .status()
                              .message()),
              HasSubstr("too many container elements"));
  // One memoized rebuild called past 2^17 times: refused as it happens
  // (it was held, ~60x the pickle's size in tensor records, until the
  // state_dict was read).
  Pickle rebuilds;
  rebuilds.Proto().Global("torch._utils", "_rebuild_tensor_v2").BinPut(0);
  rebuilds.Mark().Mark().Str("storage").Global("torch", "FloatStorage");
  rebuilds.Str("0").Str("cpu").Int(4).Tuple().Op('Q');
  rebuilds.Int(0).IntTuple({4}).IntTuple({1});
  rebuilds.Op(static_cast<unsigned char>(0x89));  // NEWFALSE
  rebuilds.Global("collections", "OrderedDict").Op(')').Op('R');
  rebuilds.Tuple().BinPut(1).Op('R').Op('0');
  for (int i = 0; i < (1 << 17); ++i) {
    rebuilds.BinGet(0).BinGet(1).Op('R').Op('0');
  }
  rebuilds.Op('}').Op('.');
  EXPECT_THAT(
      std::string(
          internal::ParseTorchPickle(rebuilds.bytes()).status().message()),
      HasSubstr("more than 131072 tensors"));
  // The default limits hold a deep but legal nesting.
  Pickle deep;
  deep.Proto();
  for (int i = 0; i < 10000; ++i) deep.Op(']');
  for (int i = 0; i < 9999; ++i) deep.Op('a');
  deep.Op('0').Op('}').Op('.');
  EXPECT_TRUE(internal::ParseTorchPickle(deep.bytes()).ok());
}

TEST(WeightFileBadInput, SafetensorsHeader) {
  std::string bogus = GoodSafetensors();
  bogus[7] = '\x10';
  ExpectBad(bogus, "exceeds the file");
  ExpectBad(std::string(8, '\xff'), "exceeds the file");
  ExpectBad(St("{\"w\":"), "not JSON");
  ExpectBad(St("[1,2]"), "not a JSON object");
  ExpectBad(St(R"({"w":[1]})"), "not an object");
  ExpectBad(St(R"({"w":{"dtype":"F32","shape":[2,2]}})"), "needs dtype");
  ExpectBad(St(R"({"w":{"dtype":"F64","shape":[2],"data_offsets":[0,16]}})"),
            "unsupported dtype 'F64'");
  ExpectBad(St(R"({"w":{"dtype":7,"shape":[2],"data_offsets":[0,16]}})"),
            "dtype missing");
  ExpectBad(St(R"({"w":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}})"),
            "bad shape");
  ExpectBad(St(R"({"w":{"dtype":"F32","shape":[4.0],"data_offsets":[0,16]}})"),
            "bad shape");
  ExpectBad(St(R"({"w":{"dtype":"F32","shape":"4","data_offsets":[0,16]}})"),
            "shape is not an array");
  ExpectBad(St(R"({"w":{"dtype":"F32","shape":[1,1,1,1,1,1,1,1,1],)"
               R"("data_offsets":[0,4]}})"),
            "rank <= 8");
  ExpectBad(St(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],)"
               R"("data_offsets":[0,16]}})"),
            "bad shape");
  ExpectBad(St(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[16,0]}})"),
            "bad data_offsets");
  ExpectBad(St(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0]}})"),
            "bad data_offsets");
  ExpectBad(St(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":["0",16]}})"),
            "bad data_offsets");
  ExpectBad(St(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,12]}})"),
            "span 12 bytes");
  ExpectBad(St(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})"),
            "past the data buffer");
  ExpectBad(
      St(R"({"w":{"dtype":"F32","shape":[4],)"
         R"("data_offsets":[18446744073709551600,18446744073709551615]}})"),
      "bad data_offsets");
  // Overlapping ranges: every tensor the same 16 KiB, named 8 times.
  {
    std::string header = "{";
    for (int i = 0; i < 8; ++i) {
      absl::StrAppend(&header, i ? "," : "", "\"w", i,
                      "\":{\"dtype\":\"F32\",\"shape\":[4096],"
                      "\"data_offsets\":[0,16384]}");
    }
    header += "}";
    ExpectBad(BuildSafetensors(header, Bytes(std::vector<float>(4096, 1.0f))),
              "more than twice the file");
  }
  ExpectBad(St("{\"w\xff\":1}"), "not JSON");  // invalid UTF-8
  std::string deep(100000, '[');
  ExpectBad(St(deep), "nested deeper than 3 levels");
  ExpectBad(St(std::string(50000, '[') + std::string(50000, ']')),
            "nested deeper than 3 levels");
  // Within the bounds, brackets and commas in strings count for nothing.
  ExpectBad(St(R"({"w":{"dtype":"F32","shape":[)" + std::string(64, '1') +
               R"(],"data_offsets":[0,16]},"__metadata__":{"k":"[[[[,,,:"}})"),
            "shape");
  std::string long_shape = R"({"w":{"dtype":"F32","shape":[1)";
  for (int i = 0; i < 64; ++i) long_shape += ",1";
  ExpectBad(St(long_shape + R"(],"data_offsets":[0,16]}})"),
            "array longer than 64 elements");
  // One tensor named twice (the parser would keep the second), or one
  // field twice in a tensor's object.
  ExpectBad(St(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
               R"("w":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}})"),
            "key 'w' appears twice");
  ExpectBad(St(R"({"w":{"dtype":"F32","shape":[4],"shape":[2,2],)"
               R"("data_offsets":[0,16]}})"),
            "key 'shape' appears twice");
  // The same member name in different objects is no duplicate.
  auto two = WeightFile::FromBuffer(BuildSafetensors(
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
      R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
      Bytes(kFour)));
  EXPECT_TRUE(two.ok()) << two.status();
}

// What a hostile header costs is bounded by the header's shape, refused
// before a tree is built: 16 MiB of `[` (or of `0,` in one array) took
// ~80 bytes a character as a parsed tree, over a gigabyte.
// In a child of its own, so that its peak RSS is this test's alone.
TEST(WeightFileBadInputDeathTest, AHostileHeaderCostsLittleMemory) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        struct rusage before {};
        getrusage(RUSAGE_SELF, &before);
        const bool deep =
            !WeightFile::FromBuffer(St(std::string(16 << 20, '['))).ok();
        std::string zeros = R"({"w":{"dtype":"F32","shape":[)";
        for (int i = 0; i < (8 << 20); ++i) zeros += "0,";
        zeros += R"(0],"data_offsets":[0,16]}})";
        const bool wide = !WeightFile::FromBuffer(St(zeros)).ok();
        // Within every depth and length bound, 40 MiB of short arrays of
        // empty objects: ~13M values, a tree of ~1 GB.
        std::string many = "{";
        std::string arrays = "[{}";
        for (int i = 1; i < 64; ++i) arrays += ",{}";
        arrays += "]";
        for (int i = 0; many.size() < (40u << 20); ++i) {
          absl::StrAppend(&many, i ? "," : "", "\"k", i, "\":", arrays);
        }
        many += "}";
        const bool values = !WeightFile::FromBuffer(St(many)).ok();
        struct rusage after {};
        getrusage(RUSAGE_SELF, &after);
        // The images are 16 MiB each (with copies, and ASan's quarantine);
        // the trees took 1.3 GB and more.
        const long grew_kib = after.ru_maxrss - before.ru_maxrss;
        std::fprintf(stderr, "peak RSS grew by %ld KiB\n", grew_kib);
        std::_Exit(deep && wide && values && grew_kib < (512 << 10) ? 0 : 1);
      },
      ::testing::ExitedWithCode(0), "peak RSS grew by");
}

}  // namespace
}  // namespace statestream::engine
