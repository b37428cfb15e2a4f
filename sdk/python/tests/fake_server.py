# SPDX-License-Identifier: Apache-2.0
"""A small in-process fake server that injects faults the real one does
not make on demand (a request that fails at every attempt, malformed error
details, lost replies), and helpers the fault tests share."""
import asyncio
import time
from concurrent import futures

import grpc
import grpc.aio
from google.rpc import error_details_pb2, status_pb2

from statestream.checksum import _crc32c
from statestream.v1 import statestream_pb2 as pb
from statestream.v1 import statestream_pb2_grpc as rpc

MAX_CALLS = 30  # the fake gives up (non-retryable) after this many Appends


class FakeServer(rpc.SessionsServicer, rpc.StreamsServicer):
    """Sessions.GetSession and Streams.Append. Append acks each request
    (resends as duplicates, never committing) except a text "bad", which
    fails UNAVAILABLE at every attempt. Session "malformed" fails with
    an unparsable grpc-status-details-bin. GetSession, Generate,
    DeleteSession, ImportState, RollbackSession: see there."""

    def __init__(self):
        self.append_calls = 0
        self.applied = 0
        self.generate_requests = []  # every Generate request received
        self.generate_cancelled = 0  # Generate calls the client cancelled
        self.delete_requests = []  # every DeleteSession request received
        self.get_requests = []  # every GetSession request received
        self.imported_chunks = []  # every ImportState StateChunk received
        self.import_calls = 0  # ImportState calls received
        self.import_headers = []  # every ImportState header received
        self.rollback_requests = []  # every RollbackSession request received
        self.list_versions_requests = []  # every ListVersions request
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
        """Keeps every header and chunk (in import_headers and
        imported_chunks: the test checks them, without loading the process
        meanwhile); the session, version 2. Session "lost-ack": the first
        attempt of each request_id fails UNAVAILABLE (as DeleteSession)."""
        self.import_calls += 1
        header = None
        for r in request_iterator:
            if r.HasField("header"):
                header = r.header
                self.import_headers.append(header)
            else:
                self.imported_chunks.append(r.chunk)
        if header.session_id == "lost-ack" and sum(
                h.request_id == header.request_id
                for h in self.import_headers) == 1:
            context.abort(grpc.StatusCode.UNAVAILABLE, "injected")
        return pb.Session(session_id=header.session_id, version=2)

    def RollbackSession(self, request, context):
        """The session at version 3. Session "lost-ack": the first attempt
        of each request_id fails UNAVAILABLE (as DeleteSession)."""
        attempt = sum(r.request_id == request.request_id
                      for r in self.rollback_requests) + 1
        self.rollback_requests.append(request)
        if request.session_id == "lost-ack" and attempt == 1:
            context.abort(grpc.StatusCode.UNAVAILABLE, "injected")
        return pb.Session(session_id=request.session_id, version=3)

    def ListVersions(self, request, context):
        """A misbehaving server: every page names itself as the next."""
        self.list_versions_requests.append(request)
        return pb.ListVersionsResponse(versions=[pb.Version(version=1)],
                                       next_page_token="again")

    def ListSessions(self, request, context):
        """As ListVersions."""
        return pb.ListSessionsResponse(
            sessions=[pb.Session(session_id="s")], next_page_token="again")

    def ExportState(self, request, context):
        # Session "reordered": chunk 1 before 0; "corrupt": a wrong CRC;
        # "newer": a message of neither kind (a newer server's) first.
        yield pb.ExportStateResponse(header=pb.StateHeader(total_bytes=8))
        if request.session_id == "newer":
            yield pb.ExportStateResponse()
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
        if request.session_id in ("pinned", "moved", "shorter",
                                  "shorter-committed", "diverged"):
            yield from self._pinned_generate(request, context)
            return
        if request.session_id == "replayed-logprobs":
            yield from self._replayed_logprobs(request, context)
            return
        if (request.session_id == "unavailable-first" and
                len(self.generate_requests) == 1):
            context.abort(grpc.StatusCode.UNAVAILABLE, "injected")
        if request.session_id == "overloaded":
            abort_with_reason(context, grpc.StatusCode.RESOURCE_EXHAUSTED,
                              "OVERLOADED", "queue full",
                              {"retry_after_ms": "2000"})
        # Counted when the call ends unfinished: a cancel that comes while
        # the chunk is sent ends the call without resuming this generator.
        ended = []

        def count_cancel():
            if not ended:
                self.generate_cancelled += 1
        context.add_callback(count_cancel)
        yield pb.GenerateResponse(chunk=pb.GenerateChunk(
            index=0, tokens=[1], text_utf8=b"a"))
        deadline = time.monotonic() + 30
        while context.is_active() and time.monotonic() < deadline:
            time.sleep(0.01)
        if context.is_active():
            ended.append(True)  # not cancelled within 30 s

    def _pinned_generate(self, request, context):
        """The first call sends tokens [1, 2] started at input_offset 7,
        then fails UNAVAILABLE. Later calls: "pinned" repeats them and ends
        if the request pins offset 7; "moved" (the session moved on) fails
        POSITION_MISMATCH as the server does when the pin no longer
        holds; "shorter" resumes with [1] and ends (it stopped sooner);
        "shorter-committed" too, its done committed (a committing request
        whose resume ran out of time on a slower worker); "diverged"
        resumes with [1, 5, 6] (another output) and ends."""
        calls = sum(r.session_id == request.session_id
                    for r in self.generate_requests)
        if calls == 1:
            yield pb.GenerateResponse(chunk=pb.GenerateChunk(
                index=0, tokens=[1, 2], text_utf8=b"ab",
                start_input_offset=7))
            context.abort(grpc.StatusCode.UNAVAILABLE, "injected")
        if request.session_id == "diverged":
            yield pb.GenerateResponse(chunk=pb.GenerateChunk(
                index=0, tokens=[1, 5, 6], text_utf8=b"aef",
                start_input_offset=7))
            yield pb.GenerateResponse(done=pb.GenerateDone(
                finish_reason=pb.FINISH_REASON_MAX_TOKENS))
            return
        if request.session_id in ("shorter", "shorter-committed"):
            yield pb.GenerateResponse(chunk=pb.GenerateChunk(
                index=0, tokens=[1], text_utf8=b"a", start_input_offset=7))
            committed = request.session_id == "shorter-committed"
            yield pb.GenerateResponse(done=pb.GenerateDone(
                finish_reason=pb.FINISH_REASON_STOP_TOKEN,
                committed=committed, position=12 if committed else 0,
                input_offset=8 if committed else 0,
                version=5 if committed else 0))
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
        (nothing done), later ones find no session. "internal": a typed
        INTERNAL (a misconfigured gateway). "slow": answered OK after
        half a second. Others: no session."""
        attempt = sum(r.request_id == request.request_id
                      for r in self.delete_requests) + 1
        self.delete_requests.append(request)
        if request.session_id == "lost-ack" and attempt == 1:
            context.abort(grpc.StatusCode.UNAVAILABLE, "injected")
        if request.session_id == "internal":
            abort_with_reason(context, grpc.StatusCode.INTERNAL, "INTERNAL",
                              "misconfigured")
        if request.session_id == "slow":
            time.sleep(0.5)
            return pb.DeleteSessionResponse()
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
            # A checkpoint commits what was applied; nothing else does.
            ack = pb.AppendResponse(
                duplicate=duplicate, input_offset=self.applied, version=1,
                committed_input_offset=self.applied if r.checkpoint else 0)
            yield ack
            if r.session_id == "double-ack" and not r.checkpoint:
                yield ack  # a buggy proxy's extra copy


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


def fast_retries():
    return dict(max_attempts=3, initial_backoff=0.001, max_backoff=0.01)


def slow_retries():
    # A backoff long enough to see if the stream sleeps it.
    return dict(max_attempts=5, initial_backoff=10, max_backoff=10)


def run_either(aio, sync_fn, async_fn):
    """sync_fn(), or with aio the coroutine function async_fn, run."""
    if aio:
        return asyncio.run(async_fn())
    return sync_fn()
