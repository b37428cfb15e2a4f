# SPDX-License-Identifier: Apache-2.0
"""Clients reach a server over a slow link (a high round-trip time, as a
TLS connection across regions has): the channel gives a connection attempt
5 s (`min_reconnect_backoff_ms`, the minimum connect timeout in gRPC
core), not the 0.1-1 s it was once set to: a handshake slower than that
never completed. Checked for the Python client (sync and
async) and, through the CLI, the C++ client."""
import asyncio
import os
import subprocess
import threading

import pytest

from statestream import Client, StatestreamError
from statestream.aio import AsyncClient

DELAY_S = 0.5  # each way, for every piece of data


class SlowProxy:
    """A TCP proxy on 127.0.0.1 that holds every read DELAY_S before
    passing it on, in both directions."""

    def __init__(self, upstream: str):
        host, port = upstream.rsplit(":", 1)
        self._upstream = (host, int(port))
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
        self._ready.set()
        self._loop.run_forever()

    async def _pipe(self, reader, writer):
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                await asyncio.sleep(DELAY_S)
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
