# SPDX-License-Identifier: Apache-2.0
"""The SDK against a small in-process fake server that injects faults the
real one does not make on demand: a request that fails at every attempt,
malformed error details. Also the client's default channel options."""
import asyncio
import os
import signal
import socket
import threading
import time
from concurrent import futures

import grpc
import grpc.aio
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from statestream import (Client, ExportedState, StatestreamError,
                         TokenLogprob, TopLogprob)
from statestream.aio import AsyncClient
from statestream.client import _crc32c
from statestream.errors import is_retryable
from statestream.v1 import statestream_pb2 as pb
from statestream.v1 import statestream_pb2_grpc as rpc
from test_writer import pause

MAX_CALLS = 30  # the fake gives up (non-retryable) after this many Appends


class FakeServer(rpc.SessionsServicer, rpc.StreamsServicer):
    """Sessions.GetSession and Streams.Append. Append acks each request
    (resends as duplicates, never committing) except a text "bad", which
    fails UNAVAILABLE at every attempt. Session "malformed" fails with
    an unparsable grpc-status-details-bin. GetSession, Generate,
    DeleteSession, ImportState: see there."""

    def __init__(self):
        self.append_calls = 0
        self.applied = 0
        self.generate_requests = []  # every Generate request received
        self.generate_cancelled = 0  # Generate calls the client cancelled
        self.delete_requests = []  # every DeleteSession request received
        self.get_requests = []  # every GetSession request received
        self.imported_chunks = []  # every ImportState StateChunk received
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        rpc.add_SessionsServicer_to_server(self, self.server)
        rpc.add_StreamsServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def GetSession(self, request, context):
        """Session "slow": answers after 30 s, or when the client cancels.
        "overloaded": refused OVERLOADED with a 20 s retry_after_ms hint.
        Others: input_offset 0."""
        self.get_requests.append(request)
        if request.session_id == "malformed":
            context.set_trailing_metadata((
                ("grpc-status-details-bin", b"\x1a\x05ab"),))  # truncated
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          "details that do not parse")
        if request.session_id == "overloaded":
            abort_with_reason(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                              "OVERLOADED", "queue full",
                              {"retry_after_ms": "20000"})
        if request.session_id == "slow":
            deadline = time.monotonic() + 30
            while context.is_active() and time.monotonic() < deadline:
                time.sleep(0.01)
        return pb.Session(session_id=request.session_id, input_offset=0)

    def ImportState(self, request_iterator, context):
        """Keeps every chunk (in imported_chunks: the test checks them,
        without loading the process meanwhile); the session, version 2."""
        header = None
        for r in request_iterator:
            if r.HasField("header"):
                header = r.header
            else:
                self.imported_chunks.append(r.chunk)
        return pb.Session(session_id=header.session_id, version=2)

    def ExportState(self, request, context):
        # Session "reordered": chunk 1 before 0; "corrupt": a wrong CRC.
        yield pb.ExportStateResponse(header=pb.StateHeader(total_bytes=8))
        for i in (1, 0) if request.session_id == "reordered" else (0, 1):
            crc = 0 if request.session_id == "corrupt" and i == 1 else None
            yield pb.ExportStateResponse(chunk=pb.StateChunk(
                index=i, data=b"abcd",
                crc32c=crc if crc is not None else _crc32c(b"abcd")))

    def Generate(self, request, context):
        """Session "done": at once a `done` with the fields below. Session
        "unavailable-first": the first call fails UNAVAILABLE, later ones
        are as any other session's: one chunk, then nothing until the
        client cancels (counted in generate_cancelled)."""
        self.generate_requests.append(request)
        if request.session_id == "done":
            yield pb.GenerateResponse(done=pb.GenerateDone(
                finish_reason=pb.FINISH_REASON_STOP_STRING, stop_token=7,
                stop_string="\n\n", usage=pb.Usage(input_tokens=2,
                                                    output_tokens=3),
                committed=True, replayed=True, position=5, input_offset=6,
                version=4, durability=pb.DURABILITY_FSYNC))
            return
        if request.session_id in ("pinned", "moved", "shorter"):
            yield from self._pinned_generate(request, context)
            return
        if request.session_id == "replayed-logprobs":
            yield from self._replayed_logprobs(request, context)
            return
        if (request.session_id == "unavailable-first" and
                len(self.generate_requests) == 1):
            context.abort(grpc.StatusCode.UNAVAILABLE, "injected")
        yield pb.GenerateResponse(chunk=pb.GenerateChunk(
            index=0, tokens=[1], text_utf8=b"a"))
        deadline = time.monotonic() + 30
        while context.is_active() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not context.is_active():
            self.generate_cancelled += 1

    def _pinned_generate(self, request, context):
        """The first call sends tokens [1, 2] started at input_offset 7,
        then fails UNAVAILABLE. Later calls: "pinned" repeats them and ends
        if the request pins offset 7; "moved" (the session moved on) fails
        POSITION_MISMATCH as the server does when the pin no longer
        holds; "shorter" resumes with [1] and ends (it stopped sooner)."""
        calls = sum(r.session_id == request.session_id
                    for r in self.generate_requests)
        if calls == 1:
            yield pb.GenerateResponse(chunk=pb.GenerateChunk(
                index=0, tokens=[1, 2], text_utf8=b"ab",
                start_input_offset=7))
            context.abort(grpc.StatusCode.UNAVAILABLE, "injected")
        if request.session_id == "shorter":
            yield pb.GenerateResponse(chunk=pb.GenerateChunk(
                index=0, tokens=[1], text_utf8=b"a", start_input_offset=7))
            yield pb.GenerateResponse(done=pb.GenerateDone(
                finish_reason=pb.FINISH_REASON_STOP_TOKEN))
            return
        if (request.session_id == "moved" or
                not request.HasField("expected_input_offset") or
                request.expected_input_offset != 7):
            info = error_details_pb2.ErrorInfo(
                reason="POSITION_MISMATCH", domain="statestream.dev",
                metadata={"input_offset": "9"})
            status = status_pb2.Status(code=9, message="moved")
            status.details.add().Pack(info)
            context.set_trailing_metadata((
                ("grpc-status-details-bin", status.SerializeToString()),))
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "moved")
        yield pb.GenerateResponse(chunk=pb.GenerateChunk(
            index=0, tokens=[1, 2, 3], text_utf8=b"abc",
            start_input_offset=7))
        yield pb.GenerateResponse(done=pb.GenerateDone(
            finish_reason=pb.FINISH_REASON_MAX_TOKENS))

    def _replayed_logprobs(self, request, context):
        """The first call sends tokens [1, 2] with logprobs (and a top
        alternative each), then fails UNAVAILABLE. The resumed call replays
        [1, 2, 3] from a checkpoint, without logprobs as the server does,
        then samples [4] with its logprob."""
        calls = sum(r.session_id == request.session_id
                    for r in self.generate_requests)
        if calls == 1:
            yield pb.GenerateResponse(chunk=pb.GenerateChunk(
                index=0, tokens=[1, 2], text_utf8=b"ab", start_input_offset=7,
                logprobs=[pb.TokenLogprob(token=1, logprob=-0.5, top=[
                              pb.TopLogprob(token=9, logprob=-0.25)]),
                          pb.TokenLogprob(token=2, logprob=-1.5, top=[
                              pb.TopLogprob(token=8, logprob=-0.75)])]))
            context.abort(grpc.StatusCode.UNAVAILABLE, "injected")
        yield pb.GenerateResponse(chunk=pb.GenerateChunk(
            index=0, tokens=[1, 2, 3], text_utf8=b"abc"))
        yield pb.GenerateResponse(chunk=pb.GenerateChunk(
            index=3, tokens=[4], text_utf8=b"d", logprobs=[
                pb.TokenLogprob(token=4, logprob=-2.5, top=[
                    pb.TopLogprob(token=4, logprob=-2.5)])]))
        yield pb.GenerateResponse(done=pb.GenerateDone(
            finish_reason=pb.FINISH_REASON_MAX_TOKENS))

    def DeleteSession(self, request, context):
        """Session "lost-ack": the first attempt fails UNAVAILABLE (the
        session deleted, the answer lost); later attempts find it gone.
        "overloaded-first": the first attempt is refused OVERLOADED
        (nothing done), later ones find no session. Others: no session."""
        attempt = sum(r.request_id == request.request_id
                      for r in self.delete_requests) + 1
        self.delete_requests.append(request)
        if request.session_id == "lost-ack" and attempt == 1:
            context.abort(grpc.StatusCode.UNAVAILABLE, "injected")
        if request.session_id == "overloaded-first" and attempt == 1:
            abort_with_reason(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                              "OVERLOADED", "queue full")
        if request.allow_missing:
            return pb.DeleteSessionResponse()
        abort_with_reason(context, grpc.StatusCode.NOT_FOUND,
                          "SESSION_NOT_FOUND", "no such session")

    def Append(self, request_iterator, context):
        self.append_calls += 1
        if self.append_calls > MAX_CALLS:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                          "the fake gives up")
        for r in request_iterator:
            if r.text_utf8 == b"bad":
                context.abort(grpc.StatusCode.UNAVAILABLE, "injected")
            end = r.expected_input_offset + len(r.text_utf8)
            if r.session_id == "low-durability":
                # Committed by policy below the level asked (a replica
                # down): MEMORY, whatever the request said.
                self.applied = max(self.applied, end)
                yield pb.AppendResponse(
                    input_offset=self.applied, version=2,
                    committed_input_offset=self.applied,
                    durability=pb.DURABILITY_MEMORY)
                continue
            duplicate = end <= self.applied and len(r.text_utf8) > 0
            self.applied = max(self.applied, end)
            yield pb.AppendResponse(duplicate=duplicate,
                                    input_offset=self.applied, version=1,
                                    committed_input_offset=0)


def abort_with_reason(context, code, reason, message, metadata=None):
    """Ends the call with `code` and an ErrorInfo carrying `reason` (and
    `metadata`), as the server does."""
    info = error_details_pb2.ErrorInfo(reason=reason,
                                       domain="statestream.dev",
                                       metadata=metadata or {})
    status = status_pb2.Status(code=code.value[0], message=message)
    status.details.add().Pack(info)
    context.set_trailing_metadata((
        ("grpc-status-details-bin", status.SerializeToString()),))
    context.abort(code, message)


@pytest.fixture
def fake():
    f = FakeServer()
    yield f
    f.server.stop(None)


def fast_retries():
    return dict(max_attempts=3, initial_backoff=0.001, max_backoff=0.01)


# -- a resent duplicate is not progress --------------------------------------
#
# "a" is acknowledged on every call (a duplicate after the first), then "bad"
# fails. Counting the duplicate's ack as progress reset the failed attempts
# at every call and retried forever; the writer must give up after
# max_attempts calls in a row that made no progress.

def test_duplicates_are_not_progress(fake):
    with Client(fake.address, **fast_retries()) as c:
        w = c.session("s").writer()
        w.write("a")
        w.write("bad")
        with pytest.raises(StatestreamError) as e:
            w.sync()
        assert e.value.code == grpc.StatusCode.UNAVAILABLE
        assert fake.append_calls == 3


def test_async_duplicates_are_not_progress(fake):
    async def main():
        async with AsyncClient(fake.address, **fast_retries()) as c:
            w = await c.session("s").writer()
            await w.write("a")
            await w.write("bad")
            with pytest.raises(StatestreamError) as e:
                await w.sync()
            assert e.value.code == grpc.StatusCode.UNAVAILABLE
            assert fake.append_calls == 3
    asyncio.run(main())


# -- malformed grpc-status-details-bin ---------------------------------------

def test_malformed_status_details_give_a_typed_error(fake):
    with Client(fake.address, **fast_retries()) as c:
        with pytest.raises(StatestreamError) as e:
            c.session("malformed").get()
        assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert e.value.message == "details that do not parse"
        assert e.value.reason == "REASON_UNSPECIFIED"


def test_async_malformed_status_details_give_a_typed_error(fake):
    async def main():
        async with AsyncClient(fake.address, **fast_retries()) as c:
            with pytest.raises(StatestreamError) as e:
                await c.session("malformed").get()
            assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
    asyncio.run(main())


def test_malformed_error_info_gives_a_typed_error():
    status = status_pb2.Status(code=9, message="m")
    status.details.append(any_pb2.Any(
        type_url="type.googleapis.com/google.rpc.ErrorInfo",
        value=b"\x0a\x05ab"))  # truncated

    class Error(grpc.RpcError):
        def code(self):
            return grpc.StatusCode.FAILED_PRECONDITION

        def details(self):
            return "m"

        def trailing_metadata(self):
            return (("grpc-status-details-bin", status.SerializeToString()),)
    e = StatestreamError.from_rpc_error(Error())
    assert e.code == grpc.StatusCode.FAILED_PRECONDITION
    assert e.reason == "REASON_UNSPECIFIED"


# -- channel options ----------------------------------------------------------

def channel_options(monkeypatch, make_client, module):
    seen = []

    def record(target, options=None, **kwargs):
        seen.append(list(options or ()))
        return real(target, options=options, **kwargs)
    real = module.insecure_channel
    monkeypatch.setattr(module, "insecure_channel", record)
    make_client()
    assert len(seen) == 1
    names = [name for name, _ in seen[0]]
    assert len(names) == len(set(names)), names  # no duplicates
    return dict(seen[0])


@pytest.mark.parametrize("aio", [False, True])
def test_keepalive_is_on_by_default_and_overridable(monkeypatch, aio):
    async def make(**kwargs):
        if aio:
            await AsyncClient("127.0.0.1:1", **kwargs).close()
        else:
            Client("127.0.0.1:1", **kwargs).close()
    module = grpc.aio if aio else grpc

    opts = channel_options(monkeypatch, lambda: asyncio.run(make()), module)
    assert opts["grpc.keepalive_time_ms"] == 20000
    assert opts["grpc.keepalive_timeout_ms"] == 10000
    assert opts["grpc.keepalive_permit_without_calls"] == 0
    assert opts["grpc.http2.max_pings_without_data"] == 0

    monkeypatch.undo()
    opts = channel_options(monkeypatch, lambda: asyncio.run(make(options=[
        ("grpc.keepalive_time_ms", 60000),
        ("grpc.max_receive_message_length", 1 << 20)])), module)
    assert opts["grpc.keepalive_time_ms"] == 60000
    assert opts["grpc.keepalive_timeout_ms"] == 10000
    assert opts["grpc.max_receive_message_length"] == 1 << 20


def test_keepalive_fails_a_call_to_a_paused_server(server):
    # An open Append call that sends nothing while the server is stopped
    # (SIGSTOP: the connection stays up, nothing answers). Keepalive (made
    # frequent here) fails the call, and the writer resumes on a new one.
    # Without keepalive, or with gRPC's default of at most two pings on a
    # call that sends no data, the call would wait for the server.
    with Client(server.address, options=[("grpc.keepalive_time_ms", 600),
                                         ("grpc.keepalive_timeout_ms", 600)
                                         ]) as c:
        c.create_session("k")
        w = c.session("k").writer()
        w.write("x")
        w.sync()
        time.sleep(2.5)  # more pings than gRPC allows without data
        pause(server)
        try:
            time.sleep(2)
        finally:
            os.kill(server._proc.pid, signal.SIGCONT)
        w.write("y")
        assert w.close().committed_input_offset == 2
        assert w.reconnects == 1


# -- a corrupt or reordered export is DATA_LOSS ------------------------------

@pytest.mark.parametrize("session", ["corrupt", "reordered"])
def test_a_corrupt_export_is_data_loss(fake, session):
    with Client(fake.address, **fast_retries()) as c:
        with pytest.raises(StatestreamError) as e:
            c.session(session).export()
        assert e.value.code == grpc.StatusCode.DATA_LOSS

    async def main():
        async with AsyncClient(fake.address, **fast_retries()) as c:
            with pytest.raises(StatestreamError) as e:
                await c.session(session).export()
            assert e.value.code == grpc.StatusCode.DATA_LOSS
    asyncio.run(main())


# -- stop strings --------------------------------------------------------------
#
# A str is one stop string: stop="\n\n" used to become ["\n", "\n"].

@pytest.mark.parametrize("stop,expected", [
    ("\n\n", ["\n\n"]), (["\n\n", "END"], ["\n\n", "END"]),
    (("User:",), ["User:"]), ("", [])])
def test_a_stop_str_is_one_stop_string(fake, stop, expected):
    with Client(fake.address, **fast_retries()) as c:
        c.session("done").generate_text("x", stop=stop, stop_tokens=0)
    assert list(fake.generate_requests[-1].stop_strings) == expected
    assert list(fake.generate_requests[-1].stop_tokens) == [0]

    async def main():
        async with AsyncClient(fake.address, **fast_retries()) as c:
            await c.session("done").generate_text("x", stop=stop,
                                                  stop_tokens=[1, 2])
    asyncio.run(main())
    assert list(fake.generate_requests[-1].stop_strings) == expected
    assert list(fake.generate_requests[-1].stop_tokens) == [1, 2]


def test_generate_done_has_every_field(fake):
    with Client(fake.address, **fast_retries()) as c:
        done = c.session("done").generate_text("x").done
    assert done.finish_reason == "FINISH_REASON_STOP_STRING"
    assert (done.stop_token, done.stop_string) == (7, "\n\n")
    assert (done.input_tokens, done.output_tokens) == (2, 3)
    assert done.committed and done.replayed
    assert (done.position, done.input_offset, done.version) == (5, 6, 4)
    assert done.durability == "DURABILITY_FSYNC"


# -- a resumed side-branch Generate runs on the input it started from --------
#
# The first chunk says where the generation started (start_input_offset); a
# request that pinned no offset is pinned there for its resumes, and a
# resume the server refuses because the session moved on is ABORTED, even
# though nothing delivered disagrees (greedy output can repeat itself).

@pytest.mark.parametrize("aio", [False, True])
def test_a_resume_is_pinned_to_where_the_generation_started(fake, aio):
    if aio:
        async def main():
            async with AsyncClient(fake.address, **fast_retries()) as c:
                return await c.session("pinned").generate_text(max_tokens=3)
        out = asyncio.run(main())
    else:
        with Client(fake.address, **fast_retries()) as c:
            out = c.session("pinned").generate_text(max_tokens=3)
    assert out.tokens == [1, 2, 3] and out.text == "abc"
    first, resumed = fake.generate_requests
    assert not first.HasField("expected_input_offset")
    assert resumed.expected_input_offset == 7


def generate_from(fake, session_id, aio, delivered):
    """Generates 3 tokens on `session_id` of the fake (sync or asyncio
    client), appending what is delivered to `delivered`."""
    async def consume_async():
        async with AsyncClient(fake.address, **fast_retries()) as c:
            async for chunk in c.session(session_id).generate(max_tokens=3):
                delivered.extend(chunk.tokens)

    def consume():
        with Client(fake.address, **fast_retries()) as c:
            for chunk in c.session(session_id).generate(max_tokens=3):
                delivered.extend(chunk.tokens)
    asyncio.run(consume_async()) if aio else consume()


@pytest.mark.parametrize("aio", [False, True])
def test_a_resume_on_a_moved_session_is_aborted(fake, aio):
    delivered = []
    with pytest.raises(StatestreamError) as e:
        generate_from(fake, "moved", aio, delivered)
    assert e.value.code == grpc.StatusCode.ABORTED
    assert e.value.reason == "POSITION_MISMATCH"
    assert "input_offset 7" in e.value.message
    assert delivered == [1, 2]
    assert len(fake.generate_requests) == 2  # not retried further


@pytest.mark.parametrize("aio", [False, True])
def test_a_resume_that_ends_before_the_delivered_output_is_aborted(fake, aio):
    delivered = []
    with pytest.raises(StatestreamError) as e:
        generate_from(fake, "shorter", aio, delivered)
    assert e.value.code == grpc.StatusCode.ABORTED
    assert "before the 2 already delivered" in e.value.message
    assert delivered == [1, 2]


@pytest.mark.parametrize("aio", [False, True])
def test_a_writer_keeps_input_committed_below_its_durability(fake, aio):
    # Acks that cover the input with a version at MEMORY do not let a
    # writer that asked FSYNC drop it: it is kept for a resend (only a
    # version at FSYNC or above, or a checkpoint's ack, releases it).
    async def run_async():
        async with AsyncClient(fake.address, **fast_retries()) as c:
            w = await c.session("low-durability").writer(
                durability=pb.DURABILITY_FSYNC)
            await w.write(b"abc")
            ack = await w.sync()
            return ack, len(w._retained)

    def run_sync():
        with Client(fake.address, **fast_retries()) as c:
            w = c.session("low-durability").writer(
                durability=pb.DURABILITY_FSYNC)
            w.write(b"abc")
            return w.sync(), len(w._retained)
    ack, kept = asyncio.run(run_async()) if aio else run_sync()
    assert ack.committed_input_offset == 3
    assert kept == 1


# -- GenerateStream.cancel() ---------------------------------------------------
#
# The CANCELLED that the caller's own cancel() causes is not a failure: no
# rotation to the next target, no backoff, no new call.

def slow_retries():
    # A backoff long enough to see if the stream sleeps it.
    return dict(max_attempts=5, initial_backoff=10, max_backoff=10)


def test_a_cancelled_generate_is_not_retried(fake):
    with Client([fake.address, fake.address], **slow_retries()) as c:
        stream = c.session("s").generate("x")
        assert next(stream).tokens == [1]
        timer = threading.Timer(0.3, stream.cancel)
        timer.start()
        began = time.monotonic()
        with pytest.raises(StopIteration):
            next(stream)  # waits on the call until cancel()
        assert time.monotonic() - began < 5  # no backoff slept
        timer.join()
        assert c._current == 0  # the target was not given up on
        assert stream.reconnects == 0
        assert len(fake.generate_requests) == 1  # no new call
        with pytest.raises(StopIteration):
            next(stream)
        assert len(fake.generate_requests) == 1
    deadline = time.monotonic() + 10
    while fake.generate_cancelled < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fake.generate_cancelled == 1


def test_a_cancel_during_the_backoff_opens_no_call(fake):
    with Client(fake.address, **slow_retries()) as c:
        stream = c.session("unavailable-first").generate("x")
        timer = threading.Timer(0.3, stream.cancel)
        timer.start()
        began = time.monotonic()
        with pytest.raises(StopIteration):
            next(stream)  # fails, then sleeps the backoff until cancel()
        assert time.monotonic() - began < 5
        timer.join()
        assert len(fake.generate_requests) == 1
        assert stream.reconnects == 0


@pytest.mark.parametrize("how", ["cancel", "aclose"])
def test_async_cancel_during_the_backoff_opens_no_call(fake, how):
    # The async stream slept its whole backoff (asyncio.sleep) after
    # cancel() / aclose(): up to 60 s with a retry_after_ms hint.
    async def main():
        async with AsyncClient(fake.address, **slow_retries()) as c:
            stream = c.session("unavailable-first").generate("x")

            async def cancel_later():
                await asyncio.sleep(0.3)
                if how == "cancel":
                    stream.cancel()
                else:
                    await stream.aclose()
            canceller = asyncio.create_task(cancel_later())
            began = time.monotonic()
            with pytest.raises(StopAsyncIteration):
                # Fails, then waits the backoff until cancel().
                await stream.__anext__()
            took = time.monotonic() - began
            await canceller
            with pytest.raises(StopAsyncIteration):
                await stream.__anext__()
            return took, stream.reconnects
    took, reconnects = asyncio.run(main())
    assert took < 5
    assert len(fake.generate_requests) == 1
    assert reconnects == 0


def test_a_cancel_racing_a_resume_cancels_the_new_call(fake):
    # cancel() lands while the resumed call is being opened (here: from
    # inside the stub, just before the call starts): the new call must be
    # cancelled, not read from.
    with Client(fake.address, max_attempts=5, initial_backoff=0.001,
                max_backoff=0.001) as c:
        stream = c.session("unavailable-first").generate("x")
        opened = []
        stubs = c._stubs[0]
        real = stubs.streams.Generate

        def generate(*args, **kwargs):
            if opened:  # the resume
                stream.cancel()
            opened.append(real(*args, **kwargs))
            return opened[-1]
        stubs.streams.Generate = generate
        with pytest.raises(StopIteration):
            next(stream)
        assert len(opened) == 2
        assert opened[1].code() == grpc.StatusCode.CANCELLED


def run_either(aio, sync_fn, async_fn):
    """sync_fn(), or with aio the coroutine function async_fn, run."""
    if aio:
        return asyncio.run(async_fn())
    return sync_fn()


# -- logprobs stay aligned with the tokens ------------------------------------
#
# A resumed call replays checkpointed tokens without logprobs. Their logprobs
# used to be dropped, so GenerateResult.logprobs came out shorter than the
# tokens and shifted (the next logprob stood for a replayed token); the top
# alternatives and token ids were dropped too.

@pytest.mark.parametrize("aio", [False, True])
def test_replayed_tokens_keep_logprobs_aligned(fake, aio):
    async def run_async():
        async with AsyncClient(fake.address, **fast_retries()) as c:
            return await c.session("replayed-logprobs").generate_text(
                max_tokens=4, logprobs=True, top_logprobs=1)

    def run_sync():
        with Client(fake.address, **fast_retries()) as c:
            return c.session("replayed-logprobs").generate_text(
                max_tokens=4, logprobs=True, top_logprobs=1)
    out = run_either(aio, run_sync, run_async)
    assert out.tokens == [1, 2, 3, 4]
    assert out.logprobs == [-0.5, -1.5, None, -2.5]
    assert out.token_logprobs == [
        TokenLogprob(1, -0.5, (TopLogprob(9, -0.25),)),
        TokenLogprob(2, -1.5, (TopLogprob(8, -0.75),)),
        None,
        TokenLogprob(4, -2.5, (TopLogprob(4, -2.5),))]


# -- every request option reaches the server ---------------------------------

@pytest.mark.parametrize("aio", [False, True])
def test_generate_sends_every_option(fake, aio):
    import datetime
    args = dict(prompt_tokens=[5, 6], max_tokens=3, temperature=0.5,
                top_p=0.9, top_k=7, min_p=0.05, presence_penalty=0.25,
                frequency_penalty=0.5, penalty_decay=0.996,
                logit_bias={3: -1e9, 4: 1.5}, seed=11, commit=True,
                durability=pb.DURABILITY_FSYNC, request_id="r",
                max_duration=datetime.timedelta(seconds=2.5))

    async def run_async():
        async with AsyncClient(fake.address, **fast_retries()) as c:
            await c.session("done").generate_text(**args)

    def run_sync():
        with Client(fake.address, **fast_retries()) as c:
            c.session("done").generate_text(**args)
    run_either(aio, run_sync, run_async)
    r = fake.generate_requests[-1]
    assert list(r.prompt_tokens.ids) == [5, 6]
    assert r.durability == pb.DURABILITY_FSYNC and r.commit
    assert (r.max_duration.seconds, r.max_duration.nanos) == (2, 500000000)
    sp = r.sampling
    assert sp.top_k == 7 and sp.seed == 11
    assert sp.min_p == pytest.approx(0.05)
    assert sp.presence_penalty == pytest.approx(0.25)
    assert sp.frequency_penalty == pytest.approx(0.5)
    assert sp.HasField("penalty_decay")
    assert sp.penalty_decay == pytest.approx(0.996)
    assert dict(sp.logit_bias) == {3: pytest.approx(-1e9), 4: 1.5}

    # Seconds work too; unset options stay unset.
    with Client(fake.address, **fast_retries()) as c:
        c.session("done").generate_text("x", max_duration=0.25)
    r = fake.generate_requests[-1]
    assert (r.max_duration.seconds, r.max_duration.nanos) == (0, 250000000)
    assert not r.sampling.HasField("penalty_decay")
    assert not r.sampling.logit_bias


# -- bad input is refused before any call ------------------------------------
#
# write(3) used to append bytes(3), three NUL bytes; a prompt given both as
# text and tokens lost the tokens; score() without a continuation failed
# inside protobuf.

@pytest.mark.parametrize("aio", [False, True])
def test_bad_input_is_refused_before_any_call(fake, aio):
    async def run_async():
        async with AsyncClient(fake.address, **fast_retries()) as c:
            s = c.session("s")
            w = await s.writer()
            for bad in (3, None, ["a"]):
                with pytest.raises(TypeError):
                    await w.write(bad)
            assert w.offset == 0
            with pytest.raises(ValueError):
                s.generate("x", prompt_tokens=[1])
            for kwargs in ({}, dict(text="x", tokens=[1])):
                with pytest.raises(ValueError):
                    await s.score(**kwargs)
            with pytest.raises(TypeError):
                await s.append(3)

    def run_sync():
        with Client(fake.address, **fast_retries()) as c:
            s = c.session("s")
            w = s.writer()
            for bad in (3, None, ["a"]):
                with pytest.raises(TypeError):
                    w.write(bad)
            assert w.offset == 0
            with pytest.raises(ValueError):
                s.generate("x", prompt_tokens=[1])
            for kwargs in ({}, dict(text="x", tokens=[1])):
                with pytest.raises(ValueError):
                    s.score(**kwargs)
            with pytest.raises(TypeError):
                s.append(3)
    run_either(aio, run_sync, run_async)
    assert fake.append_calls == 0
    assert fake.generate_requests == []


# -- a delete whose first answer was lost ------------------------------------
#
# The first attempt deleted the session but its answer was lost
# (UNAVAILABLE); the retry, which the server no longer recognises (another
# worker, a restart), finds no session. That is the delete's success, not
# SESSION_NOT_FOUND. A first attempt that finds no session still raises, and
# so does one after a refusal that did nothing (OVERLOADED).

@pytest.mark.parametrize("aio", [False, True])
def test_a_delete_retried_after_an_unknown_outcome_succeeds(fake, aio):
    async def delete_async(session_id):
        async with AsyncClient(fake.address, **fast_retries()) as c:
            await c.session(session_id).delete()

    def delete(session_id):
        if aio:
            return asyncio.run(delete_async(session_id))
        with Client(fake.address, **fast_retries()) as c:
            c.session(session_id).delete()
    delete("lost-ack")
    assert len(fake.delete_requests) == 2
    for session_id in ("gone", "overloaded-first"):
        with pytest.raises(StatestreamError) as e:
            delete(session_id)
        assert e.value.code == grpc.StatusCode.NOT_FOUND
        assert e.value.reason == "SESSION_NOT_FOUND"


# -- timeouts bound the whole operation --------------------------------------
#
# A target that accepts connections but never answers HTTP/2: every call
# with timeout= must give up within about that time. writer() and a
# committing generate() used to read the session (GetSession) outside the
# deadline, each attempt waiting the client's 60 s.

@pytest.fixture
def blackhole():
    """A listening socket that never accepts: connections complete in the
    kernel, and nothing ever answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield "127.0.0.1:%d" % s.getsockname()[1]


STATE = ExportedState(pb.StateHeader(total_bytes=4, chunk_count=1,
                                     chunk_bytes=4), b"abcd")

TIMED_CALLS = {
    "writer": lambda c, s, t: s.writer(timeout=t),
    "append": lambda c, s, t: s.append("x", timeout=t),
    "generate(commit=True)": lambda c, s, t: s.generate(commit=True,
                                                        timeout=t),
    "get": lambda c, s, t: s.get(timeout=t),
    "score": lambda c, s, t: s.score("x", timeout=t),
    "rollback": lambda c, s, t: s.rollback(1, timeout=t),
    "update": lambda c, s, t: s.update(labels={}, timeout=t),
    "delete": lambda c, s, t: s.delete(timeout=t),
    "versions": lambda c, s, t: s.versions(timeout=t),
    "export": lambda c, s, t: s.export(timeout=t),
    "import_state": lambda c, s, t: s.import_state(STATE, timeout=t),
    "import_session": lambda c, s, t: c.import_session(STATE, timeout=t),
    "fork": lambda c, s, t: s.fork(timeout=t),
    "create_session": lambda c, s, t: c.create_session(timeout=t),
    "list_sessions": lambda c, s, t: c.list_sessions(timeout=t),
    "list_models": lambda c, s, t: c.list_models(timeout=t),
}


def test_timeouts_bound_calls_to_a_blackholed_target(blackhole):
    with Client(blackhole) as c:
        s = c.session("s")
        for name, call in TIMED_CALLS.items():
            outcome = []

            def run():
                try:
                    r = call(c, s, 1 if name == "writer" else 0.3)
                    if hasattr(r, "__next__"):  # list_sessions, generate
                        list(r)
                except BaseException as e:  # noqa: BLE001 (checked below)
                    outcome.append(e)
            began = time.monotonic()
            t = threading.Thread(target=run, daemon=True)
            t.start()
            t.join(15)
            took = time.monotonic() - began
            assert not t.is_alive(), f"{name} ignored its timeout"
            assert len(outcome) == 1 and \
                isinstance(outcome[0], StatestreamError), (name, outcome)
            assert took < 4, (name, took)


def test_async_timeouts_bound_calls_to_a_blackholed_target(blackhole):
    async def main():
        async with AsyncClient(blackhole) as c:
            s = c.session("s")
            for name, call in TIMED_CALLS.items():
                async def run():
                    r = call(c, s, 1 if name == "writer" else 0.3)
                    if hasattr(r, "__aiter__"):  # generate
                        return [chunk async for chunk in r]
                    return await r
                began = time.monotonic()
                with pytest.raises(StatestreamError):
                    await asyncio.wait_for(run(), 15)
                took = time.monotonic() - began
                assert took < 4, (name, took)
    asyncio.run(main())


# -- closing the client ends every call --------------------------------------
#
# Client.close() / AsyncClient.close() end the calls in progress with
# CANCELLED "client closed". A call waiting out a backoff slept all of it
# (up to 60 s with a retry_after_ms hint) before it noticed. AsyncClient's
# unary calls in flight raised asyncio.CancelledError (gRPC cancels them),
# which a TaskGroup takes for a cancellation; a committing stream whose pin
# read was cancelled raised CancelledError at every later read; and a
# stream's read was not cancelled at all (closing a grpc.aio channel
# cancels only the calls a task awaits directly): it waited for the server.

def assert_client_closed(error):
    assert isinstance(error, StatestreamError), repr(error)
    assert error.code == grpc.StatusCode.CANCELLED
    assert error.message == "client closed"
    assert not is_retryable(error)  # documented retry loops stop


# Each waits out a backoff: the fake refuses a GetSession OVERLOADED with a
# 20 s retry_after_ms; a Generate or an Append fails UNAVAILABLE, and the
# backoff is 10 s.
BACKOFF_CALLS = {
    "get": (lambda s: s.get(), "overloaded"),
    "generate": (lambda s: list(s.generate("x")), "unavailable-first"),
    "writer": (lambda s: s.append("bad", flush=False), "s"),
}


async def async_backoff_call(s, name):
    if name == "get":
        return await s.get()
    if name == "generate":
        return [c async for c in s.generate("x")]
    return await s.append("bad", flush=False)


@pytest.mark.parametrize("name", sorted(BACKOFF_CALLS))
def test_close_ends_a_backoff(fake, name):
    call, session_id = BACKOFF_CALLS[name]
    c = Client(fake.address, **slow_retries())
    timer = threading.Timer(0.3, c.close)
    timer.start()
    began = time.monotonic()
    with pytest.raises(StatestreamError) as e:
        call(c.session(session_id))
    assert time.monotonic() - began < 5
    timer.join()
    assert_client_closed(e.value)


@pytest.mark.parametrize("name", sorted(BACKOFF_CALLS))
def test_async_close_ends_a_backoff(fake, name):
    _, session_id = BACKOFF_CALLS[name]

    async def main():
        c = AsyncClient(fake.address, **slow_retries())

        async def close_later():
            await asyncio.sleep(0.3)
            await c.close()
        closer = asyncio.create_task(close_later())
        began = time.monotonic()
        with pytest.raises(StatestreamError) as e:
            await async_backoff_call(c.session(session_id), name)
        took = time.monotonic() - began
        await closer
        return took, e.value
    took, error = asyncio.run(main())
    assert took < 5
    assert_client_closed(error)


async def wait_until(condition, timeout=10):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_async_close_ends_calls_in_flight_with_client_closed(fake):
    async def main():
        c = AsyncClient(fake.address, **fast_retries())
        slow = c.session("slow")
        get = asyncio.create_task(slow.get())
        # A committing stream: its pin's GetSession is in flight too.
        pinned = slow.generate("x", commit=True)
        # And a stream waiting for its next chunk.
        reading = c.session("s").generate("x")
        assert (await reading.__anext__()).tokens == [1]
        read = asyncio.create_task(reading.__anext__())
        await wait_until(lambda: len(fake.get_requests) == 2)
        await c.close()
        for task in (get, read):
            with pytest.raises(StatestreamError) as e:
                await task
            assert_client_closed(e.value)
        with pytest.raises(StatestreamError) as e:
            await pinned.__anext__()
        assert_client_closed(e.value)
        for stream in (pinned, reading):  # ended, not CancelledError
            with pytest.raises(StopAsyncIteration):
                await stream.__anext__()
        # And every later call.
        with pytest.raises(StatestreamError) as e:
            await slow.get()
        assert_client_closed(e.value)
    asyncio.run(main())


def test_async_close_in_a_task_group_is_an_error(fake):
    async def main():
        c = AsyncClient(fake.address, **fast_retries())
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(c.session("slow").get())
                await wait_until(lambda: len(fake.get_requests) == 1)
                await c.close()
        except BaseExceptionGroup as group:  # noqa: F821 (3.11)
            return group.exceptions
        raise AssertionError("the closed client's call failed silently")
    if not hasattr(asyncio, "TaskGroup"):
        pytest.skip("asyncio.TaskGroup is Python 3.11+")
    errors = asyncio.run(main())
    assert len(errors) == 1
    assert_client_closed(errors[0])


def test_async_own_cancellation_after_close_stays_cancelled(fake):
    # A task cancelled itself still gets asyncio.CancelledError, even when
    # the client closes meanwhile.
    if not hasattr(asyncio.Task, "cancelling"):
        pytest.skip("Python < 3.11 cannot tell the two apart")

    async def main():
        c = AsyncClient(fake.address, **fast_retries())
        get = asyncio.create_task(c.session("slow").get())
        await wait_until(lambda: len(fake.get_requests) == 1)
        get.cancel()
        await c.close()
        with pytest.raises(asyncio.CancelledError):
            await get
    asyncio.run(main())


def test_client_closed_is_not_retryable(fake):
    c = Client(fake.address, **fast_retries())
    c.close()
    with pytest.raises(StatestreamError) as e:
        c.session("s").get()
    assert_client_closed(e.value)
    # The transport's CANCELLED (not the SDK's own) is still retried.
    assert is_retryable(StatestreamError(grpc.StatusCode.CANCELLED, "x"))


# -- the async commit pin ----------------------------------------------------
#
# generate(commit=True) reads the pin with a GetSession that starts at
# generate() in a running loop (a task, concurrent with what the caller does
# next), else at the first read.

def test_async_commit_pin_read_starts_at_generate(fake):
    async def main():
        async with AsyncClient(fake.address, **fast_retries()) as c:
            stream = c.session("done").generate("x", commit=True)
            await wait_until(lambda: len(fake.get_requests) == 1)
            assert fake.generate_requests == []
            [_ async for _ in stream]
    asyncio.run(main())
    assert fake.generate_requests[-1].expected_input_offset == 0
    assert fake.generate_requests[-1].HasField("expected_input_offset")

    # Outside a running loop: at the first read.
    loop = asyncio.new_event_loop()
    try:
        asyncio.set_event_loop(loop)
        c = AsyncClient(fake.address, **fast_retries())
        stream = c.session("done").generate("x", commit=True)

        async def read():
            await asyncio.sleep(0.2)
            assert len(fake.get_requests) == 1
            [_ async for _ in stream]
            await c.close()
        loop.run_until_complete(read())
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    assert len(fake.get_requests) == 2
    assert fake.generate_requests[-1].HasField("expected_input_offset")


# -- an async import keeps the event loop running ----------------------------
#
# Each chunk's CRC-32C (pure Python without google-crc32c, about 0.1 s per
# MiB) was computed on the event loop, which stood still meanwhile.

def test_async_import_keeps_the_event_loop_running(fake, monkeypatch):
    import statestream.client
    blob = os.urandom(8 << 20)
    state = ExportedState(pb.StateHeader(total_bytes=len(blob),
                                         chunk_count=8,
                                         chunk_bytes=1 << 20), blob)
    crc_threads = set()  # where the CRCs were computed
    python_crc = statestream.client._crc32c_python

    def crc(data):
        crc_threads.add(threading.current_thread())
        return _crc32c(data)

    def crc_python(data, crc=0):
        crc_threads.add(threading.current_thread())
        return python_crc(data, crc)
    monkeypatch.setattr(statestream.client, "_crc32c", crc)
    monkeypatch.setattr(statestream.client, "_crc32c_python", crc_python)
    # The pure-Python CRC, google-crc32c installed or not.
    monkeypatch.setattr(statestream.client, "_C_CRC", False, raising=False)

    async def main():
        async with AsyncClient(fake.address, **fast_retries()) as c:
            beats = []
            done = False

            async def heartbeat():
                while not done:
                    beats.append(time.monotonic())
                    await asyncio.sleep(0.005)
            hb = asyncio.create_task(heartbeat())
            await asyncio.sleep(0.05)
            began = time.monotonic()
            info = await c.session("big").import_state(state)
            ended = time.monotonic()
            done = True
            await hb
            return info, sum(began <= b <= ended for b in beats)
    info, beats = asyncio.run(main())
    assert info.version == 2
    chunks = fake.imported_chunks
    assert [c.index for c in chunks] == list(range(8))
    assert b"".join(c.data for c in chunks) == blob
    assert all(c.crc32c == _crc32c(c.data) for c in chunks)
    # Every CRC off the loop's thread (this one: asyncio.run's).
    assert crc_threads
    assert threading.current_thread() not in crc_threads
    # And the loop ran meanwhile (blocked, it ran between chunks only: a
    # few beats; free, dozens).
    assert beats >= 20, beats
