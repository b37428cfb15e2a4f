# SPDX-License-Identifier: Apache-2.0
"""The SDK against the fake server (fake_server.py): timeouts that bound
whole operations, closing the client, the async commit pin and an async
import beside the event loop."""
import asyncio
import os
import socket
import threading
import time

import grpc
import grpc.aio
import pytest

from statestream import Client, ExportedState, StatestreamError
from statestream.aio import AsyncClient
from statestream.checksum import _crc32c
from statestream.errors import is_retryable
from statestream.v1 import statestream_pb2 as pb
from fake_server import fast_retries, slow_retries


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
    "get_model": lambda c, s, t: c.get_model("m", timeout=t),
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


# -- a client left open ------------------------------------------------------
#
# A sync Client watches its channels' connectivity (faster reconnects). A
# script that never closed its Client then never exited: the channels'
# __del__ at interpreter shutdown waited on gRPC's polling thread.

NEVER_CLOSED = """
import sys
from statestream import Client
client = Client(sys.argv[1:])
if sys.argv[1] != "127.0.0.1:1":
    client.create_session()
print("done", flush=True)
"""


@pytest.mark.parametrize("live", [True, False], ids=["live", "nothing-there"])
def test_a_script_that_never_closes_its_client_exits(server, tmp_path, live):
    import subprocess
    import sys
    script = tmp_path / "never_closed.py"
    script.write_text(NEVER_CLOSED)
    target = server.address if live else "127.0.0.1:1"
    r = subprocess.run([sys.executable, str(script), target],
                       capture_output=True, text=True, timeout=20,
                       env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "done\n"
    assert "Traceback" not in r.stderr, r.stderr


def test_a_dropped_client_closes_its_channels(server):
    import gc
    c = Client(server.address)
    c.list_models()
    release = c._release
    assert release.alive
    del c
    gc.collect()
    assert not release.alive  # ran: watches ended, channels closed


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
    import statestream.checksum
    import statestream.messages
    blob = os.urandom(8 << 20)
    state = ExportedState(pb.StateHeader(total_bytes=len(blob),
                                         chunk_count=8,
                                         chunk_bytes=1 << 20), blob)
    crc_threads = set()  # where the CRCs were computed
    python_crc = statestream.checksum._crc32c_python

    def crc(data):
        crc_threads.add(threading.current_thread())
        return _crc32c(data)

    def crc_python(data, crc=0):
        crc_threads.add(threading.current_thread())
        return python_crc(data, crc)
    monkeypatch.setattr(statestream.checksum, "_crc32c", crc)
    # messages binds it by import: its CRCs are caught too.
    monkeypatch.setattr(statestream.messages, "_crc32c", crc)
    monkeypatch.setattr(statestream.checksum, "_crc32c_python", crc_python)
    # The pure-Python CRC, google-crc32c installed or not.
    monkeypatch.setattr(statestream.checksum, "_C_CRC", False, raising=False)

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
