# SPDX-License-Identifier: Apache-2.0
"""Results as plain dataclasses (the proto messages stay available as
`.proto` where useful)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional


def _durability_name(value: int) -> str:
    """A Durability's name; an unknown value (a newer server) as its
    number."""
    from statestream.v1 import statestream_pb2 as pb
    try:
        return pb.Durability.Name(value)
    except ValueError:
        return str(value)


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

    @classmethod
    def from_proto(cls, s) -> "SessionInfo":
        return cls(s.session_id, s.model_id, s.position, s.input_offset,
                   s.pending_bytes, s.version, s.committed_position,
                   s.committed_input_offset, dict(s.labels),
                   s.parent.session_id, s.parent.version,
                   _durability_name(s.durability))


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

    @classmethod
    def from_proto(cls, v) -> "VersionInfo":
        from statestream.v1 import statestream_pb2 as pb
        return cls(v.version, v.position, v.input_offset, v.pending_bytes,
                   v.state_bytes, pb.VersionCause.Name(v.cause),
                   v.request_id, v.source_version)


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

    @classmethod
    def from_proto(cls, a) -> "AppendAck":
        return cls(a.duplicate, a.position, a.input_offset, a.pending_bytes,
                   a.version, a.committed_input_offset,
                   _durability_name(a.durability), a.tokens_consumed)


@dataclass
class GenerateChunk:
    index: int  # output index of tokens[0]
    tokens: List[int]
    text: str  # UTF-8 complete; see raw for the exact bytes
    raw: bytes
    logprobs: List[float] = field(default_factory=list)


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

    @classmethod
    def from_proto(cls, d) -> "GenerateDone":
        from statestream.v1 import statestream_pb2 as pb
        return cls(pb.FinishReason.Name(d.finish_reason), d.usage.output_tokens,
                   d.usage.input_tokens, d.committed, d.position,
                   d.input_offset, d.version, d.stop_token, d.stop_string,
                   d.replayed, _durability_name(d.durability))


@dataclass
class GenerateResult:
    tokens: List[int]
    text: str
    done: GenerateDone
    logprobs: List[float] = field(default_factory=list)


@dataclass(frozen=True)
class ScoredToken:
    token: int
    logprob: float
    greedy: bool


@dataclass(frozen=True)
class ScoreResult:
    tokens: List[ScoredToken]
    sum_logprob: float
    all_greedy: bool
    position: int
    version: int

    @classmethod
    def from_proto(cls, r) -> "ScoreResult":
        return cls([ScoredToken(t.token, t.logprob, t.greedy) for t in r.tokens],
                   r.sum_logprob, r.all_greedy, r.position, r.version)


@dataclass
class ExportedState:
    header: object  # statestream.v1.StateHeader
    blob: bytes
    session_id: Optional[str] = None
