# SPDX-License-Identifier: Apache-2.0
"""Channels and settings shared by Client and AsyncClient: the default
channel options, the receive-limit floor, the retry and TLS settings' checks
and _setup, their shared constructor."""
from __future__ import annotations

import math
import numbers
import time
from typing import Optional, Sequence

import grpc

from statestream.v1 import statestream_pb2_grpc as rpc
from statestream.streams import _timeout


# The least receive limit a client may set: what the server sends stays
# below it but for ScoreResponse with many top_logprobs (see LIMITS in
# statestream.proto).
MIN_RECEIVE_MESSAGE_LENGTH = 4 << 20

# Channel options every client starts from; `options` passed to a client
# replace the ones with the same name. Reconnects: 100 ms after a failed
# attempt, backing off to 1 s, so a restarted server is found at once (the
# retry loop decides how long to wait). grpc.min_reconnect_backoff_ms is,
# in gRPC core, the least time a connection attempt is given (default
# 20 s): 5 s lets a slow link's handshake finish (100 ms, set before,
# failed every one slower than that) and still gives up on a host that
# drops packets soon enough to fail over to the next target.
# HTTP/2 keepalive: while calls are
# open, a ping every 20 s that must be answered within 10 s, so a call on a
# connection that died silently (a paused or partitioned server, a dropped
# NAT entry) fails UNAVAILABLE and is resumed instead of waiting forever.
# max_pings_without_data 0: else gRPC stops pinging after two pings on a
# call that sends nothing (a Generate, a writer waiting for acks). The
# servers accept a ping every 500 ms.
DEFAULT_CHANNEL_OPTIONS = (
    ("grpc.max_receive_message_length", 8 << 20),
    ("grpc.max_send_message_length", 8 << 20),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 5000),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.keepalive_time_ms", 20000),
    ("grpc.keepalive_timeout_ms", 10000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
)


def _channel_options(options: Sequence = (),
                     tls_server_name: Optional[str] = None) -> list:
    """DEFAULT_CHANNEL_OPTIONS overridden by `options` (by name).

    A receive limit below MIN_RECEIVE_MESSAGE_LENGTH (other than -1,
    unlimited) raises ValueError: every call whose answer is larger (an
    export's 1 MiB chunks, a listing page of up to 2 MiB) would fail with
    gRPC's bare RESOURCE_EXHAUSTED, as the C++ SDK's
    ClientOptions.max_receive_message_bytes refuses it too."""
    options = list(options)
    given = {name for name, _ in options}
    for name, value in options:
        if isinstance(name, bytes):
            name = name.decode("ascii", "replace")
        if name != "grpc.max_receive_message_length":
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError("grpc.max_receive_message_length must be an int, "
                            "not %s" % type(value).__name__)
        if value != -1 and value < MIN_RECEIVE_MESSAGE_LENGTH:
            raise ValueError(
                "grpc.max_receive_message_length must be -1 (unlimited) or "
                "at least %d (got %d)" % (MIN_RECEIVE_MESSAGE_LENGTH, value))
    opts = [o for o in DEFAULT_CHANNEL_OPTIONS if o[0] not in given] + options
    if tls_server_name:
        # The name checked against the server certificate.
        opts = [o for o in opts if o[0] != "grpc.ssl_target_name_override"]
        opts.append(("grpc.ssl_target_name_override", tls_server_name))
    return opts


class _Stubs:
    def __init__(self, channel):
        self.channel = channel
        self.sessions = rpc.SessionsStub(channel)
        self.streams = rpc.StreamsStub(channel)
        self.models = rpc.ModelsStub(channel)


def _ignore_connectivity(_state) -> None:
    """Channel.subscribe's callback: the watch itself is what counts."""


def _end_watches(channels) -> None:
    """Ends _setup's connectivity watches before the channels close: gRPC's
    polling thread, caught inside its 0.2 s wait by a close, dies with an
    unhandled "Channel closed!" traceback on stderr. Waits (up to 1 s) for
    it to see it has nothing left to watch; the flag it sets is gRPC's own
    (grpc._channel), hence getattr."""
    states = []
    for channel in channels:
        channel.unsubscribe(_ignore_connectivity)
        states.append(getattr(channel, "_connectivity_state", None))
    give_up = time.monotonic() + 1.0
    while (any(getattr(s, "polling", False) for s in states) and
           time.monotonic() < give_up):
        time.sleep(0.01)


def _close_channels(channels) -> None:
    """Ends the watches, then closes the channels: close() runs it, and so
    does a Client's finalizer (weakref.finalize) when the client is
    collected or, at the latest, when the interpreter exits. Left to the
    channels' own __del__ during the interpreter's shutdown, a watched
    channel's unsubscribe waits on gRPC's polling thread, which no longer
    runs then: a script that never closed its Client never exited."""
    _end_watches(channels)
    for channel in channels:
        channel.close()


def _retry_settings(client, timeout, max_attempts, initial_backoff,
                    max_backoff) -> None:
    """Sets the retry settings, refusing (as the C++ Client::Create) values
    no call could run with rather than bending them into something:
    ValueError for max_attempts below 1, a timeout of 0 or less (None or
    inf: no bound), a NaN or negative backoff or an infinite
    initial_backoff (an infinite max_backoff is no cap); TypeError for
    anything but a number (max_attempts: an int)."""
    client.timeout = _timeout(timeout)
    if client.timeout is not None and client.timeout <= 0:
        raise ValueError(f"timeout must be more than 0 seconds (inf or "
                         f"None: no bound), not {timeout}")
    if (isinstance(max_attempts, bool) or
            not isinstance(max_attempts, numbers.Integral)):
        raise TypeError(f"max_attempts must be an int, not "
                        f"{type(max_attempts).__name__}")
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1 (got "
                         f"{max_attempts})")
    client.max_attempts = int(max_attempts)
    for name, value in (("initial_backoff", initial_backoff),
                        ("max_backoff", max_backoff)):
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            raise TypeError(f"{name} must be a number of seconds, not "
                            f"{type(value).__name__}")
        if math.isnan(value) or value < 0 or (
                name == "initial_backoff" and math.isinf(value)):
            raise ValueError(
                "initial_backoff must be 0 or more and finite, max_backoff "
                f"0 or more (inf: no cap); {name} was {value}")
    client.initial_backoff = float(initial_backoff)
    client.max_backoff = float(max_backoff)


def _tls_settings(tls, **settings) -> None:
    """Refuses (ValueError) a TLS setting given (not None or empty)
    without tls=True: the channel would be plaintext, the setting ignored
    and the api_key sent in the clear. The message names the setting, not
    its value (a private key)."""
    if tls:
        return
    for name, value in settings.items():
        if value:
            raise ValueError(f"{name} needs tls=True (without it the "
                             f"channel is plaintext and {name} is "
                             f"ignored)")


def _setup(client, targets, api_key, tenant, tls, root_certificates,
           private_key, certificate_chain, tls_server_name, timeout,
           max_attempts, initial_backoff, max_backoff, options, grpc_module):
    """Client's and AsyncClient's shared constructor: the retry settings,
    the call metadata, and one _Stubs per target on channels that
    `grpc_module` (grpc or grpc.aio) opens."""
    if isinstance(targets, str):
        targets = [t for t in targets.split(",") if t]
    if not targets:
        raise ValueError("targets is empty")
    _tls_settings(tls, root_certificates=root_certificates,
                  private_key=private_key,
                  certificate_chain=certificate_chain,
                  tls_server_name=tls_server_name)
    _retry_settings(client, timeout, max_attempts, initial_backoff,
                    max_backoff)
    # Header values: a byte gRPC refuses there fails every call with an
    # error that repeats the value (the key) in the sync client; told here,
    # naming the option only. A key read from a file keeps its newline.
    for name, value in (("api_key", api_key), ("tenant", tenant)):
        if value is None:
            continue
        if not isinstance(value, str):
            raise TypeError("%s must be a str" % name)
        bad = next((c for c in value if not " " <= c <= "~"), None)
        if bad is not None:
            raise ValueError(
                "%s may hold only printable ASCII (a header value); found "
                "character U+%04X" % (name, ord(bad)))
    client._metadata = []
    if api_key:
        client._metadata.append(("authorization", "Bearer " + api_key))
    if tenant:
        client._metadata.append(("x-statestream-tenant", tenant))
    opts = _channel_options(options, tls and tls_server_name)
    client._stubs = []
    for target in targets:
        if tls:
            creds = grpc.ssl_channel_credentials(
                root_certificates, private_key, certificate_chain)
            channel = grpc_module.secure_channel(target, creds, options=opts)
        else:
            channel = grpc_module.insecure_channel(target, options=opts)
        if grpc_module is grpc:
            # A sync channel's reconnect timers fire only while some thread
            # polls it, and a failing call polls too briefly: after a
            # server restart, calls kept failing with the old connection's
            # error for 5-10 s. Watching its connectivity keeps gRPC's
            # polling thread on it (reconnected within ~0.3 s of the
            # restart). close() ends the watch. (asyncio polls already.)
            channel.subscribe(_ignore_connectivity)
        client._stubs.append(_Stubs(channel))
    client._current = 0
    client._closed = False
