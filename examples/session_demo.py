#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""The quick-start demo client: a statestream session, step by step.

Usage:
  session_demo.py HOST:PORT STUBS_DIR feed SESSION_ID TEXT_FILE
      create the session, stream TEXT_FILE into it in chunks (exactly-once
      Append, one checkpoint at the end), generate a committed
      continuation, print the session
  session_demo.py HOST:PORT STUBS_DIR resume SESSION_ID
      (after a server restart) read the session back from its persisted
      state, generate a side-branch continuation from it
STUBS_DIR holds Python stubs of proto/statestream/v1/statestream.proto
(scripts/quickstart.sh generates them with protoc + grpc_python_plugin).
Prints `position=N input_offset=N version=N` lines that the quick start
compares across the restart.
"""
import sys

sys.path.insert(0, sys.argv[2])
import grpc  # noqa: E402
from statestream.v1 import statestream_pb2 as pb  # noqa: E402
from statestream.v1 import statestream_pb2_grpc as rpc  # noqa: E402

CHUNK = 64  # bytes per Append request; chunks may split UTF-8 characters


def show(label, s):
    print(f"  {label}: session {s.session_id} position={s.position} "
          f"input_offset={s.input_offset} version={s.version} "
          f"(committed input_offset {s.committed_input_offset}, "
          f"{s.state_bytes} state bytes)")


def generate(streams, session_id, commit, request_id):
    req = pb.GenerateRequest(session_id=session_id, request_id=request_id,
                             max_tokens=48, commit=commit)
    req.sampling.seed = 7
    req.sampling.temperature = 0.8
    text = b""
    done = None
    for msg in streams.Generate(req, timeout=120):
        if msg.HasField("chunk"):
            text += msg.chunk.text_utf8
        else:
            done = msg.done
    print(f"  generated ({'committed' if commit else 'side branch'}, "
          f"{done.usage.output_tokens} tokens, "
          f"{pb.FinishReason.Name(done.finish_reason)}): {text!r}")
    return done


def feed(sessions, streams, session_id, path):
    data = open(path, "rb").read()
    s = sessions.CreateSession(pb.CreateSessionRequest(
        request_id=f"create-{session_id}", session_id=session_id), timeout=30)
    show("created", s)

    def requests():
        # An empty file still sends one (empty) request: its flush and
        # checkpoint, and its ack, report where the session is.
        for at in range(0, max(len(data), 1), CHUNK):
            last = at + CHUNK >= len(data)
            yield pb.AppendRequest(
                session_id=session_id, request_id=f"append-{at}",
                expected_input_offset=at, text_utf8=data[at:at + CHUNK],
                flush=last, checkpoint=last)

    acks = list(streams.Append(requests(), timeout=120))
    print(f"  appended {len(data)} bytes of {path} in {len(acks)} chunks; "
          f"last ack: position={acks[-1].position} "
          f"input_offset={acks[-1].input_offset} version={acks[-1].version}")
    if acks[-1].position == 0:
        # An empty file: nothing to generate from (Generate would fail
        # FAILED_PRECONDITION/INVALID_ARGUMENT); report the session as is.
        print(f"position={acks[-1].position} "
              f"input_offset={acks[-1].input_offset} "
              f"version={acks[-1].version}")
        return
    generate(streams, session_id, True, "continue-1")
    s = sessions.GetSession(pb.GetSessionRequest(session_id=session_id),
                            timeout=30)
    show("after generate", s)
    print(f"position={s.position} input_offset={s.input_offset} "
          f"version={s.version}")


def resume(sessions, streams, session_id):
    s = sessions.GetSession(pb.GetSessionRequest(session_id=session_id),
                            timeout=30)
    show("after restart", s)
    if s.position > 0:  # else nothing to generate from (an empty file)
        generate(streams, session_id, False, "peek-1")
    print(f"position={s.position} input_offset={s.input_offset} "
          f"version={s.version}")


def main():
    target, _, verb, session_id = sys.argv[1:5]
    with grpc.insecure_channel(target) as channel:
        sessions = rpc.SessionsStub(channel)
        streams = rpc.StreamsStub(channel)
        try:
            if verb == "feed":
                feed(sessions, streams, session_id, sys.argv[5])
            else:
                resume(sessions, streams, session_id)
        except grpc.RpcError as e:
            print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
            sys.exit(1)


if __name__ == "__main__":
    main()
