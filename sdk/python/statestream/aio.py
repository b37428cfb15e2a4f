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
import datetime
import time
import weakref
from typing import Dict, Iterable, List, Optional, Sequence, Union

import grpc
import grpc.aio

from statestream.channel import _setup, _Stubs
from statestream.checksum import _crc32c_in_thread
from statestream.client import (_blames_target_by, _check_next_page,
                                _ClientBase, _Collected, _closed_error,
                                _not_found_after_unknown, _outcome_unknown)
from statestream.messages import (_assemble_export, _create_request,
                                  _generate_request, _import_chunk,
                                  _import_chunks, _import_header,
                                  _list_request, _rollback_request,
                                  _score_request, _state_blob,
                                  _update_request, new_request_id)
from statestream.errors import StatestreamError
from statestream.streams import (_deadline, _durability, _left, _str_field,
                                 _utf8, _writer_sizes)
from statestream.transfer import (_AsyncStallGuard, _cap, _import_budget,
                                  _stalled_error)
from statestream.types import (AppendAck, ExportedState, GenerateResult,
                               ScoreResult, SessionInfo, VersionInfo)
from statestream.v1 import statestream_pb2 as pb
from statestream.aio_streams import (AsyncAppendWriter, AsyncGenerateStream,
                                     _OpeningWriter, _task_cancelling)


class AsyncClient(_ClientBase):
    """Like statestream.Client, for one event loop (the same options,
    HTTP/2 keepalive included, and the same methods, as coroutines: every
    call takes `timeout=`, seconds for the whole operation, retries
    included).

    close() ends the calls in progress, one waiting out a backoff included:
    they raise StatestreamError CANCELLED "client closed" (not
    asyncio.CancelledError, though gRPC cancels them), as every later call
    does. A task cancelled itself (task.cancel(), asyncio.wait_for) still
    gets asyncio.CancelledError."""

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
        # The futures the backoffs in progress wait on: close() sets them.
        self._wakers: set = set()
        # The gRPC calls not done yet: close() cancels them (closing a
        # grpc.aio channel cancels only the calls a task awaits directly,
        # not a stream read inside a method of ours). Weak: a call its
        # caller dropped (a `break` out of `async for`, a writer never
        # closed) is collected, and grpc.aio cancels it then.
        self._calls: weakref.WeakSet = weakref.WeakSet()
        for stubs in self._stubs:
            for stub in (stubs.sessions, stubs.streams, stubs.models):
                for name, method in list(vars(stub).items()):
                    setattr(stub, name, _Tracked(method, self._calls))

    async def close(self) -> None:
        """Closes the channels. Calls in progress (one waiting out a
        backoff included), and every later call, fail CANCELLED "client
        closed" (a StatestreamError; not retried, is_retryable() is
        False); a writer keeps that error."""
        self._closed = True
        for wake in list(self._wakers):
            if not wake.done():
                wake.set_result(None)
        for call in list(self._calls):
            call.cancel()
        for s in self._stubs:
            await s.channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def _rotate(self, failed: _Stubs,
                error: Optional[StatestreamError] = None,
                deadline: Optional[float] = None) -> None:
        """As Client._rotate."""
        if error is not None and not _blames_target_by(error, deadline):
            return
        if self._stubs[self._current] is failed:
            self._current = (self._current + 1) % len(self._stubs)

    async def _retry_or_raise(self, error: StatestreamError, attempt: int,
                              deadline: Optional[float] = None,
                              wake: Optional[asyncio.Future] = None,
                              hold=None) -> None:
        """Waits the backoff before attempt+1, or raises `error` (see
        _ClientBase._backoff). The wait ends early when `wake` gets a
        result (a stream's cancel()) or the client is closed, which raises
        CANCELLED "client closed". `hold` (a stream's _Hold) keeps when the
        wait ends: a task cancelled in it (wait_for) leaves the rest for
        the stream's next call to wait out (_wait_out), so a caller polling
        with short timeouts does not open an attempt a poll, inside a
        server's retry_after_ms."""
        backoff = self._backoff(error, attempt, deadline)
        if hold is not None:
            hold.until = time.monotonic() + backoff
        await self._wait(backoff, wake)

    async def _wait_out(self, hold, wake: Optional[asyncio.Future] = None
                        ) -> None:
        """What is left of the backoff `hold` keeps (see _retry_or_raise)."""
        left = hold.until - time.monotonic()
        if left > 0:
            await self._wait(left, wake)

    async def _wait(self, seconds: float,
                    wake: Optional[asyncio.Future]) -> None:
        if wake is None:
            wake = asyncio.get_running_loop().create_future()
        self._wakers.add(wake)
        try:
            await asyncio.wait((wake,), timeout=seconds)
        finally:
            self._wakers.discard(wake)
        self._check_open()

    def _closed_under(self) -> bool:
        """Called on an asyncio.CancelledError: whether it comes from
        close(), which cancels the gRPC calls in flight, rather than from a
        cancellation of the running task (task.cancel(), wait_for), which
        must propagate. (Python < 3.11 cannot tell them apart: after
        close(), every cancellation counts as close()'s.)"""
        return self._closed and not _task_cancelling()

    def _invoke(self, fn, *args, **kwargs):
        """fn(*args, **kwargs), which starts a call. After close():
        CANCELLED "client closed" (gRPC raises UsageError for a closed
        channel)."""
        self._check_open()
        try:
            return fn(*args, **kwargs)
        except grpc.aio.UsageError:
            if self._closed:
                raise _closed_error() from None
            raise

    async def _unary(self, call, timeout: Optional[float] = None,
                     deadline: Optional[float] = None):
        """As Client._unary: call(stubs, metadata, timeout) returns an
        awaitable."""
        if deadline is None:
            deadline = _deadline(timeout)
        return await self._attempts(
            lambda st, md, t, guard: call(st, md, t), deadline,
            self._attempt_timeout, None)

    async def _transfer(self, call, timeout: Optional[float] = None,
                        budget: Optional[float] = None):
        """As Client._transfer: call(stubs, metadata, timeout, guard)
        returns an awaitable."""
        return await self._attempts(
            call, _deadline(timeout),
            lambda d: _cap(self._attempt_timeout(d, unary=False), budget),
            self.timeout)

    async def _attempts(self, call, deadline: Optional[float],
                        attempt_timeout, idle: Optional[float]):
        """As Client._attempts."""
        for attempt in range(1, self.max_attempts + 1):
            stubs = self._stubs[self._current]
            guard = _AsyncStallGuard(idle)
            try:
                return await self._invoke(call, stubs, self._metadata,
                                          attempt_timeout(deadline), guard)
            except grpc.aio.UsageError:
                if self._closed:
                    raise _closed_error() from None
                raise
            except asyncio.CancelledError:
                if self._closed_under():
                    raise _closed_error() from None
                if not guard.stalled or _task_cancelling():
                    raise
                # The guard cancelled the gRPC call: a stall.
                err = _stalled_error(idle)
                self._rotate(stubs, err, deadline)
                await self._retry_or_raise(err, attempt, deadline)
            except grpc.RpcError as e:
                err = (_stalled_error(idle) if guard.stalled else
                       StatestreamError.from_rpc_error(e))
                self._rotate(stubs, err, deadline)
                await self._retry_or_raise(err, attempt, deadline)
            finally:
                guard.close()
        raise AssertionError("unreachable")

    async def create_session(self, session_id: str = "", *,
                             model_id: str = "",
                             labels: Optional[Dict[str, str]] = None,
                             ttl_seconds: Optional[int] = None,
                             fork_from: Optional[str] = None,
                             fork_version: int = 0,
                             request_id: Optional[str] = None,
                             durability: int = pb.DURABILITY_UNSPECIFIED,
                             timeout: Optional[float] = None) -> SessionInfo:
        req = _create_request(session_id, model_id, labels, ttl_seconds,
                              fork_from, fork_version, request_id, durability)
        s = await self._unary(lambda st, md, t: st.sessions.CreateSession(
            req, metadata=md, timeout=t), timeout)
        return SessionInfo.from_proto(s)

    def session(self, session_id: str) -> "AsyncSession":
        return AsyncSession(self, session_id)

    async def list_sessions(self, labels: Optional[Dict[str, str]] = None,
                            model_id: str = "", *,
                            timeout: Optional[float] = None
                            ) -> List[SessionInfo]:
        """Every page at once (Client.list_sessions iterates); `timeout`
        bounds them together."""
        req = _list_request(labels, model_id)
        deadline = _deadline(timeout)
        out = []
        while True:
            page = await self._unary(lambda st, md, t: st.sessions.ListSessions(
                req, metadata=md, timeout=t), deadline=deadline)
            out += [SessionInfo.from_proto(s) for s in page.sessions]
            if not page.next_page_token:
                return out
            _check_next_page(req, page, "ListSessions")
            req.page_token = page.next_page_token

    async def _import(self, header, blob: bytes,
                      timeout: Optional[float] = None):
        async def call(st, md, t, guard):
            c = st.sessions.ImportState(
                _async_watched(_async_import_requests(header, blob), guard),
                metadata=md, timeout=t)
            guard.attach(c)
            return await c
        return await self._transfer(call, timeout,
                                    _import_budget(self.timeout, header,
                                                   blob))

    async def import_session(self, state: ExportedState,
                             session_id: str = "", *,
                             labels: Optional[Dict[str, str]] = None,
                             ttl_seconds: Optional[int] = None,
                             request_id: Optional[str] = None,
                             durability: int = pb.DURABILITY_UNSPECIFIED,
                             timeout: Optional[float] = None) -> SessionInfo:
        """As Client.import_session."""
        blob = _state_blob(state)
        header = _import_header(session_id, pb.IMPORT_MODE_CREATE, state,
                                request_id=request_id,
                                labels=labels, ttl_seconds=ttl_seconds,
                                durability=durability)
        return SessionInfo.from_proto(await self._import(
            header, blob, timeout))

    async def list_models(self, *, timeout: Optional[float] = None
                          ) -> List[object]:
        r = await self._unary(lambda st, md, t: st.models.ListModels(
            pb.ListModelsRequest(), metadata=md, timeout=t), timeout)
        return list(r.models)

    async def get_model(self, model_id: str, *,
                        timeout: Optional[float] = None) -> object:
        """As Client.get_model."""
        req = pb.GetModelRequest(model_id=_str_field(model_id, "model_id"))
        return await self._unary(lambda st, md, t: st.models.GetModel(
            req, metadata=md, timeout=t), timeout)


class _Tracked:
    """A stub's method whose calls are kept, weakly, in `calls` (for
    close()); a call leaves the set when it is collected."""

    def __init__(self, method, calls: "weakref.WeakSet"):
        self._method = method
        self._calls = calls

    def __call__(self, *args, **kwargs):
        call = self._method(*args, **kwargs)
        self._calls.add(call)
        return call


async def _async_watched(requests, guard):
    """As client._watched, for an async iterator."""
    async for r in requests:
        guard.progress()
        yield r
    guard.disarm()


async def _async_import_requests(header, blob: bytes):
    """As client._import_requests, with each chunk's CRC-32C computed off
    the event loop (in pure Python, about 0.1 s per MiB): the next chunk's
    while this one is sent."""
    loop = asyncio.get_running_loop()
    yield pb.ImportStateRequest(header=header)
    chunks = _import_chunks(header, blob)
    pending = None  # (index, data, the CRC's future)
    try:
        for i, data in chunks:
            crc = loop.run_in_executor(None, _crc32c_in_thread, data)
            if pending is not None:
                yield _import_chunk(pending[0], pending[1], await pending[2])
            pending = (i, data, crc)
        if pending is not None:
            yield _import_chunk(pending[0], pending[1], await pending[2])
            pending = None
    finally:
        if pending is not None:
            pending[2].cancel()


class AsyncSession:
    """statestream.Session for asyncio: the same methods and arguments."""

    def __init__(self, client: AsyncClient, session_id: str):
        self.client = client
        self.id = _str_field(session_id, "session id")

    def __repr__(self) -> str:
        return f"AsyncSession({self.id!r})"

    async def get(self, timeout: Optional[float] = None) -> SessionInfo:
        req = pb.GetSessionRequest(session_id=self.id)
        return SessionInfo.from_proto(await self.client._unary(
            lambda st, md, t: st.sessions.GetSession(req, metadata=md,
                                                     timeout=t), timeout))

    def writer(self, *, window: int = 32,
               max_chunk_bytes: int = 256 << 10,
               durability: int = pb.DURABILITY_UNSPECIFIED,
               timeout: Optional[float] = None,
               start_offset: Optional[int] = None) -> "_OpeningWriter":
        """As Session.writer: the first request goes at `start_offset`
        (None: the session's applied input_offset, read now); `window` is
        1 to MAX_WINDOW (64; larger values are clamped); `timeout` bounds
        the writer's whole life from now, the GetSession included. Await
        it for the writer (`w = await s.writer()`), or use it directly:
        `async with s.writer() as w:`."""
        return _OpeningWriter(self._open_writer(
            window, max_chunk_bytes, durability, timeout, start_offset))

    async def _open_writer(self, window, max_chunk_bytes, durability,
                           timeout, start_offset) -> "AsyncAppendWriter":
        _writer_sizes(window, max_chunk_bytes)
        durability = _durability(durability)
        deadline = _deadline(timeout)
        offset = (await self.get(timeout=_left(deadline))).input_offset \
            if start_offset is None else start_offset
        return AsyncAppendWriter(self.client, self.id, offset, window,
                                 max_chunk_bytes, durability,
                                 timeout=_left(deadline))

    async def append(self, text: Union[str, bytes] = b"",
                     tokens: Optional[Sequence[int]] = None,
                     flush: bool = True, *,
                     start_offset: Optional[int] = None,
                     durability: int = pb.DURABILITY_UNSPECIFIED,
                     timeout: Optional[float] = None) -> AppendAck:
        """Appends (text, then tokens), flushes and commits; returns the
        final ack. As Session.append, a retry with the same start_offset
        cannot apply the input twice."""
        data = b"" if text is None else _utf8(text, "text")
        async with await self.writer(start_offset=start_offset,
                                     durability=durability,
                                     timeout=timeout) as w:
            if data:
                # Whole, before anything is sent (a flush in a character
                # would leave the session holding the text before it).
                await w._write_text(data, flush or bool(tokens))
            if tokens:
                await w.write_tokens(tokens)
            if flush:
                await w.flush()
            return await w.close()

    def generate(self, prompt: Union[str, bytes, None] = None, *,
                 prompt_tokens: Optional[Sequence[int]] = None,
                 max_tokens: int = 0, temperature: Optional[float] = None,
                 top_p: Optional[float] = None, top_k: int = 0,
                 min_p: float = 0.0, presence_penalty: float = 0.0,
                 frequency_penalty: float = 0.0,
                 penalty_decay: Optional[float] = None,
                 logit_bias: Optional[Dict[int, float]] = None,
                 seed: Optional[int] = None,
                 stop: Union[str, Iterable[str]] = (),
                 stop_tokens: Union[int, Iterable[int]] = (),
                 commit: bool = False,
                 durability: int = pb.DURABILITY_UNSPECIFIED,
                 logprobs: bool = False, top_logprobs: int = 0,
                 request_id: Optional[str] = None,
                 expected_input_offset: Optional[int] = None,
                 max_duration: Union[float, datetime.timedelta, None] = None,
                 timeout: Optional[float] = None
                 ) -> "AsyncGenerateStream":
        """As Session.generate, except when the pin of a committing
        generation (no request_id, no expected_input_offset) is read: its
        GetSession starts now as a task when called inside a running event
        loop (else at the first read), concurrently with what the caller
        does next, and the first read waits for it. Input appended right
        after generate() may or may not be in the pin: when that order
        matters, pass expected_input_offset (read yourself)."""
        req = _generate_request(
            self.id, prompt, prompt_tokens=prompt_tokens,
            max_tokens=max_tokens, temperature=temperature, top_p=top_p,
            top_k=top_k, min_p=min_p, presence_penalty=presence_penalty,
            frequency_penalty=frequency_penalty, penalty_decay=penalty_decay,
            logit_bias=logit_bias, seed=seed, stop=stop,
            stop_tokens=stop_tokens, commit=commit, durability=durability,
            logprobs=logprobs, top_logprobs=top_logprobs,
            request_id=request_id,
            expected_input_offset=expected_input_offset,
            max_duration=max_duration)
        return AsyncGenerateStream(
            self, req, pin=(commit and not request_id and
                            expected_input_offset is None),
            timeout=timeout)

    async def generate_text(self, prompt=None, **kwargs) -> GenerateResult:
        stream = self.generate(prompt, **kwargs)
        collected = _Collected()
        async for c in stream:
            collected.add(c)
        return collected.result(stream.done)

    async def score(self, text: Union[str, bytes, None] = None, *,
                    tokens: Optional[Sequence[int]] = None, version: int = 0,
                    top_logprobs: int = 0,
                    expected_input_offset: Optional[int] = None,
                    timeout: Optional[float] = None) -> ScoreResult:
        req = _score_request(self.id, text, tokens, version, top_logprobs,
                             expected_input_offset)
        return ScoreResult.from_proto(await self.client._unary(
            lambda st, md, t: st.streams.Score(req, metadata=md, timeout=t),
            timeout))

    async def fork(self, version: int = 0, new_id: str = "", *,
                   labels: Optional[Dict[str, str]] = None,
                   ttl_seconds: Optional[int] = None,
                   request_id: Optional[str] = None,
                   durability: int = pb.DURABILITY_UNSPECIFIED,
                   timeout: Optional[float] = None) -> "AsyncSession":
        """As Session.fork: version 1 is committed at `durability`."""
        info = await self.client.create_session(new_id, fork_from=self.id,
                                                fork_version=version,
                                                labels=labels,
                                                ttl_seconds=ttl_seconds,
                                                request_id=request_id,
                                                durability=durability,
                                                timeout=timeout)
        return AsyncSession(self.client, info.session_id)

    async def versions(self, *, timeout: Optional[float] = None
                       ) -> List[VersionInfo]:
        req = pb.ListVersionsRequest(session_id=self.id)
        deadline = _deadline(timeout)
        out = []
        while True:
            page = await self.client._unary(
                lambda st, md, t: st.sessions.ListVersions(
                    req, metadata=md, timeout=t), deadline=deadline)
            out += [VersionInfo.from_proto(v) for v in page.versions]
            if not page.next_page_token:
                return out
            _check_next_page(req, page, "ListVersions")
            req.page_token = page.next_page_token

    async def rollback(self, version: int,
                       expected_version: Optional[int] = None, *,
                       request_id: Optional[str] = None,
                       durability: int = pb.DURABILITY_UNSPECIFIED,
                       timeout: Optional[float] = None) -> SessionInfo:
        """As Session.rollback (set expected_version to make it exact;
        request_id: one for every attempt, None a new one per call)."""
        req = _rollback_request(self.id, version, expected_version,
                                durability, request_id)
        return SessionInfo.from_proto(await self.client._unary(
            lambda st, md, t: st.sessions.RollbackSession(
                req, metadata=md, timeout=t), timeout))

    async def export(self, version: int = 0, *,
                     timeout: Optional[float] = None) -> ExportedState:
        req = pb.ExportStateRequest(session_id=self.id, version=version)

        async def call(st, md, t, guard):
            stream = st.sessions.ExportState(req, metadata=md, timeout=t)
            guard.attach(stream)
            parts = []
            async for part in stream:
                guard.progress()
                parts.append(part)
            guard.disarm()  # the stream is over: the CRCs are not its time
            # Off the event loop: checking a large blob's CRCs takes a while.
            return await asyncio.get_running_loop().run_in_executor(
                None, _assemble_export, parts, self.id)
        return await self.client._transfer(call, timeout)

    async def import_state(self, state: ExportedState, *,
                           expected_version: Optional[int] = None,
                           request_id: Optional[str] = None,
                           durability: int = pb.DURABILITY_UNSPECIFIED,
                           timeout: Optional[float] = None) -> SessionInfo:
        """As Session.import_state (set expected_version to make it
        exact; request_id as rollback's)."""
        blob = _state_blob(state)
        header = _import_header(self.id, pb.IMPORT_MODE_NEW_VERSION, state,
                                durability=durability,
                                expected_version=expected_version,
                                request_id=request_id)
        return SessionInfo.from_proto(await self.client._import(
            header, blob, timeout))

    async def update(self, *, labels: Optional[Dict[str, str]] = None,
                     ttl_seconds: Optional[int] = None,
                     timeout: Optional[float] = None) -> SessionInfo:
        """Replaces the labels and/or the TTL given (the others are kept)."""
        req = _update_request(self.id, labels, ttl_seconds)
        return SessionInfo.from_proto(await self.client._unary(
            lambda st, md, t: st.sessions.UpdateSession(
                req, metadata=md, timeout=t), timeout))

    async def delete(self, allow_missing: bool = False, *,
                     timeout: Optional[float] = None) -> None:
        """As Session.delete: SESSION_NOT_FOUND on a retry after an attempt
        whose outcome is unknown is success (that attempt deleted it)."""
        req = pb.DeleteSessionRequest(request_id=new_request_id(),
                                      session_id=self.id,
                                      allow_missing=allow_missing)
        unknown = False  # an earlier attempt may have deleted it

        async def call(st, md, t):
            nonlocal unknown
            try:
                await st.sessions.DeleteSession(req, metadata=md, timeout=t)
            except grpc.RpcError as e:
                err = StatestreamError.from_rpc_error(e)
                if _not_found_after_unknown(err, unknown):
                    return
                unknown = unknown or _outcome_unknown(err)
                raise
        await self.client._unary(call, timeout)
