# SPDX-License-Identifier: Apache-2.0
"""Request messages built from Session's and AsyncSession's arguments,
each argument checked before any call; and an export's blob assembled from
its stream."""
from __future__ import annotations

import datetime
import math
import numbers
import uuid
from typing import List

import grpc

from statestream.checksum import _crc32c
from statestream.errors import StatestreamError, _local_error
from statestream.types import ExportedState
from statestream.v1 import statestream_pb2 as pb
from statestream.streams import (_durability, _invalid_utf8, _labels,
                                 _str_field, _utf8)


def new_request_id() -> str:
    return uuid.uuid4().hex


def _request_id(request_id) -> str:
    """`request_id` checked (_str_field); a new one for None or ""."""
    return (_str_field(request_id, "request_id", optional=True) or
            new_request_id())


def _create_request(session_id, model_id, labels, ttl_seconds, fork_from,
                    fork_version, request_id, durability):
    req = pb.CreateSessionRequest(
        request_id=_request_id(request_id),
        session_id=_str_field(session_id, "session id", optional=True),
        model_id=_str_field(model_id, "model_id", optional=True),
        labels=_labels(labels), durability=_durability(durability))
    if ttl_seconds is not None:
        req.ttl.seconds = ttl_seconds
    if fork_from is not None and _str_field(fork_from, "fork_from"):
        req.fork_from.session_id = fork_from
        req.fork_from.version = fork_version
    return req


def _import_header(session_id, mode, state, *, labels=None,
                   ttl_seconds=None, durability=pb.DURABILITY_UNSPECIFIED,
                   expected_version=None, request_id=None):
    header = pb.ImportHeader(
        request_id=_request_id(request_id),
        session_id=_str_field(session_id, "session id", optional=True),
        mode=mode, labels=_labels(labels),
        durability=_durability(durability))
    header.state.CopyFrom(state.header)
    if ttl_seconds is not None:
        header.ttl.seconds = ttl_seconds
    if expected_version is not None:
        header.expected_version = expected_version
    return header


def _state_blob(state) -> bytes:
    """`state.blob` as bytes (bytes-like is copied); TypeError for anything
    else or for a `state` that is no ExportedState, before any call (a
    request that fails to build inside the call's request iterator surfaces
    as a retried UNKNOWN, or in asyncio as a CancelledError)."""
    if not isinstance(state, ExportedState):
        raise TypeError("state must be an ExportedState (from export()), "
                        f"not {type(state).__name__}")
    blob = state.blob
    if isinstance(blob, (bytes, bytearray, memoryview)):
        return bytes(blob)
    raise TypeError(f"state.blob must be bytes, not {type(blob).__name__}")


def _import_chunks(header, blob: bytes):
    """The blob's chunks, (index, data), as ImportState sends them."""
    size = header.state.chunk_bytes or (1 << 20)
    for i in range(0, max(1, (len(blob) + size - 1) // size)):
        yield i, blob[i * size:(i + 1) * size]


def _import_chunk(index: int, data: bytes, crc: int):
    return pb.ImportStateRequest(chunk=pb.StateChunk(index=index, data=data,
                                                     crc32c=crc))


def _import_requests(header, blob: bytes):
    """The ImportState requests: the header, then the blob in chunks."""
    yield pb.ImportStateRequest(header=header)
    for i, data in _import_chunks(header, blob):
        yield _import_chunk(i, data, _crc32c(data))


def _watched(requests, guard):
    """`requests`, each one taken (the one before it sent) a sign of
    progress to `guard`, which is disarmed after the last."""
    for r in requests:
        guard.progress()
        yield r
    guard.disarm()


def _list_request(labels, model_id):
    return pb.ListSessionsRequest(
        label_selector=_labels(labels),
        model_id=_str_field(model_id, "model_id", optional=True))


def _rollback_request(session_id, version, expected_version, durability,
                      request_id=None):
    req = pb.RollbackSessionRequest(request_id=_request_id(request_id),
                                    session_id=session_id, version=version,
                                    durability=_durability(durability))
    if expected_version is not None:
        req.expected_version = expected_version
    return req


def _update_request(session_id, labels, ttl_seconds):
    if labels is None and ttl_seconds is None:
        raise ValueError("update() needs labels or ttl_seconds (or both)")
    req = pb.UpdateSessionRequest(request_id=new_request_id(),
                                  session_id=session_id)
    if labels is not None:
        req.labels.update(_labels(labels))
        req.update_mask.paths.append("labels")
    if ttl_seconds is not None:
        req.ttl.seconds = ttl_seconds
        req.update_mask.paths.append("ttl")
    return req


def _generate_request(session_id, prompt, *, prompt_tokens, max_tokens,
                      temperature, top_p, top_k, min_p, presence_penalty,
                      frequency_penalty, penalty_decay, logit_bias, seed,
                      stop, stop_tokens, commit, durability, logprobs,
                      top_logprobs, request_id, expected_input_offset,
                      max_duration):
    """The GenerateRequest of Session.generate / AsyncSession.generate
    (expected_input_offset as given: the caller pins it)."""
    # None is no prompt; anything else must be text (0 or [] are a
    # TypeError, not an empty prompt).
    prompt = None if prompt is None else _utf8(prompt, "prompt")
    if prompt and prompt_tokens:
        raise ValueError("give prompt or prompt_tokens, not both")
    req = pb.GenerateRequest(session_id=session_id,
                             request_id=_request_id(request_id),
                             max_tokens=max_tokens, commit=commit,
                             durability=_durability(durability),
                             logprobs=logprobs,
                             top_logprobs=top_logprobs,
                             stop_strings=_stop_strings(stop),
                             stop_tokens=_stop_tokens(stop_tokens))
    if prompt:
        req.prompt_text_utf8 = prompt
    elif prompt_tokens:
        req.prompt_tokens.ids.extend(prompt_tokens)
    sampling = req.sampling
    if temperature is not None:
        sampling.temperature = temperature
    if top_p is not None:
        sampling.top_p = top_p
    sampling.top_k = top_k
    sampling.min_p = min_p
    sampling.presence_penalty = presence_penalty
    sampling.frequency_penalty = frequency_penalty
    if penalty_decay is not None:
        sampling.penalty_decay = penalty_decay
    if logit_bias:
        sampling.logit_bias.update(logit_bias)
    if seed is not None:
        sampling.seed = seed
    if max_duration is not None:
        req.max_duration.FromNanoseconds(_duration_nanos(max_duration,
                                                         "max_duration"))
    if expected_input_offset is not None:
        req.expected_input_offset = expected_input_offset
    return req


# google.protobuf.Duration's range, which the server requires: seconds at
# most this (nanos 0 to 999,999,999), not negative.
_MAX_DURATION_S = 315_576_000_000


def _duration_nanos(value, what: str) -> int:
    """`value` (seconds, or a timedelta) in nanoseconds. ValueError unless
    finite, not negative and within what the server takes
    (_MAX_DURATION_S), TypeError for another type, before any call."""
    if isinstance(value, datetime.timedelta):
        nanos = ((value.days * 86400 + value.seconds) * 10 ** 6 +
                 value.microseconds) * 1000
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{what} must be a finite number of seconds, "
                             f"at least 0, not {value}")
        # int() first: a fixed-width integer (numpy) would wrap.
        nanos = (int(value) * 10 ** 9 if isinstance(value, numbers.Integral)
                 else round(float(value) * 1e9))
    else:
        raise TypeError(f"{what} must be seconds or a timedelta, not "
                        f"{type(value).__name__}")
    if nanos < 0 or nanos // 10 ** 9 > _MAX_DURATION_S:
        raise ValueError(f"{what} must be from 0 to {_MAX_DURATION_S:,} "
                         f"seconds, not {value}")
    return nanos


def _score_request(session_id, text, tokens, version, top_logprobs,
                   expected_input_offset):
    if (text is None) == (tokens is None):
        raise ValueError("score takes the continuation as text or as "
                         "tokens: give exactly one")
    req = pb.ScoreRequest(session_id=session_id, version=version,
                          top_logprobs=top_logprobs)
    if tokens is not None:
        req.tokens.ids.extend(tokens)
    else:
        req.text_utf8 = _utf8(text, "text")
    if expected_input_offset is not None:
        req.expected_input_offset = expected_input_offset
    return req


def _assemble_export(parts, session_id: str) -> "ExportedState":
    """The blob of an ExportState stream: the header, then every chunk in
    index order, each as its CRC-32C says, up to header.total_bytes; else
    DATA_LOSS/STATE_CORRUPT with metadata detail, as the server reports its
    own (_corrupt_export; not retried)."""
    header, blob = None, []
    for part in parts:
        if part.HasField("header"):
            header = part.header
            continue
        if not part.HasField("chunk"):
            continue  # a newer server's message: skipped, as C++ does
        c = part.chunk
        if c.index != len(blob):
            raise _corrupt_export(
                f"export: chunk {c.index} arrived in place of {len(blob)}")
        if _crc32c(c.data) != c.crc32c:
            raise _corrupt_export(f"export: chunk {c.index} fails its CRC-32C")
        blob.append(c.data)
    data = b"".join(blob)
    if header is None:
        raise _corrupt_export("export: the stream ended without a header")
    if len(data) != header.total_bytes:
        raise _corrupt_export(f"export: received {len(data)} of "
                              f"{header.total_bytes} bytes")
    return ExportedState(header, data, session_id)


def _corrupt_export(detail: str) -> StatestreamError:
    """DATA_LOSS/STATE_CORRUPT (origin=sdk) for an exported blob that fails
    the SDK's checks, `detail` saying which (as the C++ SDK's words)."""
    return _local_error(grpc.StatusCode.DATA_LOSS, "STATE_CORRUPT", detail,
                        {"detail": detail})


def _stop_strings(stop) -> List[str]:
    """`stop` as a list: one str is one stop string (not its characters);
    None is none."""
    if stop is None:
        return []
    # One string, str or bytes-like (as a prompt): not a list of them.
    if isinstance(stop, (str, bytes, bytearray, memoryview)):
        stop = [stop] if len(stop) else []
    out = []
    for s in stop:
        data = _utf8(s, "stop string")
        try:
            out.append(data.decode())
        except UnicodeDecodeError as e:
            raise _invalid_utf8("stop string", e.start) from None
    return out


def _stop_tokens(stop_tokens) -> List[int]:
    """`stop_tokens` as a list: one int is one token id; None is none."""
    if stop_tokens is None:
        return []
    if isinstance(stop_tokens, int):
        return [stop_tokens]
    return list(stop_tokens)
