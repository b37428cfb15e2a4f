# SPDX-License-Identifier: Apache-2.0
"""The asyncio client's streams: AsyncAppendWriter and AsyncGenerateStream,
with the resume protocol of statestream.streams (AppendWriter,
GenerateStream) on grpc.aio."""
from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Dict, Optional, Sequence, Union

import grpc
import grpc.aio

from statestream.client import _closed_error
from statestream.errors import StatestreamError
from statestream.streams import (_AckTracker, _GenerateProgress,
                                 _NamesItsRequest, _Retained, _deadline,
                                 _durability, _left, _token_requests, _units,
                                 _writer_closed, _writer_sizes)
from statestream.types import AppendAck, GenerateChunk, GenerateDone
from statestream.v1 import statestream_pb2 as pb

class _Hold:
    """When a stream's backoff ends (AsyncClient._retry_or_raise)."""
    until = 0.0


if TYPE_CHECKING:  # annotations only: aio imports this module
    from statestream.aio import AsyncClient, AsyncSession

__all__ = ["AsyncAppendWriter", "AsyncGenerateStream"]


class _OpeningWriter:
    """What AsyncSession.writer returns: awaitable (the writer), and an
    async context manager of the writer, so both `async with await
    s.writer()` and `async with s.writer()` work."""

    def __init__(self, opening) -> None:
        self._opening = opening
        self._writer: Optional["AsyncAppendWriter"] = None

    def __await__(self):
        return self._opening.__await__()

    async def __aenter__(self) -> "AsyncAppendWriter":
        self._writer = await self._opening
        return await self._writer.__aenter__()

    async def __aexit__(self, exc_type, exc, tb) -> None:
        await self._writer.__aexit__(exc_type, exc, tb)


class AsyncAppendWriter(_AckTracker):
    """statestream.AppendWriter for asyncio: the same invariant, commit rule
    and resume. At most `window` requests are in flight, resends after a
    reconnect included (the server stops reading a client that leaves 64
    acks unread: `window` is clamped to MAX_WINDOW, 64).

    A failure that is not retried (or runs out of attempts, or passes
    `timeout`) sticks: every later call raises it and opens no call. After
    close(), calls (sync() included) raise FAILED_PRECONDITION "writer
    closed"; after AsyncClient.close(), every call (one in progress
    included) raises CANCELLED "client closed", and keeps it. A call
    cancelled by the caller
    (asyncio.CancelledError, e.g. from asyncio.wait_for) while it sends or
    reads acks cancels the gRPC call; what write() had taken stays in the
    writer (its offset counted) and the next call resends it on a new call.
    One cancelled while waiting for another task's turn cancels nothing
    (what it queued is sent all the same).

    Several tasks may share a writer (e.g. one writing, one checkpointing
    on a timer): each call's requests take their offsets in the order the
    calls are made, and the sending and reading of acks is one task's at a
    time."""

    def __init__(self, client: AsyncClient, session_id: str, offset: int,
                 window: int, max_chunk_bytes: int, durability: int, *,
                 timeout: Optional[float] = None):
        self._client = client
        self._deadline = _deadline(timeout)
        self._session_id = session_id
        self._next_offset = offset
        self._window, self._chunk = _writer_sizes(window, max_chunk_bytes)
        self._durability = _durability(durability)
        self._init_tracker(offset)
        self._sent = 0  # of _retained, sent on the current call
        # One task at a time sends and reads acks: two pumping at once
        # would send a request twice and pair acks with the wrong ones.
        self._pump_lock = asyncio.Lock()
        self._call = None
        self._stubs = None
        self._error: Optional[StatestreamError] = None
        self._drop_after_pump = False  # __aexit__ on an exception, mid-pump
        self._closing = False  # close() queued its checkpoint
        self._close_interrupted = False  # cancelled after all was committed
        self._closed = False
        self.last_ack: Optional[AppendAck] = None
        # The acks of the checkpoints in progress (by id of their retained
        # entry): with tasks writing meanwhile, last_ack is a later one's.
        self._own_acks: Dict[int, Optional[AppendAck]] = {}
        self.reconnects = 0
        self._hold = _Hold()  # the backoff before the next call

    @property
    def offset(self) -> int:
        """input_offset after everything written."""
        return self._next_offset

    async def __aenter__(self) -> "AsyncAppendWriter":
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            if not self._closed:
                await self.close()
        elif self._pump_lock.locked():
            # Another task is sending or reading acks on the call: cancelled
            # under it, its call would raise asyncio.CancelledError though
            # nobody cancelled it. It ends the call once done.
            self._drop_after_pump = True
        else:
            self._drop_call()

    async def write(self, text: Union[str, bytes]) -> None:
        """As AppendWriter.write: str or bytes, else TypeError."""
        await self._write_text(text, False)

    async def _write_text(self, text, final: bool) -> None:
        """As AppendWriter._write_text."""
        data = self._encode(text)
        self._check()
        if not data:
            return
        for req in self._text_requests(text, data, final):
            self._queue(req)
        await self._pump(self._window)

    async def write_tokens(self, tokens: Sequence[int]) -> None:
        self._check()
        requests = _token_requests(tokens)
        if requests:
            self._check_flushable(tokens=True)
        for req in requests:
            self._queue(req)
        await self._pump(self._window)

    async def flush(self) -> None:
        self._check()
        self._check_flushable()
        self._queue(pb.AppendRequest(flush=True))
        await self._pump(self._window)

    async def sync(self) -> AppendAck:
        """As AppendWriter.sync: the latest ack once everything written is
        acknowledged; before any, the session's current ack (a request
        without payload)."""
        self._check()
        await self._pump(0)
        if self.last_ack is None:
            self._queue(pb.AppendRequest())
            await self._pump(0)
        return self.last_ack

    async def checkpoint(self) -> AppendAck:
        """Commits everything written; returns its ack (the checkpoint's
        own, though other tasks wrote after it meanwhile)."""
        self._check()
        retained = self._queue(pb.AppendRequest(checkpoint=True))
        # Keyed by identity: `retained` lives until this call returns.
        self._own_acks[id(retained)] = None
        try:
            await self._pump(0)
            # Set: _pump(0) returns once everything queued was acknowledged.
            return self._own_acks[id(retained)]
        finally:
            del self._own_acks[id(retained)]

    async def close(self) -> AppendAck:
        """Commits everything written and ends the call. Again after a
        cancellation: finishes the same close. Twice: FAILED_PRECONDITION
        "writer closed"."""
        if self._error is not None:
            raise self._error
        if self._closed:
            if self._close_interrupted:
                # Everything was committed before the cancellation.
                self._close_interrupted = False
                return self.last_ack
            raise _writer_closed()
        if self._client._closed:
            self._error = _closed_error()
            raise self._error
        if not self._closing:
            self._queue(pb.AppendRequest(checkpoint=True))
            self._closing = True
        await self._pump(0)
        ack = self.last_ack
        self._closed = True
        call, self._call = self._call, None
        if call is not None:
            try:
                await call.done_writing()
                await call.code()
            except (grpc.RpcError, asyncio.InvalidStateError):
                pass  # everything is committed and acknowledged already
            except asyncio.CancelledError:
                if not self._client._closed_under():
                    call.cancel()
                    self._close_interrupted = True
                    raise
                # AsyncClient.close() cancelled the call: everything is
                # committed and acknowledged already.
        return ack

    # -- internals -----------------------------------------------------------

    def _check(self) -> None:
        """Raises the writer's error; FAILED_PRECONDITION "writer closed"
        after close(); else CANCELLED "client closed" (kept) after
        AsyncClient.close()."""
        if self._error is not None:
            raise self._error
        if self._closed or self._closing:
            raise _writer_closed()
        if self._client._closed:
            self._error = _closed_error()
            raise self._error

    def _queue(self, req) -> _Retained:
        req.session_id = self._session_id
        req.expected_input_offset = self._next_offset
        req.durability = self._durability
        self._next_offset += _units(req)
        retained = _Retained(req)
        self._retained.append(retained)
        return retained

    def _on_ack(self, ack) -> None:
        acked = self._retained[self._acked]
        super()._on_ack(ack)
        if id(acked) in self._own_acks:
            self._own_acks[id(acked)] = self.last_ack

    def _dropped_front(self) -> None:
        self._sent -= 1

    def _drop_call(self) -> None:
        """Cancels the current call, if any; the next pump opens a new one
        and resends everything retained."""
        if self._call is not None:
            self._call.cancel()
            self._call = None
        self._acked = 0
        self._sent = 0

    async def _pump(self, keep_unacked: int) -> None:
        """Sends what the window allows and reads acks until at most
        `keep_unacked` requests are unacknowledged (one task at a time).
        A task cancelled while waiting for the lock leaves the call alone:
        another task is using it, and its requests stay queued."""
        async with self._pump_lock:
            try:
                await self._pump_inner(keep_unacked)
            except asyncio.CancelledError:
                # A cancelled gRPC call fails every later read and write:
                # open a new one next time.
                self._drop_call()
                if self._client._closed_under():
                    # AsyncClient.close() cancelled the call.
                    self._error = _closed_error()
                    raise self._error from None
                raise
            finally:
                if self._drop_after_pump:
                    # __aexit__ left on an exception while this task used
                    # the call: it ends now that this task is done with it.
                    self._drop_after_pump = False
                    self._drop_call()

    async def _pump_inner(self, keep_unacked: int) -> None:
        while True:
            if self._error is not None:
                raise self._error
            if self._call is None:
                if not self._retained:
                    return
                await self._reconnect(None)
            try:
                while (self._sent < len(self._retained) and
                       self._sent - self._acked < self._window):
                    await self._call.write(self._retained[self._sent].request)
                    self._sent += 1
            except (grpc.RpcError, asyncio.InvalidStateError) as e:
                await self._reconnect(await self._error_of(self._call, e))
                continue
            if len(self._retained) - self._acked <= keep_unacked:
                return
            try:
                ack = await self._call.read()
            except (grpc.RpcError, asyncio.InvalidStateError) as e:
                await self._reconnect(await self._error_of(self._call, e))
                continue
            if ack is grpc.aio.EOF:
                await self._reconnect(StatestreamError(
                    grpc.StatusCode.UNAVAILABLE, "append stream ended early"))
                continue
            try:
                self._on_ack(ack)
            except StatestreamError:
                self._drop_call()  # the writer failed: nothing more of it
                raise

    @staticmethod
    async def _error_of(call, e) -> StatestreamError:
        if isinstance(e, grpc.RpcError):
            return StatestreamError.from_rpc_error(e)
        # A write on a call that has ended: its status says why.
        if call is not None and call.done():
            try:
                code = await call.code()
                if code != grpc.StatusCode.OK:
                    return StatestreamError.from_status(
                        code, await call.details(),
                        await call.trailing_metadata())
            except (grpc.RpcError, asyncio.InvalidStateError):
                pass
        return StatestreamError(grpc.StatusCode.UNAVAILABLE,
                                f"append stream ended early: {e}")

    async def _reconnect(self, cause: Optional[StatestreamError]) -> None:
        try:
            if self._call is not None:
                self._call.cancel()
                self._client._rotate(self._stubs, cause, self._deadline)
                self._call = None
                self._attempts += 1
                await self._client._retry_or_raise(cause, self._attempts,
                                                   self._deadline,
                                                   hold=self._hold)
                self.reconnects += 1
            else:
                # A backoff cut short by a cancelled task: the rest first.
                await self._client._wait_out(self._hold)
            self._stubs = self._client._stubs[self._client._current]
            self._call = self._client._invoke(
                self._stubs.streams.Append, metadata=self._client._metadata,
                timeout=self._client._attempt_timeout(self._deadline,
                                                      unary=False))
        except StatestreamError as e:
            self._error = e
            raise
        self._acked = 0
        self._sent = 0


def _task_cancelling() -> bool:
    """Whether the running task was asked to cancel (task.cancel(), not
    undone); False where Python (< 3.11) cannot say."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return cancelling is not None and cancelling() > 0


def _retrieve(task: "asyncio.Task") -> None:
    """A done callback: marks the task's exception retrieved (a stream
    never read does not log "exception was never retrieved")."""
    if not task.cancelled():
        task.exception()


class AsyncGenerateStream(_NamesItsRequest):
    """Async iterator of GenerateChunk with resume (a resumed call that
    diverges from what was delivered raises FAILED_PRECONDITION); `.done` at the end.
    `timeout` bounds the whole generation from its creation, the pin's
    GetSession and every resume included. cancel() / aclose() end it: a
    read in progress in another task, one on the call or out a resume's
    backoff, ends with StopAsyncIteration (a cancelled reading task still
    gets asyncio.CancelledError); after AsyncClient.close() a read raises
    CANCELLED "client closed". As an async context manager, leaving the
    block ends a generation not yet done (as Client's GenerateStream in
    `with`)."""

    def __init__(self, session: AsyncSession, request, pin: bool = True,
                 timeout: Optional[float] = None):
        self._session = session
        self._client = session.client
        self._request = request
        self._deadline = _deadline(timeout)
        self._progress = _GenerateProgress(request)
        self._call = None
        self._stubs = None
        # A committing generation is pinned to the input_offset a
        # GetSession reads: started now as a task (in a running loop; else
        # at the first read), running concurrently with what the caller
        # does next. The first read waits for it.
        self._pin_task: Optional[asyncio.Task] = None
        self._pin_later = False
        if (pin and request.commit and
                not request.HasField("expected_input_offset")):
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self._pin_later = True
            else:
                self._pin_task = loop.create_task(
                    session.get(timeout=_left(self._deadline)))
                self._pin_task.add_done_callback(_retrieve)
        self.done: Optional[GenerateDone] = None
        self.reconnects = 0
        # Failed attempts since the last chunk delivered: kept across reads,
        # so reads the caller cancels (wait_for) still run out of attempts.
        self._attempts = 0
        self._finished = False
        self._cancelled = False
        self._wake: Optional[asyncio.Future] = None  # a backoff's, if any
        self._hold = _Hold()  # when that backoff ends

    def __aiter__(self) -> "AsyncGenerateStream":
        return self

    def _drop_call(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None

    def cancel(self) -> None:
        """Cancels the call (and the pin's read); the iteration ends
        (StopAsyncIteration), another task's read in progress at once,
        one waiting on the call or out a resume's backoff (unless that
        task is itself being cancelled: asyncio.CancelledError; Python
        < 3.11 cannot tell, and ends it too). Not retried."""
        self._cancelled = True
        self._finished = True
        self._drop_call()
        if self._pin_task is not None:
            self._pin_task.cancel()
            self._pin_task = None
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def aclose(self) -> None:
        """Cancels the call; the iteration ends (as cancel())."""
        self.cancel()

    async def close(self) -> None:
        """As GenerateStream.close(): ends the generation if it is not
        done; nothing once the iteration has ended."""
        if not self._finished:
            self.cancel()

    async def __aenter__(self) -> "AsyncGenerateStream":
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        """Leaving the block ends a generation not yet done."""
        await self.close()

    async def __anext__(self) -> GenerateChunk:
        try:
            return await self._next()
        except asyncio.CancelledError:
            if self._cancelled and not _task_cancelling():
                # cancel() (from another task) cancelled the call this
                # read awaited: the iteration ends, as cancel() says.
                raise StopAsyncIteration from None
            # The caller gave up on this read (e.g. asyncio.wait_for): gRPC
            # has cancelled the call, which fails every later read. The next
            # read reissues the same request and skips what was delivered.
            self._drop_call()
            if self._client._closed_under():
                # AsyncClient.close() cancelled the call.
                self._finished = True
                raise _closed_error() from None
            raise

    async def _pin(self) -> None:
        """Sets the request's expected_input_offset to the offset read for
        the pin, once (shielded: a cancelled read leaves the pin's read
        running for the next one)."""
        task = self._pin_task
        if task is not None:
            try:
                info = await asyncio.shield(task)
            except StatestreamError:
                self._finished = True
                self._pin_task = None
                raise
            except asyncio.CancelledError:
                if not task.cancelled() or _task_cancelling():
                    raise  # this read was cancelled; the pin's goes on
                if self._cancelled:
                    return  # by cancel(): the iteration ends
                # The pin's task was cancelled under us (cancel() drops
                # it): read the pin here rather than awaiting a cancelled
                # task at every read.
                self._pin_task = None
                self._pin_later = True
            else:
                self._pin_task = None
                self._request.expected_input_offset = info.input_offset
                return
        if not self._pin_later:
            return
        try:
            info = await self._session.get(timeout=_left(self._deadline))
        except StatestreamError:
            self._finished = True
            raise
        self._pin_later = False
        self._request.expected_input_offset = info.input_offset

    def _open(self) -> None:
        self._stubs = self._client._stubs[self._client._current]
        try:
            self._call = self._client._invoke(
                self._stubs.streams.Generate, self._request,
                metadata=self._client._metadata,
                timeout=self._client._attempt_timeout(self._deadline,
                                                      unary=False))
        except StatestreamError:  # the client was closed
            self._finished = True
            raise
        self._progress.new_call()

    async def _next(self) -> GenerateChunk:
        if not self._finished:
            # A retry must not apply a committed generation twice.
            await self._pin()
        while not self._finished:
            if self._call is None:
                # A backoff cut short by a cancelled read: the rest first
                # (cancel() ends it, as the backoff itself).
                self._wake = asyncio.get_running_loop().create_future()
                try:
                    await self._client._wait_out(self._hold, self._wake)
                finally:
                    self._wake = None
                if self._finished:  # cancel() meanwhile
                    break
                self._open()
            try:
                msg = await self._call.read()
                err = None
                if msg is grpc.aio.EOF:
                    err = StatestreamError(grpc.StatusCode.UNAVAILABLE,
                                           "generate ended without done")
            except grpc.RpcError as e:
                err = StatestreamError.from_rpc_error(e)
            if err is None:
                if msg.HasField("done"):
                    short = self._progress.ended_short(msg.done)
                    if short is not None:
                        self._finished = True
                        self._drop_call()
                        raise short
                    self.done = GenerateDone.from_proto(msg.done)
                    self._finished = True
                    break
                try:
                    chunk = self._progress.take(msg.chunk)
                except StatestreamError:
                    self._finished = True
                    self._drop_call()
                    raise
                if chunk is None:
                    continue
                self._attempts = 0
                return chunk
            self._call = None
            moved = self._progress.moved(err)
            if moved is not err:
                self._finished = True
                raise moved
            self._client._rotate(self._stubs, err, self._deadline)
            self._attempts += 1
            # cancel() ends the backoff at once (AsyncClient.close() too,
            # raising CANCELLED "client closed").
            self._wake = asyncio.get_running_loop().create_future()
            try:
                await self._client._retry_or_raise(err, self._attempts,
                                                   self._deadline, self._wake,
                                                   self._hold)
            except StatestreamError:
                self._finished = True
                raise
            finally:
                self._wake = None
            if self._cancelled:
                break
            self.reconnects += 1
        raise StopAsyncIteration
