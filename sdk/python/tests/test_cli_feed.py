# SPDX-License-Identifier: Apache-2.0
"""`statestream feed` resumes after the server is killed (SIGKILL) and
restarted mid-stream: nothing lost, nothing applied twice."""
import json
import os
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
