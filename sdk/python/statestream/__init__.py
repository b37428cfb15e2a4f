# SPDX-License-Identifier: Apache-2.0
"""statestream: Python client for the statestream service.

    from statestream import Client
    with Client(["127.0.0.1:7700"]) as client:
        info = client.create_session()
        s = client.session(info.session_id)
        with s.writer() as w:          # exactly-once, resumes after failures
            w.write("Hello, world")
        for chunk in s.generate(max_tokens=32, temperature=0):
            print(chunk.text, end="")

The generated stubs (statestream.v1.*_pb2) are built into the build tree
(build/sdk/python/gen: put it on PYTHONPATH); this package extends its
path to find them there.
"""
from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)  # noqa: F821 (statestream.v1 stubs)

from statestream.errors import StatestreamError  # noqa: E402
from statestream.types import (  # noqa: E402
    AppendAck,
    ExportedState,
    GenerateChunk,
    GenerateDone,
    GenerateResult,
    ScoreResult,
    ScoredToken,
    SessionInfo,
    TokenLogprob,
    TopLogprob,
    VersionInfo,
)
from statestream.client import (  # noqa: E402
    AppendWriter,
    Client,
    GenerateStream,
    Session,
)

__all__ = [
    "AppendAck", "AppendWriter", "Client", "ExportedState", "GenerateChunk",
    "GenerateDone", "GenerateResult", "GenerateStream", "ScoreResult",
    "ScoredToken", "Session", "SessionInfo", "StatestreamError",
    "TokenLogprob", "TopLogprob", "VersionInfo",
]
