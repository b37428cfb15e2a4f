# SPDX-License-Identifier: Apache-2.0
"""The agent stops, the server is killed and restarted ("days later, on
another worker"), and the agent resumes with its memory intact: the same
state as an agent that never stopped, and no history re-sent."""
import os
import subprocess
import sys

from agent import Agent
from statestream import Client
from statestream.testing import ServeProcess

HERE = os.path.dirname(os.path.abspath(__file__))


def test_agent_resumes_after_restart(tmp_path):
    with ServeProcess(data_dir=str(tmp_path / "data")) as server:
        with Client(server.address) as c:
            day1 = Agent(c, "ada")
            day1.tell("Hi, I am Ada and I like tea.")
            day1.tell("Remember: the code word is heliotrope.")
            # A twin that never stops, to compare against.
            twin = c.session("ada").fork(new_id="twin")
            before = c.session("ada").get()

        server.kill_and_restart()  # days later; a fresh worker process

        with Client(server.address, max_attempts=20) as c:
            after = c.session("ada").get()
            assert (after.position, after.version) == (before.position,
                                                       before.version)
            day2 = Agent(c, "ada")
            reply = day2.tell("What is the code word?")
            # Only the new message went over the wire.
            assert day2.bytes_sent == len(
                "User: What is the code word?\n\nAssistant:")
            twin_reply = Agent(c, twin.id).tell("What is the code word?")
            assert reply == twin_reply
            assert (c.session("ada").score("heliotrope").sum_logprob ==
                    c.session(twin.id).score("heliotrope").sum_logprob)


def test_cli_runs(tmp_path):
    with ServeProcess(data_dir=str(tmp_path / "data")) as server:
        out = subprocess.run(
            [sys.executable, os.path.join(HERE, "agent.py"), "--target",
             server.address, "--session", "cli", "hello", "again"],
            capture_output=True, text=True, timeout=120, check=True)
        assert out.stdout.count("> ") == 2
        assert "session cli" in out.stderr
