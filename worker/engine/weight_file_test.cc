// SPDX-License-Identifier: Apache-2.0
// WeightFile on the shared test models and on hand-built checkpoints that use
// what the test models do not: storage offsets, shared storages, strides,
// fp16, zip64 and the less common pickle opcodes. Bad input is in
// weight_file_bad_input_test.cc.
#include "worker/engine/weight_file.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <string>
#include <vector>

#include "common/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "worker/engine/float16.h"
#include "worker/engine/weight_file_internal.h"
#include "worker/engine/weight_file_test_util.h"

namespace statestream::engine {
namespace {

using ::statestream::engine::BF16ToF32;
using ::statestream::engine::F16ToF32;
using ::statestream::engine::F32ToBF16;
using ::testing::ElementsAre;
using namespace ::statestream::engine::testing;  // NOLINT: test writers

std::string TestdataDir() {
  return std::string(STATESTREAM_SHARED_DIR) + "/testdata";
}

// Skips the test when the shared test data is absent, except in CI.
#define REQUIRE_TESTDATA()                                             \
  do {                                                                 \
    if (!std::filesystem::is_directory(TestdataDir())) {               \
      if (std::getenv("CI") != nullptr) {                              \
        FAIL() << "CI is set but " << TestdataDir() << " is missing";  \
      }                                                                \
      GTEST_SKIP() << TestdataDir() << " is missing; the shared test " \
                   << "models are needed for this test";               \
    }                                                                  \
  } while (0)

std::unique_ptr<WeightFile> OpenOk(const std::string& path) {
  auto f = WeightFile::Open(path);
  EXPECT_TRUE(f.ok()) << path << ": " << f.status();
  return f.ok() ? std::move(*f) : nullptr;
}

std::vector<float> F32(const TensorView& t) {
  std::vector<float> v(static_cast<size_t>(t.numel()));
  ReadAsF32(t, v.data());
  return v;
}

std::vector<uint16_t> BF16(const TensorView& t) {
  std::vector<uint16_t> v(static_cast<size_t>(t.numel()));
  ReadAsBF16(t, v.data());
  return v;
}

// Same names, shapes and bit-identical fp32 values.
void ExpectSameTensors(const WeightFile& a, const WeightFile& b) {
  ASSERT_EQ(a.Names(), b.Names());
  for (const std::string& name : a.Names()) {
    const TensorView* x = a.Find(name);
    const TensorView* y = b.Find(name);
    ASSERT_NE(x, nullptr);
    ASSERT_NE(y, nullptr);
    EXPECT_EQ(x->shape, y->shape) << name;
    EXPECT_EQ(x->dtype, y->dtype) << name;
    std::vector<float> vx = F32(*x), vy = F32(*y);
    EXPECT_EQ(0, std::memcmp(vx.data(), vy.data(), vx.size() * 4)) << name;
  }
}

TEST(WeightFileTestdata, Rwkv7PthMatchesSafetensors) {
  REQUIRE_TESTDATA();
  for (const char* stem : {"rwkv7-tiny", "rwkv7-tiny-bf16"}) {
    SCOPED_TRACE(stem);
    auto pth = OpenOk(TestdataDir() + "/" + stem + ".pth");
    auto st = OpenOk(TestdataDir() + "/" + stem + ".safetensors");
    ASSERT_TRUE(pth && st);
    EXPECT_EQ(pth->format(), "pth");
    EXPECT_EQ(st->format(), "safetensors");
    EXPECT_GT(pth->Names().size(), 10u);
    ExpectSameTensors(*pth, *st);
  }
}

TEST(WeightFileTestdata, Bf16FileIsFp32Rounded) {
  REQUIRE_TESTDATA();
  auto f32 = OpenOk(TestdataDir() + "/rwkv7-tiny.pth");
  auto bf16 = OpenOk(TestdataDir() + "/rwkv7-tiny-bf16.pth");
  ASSERT_TRUE(f32 && bf16);
  ASSERT_EQ(f32->Names(), bf16->Names());
  for (const std::string& name : f32->Names()) {
    const TensorView* a = f32->Find(name);
    const TensorView* b = bf16->Find(name);
    EXPECT_EQ(a->dtype, DType::kF32);
    EXPECT_EQ(b->dtype, DType::kBF16);
    EXPECT_EQ(a->shape, b->shape);
    EXPECT_EQ(BF16(*a), BF16(*b)) << name;
  }
}

TEST(WeightFileTestdata, EveryModelFileOpens) {
  REQUIRE_TESTDATA();
  for (const char* file :
       {"rwkv4-tiny.pth", "rwkv4-tiny-bf16.pth", "rwkv4-tiny.safetensors",
        "rwkv5-tiny.pth", "rwkv6-tiny.pth", "rwkv7-tiny.pth",
        "rwkv7-tiny-bf16.pth", "rwkv7-tiny.safetensors",
        "rwkv7-tiny-bf16.safetensors",
        "third_party/tiny-rwkv-7v0-834K-bf16.pth"}) {
    SCOPED_TRACE(file);
    const std::string path = TestdataDir() + "/" + file;
    auto f = OpenOk(path);
    ASSERT_NE(f, nullptr);
    std::vector<std::string> names = f->Names();
    EXPECT_TRUE(std::is_sorted(names.begin(), names.end()));
    EXPECT_NE(f->Find("emb.weight"), nullptr);
    EXPECT_NE(f->Find("head.weight"), nullptr);
    EXPECT_EQ(f->Find("no.such.tensor"), nullptr);
    for (const std::string& name : names) {
      const TensorView* t = f->Find(name);
      EXPECT_TRUE(t->contiguous()) << name;
      for (float v : F32(*t)) ASSERT_TRUE(std::isfinite(v)) << name;
    }
    // The same bytes through FromBuffer give the same file.
    std::ifstream in(path, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), {});
    auto g = WeightFile::FromBuffer(bytes);
    ASSERT_TRUE(g.ok()) << g.status();
    ExpectSameTensors(*f, **g);
  }
}

TEST(WeightFileTestdata, Rwkv7ShapesAreThoseOfTheReadme) {
  REQUIRE_TESTDATA();
  auto f = OpenOk(TestdataDir() + "/rwkv7-tiny.pth");
  ASSERT_NE(f, nullptr);
  EXPECT_THAT(f->Find("emb.weight")->shape, ElementsAre(512, 128));
  EXPECT_THAT(f->Find("blocks.0.ln0.weight")->shape, ElementsAre(128));
  EXPECT_THAT(f->Find("blocks.0.att.x_r")->shape, ElementsAre(1, 1, 128));
}

// Storage "0" holds 0, 1, ..., 11; four views of it.
TEST(WeightFileHandBuilt, OffsetsSharedStoragesAndStrides) {
  std::vector<float> values(12);
  for (int i = 0; i < 12; ++i) values[i] = static_cast<float>(i);
  std::vector<TensorSpec> specs = {
      {"a.slice", "FloatStorage", "0", 12, 2, {3}, {1}},
      {"b.matrix", "FloatStorage", "0", 12, 0, {2, 3}, {3, 1}},
      {"c.transposed", "FloatStorage", "0", 12, 0, {3, 2}, {1, 3}},
      {"d.strided", "FloatStorage", "0", 12, 1, {2, 2}, {6, 2}},
      {"e.scalar", "FloatStorage", "0", 12, 11, {}, {}},
      {"f.empty", "FloatStorage", "0", 12, 12, {0, 4}, {4, 1}},
      {"g.broadcast", "FloatStorage", "0", 12, 5, {2, 3}, {0, 1}},
  };
  std::string pth =
      BuildPth(StateDictPickle(specs), {{"0", Bytes(values)}}, "x/y-z/");
  auto f = WeightFile::FromBuffer(pth);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_THAT((*f)->Names(),
              ElementsAre("a.slice", "b.matrix", "c.transposed", "d.strided",
                          "e.scalar", "f.empty", "g.broadcast"));
  auto get = [&](const char* name) { return F32(*(*f)->Find(name)); };
  EXPECT_THAT(get("a.slice"), ElementsAre(2, 3, 4));
  EXPECT_THAT(get("b.matrix"), ElementsAre(0, 1, 2, 3, 4, 5));
  EXPECT_THAT(get("c.transposed"), ElementsAre(0, 3, 1, 4, 2, 5));
  EXPECT_THAT(get("d.strided"), ElementsAre(1, 3, 7, 9));
  EXPECT_THAT(get("e.scalar"), ElementsAre(11));
  EXPECT_THAT(get("f.empty"), ElementsAre());
  EXPECT_THAT(get("g.broadcast"), ElementsAre(5, 6, 7, 5, 6, 7));
  EXPECT_TRUE((*f)->Find("a.slice")->contiguous());
  EXPECT_TRUE((*f)->Find("b.matrix")->contiguous());
  EXPECT_FALSE((*f)->Find("c.transposed")->contiguous());
  EXPECT_FALSE((*f)->Find("d.strided")->contiguous());
  EXPECT_EQ((*f)->Find("a.slice")->data, (*f)->Find("b.matrix")->data + 8);
  EXPECT_THAT(BF16(*(*f)->Find("c.transposed")),
              ElementsAre(0x0000, 0x4040, 0x3f80, 0x4080, 0x4000, 0x40a0));
}

constexpr uint16_t kHalfBits[] = {0x3c00, 0xc000, 0x0001, 0x03ff, 0x7bff,
                                  0x7c00, 0xfc00, 0x8000, 0x3555};
void ExpectHalfValues(const std::vector<float>& v) {
  ASSERT_EQ(v.size(), 10u);
  EXPECT_EQ(v[0], 1.0f);
  EXPECT_EQ(v[1], -2.0f);
  EXPECT_EQ(v[2], std::ldexp(1.0f, -24));     // smallest subnormal
  EXPECT_EQ(v[3], std::ldexp(1023.0f, -24));  // largest subnormal
  EXPECT_EQ(v[4], 65504.0f);
  EXPECT_EQ(v[5], std::numeric_limits<float>::infinity());
  EXPECT_EQ(v[6], -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(v[7] == 0.0f && std::signbit(v[7]));
  EXPECT_EQ(v[8], std::ldexp(1.0f + 0x155 / 1024.0f, -2));
  EXPECT_TRUE(std::isnan(v[9]));
}

TEST(WeightFileHandBuilt, Fp16InPthAndSafetensors) {
  std::vector<uint16_t> bits(std::begin(kHalfBits), std::end(kHalfBits));
  bits.push_back(0x7e00);  // NaN
  std::string pth = BuildPth(
      StateDictPickle({{"h", "HalfStorage", "7", 10, 0, {2, 5}, {5, 1}}}),
      {{"7", Bytes(bits)}});
  std::string st = BuildSafetensors(
      R"({"h":{"dtype":"F16","shape":[2,5],"data_offsets":[0,20]}})",
      Bytes(bits));
  for (const std::string& image : {pth, st}) {
    auto f = WeightFile::FromBuffer(image);
    ASSERT_TRUE(f.ok()) << f.status();
    const TensorView* t = (*f)->Find("h");
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(t->dtype, DType::kF16);
    ExpectHalfValues(F32(*t));
    std::vector<uint16_t> b = BF16(*t);
    EXPECT_EQ(b[0], 0x3f80);
    EXPECT_EQ(b[5], 0x7f80);
    EXPECT_EQ(b[2], 0x3380);  // 2^-24
  }
}

TEST(WeightFileHandBuilt, Zip64ArchiveOpens) {
  std::vector<float> values = {1, 2, 3, 4};
  std::string pickle =
      StateDictPickle({{"w", "FloatStorage", "0", 4, 0, {4}, {1}}});
  ZipOptions zip64;
  zip64.zip64 = true;
  const std::string image =
      BuildPth(pickle, {{"0", Bytes(values)}}, "archive/", zip64);
  auto f = WeightFile::FromBuffer(image);  // `image` must outlive `f`
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_THAT(F32(*(*f)->Find("w")), ElementsAre(1, 2, 3, 4));
}

// OrderedDict top object, memo, and opcodes the test models do not use.
TEST(WeightFileHandBuilt, GeneralPickleOpcodes) {
  std::vector<uint16_t> values = {0x3f80, 0x4000, 0x4040};  // bf16 1, 2, 3
  Pickle p;
  p.Proto(2).Global("collections", "OrderedDict").Op(')').Op('R');
  p.Op('r').Raw(std::string("\x10\x00\x01\x00", 4));  // LONG_BINPUT 65552
  p.Op('}').Op('b');  // BUILD with an empty state: ignored
  // SETITEM 'w' = _rebuild_parameter(_rebuild_tensor_v2(...), True, {})
  p.Op(static_cast<unsigned char>(0x8c)).Byte(1).Raw("w");  // SHORT_BINUNICODE
  p.Global("torch._utils", "_rebuild_parameter");
  p.Global("torch._utils", "_rebuild_tensor_v2").Mark();
  p.Mark().Str("storage").Global("torch", "BFloat16Storage").BinPut(1);
  p.Str("k").Str("cuda:0").Int(3).Tuple().Op('Q');
  p.Op(static_cast<unsigned char>(0x8a)).Byte(0);  // LONG1 0
  p.Op(static_cast<unsigned char>(0x8a))
      .Byte(2)
      .Raw(std::string("\x03\x00", 2));                          // (3,)
  p.Op(static_cast<unsigned char>(0x85));                        // TUPLE1
  p.Op('I').Raw("1\n").Op(static_cast<unsigned char>(0x85));     // INT 1
  p.Op(static_cast<unsigned char>(0x88));                        // NEWTRUE
  p.Op(']').Op('N').Op('a');                                     // [None]
  p.Mark().Op('G').Raw(std::string("\x3f\xf0\0\0\0\0\0\0", 8));  // 1.0
  p.Str("x").Op('e');                                            // APPENDS
  p.Op('}').Tuple().Op('R');  // 7 args incl. metadata {}
  p.Op(static_cast<unsigned char>(0x88))
      .Op('}')
      .Op(static_cast<unsigned char>(0x87));
  p.Op('R').Op('s');  // SETITEM
  // SETITEMS 'v' = the same storage, via LONG_BINGET of the class.
  p.Mark().Str("v").Global("torch._utils", "_rebuild_tensor").Mark();
  p.Mark().Str("storage").Op('j').Raw(std::string("\x01\0\0\0", 4));
  p.Str("k").Str("cpu").Int(3).Tuple().Op('Q').Int(1);
  p.IntTuple({2}).IntTuple({1}).Tuple().Op('R').Op('u');
  p.Op('0').Op('j').Raw(std::string("\x10\x00\x01\x00", 4));  // POP, GET
  p.Op('.');
  const std::string image = BuildPth(p.bytes(), {{"k", Bytes(values)}});
  auto f = WeightFile::FromBuffer(image);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_THAT((*f)->Names(), ElementsAre("v", "w"));
  EXPECT_THAT(F32(*(*f)->Find("w")), ElementsAre(1, 2, 3));
  EXPECT_THAT(F32(*(*f)->Find("v")), ElementsAre(2, 3));
  EXPECT_THAT(BF16(*(*f)->Find("v")), ElementsAre(0x4000, 0x4040));
}

TEST(WeightFileHandBuilt, Protocol4FramesAndStackGlobal) {
  std::vector<float> values = {5};
  Pickle p;
  p.Proto(4).Op(static_cast<unsigned char>(0x95)).Raw(std::string(8, '\0'));
  p.Op('}').Op(static_cast<unsigned char>(0x94));  // MEMOIZE
  p.Str("s").Str("torch._utils").Str("_rebuild_tensor_v2");
  p.Op(static_cast<unsigned char>(0x93));  // STACK_GLOBAL
  p.Mark().Mark().Str("storage").Global("torch", "FloatStorage").Str("0");
  p.Str("cpu").Int(1).Tuple().Op('Q').Int(0).Op(')').Op(')');
  p.Op(static_cast<unsigned char>(0x89)).Op('}').Tuple().Op('R').Op('s');
  p.Op('.');
  const std::string image = BuildPth(p.bytes(), {{"0", Bytes(values)}});
  auto f = WeightFile::FromBuffer(image);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_THAT(F32(*(*f)->Find("s")), ElementsAre(5));
  EXPECT_TRUE((*f)->Find("s")->shape.empty());
}

TEST(WeightFileSafetensors, MetadataIgnoredAndShapesKept) {
  std::vector<float> values = {1, 2, 3, 4, 5, 6};
  const std::string image = BuildSafetensors(
      R"({"__metadata__":{"format":"pt"},)"
      R"("b":{"dtype":"F32","shape":[2,1,2],"data_offsets":[8,24]},)"
      R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
      R"("z":{"dtype":"BF16","shape":[0,3],"data_offsets":[24,24]}})",
      Bytes(values));
  auto f = WeightFile::FromBuffer(image);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_THAT((*f)->Names(), ElementsAre("a", "b", "z"));
  EXPECT_THAT((*f)->Find("b")->shape, ElementsAre(2, 1, 2));
  EXPECT_THAT((*f)->Find("b")->strides, ElementsAre(2, 2, 1));
  EXPECT_THAT(F32(*(*f)->Find("b")), ElementsAre(3, 4, 5, 6));
  EXPECT_EQ((*f)->Find("z")->numel(), 0);
}

TEST(Conversions, F32ToBF16RoundsToNearestEven) {
  auto bits = [](uint32_t u) {
    float f;
    std::memcpy(&f, &u, 4);
    return F32ToBF16(f);
  };
  EXPECT_EQ(bits(0x3f800000), 0x3f80);
  EXPECT_EQ(bits(0x3f808000), 0x3f80);  // tie, even: down
  EXPECT_EQ(bits(0x3f818000), 0x3f82);  // tie, odd: up
  EXPECT_EQ(bits(0x3f808001), 0x3f81);
  EXPECT_EQ(bits(0x3f807fff), 0x3f80);
  EXPECT_EQ(bits(0xbf818000), 0xbf82);
  EXPECT_EQ(bits(0x7f800000), 0x7f80);           // inf
  EXPECT_EQ(bits(0x7f7fffff), 0x7f80);           // max float rounds to inf
  EXPECT_EQ(bits(0x7f800001) & 0x7fc0, 0x7fc0);  // NaN stays NaN
  EXPECT_EQ(bits(0xffc00000), 0xffc0);
  EXPECT_EQ(BF16ToF32(0x4049), 3.140625f);
  for (uint32_t h = 0; h < 0x10000; ++h) {  // every half is exact in f32
    float f = F16ToF32(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    uint32_t exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    float want = exp == 0 ? std::ldexp(static_cast<float>(mant), -24)
                          : std::ldexp(1.0f + mant / 1024.0f, exp - 15);
    if (exp == 0x1f) want = std::numeric_limits<float>::infinity();
    if (h & 0x8000) want = -want;
    ASSERT_EQ(f, want) << h;
  }
}

TEST(WeightFileOpen, MissingPathIsNotFound) {
  auto f = WeightFile::Open("/nonexistent/model.pth");
  EXPECT_EQ(f.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(GetReason(f.status()), Reason::kInvalidModelFile);
}

TEST(WeightFileOpen, DirectoryAndEmptyFileAreInvalid) {
  auto dir = WeightFile::Open(::testing::TempDir());
  EXPECT_EQ(dir.status().code(), absl::StatusCode::kInvalidArgument);
  const std::string path = ::testing::TempDir() + "/weights_empty.pth";
  std::ofstream(path).close();
  auto empty = WeightFile::Open(path);
  EXPECT_EQ(empty.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(GetReason(empty.status()), Reason::kInvalidModelFile);
  EXPECT_THAT(std::string(empty.status().message()),
              ::testing::HasSubstr("empty"));
  std::filesystem::remove(path);
}

TEST(WeightFileOpen, MapsAHandBuiltFile) {
  std::vector<float> values = {1, 2};
  const std::string path = ::testing::TempDir() + "/weights_small.pth";
  {
    std::ofstream out(path, std::ios::binary);
    out << BuildPth(
        StateDictPickle({{"w", "FloatStorage", "0", 2, 0, {2}, {1}}}),
        {{"0", Bytes(values)}});
  }
  auto f = WeightFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_THAT(F32(*(*f)->Find("w")), ElementsAre(1, 2));
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace statestream::engine

namespace statestream::engine {
namespace {

TEST(Float16Test, F32ToF16InvertsF16ToF32AndRoundsToNearestEven) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = F16ToF32(static_cast<uint16_t>(h));
    if (f != f) continue;  // NaN payloads need not survive
    EXPECT_EQ(F32ToF16(f), h) << std::hex << h;
  }
  EXPECT_EQ(F32ToF16(1.0f + 1.0f / 2048), 0x3C00);  // tie -> even
  EXPECT_EQ(F32ToF16(1.0f + 3.0f / 2048), 0x3C02);  // tie -> even (up)
  EXPECT_EQ(F32ToF16(1e6f), 0x7C00);                // overflow -> inf
  EXPECT_EQ(F32ToF16(1e-9f), 0x0000);               // underflow -> 0
}

}  // namespace
}  // namespace statestream::engine
