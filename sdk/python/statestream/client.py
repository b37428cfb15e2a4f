# SPDX-License-Identifier: Apache-2.0
"""Synchronous client: Client, Session, AppendWriter, GenerateStream.

Resume protocol (docs/API.md): a retryable failure (UNAVAILABLE, a broken
connection, ABORTED other than SESSION_BUSY, ...) is retried on the next
target with exponential backoff, at most `max_attempts` times in a row.
AppendWriter resends every request not yet acknowledged as committed at its
original input offset (the server acknowledges what it already has as a
duplicate), so nothing is lost or applied twice. GenerateStream reissues the
same request (same request_id and seed: the same output), pinned to the
input_offset the generation started from, and skips what it already
delivered.
"""
from __future__ import annotations

import datetime
import random
import threading
import time
import weakref
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Union

import grpc

from statestream.channel import (  # noqa: F401 (re-exported)
    DEFAULT_CHANNEL_OPTIONS, MIN_RECEIVE_MESSAGE_LENGTH, _close_channels,
    _setup, _Stubs)
from statestream.errors import (StatestreamError, _local_error, blames_target,
                                client_closed_error, is_retryable,
                                retry_after)
from statestream.messages import (_assemble_export, _create_request,
                                  _generate_request, _import_header,
                                  _import_requests, _list_request,
                                  _rollback_request, _score_request,
                                  _state_blob, _update_request, _watched,
                                  new_request_id)
from statestream.types import (AppendAck, ExportedState, GenerateResult,
                               ScoreResult, SessionInfo, VersionInfo)
from statestream.v1 import statestream_pb2 as pb
from statestream.transfer import (_StallGuard, _cap, _import_budget,
                                  _stalled_error)
from statestream.streams import (AppendWriter, GenerateStream, _deadline,
                                 _durability, _left, _str_field, _timeout,
                                 _utf8, _writer_sizes)

__all__ = ["AppendWriter", "Client", "GenerateStream", "Session",
           "new_request_id"]


_closed_error = client_closed_error  # CANCELLED "client closed"


class _ClientBase:
    """The retry policy and call plumbing Client and AsyncClient share."""

    _closed = False

    def _check_open(self) -> None:
        """Raises CANCELLED "client closed" after close()."""
        if self._closed:
            raise _closed_error()

    def _backoff(self, error: StatestreamError, attempt: int,
                 deadline: Optional[float]) -> float:
        """The backoff before attempt+1 after `error`, or raises `error`:
        not retryable, out of attempts, or past `deadline` after the
        backoff. After close(): CANCELLED "client closed", not retried (the
        closed channel cancelled the call)."""
        if not is_retryable(error):
            raise error
        if self._closed:
            raise _closed_error()
        if attempt >= self.max_attempts:
            raise error
        # (2 ** 1024 is past a float: the exponent stops at 64.)
        backoff = min(self.initial_backoff * 2.0 ** min(attempt - 1, 64),
                      self.max_backoff) * random.uniform(0.8, 1.2)
        backoff = max(backoff, retry_after(error))
        if deadline is not None and time.monotonic() + backoff >= deadline:
            raise error
        return backoff

    def _attempt_timeout(self, deadline: Optional[float],
                         unary: bool = True) -> Optional[float]:
        """One attempt's gRPC timeout: the client's `timeout` (unary calls
        only), capped by what is left before `deadline`."""
        t = self.timeout if unary else None
        if deadline is not None:
            left = _left(deadline)
            t = left if t is None else min(t, left)
        return t


def _blames_target_by(error: StatestreamError,
                      deadline: Optional[float]) -> bool:
    """blames_target, except for the caller's own `deadline` (monotonic)
    passing: a short deadline on a long call says nothing against the
    target, and the shared client would send every caller elsewhere."""
    if (error.code == grpc.StatusCode.DEADLINE_EXCEEDED and
            deadline is not None and time.monotonic() >= deadline):
        return False
    return blames_target(error)


def _check_next_page(req, page, rpc: str) -> None:
    """INTERNAL/INTERNAL (origin=sdk) when a server names the page it just
    gave as the next one: the listing would be read forever. Its reason
    makes it not retryable (a caller's retry loop would list forever
    too)."""
    if page.next_page_token == req.page_token:
        raise _local_error(grpc.StatusCode.INTERNAL, "INTERNAL",
                           f"{rpc}: the server repeated its page token")


def _outcome_unknown(error: StatestreamError) -> bool:
    """Whether a failed attempt may have been applied: a retried failure
    other than an admission refusal (RESOURCE_EXHAUSTED: never started)."""
    return (is_retryable(error) and
            error.code != grpc.StatusCode.RESOURCE_EXHAUSTED)


def _not_found_after_unknown(error: StatestreamError,
                             unknown: bool) -> bool:
    """A delete's SESSION_NOT_FOUND on a retry after an attempt whose
    outcome is unknown: that attempt deleted it (a retry the server no
    longer recognises, e.g. on another worker, finds it gone)."""
    return (unknown and error.code == grpc.StatusCode.NOT_FOUND and
            error.reason == "SESSION_NOT_FOUND")


class Client(_ClientBase):
    """Connection to one or more statestream targets (gateways or `serve`).

    Thread-safe. Use as a context manager or call close() (a client left
    open is closed when it is collected, or when the interpreter exits).
    `options` are
    gRPC channel arguments that replace DEFAULT_CHANNEL_OPTIONS of the same
    name; by default HTTP/2 keepalive pings an open call's connection every
    20 s and fails its calls (UNAVAILABLE, then resumed on the next target)
    when a ping goes unanswered for 10 s, e.g.
    options=[("grpc.keepalive_time_ms", 60000)] to ping less often;
    grpc.max_receive_message_length (8 MiB by default) may not go below
    MIN_RECEIVE_MESSAGE_LENGTH (4 MiB) other than to -1 (unlimited).
    `timeout` bounds each unary attempt (None or inf: no bound); an
    export or import attempt ends once it goes `timeout` without moving a
    1 MiB chunk (an import also within `timeout` per chunk, plus two).
    Settings no call could run with raise ValueError here (TypeError for
    a non-number): max_attempts below 1, a timeout of 0 or less, a NaN or
    negative backoff, an infinite initial_backoff; and so do
    root_certificates, private_key, certificate_chain or tls_server_name
    without tls=True (they would be ignored on a plaintext channel)."""

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
               max_attempts, initial_backoff, max_backoff, options, grpc)
        self._lock = threading.Lock()
        # The events the backoffs in progress wait on: close() sets them.
        self._wakers: set = set()
        # The writers' open Append calls (streams._AppendCall): close()
        # ends them, else gRPC's thread that consumes one's requests waits
        # on its queue for as long as the writer is referenced. Weak: a
        # dropped writer's call ends by its finalizer.
        self._append_calls: weakref.WeakSet = weakref.WeakSet()
        # Runs once: from close(), when the client is collected, or at exit.
        self._release = weakref.finalize(
            self, _close_channels, [s.channel for s in self._stubs])

    # -- plumbing ----------------------------------------------------------

    def close(self) -> None:
        """Closes the channels. Calls in progress (one waiting out a
        backoff included), and every later call, fail CANCELLED "client
        closed" (a StatestreamError; not retried, is_retryable() is False);
        a writer keeps that error."""
        with self._lock:
            self._closed = True
            wakers = list(self._wakers)
            calls = list(self._append_calls)
        for wake in wakers:
            wake.set()
        for call in calls:
            call.cancel()
        self._release()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _opened(self, call) -> None:
        """Keeps a writer's new Append call (streams._AppendCall) for
        close() to end; if close() came meanwhile, ends it and raises
        CANCELLED "client closed"."""
        with self._lock:
            if not self._closed:
                self._append_calls.add(call)
                return
        call.cancel()
        raise _closed_error()

    def _current_stubs(self) -> _Stubs:
        with self._lock:
            return self._stubs[self._current]

    def _rotate(self, failed: _Stubs,
                error: Optional[StatestreamError] = None,
                deadline: Optional[float] = None) -> None:
        """Moves to the next target after `error` on `failed`, unless the
        error says nothing against the target (blames_target) or is the
        caller's own `deadline` (monotonic) passing, as C++'s Rotate."""
        if error is not None and not _blames_target_by(error, deadline):
            return
        with self._lock:
            if self._stubs[self._current] is failed:
                self._current = (self._current + 1) % len(self._stubs)

    def _retry_or_raise(self, error: StatestreamError, attempt: int,
                        deadline: Optional[float],
                        wake: Optional[threading.Event] = None) -> None:
        """Sleeps the backoff before attempt+1, or raises `error` (see
        _ClientBase._backoff). The sleep ends early when `wake` is set (a
        stream's cancel()) or the client is closed, which raises CANCELLED
        "client closed"."""
        backoff = self._backoff(error, attempt, deadline)
        if wake is None:
            wake = threading.Event()
        with self._lock:
            if self._closed:
                raise _closed_error()
            self._wakers.add(wake)
        try:
            wake.wait(backoff)
        finally:
            with self._lock:
                self._wakers.discard(wake)
        self._check_open()

    def _invoke(self, fn, *args, **kwargs):
        """fn(*args, **kwargs), which starts a call. After close():
        CANCELLED "client closed" (gRPC raises ValueError for a closed
        channel)."""
        self._check_open()
        try:
            return fn(*args, **kwargs)
        except ValueError:
            if self._closed:
                raise _closed_error() from None
            raise

    def _unary(self, call, timeout: Optional[float] = None,
               deadline: Optional[float] = None):
        """Runs call(stubs, metadata, timeout) with retries. `timeout`
        bounds the whole operation, or `deadline` (monotonic) does (default:
        none besides each attempt's)."""
        if deadline is None:
            deadline = _deadline(timeout)
        return self._attempts(lambda st, md, t, guard: call(st, md, t),
                              deadline, self._attempt_timeout, None)

    def _transfer(self, call, timeout: Optional[float] = None,
                  budget: Optional[float] = None):
        """As _unary for ExportState and ImportState: runs call(stubs,
        metadata, timeout, guard) with retries, each attempt bounded by
        `budget` (None: none) and ended by `guard` once it goes the
        client's timeout without guard.progress() (transfer.py)."""
        return self._attempts(
            call, _deadline(timeout),
            lambda d: _cap(self._attempt_timeout(d, unary=False), budget),
            self.timeout)

    def _attempts(self, call, deadline: Optional[float], attempt_timeout,
                  idle: Optional[float]):
        """The retry loop: call(stubs, metadata, attempt_timeout(deadline),
        guard), with a stall guard watching `idle` (None: none)."""
        for attempt in range(1, self.max_attempts + 1):
            stubs = self._current_stubs()
            guard = _StallGuard(idle)
            try:
                return self._invoke(call, stubs, self._metadata,
                                    attempt_timeout(deadline), guard)
            except (grpc.RpcError, grpc.FutureCancelledError) as e:
                # A cancelled future (an import's) raises
                # FutureCancelledError: only the guard cancels one. Its
                # verdict is in once its thread has ended.
                guard.close()
                if guard.stalled:
                    err = _stalled_error(idle)
                elif isinstance(e, grpc.RpcError):
                    err = StatestreamError.from_rpc_error(e)
                else:
                    raise
                self._rotate(stubs, err, deadline)
                self._retry_or_raise(err, attempt, deadline)
            finally:
                guard.close()
        raise AssertionError("unreachable")

    # -- sessions ------------------------------------------------------------

    def create_session(self, session_id: str = "", *, model_id: str = "",
                       labels: Optional[Dict[str, str]] = None,
                       ttl_seconds: Optional[int] = None,
                       fork_from: Optional[str] = None, fork_version: int = 0,
                       request_id: Optional[str] = None,
                       durability: int = pb.DURABILITY_UNSPECIFIED,
                       timeout: Optional[float] = None) -> SessionInfo:
        """Creates a session (or a fork of `fork_from`'s version
        `fork_version`, 0: the head) and commits its version 1 at
        `durability`. A retry with the same request_id gets the session
        back."""
        req = _create_request(session_id, model_id, labels, ttl_seconds,
                              fork_from, fork_version, request_id, durability)
        s = self._unary(lambda st, md, t: st.sessions.CreateSession(
            req, metadata=md, timeout=t), timeout)
        return SessionInfo.from_proto(s)

    def session(self, session_id: str) -> "Session":
        """A handle; makes no call."""
        return Session(self, session_id)

    def list_sessions(self, labels: Optional[Dict[str, str]] = None,
                      model_id: str = "", *,
                      timeout: Optional[float] = None
                      ) -> Iterator[SessionInfo]:
        """The tenant's sessions carrying all of `labels` (bound to
        `model_id` if given), fetched page by page as the iteration goes;
        `timeout` bounds the whole listing from its first page. The
        arguments are checked at the call, before the iteration."""
        req = _list_request(labels, model_id)
        return self._list_pages(req, _timeout(timeout))

    def _list_pages(self, req, timeout: Optional[float]
                    ) -> Iterator[SessionInfo]:
        deadline = _deadline(timeout)  # from the first page
        while True:
            page = self._unary(lambda st, md, t: st.sessions.ListSessions(
                req, metadata=md, timeout=t), deadline=deadline)
            for s in page.sessions:
                yield SessionInfo.from_proto(s)
            if not page.next_page_token:
                return
            _check_next_page(req, page, "ListSessions")
            req.page_token = page.next_page_token

    def import_session(self, state: ExportedState, session_id: str = "", *,
                       labels: Optional[Dict[str, str]] = None,
                       ttl_seconds: Optional[int] = None,
                       request_id: Optional[str] = None,
                       durability: int = pb.DURABILITY_UNSPECIFIED,
                       timeout: Optional[float] = None) -> SessionInfo:
        """A new session holding `state` (version 1, at `durability`). A
        retry with the same request_id (after this call gave up) gets the
        session back instead of a second one, as create_session's does."""
        blob = _state_blob(state)
        header = _import_header(session_id, pb.IMPORT_MODE_CREATE, state,
                                labels=labels, ttl_seconds=ttl_seconds,
                                durability=durability, request_id=request_id)
        return SessionInfo.from_proto(self._import(header, blob, timeout))

    def _import(self, header, blob: bytes, timeout: Optional[float] = None):
        def call(st, md, t, guard):
            future = st.sessions.ImportState.future(
                _watched(_import_requests(header, blob), guard),
                metadata=md, timeout=t)
            guard.attach(future)
            return future.result()
        return self._transfer(call, timeout,
                              _import_budget(self.timeout, header, blob))

    def list_models(self, *, timeout: Optional[float] = None) -> List[object]:
        """The served models (statestream.v1.Model messages)."""
        r = self._unary(lambda st, md, t: st.models.ListModels(
            pb.ListModelsRequest(), metadata=md, timeout=t), timeout)
        return list(r.models)

    def get_model(self, model_id: str, *,
                  timeout: Optional[float] = None) -> object:
        """One served model (a statestream.v1.Model message);
        NOT_FOUND/MODEL_NOT_FOUND for an id no server serves."""
        req = pb.GetModelRequest(model_id=_str_field(model_id, "model_id"))
        return self._unary(lambda st, md, t: st.models.GetModel(
            req, metadata=md, timeout=t), timeout)


class Session:
    """A handle on one session. Cheap; holds no server resources. Every call
    takes `timeout=`: seconds for the whole operation, retries included
    (None or inf: no bound besides each attempt's, the client's `timeout`;
    NaN or negative: ValueError). Every `durability=`, here and in the
    client's methods, takes a Durability or its name ("DURABILITY_FSYNC",
    as results report it); an unknown one is a ValueError, before any
    call."""

    def __init__(self, client: Client, session_id: str):
        self.client = client
        self.id = _str_field(session_id, "session id")

    def __repr__(self) -> str:
        return f"Session({self.id!r})"

    def get(self, timeout: Optional[float] = None) -> SessionInfo:
        req = pb.GetSessionRequest(session_id=self.id)
        return SessionInfo.from_proto(self.client._unary(
            lambda st, md, t: st.sessions.GetSession(req, metadata=md,
                                                     timeout=t), timeout))

    def writer(self, *, window: int = 32, max_chunk_bytes: int = 256 << 10,
               durability: int = pb.DURABILITY_UNSPECIFIED,
               timeout: Optional[float] = None,
               start_offset: Optional[int] = None) -> "AppendWriter":
        """An exactly-once writer. Use as a context manager: a clean exit
        closes (commits) it.

        Its first request goes at `start_offset`, the session's
        input_offset where this input begins; None (default): the
        session's applied input_offset, read now (GetSession). To retry
        input after a writer or append() raised, give the offset it began
        at: what the session already has of it is acknowledged as a
        duplicate instead of applied twice (a session short of
        start_offset fails POSITION_MISMATCH). `window`: requests in
        flight before reading acks, 1 to MAX_WINDOW (64: the server stops
        reading a writer that leaves 64 acks unread); larger values are
        clamped. `max_chunk_bytes`: text per request, 1 to 1 MiB (larger
        values are clamped). `timeout` bounds the writer's whole life from
        now, the GetSession included."""
        _writer_sizes(window, max_chunk_bytes)
        durability = _durability(durability)
        deadline = _deadline(timeout)
        offset = self.get(timeout=_left(deadline)).input_offset \
            if start_offset is None else start_offset
        return AppendWriter(self.client, self.id, offset, window=window,
                            max_chunk_bytes=max_chunk_bytes,
                            durability=durability, timeout=_left(deadline))

    def append(self, text: Union[str, bytes] = b"",
               tokens: Optional[Sequence[int]] = None,
               flush: bool = True, *, start_offset: Optional[int] = None,
               durability: int = pb.DURABILITY_UNSPECIFIED,
               timeout: Optional[float] = None) -> AppendAck:
        """Appends (text, then tokens) and commits in one call; returns the
        final ack. To retry an append that raised, pass the same input with
        the start_offset it began at (`info.input_offset` read before the
        first try): the retry cannot apply it twice."""
        data = b"" if text is None else _utf8(text, "text")
        with self.writer(start_offset=start_offset, durability=durability,
                         timeout=timeout) as w:
            if data:
                # Whole, before anything is sent (a flush in a character
                # would leave the session holding the text before it).
                w._write_text(data, flush or bool(tokens))
            if tokens:
                w.write_tokens(tokens)
            if flush:
                w.flush()
            return w.close()

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
                 logprobs: bool = False,
                 top_logprobs: int = 0, request_id: Optional[str] = None,
                 expected_input_offset: Optional[int] = None,
                 max_duration: Union[float, datetime.timedelta, None] = None,
                 timeout: Optional[float] = None) -> "GenerateStream":
        """An iterator of GenerateChunk; `.done` once exhausted.

        The prompt is `prompt` (text) or `prompt_tokens`, not both
        (ValueError). Sampling: `temperature`, `top_p`, `top_k`, `min_p`,
        `presence_penalty`, `frequency_penalty`, `penalty_decay`,
        `logit_bias` ({token: bias}; <= -1e9 bans it) and `seed`, as
        SamplingParams. `stop` is one stop string (stop="\\n\\n") or
        several; `stop_tokens` one token id or several. `max_duration`
        (seconds or a timedelta, 0 to 315,576,000,000 s: else ValueError)
        stops gracefully (FINISH_REASON_CANCELLED) after that much
        generation time. `durability`: of the commit
        (commit=True). With logprobs=True each chunk's `logprobs` /
        `token_logprobs` are parallel to its tokens (None for a token
        replayed without one), `top_logprobs` alternatives in the latter.

        With commit=True and no request_id of the caller's, the request
        pins expected_input_offset (read now unless given; `timeout`
        covers that read), so its resumes can never apply the generation
        twice. A caller that gives request_id retries by calling again with
        the same id (and the same arguments): the server replays the
        committed generation, which a pin read anew would not match (give
        expected_input_offset to pin it yourself)."""
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
        deadline = _deadline(timeout)
        if commit and expected_input_offset is None and not request_id:
            req.expected_input_offset = self.get(
                timeout=_left(deadline)).input_offset
        return GenerateStream(self.client, req, _left(deadline))

    def generate_text(self, prompt=None, **kwargs) -> GenerateResult:
        """generate(), collected: the tokens, the text and `done` (and
        the logprobs, parallel to the tokens, with logprobs=True)."""
        return _collect(self.generate(prompt, **kwargs))

    def score(self, text: Union[str, bytes, None] = None, *,
              tokens: Optional[Sequence[int]] = None, version: int = 0,
              top_logprobs: int = 0,
              expected_input_offset: Optional[int] = None,
              timeout: Optional[float] = None) -> ScoreResult:
        """Log-probabilities of a continuation, given as `text` or as
        `tokens` (exactly one: else ValueError), from the applied state or
        committed `version`. `top_logprobs` (0-20): also the most likely
        tokens at each step (ScoredToken.top)."""
        req = _score_request(self.id, text, tokens, version, top_logprobs,
                             expected_input_offset)
        return ScoreResult.from_proto(self.client._unary(
            lambda st, md, t: st.streams.Score(req, metadata=md, timeout=t),
            timeout))

    def fork(self, version: int = 0, new_id: str = "", *,
             labels: Optional[Dict[str, str]] = None,
             ttl_seconds: Optional[int] = None,
             request_id: Optional[str] = None,
             durability: int = pb.DURABILITY_UNSPECIFIED,
             timeout: Optional[float] = None) -> "Session":
        """A new session (`new_id`, empty: server-generated) starting from
        committed `version` (0: the head) of this one, with `labels` and
        `ttl_seconds` as create_session takes them; its version 1 is
        committed at `durability` (CreateSession with fork_from). A retry
        with the same request_id gets the same fork back."""
        info = self.client.create_session(new_id, fork_from=self.id,
                                          fork_version=version,
                                          labels=labels,
                                          ttl_seconds=ttl_seconds,
                                          request_id=request_id,
                                          durability=durability,
                                          timeout=timeout)
        return Session(self.client, info.session_id)

    def versions(self, *, timeout: Optional[float] = None
                 ) -> List[VersionInfo]:
        """Every kept version, newest first (all pages; `timeout` bounds
        them together)."""
        req = pb.ListVersionsRequest(session_id=self.id)
        deadline = _deadline(timeout)
        out = []
        while True:
            page = self.client._unary(
                lambda st, md, t: st.sessions.ListVersions(
                    req, metadata=md, timeout=t), deadline=deadline)
            out += [VersionInfo.from_proto(v) for v in page.versions]
            if not page.next_page_token:
                return out
            _check_next_page(req, page, "ListVersions")
            req.page_token = page.next_page_token

    def rollback(self, version: int,
                 expected_version: Optional[int] = None, *,
                 request_id: Optional[str] = None,
                 durability: int = pb.DURABILITY_UNSPECIFIED,
                 timeout: Optional[float] = None) -> SessionInfo:
        """Commits version `version`'s state as the new head (at
        `durability`); with expected_version, only if that is the head.
        A retry that reaches another worker (or a restarted one) finds
        the version it committed while that is kept; set expected_version
        to make the call exact beyond that. Every attempt sends one
        request_id (None: a new one per call); give your own to retry a
        call that gave up under it."""
        req = _rollback_request(self.id, version, expected_version,
                                durability, request_id)
        return SessionInfo.from_proto(self.client._unary(
            lambda st, md, t: st.sessions.RollbackSession(
                req, metadata=md, timeout=t), timeout))

    def export(self, version: int = 0, *,
               timeout: Optional[float] = None) -> ExportedState:
        req = pb.ExportStateRequest(session_id=self.id, version=version)

        def call(st, md, t, guard):
            stream = st.sessions.ExportState(req, metadata=md, timeout=t)
            guard.attach(stream)
            parts = []
            for part in stream:
                guard.progress()
                parts.append(part)
            guard.disarm()  # the stream is over: the CRCs are not its time
            return _assemble_export(parts, self.id)
        return self.client._transfer(call, timeout)

    def import_state(self, state: ExportedState, *,
                     expected_version: Optional[int] = None,
                     request_id: Optional[str] = None,
                     durability: int = pb.DURABILITY_UNSPECIFIED,
                     timeout: Optional[float] = None) -> SessionInfo:
        """Commits `state` as the session's next version (at `durability`;
        with expected_version, only if that is the head). A retry that
        reaches another worker (or a restarted one) finds the version it
        committed while that is kept; set expected_version to make the
        call exact beyond that. request_id: as rollback's."""
        blob = _state_blob(state)
        header = _import_header(self.id, pb.IMPORT_MODE_NEW_VERSION, state,
                                durability=durability,
                                expected_version=expected_version,
                                request_id=request_id)
        return SessionInfo.from_proto(
            self.client._import(header, blob, timeout))

    def update(self, *, labels: Optional[Dict[str, str]] = None,
               ttl_seconds: Optional[int] = None,
               timeout: Optional[float] = None) -> SessionInfo:
        """Replaces the labels and/or the TTL given (the others are kept)."""
        req = _update_request(self.id, labels, ttl_seconds)
        return SessionInfo.from_proto(self.client._unary(
            lambda st, md, t: st.sessions.UpdateSession(
                req, metadata=md, timeout=t), timeout))

    def delete(self, allow_missing: bool = False, *,
               timeout: Optional[float] = None) -> None:
        """Deletes the session and all its versions. SESSION_NOT_FOUND
        raises, unless allow_missing; but on a retry after an attempt whose
        outcome is unknown (UNAVAILABLE, a deadline, a broken connection)
        it means that attempt deleted the session, and delete() returns."""
        req = pb.DeleteSessionRequest(request_id=new_request_id(),
                                      session_id=self.id,
                                      allow_missing=allow_missing)
        unknown = False  # an earlier attempt may have deleted it

        def call(st, md, t):
            nonlocal unknown
            try:
                st.sessions.DeleteSession(req, metadata=md, timeout=t)
            except grpc.RpcError as e:
                err = StatestreamError.from_rpc_error(e)
                if _not_found_after_unknown(err, unknown):
                    return
                unknown = unknown or _outcome_unknown(err)
                raise
        self.client._unary(call, timeout)


class _Collected:
    """A GenerateResult built chunk by chunk (generate_text, sync and
    async)."""

    def __init__(self):
        self.tokens, self.raw, self.lps, self.tlps = [], b"", [], []

    def add(self, c) -> None:
        self.tokens += c.tokens
        self.raw += c.raw
        self.lps += c.logprobs
        self.tlps += c.token_logprobs

    def result(self, done) -> GenerateResult:
        return GenerateResult(self.tokens, self.raw.decode("utf-8", "replace"),
                              done, self.lps, self.tlps)


def _collect(stream) -> GenerateResult:
    collected = _Collected()
    for c in stream:
        collected.add(c)
    return collected.result(stream.done)
