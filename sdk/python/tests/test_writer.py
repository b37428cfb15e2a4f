# SPDX-License-Identifier: Apache-2.0
"""AppendWriter and AsyncAppendWriter against real `statestream serve`
processes: a bare flush across a kill -9, sticky errors, closing, and
(asyncio) cancellation of a pending call."""
import asyncio
import gc
import os
import signal
import subprocess
import threading
import time

import grpc
import pytest

from statestream import Client, StatestreamError
from statestream.aio import AsyncClient
from statestream.testing import ServeProcess

BIN = os.environ.get("STATESTREAM_BIN", "statestream")
# As conftest.py: commits only when asked.
NO_POLICY = ["--checkpoint-tokens=100000000", "--checkpoint-interval=10000h"]


def shared_dir() -> str:
    # As CMake's STATESTREAM_SHARED_DIR: <source>/../shared by default.
    return os.environ.get("STATESTREAM_SHARED_DIR") or os.path.join(
        os.path.dirname(__file__), "..", "..", "..", "..", "shared")


@pytest.fixture
def world_server(tmp_path):
    """A server with a World-vocab model: its tokenizer holds a word's bytes
    back until the word ends (the built-in demo model is byte-level and
    holds nothing back)."""
    model = str(tmp_path / "world.safetensors")
    subprocess.run([BIN, "model", "random", "--layers=1", "--embd=64",
                    "--vocab=65536", "--dtype=bf16", "--out=" + model],
                   check=True, stdout=subprocess.DEVNULL)
    vocab = os.path.join(shared_dir(), "testdata", "rwkv_vocab_v20230424.txt")
    assert os.path.exists(vocab), f"{vocab} missing (STATESTREAM_SHARED_DIR)"
    with ServeProcess(BIN, data_dir=str(tmp_path / "data"),
                      extra_args=NO_POLICY + ["--model=" + model,
                                              "--vocab=" + vocab]) as s:
        yield s


def new_client(server) -> Client:
    return Client(server.address, max_attempts=40, max_backoff=0.5)


def new_async_client(server) -> AsyncClient:
    return AsyncClient(server.address, max_attempts=40, max_backoff=0.5)


# -- a bare flush at an already committed offset -----------------------------
#
# The checkpoint commits "Hello, inter" with "inter" still pending in the
# tokenizer; the flush after it (at the committed offset) tokenizes it. The
# server dies before committing that: the writer must still hold the flush and
# resend it ahead of "national", or the new server tokenizes "international"
# as one word — another position and state than a run without the failure.

def test_flush_at_a_committed_offset_survives_kill9(world_server):
    with new_client(world_server) as c:
        c.create_session("flushed")
        live = c.session("flushed")
        w = live.writer()
        w.write("Hello, inter")
        ck = w.checkpoint()
        assert ck.pending_bytes > 0  # committed with the tail pending
        assert ck.committed_input_offset == 12
        w.flush()
        assert w.sync().pending_bytes == 0
        world_server.kill_and_restart()
        w.write("national")
        w.flush()
        done = w.close()
        assert w.reconnects >= 1

        c.create_session("ref")
        ref = c.session("ref")
        rw = ref.writer()
        rw.write("Hello, inter")
        rw.flush()
        rw.write("national")
        rw.flush()
        ref_done = rw.close()
        assert done.position == ref_done.position
        assert done.input_offset == ref_done.input_offset
        assert live.score("x").sum_logprob == ref.score("x").sum_logprob


def test_async_flush_at_a_committed_offset_survives_kill9(world_server):
    async def main():
        async with new_async_client(world_server) as c:
            await c.create_session("flushed")
            live = c.session("flushed")
            w = await live.writer()
            await w.write("Hello, inter")
            ck = await w.checkpoint()
            assert ck.pending_bytes > 0
            assert ck.committed_input_offset == 12
            await w.flush()
            assert (await w.sync()).pending_bytes == 0
            world_server.kill_and_restart()
            await w.write("national")
            await w.flush()
            done = await w.close()
            assert w.reconnects >= 1

            await c.create_session("ref")
            ref = c.session("ref")
            rw = await ref.writer()
            await rw.write("Hello, inter")
            await rw.flush()
            await rw.write("national")
            await rw.flush()
            ref_done = await rw.close()
            assert done.position == ref_done.position
            assert done.input_offset == ref_done.input_offset
            assert (await live.score("x")).sum_logprob == \
                (await ref.score("x")).sum_logprob
    asyncio.run(main())


# -- sticky errors and closing -----------------------------------------------

class CountingAppend:
    """Wraps a client's Append stubs to count the calls opened."""

    def __init__(self, client):
        self.calls = 0
        for stubs in client._stubs:
            stubs.streams.Append = self._wrap(stubs.streams.Append)

    def _wrap(self, append):
        def counted(*args, **kwargs):
            self.calls += 1
            return append(*args, **kwargs)
        return counted


def test_writer_errors_stick(server):
    with Client(server.address) as c:
        c.create_session("bad")
        appends = CountingAppend(c)
        w = c.session("bad").writer()
        # A token past the vocabulary: the server's INVALID_ARGUMENT. (Bad
        # UTF-8 is refused by the writer itself, before sending: below.)
        w.write_tokens([1 << 20])
        with pytest.raises(StatestreamError) as first:
            w.sync()
        assert first.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert first.value.reason == "INVALID_TOKEN"
        for call in (lambda: w.write("more"), w.flush, w.sync, w.checkpoint,
                     w.close):
            with pytest.raises(StatestreamError) as again:
                call()
            assert again.value is first.value
        assert appends.calls == 1
        assert c.session("bad").get().input_offset == 0


def test_async_writer_errors_stick(server):
    async def main():
        async with AsyncClient(server.address) as c:
            await c.create_session("bad")
            appends = CountingAppend(c)
            w = await c.session("bad").writer()
            await w.write_tokens([1 << 20])  # past the vocabulary
            with pytest.raises(StatestreamError) as first:
                await w.sync()
            assert first.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert first.value.reason == "INVALID_TOKEN"
            for call in (lambda: w.write("more"), w.flush, w.sync,
                         w.checkpoint, w.close):
                with pytest.raises(StatestreamError) as again:
                    await call()
                assert again.value is first.value
            assert appends.calls == 1
            assert (await c.session("bad").get()).input_offset == 0
    asyncio.run(main())


# Text the server would refuse is refused before any of it is sent, as
# it would be checked (UTF-8 but for a character left open at the end, or
# finished at the start of the writer's first text): a bad byte past the
# first request, or a flush inside a character, left the session holding
# the text before it (half a character that failed every later append).
@pytest.mark.parametrize("aio", [False, True])
def test_text_is_checked_whole_before_any_of_it_is_sent(server, aio):
    bad = bytearray(b"x" * 5000)
    bad[4000] = 0xFF

    def expect(call, offset):
        with pytest.raises(StatestreamError) as e:
            call()
        assert e.value.reason == "INVALID_UTF8", e.value
        assert e.value.metadata["input_offset"] == str(offset)

    async def aexpect(call, offset):
        with pytest.raises(StatestreamError) as e:
            await call()
        assert e.value.reason == "INVALID_UTF8", e.value
        assert e.value.metadata["input_offset"] == str(offset)

    async def run_async():
        async with AsyncClient(server.address) as c:
            s = c.session((await c.create_session()).session_id)
            await aexpect(lambda: s.append(b"abc\xe2\x82"), 3)
            assert (await s.get()).input_offset == 0
            async with await s.writer(max_chunk_bytes=1000) as w:
                await aexpect(lambda: w.write(bytes(bad)), 4000)
                assert w.offset == 0
                await w.write(b"ok \xe2")
                await aexpect(w.flush, 3)
                await aexpect(lambda: w.write("x"), 3)
                await w.write(b"\x82\xac")
                await w.flush()
            async with await s.writer() as w:  # the session's open char
                await w.write(b"\xe2")
            async with await s.writer() as w:
                await w.write(b"\x82")
                await w.write(b"\xac!")
                await w.write(b"a\xe2")
                # tokens flush the text
                await aexpect(lambda: w.write_tokens([65]), 11)
                # a surrogate's start
                await aexpect(lambda: w.write(b"\x82\xac\xed\xa0"), 14)
                await w.write(b"\x82\xac")
                await w.write_tokens([65])
            await aexpect(
                lambda: s.append(b"caf\xc3", tokens=[65], flush=False), 18)
            return (await s.get()).input_offset

    def run_sync():
        with Client(server.address) as c:
            s = c.session(c.create_session().session_id)
            expect(lambda: s.append(b"abc\xe2\x82"), 3)
            assert s.get().input_offset == 0
            with s.writer(max_chunk_bytes=1000) as w:
                expect(lambda: w.write(bytes(bad)), 4000)
                assert w.offset == 0
                w.write(b"ok \xe2")
                expect(w.flush, 3)
                expect(lambda: w.write("x"), 3)
                w.write(b"\x82\xac")
                w.flush()
            with s.writer() as w:  # the session's open character
                w.write(b"\xe2")
            with s.writer() as w:
                w.write(b"\x82")
                w.write(b"\xac!")
                w.write(b"a\xe2")
                expect(lambda: w.write_tokens([65]), 11)  # tokens flush
                expect(lambda: w.write(b"\x82\xac\xed\xa0"), 14)  # surrogate
                w.write(b"\x82\xac")
                w.write_tokens([65])
            expect(lambda: s.append(b"caf\xc3", tokens=[65], flush=False),
                   18)
            return s.get().input_offset

    result = asyncio.run(run_async()) if aio else run_sync()
    assert result == 15  # "ok €" + "€!" + "a€" + a token


def test_async_writer_out_of_attempts_does_not_write_twice(server):
    # The server is gone for longer than the writer's attempts: the writer
    # fails. Writing the same text again after the server is back must not
    # append it a second time (the failed writer still holds it).
    async def main():
        async with AsyncClient(server.address, max_attempts=2,
                               initial_backoff=0.01) as c:
            await c.create_session("gone")
            s = c.session("gone")
            w = await s.writer()
            await w.write("first ")
            await w.checkpoint()
            server.kill()
            with pytest.raises(StatestreamError) as first:
                await w.write("second")
                await w.sync()
            assert first.value.code == grpc.StatusCode.UNAVAILABLE
            server.start()  # the same port
            with pytest.raises(StatestreamError) as again:
                await w.write("second")
            assert again.value is first.value
            with pytest.raises(StatestreamError) as again:
                await w.close()
            assert again.value is first.value
        with Client(server.address) as check:
            info = check.session("gone").get()
        assert info.input_offset == len("first ")
    asyncio.run(main())


def test_write_after_close_fails(server):
    with Client(server.address) as c:
        c.create_session("closed")
        appends = CountingAppend(c)
        w = c.session("closed").writer()
        w.write("text")
        assert w.close().committed_input_offset == 4
        for call in (lambda: w.write("more"), w.flush, w.checkpoint, w.close):
            with pytest.raises(StatestreamError) as e:
                call()
            assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert appends.calls == 1


def test_async_write_after_close_fails(server):
    async def main():
        async with AsyncClient(server.address) as c:
            await c.create_session("closed")
            appends = CountingAppend(c)
            s = c.session("closed")
            async with await s.writer() as w:
                await w.write("text")
                assert (await w.close()).committed_input_offset == 4
                for call in (lambda: w.write("more"), w.flush, w.checkpoint,
                             w.close):
                    with pytest.raises(StatestreamError) as e:
                        await call()
                    assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
                    assert e.value.message == "writer closed"
            # Leaving the block closed nothing a second time.
            assert appends.calls == 1
            assert [v.version for v in await s.versions()] == [2, 1]
    asyncio.run(main())


# -- asyncio cancellation ----------------------------------------------------
#
# The server is stopped (SIGSTOP) so that a read is certainly pending when
# asyncio.wait_for gives up on it: gRPC then cancels the call, and the next
# read must open a new one and resume instead of failing with CancelledError.

def pause(server) -> None:
    """SIGSTOP, then waits until every thread has stopped (a thread may
    run on for a moment: kill() does not wait for it)."""
    pid = server._proc.pid
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        states = []
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/stat") as f:
                    # The state follows the command name "(...)".
                    states.append(f.read().rsplit(")", 1)[1].split()[0])
            except FileNotFoundError:
                pass  # a thread that ended
        if all(state in "tT" for state in states):
            return
        time.sleep(0.001)
    raise AssertionError("the server did not stop")


def resume(server) -> None:
    os.kill(server._proc.pid, signal.SIGCONT)


def test_async_generate_resumes_after_a_cancelled_read(server):
    async def main():
        async with AsyncClient(server.address,
                               options=[("grpc.http2.bdp_probe", 0)]) as c:
            await c.create_session("g")
            s = c.session("g")
            await s.append("Once upon a time")
            args = dict(max_tokens=8000, seed=5, temperature=1.0,
                        request_id="cancelled-read")
            ref = await s.generate_text(**args)
            stream = s.generate(**args)
            tokens, raw = [], b""

            def take(chunk):
                nonlocal raw
                assert chunk.index == len(tokens)
                tokens.extend(chunk.tokens)
                raw += chunk.raw

            take(await stream.__anext__())
            for _ in range(2):
                pause(server)
                try:
                    while True:  # what is buffered, then a pending read
                        take(await asyncio.wait_for(stream.__anext__(), 0.3))
                except asyncio.TimeoutError:
                    pass
                finally:
                    resume(server)
                take(await stream.__anext__())
            async for chunk in stream:
                take(chunk)
            assert len(tokens) == 8000
            assert tokens == ref.tokens
            assert raw.decode("utf-8", "replace") == ref.text
            assert stream.done.finish_reason == "FINISH_REASON_MAX_TOKENS"

            # aclose() ends the iteration.
            stream = s.generate(**args)
            await stream.__anext__()
            await stream.aclose()
            with pytest.raises(StopAsyncIteration):
                await stream.__anext__()
    asyncio.run(main())


def test_async_writer_resumes_after_a_cancelled_sync(server):
    async def main():
        async with AsyncClient(server.address) as c:
            await c.create_session("w")
            await c.create_session("ref")
            s, ref = c.session("w"), c.session("ref")
            w = await s.writer(max_chunk_bytes=100)
            text = b""
            for i in range(3):
                part = b"part %d of a text that is cancelled\n" % i
                await w.write(part * 3)
                text += part * 3
                assert (await w.sync()).input_offset == len(text)
                pause(server)
                try:
                    await w.write(part)  # in the window: does not wait
                    text += part
                    with pytest.raises(asyncio.TimeoutError):
                        await asyncio.wait_for(w.sync(), 0.3)
                finally:
                    resume(server)
                # A new call: what the cancelled one had not acknowledged
                # is resent.
                assert (await w.sync()).input_offset == len(text)
            await w.write(b"the end")
            text += b"the end"
            done = await w.close()
            assert done.committed_input_offset == len(text)
            assert w.reconnects == 0  # cancellations are not failures
            await ref.append(text)
            a, b = await s.get(), await ref.get()
            assert (a.position, a.input_offset) == (b.position, b.input_offset)
            assert (await s.score("x")).sum_logprob == \
                (await ref.score("x")).sum_logprob
    asyncio.run(main())


class InFlight:
    """Wraps a client's Append calls to record the most requests written
    but not yet acknowledged (read) on one call."""

    def __init__(self, client):
        self.most = 0
        self.calls = 0
        for stubs in client._stubs:
            stubs.streams.Append = self._wrap(stubs.streams.Append)

    def _wrap(self, append):
        def opened(*args, **kwargs):
            self.calls += 1
            return _CountedCall(self, append(*args, **kwargs))
        return opened


class _CountedCall:
    def __init__(self, counter, call):
        self._counter, self._call, self._unread = counter, call, 0

    async def write(self, request):
        await self._call.write(request)
        self._unread += 1
        self._counter.most = max(self._counter.most, self._unread)

    async def read(self):
        msg = await self._call.read()
        if msg is not grpc.aio.EOF:
            self._unread -= 1
        return msg

    def __getattr__(self, name):
        return getattr(self._call, name)


def test_async_resend_goes_through_the_window(server):
    # Requests retained (bare flushes: no commit covers them here) are
    # resent after a kill at most `window` ahead of the acks read. Written
    # all at once, a long queue (thousands of requests) fills the server's
    # 64 unread acks and both flow-control windows, and the writer
    # deadlocks; here the count of requests in flight shows it.
    async def main():
        async with AsyncClient(server.address, max_attempts=40,
                               max_backoff=0.5) as c:
            await c.create_session("many")
            await c.create_session("ref")
            s, ref = c.session("many"), c.session("ref")
            in_flight = InFlight(c)
            w = await s.writer(window=8)
            await w.write("x")
            for _ in range(300):
                await w.flush()
            await w.sync()
            in_flight.most = 0
            server.kill_and_restart()
            await w.write("y")
            done = await asyncio.wait_for(w.close(), 60)
            assert w.reconnects >= 1
            assert in_flight.calls >= 2
            assert in_flight.most <= 8
            assert done.committed_input_offset == 2
            await ref.append("xy")
            assert (await s.score("z")).sum_logprob == \
                (await ref.score("z")).sum_logprob
    asyncio.run(main())


# -- window: at most 64 requests in flight -----------------------------------
#
# The server stops reading a writer that leaves 64 acks unread. A writer
# that sent up to `window` requests before reading any ack waited forever
# (flow control) once window > 64: every writer clamps window to 64.

def test_a_window_over_64_is_clamped(server):
    with Client(server.address) as c:
        c.create_session("wide")
        with c.session("wide").writer(window=5000, timeout=60) as w:
            assert w._window == 64
            for _ in range(3000):
                w.write_tokens([65])
            done = w.close()
        assert done.committed_input_offset == 3000


def test_async_a_window_over_64_is_clamped(server):
    async def main():
        async with AsyncClient(server.address) as c:
            await c.create_session("wide")
            in_flight = InFlight(c)
            w = await c.session("wide").writer(window=5000)

            async def feed():
                for _ in range(3000):
                    await w.write("a")
                return await w.close()
            done = await asyncio.wait_for(feed(), 60)
            assert done.committed_input_offset == 3000
            assert 0 < in_flight.most <= 64
    asyncio.run(main())


# -- retrying an append: start_offset ---------------------------------------
#
# A writer starts where the session is now, so an append retried after it
# raised (its text applied and committed after all) was applied twice. With
# the offset the text began at, the retry is acknowledged as a duplicate.

def test_an_append_retried_at_its_start_offset_applies_once(server):
    with Client(server.address) as c:
        c.create_session("retry")
        s = c.session("retry")
        assert s.append("hello", start_offset=0).input_offset == 5
        again = s.append("hello", start_offset=0)
        assert again.input_offset == 5
        assert s.get().input_offset == 5
        # A writer at an explicit offset, after the text it continues.
        with s.writer(start_offset=5) as w:
            w.write(" world")
            assert w.close().committed_input_offset == 11
        # A session short of start_offset: a gap, nothing applied.
        with pytest.raises(StatestreamError) as e:
            s.append("x", start_offset=100)
        assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert e.value.reason == "POSITION_MISMATCH"
        assert s.get().input_offset == 11


def test_async_an_append_retried_at_its_start_offset_applies_once(server):
    async def main():
        async with AsyncClient(server.address) as c:
            await c.create_session("retry")
            s = c.session("retry")
            assert (await s.append("hello", start_offset=0)).input_offset == 5
            assert (await s.append("hello", start_offset=0)).input_offset == 5
            assert (await s.get()).input_offset == 5
            async with await s.writer(start_offset=5) as w:
                await w.write(" world")
            assert (await s.get()).committed_input_offset == 11
    asyncio.run(main())


# -- a writer dropped without close() ----------------------------------------
#
# gRPC consumes a sync writer's requests on a thread of its own, which waits
# for the next request; a writer dropped without close() left that thread
# waiting for the life of the process.

def wait_for_threads(at_most: int) -> int:
    deadline = time.monotonic() + 10
    while threading.active_count() > at_most and time.monotonic() < deadline:
        time.sleep(0.01)
    return threading.active_count()


def settled_thread_count() -> int:
    """The thread count once it held still for 0.3 s (or after 10 s)."""
    deadline = time.monotonic() + 10
    count, stable_since = threading.active_count(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.02)
        now = threading.active_count()
        if now != count:
            count, stable_since = now, time.monotonic()
        elif time.monotonic() - stable_since >= 0.3:
            break
    return count


def test_a_dropped_writer_ends_its_call(server):
    with Client(server.address) as c:
        c.create_session("dropped")
        s = c.session("dropped")
        s.append("warm up ")  # gRPC's own threads, started once
        baseline = settled_thread_count()  # the warm-up's threads gone
        for i in range(3):
            w = s.writer()
            w.write("uncommitted %d " % i)
            w.sync()  # its call is open (a request thread, while it runs)
            del w
            gc.collect()
            assert wait_for_threads(baseline) <= baseline
        # The session is usable, and a later writer is not superseded by
        # anything left behind.
        assert s.append("end").input_offset > len("warm up ")


# -- sync() after close(), and a closed client -------------------------------
#
# sync() after close() returned the last ack instead of the FAILED_PRECONDITION
# "writer closed" that every other call raises (C++: the same message).
# Client.close() during a stream: the CANCELLED of the closed channel was
# retried, and opening the new call raised gRPC's ValueError ("Cannot invoke
# RPC: Channel closed!"); it is now a CANCELLED StatestreamError that the
# writer keeps.

def test_sync_after_close_fails(server):
    with Client(server.address) as c:
        c.create_session("closed")
        w = c.session("closed").writer()
        w.write("text")
        w.close()
        with pytest.raises(StatestreamError) as e:
            w.sync()
        assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert e.value.message == "writer closed"


def test_async_sync_after_close_fails(server):
    async def main():
        async with AsyncClient(server.address) as c:
            await c.create_session("closed")
            w = await c.session("closed").writer()
            await w.write("text")
            await w.close()
            with pytest.raises(StatestreamError) as e:
                await w.sync()
            assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
            assert e.value.message == "writer closed"
    asyncio.run(main())


def test_closing_the_client_ends_its_streams_with_cancelled(server):
    c = Client(server.address, max_attempts=5, initial_backoff=0.01)
    c.create_session("gone")
    s = c.session("gone")
    w = s.writer()
    w.write("applied ")
    w.sync()
    stream = s.generate("x", max_tokens=8000)
    next(stream)
    c.close()
    with pytest.raises(StatestreamError) as first:
        w.write("after close")
    assert first.value.code == grpc.StatusCode.CANCELLED
    assert first.value.message == "client closed"
    for call in (lambda: w.write("more"), w.flush, w.sync, w.checkpoint,
                 w.close):
        with pytest.raises(StatestreamError) as again:
            call()
        assert again.value is first.value
    with pytest.raises(StatestreamError) as e:
        for _ in stream:
            pass
    assert e.value.code == grpc.StatusCode.CANCELLED
    for call in (s.get, lambda: s.writer(), lambda: next(s.generate("x"))):
        with pytest.raises(StatestreamError) as e:
            call()
        assert e.value.code == grpc.StatusCode.CANCELLED


def test_async_closing_the_client_gives_cancelled(server):
    async def main():
        c = AsyncClient(server.address)
        await c.create_session("gone")
        s = c.session("gone")
        w = await s.writer()  # no call opened yet
        await c.close()
        with pytest.raises(StatestreamError) as first:
            await w.write("after close")
            await w.sync()
        assert first.value.code == grpc.StatusCode.CANCELLED
        with pytest.raises(StatestreamError) as again:
            await w.sync()
        assert again.value is first.value
        for call in (s.get, s.writer, lambda: s.generate_text("x")):
            with pytest.raises(StatestreamError) as e:
                await call()
            assert e.value.code == grpc.StatusCode.CANCELLED
    asyncio.run(main())


# -- every writer call after Client.close() raises ----------------------------
#
# A write() after the client closed succeeded silently while the window was
# not full (nothing is read back then): the input went nowhere. Every call
# now raises CANCELLED "client closed" at once, the same error each time.

WRITER_CALLS = ["write", "write_empty", "write_tokens", "flush", "sync",
                "checkpoint", "close"]


def writer_call(w, name):
    return {"write": lambda: w.write("x"), "write_empty": lambda: w.write(""),
            "write_tokens": lambda: w.write_tokens([1]),
            "flush": w.flush, "sync": w.sync, "checkpoint": w.checkpoint,
            "close": w.close}[name]()


@pytest.mark.parametrize("aio", [False, True])
def test_every_writer_call_after_client_close_raises(server, aio):
    def check(first, again):
        assert first.code == grpc.StatusCode.CANCELLED
        assert first.message == "client closed"
        assert again is first  # kept

    async def run_async():
        c = AsyncClient(server.address)
        await c.create_session("w")
        w = await c.session("w").writer()
        await w.write("applied ")  # a call open, the window far from full
        await c.close()
        for name in WRITER_CALLS:
            with pytest.raises(StatestreamError) as e:
                await writer_call(w, name)
            check(e.value, w._error)
        return w.offset

    def run_sync():
        c = Client(server.address)
        c.create_session("w")
        w = c.session("w").writer()
        w.write("applied ")
        c.close()
        for name in WRITER_CALLS:
            with pytest.raises(StatestreamError) as e:
                writer_call(w, name)
            check(e.value, w._error)
        return w.offset
    offset = asyncio.run(run_async()) if aio else run_sync()
    assert offset == len("applied ")  # nothing taken after the close


# -- sync() before any ack ----------------------------------------------------
#
# sync() on a writer that had nothing acknowledged yet returned None, though
# it returns an AppendAck: it now asks the server for the session's current
# ack (a request without payload), the position everything written so far
# (nothing) leaves it at.

@pytest.mark.parametrize("aio", [False, True])
def test_sync_on_a_fresh_writer_returns_the_current_ack(server, aio):
    async def run_async():
        async with AsyncClient(server.address) as c:
            await c.create_session("fresh")
            s = c.session("fresh")
            await s.append("abc")
            w = await s.writer()
            first = await w.sync()
            await w.write("de")
            return first, await w.sync(), await w.close(), await s.get()

    def run_sync():
        with Client(server.address) as c:
            c.create_session("fresh")
            s = c.session("fresh")
            s.append("abc")
            w = s.writer()
            first = w.sync()
            w.write("de")
            return first, w.sync(), w.close(), s.get()
    first, second, closed, info = (asyncio.run(run_async()) if aio
                                   else run_sync())
    assert first is not None
    assert (first.input_offset, first.committed_input_offset) == (3, 3)
    assert first.version == 2 and not first.duplicate
    assert second.input_offset == 5
    assert closed.committed_input_offset == info.input_offset == 5


# -- Client.close() ends an open writer's call --------------------------------
#
# After Client.close() a sync writer still referenced kept its gRPC call's
# request thread waiting on the writer's queue until the writer was
# collected.

def test_closing_the_client_ends_an_open_writers_call(server):
    c = Client(server.address)
    c.create_session("open")
    s = c.session("open")
    s.append("warm up ")
    baseline = settled_thread_count()
    w = s.writer()
    w.write("uncommitted ")
    w.sync()  # its call is open: a request thread waits on its queue
    assert threading.active_count() > baseline
    c.close()
    assert wait_for_threads(baseline) <= baseline
    with pytest.raises(StatestreamError) as e:
        w.write("more")
    assert e.value.code == grpc.StatusCode.CANCELLED
    del w


def test_async_writer_shared_by_tasks_sends_each_request_once(server):
    # One task writes while others checkpoint and sync on the same writer:
    # each request goes out once and its ack is paired with it (two tasks
    # pumping at once sent a request twice, took the duplicate's ack for
    # a checkpoint's and dropped input no commit covered).
    async def main():
        async with AsyncClient(server.address) as c:
            await c.create_session("shared")
            await c.create_session("ref")
            s, ref = c.session("shared"), c.session("ref")
            w = await s.writer(window=4)
            text = "".join(f"part {i}; " for i in range(60))

            async def writing():
                for i in range(60):
                    await w.write(f"part {i}; ")

            async def checkpointing():
                for _ in range(15):
                    at = w.offset  # what was written before it
                    ack = await w.checkpoint()
                    assert ack.committed_input_offset >= at

            async def syncing():
                for _ in range(15):
                    await w.sync()

            # (Unserialised, the mismatched acks hung the writer.)
            await asyncio.wait_for(
                asyncio.gather(writing(), checkpointing(), syncing()), 60)
            done = await asyncio.wait_for(w.close(), 60)
            assert done.committed_input_offset == len(text)
            assert (await s.get()).input_offset == len(text)
            await ref.append(text)
            assert (await s.score("z")).sum_logprob == \
                (await ref.score("z")).sum_logprob
    asyncio.run(main())


def test_async_a_task_cancelled_waiting_its_turn_leaves_the_call_alone(
        server):
    # A task's checkpoint times out (wait_for) while it waits for another
    # task's sync to read its ack: the writer cancelled that task's gRPC
    # call, and its sync raised asyncio.CancelledError, though nobody had
    # cancelled it.
    async def main():
        async with AsyncClient(server.address) as c:
            await c.create_session("turn")
            w = await c.session("turn").writer()
            await w.write("before ")
            assert (await w.sync()).input_offset == 7
            pause(server)
            try:
                await w.write("paused")  # in the window: does not wait
                syncing = asyncio.ensure_future(w.sync())
                await asyncio.sleep(0.1)  # it reads the ack (none yet)
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(w.checkpoint(), 0.2)
                await asyncio.sleep(0.1)
                assert not syncing.done()
            finally:
                resume(server)
            await asyncio.wait({syncing}, timeout=30)
            assert not syncing.cancelled()
            # The checkpoint queued went out with the sync's requests.
            ack = syncing.result()
            assert ack.input_offset == ack.committed_input_offset == 13
            assert w.reconnects == 0
            assert (await w.close()).committed_input_offset == 13
    asyncio.run(main())


def test_async_leaving_a_with_block_on_an_error_waits_for_the_other_task(
        server):
    # One task leaves `async with writer` on an exception while another
    # task's sync reads its ack: the call was cancelled under that sync,
    # which raised asyncio.CancelledError. It now ends when the sync is
    # done with it.
    async def main():
        async with AsyncClient(server.address) as c:
            await c.create_session("exit")
            w = await c.session("exit").writer()
            await w.write("before ")
            await w.sync()
            pause(server)
            try:
                await w.write("paused")
                syncing = asyncio.ensure_future(w.sync())
                await asyncio.sleep(0.1)
                with pytest.raises(RuntimeError):
                    async with w:
                        raise RuntimeError("this task gives up")
                await asyncio.sleep(0.1)
                assert not syncing.done()
            finally:
                resume(server)
            await asyncio.wait({syncing}, timeout=30)
            assert not syncing.cancelled()
            assert syncing.result().input_offset == 13
            assert w._call is None  # ended once the sync was done
            assert (await w.close()).committed_input_offset == 13
    asyncio.run(main())


def test_async_checkpoint_returns_its_own_ack(server):
    # Another task writes while the checkpoint waits for its ack: the
    # checkpoint returned the ack of that later write (uncommitted).
    async def main():
        async with AsyncClient(server.address) as c:
            await c.create_session("own")
            w = await c.session("own").writer()
            await w.write("checkpointed")
            checkpointing = asyncio.ensure_future(w.checkpoint())
            await asyncio.sleep(0)  # it queued its checkpoint and sends it
            await w.write(" and more")  # after it; sent by the same task
            ack = await checkpointing
            assert ack.input_offset == ack.committed_input_offset == 12
            assert (await w.sync()).input_offset == 21
            assert w.last_ack.input_offset == 21
            assert (await w.close()).committed_input_offset == 21
    asyncio.run(main())
