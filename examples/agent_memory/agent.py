#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""An agent whose memory is a statestream session.

Each turn appends only the new message to the session and generates the
reply with a committing Generate: the conversation lives in the model's
recurrent state, checkpointed by the server. The agent can stop at any time;
later (another process, after a server restart, on another worker) it
reopens the session by id and carries on without re-sending any history.

    python3 agent.py --target 127.0.0.1:7700 --session my-agent "Hi, I'm Ada."
    python3 agent.py --target 127.0.0.1:7700 --session my-agent "Who am I?"

(With `statestream serve`'s built-in demo model the replies are noise; the
mechanics are the point. Use --model with a real RWKV checkpoint for words.)
"""
import argparse
import sys

from statestream import Client, StatestreamError


class Agent:
    def __init__(self, client: Client, session_id: str, seed: int = 1):
        self.client = client
        self.session = client.session(session_id)
        self.seed = seed
        self.bytes_sent = 0  # what this process sent: only new messages
        try:
            self.session.get()
        except StatestreamError as e:
            if e.reason != "SESSION_NOT_FOUND":
                raise
            client.create_session(session_id)

    def tell(self, message: str, max_tokens: int = 48) -> str:
        prompt = f"User: {message}\n\nAssistant:"
        self.bytes_sent += len(prompt.encode())
        result = self.session.generate_text(
            prompt, max_tokens=max_tokens, temperature=1.0, seed=self.seed,
            stop=["\n\n"], commit=True)
        return result.text


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", default="127.0.0.1:7700")
    p.add_argument("--session", default="agent")
    p.add_argument("message", nargs="+")
    args = p.parse_args()
    with Client(args.target) as client:
        agent = Agent(client, args.session)
        for m in args.message:
            print(f"> {m}\n{agent.tell(m)!r}")
        info = agent.session.get()
        print(f"[session {info.session_id}: position {info.position}, "
              f"version {info.version}; sent {agent.bytes_sent} bytes]",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
