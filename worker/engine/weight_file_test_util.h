// SPDX-License-Identifier: Apache-2.0
// Writers for hand-built checkpoints in tests: a zip archive (stored or
// flagged as compressed, optionally zip64), a torch-style state_dict pickle,
// and a safetensors image. They write what torch.save and the safetensors
// spec write, and nothing is validated: tests use them to build bad files too.
#ifndef STATESTREAM_WORKER_ENGINE_WEIGHT_FILE_TEST_UTIL_H_
#define STATESTREAM_WORKER_ENGINE_WEIGHT_FILE_TEST_UTIL_H_

#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

namespace statestream::engine::testing {

inline void PutLe(std::string* out, uint64_t v, int bytes) {
  for (int k = 0; k < bytes; ++k)
    out->push_back(static_cast<char>(v >> (8 * k)));
}

// ---- zip
// ---------------------------------------------------------------------

struct ZipMember {
  std::string name;
  std::string data;
  uint16_t method = 0;  // 0 stored; 8 claims deflate (data is left as is)
};

struct ZipOptions {
  bool zip64 = false;  // saturate 32-bit fields, write zip64 records
};

inline std::string BuildZip(const std::vector<ZipMember>& members,
                            ZipOptions options = {}) {
  std::string out;
  std::vector<uint64_t> offsets;
  for (const ZipMember& m : members) {
    offsets.push_back(out.size());
    PutLe(&out, 0x04034b50, 4);
    PutLe(&out, 20, 2);      // version needed
    PutLe(&out, 0x0808, 2);  // data descriptor + UTF-8, as torch writes
    PutLe(&out, m.method, 2);
    PutLe(&out, 0, 4);  // time, date
    PutLe(&out, 0, 4);  // crc (in the central directory only)
    PutLe(&out, 0, 4);  // sizes (likewise)
    PutLe(&out, 0, 4);
    PutLe(&out, m.name.size(), 2);
    PutLe(&out, 0, 2);  // extra
    out += m.name;
    out += m.data;
  }
  const uint64_t dir_offset = out.size();
  for (size_t i = 0; i < members.size(); ++i) {
    const ZipMember& m = members[i];
    std::string extra;
    if (options.zip64) {
      PutLe(&extra, 0x0001, 2);
      PutLe(&extra, 24, 2);
      PutLe(&extra, m.data.size(), 8);
      PutLe(&extra, m.data.size(), 8);
      PutLe(&extra, offsets[i], 8);
    }
    const uint64_t sat = options.zip64 ? 0xffffffffu : 0;
    PutLe(&out, 0x02014b50, 4);
    PutLe(&out, 20, 2);
    PutLe(&out, 20, 2);
    PutLe(&out, 0x0808, 2);
    PutLe(&out, m.method, 2);
    PutLe(&out, 0, 4);
    PutLe(&out, 0, 4);  // crc
    PutLe(&out, sat ? sat : m.data.size(), 4);
    PutLe(&out, sat ? sat : m.data.size(), 4);
    PutLe(&out, m.name.size(), 2);
    PutLe(&out, extra.size(), 2);
    PutLe(&out, 0, 2);  // comment
    PutLe(&out, 0, 2);  // disk
    PutLe(&out, 0, 2);  // internal attributes
    PutLe(&out, 0, 4);  // external attributes
    PutLe(&out, sat ? sat : offsets[i], 4);
    out += m.name;
    out += extra;
  }
  const uint64_t dir_size = out.size() - dir_offset;
  if (options.zip64) {
    const uint64_t z64 = out.size();
    PutLe(&out, 0x06064b50, 4);
    PutLe(&out, 44, 8);
    PutLe(&out, 45, 2);
    PutLe(&out, 45, 2);
    PutLe(&out, 0, 4);
    PutLe(&out, 0, 4);
    PutLe(&out, members.size(), 8);
    PutLe(&out, members.size(), 8);
    PutLe(&out, dir_size, 8);
    PutLe(&out, dir_offset, 8);
    PutLe(&out, 0x07064b50, 4);
    PutLe(&out, 0, 4);
    PutLe(&out, z64, 8);
    PutLe(&out, 1, 4);
  }
  PutLe(&out, 0x06054b50, 4);
  PutLe(&out, 0, 2);
  PutLe(&out, 0, 2);
  PutLe(&out, options.zip64 ? 0xffff : members.size(), 2);
  PutLe(&out, options.zip64 ? 0xffff : members.size(), 2);
  PutLe(&out, options.zip64 ? 0xffffffffu : dir_size, 4);
  PutLe(&out, options.zip64 ? 0xffffffffu : dir_offset, 4);
  PutLe(&out, 0, 2);
  return out;
}

// ---- pickle
// ------------------------------------------------------------------

// Appends raw opcodes. Method names follow pickletools.
class Pickle {
 public:
  Pickle& Raw(const std::string& bytes) {
    out_ += bytes;
    return *this;
  }
  Pickle& Op(char op) {
    out_.push_back(op);
    return *this;
  }
  Pickle& Op(unsigned char op) { return Op(static_cast<char>(op)); }
  Pickle& Proto(int v = 2) {
    return Op(static_cast<unsigned char>(0x80)).Byte(v);
  }
  Pickle& Byte(int v) {
    out_.push_back(static_cast<char>(v));
    return *this;
  }
  Pickle& Str(const std::string& s) {  // BINUNICODE
    Op('X');
    PutLe(&out_, s.size(), 4);
    out_ += s;
    return *this;
  }
  Pickle& Int(int64_t v) {  // BININT1 / BININT2 / BININT / LONG1
    if (v >= 0 && v < 256) {
      Op('K').Byte(static_cast<int>(v));
    } else if (v >= 0 && v < 65536) {
      Op('M');
      PutLe(&out_, static_cast<uint64_t>(v), 2);
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
      Op('J');
      PutLe(&out_, static_cast<uint64_t>(v), 4);
    } else {
      Op(static_cast<unsigned char>(0x8a)).Byte(8);
      PutLe(&out_, static_cast<uint64_t>(v), 8);
    }
    return *this;
  }
  Pickle& Global(const std::string& module, const std::string& name) {
    return Op('c').Raw(module + "\n" + name + "\n");
  }
  Pickle& Mark() { return Op('('); }
  Pickle& Tuple() { return Op('t'); }
  Pickle& IntTuple(const std::vector<int64_t>& v) {
    Mark();
    for (int64_t x : v) Int(x);
    return Tuple();
  }
  Pickle& BinPut(int i) { return Op('q').Byte(i); }
  Pickle& BinGet(int i) { return Op('h').Byte(i); }
  const std::string& bytes() const { return out_; }

 private:
  std::string out_;
};

// One tensor of a hand-built state_dict.
struct TensorSpec {
  std::string name;
  std::string storage_class;  // "FloatStorage", "HalfStorage", ...
  std::string key;            // storage key
  int64_t storage_numel = 0;
  int64_t offset = 0;
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;
};

// The rebuild call of one tensor, as torch 1.13 writes it (without memo).
inline void AppendTensor(Pickle* p, const TensorSpec& t) {
  p->Global("torch._utils", "_rebuild_tensor_v2").Mark();
  p->Mark().Str("storage").Global("torch", t.storage_class).Str(t.key);
  p->Str("cpu").Int(t.storage_numel).Tuple().Op('Q');
  p->Int(t.offset).IntTuple(t.shape).IntTuple(t.strides);
  p->Op(static_cast<unsigned char>(0x89));  // NEWFALSE
  p->Global("collections", "OrderedDict").Op(')').Op('R');
  p->Tuple().Op('R');
}

// A complete data.pkl: {name: tensor, ...}.
inline std::string StateDictPickle(const std::vector<TensorSpec>& tensors) {
  Pickle p;
  p.Proto().Op('}').Mark();
  for (const TensorSpec& t : tensors) {
    p.Str(t.name);
    AppendTensor(&p, t);
  }
  p.Op('u').Op('.');
  return p.bytes();
}

// A .pth image holding `pickle` and the given storages under `top`.
inline std::string BuildPth(
    const std::string& pickle,
    const std::vector<std::pair<std::string, std::string>>& storages,
    const std::string& top = "archive/", ZipOptions options = {}) {
  std::vector<ZipMember> members;
  members.push_back({top + "data.pkl", pickle});
  for (const auto& [key, bytes] : storages) {
    members.push_back({top + "data/" + key, bytes});
  }
  members.push_back({top + "version", "3\n"});
  return BuildZip(members, options);
}

template <typename T>
std::string Bytes(const std::vector<T>& v) {
  std::string s(v.size() * sizeof(T), '\0');
  if (!v.empty()) std::memcpy(s.data(), v.data(), s.size());
  return s;
}

// ---- safetensors
// -------------------------------------------------------------

// 8-byte length + `header` (padded with spaces to a multiple of 8) + `data`.
inline std::string BuildSafetensors(const std::string& header,
                                    const std::string& data) {
  std::string h = header;
  while (h.size() % 8 != 0) h.push_back(' ');
  std::string out;
  PutLe(&out, h.size(), 8);
  return out + h + data;
}

}  // namespace statestream::engine::testing

#endif  // STATESTREAM_WORKER_ENGINE_WEIGHT_FILE_TEST_UTIL_H_
