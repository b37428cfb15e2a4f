# SPDX-License-Identifier: Apache-2.0
"""Results as plain dataclasses. Those made from one response message keep
it as `.proto` (excluded from comparisons and repr), for fields added to the
API after this SDK. Timestamps are timezone-aware UTC datetimes and
durations timedeltas; both are None when the server left them unset."""
from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple


def _durability_name(value: int) -> str:
    """A Durability's name; an unknown value (a newer server) as its
    number."""
    from statestream.v1 import statestream_pb2 as pb
    try:
        return pb.Durability.Name(value)
    except ValueError:
        return str(value)


def _time(message, name: str) -> Optional[datetime.datetime]:
    """The Timestamp field `name` of `message` as a UTC datetime; None if
    unset."""
    if not message.HasField(name):
        return None
    return getattr(message, name).ToDatetime(tzinfo=datetime.timezone.utc)


def _duration(message, name: str) -> Optional[datetime.timedelta]:
    """The Duration field `name` of `message`; None if unset."""
    if not message.HasField(name):
        return None
    return getattr(message, name).ToTimedelta()


def _proto_field():
    return field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class SessionInfo:
    session_id: str
    model_id: str
    position: int
    input_offset: int
    pending_bytes: int
    version: int
    committed_position: int
    committed_input_offset: int
    labels: Dict[str, str]
    parent_session_id: str = ""
    parent_version: int = 0
    # The durability `version` reached, a Durability name
    # ("DURABILITY_MEMORY", "DURABILITY_FSYNC", "DURABILITY_REPLICATED").
    durability: str = "DURABILITY_UNSPECIFIED"
    # The bound model's fingerprint (Model.fingerprint).
    model_fingerprint: str = ""
    # Encoded size of `version`'s state in bytes (what export() sends).
    state_bytes: int = 0
    # Idle time-to-live, and when the session expires unless written again
    # (update_time + ttl).
    ttl: Optional[datetime.timedelta] = None
    expire_time: Optional[datetime.datetime] = None
    # When version 1 was committed; when the head or the metadata last
    # changed.
    create_time: Optional[datetime.datetime] = None
    update_time: Optional[datetime.datetime] = None
    # The statestream.v1.Session it was made from.
    proto: object = _proto_field()

    @classmethod
    def from_proto(cls, s) -> "SessionInfo":
        return cls(s.session_id, s.model_id, s.position, s.input_offset,
                   s.pending_bytes, s.version, s.committed_position,
                   s.committed_input_offset, dict(s.labels),
                   s.parent.session_id, s.parent.version,
                   _durability_name(s.durability), s.model_fingerprint,
                   s.state_bytes, _duration(s, "ttl"),
                   _time(s, "expire_time"), _time(s, "create_time"),
                   _time(s, "update_time"), s)


@dataclass(frozen=True)
class VersionInfo:
    version: int
    position: int
    input_offset: int
    pending_bytes: int
    state_bytes: int
    cause: str
    # The request that made it ("" when none, or not recorded).
    request_id: str = ""
    # ROLLBACK: the version it copies; FORK: the source's version; else 0.
    source_version: int = 0
    # The durability it reached when committed (a Durability name).
    durability: str = "DURABILITY_UNSPECIFIED"
    # When it was committed.
    create_time: Optional[datetime.datetime] = None
    # The statestream.v1.Version it was made from.
    proto: object = _proto_field()

    @classmethod
    def from_proto(cls, v) -> "VersionInfo":
        from statestream.v1 import statestream_pb2 as pb
        try:
            cause = pb.VersionCause.Name(v.cause)
        except ValueError:  # a newer server's cause
            cause = str(v.cause)
        return cls(v.version, v.position, v.input_offset, v.pending_bytes,
                   v.state_bytes, cause, v.request_id, v.source_version,
                   _durability_name(v.durability), _time(v, "create_time"), v)


@dataclass(frozen=True)
class AppendAck:
    duplicate: bool
    position: int
    input_offset: int
    pending_bytes: int
    version: int
    committed_input_offset: int
    # The durability `version` reached (a Durability name, as SessionInfo).
    durability: str = "DURABILITY_UNSPECIFIED"
    tokens_consumed: int = 0
    # The statestream.v1.AppendResponse it was made from.
    proto: object = _proto_field()

    @classmethod
    def from_proto(cls, a) -> "AppendAck":
        return cls(a.duplicate, a.position, a.input_offset, a.pending_bytes,
                   a.version, a.committed_input_offset,
                   _durability_name(a.durability), a.tokens_consumed, a)


@dataclass(frozen=True)
class TopLogprob:
    """One of the most likely tokens at a step."""
    token: int
    logprob: float


def _top(message) -> Tuple[TopLogprob, ...]:
    return tuple(TopLogprob(t.token, t.logprob) for t in message.top)


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability (natural log, the model's raw
    distribution) and, with top_logprobs, the most likely tokens at its
    step, most likely first (the chosen token may or may not be among
    them)."""
    token: int
    logprob: float
    top: Tuple[TopLogprob, ...] = ()

    @classmethod
    def from_proto(cls, lp) -> "TokenLogprob":
        return cls(lp.token, lp.logprob, _top(lp))


@dataclass
class GenerateChunk:
    index: int  # output index of tokens[0]
    tokens: List[int]
    text: str  # UTF-8 complete; see raw for the exact bytes
    raw: bytes
    # With logprobs=True: one entry per token, parallel to `tokens`
    # (logprobs[i] is that of tokens[i]). None for a token the server sent
    # without one: output a resumed call replays from a checkpoint or a
    # finished generation carries no logprobs. Empty without logprobs=True.
    logprobs: List[Optional[float]] = field(default_factory=list)
    # The same entries with the token id and the top_logprobs alternatives.
    token_logprobs: List[Optional[TokenLogprob]] = field(default_factory=list)
    # On the first chunk delivered, when the server sampled the generation
    # (not replayed it): the session's input_offset it started from. A
    # side-branch (commit=False) call is resumed later by passing it as
    # expected_input_offset. None on every other chunk.
    start_input_offset: Optional[int] = None


@dataclass(frozen=True)
class GenerateDone:
    finish_reason: str
    output_tokens: int
    input_tokens: int
    committed: bool
    position: int
    input_offset: int
    version: int
    # FINISH_REASON_STOP_TOKEN: the token that stopped it.
    stop_token: int = 0
    # FINISH_REASON_STOP_STRING: the stop string that matched.
    stop_string: str = ""
    # A replay of a finished committing Generate with the same request_id.
    replayed: bool = False
    # The durability `version` reached (a Durability name, as SessionInfo).
    durability: str = "DURABILITY_UNSPECIFIED"
    # The statestream.v1.GenerateDone it was made from.
    proto: object = _proto_field()

    @classmethod
    def from_proto(cls, d) -> "GenerateDone":
        from statestream.v1 import statestream_pb2 as pb
        try:
            reason = pb.FinishReason.Name(d.finish_reason)
        except ValueError:  # a newer server's reason
            reason = str(d.finish_reason)
        return cls(reason, d.usage.output_tokens,
                   d.usage.input_tokens, d.committed, d.position,
                   d.input_offset, d.version, d.stop_token, d.stop_string,
                   d.replayed, _durability_name(d.durability), d)


@dataclass
class GenerateResult:
    tokens: List[int]
    text: str
    done: GenerateDone
    # As GenerateChunk: parallel to `tokens` with logprobs=True (None for a
    # token that came without one), else empty.
    logprobs: List[Optional[float]] = field(default_factory=list)
    token_logprobs: List[Optional[TokenLogprob]] = field(default_factory=list)


@dataclass(frozen=True)
class ScoredToken:
    token: int
    logprob: float
    greedy: bool
    # With top_logprobs: the most likely tokens at this step, most likely
    # first.
    top: Tuple[TopLogprob, ...] = ()


@dataclass(frozen=True)
class ScoreResult:
    tokens: List[ScoredToken]
    sum_logprob: float
    all_greedy: bool
    position: int
    version: int
    # The input_offset scored from (after flushing the tail, on the copy).
    input_offset: int = 0
    # The statestream.v1.ScoreResponse it was made from.
    proto: object = _proto_field()

    @classmethod
    def from_proto(cls, r) -> "ScoreResult":
        return cls([ScoredToken(t.token, t.logprob, t.greedy, _top(t))
                    for t in r.tokens],
                   r.sum_logprob, r.all_greedy, r.position, r.version,
                   r.input_offset, r)


@dataclass
class ExportedState:
    header: object  # statestream.v1.StateHeader
    blob: bytes
    session_id: Optional[str] = None
