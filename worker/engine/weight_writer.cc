// SPDX-License-Identifier: Apache-2.0
#include "worker/engine/weight_writer.h"

#include <zlib.h>

#include <cmath>
#include <cstdio>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/files.h"
#include "common/status.h"
#include "nlohmann/json.hpp"
#include "worker/engine/float16.h"

namespace statestream::engine {
namespace {

std::string Encode(const std::vector<float>& v, DType dtype) {
  std::string out;
  if (dtype == DType::kF32) {
    out.assign(reinterpret_cast<const char*>(v.data()), v.size() * 4);
    return out;
  }
  out.resize(v.size() * 2);
  for (size_t i = 0; i < v.size(); ++i) {
    uint16_t h = dtype == DType::kBF16 ? F32ToBF16(v[i]) : F32ToF16(v[i]);
    std::memcpy(&out[2 * i], &h, 2);
  }
  return out;
}

absl::Status CheckTensors(const std::vector<NamedTensor>& tensors) {
  for (const NamedTensor& t : tensors) {
    int64_t n = 1;
    for (int64_t d : t.shape) n *= d;
    if (n != static_cast<int64_t>(t.values.size())) {
      return InvalidArgumentError(
          Reason::kInvalidArgument,
          absl::StrCat("tensor ", t.name, ": shape and value count differ"));
    }
  }
  return absl::OkStatus();
}

void Put16(std::string* s, uint32_t v) {
  s->push_back(static_cast<char>(v));
  s->push_back(static_cast<char>(v >> 8));
}
void Put32(std::string* s, uint32_t v) {
  Put16(s, v & 0xFFFF);
  Put16(s, v >> 16);
}

// A stored (uncompressed) zip, entries aligned to 64 bytes like torch's.
class ZipWriter {
 public:
  void Add(const std::string& name, const std::string& data) {
    // Pad with an extra field so the data starts on a 64-byte boundary.
    size_t header = 30 + name.size();
    size_t pad = (64 - (out_.size() + header + 4) % 64) % 64;
    const uint32_t crc = crc32(0, reinterpret_cast<const Bytef*>(data.data()),
                               static_cast<uInt>(data.size()));
    Entry e{name, static_cast<uint32_t>(out_.size()), crc,
            static_cast<uint32_t>(data.size())};
    Put32(&out_, 0x04034b50);
    Put16(&out_, 20);
    Put16(&out_, 0);  // flags
    Put16(&out_, 0);  // stored
    Put32(&out_, 0);  // time, date
    Put32(&out_, crc);
    Put32(&out_, e.size);
    Put32(&out_, e.size);
    Put16(&out_, static_cast<uint32_t>(name.size()));
    Put16(&out_, static_cast<uint32_t>(4 + pad));
    out_ += name;
    Put16(&out_, 0xCAFE);  // private extra-field id, like torch's FB padding
    Put16(&out_, static_cast<uint32_t>(pad));
    out_.append(pad, 'Z');
    out_ += data;
    entries_.push_back(e);
  }
  std::string Finish() {
    const uint32_t cd_start = static_cast<uint32_t>(out_.size());
    for (const Entry& e : entries_) {
      Put32(&out_, 0x02014b50);
      Put16(&out_, 20);
      Put16(&out_, 20);
      Put16(&out_, 0);
      Put16(&out_, 0);
      Put32(&out_, 0);
      Put32(&out_, e.crc);
      Put32(&out_, e.size);
      Put32(&out_, e.size);
      Put16(&out_, static_cast<uint32_t>(e.name.size()));
      Put16(&out_, 0);  // extra
      Put16(&out_, 0);  // comment
      Put16(&out_, 0);  // disk
      Put16(&out_, 0);  // internal attributes
      Put32(&out_, 0);  // external attributes
      Put32(&out_, e.offset);
      out_ += e.name;
    }
    const uint32_t cd_size = static_cast<uint32_t>(out_.size()) - cd_start;
    Put32(&out_, 0x06054b50);
    Put16(&out_, 0);
    Put16(&out_, 0);
    Put16(&out_, static_cast<uint32_t>(entries_.size()));
    Put16(&out_, static_cast<uint32_t>(entries_.size()));
    Put32(&out_, cd_size);
    Put32(&out_, cd_start);
    Put16(&out_, 0);
    return std::move(out_);
  }

 private:
  struct Entry {
    std::string name;
    uint32_t offset, crc, size;
  };
  std::string out_;
  std::vector<Entry> entries_;
};

// Minimal pickle protocol-2 emitter for a state_dict.
class Pickler {
 public:
  void Op(char op) { out_.push_back(op); }
  void Unicode(const std::string& s) {
    Op('X');  // BINUNICODE
    Put32(&out_, static_cast<uint32_t>(s.size()));
    out_ += s;
  }
  void Global(const std::string& module, const std::string& name) {
    Op('c');
    out_ += module + "\n" + name + "\n";
  }
  void Int(int64_t v) {
    Op('J');  // BININT (tensors here stay far below 2^31 per dimension)
    Put32(&out_, static_cast<uint32_t>(v));
  }
  std::string Take() { return std::move(out_); }

 private:
  std::string out_;
};

const char* StorageClass(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return "FloatStorage";
    case DType::kBF16:
      return "BFloat16Storage";
    case DType::kF16:
      return "HalfStorage";
  }
  return "FloatStorage";
}

}  // namespace

absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<NamedTensor>& tensors,
                              DType dtype) {
  SS_RETURN_IF_ERROR(CheckTensors(tensors));
  nlohmann::json header = nlohmann::json::object();
  header["__metadata__"] = {{"format", "pt"}};
  std::string data;
  for (const NamedTensor& t : tensors) {
    std::string bytes = Encode(t.values, dtype);
    header[t.name] = {
        {"dtype", std::string(DTypeName(dtype))},
        {"shape", t.shape},
        {"data_offsets", {data.size(), data.size() + bytes.size()}}};
    data += bytes;
  }
  std::string h = header.dump();
  h.append((8 - h.size() % 8) % 8, ' ');
  std::string out;
  uint64_t n = h.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>(n >> (8 * i)));
  out += h;
  out += data;
  // Whole or not at all: one cut short left a truncated model behind.
  return WriteFileAtomically(path, out);
}

absl::Status WritePth(const std::string& path,
                      const std::vector<NamedTensor>& tensors, DType dtype) {
  SS_RETURN_IF_ERROR(CheckTensors(tensors));
  std::string stem = path.substr(path.find_last_of('/') + 1);
  if (absl::EndsWith(stem, ".pth")) stem.resize(stem.size() - 4);
  if (stem.empty()) stem = "archive";
  Pickler p;
  p.Op('\x80');  // PROTO 2
  p.Op('\x02');
  p.Op('}');  // EMPTY_DICT
  p.Op('(');  // MARK
  for (size_t i = 0; i < tensors.size(); ++i) {
    const NamedTensor& t = tensors[i];
    p.Unicode(t.name);
    p.Global("torch._utils", "_rebuild_tensor_v2");
    p.Op('(');
    p.Op('(');  // persistent id tuple
    p.Unicode("storage");
    p.Global("torch", StorageClass(dtype));
    p.Unicode(std::to_string(i));
    p.Unicode("cpu");
    p.Int(static_cast<int64_t>(t.values.size()));
    p.Op('t');  // TUPLE
    p.Op('Q');  // BINPERSID
    p.Int(0);   // storage offset
    p.Op('(');
    for (int64_t d : t.shape) p.Int(d);
    p.Op('t');
    p.Op('(');
    int64_t stride = 1;
    std::vector<int64_t> strides(t.shape.size());
    for (size_t d = t.shape.size(); d-- > 0;) {
      strides[d] = stride;
      stride *= t.shape[d];
    }
    for (int64_t s : strides) p.Int(s);
    p.Op('t');
    p.Op('\x89');  // NEWFALSE (requires_grad)
    p.Global("collections", "OrderedDict");
    p.Op(')');  // EMPTY_TUPLE
    p.Op('R');  // REDUCE -> OrderedDict()
    p.Op('t');  // args tuple
    p.Op('R');  // REDUCE -> tensor
  }
  p.Op('u');  // SETITEMS
  p.Op('.');  // STOP
  ZipWriter zip;
  zip.Add(stem + "/data.pkl", p.Take());
  for (size_t i = 0; i < tensors.size(); ++i) {
    zip.Add(stem + "/data/" + std::to_string(i),
            Encode(tensors[i].values, dtype));
  }
  zip.Add(stem + "/version", "3\n");
  return WriteFileAtomically(path, zip.Finish());
}

absl::Status WriteCheckpoint(const std::string& path,
                             const std::vector<NamedTensor>& tensors,
                             DType dtype) {
  if (absl::EndsWith(path, ".safetensors")) {
    return WriteSafetensors(path, tensors, dtype);
  }
  return WritePth(path, tensors, dtype);
}

}  // namespace statestream::engine
