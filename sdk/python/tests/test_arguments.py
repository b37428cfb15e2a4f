# SPDX-License-Identifier: Apache-2.0
"""Arguments the SDK checks before any call (sync and asyncio alike): every
str a request carries, durability given by number or by name, timeouts and
max_duration. Against the fake server (fake_server.py), which records what
reaches it, and `statestream serve` for what the server then does."""
import asyncio
import datetime
import inspect

import grpc
import pytest

from statestream import Client, ExportedState, StatestreamError
from statestream.aio import AsyncClient
from statestream.errors import is_retryable
from statestream.v1 import statestream_pb2 as pb
from fake_server import fast_retries, run_either

INF = float("inf")
NAN = float("nan")
STATE = ExportedState(pb.StateHeader(total_bytes=4), b"abcd")


async def settle(result):
    """`result` awaited if the call returned an awaitable (the async
    client), else as is."""
    if inspect.isawaitable(result):
        return await result
    return result


def check_all(aio, address, cases, **client_options):
    """Runs each (call, check) of cases(client, session) on a sync or an
    async client: check(the exception raised, or None)."""
    async def run_async():
        async with AsyncClient(address, **fast_retries(),
                               **client_options) as c:
            for call, check in cases(c, c.session("s")):
                try:
                    await settle(call())
                except Exception as e:  # noqa: BLE001 (checked below)
                    check(e)
                else:
                    check(None)

    def run_sync():
        with Client(address, **fast_retries(), **client_options) as c:
            for call, check in cases(c, c.session("s")):
                try:
                    call()
                except Exception as e:  # noqa: BLE001 (checked below)
                    check(e)
                else:
                    check(None)
    run_either(aio, run_sync, run_async)


def raises(kind, reason=None):
    def check(e):
        assert isinstance(e, kind), repr(e)
        if reason is not None:
            assert e.code == grpc.StatusCode.INVALID_ARGUMENT
            assert e.reason == reason and not is_retryable(e)
    return check


def assert_nothing_sent(fake):
    assert fake.get_requests == []
    assert fake.generate_requests == []
    assert fake.append_calls == 0
    assert fake.import_calls == 0
    assert fake.rollback_requests == []


# -- every str of a request must have a UTF-8 form ---------------------------
#
# Session ids, texts, prompts and stop strings raised INVALID_UTF8 before any
# call, but a lone surrogate in a label, a model_id or a request_id leaked
# protobuf's UnicodeEncodeError (and bytes passed where a str belongs).

def string_calls(c, s, v):
    """Every call that puts the str `v` into a request field."""
    return [
        lambda: c.create_session("x", model_id=v),
        lambda: c.create_session("x", request_id=v),
        lambda: c.create_session("x", labels={"k": v}),
        lambda: c.create_session("x", labels={v: "v"}),
        lambda: c.list_sessions(labels={"k": v}),
        lambda: c.list_sessions(labels={v: "v"}),
        lambda: c.list_sessions(model_id=v),
        lambda: c.import_session(STATE, "x", labels={"k": v}),
        lambda: c.import_session(STATE, "x", request_id=v),
        lambda: s.update(labels={"k": v}),
        lambda: s.update(labels={v: "v"}, ttl_seconds=60),
        lambda: s.generate("p", request_id=v),
        lambda: s.generate_text("p", request_id=v),
        lambda: s.generate("p", commit=True, request_id=v),
        lambda: s.fork(request_id=v),
        lambda: s.fork(new_id=v),
        lambda: s.rollback(1, request_id=v),
        lambda: s.import_state(STATE, request_id=v),
    ]


@pytest.mark.parametrize("aio", [False, True])
def test_every_str_field_is_checked_before_any_call(fake, aio):
    def cases(c, s):
        for call in string_calls(c, s, "a\udc80"):
            yield call, raises(StatestreamError, "INVALID_UTF8")
        for bad in (5, b"x"):
            for call in string_calls(c, s, bad):
                yield call, raises(TypeError)
        # labels: a mapping of str to str, nothing else.
        for labels in ("k=v", [("k", "v")], 5):
            for call in (lambda: c.create_session("x", labels=labels),
                         lambda: c.list_sessions(labels=labels),
                         lambda: c.import_session(STATE, "x", labels=labels),
                         lambda: s.update(labels=labels)):
                yield call, raises(TypeError)
    check_all(aio, fake.address, cases)
    assert_nothing_sent(fake)


# None and "" are still "none" where a field may be left out.
@pytest.mark.parametrize("aio", [False, True])
def test_optional_str_fields_take_none(fake, aio):
    def cases(c, s):
        yield (lambda: c.session("done").generate_text("p", request_id=None),
               lambda e: e is None or pytest.fail(repr(e)))
        yield (lambda: c.session("done").generate_text("p", request_id=""),
               lambda e: e is None or pytest.fail(repr(e)))
    check_all(aio, fake.address, cases)
    assert all(r.request_id for r in fake.generate_requests)


# -- durability by number or by name -----------------------------------------
#
# Results report durability by name ("DURABILITY_FSYNC"); create_session,
# generate and rollback took that name (protobuf's constructors do), but
# append() and writer() raised TypeError. An unknown name or number failed
# only some calls, some of them at the server.

def durability_calls(c, s, d):
    return [
        lambda: c.create_session("x", durability=d),
        lambda: c.import_session(STATE, "x", durability=d),
        lambda: s.import_state(STATE, durability=d),
        lambda: s.rollback(1, durability=d),
        lambda: s.fork(durability=d),
        lambda: s.generate("p", commit=True, durability=d),
        lambda: s.generate("p", commit=True, request_id="r", durability=d),
        lambda: s.append("x", durability=d),
        lambda: s.append("x", start_offset=0, durability=d),
        lambda: s.writer(durability=d),
    ]


@pytest.mark.parametrize("aio", [False, True])
def test_an_unknown_durability_is_refused_before_any_call(fake, aio):
    def cases(c, s):
        for d in ("NOPE", "durability_fsync", "FSYNC", 99, -1):
            for call in durability_calls(c, s, d):
                yield call, raises(ValueError)
        for d in (2.0, b"DURABILITY_FSYNC", True, [2]):
            for call in durability_calls(c, s, d):
                yield call, raises(TypeError)
    check_all(aio, fake.address, cases)
    assert_nothing_sent(fake)


@pytest.mark.parametrize("aio", [False, True])
def test_durability_by_name_reaches_the_server(server, aio):
    fsync, memory = "DURABILITY_FSYNC", "DURABILITY_MEMORY"

    async def run_async():
        async with AsyncClient(server.address) as c:
            info = await c.create_session("n", durability=fsync)
            s = c.session("n")
            acks = [await s.append("Once", durability=fsync)]
            async with await s.writer(durability=memory) as w:
                await w.write(" upon")
                acks.append(await w.checkpoint())
            acks.append(await s.append(" a", durability=pb.DURABILITY_FSYNC))
            done = (await s.generate_text(max_tokens=1, commit=True,
                                          durability=fsync)).done
            back = await s.rollback(2, durability=fsync)
            return info, acks, done, back

    def run_sync():
        with Client(server.address) as c:
            info = c.create_session("n", durability=fsync)
            s = c.session("n")
            acks = [s.append("Once", durability=fsync)]
            with s.writer(durability=memory) as w:
                w.write(" upon")
                acks.append(w.checkpoint())
            acks.append(s.append(" a", durability=pb.DURABILITY_FSYNC))
            done = s.generate_text(max_tokens=1, commit=True,
                                   durability=fsync).done
            back = s.rollback(2, durability=fsync)
            return info, acks, done, back
    info, acks, done, back = run_either(aio, run_sync, run_async)
    assert info.durability == fsync
    assert [a.durability for a in acks] == [fsync, memory, fsync]
    assert done.committed and done.durability == fsync
    assert back.durability == fsync


# -- timeouts ----------------------------------------------------------------
#
# timeout=inf bounded unary calls by the client's timeout, but streams
# (generate, a writer) passed inf to gRPC, which failed them
# DEADLINE_EXCEEDED at once; so did any timeout beyond ~7e9 s, and
# Client(timeout=inf) failed every call. A negative timeout failed with
# DEADLINE_EXCEEDED after trying, a NaN one meant none.

@pytest.mark.parametrize("aio", [False, True])
@pytest.mark.parametrize("timeout", [INF, 1e12])
def test_an_unbounded_timeout_is_no_deadline(fake, aio, timeout):
    def ok(e):
        assert e is None, repr(e)

    def cases(c, s):
        done = c.session("done")
        yield lambda: done.get(timeout=timeout), ok
        yield lambda: done.generate_text("p", timeout=timeout), ok
        yield lambda: s.append("x", timeout=timeout), ok
        yield lambda: s.append("y", start_offset=1, timeout=timeout), ok
    check_all(aio, fake.address, cases)
    check_all(aio, fake.address, cases, timeout=timeout)
    assert fake.append_calls == 4


@pytest.mark.parametrize("aio", [False, True])
def test_a_negative_or_nan_timeout_is_refused_before_any_call(fake, aio):
    def cases(c, s):
        for t in (NAN, -1, -INF):
            for call in (lambda: s.get(timeout=t),
                         lambda: s.versions(timeout=t),
                         lambda: c.list_sessions(timeout=t),
                         lambda: c.create_session("x", timeout=t),
                         lambda: s.generate("p", timeout=t),
                         lambda: s.generate("p", commit=True, timeout=t),
                         lambda: s.writer(timeout=t),
                         lambda: s.append("x", timeout=t),
                         lambda: s.delete(timeout=t)):
                yield call, raises(ValueError)
        for t in ("1", [1], True):
            yield lambda: s.get(timeout=t), raises(TypeError)
    check_all(aio, fake.address, cases)
    assert_nothing_sent(fake)
    for t in (NAN, -1):
        for make in (Client, AsyncClient):
            with pytest.raises(ValueError):
                make(fake.address, timeout=t)


# -- client settings ---------------------------------------------------------
#
# max_attempts below 1 was bent into 1; a timeout of 0 failed every call, a
# negative or NaN backoff failed the first retry (an infinite initial one
# never retried). Refused up front, as C++ Client::Create does.

def test_client_settings_no_call_could_run_with_are_refused(fake):
    bad = [dict(max_attempts=0), dict(max_attempts=-1), dict(timeout=0),
           dict(timeout=-1), dict(timeout=NAN), dict(initial_backoff=-0.1),
           dict(initial_backoff=NAN), dict(initial_backoff=INF),
           dict(initial_backoff=-INF), dict(max_backoff=-1),
           dict(max_backoff=NAN), dict(max_backoff=-INF)]
    wrong_type = [dict(max_attempts=2.5), dict(max_attempts=True),
                  dict(max_attempts="3"), dict(max_attempts=None),
                  dict(initial_backoff="1"), dict(initial_backoff=None),
                  dict(max_backoff=None), dict(timeout="1")]
    for make in (Client, AsyncClient):
        for kw in bad:
            with pytest.raises(ValueError):
                make(fake.address, **kw)
        for kw in wrong_type:
            with pytest.raises(TypeError):
                make(fake.address, **kw)
    good = [{}, dict(timeout=None), dict(timeout=INF), dict(timeout=0.5),
            dict(initial_backoff=0, max_backoff=0), dict(max_backoff=INF),
            dict(max_attempts=1)]
    for kw in good:
        with Client(fake.address, **kw) as c:
            assert c.session("s").get().input_offset == 0

    async def run_async():
        for kw in good:
            async with AsyncClient(fake.address, **kw) as c:
                assert (await c.session("s").get()).input_offset == 0
    asyncio.run(run_async())


# A receive limit below what the server sends (export chunks of 1 MiB,
# listing pages of up to 2 MiB) made those calls fail with gRPC's bare
# RESOURCE_EXHAUSTED; refused up front, as C++ Client::Create does.
def test_a_receive_limit_below_what_the_server_sends_is_refused(fake):
    name = "grpc.max_receive_message_length"
    for make in (Client, AsyncClient):
        for value in (0, 1 << 20, (4 << 20) - 1, -2):
            with pytest.raises(ValueError) as e:
                make(fake.address, options=[(name, value)])
            assert name in str(e.value)
        with pytest.raises(ValueError):  # gRPC takes a bytes key too
            make(fake.address, options=[(name.encode(), 1 << 20)])
        for value in ("8388608", 4.5e6, True):
            with pytest.raises(TypeError):
                make(fake.address, options=[(name, value)])
    for value in (4 << 20, 64 << 20, -1):
        with Client(fake.address, options=[(name, value)]) as c:
            assert c.session("s").get().input_offset == 0


# TLS settings without tls=True were ignored: the channel was plaintext and
# carried the api_key in the clear. Refused, naming the setting (never its
# value: a private key).
def test_tls_settings_without_tls_are_refused(fake):
    settings = dict(root_certificates=b"-----BEGIN CERTIFICATE-----",
                    private_key=b"secret key", certificate_chain=b"chain",
                    tls_server_name="localhost")
    for make in (Client, AsyncClient):
        for name, value in settings.items():
            for tls in ({}, dict(tls=False)):
                with pytest.raises(ValueError) as e:
                    make(fake.address, api_key="k", **tls, **{name: value})
                assert name in str(e.value) and "tls=True" in str(e.value)
                assert "secret" not in str(e.value)
    # Unset (None or empty) is no setting.
    with Client(fake.address, root_certificates=None, tls_server_name="",
                private_key=b"") as c:
        assert c.session("s").get().input_offset == 0


# -- max_duration ------------------------------------------------------------
#
# max_duration=inf raised OverflowError; 1e12 s passed the SDK and the
# server refused it (it takes google.protobuf.Duration's range: seconds at
# most 315,576,000,000, nanos 0-999,999,999, not negative).

@pytest.mark.parametrize("aio", [False, True])
def test_max_duration_must_be_a_duration_the_server_takes(fake, aio):
    top = 315_576_000_000
    bad = [INF, -INF, NAN, -1, -1e-12, 1e12, top + 1, 10 ** 30,
           datetime.timedelta(microseconds=-1),
           datetime.timedelta(seconds=top + 1),
           datetime.timedelta.max]

    def cases(c, s):
        for d in bad:
            yield (lambda: s.generate("p", max_duration=d),
                   raises(ValueError))
        for d in ("1", [1], True):
            yield (lambda: s.generate("p", max_duration=d),
                   raises(TypeError))
        for d in (0, 0.25, top, top + 0.5, datetime.timedelta(seconds=top)):
            yield (lambda: c.session("done").generate_text(
                "p", max_duration=d), lambda e: e is None or pytest.fail(
                    repr(e)))
    check_all(aio, fake.address, cases)
    got = [(r.max_duration.seconds, r.max_duration.nanos)
           for r in fake.generate_requests]
    assert got == [(0, 0), (0, 250000000), (top, 0),
                   (top, pytest.approx(500000000, abs=1e5)), (top, 0)]


def test_the_server_takes_the_longest_max_duration(client):
    client.create_session("d")
    s = client.session("d")
    s.append("abc")
    for d in (315_576_000_000, datetime.timedelta(seconds=315_576_000_000)):
        assert len(s.generate_text(max_tokens=2, max_duration=d).tokens) == 2


# -- writers -----------------------------------------------------------------
#
# window and max_chunk_bytes below 1 were clamped to 1 (a request per byte,
# 20x slower, silently); a bad token id past the first 262,144 raised
# ValueError after the first chunk had gone out (and was later committed).

@pytest.mark.parametrize("aio", [False, True])
def test_writer_sizes_are_checked_before_any_call(fake, aio):
    def cases(c, s):
        for kw in ({"window": 0}, {"window": -1}, {"max_chunk_bytes": 0},
                   {"max_chunk_bytes": -5}):
            yield lambda kw=kw: s.writer(**kw), raises(ValueError)
        for kw in ({"window": 2.5}, {"window": True},
                   {"max_chunk_bytes": "1"}):
            yield lambda kw=kw: s.writer(**kw), raises(TypeError)
    check_all(aio, fake.address, cases)
    assert_nothing_sent(fake)


@pytest.mark.parametrize("aio", [False, True])
def test_a_bad_token_id_anywhere_sends_none_of_them(server, aio):
    tokens = [65] * 262144 + [2 ** 32]

    async def run_async():
        async with AsyncClient(server.address) as c:
            s = c.session((await c.create_session()).session_id)
            async with await s.writer() as w:
                with pytest.raises(ValueError):
                    await w.write_tokens(tokens)
                with pytest.raises(TypeError):
                    await w.write_tokens([65] * 262144 + ["x"])
                assert w.offset == 0
            return (await s.get()).input_offset

    def run_sync():
        with Client(server.address) as c:
            s = c.session(c.create_session().session_id)
            with s.writer() as w:
                with pytest.raises(ValueError):
                    w.write_tokens(tokens)
                with pytest.raises(TypeError):
                    w.write_tokens([65] * 262144 + ["x"])
                assert w.offset == 0
            return s.get().input_offset
    assert run_either(aio, run_sync, run_async) == 0


# -- stop strings are bytes-like, as prompts are ------------------------------

@pytest.mark.parametrize("aio", [False, True])
def test_a_stop_string_may_be_any_bytes_like(fake, aio):
    def cases(c, s):
        for stop in (b"\n\n", bytearray(b"\n\n"), memoryview(b"\n\n"),
                     [bytearray(b"\n\n")], "\n\n"):
            yield (lambda stop=stop: c.session("done").generate_text(
                       "p", stop=stop),
                   lambda e: e is None or pytest.fail(repr(e)))
    check_all(aio, fake.address, cases)
    assert [list(r.stop_strings) for r in fake.generate_requests] == \
        [["\n\n"]] * 5
