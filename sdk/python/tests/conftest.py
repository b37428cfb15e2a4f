# SPDX-License-Identifier: Apache-2.0
import os

import pytest

from fake_server import FakeServer
from statestream import Client
from statestream.testing import ServeProcess

# Servers commit only when asked, so a kill always loses applied input the
# SDK must resend.
NO_POLICY = ["--checkpoint-tokens=100000000", "--checkpoint-interval=10000h"]


@pytest.fixture
def server(tmp_path):
    with ServeProcess(os.environ.get("STATESTREAM_BIN"),
                      data_dir=str(tmp_path / "data"),
                      extra_args=NO_POLICY) as s:
        yield s


@pytest.fixture
def client(server):
    # A fixed HTTP/2 window: a long Generate cannot finish ahead of its
    # reader, so a kill always lands mid-stream.
    with Client(server.address, max_attempts=40, max_backoff=0.5,
                options=[("grpc.http2.bdp_probe", 0)]) as c:
        yield c


@pytest.fixture
def fake():
    """The fault-injecting fake server (fake_server.py)."""
    f = FakeServer()
    yield f
    f.server.stop(None)
