# SPDX-License-Identifier: Apache-2.0
"""The streaming halves of the sync client: AppendWriter (exactly-once,
resuming appends) and GenerateStream (resuming generation). Opened by
statestream.Session.writer() / .generate(); see statestream.client for the
resume protocol."""
from __future__ import annotations

import codecs
import collections
import collections.abc
import math
import numbers
import queue
import threading
import time
import weakref
from typing import TYPE_CHECKING, Dict, Optional, Sequence, Union

import grpc

from statestream.errors import (StatestreamError, _local_error,
                               client_closed_error)
from statestream.types import (AppendAck, GenerateChunk, GenerateDone,
                               TokenLogprob)
from statestream.v1 import statestream_pb2 as pb

if TYPE_CHECKING:
    from statestream.client import Client, _Stubs

_END = object()
_MAX_TEXT = 1 << 20
# The most requests a writer leaves unacknowledged: a server (worker or
# gateway) stops reading a client that leaves 64 acks unread, so a writer
# sending more before it reads acks could wait forever on flow control.
MAX_WINDOW = 64


class _AppendCall:
    """One Append call: requests go through a queue, acks come back in
    order. gRPC consumes the queue on a thread of its own, which waits on
    it until _END: every way out of the call (close_send, cancel, which
    Client.close() calls, and the finalizer of a call dropped without
    either) puts _END."""

    def __init__(self, stubs: _Stubs, metadata, timeout):
        self.stubs = stubs
        self._queue: "queue.Queue" = queue.Queue()
        self.responses = stubs.streams.Append(iter(self._queue.get, _END),
                                              metadata=metadata,
                                              timeout=timeout)
        # A writer dropped without close() (or an exception through its
        # `with`): end the request iterator and the call, else gRPC's
        # request thread waits on the queue for the life of the process.
        # The finalizer holds the queue and the call, not `self`.
        weakref.finalize(self, _end_call, self._queue, self.responses)

    def send(self, request) -> None:
        self._queue.put(request)

    def close_send(self) -> None:
        self._queue.put(_END)

    def cancel(self) -> None:
        # Cancel first: _END first would half-close the call, which the
        # server may see before the cancel and take for a writer that
        # closed (committing its input) instead of one that went away.
        self.responses.cancel()
        self._queue.put(_END)


def _end_call(requests: "queue.Queue", responses) -> None:
    try:
        responses.cancel()  # no-op on a call that has ended
    except Exception:  # noqa: BLE001 (interpreter shutdown)
        pass
    requests.put(_END)  # a second _END after close_send() is never read


class _Retained:
    """A request kept until it is known committed."""
    __slots__ = ("request", "acked_version")

    def __init__(self, request):
        self.request = request
        self.acked_version = 0  # `version` of its ack on the current call


def _utf8(text, what: str = "text") -> bytes:
    """`text` (str, or bytes-like: bytes, bytearray, memoryview) as bytes;
    TypeError for anything else (bytes(3) would be three NUL bytes). A str
    that has no UTF-8 form (a lone surrogate, e.g. from
    surrogateescape) is INVALID_ARGUMENT/INVALID_UTF8, as the server
    answers bytes that are not UTF-8; bytes are the server's to check."""
    if isinstance(text, str):
        try:
            return text.encode()
        except UnicodeEncodeError as e:
            raise _invalid_utf8(what, e.start) from None
    if isinstance(text, (bytes, bytearray, memoryview)):
        return bytes(text)
    raise TypeError(f"{what} must be str or bytes, not "
                    f"{type(text).__name__}")


def _str_field(value, what: str, *, optional: bool = False) -> str:
    """`value` if it is a str a request can carry; every str field of a
    request goes through here (ids, model_id, labels). TypeError for
    another type, INVALID_ARGUMENT/INVALID_UTF8 for a str with no UTF-8
    form (a lone surrogate, which protobuf fails with UnicodeEncodeError),
    before any call; the server checks the rest. `optional`: None is ""
    (none: the server's default, or a generated id)."""
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    _utf8(value, what)
    return value


def _labels(labels, what: str = "labels") -> Dict[str, str]:
    """`labels` (None: none) as a dict, each key and value checked by
    _str_field; TypeError for anything but a mapping of str to str (a
    list of pairs included)."""
    if labels is None:
        return {}
    if not isinstance(labels, collections.abc.Mapping):
        raise TypeError(f"{what} must be a mapping of str to str, not "
                        f"{type(labels).__name__}")
    return {_str_field(k, f"{what} key"): _str_field(v, f"{what}[{k!r}]")
            for k, v in labels.items()}


def _writer_sizes(window, max_chunk_bytes):
    """A writer's `window` and `max_chunk_bytes`, clamped to at most
    MAX_WINDOW and 1 MiB; ValueError below 1, TypeError for anything but
    an int, before any call (0 used to mean a request per byte)."""
    for name, value in (("window", window),
                        ("max_chunk_bytes", max_chunk_bytes)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name} must be an int, not "
                            f"{type(value).__name__}")
        if value < 1:
            raise ValueError(f"{name} must be at least 1 (got {value})")
    return min(int(window), MAX_WINDOW), min(int(max_chunk_bytes), _MAX_TEXT)


def _token_requests(tokens):
    """`tokens` as AppendRequests of at most 262,144 ids each, all built
    before the first is sent: an id out of range (ValueError) or not an
    int (TypeError) anywhere sends none of them."""
    requests = []
    for i in range(0, len(tokens), 262144):
        req = pb.AppendRequest()
        req.tokens.ids.extend(tokens[i:i + 262144])
        requests.append(req)
    return requests


def _durability(value) -> int:
    """A Durability given as its number or its name ("DURABILITY_FSYNC",
    as results report it), as its number; None is DURABILITY_UNSPECIFIED
    (the server's default). ValueError for a name or number the API does
    not define, TypeError for another type, before any call."""
    if value is None:
        return pb.DURABILITY_UNSPECIFIED
    if isinstance(value, str):
        if value in pb.Durability.keys():
            return pb.Durability.Value(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        if value in pb.Durability.values():
            return int(value)
    else:
        raise TypeError("durability must be a Durability (an int) or its "
                        f"name, not {type(value).__name__}")
    raise ValueError(f"unknown durability {value!r}: one of "
                     f"{', '.join(pb.Durability.keys())} (or its number)")


# Past this, gRPC cannot represent a deadline (nanoseconds since the epoch,
# 64 bits: ~7e9 s from now) and fails the call DEADLINE_EXCEEDED at once;
# a bound this far off (~31 years) is none.
_UNBOUNDED_S = 1e9


def _timeout(timeout, what: str = "timeout") -> Optional[float]:
    """`timeout` in seconds as a bound: None (none) for None, inf or more
    than _UNBOUNDED_S; ValueError for NaN or a negative one, TypeError for
    anything but a number, before any call."""
    if timeout is None:
        return None
    if not isinstance(timeout, numbers.Real) or isinstance(timeout, bool):
        raise TypeError(f"{what} must be a number of seconds, not "
                        f"{type(timeout).__name__}")
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"{what} must be at least 0 seconds (inf or None: "
                         f"no bound), not {timeout}")
    return None if timeout > _UNBOUNDED_S else float(timeout)


def _deadline(timeout: Optional[float]) -> Optional[float]:
    """The monotonic deadline `timeout` seconds from now (None: none; see
    _timeout)."""
    timeout = _timeout(timeout)
    return None if timeout is None else time.monotonic() + timeout


def _left(deadline: Optional[float]) -> Optional[float]:
    """Seconds left before `deadline` (None: no deadline), at least 0."""
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _writer_closed() -> StatestreamError:
    """What a closed writer's calls raise: FAILED_PRECONDITION/
    INVALID_ARGUMENT "writer closed", metadata field=writer (origin=sdk;
    not retried, not kept as the writer's error). C++: the same."""
    return _local_error(grpc.StatusCode.FAILED_PRECONDITION,
                        "INVALID_ARGUMENT", "writer closed",
                        {"field": "writer"})


def _invalid_utf8(what: str, index: int) -> StatestreamError:
    """The INVALID_UTF8 error for text refused before any call."""
    return _local_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_UTF8", f"{what} is not valid UTF-8 (at index {index})")


def _leading_continuation(data: bytes) -> int:
    """The continuation bytes (at most 3) `data` starts with: the rest of a
    character earlier text left open (common/utf8.h)."""
    n = 0
    while n < len(data) and n < 3 and data[n] & 0xC0 == 0x80:
        n += 1
    return n


def _utf8_carry(carry: bytes, skippable: int, data: bytes, at: int,
                flush: bool) -> bytes:
    """The server's UTF-8 check of a writer's text, made before any of it
    is sent (text the server refused after the first requests of a write
    were applied left the session holding part of it): `carry`, the
    character the writer's text so far left open, plus `data` (starting
    at input offset `at`) must be UTF-8 but for a character left open at
    the end, which is returned (the new carry); with `flush`, none may be
    left open. Up to `skippable` continuation bytes `data` starts with may
    be the rest of a character the session holds (a writer's first text):
    the server checks those. INVALID_ARGUMENT/INVALID_UTF8 with metadata
    input_offset (of the first bad byte) otherwise."""
    skip = min(_leading_continuation(data), skippable)
    joined = carry + data[skip:]
    decoder = codecs.getincrementaldecoder("utf-8")()
    bad = None
    try:
        decoder.decode(joined, False)
    except UnicodeDecodeError as e:
        bad = e.start
    tail = decoder.getstate()[0] if bad is None else b""
    # CPython holds back ED A0..BF (a surrogate's start) as an open
    # character; no continuation makes it valid (common/utf8.cc refuses).
    if len(tail) >= 2 and tail[0] == 0xED and tail[1] >= 0xA0:
        bad = len(joined) - len(tail)
    if bad is not None:
        bad_at = (at - len(carry) + bad if bad < len(carry)
                  else at + skip + bad - len(carry))
        raise _local_error(
            grpc.StatusCode.INVALID_ARGUMENT, "INVALID_UTF8",
            "text does not continue the incomplete UTF-8 character the "
            "writer's text ends with" if bad < len(carry) else
            "text is not valid UTF-8; nothing of it was sent",
            {"input_offset": str(bad_at), "field": "text_utf8"})
    if flush and tail:
        raise _local_error(
            grpc.StatusCode.INVALID_ARGUMENT, "INVALID_UTF8",
            "text ends inside a UTF-8 character at a flush or tokens; "
            "write the rest of it first (nothing was sent)",
            {"input_offset": str(at + len(data) - len(tail)),
             "field": "text_utf8"})
    return tail


def _units(r) -> int:
    return len(r.tokens.ids) if r.HasField("tokens") else len(r.text_utf8)


def _end_offset(r) -> int:
    return r.expected_input_offset + _units(r)


def _committed(e: _Retained, ack) -> bool:
    """Whether `e`, acknowledged, is known committed after `ack` (the
    latest). A request with a payload is once the commit covers its end. A
    bare flush ends where it starts, and a commit at that offset may predate
    it: it is only once the offset moved past it or a newer version (a
    commit after its ack) covers it."""
    end = _end_offset(e.request)
    if _units(e.request) > 0:
        return end <= ack.committed_input_offset
    return end < ack.committed_input_offset or (
        end == ack.committed_input_offset and ack.version > e.acked_version)


class _AckTracker:
    """What the sync and asyncio writers share: the retained queue, the
    commit rule and what counts as progress."""

    def _text_requests(self, text, data: bytes, final: bool):
        """The requests of a write of `data` (from `text`), after the
        server's UTF-8 check made here (_utf8_carry: raises before any is
        sent). Continuation bytes it starts with that may finish the
        session's open character keep the carry unknown (three at most in
        all), and go whole in the first request: a server that does not
        know that character skips them only at a request's start. `final`:
        a flush follows, so no character may be left open."""
        skippable = 0 if self._carry_known else 3 - self._lead_skipped
        if self._carry or not isinstance(text, str):  # a str is UTF-8
            self._carry = _utf8_carry(self._carry, skippable, data,
                                      self._next_offset, final)
        lead = min(_leading_continuation(data), skippable)
        if lead == len(data):
            self._lead_skipped += lead
        else:
            self._carry_known = True
        first = max(lead, self._chunk)
        out = [pb.AppendRequest(text_utf8=data[:first])]
        for i in range(first, len(data), self._chunk):
            out.append(pb.AppendRequest(text_utf8=data[i:i + self._chunk]))
        return out

    def _encode(self, text) -> bytes:
        """_utf8 for a write: a str without a UTF-8 form (a lone
        surrogate) is refused as text that is not UTF-8 is (_utf8_carry),
        with metadata input_offset (of its first bad character, in bytes)
        and field."""
        if isinstance(text, str):
            try:
                return text.encode()
            except UnicodeEncodeError as e:
                if self._carry:
                    # A str never continues the character the writer's text
                    # left open: that character is the first bad byte.
                    at = self._next_offset - len(self._carry)
                    what = ("text does not continue the incomplete UTF-8 "
                            "character the writer's text ends with")
                else:
                    at = self._next_offset + len(text[:e.start].encode())
                    what = (f"text is not valid UTF-8 at input offset {at} "
                            f"(a lone surrogate at index {e.start})")
                raise _local_error(
                    grpc.StatusCode.INVALID_ARGUMENT, "INVALID_UTF8",
                    f"{what}; nothing of it was sent",
                    {"input_offset": str(at),
                     "field": "text_utf8"}) from None
        return _utf8(text)

    def _check_flushable(self, tokens: bool = False) -> None:
        """INVALID_UTF8 (nothing sent, the writer still usable) when the
        text written ends inside a character: a flush, or tokens (which
        flush the text before them), would be refused. After tokens the
        text starts clean."""
        _utf8_carry(self._carry, 0, b"", self._next_offset, True)
        if tokens:
            self._carry_known = True

    def _init_tracker(self, offset: int) -> None:
        # The character the text written so far leaves open (_utf8_carry);
        # until it is known, continuation bytes may finish the session's.
        self._carry = b""
        self._carry_known = False
        self._lead_skipped = 0
        # Requests not yet known committed, in offset order; on the current
        # call the first `_acked` of them were acknowledged.
        self._retained: "collections.deque" = collections.deque()
        self._acked = 0
        self._attempts = 0  # failed attempts since the last progress
        # Progress marks: the highest end offset and version acknowledged.
        self._acked_high = offset
        self._version_high = 0

    def _on_ack(self, ack) -> None:
        acked = self._retained[self._acked]
        # Acks come one per request, in order. One that cannot be this
        # request's (the session short of its end; a checkpoint's commit
        # short of it) is the server's error: matched anyway, a stray ack
        # would drop input nothing committed from what a reconnect resends.
        end = _end_offset(acked.request)
        if ack.input_offset < end or (acked.request.checkpoint and
                                      ack.committed_input_offset < end):
            self._error = _local_error(
                grpc.StatusCode.INTERNAL, "INTERNAL",
                f"the server acknowledged the request ending at input "
                f"offset {end} with input_offset {ack.input_offset} and "
                f"committed_input_offset {ack.committed_input_offset}: not "
                f"its acknowledgement (an extra or missing one)")
            raise self._error
        self._acked += 1
        acked.acked_version = ack.version
        # Progress, which resets the count of failed attempts, is input
        # never acknowledged before or a new commit: a resend acknowledged
        # as a duplicate is neither, so a request that fails at every
        # attempt ends the retries after max_attempts.
        if end > self._acked_high or ack.version > self._version_high:
            self._attempts = 0
        self._acked_high = max(self._acked_high, end)
        self._version_high = max(self._version_high, ack.version)
        checkpoint = acked.request.checkpoint
        self.last_ack = AppendAck.from_proto(ack)
        # Drop what is committed (acknowledged ones only: the others still
        # have their acks coming on this call) at the durability asked for:
        # a commit by policy that could not reach it (a replica down) holds
        # the input at a lower level, so it is kept for a resend. A
        # checkpoint's ack commits everything before it.
        durable = (self._durability <= pb.DURABILITY_MEMORY or
                   ack.durability >= self._durability)
        while self._acked > 0 and durable and (
                checkpoint or _committed(self._retained[0], ack)):
            self._retained.popleft()
            self._acked -= 1
            self._dropped_front()

    def _dropped_front(self) -> None:
        pass


class AppendWriter(_AckTracker):
    """Writes into a session exactly once, pipelined, resuming after
    failures. Not thread-safe.

    Invariant: `_retained` holds, in offset order, every request sent whose
    effect is not known to be committed; the first `_acked` of them were
    acknowledged on the current call. After a failure all of them are resent
    on a new call at their original offsets (the server acknowledges what
    it still has as duplicates and applies the rest). A request is
    committed once an ack's committed_input_offset covers its end, except a
    bare flush (see `_committed`); a checkpoint's ack commits everything up
    to it. A failure that is not retried (or runs out of attempts) sticks:
    every later call raises it. After Client.close() every call raises
    CANCELLED "client closed" (and keeps it), even one that would have
    only queued its request."""

    def __init__(self, client: Client, session_id: str, offset: int, *,
                 window: int, max_chunk_bytes: int, durability: int,
                 timeout: Optional[float]):
        self._client = client
        self._session_id = session_id
        self._next_offset = offset
        self._window, self._chunk = _writer_sizes(window, max_chunk_bytes)
        self._durability = _durability(durability)
        self._deadline = _deadline(timeout)
        self._init_tracker(offset)
        self._call: Optional[_AppendCall] = None
        self._error: Optional[StatestreamError] = None
        self._closed = False
        self.last_ack: Optional[AppendAck] = None
        self.reconnects = 0

    @property
    def offset(self) -> int:
        """input_offset after everything written."""
        return self._next_offset

    def __enter__(self) -> "AppendWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            if not self._closed:
                self.close()
        elif self._call is not None:
            self._call.cancel()
            self._call = None

    def write(self, text: Union[str, bytes]) -> None:
        """Appends UTF-8 text (str, or bytes that may split a character
        between two writes); TypeError for anything else."""
        self._write_text(text, False)

    def _write_text(self, text, final: bool) -> None:
        """write(); with `final` (a flush follows: Session.append) text
        ending inside a character is refused before anything is sent."""
        data = self._encode(text)
        self._check()
        if not data:
            return
        for req in self._text_requests(text, data, final):
            self._send(req)

    def write_tokens(self, tokens: Sequence[int]) -> None:
        self._check()
        requests = _token_requests(tokens)
        if requests:
            self._check_flushable(tokens=True)
        for req in requests:
            self._send(req)

    def flush(self) -> None:
        self._check()
        self._check_flushable()
        self._send(pb.AppendRequest(flush=True))

    def sync(self) -> AppendAck:
        """Waits for the acks of everything written (applied, maybe not
        committed); returns the latest. Before anything was acknowledged,
        asks for the session's current ack (a request without payload),
        so there is always one."""
        self._check()
        self._read_acks(0)
        if self.last_ack is None:
            self._send(pb.AppendRequest())
            self._read_acks(0)
        return self.last_ack

    def checkpoint(self) -> AppendAck:
        """Commits everything written; returns its ack."""
        self._send(pb.AppendRequest(checkpoint=True))
        self._read_acks(0)
        return self.last_ack

    def close(self) -> AppendAck:
        """Commits everything written and ends the call. Later calls (sync()
        included) raise FAILED_PRECONDITION "writer closed"."""
        ack = self.checkpoint()
        self._closed = True
        if self._call is not None:
            self._call.close_send()
            try:
                for _ in self._call.responses:
                    pass
            except grpc.RpcError:
                pass  # everything is committed and acknowledged already
            self._call = None
        return ack

    # -- internals -----------------------------------------------------------

    def _check(self) -> None:
        """Raises the writer's error; FAILED_PRECONDITION "writer closed"
        (_writer_closed) after close(); else CANCELLED "client closed"
        (kept) after Client.close()."""
        if self._error is not None:
            raise self._error
        if self._closed:
            raise _writer_closed()
        if self._client._closed:
            self._error = client_closed_error()
            raise self._error

    def _send(self, req) -> None:
        self._check()
        req.session_id = self._session_id
        req.expected_input_offset = self._next_offset
        req.durability = self._durability
        self._next_offset += _units(req)
        self._retained.append(_Retained(req))
        if self._call is None:
            self._reconnect(None)
        else:
            self._call.send(req)
        self._read_acks(self._window)

    def _read_acks(self, keep_unacked: int) -> None:
        while len(self._retained) - self._acked > keep_unacked:
            if self._error is not None:
                raise self._error
            if self._call is None:
                self._reconnect(None)
            try:
                ack = next(self._call.responses)
            except grpc.RpcError as e:
                self._reconnect(StatestreamError.from_rpc_error(e))
                continue
            except StopIteration:
                self._reconnect(StatestreamError(
                    grpc.StatusCode.UNAVAILABLE, "append stream ended early"))
                continue
            try:
                self._on_ack(ack)
            except StatestreamError:
                self._call.cancel()  # the writer failed: nothing more of it
                self._call = None
                raise

    def _reconnect(self, cause: Optional[StatestreamError]) -> None:
        """Opens a new call (after `cause` ended the current one, if any)
        and resends what is retained. An error that ends the writer (see
        Client._retry_or_raise; after Client.close(), CANCELLED "client
        closed") sticks."""
        try:
            if self._call is not None:
                self._call.cancel()
                self._client._rotate(self._call.stubs, cause,
                                     self._deadline)
                self._call = None
                self._attempts += 1
                self._client._retry_or_raise(cause, self._attempts,
                                             self._deadline)
                self.reconnects += 1
            stubs = self._client._current_stubs()
            self._call = self._client._invoke(
                _AppendCall, stubs, self._client._metadata,
                self._client._attempt_timeout(self._deadline, unary=False))
            self._client._opened(self._call)  # Client.close() ends it
        except StatestreamError as e:
            self._error = e
            raise
        self._acked = 0
        # gRPC's thread consumes the queue as the server reads, so this
        # cannot block against unread acks.
        for e in self._retained:
            self._call.send(e.request)


def _diverged(delivered_ids, chunk) -> Optional[StatestreamError]:
    """FAILED_PRECONDITION if `chunk` of a resumed call differs from the
    tokens already delivered (the session changed in between: another
    derived seed and state), rather than joining two outputs. Not retried:
    the same call cannot continue what was delivered (a new call is a new
    generation)."""
    if chunk.index > len(delivered_ids):
        return _local_error(grpc.StatusCode.FAILED_PRECONDITION,
                            "RESUME_DIVERGED",
                            "the resumed generation skipped output")
    for i, t in enumerate(chunk.tokens):
        if chunk.index + i >= len(delivered_ids):
            break
        if delivered_ids[chunk.index + i] != t:
            return _local_error(
                grpc.StatusCode.FAILED_PRECONDITION, "RESUME_DIVERGED",
                f"the resumed generation diverged from the "
                f"{len(delivered_ids)} tokens already delivered (the session "
                "changed in between?); its output is not joined to them")
    return None


def _ended_short(call_tokens: int, call_bytes: int, delivered_tokens: int,
                 delivered_bytes: int, done=None) -> Optional[StatestreamError]:
    """FAILED_PRECONDITION if a resumed call reached `done` (the proto)
    before the output already delivered: it stopped sooner (the session
    changed, or a time limit came first on a slower worker), so it is
    another generation. When the server committed that shorter output, the
    error says where the session is (metadata committed, position,
    input_offset, version): not where the delivered output left it."""
    if call_tokens < delivered_tokens or call_bytes < delivered_bytes:
        message = (f"the resumed generation ended after {call_tokens} "
                   f"tokens, before the {delivered_tokens} already delivered "
                   "(the session changed in between, or a time limit came "
                   "first?)")
        metadata = {}
        if done is not None and done.committed:
            message += (f"; the server committed its {call_tokens} tokens: "
                        f"the session is at input_offset "
                        f"{done.input_offset} (version {done.version})")
            metadata = {"committed": "true",
                        "position": str(done.position),
                        "input_offset": str(done.input_offset),
                        "version": str(done.version)}
        return _local_error(grpc.StatusCode.FAILED_PRECONDITION,
                            "RESUME_DIVERGED", message, metadata)
    return None


def _pin_to_start(request, chunk, delivered: int) -> bool:
    """Pins the resumes of `request` (when it pins no input_offset) to the
    one its generation started from, given by its first chunk while nothing
    is `delivered`, so a resume runs on the same input or fails
    POSITION_MISMATCH: a resume on another input could repeat the delivered
    tokens (greedy sampling) and go on from another state. True if pinned
    now. Not a committing request: the server knows its retry by the
    request's digest, which a pin added now would change (its finished
    generation would be refused DUPLICATE_REQUEST instead of replayed); one
    the SDK gave its request id to is pinned from the start (generate()),
    and the divergence check guards the rest."""
    if (chunk.HasField("start_input_offset") and delivered == 0 and
            not request.commit and
            not request.HasField("expected_input_offset")):
        request.expected_input_offset = chunk.start_input_offset
        return True
    return False


def _moved(err: StatestreamError, pinned_here: bool, request,
           delivered: int) -> StatestreamError:
    """The server's FAILED_PRECONDITION/POSITION_MISMATCH (its metadata
    kept) saying why a resume was refused: the session's input moved since
    the generation started (pinned by _pin_to_start); `err` otherwise."""
    if not pinned_here or err.reason != "POSITION_MISMATCH":
        return err
    return StatestreamError(
        grpc.StatusCode.FAILED_PRECONDITION,
        f"the session's input moved since the generation started at "
        f"input_offset {request.expected_input_offset}; the resumed call's "
        f"output is not joined to the {delivered} tokens already delivered "
        f"({err.message})", err.reason, err.metadata)


def _token_logprobs(chunk) -> list:
    """One entry per token of `chunk`: its TokenLogprob, or None where the
    server sent none (tokens replayed from a checkpoint or a finished
    generation come without; a chunk whose logprobs do not match its
    tokens is taken as having none, rather than shifted)."""
    if len(chunk.logprobs) != len(chunk.tokens):
        return [None] * len(chunk.tokens)
    return [TokenLogprob.from_proto(lp) if lp.token == t else None
            for t, lp in zip(chunk.tokens, chunk.logprobs)]


class _GenerateProgress:
    """What one Generate delivered across its calls (GenerateStream and the
    async one share it): a resumed call replays the output from the same
    state, and only what was not delivered yet goes on."""

    def __init__(self, request):
        self.request = request
        self.delivered_tokens = 0
        self.delivered_ids: list = []
        self.delivered_bytes = 0
        self.seen_bytes = 0  # this call's text bytes
        self.call_tokens = 0  # this call's tokens
        self.pinned_here = False  # see _pin_to_start
        # The latest start_input_offset any call sent, for the first chunk
        # delivered (kept across calls: a replaying call does not send it).
        self.start_input_offset = None

    def new_call(self) -> None:
        self.seen_bytes = 0
        self.call_tokens = 0

    def ended_short(self, done=None) -> Optional[StatestreamError]:
        """At `done` (the proto): the error if this call ended before what
        was already delivered (see _ended_short), else None."""
        return _ended_short(self.call_tokens, self.seen_bytes,
                            self.delivered_tokens, self.delivered_bytes, done)

    def take(self, c):
        """Chunk `c`'s part not delivered yet, as a GenerateChunk; None if
        all of it was. Raises the FAILED_PRECONDITION of _diverged (the caller ends the
        call first: `take` is called inside its try/except)."""
        diverged = _diverged(self.delivered_ids, c)
        if diverged is not None:
            raise diverged
        self.call_tokens = max(self.call_tokens, c.index + len(c.tokens))
        if c.HasField("start_input_offset"):
            self.start_input_offset = c.start_input_offset
        first = self.delivered_tokens == 0 and self.delivered_bytes == 0
        if _pin_to_start(self.request, c,
                         self.delivered_tokens + self.delivered_bytes):
            self.pinned_here = True
        n = len(c.tokens)
        skip = min(n, max(0, self.delivered_tokens - c.index))
        self.delivered_ids.extend(c.tokens[skip:])
        begin = self.seen_bytes
        self.seen_bytes += len(c.text_utf8)
        skip_bytes = min(len(c.text_utf8),
                         max(0, self.delivered_bytes - begin))
        if skip == n and skip_bytes == len(c.text_utf8):
            return None
        raw = bytes(c.text_utf8[skip_bytes:])
        self.delivered_tokens = max(self.delivered_tokens, c.index + n)
        self.delivered_bytes = max(self.delivered_bytes, self.seen_bytes)
        lps = []
        if self.request.logprobs or c.logprobs:
            lps = _token_logprobs(c)[skip:]
        return GenerateChunk(c.index + skip, list(c.tokens[skip:]),
                             raw.decode("utf-8", "replace"), raw,
                             [None if lp is None else lp.logprob
                              for lp in lps], lps,
                             self.start_input_offset if first else None)

    def moved(self, err: StatestreamError) -> StatestreamError:
        """_moved for this generation: `err`, or the error that ends it."""
        return _moved(err, self.pinned_here, self.request,
                      len(self.delivered_ids))


class _NamesItsRequest:
    """What a generate stream (sync or async) is sent as: its `_request`."""
    @property
    def request_id(self) -> str:
        """The request id the generation is sent with (the SDK's own when
        none was given). To retry a generation that gave up (a retryable
        error once its attempts ran out) as the same one, not a second,
        generate again with this request_id and expected_input_offset: a
        committing one then finds its record instead of committing twice."""
        return self._request.request_id

    @property
    def expected_input_offset(self) -> Optional[int]:
        """The input offset the generation is pinned to (the SDK's pin of
        a committing one when none was given), or None."""
        if self._request.HasField("expected_input_offset"):
            return self._request.expected_input_offset
        return None


class GenerateStream(_NamesItsRequest):
    """Iterates over GenerateChunk, resuming after failures with the same
    request and skipping output already delivered (checked equal to what
    was delivered, and on the input the generation started from: a resumed
    call that diverges, or finds the session moved on, raises
    FAILED_PRECONDITION, not retried). `.done`
    (GenerateDone) is set once the iteration ends; `.reconnects` counts
    resumptions. cancel() (from any thread) ends the iteration, a read
    waiting out a resume's backoff at once; Client.close() ends it with
    CANCELLED "client closed". As a context manager, leaving the block
    cancels a generation not yet done: `break` out of a committing one
    inside `with` and the server stops there, rather than committing
    output nobody reads (the tokens committed are then those the server
    produced before it saw the cancel; read `Session.get()`)."""

    def __init__(self, client: Client, request, timeout: Optional[float]):
        self._client = client
        self._request = request
        self._deadline = _deadline(timeout)
        self._progress = _GenerateProgress(request)
        self._responses = None
        self._stubs = None
        self.done: Optional[GenerateDone] = None
        self.reconnects = 0
        self._attempts = 0  # failed attempts since the last chunk delivered
        self._finished = False
        # cancel() may come from another thread: _lock orders it against
        # opening a call, and _cancelled wakes a backoff sleep.
        self._lock = threading.Lock()
        self._cancelled = threading.Event()

    def __iter__(self) -> "GenerateStream":
        return self

    def __enter__(self) -> "GenerateStream":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    def close(self) -> None:
        """Ends the generation if it is not done (as cancel()); nothing
        once the iteration has ended."""
        if not self._finished:
            self.cancel()

    def cancel(self) -> None:
        """Cancels the call and ends the iteration (StopIteration), from
        any thread. The CANCELLED it causes is not retried: no further
        call is opened, and a call being opened at that moment (a resume)
        is cancelled too."""
        with self._lock:
            self._cancelled.set()
            self._finished = True
            responses = self._responses
        if responses is not None:
            responses.cancel()

    def _open(self) -> bool:
        """Opens the call; False if cancel() came first or meanwhile (the
        new call is then cancelled)."""
        if self._cancelled.is_set():
            return False
        stubs = self._client._current_stubs()
        try:
            responses = self._client._invoke(
                stubs.streams.Generate, self._request,
                metadata=self._client._metadata,
                timeout=self._client._attempt_timeout(self._deadline,
                                                      unary=False))
        except StatestreamError:  # the client was closed
            self._finished = True
            raise
        with self._lock:
            if not self._cancelled.is_set():
                self._stubs, self._responses = stubs, responses
                self._progress.new_call()
                return True
        responses.cancel()
        return False

    def __next__(self) -> GenerateChunk:
        while not self._finished:
            if self._responses is None and not self._open():
                break
            try:
                msg = next(self._responses)
            except grpc.RpcError as e:
                err = StatestreamError.from_rpc_error(e)
            except StopIteration:
                err = StatestreamError(grpc.StatusCode.UNAVAILABLE,
                                       "generate ended without done")
            else:
                if msg.HasField("done"):
                    short = self._progress.ended_short(msg.done)
                    if short is not None:
                        self.cancel()
                        raise short
                    self.done = GenerateDone.from_proto(msg.done)
                    self._finished = True
                    break
                try:
                    chunk = self._progress.take(msg.chunk)
                except StatestreamError:
                    self.cancel()
                    raise
                if chunk is None:
                    continue
                self._attempts = 0
                return chunk
            with self._lock:
                self._responses = None
            if self._cancelled.is_set():
                # Our own cancel(): not a failure of the target, and not
                # retried.
                break
            moved = self._progress.moved(err)
            if moved is not err:
                self._finished = True
                raise moved
            self._client._rotate(self._stubs, err, self._deadline)
            self._attempts += 1
            try:
                # cancel() (or Client.close()) ends the backoff at once.
                self._client._retry_or_raise(err, self._attempts,
                                             self._deadline,
                                             wake=self._cancelled)
            except StatestreamError:
                self._finished = True
                raise
            if self._cancelled.is_set():
                break  # cancelled during the backoff
            self.reconnects += 1
        self._finished = True
        raise StopIteration
