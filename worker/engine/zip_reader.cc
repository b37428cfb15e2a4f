// SPDX-License-Identifier: Apache-2.0
// A zip central-directory reader for PyTorch checkpoints: stored entries only,
// zip64 supported, no decompression, no CRC check (storages are read lazily
// through the mapping; checking them would touch every page at open).
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "worker/engine/weight_file_internal.h"

namespace statestream::engine::internal {
namespace {

constexpr uint32_t kLocalHeaderSig = 0x04034b50;
constexpr uint32_t kCentralHeaderSig = 0x02014b50;
constexpr uint32_t kEndSig = 0x06054b50;
constexpr uint32_t kZip64EndSig = 0x06064b50;
constexpr uint32_t kZip64LocatorSig = 0x07064b50;
constexpr size_t kEndSize = 22;
constexpr size_t kZip64LocatorSize = 20;
constexpr size_t kZip64EndSize = 56;
constexpr size_t kCentralHeaderSize = 46;
constexpr size_t kLocalHeaderSize = 30;
constexpr uint16_t kZip64ExtraId = 0x0001;

uint16_t Le16(const char* p) {
  uint8_t b[2];
  std::memcpy(b, p, 2);
  return static_cast<uint16_t>(b[0] | (b[1] << 8));
}
uint32_t Le32(const char* p) {
  uint8_t b[4];
  std::memcpy(b, p, 4);
  return uint32_t{b[0]} | (uint32_t{b[1]} << 8) | (uint32_t{b[2]} << 16) |
         (uint32_t{b[3]} << 24);
}
uint64_t Le64(const char* p) {
  return uint64_t{Le32(p)} | (uint64_t{Le32(p + 4)} << 32);
}

// True when [offset, offset + len) lies inside a buffer of `size` bytes.
bool InRange(uint64_t offset, uint64_t len, uint64_t size) {
  return offset <= size && len <= size - offset;
}

struct EndRecord {
  uint64_t entries = 0;
  uint64_t dir_size = 0;
  uint64_t dir_offset = 0;
};

// Finds the end-of-central-directory record (it may be followed by a comment
// of up to 65535 bytes) and, when a zip64 locator precedes it, the zip64 one.
absl::StatusOr<EndRecord> FindEnd(absl::string_view file) {
  if (file.size() < kEndSize) return BadFile("zip: file too short");
  const char* base = file.data();
  size_t last = file.size() - kEndSize;
  size_t first = last > 0xffff ? last - 0xffff : 0;
  size_t pos = last + 1;
  for (size_t p = last + 1; p-- > first;) {
    if (Le32(base + p) == kEndSig &&
        p + kEndSize + Le16(base + p + 20) <= file.size()) {
      pos = p;
      break;
    }
  }
  if (pos > last) return BadFile("zip: no end-of-central-directory record");
  const char* e = base + pos;
  if (Le16(e + 4) != 0 || Le16(e + 6) != 0) {
    return BadFile("zip: multi-disk archives are not supported");
  }
  EndRecord end;
  end.entries = Le16(e + 10);
  end.dir_size = Le32(e + 12);
  end.dir_offset = Le32(e + 16);
  if (Le16(e + 8) != end.entries) {
    return BadFile("zip: entry counts in the end record disagree");
  }

  if (pos < kZip64LocatorSize ||
      Le32(base + pos - kZip64LocatorSize) != kZip64LocatorSig) {
    return end;
  }
  const char* loc = base + pos - kZip64LocatorSize;
  uint64_t z_offset = Le64(loc + 8);
  if (Le32(loc + 4) != 0 || Le32(loc + 16) > 1) {
    return BadFile("zip64: multi-disk archives are not supported");
  }
  if (!InRange(z_offset, kZip64EndSize, pos - kZip64LocatorSize)) {
    return BadFile("zip64: end record offset out of range");
  }
  const char* z = base + z_offset;
  if (Le32(z) != kZip64EndSig) {
    return BadFile("zip64: bad end record signature");
  }
  if (Le32(z + 16) != 0 || Le32(z + 20) != 0) {
    return BadFile("zip64: multi-disk archives are not supported");
  }
  end.entries = Le64(z + 32);
  end.dir_size = Le64(z + 40);
  end.dir_offset = Le64(z + 48);
  if (Le64(z + 24) != end.entries) {
    return BadFile("zip64: entry counts in the end record disagree");
  }
  return end;
}

// Replaces saturated 32-bit fields with the values of the zip64 extra field
// (id 1), which lists, in this order, only the saturated ones.
absl::Status ApplyZip64Extra(absl::string_view extra, const std::string& name,
                             uint64_t* uncompressed, uint64_t* compressed,
                             uint64_t* local_offset) {
  bool need_u = *uncompressed == 0xffffffffu;
  bool need_c = *compressed == 0xffffffffu;
  bool need_o = *local_offset == 0xffffffffu;
  if (!need_u && !need_c && !need_o) return absl::OkStatus();
  size_t p = 0;
  while (p + 4 <= extra.size()) {
    uint16_t id = Le16(extra.data() + p);
    uint16_t len = Le16(extra.data() + p + 2);
    if (len > extra.size() - p - 4) break;
    if (id == kZip64ExtraId) {
      absl::string_view f = extra.substr(p + 4, len);
      size_t q = 0;
      for (uint64_t* v : {uncompressed, compressed, local_offset}) {
        if (*v != 0xffffffffu) continue;
        if (q + 8 > f.size()) {
          return BadFile(absl::StrCat("zip64: extra field too short for entry ",
                                      Quoted(name)));
        }
        *v = Le64(f.data() + q);
        q += 8;
      }
      return absl::OkStatus();
    }
    p += 4 + size_t{len};
  }
  return BadFile(absl::StrCat("zip64: entry ", Quoted(name),
                              " lacks its zip64 extra field"));
}

}  // namespace

absl::StatusOr<std::vector<ZipEntry>> ReadZip(absl::string_view file) {
  auto end_or = FindEnd(file);
  if (!end_or.ok()) return end_or.status();
  const EndRecord end = *end_or;
  if (!InRange(end.dir_offset, end.dir_size, file.size())) {
    return BadFile("zip: central directory out of range");
  }
  // Each directory record takes at least 46 bytes, which bounds the count.
  if (end.entries > end.dir_size / kCentralHeaderSize) {
    return BadFile("zip: entry count does not fit the central directory");
  }
  const char* base = file.data();
  std::vector<ZipEntry> entries;
  entries.reserve(end.entries);
  uint64_t p = end.dir_offset;
  const uint64_t dir_end = end.dir_offset + end.dir_size;
  for (uint64_t i = 0; i < end.entries; ++i) {
    if (!InRange(p, kCentralHeaderSize, dir_end)) {
      return BadFile("zip: central directory truncated");
    }
    const char* h = base + p;
    if (Le32(h) != kCentralHeaderSig) {
      return BadFile(
          absl::StrCat("zip: bad central directory signature at ", p));
    }
    uint16_t flags = Le16(h + 8);
    uint16_t method = Le16(h + 10);
    uint64_t compressed = Le32(h + 20);
    uint64_t uncompressed = Le32(h + 24);
    uint16_t name_len = Le16(h + 28);
    uint16_t extra_len = Le16(h + 30);
    uint16_t comment_len = Le16(h + 32);
    uint64_t local = Le32(h + 42);
    uint64_t rec_len = kCentralHeaderSize + name_len + extra_len + comment_len;
    if (!InRange(p, rec_len, dir_end)) {
      return BadFile("zip: central directory truncated");
    }
    std::string name(h + kCentralHeaderSize, name_len);
    absl::string_view extra(h + kCentralHeaderSize + name_len, extra_len);
    p += rec_len;

    if (flags & 0x1) {
      return BadFile(
          absl::StrCat("zip: entry ", Quoted(name), " is encrypted"));
    }
    if (method != 0) {
      return BadFile(absl::StrCat(
          "zip: entry ", Quoted(name), " is compressed (method ", method,
          "); only stored (uncompressed) entries are supported, as written by "
          "torch.save"));
    }
    absl::Status s =
        ApplyZip64Extra(extra, name, &uncompressed, &compressed, &local);
    if (!s.ok()) return s;
    if (compressed != uncompressed) {
      return BadFile(absl::StrCat("zip: stored entry ", Quoted(name),
                                  " has different compressed and "
                                  "uncompressed sizes"));
    }
    if (!InRange(local, kLocalHeaderSize, file.size()) ||
        Le32(base + local) != kLocalHeaderSig) {
      return BadFile(
          absl::StrCat("zip: bad local header for entry ", Quoted(name)));
    }
    const char* lh = base + local;
    uint64_t data_offset =
        local + kLocalHeaderSize + Le16(lh + 26) + uint64_t{Le16(lh + 28)};
    if (!InRange(data_offset, uncompressed, file.size())) {
      return BadFile(absl::StrCat("zip: data of entry ", Quoted(name),
                                  " extends past the end of the file"));
    }
    entries.push_back(ZipEntry{
        std::move(name), absl::string_view(base + data_offset,
                                           static_cast<size_t>(uncompressed))});
  }
  return entries;
}

}  // namespace statestream::engine::internal
