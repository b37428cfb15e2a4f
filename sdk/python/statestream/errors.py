# SPDX-License-Identifier: Apache-2.0
"""Typed errors: the gRPC code plus the server's Reason and metadata."""
from __future__ import annotations

from typing import Dict, Optional

import grpc

DOMAIN = "statestream.dev"


class StatestreamError(Exception):
    """A failed call. `code` is a grpc.StatusCode; `reason` a Reason name
    (e.g. "POSITION_MISMATCH", "REASON_UNSPECIFIED" when the server gave
    none); `metadata` the ErrorInfo metadata (strings). An error the SDK
    made itself has a reason too, and metadata origin="sdk"
    (_local_error)."""

    def __init__(self, code: grpc.StatusCode, message: str,
                 reason: str = "REASON_UNSPECIFIED",
                 metadata: Optional[Dict[str, str]] = None):
        text = f"{code.name}: {message} [{reason}]"
        if (code == grpc.StatusCode.UNAVAILABLE and
                reason == "REASON_UNSPECIFIED" and
                ("failed to connect" in message or
                 "DNS resolution failed" in message)):
            # The transport's, not a server's (its errors carry a reason),
            # as the CLI's hint says.
            text += (" (no statestream server answered at the target "
                     "address: is one running there, with tls= as it "
                     "serves?)")
        super().__init__(text)
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata = dict(metadata or {})

    def __reduce__(self):
        # Rebuilt from its fields (and attributes such as the closed
        # client's mark), so it crosses pickling: multiprocessing,
        # concurrent.futures.ProcessPoolExecutor, copy.copy.
        return (type(self), (self.code, self.message, self.reason,
                             self.metadata), dict(self.__dict__))

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> "StatestreamError":
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        message = error.details() if hasattr(error, "details") else str(error)
        trailers = ()
        if hasattr(error, "trailing_metadata"):
            trailers = error.trailing_metadata() or ()
        return cls.from_status(code, message, trailers)

    @classmethod
    def from_status(cls, code: Optional[grpc.StatusCode],
                    message: Optional[str],
                    trailers=()) -> "StatestreamError":
        """From a call's status code, details and trailing metadata. A
        malformed `grpc-status-details-bin` is ignored (the code and message
        still make a typed error)."""
        if not isinstance(code, grpc.StatusCode):
            code = grpc.StatusCode.UNKNOWN
        reason, metadata = "REASON_UNSPECIFIED", {}
        for key, value in trailers or ():
            if key != "grpc-status-details-bin":
                continue
            from google.protobuf.message import DecodeError
            from google.rpc import error_details_pb2, status_pb2
            try:
                status = status_pb2.Status.FromString(value)
                for detail in status.details:
                    info = error_details_pb2.ErrorInfo()
                    if detail.Unpack(info) and info.domain == DOMAIN:
                        reason, metadata = info.reason, dict(info.metadata)
            except (DecodeError, TypeError, ValueError):
                pass  # malformed details: the code and message stand
        return cls(code, message or "", reason, metadata)


# The metadata every error the SDK makes itself carries (_local_error): a
# server's never does.
ORIGIN_KEY, ORIGIN_SDK = "origin", "sdk"


def _local_error(code: grpc.StatusCode, reason: str, message: str,
                 metadata: Optional[Dict[str, str]] = None
                 ) -> StatestreamError:
    """An error the SDK makes itself, not a server's (docs/errors.md):
    `code`, always a Reason of statestream.v1.Reason (REASON_UNSPECIFIED
    becomes INTERNAL: with INTERNAL or UNKNOWN it would read as a transport
    failure, which is_retryable retries; ValueError for a name the enum does
    not have), `metadata` plus origin="sdk". The C++ SDK's twin is
    LocalError (sdk/cpp/statestream/local_error.h). Errors that stand for a
    broken call ("append stream ended early", "generate ended without
    done") are not made with this: they are meant to read as a transport
    failure, and be retried as one."""
    from statestream.v1 import statestream_pb2 as pb
    if not reason or reason == "REASON_UNSPECIFIED":
        reason = "INTERNAL"
    pb.Reason.Value(reason)  # ValueError for a name it does not have
    metadata = dict(metadata or {})
    metadata[ORIGIN_KEY] = ORIGIN_SDK
    return StatestreamError(code, message, reason, metadata)


CLIENT_CLOSED = "client closed"


def client_closed_error() -> StatestreamError:
    """CANCELLED "client closed": what a call of a closed client raises
    (never retryable)."""
    error = StatestreamError(grpc.StatusCode.CANCELLED, CLIENT_CLOSED)
    error._client_closed = True
    return error


def is_retryable(error: StatestreamError) -> bool:
    """True when resending the same request is safe and may succeed. Not
    for CANCELLED "client closed", which the SDK raises after
    Client.close() / AsyncClient.close(): no retry can succeed."""
    c = error.code
    if c == grpc.StatusCode.CANCELLED:
        return not getattr(error, "_client_closed", False)
    if c in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return True
    if c == grpc.StatusCode.RESOURCE_EXHAUSTED:
        # The worker's admission limits; not a message over a size limit.
        return error.reason == "OVERLOADED"
    if c == grpc.StatusCode.ABORTED:
        return error.reason != "SESSION_BUSY"
    if c in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL):
        # Transport failures carry no reason; server bugs do.
        return error.reason == "REASON_UNSPECIFIED"
    return False


def blames_target(error: StatestreamError) -> bool:
    """True when `error` may be the target's fault (a transport failure, a
    gateway overloaded or misconfigured), so the client moves to its next
    target. A typed answer about the request or the session (NOT_FOUND,
    FAILED_PRECONDITION, INVALID_ARGUMENT, SESSION_BUSY, TENANT_LIMIT, ...)
    would be the same anywhere: the client stays."""
    c = error.code
    if c in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.ALREADY_EXISTS,
             grpc.StatusCode.FAILED_PRECONDITION,
             grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE):
        return False
    if c == grpc.StatusCode.ABORTED:
        return error.reason != "SESSION_BUSY"
    if c == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return error.reason == "OVERLOADED"
    return True


def retry_after(error: StatestreamError) -> float:
    """The server's retry hint in seconds (OVERLOADED), else 0."""
    try:
        return min(60.0, int(error.metadata.get("retry_after_ms", "0")) / 1000)
    except ValueError:
        return 0.0
