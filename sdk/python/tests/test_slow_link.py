# SPDX-License-Identifier: Apache-2.0
"""Clients reach a server over a slow link.

- A high round-trip time, as a TLS connection across regions has: the
  channel gives a connection attempt 5 s (`min_reconnect_backoff_ms`, the
  minimum connect timeout in gRPC core), not the 0.1-1 s it was once set
  to: a handshake slower than that never completed.
- A narrow one: a session's state moves in 1 MiB chunks, and an export or
  import attempt is bounded by the client's timeout per chunk, not for the
  whole state, so a state larger than the link moves in one timeout still
  moves; a link that moves nothing still ends the attempt.

Checked for the Python client (sync and async) and, through the CLI, the
C++ client."""
import asyncio
import os
import subprocess
import threading
import time

import grpc
import pytest

from statestream import Client, StatestreamError
from statestream.aio import AsyncClient
from statestream.testing import ServeProcess

DELAY_S = 0.5  # each way, for every piece of data


class SlowProxy:
    """A TCP proxy on 127.0.0.1 that holds every read `delay` seconds
    before passing it on, in both directions, at most `rate` bytes a
    second each way (None: as fast as it reads), and forwards nothing while
    paused."""

    def __init__(self, upstream: str, delay: float = DELAY_S,
                 rate: float = None):
        host, port = upstream.rsplit(":", 1)
        self._upstream = (host, int(port))
        self._delay = delay
        self._rate = rate
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    def _run(self):
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.address = "127.0.0.1:%d" % (
            self._server.sockets[0].getsockname()[1])
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._ready.set()
        self._loop.run_forever()

    def pause(self):
        self._loop.call_soon_threadsafe(self._flowing.clear)

    async def _pipe(self, reader, writer):
        loop = asyncio.get_running_loop()
        due = loop.time()  # when the bytes so far may have gone, at `rate`
        try:
            while True:
                data = await reader.read(16384 if self._rate else 65536)
                if not data:
                    break
                if self._rate:
                    # Paced against a schedule: a late wake-up is made up
                    # for, not added to every read after it.
                    due = max(due, loop.time()) + len(data) / self._rate
                    await asyncio.sleep(due - loop.time() + self._delay)
                else:
                    await asyncio.sleep(self._delay)
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _handle(self, client_reader, client_writer):
        try:
            up_reader, up_writer = await asyncio.open_connection(
                *self._upstream)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(self._pipe(client_reader, up_writer),
                             self._pipe(up_reader, client_writer))

    def close(self):
        async def stop():
            self._server.close()
            tasks = [t for t in asyncio.all_tasks()
                     if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture
def slow(server):
    proxy = SlowProxy(server.address)
    yield proxy
    proxy.close()


def test_the_python_client_connects_over_a_slow_link(slow):
    with Client(slow.address, max_attempts=1) as c:
        assert c.list_models()

    async def run():
        async with AsyncClient(slow.address, max_attempts=1) as c:
            return await c.list_models()
    assert asyncio.run(run())


def test_the_cpp_client_connects_over_a_slow_link(slow):
    out = subprocess.run(
        [os.environ["STATESTREAM_BIN"], "models", "--target", slow.address,
         "--max-attempts", "1", "--timeout", "30s"],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip()


def test_a_sync_client_finds_a_restarted_server_at_once(server):
    # Calls made while the server is down leave the channel in
    # TRANSIENT_FAILURE; its reconnect timer fired only while a thread
    # polled it, so calls failed with the old "Connection refused" for
    # 5-10 s after the server was back. Eight attempts at most 0.5 s apart
    # (~2.7 s; the channel retries within its 1 s max backoff) reach it.
    with Client(server.address, max_attempts=8, initial_backoff=0.1,
                max_backoff=0.5) as c:
        assert c.list_models()
        server.kill()
        for _ in range(4):
            with pytest.raises(StatestreamError):
                c.list_models(timeout=0.2)
        server.start()
        assert c.list_models()


# A state of 5.4 MB (6 chunks): 160 layers of 2 heads, small otherwise.
BIG_STATE_MODEL = ["--arch", "x070", "--layers", "160", "--embd", "128",
                   "--vocab", "256", "--ffn", "64", "--dtype", "bf16"]
RATE = 1.0e6  # bytes a second each way: ~1 s a chunk, ~5.4 s the state
# Seconds: ~3 chunks, never the whole state; room for the server to load
# the session before the first chunk on a loaded machine (at 2 s with
# 0.7 s chunks an export under a CI run's load once made no progress).
TIMEOUT = 3.0


@pytest.fixture(scope="module")
def big_state_server(tmp_path_factory):
    binary = os.environ["STATESTREAM_BIN"]
    model = tmp_path_factory.mktemp("model") / "big-state.safetensors"
    subprocess.run([binary, "model", "random", *BIG_STATE_MODEL,
                    "--out", str(model)], check=True, timeout=120)
    with ServeProcess(binary, extra_args=["--model", str(model)]) as s:
        yield s


@pytest.fixture
def narrow(big_state_server):
    proxy = SlowProxy(big_state_server.address, delay=0, rate=RATE)
    yield proxy
    proxy.close()


def test_the_python_client_moves_a_state_longer_than_its_timeout(narrow):
    with Client(narrow.address, timeout=TIMEOUT, max_attempts=1) as c:
        s = c.session(c.create_session().session_id)
        state = s.export()
        assert len(state.blob) == state.header.total_bytes > 5 << 20
        copy = c.import_session(state)
        assert c.session(copy.session_id).export().blob == state.blob

    async def run():
        async with AsyncClient(narrow.address, timeout=TIMEOUT,
                               max_attempts=1) as c:
            exported = await c.session(s.id).export()
            copy = await c.import_session(exported)
            return exported, copy
    exported, copy = asyncio.run(run())
    assert exported.blob == state.blob
    assert copy.version == 1


def test_the_cpp_client_moves_a_state_longer_than_its_timeout(narrow,
                                                               tmp_path):
    def cli(*args):
        out = subprocess.run(
            [os.environ["STATESTREAM_BIN"], *args, "--target", narrow.address,
             "--max-attempts", "1", "--timeout", f"{TIMEOUT}s"],
            capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout
    with Client(narrow.address) as c:
        sid = c.create_session().session_id
    path = tmp_path / "big.state"
    cli("session", "export", sid, "--output", str(path))
    assert path.stat().st_size > 5 << 20
    cli("session", "import", str(path), "big-copy")
    cli("session", "export", "big-copy", "--output", str(tmp_path / "b"))
    assert (tmp_path / "b").read_bytes() == path.read_bytes()


def test_a_transfer_that_moves_nothing_ends_at_the_timeout(
        big_state_server, narrow, tmp_path):
    # A state to import, taken directly (not through the proxy).
    with Client(big_state_server.address) as c:
        s = c.session(c.create_session().session_id)
        state = s.export()
    path = tmp_path / "big.state"
    subprocess.run(
        [os.environ["STATESTREAM_BIN"], "session", "export", s.id,
         "--output", str(path), "--target", big_state_server.address],
        check=True, capture_output=True, timeout=60)
    narrow.pause()

    def stalled(error):
        assert error.code == grpc.StatusCode.DEADLINE_EXCEEDED, error
        assert "no progress" in error.message

    with Client(narrow.address, timeout=1, max_attempts=1) as c:
        with pytest.raises(StatestreamError) as e:
            c.session(s.id).export()
        stalled(e.value)
        with pytest.raises(StatestreamError) as e:
            c.import_session(state)
        stalled(e.value)

    async def run(call):
        async with AsyncClient(narrow.address, timeout=1,
                               max_attempts=1) as c:
            await call(c)
    for call in (lambda c: c.session(s.id).export(),
                 lambda c: c.import_session(state)):
        with pytest.raises(StatestreamError) as e:
            asyncio.run(run(call))
        stalled(e.value)

    for args in (["session", "export", s.id, "--output",
                  str(tmp_path / "never")],
                 ["session", "import", str(path), "never-imported"]):
        out = subprocess.run(
            [os.environ["STATESTREAM_BIN"], *args, "--target",
             narrow.address, "--max-attempts", "1", "--timeout", "1s"],
            capture_output=True, text=True, timeout=60)
        assert out.returncode != 0
        assert "no progress for 1s" in out.stderr, out.stderr


def test_the_cpp_client_finds_a_restarted_server_at_once(server):
    # The C++ client waits on a channel that is not connected during its
    # backoff instead of sleeping beside it: an unwatched sync channel
    # reconnected only ~14 s after its server was back. Attempts at most
    # 0.5 s apart (60 of them: however slowly the server restarts) reach
    # it within a few seconds of it listening again.
    server.kill()
    client = subprocess.Popen(
        [os.environ["STATESTREAM_BIN"], "models", "--target", server.address,
         "--max-attempts", "60", "--max-backoff", "500ms"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1)
    server.start()
    listening = time.monotonic()
    out, err = client.communicate(timeout=60)
    assert client.returncode == 0, err
    assert out.strip()
    assert time.monotonic() - listening < 7, "found the server late"

