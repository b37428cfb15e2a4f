#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Writes a small seed corpus for weight_file_fuzz (see docs/model-files.md).

torch.save pickles a state_dict with Python's own pickle.Pickler (protocol 2)
and a persistent_id hook; this script does the same with stand-ins for the
torch globals, so the seeds carry exactly torch's opcode patterns without
needing torch. Each seed is a few hundred bytes, so the fuzzer runs fast; the
real test models can be added to the corpus as well.

usage: make_seeds.py OUT_DIR
"""
import collections
import io
import json
import os
import pickle
import struct
import sys
import types
import zipfile

# Stand-ins that the pickler can find under torch's names.
torch = types.ModuleType("torch")
torch_utils = types.ModuleType("torch._utils")
torch._utils = torch_utils
sys.modules["torch"] = torch
sys.modules["torch._utils"] = torch_utils


def _global(module, obj, name):
    obj.__module__ = module.__name__
    obj.__qualname__ = name
    obj.__name__ = name
    setattr(module, name, obj)
    return obj


def _rebuild_tensor_v2(*args):
    raise NotImplementedError


def _rebuild_parameter(*args):
    raise NotImplementedError


_global(torch_utils, _rebuild_tensor_v2, "_rebuild_tensor_v2")
_global(torch_utils, _rebuild_parameter, "_rebuild_parameter")
STORAGE = {}
for name, fmt in (("FloatStorage", "<f"), ("BFloat16Storage", "<H"),
                  ("HalfStorage", "<e")):
    STORAGE[name] = (_global(torch, type(name, (), {}), name), fmt)


class Storage:
    def __init__(self, cls, key, values):
        self.cls, self.key, self.values = cls, key, values

    def raw(self):
        _, fmt = STORAGE[self.cls]
        if fmt == "<H":  # bf16: the top half of an f32
            return b"".join(struct.pack("<f", v)[2:] for v in self.values)
        return b"".join(struct.pack(fmt, v) for v in self.values)


class Tensor:
    def __init__(self, storage, offset, shape, stride, param=False):
        self.storage, self.offset = storage, offset
        self.shape, self.stride, self.param = shape, stride, param

    def __reduce__(self):
        t = (_rebuild_tensor_v2,
             (self.storage, self.offset, tuple(self.shape), tuple(self.stride),
              False, collections.OrderedDict()))
        if not self.param:
            return t

        class Inner:
            def __reduce__(_):
                return t
        return (_rebuild_parameter, (Inner(), True, collections.OrderedDict()))


class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", STORAGE[obj.cls][0], obj.key, "cpu",
                    len(obj.values))
        return None


def pth(state, protocol=2, top="archive"):
    buf = io.BytesIO()
    Pickler(buf, protocol=protocol).dump(state)
    storages = {}
    for t in state.values():
        storages[t.storage.key] = t.storage
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{top}/data.pkl", buf.getvalue())
        z.writestr(f"{top}/byteorder", "little")
        for key, s in storages.items():
            z.writestr(f"{top}/data/{key}", s.raw())
        z.writestr(f"{top}/version", "3\n")
    return out.getvalue()


def safetensors(tensors):
    header, data = {"__metadata__": {"format": "pt"}}, b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    s0 = Storage("FloatStorage", "0", [float(i) for i in range(12)])
    s1 = Storage("BFloat16Storage", "1", [1.0, -2.0, 0.5, 3.0])
    s2 = Storage("HalfStorage", "2", [1.0, 65504.0, 6e-8, -0.0])
    seeds = {
        "plain.pth": pth({"emb.weight": Tensor(s0, 0, [3, 4], [4, 1]),
                          "ln.bias": Tensor(s1, 0, [4], [1])}),
        "shared_strided.pth": pth(collections.OrderedDict(
            [("a", Tensor(s0, 2, [3], [1])),
             ("t", Tensor(s0, 0, [3, 2], [1, 3])),
             ("d", Tensor(s0, 1, [2, 2], [6, 2])),
             ("h", Tensor(s2, 1, [2], [2]))])),
        "param_proto4.pth": pth({"p": Tensor(s1, 1, [1, 1, 3], [3, 3, 1],
                                             param=True)}, protocol=4),
        "scalar.pth": pth({"s": Tensor(s0, 11, [], [])}, top="x/y"),
        "small.safetensors": safetensors({
            "a": ("F32", [2, 2], struct.pack("<4f", 1, 2, 3, 4)),
            "b": ("BF16", [3], b"\x80\x3f\x00\x40\x40\x40"),
            "c": ("F16", [1, 2], struct.pack("<2e", 1.0, -0.5)),
            "z": ("F32", [0, 5], b"")}),
    }
    for name, data in seeds.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)


if __name__ == "__main__":
    main()
