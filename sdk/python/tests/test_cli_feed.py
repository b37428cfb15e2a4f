# SPDX-License-Identifier: Apache-2.0
"""`statestream feed` and `chat` against a real `serve`: feed resumes
after the server is killed (SIGKILL) and restarted mid-stream (nothing
lost, nothing applied twice), checks its input as UTF-8 before sending it,
resumes a session left inside a character, and commits what it sent at a
Ctrl-C; chat makes no session for input without a message."""
import json
import os
import signal
import subprocess
import time


def test_feed_resumes_after_kill9(server, client):
    binary = os.environ["STATESTREAM_BIN"]
    client.create_session("fed")
    client.create_session("ref")
    chunk = 1000
    data = b"".join(b"%05d the quick brown fox\n" % i for i in range(4000))
    half = (len(data) // 2) // chunk * chunk
    feed = subprocess.Popen(
        [binary, "feed", "--session=fed", f"--chunk-bytes={chunk}",
         f"--target={server.address}", "--json", "-"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        feed.stdin.write(data[:half])
        feed.stdin.flush()
        # Wait (no time limit asserted) until the server has applied it.
        while client.session("fed").get().input_offset < half:
            time.sleep(0.05)
        server.kill_and_restart()  # the applied half was never committed
        out, err = feed.communicate(input=data[half:], timeout=300)
    finally:
        if feed.poll() is None:
            feed.kill()
            feed.wait()
    assert feed.returncode == 0, err
    summary = json.loads(out.decode().strip().splitlines()[-1])
    assert summary["bytes"] == str(len(data))  # 64-bit: a JSON string
    assert summary["reconnects"] >= 1  # it did resume
    client.session("ref").append(data)
    a, b = client.session("fed").get(), client.session("ref").get()
    assert (a.input_offset, a.position) == (b.input_offset, b.position)
    assert (client.session("fed").score("x").sum_logprob ==
            client.session("ref").score("x").sum_logprob)


def _feed(server, session, data, *extra):
    return subprocess.run(
        [os.environ["STATESTREAM_BIN"], "feed", f"--session={session}",
         f"--target={server.address}", *extra, "-"],
        input=data, capture_output=True, timeout=120)


def test_feed_stops_at_input_that_is_not_utf8(server, client):
    # The input is checked before it is sent: what comes before an
    # ill-formed byte is appended and committed, and a rerun of the fixed
    # input with --start-offset appends the rest once.
    client.create_session("bad-byte")
    good = "é quick brown fox. ".encode() * 200
    out = _feed(server, "bad-byte", good + b"\xff" + b"tail",
                "--chunk-bytes=512")
    assert out.returncode == 1
    err = out.stderr.decode()
    assert "not valid UTF-8 at byte %d" % len(good) in err, err
    assert "[INVALID_UTF8]" in err and "--start-offset=0" in err, err
    s = client.session("bad-byte").get()
    assert s.committed_input_offset == s.input_offset == len(good)
    fixed = good + b"?tail"
    assert _feed(server, "bad-byte", fixed,
                 "--start-offset=0").returncode == 0
    assert client.session("bad-byte").get().input_offset == len(fixed)


def test_feed_of_input_that_ends_inside_a_character_leaves_a_usable_session(
        server, client):
    # The half character is never sent: a session holding it pending would
    # refuse every later text that does not complete it.
    client.create_session("half-char")
    out = _feed(server, "half-char", b"ok \xe2\x82")
    assert out.returncode == 1
    assert b"ends inside a UTF-8 character at byte 3" in out.stderr
    assert client.session("half-char").get().committed_input_offset == 3
    assert _feed(server, "half-char", "next €".encode()).returncode == 0
    assert client.session("half-char").get().input_offset == 3 + len(
        "next €".encode())


def test_chat_makes_no_session_for_input_without_a_message(server, client):
    # The session is created at the first message: input with none, or
    # whose first line is not UTF-8, leaves no orphan session behind.
    before = len(list(client.list_sessions()))
    for stdin, code in ((b"", 0), (b"\n\n", 0), (b"\xff\n", 2)):
        out = subprocess.run(
            [os.environ["STATESTREAM_BIN"], "chat",
             f"--target={server.address}", "--max-tokens=4"],
            input=stdin, capture_output=True, timeout=60)
        assert out.returncode == code, out.stderr
    assert len(list(client.list_sessions())) == before
    out = subprocess.run(
        [os.environ["STATESTREAM_BIN"], "chat", f"--target={server.address}",
         "--max-tokens=4"], input=b"hello\n", capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert len(list(client.list_sessions())) == before + 1


def test_feed_resumes_a_session_that_stopped_inside_a_character(server,
                                                                 client):
    # A run can stop with the session holding the start of a character (the
    # writer splits long text anywhere): the rerun's first bytes continue
    # it, and are taken as such, not refused as ill-formed.
    client.create_session("mid-char")
    data = "ab€cd".encode()
    client.session("mid-char").append(data[:4], flush=False)  # "ab" + 2/3
    out = _feed(server, "mid-char", data, "--start-offset=0", "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout.decode().strip().splitlines()[-1])
    assert summary["skipped"] == "4" and summary["bytes"] == "3"
    s = client.session("mid-char").get()
    assert s.input_offset == s.committed_input_offset == len(data)


def test_ctrl_c_commits_what_feed_sent_and_says_where_it_stopped(server,
                                                                 client):
    client.create_session("ctrl-c")
    feed = subprocess.Popen(
        [os.environ["STATESTREAM_BIN"], "feed", "--session=ctrl-c",
         f"--target={server.address}", "--json", "--chunk-bytes=1000", "-"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        feed.stdin.write(b"x" * 5000)
        feed.stdin.flush()
        # Wait (no time limit asserted) until the server has applied it;
        # the input stays open, so feed is blocked reading more.
        while client.session("ctrl-c").get().input_offset < 5000:
            time.sleep(0.05)
        feed.send_signal(signal.SIGINT)
        out, err = feed.communicate(timeout=60)
    finally:
        if feed.poll() is None:
            feed.kill()
            feed.wait()
    assert feed.returncode == 130, err
    summary = json.loads(out.decode().strip().splitlines()[-1])
    assert summary["interrupted"] is True
    assert summary["input_offset"] == "5000"
    assert b"rerun with --start-offset=0" in err
    s = client.session("ctrl-c").get()
    assert s.committed_input_offset == s.input_offset == 5000
