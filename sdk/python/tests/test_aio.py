# SPDX-License-Identifier: Apache-2.0
"""The asyncio client against a real server, including a kill -9 in the
middle of an Append and of a Generate."""
import asyncio

import grpc
import pytest

from statestream import StatestreamError
from statestream.aio import AsyncClient


def run(coro):
    return asyncio.run(coro)


def test_async_append_and_generate_survive_kill9(server):
    async def main():
        async with AsyncClient(server.address, max_attempts=40,
                               max_backoff=0.5,
                               options=[("grpc.http2.bdp_probe", 0)]) as c:
            await c.create_session("a")
            await c.create_session("ref")
            s, ref = c.session("a"), c.session("ref")
            text = b"".join(b"chunk %d of the stream\n" % i for i in range(800))
            w = await s.writer(max_chunk_bytes=500)
            await w.write(text[:8000])
            await w.checkpoint()
            await w.write(text[8000:12000])
            ack = await w.sync()  # applied, not committed
            assert ack.committed_input_offset == 8000
            server.kill_and_restart()
            await w.write(text[12000:])
            await w.flush()
            done = await w.close()
            assert w.reconnects >= 1
            assert done.committed_input_offset == len(text)
            await ref.append(text)
            a, b = await s.get(), await ref.get()
            assert (a.position, a.input_offset) == (b.position, b.input_offset)
            assert (await s.score("x")).sum_logprob == \
                (await ref.score("x")).sum_logprob

            args = dict(max_tokens=8000, seed=3, temperature=1.0,
                        logprobs=True, top_logprobs=5, request_id="g")
            expected = await s.generate_text(**args)
            stream = s.generate(**args)
            assert stream.request_id == "g"
            assert stream.expected_input_offset is None  # a side branch
            tokens = []
            async for chunk in stream:
                if not tokens:
                    server.kill_and_restart()
                tokens += chunk.tokens
            assert stream.reconnects >= 1
            assert tokens == expected.tokens

            fork = await s.fork(new_id="a-fork")
            assert (await fork.get()).parent_session_id == "a"
            assert [v.version for v in await s.versions()][0] == 3
    run(main())


def resumed_after_the_session_moved(server, session_id, **generate):
    """Generates on a new session, kills the server after the first chunk,
    appends to the session, then reads the resumed stream: the error it
    raised (an AssertionError if it joined the output instead)."""
    async def main():
        async with AsyncClient(server.address, max_attempts=40,
                               max_backoff=0.5,
                               options=[("grpc.http2.bdp_probe", 0)]) as c:
            await c.create_session(session_id)
            s = c.session(session_id)
            await s.append("Once upon a time")
            stream = s.generate(max_tokens=8000, **generate)
            await stream.__anext__()
            server.kill_and_restart()
            await s.append(" there was a change")
            try:
                async for _ in stream:
                    pass
            except StatestreamError as e:
                return e
            raise AssertionError("output from two states was joined")
    return run(main())


def test_async_resumed_sampled_generate_on_a_moved_session_is_not_joined(
        server):
    e = resumed_after_the_session_moved(
        server, "diverge", temperature=1.0, logprobs=True, top_logprobs=5,
        request_id="diverging")
    assert e.code == grpc.StatusCode.FAILED_PRECONDITION
    assert e.reason == "POSITION_MISMATCH"


def test_async_resumed_greedy_generate_on_a_moved_session_is_not_joined(
        server):
    # Greedy output could repeat the delivered tokens from another state:
    # the resume is pinned to the input its first chunk started from.
    e = resumed_after_the_session_moved(server, "moved", temperature=0,
                                        request_id="greedy")
    assert e.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "input moved" in e.message
    assert e.reason == "POSITION_MISMATCH"


def test_async_committing_generate_retried_under_its_own_id_is_replayed(
        server):
    async def main():
        async with AsyncClient(server.address) as c:
            await c.create_session("own-id")
            s = c.session("own-id")
            await s.append("Hello there")
            args = dict(max_tokens=6, seed=3, temperature=1.0, commit=True,
                        request_id="my-turn-1")
            first = await s.generate_text("Say:", **args)
            again = await s.generate_text("Say:", **args)
            return first, again
    first, again = run(main())
    assert first.done.committed and not first.done.replayed
    assert again.done.replayed and again.tokens == first.tokens


def test_async_client_has_the_sync_options(server):
    # AsyncClient lacked list_models, write_tokens, append(tokens, flush),
    # generate(prompt_tokens, top_k), create_session(ttl_seconds) and
    # list_sessions(model_id).
    from statestream.v1 import statestream_pb2 as pb

    async def main():
        async with AsyncClient(server.address) as c:
            models = await c.list_models(timeout=10)
            model_id = models[0].model_id
            assert (await c.get_model(model_id)).fingerprint == \
                models[0].fingerprint
            with pytest.raises(StatestreamError) as e:
                await c.get_model("no-such-model")
            assert e.value.reason == "MODEL_NOT_FOUND"
            info = await c.create_session("t", ttl_seconds=3600,
                                          durability=pb.DURABILITY_FSYNC)
            assert info.ttl.total_seconds() == 3600
            assert info.durability == "DURABILITY_FSYNC"
            assert [x.session_id for x in await c.list_sessions(
                model_id=model_id)] == ["t"]
            assert await c.list_sessions(model_id="no-such-model") == []
            s = c.session("t")
            w = await s.writer()
            await w.write_tokens([72, 105])
            assert (await w.close()).input_offset == 2
            ack = await s.append("!", tokens=[33], flush=False)
            assert ack.input_offset == 4
            out = await s.generate_text(prompt_tokens=[10], top_k=1,
                                        max_tokens=3)
            ref = await s.generate_text(prompt_tokens=[10], temperature=0,
                                        max_tokens=3)
            assert out.tokens == ref.tokens  # top_k=1 is greedy
            r = await s.score(tokens=[1, 2], top_logprobs=2)
            assert all(len(t.top) == 2 for t in r.tokens)
    run(main())


def test_async_commit_pin_is_read_at_generate(server):
    # A committing generate pins the input_offset read when generate() is
    # called: input appended after it makes the call fail POSITION_MISMATCH
    # instead of generating from the moved session. The sync client reads it
    # inside generate(); asyncio only starts the read there (a task, which
    # may land after an append made right after: test_faults checks it
    # starts then), so a caller that needs the order pins it explicitly.
    from statestream import Client
    with Client(server.address) as c:
        c.create_session("pin")
        s = c.session("pin")
        s.append("Once upon a time")
        stream = s.generate(commit=True, max_tokens=2)
        s.append(" more")
        with pytest.raises(StatestreamError) as sync_error:
            list(stream)
    assert sync_error.value.reason == "POSITION_MISMATCH"

    async def main():
        async with AsyncClient(server.address) as c:
            s = c.session("pin")
            at = (await s.get()).input_offset
            stream = s.generate(commit=True, max_tokens=2,
                                expected_input_offset=at)
            await s.append(" again")
            with pytest.raises(StatestreamError) as e:
                async for _ in stream:
                    pass
            return e.value
    e = run(main())
    assert e.code == grpc.StatusCode.FAILED_PRECONDITION
    assert e.reason == "POSITION_MISMATCH"


def test_a_writer_is_an_async_context_manager_without_await(server):
    """`async with s.writer() as w:` (no await) works, as `with s.writer()
    as w:` does in the blocking client; awaiting it still gives the
    writer."""
    async def main():
        async with AsyncClient(server.address) as c:
            await c.create_session("cm")
            s = c.session("cm")
            async with s.writer() as w:
                await w.write(b"hello ")
                await w.flush()
            async with await s.writer() as w:
                await w.write(b"world")
                await w.flush()
            assert (await s.get()).input_offset == 11
    run(main())


def test_async_generate_reads_the_caller_cancels_still_run_out_of_attempts():
    # No server, and each read's wait_for ends inside the backoff: the count
    # of failed attempts started over at every read, so the stream never
    # gave up. (The next read waits out the rest of the backoff: 2 x 0.5 s
    # in all here.)
    async def main():
        async with AsyncClient("127.0.0.1:1", max_attempts=3,
                               initial_backoff=0.5, max_backoff=0.5) as c:
            stream = c.session("s").generate("p")
            for reads in range(1, 11):
                try:
                    await asyncio.wait_for(stream.__anext__(), 0.3)
                except asyncio.TimeoutError:
                    continue
                except StatestreamError as e:
                    return reads, e
            return reads, None
    reads, e = run(main())
    assert e is not None, "the stream never gave up"
    assert e.code == grpc.StatusCode.UNAVAILABLE
    assert reads <= 8


def test_async_generate_polled_with_short_timeouts_waits_out_retry_after(fake):
    # A read cancelled by its caller's wait_for inside
    # the backoff cut it short, and the next one opened an attempt at
    # once: one attempt a poll, inside the server's 2 s retry_after_ms.
    async def main():
        async with AsyncClient(fake.address, max_attempts=10,
                               initial_backoff=0.01, max_backoff=5) as c:
            stream = c.session("overloaded").generate("p")
            for _ in range(5):
                try:
                    await asyncio.wait_for(stream.__anext__(), 0.2)
                except asyncio.TimeoutError:
                    pass
            stream.cancel()
    run(main())
    tried = [r for r in fake.generate_requests
             if r.session_id == "overloaded"]
    assert len(tried) == 1
