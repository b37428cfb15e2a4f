# SPDX-License-Identifier: Apache-2.0
"""Errors the SDK makes itself (errors._local_error, docs/errors.md): each
carries a Reason of statestream.v1.Reason and metadata origin=sdk, so that
is_retryable reads them as what they are; the ones that stand for a broken
call stay reason-less and retryable. Unit-level, except a closed writer's
(the fake server of fake_server.py)."""
import asyncio

import grpc
import pytest

from statestream import Client, StatestreamError
from statestream.aio import AsyncClient
from statestream.checksum import _crc32c
from statestream.client import _check_next_page
from statestream.messages import _assemble_export
from statestream.errors import _local_error, is_retryable
from statestream.streams import _writer_closed
from statestream.v1 import statestream_pb2 as pb
from fake_server import fast_retries


def test_a_local_error_has_a_reason_and_origin_sdk():
    metadata = {"field": "x"}
    e = _local_error(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT",
                     "bad", metadata)
    assert (e.code, e.message, e.reason) == (
        grpc.StatusCode.INVALID_ARGUMENT, "bad", "INVALID_ARGUMENT")
    assert e.metadata == {"field": "x", "origin": "sdk"}
    assert metadata == {"field": "x"}  # the caller's dict is not changed
    assert "[INVALID_ARGUMENT]" in str(e)


@pytest.mark.parametrize("reason", ["", "REASON_UNSPECIFIED"])
def test_a_local_error_never_lacks_a_reason(reason):
    # INTERNAL without a reason reads as a transport failure (retried).
    e = _local_error(grpc.StatusCode.INTERNAL, reason, "bug")
    assert e.reason == "INTERNAL"
    assert not is_retryable(e)


def test_a_local_error_takes_only_reasons_of_the_enum():
    with pytest.raises(ValueError):
        _local_error(grpc.StatusCode.INTERNAL, "NO_SUCH_REASON", "bug")


def test_a_server_error_has_no_origin():
    # Only what the SDK makes is marked.
    e = StatestreamError.from_status(grpc.StatusCode.INTERNAL, "bug")
    assert "origin" not in e.metadata


# -- a repeated page token ----------------------------------------------------

def test_a_repeated_page_token_is_internal_and_not_retried():
    req = pb.ListVersionsRequest(session_id="s", page_token="p")
    page = pb.ListVersionsResponse(next_page_token="p")
    with pytest.raises(StatestreamError) as e:
        _check_next_page(req, page, "ListVersions")
    assert e.value.code == grpc.StatusCode.INTERNAL
    assert e.value.reason == "INTERNAL"
    assert e.value.metadata == {"origin": "sdk"}
    assert e.value.message == \
        "ListVersions: the server repeated its page token"
    # The INTERNAL it replaces had no reason: retryable, so a caller's
    # retry loop listed forever.
    bare = StatestreamError(grpc.StatusCode.INTERNAL, e.value.message)
    assert is_retryable(bare)
    assert not is_retryable(e.value)


def test_a_new_page_token_passes():
    req = pb.ListVersionsRequest(session_id="s", page_token="p")
    _check_next_page(req, pb.ListVersionsResponse(next_page_token="q"),
                     "ListVersions")


# -- a corrupt export ---------------------------------------------------------

def chunk(index: int, data: bytes, crc=None):
    return pb.ExportStateResponse(chunk=pb.StateChunk(
        index=index, data=data,
        crc32c=_crc32c(data) if crc is None else crc))


HEADER = pb.ExportStateResponse(header=pb.StateHeader(total_bytes=8))


@pytest.mark.parametrize("parts,detail", [
    ([HEADER, chunk(1, b"abcd"), chunk(0, b"abcd")],
     "export: chunk 1 arrived in place of 0"),
    ([HEADER, chunk(0, b"abcd"), chunk(1, b"abcd", crc=0)],
     "export: chunk 1 fails its CRC-32C"),
    ([HEADER, chunk(0, b"abcd")], "export: received 4 of 8 bytes"),
    ([chunk(0, b"abcd")], "export: the stream ended without a header"),
], ids=["reordered", "crc", "short", "no-header"])
def test_a_corrupt_export_is_state_corrupt(parts, detail):
    with pytest.raises(StatestreamError) as e:
        _assemble_export(parts, "s")
    assert e.value.code == grpc.StatusCode.DATA_LOSS
    assert e.value.reason == "STATE_CORRUPT"
    assert e.value.message == detail
    assert e.value.metadata == {"detail": detail, "origin": "sdk"}
    assert not is_retryable(e.value)


def test_a_whole_export_assembles():
    state = _assemble_export([HEADER, chunk(0, b"abcd"), chunk(1, b"efgh")],
                             "s")
    assert state.blob == b"abcdefgh"


# -- a closed writer ----------------------------------------------------------

def assert_writer_closed(error: StatestreamError) -> None:
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION
    assert error.reason == "INVALID_ARGUMENT"
    assert error.message == "writer closed"
    assert error.metadata == {"field": "writer", "origin": "sdk"}
    assert not is_retryable(error)


def test_writer_closed_is_failed_precondition_invalid_argument():
    assert_writer_closed(_writer_closed())


@pytest.mark.parametrize("aio", [False, True])
def test_every_call_of_a_closed_writer_says_so(fake, aio):
    async def run_async():
        async with AsyncClient(fake.address, **fast_retries()) as c:
            w = await c.session("s").writer(start_offset=0)
            await w.write("a")
            await w.close()
            for call in (lambda: w.write("b"), w.flush, w.sync, w.close):
                with pytest.raises(StatestreamError) as e:
                    await call()
                assert_writer_closed(e.value)

    def run_sync():
        with Client(fake.address, **fast_retries()) as c:
            w = c.session("s").writer(start_offset=0)
            w.write("a")
            w.close()
            for call in (lambda: w.write("b"), w.flush, w.sync, w.close):
                with pytest.raises(StatestreamError) as e:
                    call()
                assert_writer_closed(e.value)
    asyncio.run(run_async()) if aio else run_sync()
