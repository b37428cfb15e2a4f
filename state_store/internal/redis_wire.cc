// SPDX-License-Identifier: Apache-2.0
#include "state_store/internal/redis_wire.h"

#include <errno.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "state_store/internal/store_util.h"

namespace statestream::store_internal {
namespace {

// Arguments up to this size are copied into the header buffer; larger ones
// are sent from the caller's memory.
constexpr size_t kInlineArgBytes = 4096;
constexpr size_t kReadChunkBytes = 64 << 10;
constexpr size_t kMaxLineBytes = 64 << 10;
constexpr int kMaxReplyDepth = 16;
// A bulk string or array larger than this is a protocol error (Redis's own
// proto-max-bulk-len default is 512 MB).
constexpr long long kMaxBulkBytes = 1LL << 30;
constexpr long long kMaxArrayElements = 1LL << 24;

absl::Status IoError(absl::string_view what, int err) {
  if (err == EAGAIN || err == EWOULDBLOCK) {
    return Unavailable(absl::StrCat(what, ": timed out"));
  }
  return Unavailable(absl::StrCat(what, ": ", std::strerror(err)));
}

absl::Status ProtocolError(absl::string_view what) {
  return Unavailable(absl::StrCat("Redis protocol error: ", what));
}

// Writes `cmds` (each preceded by ASKING when `asking`) as one RESP stream.
absl::Status SendPipeline(int fd, const std::vector<Command>& cmds,
                          bool asking) {
  // First the text that is copied (headers and small arguments), recording
  // each piece as [offset, size) into `text` or a pointer to a large arg.
  struct Piece {
    const char* data;  // nullptr: `text` from `offset`
    size_t offset, size;
  };
  std::string text;
  std::vector<Piece> pieces;
  auto add_text = [&](absl::string_view t) {
    if (!pieces.empty() && pieces.back().data == nullptr &&
        pieces.back().offset + pieces.back().size == text.size()) {
      pieces.back().size += t.size();
    } else {
      pieces.push_back({nullptr, text.size(), t.size()});
    }
    text.append(t.data(), t.size());
  };
  auto add_command = [&](const Command& cmd) {
    add_text(absl::StrCat("*", cmd.size(), "\r\n"));
    for (absl::string_view a : cmd) {
      add_text(absl::StrCat("$", a.size(), "\r\n"));
      if (a.size() <= kInlineArgBytes) {
        add_text(a);
      } else {
        pieces.push_back({a.data(), 0, a.size()});
      }
      add_text("\r\n");
    }
  };
  for (const Command& cmd : cmds) {
    if (asking) add_command({"ASKING"});
    add_command(cmd);
  }
  std::vector<iovec> iov;
  iov.reserve(pieces.size());
  for (const Piece& p : pieces) {
    const char* base = p.data != nullptr ? p.data : text.data() + p.offset;
    iov.push_back({const_cast<char*>(base), p.size});
  }
  size_t next = 0;
  while (next < iov.size()) {
    msghdr msg{};
    msg.msg_iov = &iov[next];
    msg.msg_iovlen = std::min<size_t>(iov.size() - next, IOV_MAX);
    const ssize_t sent = sendmsg(fd, &msg, MSG_NOSIGNAL);
    if (sent < 0) {
      if (errno == EINTR) continue;
      return IoError("write to Redis", errno);
    }
    size_t left = static_cast<size_t>(sent);
    while (left > 0 && left >= iov[next].iov_len) left -= iov[next++].iov_len;
    if (left > 0) {
      iov[next].iov_base = static_cast<char*>(iov[next].iov_base) + left;
      iov[next].iov_len -= left;
    }
  }
  return absl::OkStatus();
}

// Parses RESP2 replies from a socket into hiredis reply objects.
class ReplyReader {
 public:
  explicit ReplyReader(int fd) : fd_(fd), buf_(kReadChunkBytes) {}

  // The next reply. If it is a bulk string and `sink` gives memory for it
  // (as the reply of `command`), the value is received there.
  absl::StatusOr<Reply> Next(const BulkSink* sink, size_t command) {
    sink_ = sink;
    command_ = command;
    return Parse(0);
  }
  // True when no byte beyond the replies read so far arrived.
  bool Drained() const { return begin_ == end_; }

 private:
  static redisReply* NewReply(int type) {
    auto* r = static_cast<redisReply*>(std::calloc(1, sizeof(redisReply)));
    if (r != nullptr) r->type = type;
    return r;
  }
  static absl::Status OutOfMemory() {
    return ProtocolError("out of memory for a reply");
  }

  absl::StatusOr<Reply> Parse(int depth) {
    if (depth > kMaxReplyDepth) return ProtocolError("reply nested too deep");
    SS_ASSIGN_OR_RETURN(absl::string_view line, Line());
    if (line.empty()) return ProtocolError("empty reply line");
    const char kind = line[0];
    line.remove_prefix(1);
    if (kind == '+' || kind == '-') {
      Reply r(NewReply(kind == '+' ? REDIS_REPLY_STATUS : REDIS_REPLY_ERROR));
      if (r == nullptr || !SetString(r.get(), line)) return OutOfMemory();
      return r;
    }
    long long n = 0;
    if (!absl::SimpleAtoi(line, &n)) return ProtocolError("bad number");
    if (kind == ':') {
      Reply r(NewReply(REDIS_REPLY_INTEGER));
      if (r == nullptr) return OutOfMemory();
      r->integer = n;
      return r;
    }
    if ((kind == '$' || kind == '*') && n == -1) {
      Reply r(NewReply(REDIS_REPLY_NIL));
      if (r == nullptr) return OutOfMemory();
      return r;
    }
    if (kind == '$') {
      if (n < 0 || n > kMaxBulkBytes) return ProtocolError("bad bulk length");
      Reply r(NewReply(REDIS_REPLY_STRING));
      if (r == nullptr) return OutOfMemory();
      r->len = static_cast<size_t>(n);
      char* into = depth == 0 && sink_ != nullptr && *sink_
                       ? (*sink_)(command_, r->len)
                       : nullptr;
      if (into == nullptr) {
        r->str = static_cast<char*>(std::malloc(r->len + 1));
        if (r->str == nullptr) return OutOfMemory();
        into = r->str;
        r->str[r->len] = '\0';
      }
      SS_RETURN_IF_ERROR(ReadExactly(into, r->len));
      char crlf[2];
      SS_RETURN_IF_ERROR(ReadExactly(crlf, 2));
      if (crlf[0] != '\r' || crlf[1] != '\n') {
        return ProtocolError("bulk string not terminated");
      }
      return r;
    }
    if (kind == '*') {
      if (n < 0 || n > kMaxArrayElements) {
        return ProtocolError("bad array length");
      }
      Reply r(NewReply(REDIS_REPLY_ARRAY));
      if (r == nullptr) return OutOfMemory();
      if (n > 0) {
        r->element = static_cast<redisReply**>(
            std::calloc(static_cast<size_t>(n), sizeof(redisReply*)));
        if (r->element == nullptr) return OutOfMemory();
      }
      for (long long i = 0; i < n; ++i) {
        SS_ASSIGN_OR_RETURN(Reply e, Parse(depth + 1));
        r->element[i] = e.release();
        r->elements = static_cast<size_t>(i + 1);
      }
      return r;
    }
    return ProtocolError(
        absl::StrCat("unknown reply type '", absl::string_view(&kind, 1), "'"));
  }

  static bool SetString(redisReply* r, absl::string_view s) {
    r->str = static_cast<char*>(std::malloc(s.size() + 1));
    if (r->str == nullptr) return false;
    std::memcpy(r->str, s.data(), s.size());
    r->str[s.size()] = '\0';
    r->len = s.size();
    return true;
  }

  // The next line without its CRLF; valid until the next read.
  absl::StatusOr<absl::string_view> Line() {
    size_t scanned = begin_;
    while (true) {
      const char* start = buf_.data() + scanned;
      const void* lf = std::memchr(start, '\n', end_ - scanned);
      if (lf != nullptr) {
        const size_t at = static_cast<const char*>(lf) - buf_.data();
        if (at == begin_ || buf_[at - 1] != '\r') {
          return ProtocolError("line not terminated by CRLF");
        }
        absl::string_view line(buf_.data() + begin_, at - 1 - begin_);
        begin_ = at + 1;
        return line;
      }
      if (end_ - begin_ >= kMaxLineBytes) return ProtocolError("line too long");
      scanned = end_ - begin_;
      Compact();
      SS_RETURN_IF_ERROR(Fill());
    }
  }

  // Copies `n` bytes to `out`: first what is buffered, then straight from
  // the socket (no intermediate copy for large values).
  absl::Status ReadExactly(char* out, size_t n) {
    const size_t have = std::min(n, end_ - begin_);
    std::memcpy(out, buf_.data() + begin_, have);
    begin_ += have;
    for (size_t done = have; done < n;) {
      const ssize_t got = recv(fd_, out + done, n - done, 0);
      if (got == 0) return Unavailable("Redis closed the connection");
      if (got < 0) {
        if (errno == EINTR) continue;
        return IoError("read from Redis", errno);
      }
      done += static_cast<size_t>(got);
    }
    return absl::OkStatus();
  }

  void Compact() {
    if (begin_ > 0) {
      std::memmove(buf_.data(), buf_.data() + begin_, end_ - begin_);
      end_ -= begin_;
      begin_ = 0;
    }
  }

  absl::Status Fill() {
    while (true) {
      const ssize_t got = recv(fd_, buf_.data() + end_, buf_.size() - end_, 0);
      if (got > 0) {
        end_ += static_cast<size_t>(got);
        return absl::OkStatus();
      }
      if (got == 0) return Unavailable("Redis closed the connection");
      if (errno != EINTR) return IoError("read from Redis", errno);
    }
  }

  const int fd_;
  const BulkSink* sink_ = nullptr;
  size_t command_ = 0;
  std::vector<char> buf_;
  size_t begin_ = 0, end_ = 0;
};

}  // namespace

absl::Status ExchangePipeline(int fd, const std::vector<Command>& cmds,
                              bool asking, const BulkSink& sink,
                              std::vector<Reply>* replies) {
  replies->reserve(cmds.size());
  SS_RETURN_IF_ERROR(SendPipeline(fd, cmds, asking));
  ReplyReader reader(fd);
  const size_t expect = cmds.size() * (asking ? 2 : 1);
  for (size_t i = 0; i < expect; ++i) {
    const bool asking_reply = asking && i % 2 == 0;
    SS_ASSIGN_OR_RETURN(Reply r, reader.Next(asking_reply ? nullptr : &sink,
                                             asking ? i / 2 : i));
    if (!asking_reply) replies->push_back(std::move(r));
  }
  if (!reader.Drained()) return ProtocolError("unexpected reply");
  return absl::OkStatus();
}

}  // namespace statestream::store_internal
