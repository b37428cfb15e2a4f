# SPDX-License-Identifier: Apache-2.0
"""The Python SDK against real `statestream serve` processes."""
import os
import struct
import time

import grpc
import pytest

from statestream import Client, StatestreamError
from statestream.errors import is_retryable


def text_of(n: int) -> bytes:
    out, i = [], 0
    while sum(map(len, out)) < n:
        out.append(f"line {i}: streams \u20ac{i * 7919 % 1000}\n".encode())
        i += 1
    return b"".join(out)


def test_append_survives_kill9(server, client):
    text = text_of(30000)
    client.create_session("live")
    live = client.session("live")
    half, three_q = len(text) // 2, len(text) * 3 // 4
    with live.writer(max_chunk_bytes=777) as w:
        w.write(text[:half])
        assert w.checkpoint().committed_input_offset == half
        w.write(text[half:three_q])
        ack = w.sync()  # applied, not committed
        assert (ack.input_offset, ack.committed_input_offset) == (three_q, half)
        server.kill_and_restart()
        w.write(text[three_q:])
        w.flush()
        done = w.close()
        assert w.reconnects >= 1
    assert done.input_offset == done.committed_input_offset == len(text)

    client.create_session("ref")
    ref = client.session("ref")
    ref.append(text)
    a, b = live.get(), ref.get()
    assert (a.position, a.input_offset) == (b.position, b.input_offset)
    assert _payload(live) == _payload(ref)  # bit-identical state
    assert live.score("next").sum_logprob == ref.score("next").sum_logprob



def _payload(session):
    """The recurrent state (and last hidden) of a session's export, as
    bytes: docs/state-format.md. The rest of the blob also names the
    session's parent and its generation records, which differ between
    sessions whose states are equal."""
    blob = session.export().blob
    assert blob[:8] == b"SSSTATE2"
    (header_len,) = struct.unpack_from("<I", blob, 8)
    header = blob[12:12 + header_len]
    floats, hidden = struct.unpack_from("<QQ", header, len(header) - 20)
    start = 12 + header_len
    return blob[start:start + 4 * (floats + hidden)]

def test_generate_survives_kill9(server, client):
    client.create_session("gen")
    s = client.session("gen")
    s.append("Once upon a time")
    args = dict(max_tokens=8000, seed=7, temperature=1.0, logprobs=True,
                top_logprobs=5, request_id="long")
    ref = s.generate_text(**args)
    assert len(ref.tokens) == 8000
    stream = s.generate(**args)
    first = next(stream)
    tokens, raw = list(first.tokens), first.raw
    server.kill_and_restart()
    for chunk in stream:
        assert chunk.index == len(tokens)
        tokens += chunk.tokens
        raw += chunk.raw
    assert stream.reconnects >= 1
    assert tokens == ref.tokens
    assert raw.decode("utf-8", "replace") == ref.text
    assert stream.done.finish_reason == "FINISH_REASON_MAX_TOKENS"


def test_generate_stream_names_its_request(client):
    client.create_session("named")
    s = client.session("named")
    s.append("Once upon a time")
    stream = s.generate(max_tokens=4, commit=True)
    assert len(stream.request_id) == 32  # the SDK's own
    assert stream.expected_input_offset == 16  # pinned: committing
    first = list(stream)
    # Sent again as the same generation: replayed, not committed twice.
    again = s.generate_text(max_tokens=4, commit=True,
                            request_id=stream.request_id,
                            expected_input_offset=stream.expected_input_offset)
    assert again.tokens == [t for c in first for t in c.tokens]
    assert again.done.replayed
    assert s.get().input_offset == stream.done.input_offset
    side = s.generate(max_tokens=2, request_id="mine")
    assert side.request_id == "mine"
    assert side.expected_input_offset is None


def test_session_calls(client):
    client.create_session("s", labels={"kind": "test"})
    s = client.session("s")
    s.append("hello world")
    versions = s.versions()
    assert [v.version for v in versions] == [2, 1]
    assert versions[0].input_offset == 11

    fork = s.fork(new_id="s-fork")
    assert fork.get().parent_session_id == "s"
    assert fork.score("!").sum_logprob == s.score("!").sum_logprob
    # A fork takes labels and a TTL as a create does.
    labelled = s.fork(new_id="s-fork2", labels={"kind": "fork"},
                      ttl_seconds=3600).get()
    assert labelled.labels == {"kind": "fork"}
    assert labelled.ttl.total_seconds() == 3600

    state = s.export(2)
    imported = client.import_session(state, "s-import")
    assert imported.input_offset == 11
    rolled = s.rollback(1)
    assert (rolled.input_offset, rolled.version) == (0, 3)
    assert s.import_state(state).version == 4
    # Each version says what made it, and which request (the SDK's ids; the
    # append's was committed at the end of its stream, which no request
    # asked for).
    now = s.versions()
    assert [(v.cause, v.source_version) for v in now] == [
        ("VERSION_CAUSE_IMPORT", 0), ("VERSION_CAUSE_ROLLBACK", 1),
        ("VERSION_CAUSE_APPEND", 0), ("VERSION_CAUSE_CREATE", 0)]
    ids = [v.request_id for v in now]
    assert ids[2] == "" and len({ids[0], ids[1], ids[3]} - {""}) == 3
    assert [(v.cause, v.source_version) for v in fork.versions()] == [
        ("VERSION_CAUSE_FORK", 2)]
    assert client.session("s-import").versions()[0].cause == \
        "VERSION_CAUSE_IMPORT"

    assert {x.session_id for x in client.list_sessions()} == {
        "s", "s-fork", "s-fork2", "s-import"}
    assert [x.session_id for x in client.list_sessions({"kind": "test"})] == [
        "s"]

    assert s.update(labels={"kind": "renamed"}).labels == {"kind": "renamed"}
    committed = s.generate_text(max_tokens=5, temperature=0, commit=True)
    assert committed.done.committed
    assert s.get().input_offset == 11 + 5

    fork.delete()
    with pytest.raises(StatestreamError) as e:
        fork.get()
    assert e.value.code == grpc.StatusCode.NOT_FOUND
    assert e.value.reason == "SESSION_NOT_FOUND"
    fork.delete(allow_missing=True)


def test_typed_errors_and_tenants(server, client):
    client.create_session("t")
    with pytest.raises(StatestreamError) as e:
        client.create_session("t", request_id="another")
    assert e.value.reason == "SESSION_EXISTS"
    with Client(server.address, tenant="other", api_key="dev-mode") as other:
        with pytest.raises(StatestreamError) as e:
            other.session("t").get()
        assert e.value.reason == "SESSION_NOT_FOUND"
    with pytest.raises(StatestreamError) as e:
        client.session("t").score(tokens=[100000])
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_fails_over_to_next_target(server, tmp_path):
    from statestream.testing import ServeProcess
    dead = ServeProcess(data_dir=str(tmp_path / "dead")).start()
    dead_address = dead.address
    dead.kill()
    with Client([dead_address, server.address]) as c:
        c.create_session("f")
        assert c.session("f").append("over there").committed_input_offset == 10


def test_committing_generate_survives_kill9(server, client):
    client.create_session("c")
    s = client.session("c")
    s.append("It was a dark and stormy night")
    twin = s.fork(new_id="c-twin")
    args = dict(max_tokens=8000, seed=11, temperature=1.0, logprobs=True,
                top_logprobs=5, request_id="commit-long", commit=True)
    ref = twin.generate_text(**args)
    stream = s.generate(**args)
    tokens = list(next(stream).tokens)
    server.kill_and_restart()
    for chunk in stream:
        tokens += chunk.tokens
    assert stream.reconnects >= 1
    assert tokens == ref.tokens
    assert stream.done.committed
    a, b = s.get(), twin.get()
    assert (a.input_offset, a.position) == (b.input_offset, b.position)
    assert _payload(s) == _payload(twin)  # bit-identical state
    assert s.score("x").sum_logprob == twin.score("x").sum_logprob


def resumed_after_the_session_moved(server, client, session_id, **generate):
    """Generates on a new session, kills the server after the first chunk,
    appends to the session, then reads the resumed stream: the error it
    raised (the test fails if it joined the output instead)."""
    client.create_session(session_id)
    s = client.session(session_id)
    s.append("Once upon a time")
    stream = s.generate(max_tokens=8000, **generate)
    assert next(stream).index == 0
    server.kill_and_restart()
    s.append(" there was a change")
    with pytest.raises(StatestreamError) as e:
        for _ in stream:
            pass
    return e.value


def test_a_resumed_sampled_generate_on_a_moved_session_is_not_joined(
        server, client):
    # A sampled generation is pinned to its start as a greedy one is (the
    # server's seed derives from the input_offset, which the append in
    # between moves): the stream raises the server's POSITION_MISMATCH (not
    # retryable: the same call cannot continue the delivered output)
    # instead of joining the two outputs. (Output that differs on the same
    # input, RESUME_DIVERGED, is test_faults.py's, from a scripted server.)
    e = resumed_after_the_session_moved(
        server, client, "diverge", temperature=1.0, logprobs=True,
        top_logprobs=5, request_id="diverging")
    assert e.code == grpc.StatusCode.FAILED_PRECONDITION
    assert not is_retryable(e)
    assert e.reason == "POSITION_MISMATCH"


def test_a_resumed_greedy_generate_on_a_moved_session_is_not_joined(
        server, client):
    # Greedy output could repeat the delivered tokens from another state:
    # the resume is pinned to the input its first chunk started from, and
    # the stream raises the server's POSITION_MISMATCH once the session
    # moved.
    e = resumed_after_the_session_moved(server, client, "moved",
                                        temperature=0, request_id="greedy")
    assert e.code == grpc.StatusCode.FAILED_PRECONDITION
    assert not is_retryable(e)
    assert "input moved" in e.message
    assert e.reason == "POSITION_MISMATCH"


def test_results_say_the_durability_reached_and_why_generate_stopped(client):
    from statestream.v1 import statestream_pb2 as pb
    client.create_session("d")
    s = client.session("d")
    # `serve` has no replicas: MEMORY and FSYNC are what it can reach.
    ack = s.append("Once upon a time", durability=pb.DURABILITY_FSYNC)
    assert ack.durability == "DURABILITY_FSYNC"
    info = s.get()
    assert info.version == ack.version
    assert info.durability == "DURABILITY_FSYNC"
    with s.writer(durability=pb.DURABILITY_MEMORY) as w:
        w.write(" there")
        assert w.sync().tokens_consumed > 0  # the demo model: bytes
        assert w.checkpoint().durability == "DURABILITY_MEMORY"
    assert s.get().durability == "DURABILITY_MEMORY"
    # REPLICATED it never reaches: refused at once, nothing written, not
    # retried (it used to write at FSYNC and fail UNAVAILABLE each retry).
    before = s.get().version
    with pytest.raises(StatestreamError) as e:
        s.append("!", durability=pb.DURABILITY_REPLICATED)
    assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert not is_retryable(e.value)
    assert e.value.metadata["max_durability"] == "FSYNC"
    with pytest.raises(StatestreamError) as e:
        client.create_session("d2", durability=pb.DURABILITY_REPLICATED)
    assert e.value.metadata["field"] == "durability"
    assert s.get().version == before

    # Greedy, so the same first token again: a stop token the second time.
    first = s.generate_text(max_tokens=1, temperature=0).tokens[0]
    done = s.generate_text(max_tokens=8, temperature=0,
                           stop_tokens=first).done
    assert done.finish_reason == "FINISH_REASON_STOP_TOKEN"
    assert done.stop_token == first
    assert (done.stop_string, done.replayed) == ("", False)
    committed = s.generate_text(max_tokens=3, temperature=0, commit=True,
                                request_id="dur").done
    assert committed.committed and not committed.replayed
    assert committed.durability != "DURABILITY_UNSPECIFIED"
    # The same committing request again: replayed, not generated twice.
    again = s.generate_text(max_tokens=3, temperature=0, commit=True,
                            request_id="dur").done
    assert again.replayed
    assert s.get().input_offset == committed.input_offset


def test_a_committing_generate_retried_under_its_own_id_is_replayed(client):
    # A caller that gives request_id retries by calling again with it: the
    # server replays the committed generation. The SDK used to pin each
    # call to the offset it read then, which no longer matched the first
    # call's request: DUPLICATE_REQUEST.
    client.create_session("own-id")
    s = client.session("own-id")
    s.append("Hello there")
    args = dict(max_tokens=6, seed=3, temperature=1.0, commit=True,
                request_id="my-turn-1")
    first = s.generate_text("Say:", **args)
    assert first.done.committed and not first.done.replayed
    again = s.generate_text("Say:", **args)
    assert again.done.replayed
    assert again.tokens == first.tokens
    assert s.get().input_offset == first.done.input_offset


class _NoDone:
    """A Generate call whose `done` is lost (the stream just ends)."""

    def __init__(self, call):
        self._call = call

    def __iter__(self):
        return self

    def __next__(self):
        msg = next(self._call)
        if msg.HasField("done"):
            self._call.cancel()
            raise StopIteration
        return msg

    def cancel(self):
        self._call.cancel()


def test_a_committing_generate_whose_done_was_lost_is_replayed(client):
    # The first call commits, but its done never arrives: the SDK resumes
    # with the same request, and the server replays the committed
    # generation. The SDK used to pin the resume to the first chunk's
    # start_input_offset, which changed the request's digest: the server
    # refused it DUPLICATE_REQUEST.
    client.create_session("lost-done")
    s = client.session("lost-done")
    s.append("Hello there")
    calls = []
    for stubs in client._stubs:
        real = stubs.streams.Generate

        def generate(*args, _real=real, **kwargs):
            calls.append(args[0])
            call = _real(*args, **kwargs)
            return _NoDone(call) if len(calls) == 1 else call
        stubs.streams.Generate = generate
    out = s.generate_text("Say:", max_tokens=6, seed=3, temperature=1.0,
                          commit=True, request_id="my-turn-2")
    assert len(calls) == 2
    assert out.done.committed and out.done.replayed
    assert len(out.tokens) == 6
    assert s.get().input_offset == out.done.input_offset
    assert not calls[1].HasField("expected_input_offset")


def test_logprobs_keep_top_alternatives_and_token_ids(client):
    # The top_logprobs alternatives and the token ids of Generate and Score
    # used to be dropped (and ScoreRequest.top_logprobs could not be set).
    client.create_session("lp")
    s = client.session("lp")
    s.append("Once upon a time")
    out = s.generate_text(max_tokens=6, seed=1, logprobs=True,
                          top_logprobs=3)
    assert len(out.logprobs) == len(out.token_logprobs) == len(out.tokens)
    for token, lp, tlp in zip(out.tokens, out.logprobs, out.token_logprobs):
        assert tlp.token == token and tlp.logprob == lp
        assert len(tlp.top) == 3
        assert [t.logprob for t in tlp.top] == sorted(
            (t.logprob for t in tlp.top), reverse=True)
    # Without logprobs=True: none.
    plain = s.generate_text(max_tokens=2, seed=1)
    assert plain.logprobs == [] and plain.token_logprobs == []

    r = s.score(" there", top_logprobs=2)
    assert all(len(t.top) == 2 for t in r.tokens)
    assert r.tokens[0].top[0].logprob >= r.tokens[0].top[1].logprob
    assert all(t.top == () for t in s.score(" there").tokens)
    # The greedy token is the first alternative.
    greedy = s.generate_text(max_tokens=1, temperature=0).tokens[0]
    assert s.score(tokens=[greedy], top_logprobs=1).tokens[0].top[0].token \
        == greedy


def test_durability_and_sampling_options_reach_the_server(client):
    # durability could not be asked on create_session, rollback, the
    # imports or a committing generate; nor logit_bias and the other
    # sampling options on generate. `serve` with a data dir reaches FSYNC;
    # its default is MEMORY.
    from statestream.v1 import statestream_pb2 as pb
    fsync = pb.DURABILITY_FSYNC
    assert client.create_session("mem").durability == "DURABILITY_MEMORY"
    info = client.create_session("dur", durability=fsync)
    assert info.durability == "DURABILITY_FSYNC"
    s = client.session("dur")
    s.append("Once upon a time")
    assert s.rollback(1, durability=fsync).durability == "DURABILITY_FSYNC"
    s.append("Once upon a time")
    state = s.export()
    assert s.import_state(state, durability=fsync,
                          expected_version=s.get().version
                          ).durability == "DURABILITY_FSYNC"
    copy = client.import_session(state, "dur-copy", labels={"k": "v"},
                                 ttl_seconds=3600, durability=fsync)
    assert copy.durability == "DURABILITY_FSYNC"
    assert copy.labels == {"k": "v"} and copy.ttl.total_seconds() == 3600
    done = s.generate_text(max_tokens=2, commit=True, durability=fsync).done
    assert done.committed and done.durability == "DURABILITY_FSYNC"

    # logit_bias bans the greedy token; penalties and min_p are accepted.
    greedy = s.generate_text(max_tokens=1, temperature=0).tokens[0]
    banned = s.generate_text(max_tokens=1, temperature=0,
                             logit_bias={greedy: -1e9}).tokens[0]
    assert banned != greedy
    out = s.generate_text(max_tokens=4, min_p=0.01, presence_penalty=0.5,
                          frequency_penalty=0.5, penalty_decay=0.9,
                          max_duration=30, prompt_tokens=[65, 66])
    assert len(out.tokens) == 4
    with pytest.raises(StatestreamError) as e:
        s.generate_text(max_tokens=1, min_p=2.0)  # out of range
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_infos_carry_every_field(client):
    # SessionInfo lacked ttl, expire/create/update times, the fingerprint
    # and state_bytes; VersionInfo durability and create_time; ScoreResult
    # input_offset. Each also keeps its message as `.proto`.
    import dataclasses
    import datetime
    client.create_session("f", ttl_seconds=3600)
    s = client.session("f")
    s.append("hello")
    info = s.get()
    assert info.ttl == datetime.timedelta(hours=1)
    assert info.create_time <= info.update_time
    assert info.expire_time == info.update_time + info.ttl
    assert info.create_time.tzinfo is not None
    assert abs(datetime.datetime.now(datetime.timezone.utc) -
               info.create_time) < datetime.timedelta(minutes=5)
    assert info.model_fingerprint == client.list_models()[0].fingerprint
    model = client.get_model(client.list_models()[0].model_id)
    assert model.fingerprint == info.model_fingerprint
    with pytest.raises(StatestreamError) as e:
        client.get_model("no-such-model")
    assert e.value.code == grpc.StatusCode.NOT_FOUND
    assert e.value.reason == "MODEL_NOT_FOUND"
    assert info.state_bytes > 0
    assert info.proto.session_id == "f"
    assert dataclasses.replace(info, proto=None) == info  # not compared

    head, first = s.versions()
    assert head.durability == first.durability == "DURABILITY_MEMORY"
    assert first.create_time <= head.create_time
    assert head.proto.version == head.version == info.version

    r = s.score("!")
    assert r.input_offset == info.input_offset == 5
    assert r.proto.input_offset == 5
    assert s.append("!").proto.input_offset == 6
    assert s.generate_text(max_tokens=1).done.proto.HasField("usage")


# -- fork takes durability= ---------------------------------------------------
#
# A fork commits its version 1 like any create; fork() had no durability=.

@pytest.mark.parametrize("aio", [False, True])
def test_fork_commits_at_the_durability_asked(server, aio):
    import asyncio
    from statestream.aio import AsyncClient
    from statestream.v1 import statestream_pb2 as pb

    async def run_async():
        async with AsyncClient(server.address) as c:
            await c.create_session("src")
            s = c.session("src")
            await s.append("some text")
            fork = await s.fork(new_id="f", durability=pb.DURABILITY_FSYNC)
            return await fork.get()

    def run_sync():
        with Client(server.address) as c:
            c.create_session("src")
            s = c.session("src")
            s.append("some text")
            fork = s.fork(new_id="f", durability=pb.DURABILITY_FSYNC)
            return fork.get()
    info = asyncio.run(run_async()) if aio else run_sync()
    assert info.parent_session_id == "src"
    assert info.version == 1
    assert info.durability == "DURABILITY_FSYNC"


# -- arguments checked before anything is sent -------------------------------
#
# An api_key with a byte gRPC refuses in a header (a key file's trailing
# newline) failed every call: the sync client with a ValueError that quoted
# the whole bearer token, the async one with cygrpc's ExecuteBatchError. Now
# both refuse it at construction, naming the option, not the value.

@pytest.mark.parametrize("aio", [False, True])
@pytest.mark.parametrize("option,value", [("api_key", "sk-secret\n"),
                                          ("tenant", "t\u00e9nant")])
def test_header_options_must_be_printable_ascii(server, aio, option, value):
    from statestream.aio import AsyncClient
    with pytest.raises(ValueError) as raised:
        (AsyncClient if aio else Client)(server.address, **{option: value})
    assert option in str(raised.value)
    assert "sk-secret" not in str(raised.value)


@pytest.mark.parametrize("aio", [False, True])
def test_unset_options_are_none_and_an_empty_update_is_refused(server, aio):
    import asyncio
    from statestream.aio import AsyncClient

    async def run_async():
        async with AsyncClient(server.address) as c:
            await c.create_session("opts")
            s = c.session("opts")
            await s.append("ab")
            with pytest.raises(ValueError):
                await s.update()
            return await s.generate_text(max_tokens=3, seed=1, stop=None,
                                         stop_tokens=None)

    def run_sync():
        with Client(server.address) as c:
            c.create_session("opts")
            s = c.session("opts")
            s.append("ab")
            with pytest.raises(ValueError):
                s.update()
            return s.generate_text(max_tokens=3, seed=1, stop=None,
                                   stop_tokens=None)
    result = asyncio.run(run_async()) if aio else run_sync()
    assert len(result.tokens) == 3


# fork() and import_session() took no request_id, so a caller retrying one
# that gave up could not make the retry exactly-once: it made a second
# session (a server-generated id) instead of getting the first back.

@pytest.mark.parametrize("aio", [False, True])
def test_fork_and_import_session_retried_under_their_request_id(server, aio):
    import asyncio
    from statestream.aio import AsyncClient

    async def run_async():
        async with AsyncClient(server.address) as c:
            await c.create_session("origin")
            s = c.session("origin")
            await s.append("text")
            forks = [(await s.fork(request_id="fork-1")).id for _ in range(2)]
            state = await s.export()
            imports = [(await c.import_session(state, request_id="imp-1"))
                       .session_id for _ in range(2)]
            return forks, imports

    def run_sync():
        with Client(server.address) as c:
            c.create_session("origin")
            s = c.session("origin")
            s.append("text")
            forks = [s.fork(request_id="fork-1").id for _ in range(2)]
            state = s.export()
            imports = [c.import_session(state, request_id="imp-1").session_id
                       for _ in range(2)]
            return forks, imports
    forks, imports = asyncio.run(run_async()) if aio else run_sync()
    assert forks[0] and forks[0] == forks[1]
    assert imports[0] and imports[0] == imports[1]
    assert forks[0] != imports[0]


# A StatestreamError could not be pickled (its args were only the formatted
# message), so one raised in a multiprocessing worker never reached the
# parent process.

def test_errors_survive_pickling():
    import copy
    import pickle
    from statestream.errors import client_closed_error
    e = StatestreamError(grpc.StatusCode.FAILED_PRECONDITION, "moved",
                         "POSITION_MISMATCH", {"actual_input_offset": "7"})
    for back in (pickle.loads(pickle.dumps(e)), copy.copy(e)):
        assert (back.code, back.message, back.reason, back.metadata) == \
            (e.code, e.message, e.reason, e.metadata)
        assert str(back) == str(e)
    closed = pickle.loads(pickle.dumps(client_closed_error()))
    assert closed.code == grpc.StatusCode.CANCELLED
    assert not is_retryable(closed)


# A session id of None is no id, as protobuf took it before the SDK checked
# ids: the server generates one.
def test_a_session_id_of_none_is_server_generated(server, client):
    info = client.create_session(None)
    assert info.session_id
    state = client.session(info.session_id).export()
    copy = client.import_session(state, None)
    assert copy.session_id and copy.session_id != info.session_id


# -- statestream.testing.ServeProcess -----------------------------------------
#
# start() took the first line of stdout for `listening on HOST:PORT`: with
# --metrics-listen the server prints `metrics on HOST:PORT` first, and start()
# killed it. A binary that printed nothing hung start() forever.

@pytest.mark.skipif(not os.environ.get("STATESTREAM_BIN"),
                    reason="needs STATESTREAM_BIN")
def test_serve_process_skips_the_lines_before_listening_on(tmp_path):
    from statestream.testing import ServeProcess
    with ServeProcess(os.environ["STATESTREAM_BIN"],
                      data_dir=str(tmp_path / "data"),
                      extra_args=["--metrics-listen=127.0.0.1:0"]) as s:
        with Client(s.address) as c:
            c.create_session("m")
            assert c.session("m").get().input_offset == 0


@pytest.mark.parametrize("prints", ["", "metrics on 127.0.0.1:1"])
def test_serve_process_gives_up_on_a_binary_that_never_listens(tmp_path,
                                                              prints):
    from statestream.testing import ServeProcess
    binary = tmp_path / "hung"
    binary.write_text(f"#!/bin/sh\necho '{prints}'\necho on stderr >&2\n"
                      "exec sleep 60\n")
    binary.chmod(0o755)
    s = ServeProcess(str(binary), start_timeout=1)
    began = time.monotonic()
    with pytest.raises(RuntimeError) as e:
        s.start()
    assert time.monotonic() - began < 10
    assert prints in str(e.value) and "on stderr" in str(e.value)
    assert s._proc is None  # killed
