// SPDX-License-Identifier: Apache-2.0
// Pipelined RESP2 I/O on a connected hiredis context's socket.
//
// hiredis 0.14 copies every argument into a command string and again into
// its output buffer, reads replies 16 KiB at a time into a growing buffer
// and copies each bulk string out of it once more: for a 2.4 MB state that
// was most of the commit and load time (docs/state-store.md). hiredis still
// connects, sets the socket timeouts and authenticates; the pipelines of
// RedisClient::Attempt() are written with sendmsg straight from the
// callers' buffers and their replies parsed here, large bulk strings
// received directly into the reply's own allocation. Replies are ordinary
// hiredis `redisReply` objects (malloc'd as freeReplyObject expects), so the
// rest of the code is unaware.
#ifndef STATESTREAM_STATE_STORE_INTERNAL_REDIS_WIRE_H_
#define STATESTREAM_STATE_STORE_INTERNAL_REDIS_WIRE_H_

#include <vector>

#include "absl/status/status.h"
#include "state_store/internal/redis_client.h"

namespace statestream::store_internal {

// Writes `cmds` to the connected socket `fd` (each preceded by ASKING when
// `asking`) and reads one reply per command into *replies (the ASKING
// replies are dropped); `sink` may give memory for bulk replies. Any
// failure, including bytes beyond the replies, is UNAVAILABLE: the
// connection's stream position is unknown then, so it must be closed.
absl::Status ExchangePipeline(int fd, const std::vector<Command>& cmds,
                              bool asking, const BulkSink& sink,
                              std::vector<Reply>* replies);

}  // namespace statestream::store_internal

#endif  // STATESTREAM_STATE_STORE_INTERNAL_REDIS_WIRE_H_
