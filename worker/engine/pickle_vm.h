// SPDX-License-Identifier: Apache-2.0
// The pickle virtual machine behind ParseTorchPickle (weight_file_internal.h),
// split over pickle_reader.cc (objects, calls, result) and pickle_ops.cc (the
// opcode dispatch). Internal to worker/engine/.
//
// The VM understands exactly one kind of program: a torch state_dict. It
// implements the data opcodes of protocols 0-4 (not the escaped text strings
// of protocol 0, nor the out-of-band buffers of 5), and calls only an
// allow-list of torch/collections globals, which it interprets itself.
// Nothing is ever imported or executed.
//
// Objects live in an arena and are referred to by index, so memo sharing and
// even cycles (a list appended to itself) cost nothing and leak nothing; the
// arena, container elements, stack, marks and memo are bounded by
// PickleLimits. A Vm runs one pickle once; it is not thread-safe.
#ifndef STATESTREAM_WORKER_ENGINE_PICKLE_VM_H_
#define STATESTREAM_WORKER_ENGINE_PICKLE_VM_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "worker/engine/weight_file_internal.h"

namespace statestream::engine::internal::pickle {

enum class Kind : uint8_t {
  kNone,
  kBool,
  kInt,
  kBigInt,  // an integer outside int64; usable only as an opaque value
  kFloat,
  kStr,
  kBytes,
  kTuple,
  kList,
  kDict,  // items: key0, value0, key1, value1, ...
  kSet,
  kGlobal,
  kStorage,
  kTensor,
};

enum class Global : uint8_t {
  kOrderedDict,
  kRebuildTensor,
  kRebuildTensorV2,
  kRebuildParameter,
  kRebuildParameterWithState,
  kFloatStorage,
  kBFloat16Storage,
  kHalfStorage,
};

struct Object {
  Kind kind = Kind::kNone;
  // kBool, kInt: the value. kGlobal: a Global. kStorage, kTensor: an index
  // into Vm::storages_ / Vm::tensors_.
  int64_t i = 0;
  double f = 0;
  std::string s;                // kStr, kBytes
  std::vector<uint32_t> items;  // kTuple, kList, kDict, kSet
};

struct Storage {
  DType dtype;
  std::string key;
  int64_t numel;
};

struct Tensor {
  size_t storage;
  int64_t offset;
  std::vector<int64_t> shape;
  std::vector<int64_t> strides;
};

class Vm {
 public:
  Vm(absl::string_view pickle, const PickleLimits& limits)
      : in_(pickle), limits_(limits) {}

  absl::StatusOr<std::vector<PickledTensor>> Run();

 private:
  absl::Status Step(uint8_t op, bool* stop);
  absl::Status Err(absl::string_view what) const {
    return BadFile(absl::StrCat("data.pkl: ", what, " (opcode 0x",
                                absl::Hex(op_), " at byte ", op_pos_, ")"));
  }

  // Input. Each returns false at the end of the pickle.
  bool Read(size_t n, absl::string_view* out);
  bool ReadLine(absl::string_view* out);
  template <typename T>
  bool ReadLe(T* out) {
    absl::string_view b;
    if (!Read(sizeof(T), &b)) return false;
    uint64_t v = 0;
    for (size_t k = 0; k < sizeof(T); ++k) {
      v |= uint64_t{static_cast<uint8_t>(b[k])} << (8 * k);
    }
    *out = static_cast<T>(v);
    return true;
  }

  // Arena and stack.
  absl::StatusOr<uint32_t> New(Object o);
  absl::Status PushNew(Object o);
  absl::Status Push(uint32_t id);
  size_t Base() const { return marks_.empty() ? 0 : marks_.back(); }
  absl::StatusOr<uint32_t> Pop();
  absl::StatusOr<uint32_t> Top() const;
  absl::StatusOr<std::vector<uint32_t>> PopMark();
  absl::Status Put(uint64_t index);
  absl::Status Get(uint64_t index);

  // Opcode helpers.
  absl::Status PushString(Kind kind, uint64_t len);
  absl::Status PushLong(absl::string_view le_bytes);
  absl::Status PushTextInt(absl::string_view line, bool is_long);
  absl::Status PushGlobal(absl::string_view module, absl::string_view name);
  absl::Status AddToContainer(uint32_t target, Kind want,
                              const std::vector<uint32_t>& items);
  absl::Status Call(uint32_t callable, uint32_t args);
  absl::StatusOr<uint32_t> RebuildTensor(const std::vector<uint32_t>& args);
  absl::Status PersistentLoad(uint32_t pid);
  absl::StatusOr<std::vector<PickledTensor>> Extract(uint32_t top) const;

  absl::string_view in_;
  const PickleLimits limits_;
  size_t pos_ = 0;
  size_t op_pos_ = 0;
  uint8_t op_ = 0;
  std::vector<Object> objects_;
  size_t items_ = 0;  // container elements held by objects_
  std::vector<uint32_t> stack_;
  std::vector<size_t> marks_;
  absl::flat_hash_map<uint64_t, uint32_t> memo_;
  std::vector<Storage> storages_;
  absl::flat_hash_map<std::string, size_t> storage_by_key_;
  std::vector<Tensor> tensors_;
};

}  // namespace statestream::engine::internal::pickle

#endif  // STATESTREAM_WORKER_ENGINE_PICKLE_VM_H_
