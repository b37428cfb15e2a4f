# SPDX-License-Identifier: Apache-2.0
"""The SDK against a small in-process fake server that injects faults the
real one does not make on demand: a request that fails at every attempt,
malformed error details. Also the client's default channel options."""
import asyncio
import gc
import os
import signal
import threading
import time

import grpc
import grpc.aio
import pytest
from google.protobuf import any_pb2
from google.rpc import status_pb2

from statestream import (Client, ExportedState, StatestreamError,
                         TokenLogprob, TopLogprob)
from statestream.errors import is_retryable
from statestream.aio import AsyncClient
from statestream.v1 import statestream_pb2 as pb
from test_writer import pause
from fake_server import fast_retries, run_either, slow_retries


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


def test_no_server_at_the_target_says_so():
    """A connection refused (the transport's UNAVAILABLE, no reason) says
    that no server answered there, as the CLI's hint does; .message stays
    the transport's own."""
    with Client("127.0.0.1:1", max_attempts=1) as c:
        with pytest.raises(StatestreamError) as e:
            c.session("x").get(timeout=5)
    assert e.value.code == grpc.StatusCode.UNAVAILABLE
    assert "no statestream server answered" in str(e.value)
    assert "no statestream server" not in e.value.message


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
        ("grpc.max_receive_message_length", 16 << 20)])), module)
    assert opts["grpc.keepalive_time_ms"] == 60000
    assert opts["grpc.keepalive_timeout_ms"] == 10000
    assert opts["grpc.max_receive_message_length"] == 16 << 20


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
#
# As the server reports its own corrupt state: STATE_CORRUPT with metadata
# detail, and origin=sdk (the SDK's check, not the server's).

def assert_corrupt_export(error: StatestreamError) -> None:
    assert error.code == grpc.StatusCode.DATA_LOSS
    assert error.reason == "STATE_CORRUPT"
    assert error.metadata == {"detail": error.message, "origin": "sdk"}
    assert not is_retryable(error)


@pytest.mark.parametrize("session", ["corrupt", "reordered"])
def test_a_corrupt_export_is_data_loss(fake, session):
    with Client(fake.address, **fast_retries()) as c:
        with pytest.raises(StatestreamError) as e:
            c.session(session).export()
        assert_corrupt_export(e.value)

    async def main():
        async with AsyncClient(fake.address, **fast_retries()) as c:
            with pytest.raises(StatestreamError) as e:
                await c.session(session).export()
            assert_corrupt_export(e.value)
    asyncio.run(main())


@pytest.mark.parametrize("aio", [False, True])
def test_an_export_skips_messages_it_does_not_know(fake, aio):
    # Neither header nor chunk (a newer server's message): skipped, as C++
    # does. It was read as an empty chunk 0, and the real one then failed
    # the export DATA_LOSS.
    async def run_async():
        async with AsyncClient(fake.address, **fast_retries()) as c:
            return await c.session("newer").export()

    def run():
        with Client(fake.address, **fast_retries()) as c:
            return c.session("newer").export()
    state = asyncio.run(run_async()) if aio else run()
    assert state.blob == b"abcdabcd"


def assert_repeated_page_token(error: StatestreamError) -> None:
    # INTERNAL with its reason: not a transport failure's (no reason),
    # which is_retryable retries (a caller's retry loop listed forever).
    assert error.code == grpc.StatusCode.INTERNAL
    assert error.reason == "INTERNAL"
    assert error.metadata == {"origin": "sdk"}
    assert "repeated its page token" in error.message
    assert not is_retryable(error)


@pytest.mark.parametrize("aio", [False, True])
def test_a_repeated_page_token_ends_a_listing(fake, aio):
    # A server that names the page it just gave as the next one: INTERNAL,
    # not a listing read (and held) forever.
    async def run_async():
        async with AsyncClient(fake.address, **fast_retries()) as c:
            for listing in (c.session("s").versions(), c.list_sessions()):
                with pytest.raises(StatestreamError) as e:
                    await listing
                assert_repeated_page_token(e.value)

    def run():
        with Client(fake.address, **fast_retries()) as c:
            for listing in (c.session("s").versions,
                            lambda: list(c.list_sessions())):
                with pytest.raises(StatestreamError) as e:
                    listing()
                assert_repeated_page_token(e.value)
    asyncio.run(run_async()) if aio else run()
    # The first page, then the one it named again: nothing retried.
    assert [r.page_token for r in fake.list_versions_requests] == ["", "again"]


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
# resume the server refuses because the session moved on ends the stream
# with that FAILED_PRECONDITION/POSITION_MISMATCH (not retried), even
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


@pytest.mark.parametrize("aio", [False, True])
def test_only_the_first_chunk_says_where_the_generation_started(fake, aio):
    if aio:
        async def main():
            async with AsyncClient(fake.address, **fast_retries()) as c:
                return [ch async for ch in
                        c.session("pinned").generate(max_tokens=3)]
        chunks = asyncio.run(main())
    else:
        with Client(fake.address, **fast_retries()) as c:
            chunks = list(c.session("pinned").generate(max_tokens=3))
    # [1, 2] from the lost call, then [3] from the resumed one.
    assert [ch.tokens for ch in chunks] == [[1, 2], [3]]
    assert [ch.start_input_offset for ch in chunks] == [7, None]


def generate_from(fake, session_id, aio, delivered, commit=False):
    """Generates 3 tokens on `session_id` of the fake (sync or asyncio
    client), appending what is delivered to `delivered`."""
    async def consume_async():
        async with AsyncClient(fake.address, **fast_retries()) as c:
            async for chunk in c.session(session_id).generate(
                    max_tokens=3, commit=commit):
                delivered.extend(chunk.tokens)

    def consume():
        with Client(fake.address, **fast_retries()) as c:
            for chunk in c.session(session_id).generate(max_tokens=3,
                                                        commit=commit):
                delivered.extend(chunk.tokens)
    asyncio.run(consume_async()) if aio else consume()


@pytest.mark.parametrize("aio", [False, True])
def test_a_resume_on_a_moved_session_is_not_joined(fake, aio):
    delivered = []
    with pytest.raises(StatestreamError) as e:
        generate_from(fake, "moved", aio, delivered)
    assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert e.value.reason == "POSITION_MISMATCH"
    assert "input_offset 7" in e.value.message
    assert delivered == [1, 2]
    assert len(fake.generate_requests) == 2  # not retried further


@pytest.mark.parametrize("aio", [False, True])
def test_a_resume_that_ends_before_the_delivered_output_is_not_joined(
        fake, aio):
    delivered = []
    with pytest.raises(StatestreamError) as e:
        generate_from(fake, "shorter", aio, delivered)
    assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert e.value.reason == "RESUME_DIVERGED"
    assert not is_retryable(e.value)
    assert "before the 2 already delivered" in e.value.message
    assert delivered == [1, 2]
    assert e.value.metadata.get("committed") is None


@pytest.mark.parametrize("aio", [False, True])
def test_a_resume_with_other_output_is_not_joined(fake, aio):
    delivered = []
    with pytest.raises(StatestreamError) as e:
        generate_from(fake, "diverged", aio, delivered)
    assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert e.value.reason == "RESUME_DIVERGED"
    assert not is_retryable(e.value)
    assert "diverged from the 2 tokens already delivered" in e.value.message
    assert delivered == [1, 2]
    assert len(fake.generate_requests) == 2  # not retried further


@pytest.mark.parametrize("aio", [False, True])
def test_a_committed_resume_that_ends_short_says_where_the_session_is(
        fake, aio):
    # The server committed the resumed call's shorter output: the caller
    # saw more than the session holds, and the error says where it is.
    delivered = []
    with pytest.raises(StatestreamError) as e:
        generate_from(fake, "shorter-committed", aio, delivered, commit=True)
    assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert not is_retryable(e.value)
    assert delivered == [1, 2]
    assert e.value.metadata == {"committed": "true", "position": "12",
                                "input_offset": "8", "version": "5",
                                "origin": "sdk"}
    assert "the session is at input_offset 8 (version 5)" in e.value.message


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


@pytest.mark.parametrize("aio", [False, True])
def test_an_ack_that_is_not_its_requests_fails_the_writer(fake, aio):
    # The fake acknowledges each write of "double-ack" twice (a buggy
    # proxy). The extra ack cannot be the next request's (a checkpoint's
    # commit short of that request's end): INTERNAL, instead of taking it
    # as the checkpoint's and dropping "abc", which nothing committed,
    # from what a reconnect resends.
    async def run_async():
        async with AsyncClient(fake.address, **fast_retries()) as c:
            w = await c.session("double-ack").writer(start_offset=0)
            await w.write(b"abc")
            await w.sync()
            return await w.checkpoint()

    def run_sync():
        with Client(fake.address, **fast_retries()) as c:
            w = c.session("double-ack").writer(start_offset=0)
            w.write(b"abc")
            w.sync()
            return w.checkpoint()
    with pytest.raises(StatestreamError) as e:
        asyncio.run(run_async()) if aio else run_sync()
    assert e.value.code == grpc.StatusCode.INTERNAL
    assert e.value.reason == "INTERNAL"
    assert e.value.metadata == {"origin": "sdk"}
    assert not is_retryable(e.value)
    assert "not its acknowledgement" in e.value.message


# -- GenerateStream.cancel() ---------------------------------------------------
#
# The CANCELLED that the caller's own cancel() causes is not a failure: no
# rotation to the next target, no backoff, no new call.


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


def test_async_cancel_during_a_read_ends_the_iteration(fake):
    # cancel() from another task while the iterating task awaited the
    # call's read raised asyncio.CancelledError in that task; the sync
    # stream's read ends with StopIteration, and so must this one.
    async def main():
        async with AsyncClient([fake.address, fake.address],
                               **slow_retries()) as c:
            stream = c.session("s").generate("x")
            assert (await stream.__anext__()).tokens == [1]
            reader = asyncio.create_task(stream.__anext__())
            await asyncio.sleep(0.3)  # the read waits on the call
            began = time.monotonic()
            stream.cancel()
            with pytest.raises(StopAsyncIteration):
                await reader
            took = time.monotonic() - began
            with pytest.raises(StopAsyncIteration):
                await stream.__anext__()
            return took, c._current, stream.reconnects
    took, current, reconnects = asyncio.run(main())
    assert took < 5  # no backoff slept
    assert current == 0 and reconnects == 0
    assert len(fake.generate_requests) == 1  # no new call


def test_async_a_cancelled_reading_task_still_gets_cancelled_error(fake):
    # The reading task's own cancellation propagates (asyncio requires
    # it), and the next read resumes.
    async def main():
        async with AsyncClient(fake.address, **slow_retries()) as c:
            stream = c.session("s").generate("x")
            assert (await stream.__anext__()).tokens == [1]
            reader = asyncio.create_task(stream.__anext__())
            await asyncio.sleep(0.3)  # the read waits on the call
            reader.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reader
            assert reader.cancelled()
            # A cancel() racing the task's cancellation: still the task's.
            reader = asyncio.create_task(stream.__anext__())
            await asyncio.sleep(0.3)
            reader.cancel()
            stream.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reader
    asyncio.run(main())
    assert len(fake.generate_requests) == 2  # the second read resumed


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
# inside protobuf; a prompt of 0 or [] was taken for no prompt; a str with
# a lone surrogate or a bytes stop string that is not UTF-8 raised a bare
# Unicode error; an import whose blob was not bytes failed inside the
# call's request iterator (a retried UNKNOWN for ~9 s, and in asyncio a
# CancelledError that a TaskGroup swallowed).

def _assert_invalid_utf8(e):
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.reason == "INVALID_UTF8"
    assert not is_retryable(e.value)


BAD_BLOBS = ("text", None, 3)


# After text that left a character open, a str with a lone surrogate is
# refused at that character (a str cannot continue it), as the server
# would: it named the surrogate's offset, past where the session stands.
@pytest.mark.parametrize("aio", [False, True])
def test_a_bad_str_after_an_open_character_names_that_character(fake, aio):
    async def run_async():
        async with AsyncClient(fake.address, **fast_retries()) as c:
            w = await c.session("s").writer()
            await w.write(b"ab\xe2\x82")
            with pytest.raises(StatestreamError) as e:
                await w.write("a\udc80")
            return e

    def run_sync():
        with Client(fake.address, **fast_retries()) as c:
            w = c.session("s").writer()
            w.write(b"ab\xe2\x82")
            with pytest.raises(StatestreamError) as e:
                w.write("a\udc80")
            return e
    e = asyncio.run(run_async()) if aio else run_sync()
    _assert_invalid_utf8(e)
    assert e.value.metadata["input_offset"] == "2"
    assert e.value.metadata["field"] == "text_utf8"


@pytest.mark.parametrize("aio", [False, True])
def test_bad_input_is_refused_before_any_call(fake, aio):
    header = pb.StateHeader(total_bytes=4)

    async def run_async():
        async with AsyncClient(fake.address, **fast_retries()) as c:
            s = c.session("s")
            w = await s.writer()
            for bad in (3, None, ["a"]):
                with pytest.raises(TypeError):
                    await w.write(bad)
            for text, at in (("a\ud800b", 1), ("\u00e9a\udc80", 3)):
                with pytest.raises(StatestreamError) as e:
                    await w.write(text)
                _assert_invalid_utf8(e)
                # As the server's: the byte's input offset, the field.
                assert e.value.metadata["input_offset"] == str(at)
                assert e.value.metadata["field"] == "text_utf8"
            assert w.offset == 0
            with pytest.raises(ValueError):
                s.generate("x", prompt_tokens=[1])
            for bad in (0, [], False, 5):
                with pytest.raises(TypeError):
                    s.generate(bad)
            for stop in (b"\xff", ["ok", "\udc80"]):
                with pytest.raises(StatestreamError) as e:
                    s.generate("x", stop=stop)
                _assert_invalid_utf8(e)
            for kwargs in ({}, dict(text="x", tokens=[1])):
                with pytest.raises(ValueError):
                    await s.score(**kwargs)
            with pytest.raises(TypeError):
                await s.append(3)
            for blob in BAD_BLOBS:
                with pytest.raises(TypeError):
                    await c.import_session(ExportedState(header, blob))
                with pytest.raises(TypeError):
                    await s.import_state(ExportedState(header, blob))
            with pytest.raises(TypeError):
                await c.import_session(None)
            for bad_id in (5, b"s", None):
                with pytest.raises(TypeError):
                    c.session(bad_id)
            with pytest.raises(StatestreamError) as e:
                c.session("s\udc80")
            _assert_invalid_utf8(e)
            with pytest.raises(StatestreamError) as e:
                await c.create_session("s\udc80")
            _assert_invalid_utf8(e)
            with pytest.raises(StatestreamError) as e:
                await c.create_session("copy", fork_from="s\udc80")
            _assert_invalid_utf8(e)
            with pytest.raises(TypeError):
                await c.create_session("copy", fork_from=b"s")

    def run_sync():
        with Client(fake.address, **fast_retries()) as c:
            s = c.session("s")
            w = s.writer()
            for bad in (3, None, ["a"]):
                with pytest.raises(TypeError):
                    w.write(bad)
            for text, at in (("a\ud800b", 1), ("\u00e9a\udc80", 3)):
                with pytest.raises(StatestreamError) as e:
                    w.write(text)
                _assert_invalid_utf8(e)
                # As the server's: the byte's input offset, the field.
                assert e.value.metadata["input_offset"] == str(at)
                assert e.value.metadata["field"] == "text_utf8"
            assert w.offset == 0
            with pytest.raises(ValueError):
                s.generate("x", prompt_tokens=[1])
            for bad in (0, [], False, 5):
                with pytest.raises(TypeError):
                    s.generate(bad)
            for stop in (b"\xff", ["ok", "\udc80"]):
                with pytest.raises(StatestreamError) as e:
                    s.generate("x", stop=stop)
                _assert_invalid_utf8(e)
            for kwargs in ({}, dict(text="x", tokens=[1])):
                with pytest.raises(ValueError):
                    s.score(**kwargs)
            with pytest.raises(TypeError):
                s.append(3)
            for blob in BAD_BLOBS:
                with pytest.raises(TypeError):
                    c.import_session(ExportedState(header, blob))
                with pytest.raises(TypeError):
                    s.import_state(ExportedState(header, blob))
            with pytest.raises(TypeError):
                c.import_session(None)
            for bad_id in (5, b"s", None):
                with pytest.raises(TypeError):
                    c.session(bad_id)
            with pytest.raises(StatestreamError) as e:
                c.session("s\udc80")
            _assert_invalid_utf8(e)
            with pytest.raises(StatestreamError) as e:
                c.create_session("s\udc80")
            _assert_invalid_utf8(e)
            with pytest.raises(StatestreamError) as e:
                c.create_session("copy", fork_from="s\udc80")
            _assert_invalid_utf8(e)
            with pytest.raises(TypeError):
                c.create_session("copy", fork_from=b"s")
    run_either(aio, run_sync, run_async)
    assert fake.append_calls == 0
    assert fake.generate_requests == []
    assert fake.import_calls == 0


# A blob that is bytes-like but not bytes (a bytearray, a memoryview) is
# imported as its bytes.
@pytest.mark.parametrize("aio", [False, True])
def test_a_bytes_like_blob_is_imported(fake, aio):
    blob = b"0123456789"
    header = pb.StateHeader(total_bytes=len(blob))
    states = [ExportedState(header, bytearray(blob)),
              ExportedState(header, memoryview(blob))]

    async def run_async():
        async with AsyncClient(fake.address, **fast_retries()) as c:
            for state in states:
                assert (await c.import_session(state)).version == 2

    def run_sync():
        with Client(fake.address, **fast_retries()) as c:
            for state in states:
                assert c.import_session(state).version == 2
    run_either(aio, run_sync, run_async)
    assert fake.import_calls == 2
    assert [c.data for c in fake.imported_chunks] == [blob, blob]


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


# -- rollback and import_state take the caller's request_id ------------------
#
# Both always sent a new id, so a call that gave up could not be retried
# under its own (docs/API.md asks for one on calls retried after they give
# up). Session "lost-ack" fails the first attempt of each id: an id of the
# caller's is sent by every attempt of every call; without one, each call
# gets a new id that its retry keeps.

@pytest.mark.parametrize("aio", [False, True])
@pytest.mark.parametrize("method", ["rollback", "import_state"])
def test_rollback_and_import_state_take_the_callers_request_id(fake, aio,
                                                               method):
    state = ExportedState(pb.StateHeader(total_bytes=4), b"abcd")

    def call(s, **kw):
        if method == "rollback":
            return s.rollback(1, **kw)
        return s.import_state(state, **kw)

    async def run_async():
        async with AsyncClient(fake.address, **fast_retries()) as c:
            s = c.session("lost-ack")
            for kw in (dict(request_id="r1"), dict(request_id="r1"), {}, {}):
                await call(s, **kw)

    def run_sync():
        with Client(fake.address, **fast_retries()) as c:
            s = c.session("lost-ack")
            for kw in (dict(request_id="r1"), dict(request_id="r1"), {}, {}):
                call(s, **kw)
    run_either(aio, run_sync, run_async)
    sent = [r.request_id for r in (fake.rollback_requests
                                   if method == "rollback" else
                                   fake.import_headers)]
    # "r1": failed, retried, then the second call's at once; then two
    # calls of the SDK's ids, each failed once and retried.
    assert sent[:3] == ["r1", "r1", "r1"]
    assert len(sent) == 7
    assert sent[3] == sent[4] and sent[5] == sent[6]
    assert len({sent[3], sent[5], "r1"}) == 3


@pytest.mark.parametrize("aio", [False, True])
def test_an_answer_that_is_not_retried_keeps_the_target(fake, aio):
    # SESSION_NOT_FOUND says nothing against the target that answered: the
    # client stays on it (it used to move every caller to the next one, here
    # a dead port).
    targets = [fake.address, "127.0.0.1:1"]

    async def run_async():
        async with AsyncClient(targets, **fast_retries()) as c:
            for _ in range(2):
                with pytest.raises(StatestreamError) as e:
                    await c.session("gone").delete()
                assert e.value.reason == "SESSION_NOT_FOUND"
            return c._current

    def run():
        with Client(targets, **fast_retries()) as c:
            for _ in range(2):
                with pytest.raises(StatestreamError) as e:
                    c.session("gone").delete()
                assert e.value.reason == "SESSION_NOT_FOUND"
            return c._current
    assert (asyncio.run(run_async()) if aio else run()) == 0
    assert len(fake.delete_requests) == 2


@pytest.mark.parametrize("aio", [False, True])
def test_an_internal_error_moves_to_the_next_target(fake, aio):
    # A typed INTERNAL is not retried, but it is the target's fault (a
    # misconfigured gateway): the client moves on for its next call.
    targets = [fake.address, "127.0.0.1:1"]

    async def run_async():
        async with AsyncClient(targets, **fast_retries()) as c:
            with pytest.raises(StatestreamError) as e:
                await c.session("internal").delete()
            assert e.value.reason == "INTERNAL"
            return c._current

    def run():
        with Client(targets, **fast_retries()) as c:
            with pytest.raises(StatestreamError) as e:
                c.session("internal").delete()
            assert e.value.reason == "INTERNAL"
            return c._current
    assert (asyncio.run(run_async()) if aio else run()) == 1


@pytest.mark.parametrize("aio", [False, True])
def test_the_callers_own_deadline_keeps_the_target(fake, aio):
    # A call that runs out of its caller's own deadline says nothing against
    # the target: the shared client stays on it (it moved every caller on,
    # here to a dead port), as C++'s does.
    targets = [fake.address, "127.0.0.1:1"]

    async def run_async():
        async with AsyncClient(targets, **fast_retries()) as c:
            with pytest.raises(StatestreamError) as e:
                await c.session("slow").delete(timeout=0.1)
            assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
            return c._current

    def run():
        with Client(targets, **fast_retries()) as c:
            with pytest.raises(StatestreamError) as e:
                c.session("slow").delete(timeout=0.1)
            assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
            return c._current
    assert (asyncio.run(run_async()) if aio else run()) == 0


# -- a Generate stream dropped unfinished --------------------------------------
#
# The asyncio client kept every call it started in a set until the call
# ended, so a stream its caller dropped (`break` out of `async for`) was never
# collected and never cancelled: the server went on generating, holding one
# of the tenant's streams, until the client closed. Both clients now cancel
# it as soon as it is collected, the client still open.

@pytest.mark.parametrize("aio", [False, True])
def test_a_dropped_generate_is_cancelled(fake, aio):
    def wait_cancelled(deadline):
        return fake.generate_cancelled >= 1 or time.monotonic() > deadline

    def run_sync():
        with Client(fake.address) as c:
            for chunk in c.session("s").generate("x"):
                assert chunk.tokens == [1]
                break
            gc.collect()
            deadline = time.monotonic() + 10
            while not wait_cancelled(deadline):
                time.sleep(0.01)
            return fake.generate_cancelled

    async def run_async():
        async with AsyncClient(fake.address) as c:
            async for chunk in c.session("s").generate("x"):
                assert chunk.tokens == [1]
                break
            gc.collect()
            deadline = time.monotonic() + 10
            while not wait_cancelled(deadline):
                await asyncio.sleep(0.01)
            return fake.generate_cancelled

    assert (asyncio.run(run_async()) if aio else run_sync()) == 1


# Leaving a `with` block ends a stream the caller still holds (a `break`
# alone does not: the call runs on, and a committing one commits output
# nobody reads).
@pytest.mark.parametrize("aio", [False, True])
def test_leaving_a_with_block_cancels_the_generate(fake, aio):
    def cancelled():
        deadline = time.monotonic() + 10
        while fake.generate_cancelled < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        return fake.generate_cancelled

    def run_sync():
        with Client(fake.address) as c:
            with c.session("s").generate("x", commit=True) as stream:
                for chunk in stream:
                    assert chunk.tokens == [1]
                    break
            held = stream  # still referenced: only the block ended it
            assert cancelled() == 1
            assert list(held) == []  # ended, not resumed
            held.close()  # again: nothing

    async def run_async():
        async with AsyncClient(fake.address) as c:
            async with c.session("s").generate("x") as stream:
                async for chunk in stream:
                    assert chunk.tokens == [1]
                    break
            held = stream
            assert await asyncio.to_thread(cancelled) == 1
            assert [c async for c in held] == []
    run_either(aio, run_sync, run_async)


@pytest.mark.parametrize("aio", [False, True])
def test_the_backoff_stays_capped_after_very_many_attempts(aio):
    # A client told to retry through long outages (max_attempts 10**6):
    # 2 ** 1024 is past a float, and attempt 1025 raised OverflowError,
    # which no StatestreamError handler caught.
    options = dict(max_attempts=10**6, initial_backoff=0.05, max_backoff=2)
    error = StatestreamError(grpc.StatusCode.UNAVAILABLE, "down")

    def check(client):
        for attempt in (1, 64, 1025, 999_999):
            assert 0 < client._backoff(error, attempt, None) <= 2 * 1.2

    async def run_async():
        async with AsyncClient("127.0.0.1:1", **options) as c:
            check(c)

    def run_sync():
        with Client("127.0.0.1:1", **options) as c:
            check(c)

    run_either(aio, run_sync, run_async)
