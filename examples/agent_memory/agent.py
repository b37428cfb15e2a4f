#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""An agent whose memory is a statestream session.

Each turn appends only the new message to the session and generates the
reply with a committing Generate: the conversation lives in the model's
recurrent state, checkpointed by the server. The agent can stop at any time;
later (another process, after a server restart, on another worker) it
reopens the session by id and carries on without re-sending any history.

A turn is applied at most once, and exactly once if retried until it
succeeds: it carries a request_id and the session's input_offset before it
(a Turn). Retrying the same Turn (after an error, or from a new process
after a crash) either replays the reply the server committed for it (the
record lives with the session's state, for the server's idempotency window:
by default 1 hour and the session's last 64 generations), continues a
generation checkpointed midway, or runs it for the first time. If the
session moved on in between (another writer, or the record expired) the
retry fails with POSITION_MISMATCH instead of applying the turn twice.

    python3 agent.py --target 127.0.0.1:7700 --session my-agent "Hi, I'm Ada."
    python3 agent.py --target 127.0.0.1:7700 --session my-agent "Who am I?"

With --pending-file PATH the command line pins its turns there: each is
written (atomically) before it is sent and removed once its reply is
printed. A run that finds a turn there (the last run died or lost its
connection mid-turn) first retries that turn, which the server answers
exactly once, then goes on; with no message it only does that. A turn
pinned for another session is refused (exit 2, the file kept); one the
server can no longer tell the outcome of (POSITION_MISMATCH: the session
moved on, or its record expired) is moved aside to PATH.unknown, said so
on stderr, and the run goes on.

(With `statestream serve`'s built-in demo model the replies are noise; the
mechanics are the point. Use --model with a real RWKV checkpoint for words.)
"""
import argparse
import json
import os
import sys
import uuid
from dataclasses import asdict, dataclass
from typing import Optional, Union

from statestream import Client, StatestreamError


@dataclass(frozen=True)
class Turn:
    """One message, pinned: keep it (e.g. on disk) until tell() returned,
    and retry with this same Turn."""
    message: str
    request_id: str
    input_offset: int  # the session's input_offset before the turn
    session_id: str = ""  # the session it is for ("": a file from before)


class Agent:
    def __init__(self, client: Client, session_id: str, seed: int = 1):
        self.client = client
        self.session = client.session(session_id)
        self.seed = seed
        self.bytes_sent = 0  # what this process sent: only new messages
        try:  # get-or-create (SESSION_EXISTS: another process was first)
            client.create_session(session_id)
        except StatestreamError as e:
            if e.reason != "SESSION_EXISTS":
                raise

    def new_turn(self, message: str) -> Turn:
        """A Turn for `message` at the session's current input_offset."""
        return Turn(message, uuid.uuid4().hex,
                    self.session.get().input_offset, self.session.id)

    def tell(self, turn: Union[Turn, str], max_tokens: int = 48) -> str:
        """The reply to `turn` (a str: a new Turn for it). Retrying the same
        Turn after an error never applies it twice: see the module
        docstring."""
        if isinstance(turn, str):
            turn = self.new_turn(turn)
        prompt = f"User: {turn.message}\n\nAssistant:"
        self.bytes_sent += len(prompt.encode())
        result = self.session.generate_text(
            prompt, max_tokens=max_tokens, temperature=1.0, seed=self.seed,
            stop=["\n\n"], commit=True, request_id=turn.request_id,
            expected_input_offset=turn.input_offset)
        return result.text


def load_turn(path: str) -> Optional[Turn]:
    """The turn pinned at `path`, if any."""
    try:
        with open(path, encoding="utf-8") as f:
            return Turn(**json.load(f))
    except FileNotFoundError:
        return None


def pin_turn(path: str, turn: Turn) -> None:
    """Writes `turn` to `path` atomically (a crash leaves the old file or
    the new one, never half of one)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(asdict(turn), f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def tell_pinned(agent: Agent, turn: Turn, path: Optional[str],
                show) -> None:
    """tell(turn), with the turn pinned at `path` (if set) until its reply
    is shown (`show(reply)`): a run killed in between retries it."""
    if path:
        pin_turn(path, turn)
    show(agent.tell(turn))
    if path:
        os.remove(path)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", default="127.0.0.1:7700")
    p.add_argument("--session", default="agent")
    p.add_argument("--pending-file", default=None,
                   help="pin each turn here until its reply is printed; a "
                   "turn found here is retried first (see above)")
    p.add_argument("message", nargs="*")
    args = p.parse_args()
    with Client(args.target) as client:
        agent = Agent(client, args.session)
        pending = load_turn(args.pending_file) if args.pending_file else None
        if pending is not None and pending.session_id not in ("", args.session):
            print(f"{args.pending_file} holds a turn for session "
                  f"{pending.session_id!r}, not {args.session!r}: run it "
                  "with that session", file=sys.stderr)
            return 2
        if pending is not None:
            try:
                tell_pinned(agent, pending, args.pending_file,
                            lambda r: print(f"> {pending.message} (retried)"
                                            f"\n{r!r}", flush=True))
            except StatestreamError as e:
                if e.reason != "POSITION_MISMATCH":
                    raise
                # Applied or not, the server can no longer say: kept aside
                # for a person to look at, not retried again and again.
                os.replace(args.pending_file, args.pending_file + ".unknown")
                print(f"the pinned turn {pending.message!r}: outcome "
                      f"unknown (the session moved on: {e}); kept at "
                      f"{args.pending_file}.unknown", file=sys.stderr)
        for m in args.message:
            turn = agent.new_turn(m)
            tell_pinned(agent, turn, args.pending_file,
                        lambda r: print(f"> {m}\n{r!r}", flush=True))
        info = agent.session.get()
        print(f"[session {info.session_id}: position {info.position}, "
              f"version {info.version}; sent {agent.bytes_sent} bytes]",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
