# SPDX-License-Identifier: Apache-2.0
"""The agent stops, the server is killed and restarted ("days later, on
another worker"), and the agent resumes with its memory intact: the same
state as an agent that never stopped, and no history re-sent. A turn
retried after a restart is not applied twice."""
import os
import subprocess
import sys

import pytest

from agent import Agent, Turn, pin_turn
from statestream import Client, StatestreamError
from statestream.testing import ServeProcess

HERE = os.path.dirname(os.path.abspath(__file__))
QUESTION = "What is the code word?"
PROMPT = f"User: {QUESTION}\n\nAssistant:"


def test_agent_resumes_after_restart(tmp_path):
    with ServeProcess(data_dir=str(tmp_path / "data")) as server:
        with Client(server.address) as c:
            day1 = Agent(c, "ada")
            day1.tell("Hi, I am Ada and I like tea.")
            day1.tell("Remember: the code word is heliotrope.")
            # A twin that never stops, to compare against.
            twin = c.session("ada").fork(new_id="twin")
            before = c.session("ada").get()
            # What day 2's turn will answer, recorded on a side branch
            # (commit=False) before the kill.
            expected = c.session("ada").generate_text(
                PROMPT, max_tokens=48, temperature=1.0, seed=day1.seed,
                stop=["\n\n"]).text
            assert c.session("ada").get() == before

        server.kill_and_restart()  # days later; a fresh worker process

        with Client(server.address, max_attempts=20) as c:
            after = c.session("ada").get()
            assert (after.position, after.version) == (before.position,
                                                       before.version)
            day2 = Agent(c, "ada")  # the session exists: reopened
            turn = day2.new_turn(QUESTION)
            assert turn.input_offset == before.input_offset
            reply = day2.tell(turn)
            assert reply == expected
            # Only the new message went over the wire.
            assert day2.bytes_sent == len(PROMPT)
            twin_reply = Agent(c, twin.id).tell(QUESTION)
            assert reply == twin_reply
            assert (c.session("ada").score("heliotrope").sum_logprob ==
                    c.session(twin.id).score("heliotrope").sum_logprob)
            answered = c.session("ada").get()

        server.kill_and_restart()  # the caller did not see the reply

        with Client(server.address, max_attempts=20) as c:
            # Retrying the same turn replays the committed reply.
            assert Agent(c, "ada").tell(turn) == reply
            again = c.session("ada").get()
            assert (again.input_offset, again.version) == (
                answered.input_offset, answered.version)
            # A new request at the old offset is refused, not applied.
            with pytest.raises(StatestreamError) as e:
                Agent(c, "ada").tell(Turn(
                    QUESTION, "another-id", turn.input_offset))
            assert e.value.reason == "POSITION_MISMATCH"


def test_cli_runs(tmp_path):
    with ServeProcess(data_dir=str(tmp_path / "data")) as server:
        out = subprocess.run(
            [sys.executable, os.path.join(HERE, "agent.py"), "--target",
             server.address, "--session", "cli", "hello", "again"],
            capture_output=True, text=True, timeout=120, check=True)
        assert out.stdout.count("> ") == 2
        assert "session cli" in out.stderr


def test_cli_retries_its_pinned_turn_once(tmp_path):
    """A run that died after the server answered its turn but before it
    printed the reply left the turn pinned: the next run replays that reply
    (nothing applied twice), removes the pin and goes on."""
    pending = str(tmp_path / "ada.turn.json")
    with ServeProcess(data_dir=str(tmp_path / "data")) as server:
        with Client(server.address) as c:
            agent = Agent(c, "ada")
            turn = agent.new_turn(QUESTION)
            pin_turn(pending, turn)
            reply = agent.tell(turn)  # answered; the "crash" is here
            answered = c.session("ada").get()
        run = [sys.executable, os.path.join(HERE, "agent.py"), "--target",
               server.address, "--session", "ada", "--pending-file", pending]
        out = subprocess.run(run, capture_output=True, text=True,
                             timeout=120, check=True)
        assert out.stdout == f"> {QUESTION} (retried)\n{reply!r}\n"
        assert not os.path.exists(pending)
        with Client(server.address) as c:
            again = c.session("ada").get()
            assert (again.input_offset, again.version) == (
                answered.input_offset, answered.version)
        # A new message after it is one more turn, pinned while it runs.
        out = subprocess.run(run + ["next"], capture_output=True, text=True,
                             timeout=120, check=True)
        assert out.stdout.startswith("> next\n")
        assert not os.path.exists(pending)
        with Client(server.address) as c:
            assert c.session("ada").get().input_offset > answered.input_offset


def test_cli_refuses_a_turn_pinned_for_another_session(tmp_path):
    """A pinned turn names its session: run with another --session it is
    refused (exit 2), the file kept, and nothing sent, where it was
    applied to that session when its offset matched."""
    pending = str(tmp_path / "turn.json")
    with ServeProcess(data_dir=str(tmp_path / "data")) as server:
        with Client(server.address) as c:
            pin_turn(pending, Agent(c, "a").new_turn(QUESTION))
            Agent(c, "b")
        out = subprocess.run(
            [sys.executable, os.path.join(HERE, "agent.py"), "--target",
             server.address, "--session", "b", "--pending-file", pending],
            capture_output=True, text=True, timeout=120)
        assert out.returncode == 2, out.stderr
        assert "'a'" in out.stderr
        assert os.path.exists(pending)
        with Client(server.address) as c:
            assert c.session("b").get().input_offset == 0


def test_cli_sets_aside_a_turn_whose_outcome_is_unknown(tmp_path):
    """A pinned turn the server refuses with POSITION_MISMATCH (the
    session moved on) is moved aside and said so, and the run goes on with
    its new message; it failed every run before sending anything."""
    pending = str(tmp_path / "turn.json")
    with ServeProcess(data_dir=str(tmp_path / "data")) as server:
        with Client(server.address) as c:
            Agent(c, "moved")  # creates the session
            pin_turn(pending, Turn(QUESTION, "r-stale", 999, "moved"))
        out = subprocess.run(
            [sys.executable, os.path.join(HERE, "agent.py"), "--target",
             server.address, "--session", "moved", "--pending-file", pending,
             "next"],
            capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert "outcome unknown" in out.stderr
        assert out.stdout.startswith("> next\n")
        assert not os.path.exists(pending)
        assert os.path.exists(pending + ".unknown")
        with Client(server.address) as c:
            assert c.session("moved").get().input_offset > 0
