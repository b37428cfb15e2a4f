# SPDX-License-Identifier: Apache-2.0
"""asyncio variant of the client, on grpc.aio, with the same resume
guarantees as statestream.client:

    async with AsyncClient("127.0.0.1:7700") as client:
        await client.create_session("s")
        s = client.session("s")
        async with await s.writer() as w:
            await w.write("Hello")
        async for chunk in s.generate(max_tokens=16):
            print(chunk.text, end="")
"""
from __future__ import annotations

import asyncio
import random
from typing import Dict, Iterable, List, Optional, Sequence, Union

import grpc
import grpc.aio

from statestream.client import (_assemble_export, _crc32c, _setup,
                                _stop_strings, _stop_tokens, _Stubs,
                                new_request_id)
from statestream.errors import StatestreamError, is_retryable, retry_after
from statestream.streams import (MAX_WINDOW, _AckTracker,
                                 _GenerateProgress, _Retained, _units)
from statestream.types import (AppendAck, ExportedState, GenerateChunk,
                               GenerateDone, GenerateResult, ScoreResult,
                               SessionInfo, VersionInfo)
from statestream.v1 import statestream_pb2 as pb


class AsyncClient:
    """Like statestream.Client, for one event loop (the same options,
    HTTP/2 keepalive included)."""

    def __init__(self, targets: Union[str, Sequence[str]], *,
                 api_key: Optional[str] = None, tenant: Optional[str] = None,
                 tls: bool = False, root_certificates: Optional[bytes] = None,
                 private_key: Optional[bytes] = None,
                 certificate_chain: Optional[bytes] = None,
                 tls_server_name: Optional[str] = None,
                 timeout: float = 60.0, max_attempts: int = 10,
                 initial_backoff: float = 0.05, max_backoff: float = 2.0,
                 options: Sequence = ()):
        _setup(self, targets, api_key, tenant, tls, root_certificates,
               private_key, certificate_chain, tls_server_name, timeout,
               max_attempts, initial_backoff, max_backoff, options, grpc.aio)

    async def close(self) -> None:
        for s in self._stubs:
            await s.channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def _rotate(self, failed: _Stubs) -> None:
        if self._stubs[self._current] is failed:
            self._current = (self._current + 1) % len(self._stubs)

    async def _retry_or_raise(self, error: StatestreamError,
                              attempt: int) -> None:
        if not is_retryable(error) or attempt >= self.max_attempts:
            raise error
        backoff = min(self.initial_backoff * 2 ** (attempt - 1),
                      self.max_backoff) * random.uniform(0.8, 1.2)
        backoff = max(backoff, retry_after(error))
        await asyncio.sleep(backoff)

    async def _unary(self, call):
        for attempt in range(1, self.max_attempts + 1):
            stubs = self._stubs[self._current]
            try:
                return await call(stubs, self._metadata, self.timeout)
            except grpc.RpcError as e:
                self._rotate(stubs)
                await self._retry_or_raise(
                    StatestreamError.from_rpc_error(e), attempt)
        raise AssertionError("unreachable")

    async def create_session(self, session_id: str = "", *,
                             model_id: str = "",
                             labels: Optional[Dict[str, str]] = None,
                             fork_from: Optional[str] = None,
                             fork_version: int = 0,
                             request_id: Optional[str] = None) -> SessionInfo:
        req = pb.CreateSessionRequest(request_id=request_id or new_request_id(),
                                      session_id=session_id, model_id=model_id,
                                      labels=labels or {})
        if fork_from:
            req.fork_from.session_id = fork_from
            req.fork_from.version = fork_version
        s = await self._unary(lambda st, md, t: st.sessions.CreateSession(
            req, metadata=md, timeout=t))
        return SessionInfo.from_proto(s)

    def session(self, session_id: str) -> "AsyncSession":
        return AsyncSession(self, session_id)

    async def list_sessions(self, labels: Optional[Dict[str, str]] = None
                            ) -> List[SessionInfo]:
        req = pb.ListSessionsRequest(label_selector=labels or {})
        out = []
        while True:
            page = await self._unary(lambda st, md, t: st.sessions.ListSessions(
                req, metadata=md, timeout=t))
            out += [SessionInfo.from_proto(s) for s in page.sessions]
            if not page.next_page_token:
                return out
            req.page_token = page.next_page_token

    async def _import(self, header, blob: bytes):
        def requests():
            yield pb.ImportStateRequest(header=header)
            size = header.state.chunk_bytes or (1 << 20)
            for i in range(0, max(1, (len(blob) + size - 1) // size)):
                data = blob[i * size:(i + 1) * size]
                yield pb.ImportStateRequest(chunk=pb.StateChunk(
                    index=i, data=data, crc32c=_crc32c(data)))
        return await self._unary(lambda st, md, t: st.sessions.ImportState(
            requests(), metadata=md, timeout=t))

    async def import_session(self, state: ExportedState,
                             session_id: str = "") -> SessionInfo:
        header = pb.ImportHeader(request_id=new_request_id(),
                                 session_id=session_id,
                                 mode=pb.IMPORT_MODE_CREATE)
        header.state.CopyFrom(state.header)
        return SessionInfo.from_proto(await self._import(header, state.blob))


class AsyncSession:
    def __init__(self, client: AsyncClient, session_id: str):
        self.client = client
        self.id = session_id

    async def get(self) -> SessionInfo:
        req = pb.GetSessionRequest(session_id=self.id)
        return SessionInfo.from_proto(await self.client._unary(
            lambda st, md, t: st.sessions.GetSession(req, metadata=md,
                                                     timeout=t)))

    async def writer(self, *, window: int = 32,
                     max_chunk_bytes: int = 256 << 10,
                     durability: int = pb.DURABILITY_UNSPECIFIED,
                     start_offset: Optional[int] = None
                     ) -> "AsyncAppendWriter":
        """As Session.writer: the first request goes at `start_offset`
        (None: the session's applied input_offset, read now); `window` is
        clamped to 1..MAX_WINDOW (64)."""
        offset = (await self.get()).input_offset if start_offset is None \
            else start_offset
        return AsyncAppendWriter(self.client, self.id, offset, window,
                                 max_chunk_bytes, durability)

    async def append(self, text: Union[str, bytes], *,
                     start_offset: Optional[int] = None,
                     durability: int = pb.DURABILITY_UNSPECIFIED
                     ) -> AppendAck:
        """Appends, flushes and commits; returns the final ack. As
        Session.append, a retry with the same start_offset cannot apply
        the text twice."""
        async with await self.writer(start_offset=start_offset,
                                     durability=durability) as w:
            await w.write(text)
            await w.flush()
            return await w.close()

    def generate(self, prompt: Union[str, bytes, None] = None, *,
                 max_tokens: int = 0, temperature: Optional[float] = None,
                 top_p: Optional[float] = None, seed: Optional[int] = None,
                 stop: Union[str, Iterable[str]] = (),
                 stop_tokens: Union[int, Iterable[int]] = (),
                 commit: bool = False,
                 logprobs: bool = False, top_logprobs: int = 0,
                 request_id: Optional[str] = None,
                 expected_input_offset: Optional[int] = None
                 ) -> "AsyncGenerateStream":
        """As Session.generate: `stop` is one stop string or several,
        `stop_tokens` one token id or several."""
        req = pb.GenerateRequest(session_id=self.id,
                                 request_id=request_id or new_request_id(),
                                 max_tokens=max_tokens, commit=commit,
                                 logprobs=logprobs, top_logprobs=top_logprobs,
                                 stop_strings=_stop_strings(stop),
                                 stop_tokens=_stop_tokens(stop_tokens))
        if isinstance(prompt, str):
            prompt = prompt.encode()
        if prompt:
            req.prompt_text_utf8 = prompt
        if temperature is not None:
            req.sampling.temperature = temperature
        if top_p is not None:
            req.sampling.top_p = top_p
        if seed is not None:
            req.sampling.seed = seed
        if expected_input_offset is not None:
            req.expected_input_offset = expected_input_offset
        # As Session.generate: pinned at the first read only under an id of
        # the SDK's own.
        return AsyncGenerateStream(self, req, pin=request_id is None)

    async def generate_text(self, prompt=None, **kwargs) -> GenerateResult:
        stream = self.generate(prompt, **kwargs)
        tokens, raw, lps = [], b"", []
        async for c in stream:
            tokens += c.tokens
            raw += c.raw
            lps += c.logprobs
        return GenerateResult(tokens, raw.decode("utf-8", "replace"),
                              stream.done, lps)

    async def score(self, text: Union[str, bytes, None] = None, *,
                    tokens: Optional[Sequence[int]] = None,
                    version: int = 0) -> ScoreResult:
        req = pb.ScoreRequest(session_id=self.id, version=version)
        if tokens is not None:
            req.tokens.ids.extend(tokens)
        else:
            req.text_utf8 = text.encode() if isinstance(text, str) else text
        return ScoreResult.from_proto(await self.client._unary(
            lambda st, md, t: st.streams.Score(req, metadata=md, timeout=t)))

    async def fork(self, version: int = 0, new_id: str = "") -> "AsyncSession":
        info = await self.client.create_session(new_id, fork_from=self.id,
                                                fork_version=version)
        return AsyncSession(self.client, info.session_id)

    async def versions(self) -> List[VersionInfo]:
        req = pb.ListVersionsRequest(session_id=self.id)
        out = []
        while True:
            page = await self.client._unary(
                lambda st, md, t: st.sessions.ListVersions(
                    req, metadata=md, timeout=t))
            out += [VersionInfo.from_proto(v) for v in page.versions]
            if not page.next_page_token:
                return out
            req.page_token = page.next_page_token

    async def rollback(self, version: int,
                       expected_version: Optional[int] = None) -> SessionInfo:
        req = pb.RollbackSessionRequest(request_id=new_request_id(),
                                        session_id=self.id, version=version)
        if expected_version is not None:
            req.expected_version = expected_version
        return SessionInfo.from_proto(await self.client._unary(
            lambda st, md, t: st.sessions.RollbackSession(
                req, metadata=md, timeout=t)))

    async def export(self, version: int = 0) -> ExportedState:
        req = pb.ExportStateRequest(session_id=self.id, version=version)

        async def call(st, md, t):
            parts = [part async for part in st.sessions.ExportState(
                req, metadata=md, timeout=t)]
            # Off the event loop: checking a large blob's CRCs takes a while.
            return await asyncio.get_running_loop().run_in_executor(
                None, _assemble_export, parts, self.id)
        return await self.client._unary(call)

    async def import_state(self, state: ExportedState) -> SessionInfo:
        header = pb.ImportHeader(request_id=new_request_id(),
                                 session_id=self.id,
                                 mode=pb.IMPORT_MODE_NEW_VERSION)
        header.state.CopyFrom(state.header)
        return SessionInfo.from_proto(await self.client._import(header,
                                                                state.blob))

    async def update(self, *, labels: Optional[Dict[str, str]] = None,
                 ttl_seconds: Optional[int] = None) -> SessionInfo:
        """Replaces the labels and/or the TTL given (the others are kept)."""
        req = pb.UpdateSessionRequest(request_id=new_request_id(),
                                      session_id=self.id)
        if labels is not None:
            req.labels.update(labels)
            req.update_mask.paths.append("labels")
        if ttl_seconds is not None:
            req.ttl.seconds = ttl_seconds
            req.update_mask.paths.append("ttl")
        return SessionInfo.from_proto(await self.client._unary(
            lambda st, md, t: st.sessions.UpdateSession(
                req, metadata=md, timeout=t)))

    async def delete(self, allow_missing: bool = False) -> None:
        req = pb.DeleteSessionRequest(request_id=new_request_id(),
                                      session_id=self.id,
                                      allow_missing=allow_missing)
        await self.client._unary(lambda st, md, t: st.sessions.DeleteSession(
            req, metadata=md, timeout=t))


class AsyncAppendWriter(_AckTracker):
    """statestream.AppendWriter for asyncio: the same invariant, commit rule
    and resume. At most `window` requests are in flight, resends after a
    reconnect included (the server stops reading a client that leaves 64
    acks unread: `window` is clamped to MAX_WINDOW, 64).

    A failure that is not retried (or runs out of attempts) sticks: every
    later call raises it and opens no call. After close(), calls raise
    FAILED_PRECONDITION "writer closed". A call cancelled by the caller
    (asyncio.CancelledError, e.g. from asyncio.wait_for) cancels the gRPC
    call; what write() had taken stays in the writer (its offset counted)
    and the next call resends it on a new call."""

    def __init__(self, client: AsyncClient, session_id: str, offset: int,
                 window: int, max_chunk_bytes: int, durability: int):
        self._client = client
        self._session_id = session_id
        self._next_offset = offset
        self._window = max(1, min(window, MAX_WINDOW))
        self._chunk = max(1, min(max_chunk_bytes, 1 << 20))
        self._durability = durability
        self._init_tracker(offset)
        self._sent = 0  # of _retained, sent on the current call
        self._call = None
        self._stubs = None
        self._error: Optional[StatestreamError] = None
        self._closing = False  # close() queued its checkpoint
        self._close_interrupted = False  # cancelled after all was committed
        self._closed = False
        self.last_ack: Optional[AppendAck] = None
        self.reconnects = 0

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
        else:
            self._drop_call()

    async def write(self, text: Union[str, bytes]) -> None:
        data = text.encode() if isinstance(text, str) else bytes(text)
        self._check()
        for i in range(0, len(data), self._chunk):
            self._queue(pb.AppendRequest(text_utf8=data[i:i + self._chunk]))
        await self._pump(self._window)

    async def flush(self) -> None:
        self._check()
        self._queue(pb.AppendRequest(flush=True))
        await self._pump(self._window)

    async def sync(self) -> AppendAck:
        """Waits for the acks of everything written (applied, maybe not
        committed)."""
        if self._error is not None:
            raise self._error
        await self._pump(0)
        return self.last_ack

    async def checkpoint(self) -> AppendAck:
        """Commits everything written; returns its ack."""
        self._check()
        self._queue(pb.AppendRequest(checkpoint=True))
        await self._pump(0)
        return self.last_ack

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
            raise StatestreamError(grpc.StatusCode.FAILED_PRECONDITION,
                                   "writer closed")
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
                call.cancel()
                self._close_interrupted = True
                raise
        return ack

    # -- internals -----------------------------------------------------------

    def _check(self) -> None:
        if self._error is not None:
            raise self._error
        if self._closed or self._closing:
            raise StatestreamError(grpc.StatusCode.FAILED_PRECONDITION,
                                   "writer closed")

    def _queue(self, req) -> None:
        req.session_id = self._session_id
        req.expected_input_offset = self._next_offset
        req.durability = self._durability
        self._next_offset += _units(req)
        self._retained.append(_Retained(req))

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
        `keep_unacked` requests are unacknowledged."""
        try:
            await self._pump_inner(keep_unacked)
        except asyncio.CancelledError:
            # A cancelled gRPC call fails every later read and write: open a
            # new one next time.
            self._drop_call()
            raise

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
            self._on_ack(ack)

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
        if self._call is not None:
            self._call.cancel()
            self._client._rotate(self._stubs)
            self._call = None
            self._attempts += 1
            try:
                await self._client._retry_or_raise(cause, self._attempts)
            except StatestreamError as e:
                self._error = e
                raise
            self.reconnects += 1
        self._stubs = self._client._stubs[self._client._current]
        self._call = self._stubs.streams.Append(
            metadata=self._client._metadata)
        self._acked = 0
        self._sent = 0


class AsyncGenerateStream:
    """Async iterator of GenerateChunk with resume (a resumed call that
    diverges from what was delivered raises ABORTED); `.done` at the end."""

    def __init__(self, session: AsyncSession, request, pin: bool = True):
        self._session = session
        self._client = session.client
        self._request = request
        self._progress = _GenerateProgress(request)
        self._call = None
        self._stubs = None
        self._pin = pin  # commit: pin the offset read at the first read
        self._pinned = False
        self.done: Optional[GenerateDone] = None
        self.reconnects = 0
        self._finished = False

    def __aiter__(self) -> "AsyncGenerateStream":
        return self

    def _drop_call(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None

    async def aclose(self) -> None:
        """Cancels the call; the iteration ends."""
        self._drop_call()
        self._finished = True

    async def __anext__(self) -> GenerateChunk:
        try:
            return await self._next()
        except asyncio.CancelledError:
            # The caller gave up on this read (e.g. asyncio.wait_for): gRPC
            # has cancelled the call, which fails every later read. The next
            # read reissues the same request and skips what was delivered.
            self._drop_call()
            raise

    async def _next(self) -> GenerateChunk:
        if (self._request.commit and not self._pinned and self._pin and
                not self._request.HasField("expected_input_offset")):
            # A retry must not apply a committed generation twice.
            info = await self._session.get()
            self._request.expected_input_offset = info.input_offset
        self._pinned = True
        attempts = 0
        while not self._finished:
            if self._call is None:
                self._stubs = self._client._stubs[self._client._current]
                self._call = self._stubs.streams.Generate(
                    self._request, metadata=self._client._metadata)
                self._progress.new_call()
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
                    short = self._progress.ended_short()
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
                return chunk
            self._call = None
            moved = self._progress.moved(err)
            if moved is not err:
                self._finished = True
                raise moved
            self._client._rotate(self._stubs)
            attempts += 1
            try:
                await self._client._retry_or_raise(err, attempts)
            except StatestreamError:
                self._finished = True
                raise
            self.reconnects += 1
        raise StopAsyncIteration
