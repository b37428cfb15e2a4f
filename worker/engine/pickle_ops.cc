// SPDX-License-Identifier: Apache-2.0
// Opcode dispatch of the pickle VM (pickle_vm.h). Opcode names and operand
// encodings follow CPython's Lib/pickletools.py.
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "worker/engine/pickle_vm.h"

namespace statestream::engine::internal::pickle {

absl::Status Vm::Step(uint8_t op, bool* stop) {
  absl::string_view b;
  auto truncated = [this] { return Err("truncated operand"); };
  switch (op) {
    case 0x80: {  // PROTO
      uint8_t version;
      if (!ReadLe(&version)) return truncated();
      if (version > 5) return Err(absl::StrCat("pickle protocol ", version));
      return absl::OkStatus();
    }
    case 0x95: {  // FRAME: a length prefix only; the bytes follow inline
      uint64_t len;
      if (!ReadLe(&len)) return truncated();
      return absl::OkStatus();
    }
    case '.':  // STOP
      *stop = true;
      return absl::OkStatus();
    case '(':  // MARK
      if (marks_.size() >= limits_.max_marks) return Err("too many MARKs");
      marks_.push_back(stack_.size());
      return absl::OkStatus();
    case '0':  // POP: an item, or the mark when none is above it
      if (stack_.size() > Base()) {
        stack_.pop_back();
        return absl::OkStatus();
      }
      return PopMark().status();
    case '1':  // POP_MARK
      return PopMark().status();
    case '2': {  // DUP
      SS_ASSIGN_OR_RETURN(uint32_t id, Top());
      return Push(id);
    }

    case 'N':
      return PushNew(Object{});
    case 0x88:    // NEWTRUE
    case 0x89: {  // NEWFALSE
      Object o;
      o.kind = Kind::kBool;
      o.i = op == 0x88;
      return PushNew(std::move(o));
    }
    case 'J': {  // BININT
      int32_t v;
      if (!ReadLe(&v)) return truncated();
      Object o;
      o.kind = Kind::kInt;
      o.i = v;
      return PushNew(std::move(o));
    }
    case 'K': {  // BININT1
      uint8_t v;
      if (!ReadLe(&v)) return truncated();
      Object o;
      o.kind = Kind::kInt;
      o.i = v;
      return PushNew(std::move(o));
    }
    case 'M': {  // BININT2
      uint16_t v;
      if (!ReadLe(&v)) return truncated();
      Object o;
      o.kind = Kind::kInt;
      o.i = v;
      return PushNew(std::move(o));
    }
    case 0x8a: {  // LONG1
      uint8_t n;
      if (!ReadLe(&n) || !Read(n, &b)) return truncated();
      return PushLong(b);
    }
    case 0x8b: {  // LONG4
      int32_t n;
      if (!ReadLe(&n)) return truncated();
      if (n < 0 || static_cast<size_t>(n) > limits_.max_string) {
        return Err("bad LONG4 length");
      }
      if (!Read(static_cast<size_t>(n), &b)) return truncated();
      return PushLong(b);
    }
    case 'I':  // INT
    case 'L':  // LONG
      if (!ReadLine(&b)) return truncated();
      return PushTextInt(b, op == 'L');
    case 'G': {  // BINFLOAT, big-endian
      if (!Read(8, &b)) return truncated();
      uint64_t bits = 0;
      for (char c : b) bits = (bits << 8) | static_cast<uint8_t>(c);
      Object o;
      o.kind = Kind::kFloat;
      std::memcpy(&o.f, &bits, sizeof(bits));
      return PushNew(std::move(o));
    }
    case 'F': {  // FLOAT, text
      if (!ReadLine(&b)) return truncated();
      Object o;
      o.kind = Kind::kFloat;
      if (!absl::SimpleAtod(b, &o.f)) return Err("malformed float");
      return PushNew(std::move(o));
    }

    case 'T':    // BINSTRING (a py2 str, read as str)
    case 'X': {  // BINUNICODE
      int32_t n;
      if (!ReadLe(&n)) return truncated();
      if (op == 'T' && n < 0) return Err("negative string length");
      return PushString(Kind::kStr, static_cast<uint32_t>(n));
    }
    case 'U':     // SHORT_BINSTRING
    case 0x8c: {  // SHORT_BINUNICODE
      uint8_t n;
      if (!ReadLe(&n)) return truncated();
      return PushString(Kind::kStr, n);
    }
    case 0x8d: {  // BINUNICODE8
      uint64_t n;
      if (!ReadLe(&n)) return truncated();
      return PushString(Kind::kStr, n);
    }
    case 'C': {  // SHORT_BINBYTES
      uint8_t n;
      if (!ReadLe(&n)) return truncated();
      return PushString(Kind::kBytes, n);
    }
    case 'B': {  // BINBYTES
      uint32_t n;
      if (!ReadLe(&n)) return truncated();
      return PushString(Kind::kBytes, n);
    }
    case 0x8e: {  // BINBYTES8
      uint64_t n;
      if (!ReadLe(&n)) return truncated();
      return PushString(Kind::kBytes, n);
    }

    case ')':     // EMPTY_TUPLE
    case ']':     // EMPTY_LIST
    case '}':     // EMPTY_DICT
    case 0x8f: {  // EMPTY_SET
      Object o;
      o.kind = op == ')'   ? Kind::kTuple
               : op == ']' ? Kind::kList
               : op == '}' ? Kind::kDict
                           : Kind::kSet;
      return PushNew(std::move(o));
    }
    case 't':     // TUPLE
    case 'l':     // LIST
    case 'd':     // DICT
    case 0x91: {  // FROZENSET
      SS_ASSIGN_OR_RETURN(std::vector<uint32_t> items, PopMark());
      Object o;
      o.kind = op == 't'   ? Kind::kTuple
               : op == 'l' ? Kind::kList
               : op == 'd' ? Kind::kDict
                           : Kind::kSet;
      if (o.kind == Kind::kDict && items.size() % 2 != 0) {
        return Err("odd number of dict items");
      }
      o.items = std::move(items);
      return PushNew(std::move(o));
    }
    case 0x85:    // TUPLE1
    case 0x86:    // TUPLE2
    case 0x87: {  // TUPLE3
      size_t n = op - 0x84u;
      if (stack_.size() - Base() < n) return Err("stack underflow");
      Object o;
      o.kind = Kind::kTuple;
      o.items.assign(stack_.end() - n, stack_.end());
      stack_.resize(stack_.size() - n);
      return PushNew(std::move(o));
    }
    case 'a': {  // APPEND
      SS_ASSIGN_OR_RETURN(uint32_t item, Pop());
      SS_ASSIGN_OR_RETURN(uint32_t list, Top());
      return AddToContainer(list, Kind::kList, {item});
    }
    case 's': {  // SETITEM
      SS_ASSIGN_OR_RETURN(uint32_t value, Pop());
      SS_ASSIGN_OR_RETURN(uint32_t key, Pop());
      SS_ASSIGN_OR_RETURN(uint32_t dict, Top());
      return AddToContainer(dict, Kind::kDict, {key, value});
    }
    case 'e':     // APPENDS
    case 'u':     // SETITEMS
    case 0x90: {  // ADDITEMS
      SS_ASSIGN_OR_RETURN(std::vector<uint32_t> items, PopMark());
      SS_ASSIGN_OR_RETURN(uint32_t target, Top());
      return AddToContainer(target,
                            op == 'e'   ? Kind::kList
                            : op == 'u' ? Kind::kDict
                                        : Kind::kSet,
                            items);
    }

    case 'q': {  // BINPUT
      uint8_t i;
      if (!ReadLe(&i)) return truncated();
      return Put(i);
    }
    case 'r': {  // LONG_BINPUT
      uint32_t i;
      if (!ReadLe(&i)) return truncated();
      return Put(i);
    }
    case 0x94:  // MEMOIZE
      return Put(memo_.size());
    case 'h': {  // BINGET
      uint8_t i;
      if (!ReadLe(&i)) return truncated();
      return Get(i);
    }
    case 'j': {  // LONG_BINGET
      uint32_t i;
      if (!ReadLe(&i)) return truncated();
      return Get(i);
    }
    case 'p':    // PUT
    case 'g': {  // GET
      uint64_t i;
      if (!ReadLine(&b)) return truncated();
      if (!absl::SimpleAtoi(b, &i)) return Err("malformed memo index");
      return op == 'p' ? Put(i) : Get(i);
    }

    case 'c': {  // GLOBAL
      absl::string_view module, name;
      if (!ReadLine(&module) || !ReadLine(&name)) return truncated();
      return PushGlobal(module, name);
    }
    case 0x93: {  // STACK_GLOBAL
      SS_ASSIGN_OR_RETURN(uint32_t name, Pop());
      SS_ASSIGN_OR_RETURN(uint32_t module, Pop());
      if (objects_[name].kind != Kind::kStr ||
          objects_[module].kind != Kind::kStr) {
        return Err("STACK_GLOBAL of non-strings");
      }
      return PushGlobal(objects_[module].s, objects_[name].s);
    }
    case 'R': {  // REDUCE
      SS_ASSIGN_OR_RETURN(uint32_t args, Pop());
      SS_ASSIGN_OR_RETURN(uint32_t callable, Pop());
      return Call(callable, args);
    }
    case 0x81:    // NEWOBJ: cls.__new__(cls, *args)
    case 0x92: {  // NEWOBJ_EX: cls.__new__(cls, *args, **kwargs)
      if (op == 0x92) {
        SS_ASSIGN_OR_RETURN(uint32_t kwargs, Pop());
        if (objects_[kwargs].kind != Kind::kDict ||
            !objects_[kwargs].items.empty()) {
          return Err("NEWOBJ_EX with keyword arguments");
        }
      }
      SS_ASSIGN_OR_RETURN(uint32_t args, Pop());
      SS_ASSIGN_OR_RETURN(uint32_t cls, Pop());
      if (objects_[cls].kind != Kind::kGlobal ||
          static_cast<Global>(objects_[cls].i) != Global::kOrderedDict) {
        return Err("NEWOBJ of a class other than OrderedDict");
      }
      return Call(cls, args);
    }
    case 'b': {  // BUILD: state (e.g. an OrderedDict's __dict__) is ignored
      SS_RETURN_IF_ERROR(Pop().status());
      return Top().status();
    }
    case 'Q': {  // BINPERSID
      SS_ASSIGN_OR_RETURN(uint32_t pid, Pop());
      return PersistentLoad(pid);
    }

    case 'P':
      return Err("PERSID is not supported (torch writes BINPERSID)");
    case 'S':
    case 'V':
      return Err("protocol-0 text strings are not supported");
    case 'i':
    case 'o':
      return Err("INST/OBJ (class instantiation) is not allowed");
    case 0x82:
    case 0x83:
    case 0x84:
      return Err("extension-registry opcodes are not allowed");
    case 0x96:
    case 0x97:
    case 0x98:
      return Err("out-of-band buffers are not supported");
    default:
      return Err("unknown opcode");
  }
}

}  // namespace statestream::engine::internal::pickle
