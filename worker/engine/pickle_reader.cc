// SPDX-License-Identifier: Apache-2.0
// The pickle VM (pickle_vm.h): input, arena and stack, the allow-listed
// calls, and turning the top object into tensors.
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "worker/engine/pickle_vm.h"

namespace statestream::engine::internal {
namespace pickle {
namespace {

// Bounds on what each tensor of a state_dict copies from the pickle (see
// PersistentLoad and Extract): real checkpoints use storage keys like "12",
// names like "blocks.23.att.key.weight" and a few thousand tensors.
constexpr size_t kMaxStorageKeyBytes = 64;
constexpr size_t kMaxTensorNameBytes = 1024;
constexpr size_t kMaxTensors = 1 << 17;

}  // namespace

bool Vm::Read(size_t n, absl::string_view* out) {
  if (n > in_.size() - pos_) return false;
  *out = in_.substr(pos_, n);
  pos_ += n;
  return true;
}

bool Vm::ReadLine(absl::string_view* out) {
  size_t nl = in_.find('\n', pos_);
  if (nl == absl::string_view::npos) return false;
  *out = in_.substr(pos_, nl - pos_);
  pos_ = nl + 1;
  return true;
}

absl::StatusOr<uint32_t> Vm::New(Object o) {
  if (objects_.size() >= limits_.max_objects) {
    return Err("too many objects");
  }
  if (o.items.size() > limits_.max_items - items_) {
    return Err("too many container elements");
  }
  items_ += o.items.size();
  objects_.push_back(std::move(o));
  return static_cast<uint32_t>(objects_.size() - 1);
}

absl::Status Vm::Push(uint32_t id) {
  if (stack_.size() >= limits_.max_stack) return Err("stack too deep");
  stack_.push_back(id);
  return absl::OkStatus();
}

absl::Status Vm::PushNew(Object o) {
  SS_ASSIGN_OR_RETURN(uint32_t id, New(std::move(o)));
  return Push(id);
}

absl::StatusOr<uint32_t> Vm::Pop() {
  if (stack_.size() <= Base()) return Err("stack underflow");
  uint32_t id = stack_.back();
  stack_.pop_back();
  return id;
}

absl::StatusOr<uint32_t> Vm::Top() const {
  if (stack_.size() <= Base()) return Err("stack underflow");
  return stack_.back();
}

absl::StatusOr<std::vector<uint32_t>> Vm::PopMark() {
  if (marks_.empty()) return Err("no MARK on the stack");
  size_t m = marks_.back();
  marks_.pop_back();
  std::vector<uint32_t> items(stack_.begin() + m, stack_.end());
  stack_.resize(m);
  return items;
}

absl::Status Vm::Put(uint64_t index) {
  SS_ASSIGN_OR_RETURN(uint32_t id, Top());
  if (memo_.size() >= limits_.max_memo && !memo_.contains(index)) {
    return Err("memo too large");
  }
  memo_[index] = id;
  return absl::OkStatus();
}

absl::Status Vm::Get(uint64_t index) {
  auto it = memo_.find(index);
  if (it == memo_.end()) return Err(absl::StrCat("memo ", index, " not set"));
  return Push(it->second);
}

absl::Status Vm::PushString(Kind kind, uint64_t len) {
  if (len > limits_.max_string) return Err("string too long");
  absl::string_view b;
  if (!Read(static_cast<size_t>(len), &b)) return Err("truncated string");
  Object o;
  o.kind = kind;
  o.s = std::string(b);
  return PushNew(std::move(o));
}

// Little-endian two's complement, as LONG1/LONG4 store it.
absl::Status Vm::PushLong(absl::string_view b) {
  Object o;
  o.kind = Kind::kInt;
  if (b.empty()) return PushNew(std::move(o));
  size_t n = b.size();
  bool negative = static_cast<uint8_t>(b[n - 1]) & 0x80;
  if (n > 8) {
    // Fits only if every byte past the 8th is a sign extension.
    bool neg8 = static_cast<uint8_t>(b[7]) & 0x80;
    uint8_t ext = neg8 ? 0xff : 0x00;
    for (size_t k = 8; k < n; ++k) {
      if (static_cast<uint8_t>(b[k]) != ext) o.kind = Kind::kBigInt;
    }
    negative = neg8;
    n = 8;
  }
  uint64_t v = negative ? ~uint64_t{0} : 0;
  for (size_t k = 0; k < n; ++k) {
    v &= ~(uint64_t{0xff} << (8 * k));
    v |= uint64_t{static_cast<uint8_t>(b[k])} << (8 * k);
  }
  o.i = static_cast<int64_t>(v);
  if (o.kind == Kind::kBigInt) o.i = 0;
  return PushNew(std::move(o));
}

// INT/LONG text forms: "00"/"01" are protocol 0's False/True.
absl::Status Vm::PushTextInt(absl::string_view line, bool is_long) {
  Object o;
  if (!is_long && (line == "00" || line == "01")) {
    o.kind = Kind::kBool;
    o.i = line == "01";
    return PushNew(std::move(o));
  }
  if (is_long && !line.empty() && line.back() == 'L') line.remove_suffix(1);
  o.kind = Kind::kInt;
  if (!absl::SimpleAtoi(line, &o.i)) {
    bool digits = !line.empty();
    for (size_t k = (line.size() > 1 && line[0] == '-') ? 1 : 0;
         k < line.size(); ++k) {
      if (line[k] < '0' || line[k] > '9') digits = false;
    }
    if (!digits) return Err("malformed integer");
    o.kind = Kind::kBigInt;
    o.i = 0;
  }
  return PushNew(std::move(o));
}

absl::Status Vm::PushGlobal(absl::string_view module, absl::string_view name) {
  struct Allowed {
    absl::string_view module, name;
    Global global;
  };
  static constexpr Allowed kAllowed[] = {
      {"collections", "OrderedDict", Global::kOrderedDict},
      {"torch._utils", "_rebuild_tensor", Global::kRebuildTensor},
      {"torch._utils", "_rebuild_tensor_v2", Global::kRebuildTensorV2},
      {"torch._utils", "_rebuild_parameter", Global::kRebuildParameter},
      {"torch._utils", "_rebuild_parameter_with_state",
       Global::kRebuildParameterWithState},
      {"torch", "FloatStorage", Global::kFloatStorage},
      {"torch", "BFloat16Storage", Global::kBFloat16Storage},
      {"torch", "HalfStorage", Global::kHalfStorage},
  };
  for (const Allowed& a : kAllowed) {
    if (module == a.module && name == a.name) {
      Object o;
      o.kind = Kind::kGlobal;
      o.i = static_cast<int64_t>(a.global);
      return PushNew(std::move(o));
    }
  }
  std::string full = Quoted(absl::StrCat(module, ".", name));
  if (module == "torch" && absl::EndsWith(name, "Storage")) {
    return Err(absl::StrCat("unsupported storage type ", full,
                            "; only FloatStorage, BFloat16Storage and "
                            "HalfStorage are supported"));
  }
  return Err(absl::StrCat("GLOBAL ", full,
                          " is not allowed; a checkpoint may only name torch "
                          "tensor/storage rebuilders and "
                          "collections.OrderedDict"));
}

absl::Status Vm::AddToContainer(uint32_t target, Kind want,
                                const std::vector<uint32_t>& items) {
  Object& t = objects_[target];
  if (t.kind != want) return Err("container has the wrong type");
  if (want == Kind::kDict && items.size() % 2 != 0) {
    return Err("odd number of dict items");
  }
  if (items.size() > limits_.max_items - items_) {
    return Err("too many container elements");
  }
  items_ += items.size();
  t.items.insert(t.items.end(), items.begin(), items.end());
  return absl::OkStatus();
}

absl::StatusOr<uint32_t> Vm::RebuildTensor(const std::vector<uint32_t>& a) {
  const Object& storage = objects_[a[0]];
  const Object& offset = objects_[a[1]];
  const Object& size = objects_[a[2]];
  const Object& stride = objects_[a[3]];
  if (storage.kind != Kind::kStorage) return Err("tensor without a storage");
  if (offset.kind != Kind::kInt || offset.i < 0) {
    return Err("tensor storage offset is not a non-negative int");
  }
  if (size.kind != Kind::kTuple || stride.kind != Kind::kTuple) {
    return Err("tensor size/stride is not a tuple");
  }
  if (size.items.size() > kMaxRank) {
    return Err(
        absl::StrCat("tensor rank ", size.items.size(), " exceeds ", kMaxRank));
  }
  if (size.items.size() != stride.items.size()) {
    return Err("tensor size and stride differ in rank");
  }
  // Bounded here, not only when the state_dict is read (Extract): a
  // pickle that rebuilds one memoized tensor millions of times would hold
  // ~60x its size in tensor records.
  if (tensors_.size() >= kMaxTensors) {
    return Err(absl::StrCat("more than ", kMaxTensors, " tensors"));
  }
  Tensor t;
  t.storage = static_cast<size_t>(storage.i);
  t.offset = offset.i;
  for (size_t d = 0; d < size.items.size(); ++d) {
    const Object& n = objects_[size.items[d]];
    const Object& s = objects_[stride.items[d]];
    if (n.kind != Kind::kInt || s.kind != Kind::kInt || n.i < 0 || s.i < 0) {
      return Err("tensor sizes and strides must be non-negative ints");
    }
    t.shape.push_back(n.i);
    t.strides.push_back(s.i);
  }
  tensors_.push_back(std::move(t));
  Object o;
  o.kind = Kind::kTensor;
  o.i = static_cast<int64_t>(tensors_.size() - 1);
  return New(std::move(o));
}

absl::Status Vm::Call(uint32_t callable_id, uint32_t args_id) {
  const Object& callable = objects_[callable_id];
  const Object& args_obj = objects_[args_id];
  if (callable.kind != Kind::kGlobal) return Err("call of a non-global");
  if (args_obj.kind != Kind::kTuple) return Err("call arguments not a tuple");
  if (args_obj.items.size() > 7) return Err("too many call arguments");
  // A copy: New() may move objects_.
  const std::vector<uint32_t> args = args_obj.items;
  switch (static_cast<Global>(callable.i)) {
    case Global::kOrderedDict: {
      Object d;
      d.kind = Kind::kDict;
      if (args.size() > 1) return Err("OrderedDict() with several arguments");
      if (args.size() == 1) {
        const Object& pairs = objects_[args[0]];
        if (pairs.kind != Kind::kList && pairs.kind != Kind::kTuple) {
          return Err("OrderedDict() argument is not a sequence");
        }
        if (pairs.items.size() > (limits_.max_items - items_) / 2) {
          return Err("too many container elements");
        }
        for (uint32_t p : pairs.items) {
          const Object& kv = objects_[p];
          if ((kv.kind != Kind::kTuple && kv.kind != Kind::kList) ||
              kv.items.size() != 2) {
            return Err("OrderedDict() item is not a pair");
          }
          d.items.push_back(kv.items[0]);
          d.items.push_back(kv.items[1]);
        }
      }
      return PushNew(std::move(d));
    }
    case Global::kRebuildTensor:  // (storage, offset, size, stride)
    case Global::kRebuildTensorV2: {
      // v2: (storage, offset, size, stride, requires_grad, hooks[, metadata])
      bool v2 = static_cast<Global>(callable.i) == Global::kRebuildTensorV2;
      if (v2 ? (args.size() != 6 && args.size() != 7) : args.size() != 4) {
        return Err("wrong number of arguments to _rebuild_tensor");
      }
      SS_ASSIGN_OR_RETURN(uint32_t id, RebuildTensor(args));
      return Push(id);
    }
    case Global::kRebuildParameter:           // (data, requires_grad, hooks)
    case Global::kRebuildParameterWithState:  // (..., state)
      if (args.size() < 3 || args.size() > 4 ||
          objects_[args[0]].kind != Kind::kTensor) {
        return Err("malformed _rebuild_parameter");
      }
      return Push(args[0]);
    default:
      return Err("storage classes cannot be called");
  }
}

// pid = ('storage', StorageClass, key, location, numel)
absl::Status Vm::PersistentLoad(uint32_t pid_id) {
  const Object& pid = objects_[pid_id];
  if (pid.kind != Kind::kTuple || pid.items.size() != 5 ||
      objects_[pid.items[0]].kind != Kind::kStr ||
      objects_[pid.items[0]].s != "storage") {
    return Err("persistent id is not a ('storage', ...) 5-tuple");
  }
  const Object& cls = objects_[pid.items[1]];
  const Object& key = objects_[pid.items[2]];
  const Object& numel = objects_[pid.items[4]];
  if (cls.kind != Kind::kGlobal) return Err("storage class is not a global");
  DType dtype;
  switch (static_cast<Global>(cls.i)) {
    case Global::kFloatStorage:
      dtype = DType::kF32;
      break;
    case Global::kBFloat16Storage:
      dtype = DType::kBF16;
      break;
    case Global::kHalfStorage:
      dtype = DType::kF16;
      break;
    default:
      return Err("persistent id names no storage class");
  }
  // torch names storages by small decimal numbers; a long key, copied into
  // every tensor on it, would let a small pickle take gigabytes.
  if (key.kind != Kind::kStr || key.s.empty() ||
      key.s.size() > kMaxStorageKeyBytes) {
    return Err(absl::StrCat("storage key is not a string of 1-",
                            kMaxStorageKeyBytes, " bytes"));
  }
  if (numel.kind != Kind::kInt || numel.i < 0) {
    return Err("storage size is not a non-negative int");
  }
  auto [it, inserted] = storage_by_key_.try_emplace(key.s, storages_.size());
  if (inserted) {
    storages_.push_back(Storage{dtype, key.s, numel.i});
  } else if (storages_[it->second].dtype != dtype ||
             storages_[it->second].numel != numel.i) {
    return Err(absl::StrCat("storage ", Quoted(key.s),
                            " is described inconsistently"));
  }
  Object o;
  o.kind = Kind::kStorage;
  o.i = static_cast<int64_t>(it->second);
  return PushNew(std::move(o));
}

absl::StatusOr<std::vector<PickledTensor>> Vm::Extract(uint32_t top) const {
  const Object& dict = objects_[top];
  if (dict.kind != Kind::kDict) {
    return BadFile("data.pkl: the top object is not a dict (state_dict)");
  }
  std::vector<PickledTensor> out;
  absl::flat_hash_map<std::string, size_t> index;
  for (size_t k = 0; k + 1 < dict.items.size(); k += 2) {
    const Object& key = objects_[dict.items[k]];
    const Object& value = objects_[dict.items[k + 1]];
    if (key.kind != Kind::kStr || key.s.size() > kMaxTensorNameBytes) {
      return BadFile(
          absl::StrCat("data.pkl: a state_dict key is not a string of at most ",
                       kMaxTensorNameBytes, " bytes"));
    }
    if (k / 2 >= kMaxTensors) {
      return BadFile(absl::StrCat("data.pkl: more than ", kMaxTensors,
                                  " state_dict entries"));
    }
    if (value.kind != Kind::kTensor) {
      return BadFile(
          absl::StrCat("data.pkl: entry ", Quoted(key.s), " is not a tensor"));
    }
    const Tensor& t = tensors_[static_cast<size_t>(value.i)];
    const Storage& s = storages_[t.storage];
    PickledTensor p{key.s,    s.dtype, s.key,    s.numel,
                    t.offset, t.shape, t.strides};
    auto [it, inserted] = index.try_emplace(key.s, out.size());
    if (inserted) {
      out.push_back(std::move(p));
    } else {
      out[it->second] = std::move(p);
    }
  }
  return out;
}

absl::StatusOr<std::vector<PickledTensor>> Vm::Run() {
  while (pos_ < in_.size()) {
    op_pos_ = pos_;
    op_ = static_cast<uint8_t>(in_[pos_++]);
    bool stop = false;
    SS_RETURN_IF_ERROR(Step(op_, &stop));
    if (stop) {
      SS_ASSIGN_OR_RETURN(uint32_t top, Pop());
      return Extract(top);
    }
  }
  return BadFile("data.pkl: truncated (no STOP opcode)");
}

}  // namespace pickle

absl::StatusOr<std::vector<PickledTensor>> ParseTorchPickle(
    absl::string_view pickle, const PickleLimits& limits) {
  pickle::Vm vm(pickle, limits);
  return vm.Run();
}

}  // namespace statestream::engine::internal
