# SPDX-License-Identifier: Apache-2.0
"""A real `statestream serve` process for tests and examples.

    with ServeProcess(binary, data_dir=tmp) as server:
        client = Client(server.address)
        ...
        server.kill_and_restart()   # SIGKILL, then a new process, same port

The process is killed (SIGKILL) on exit in every path."""
from __future__ import annotations

import os
import re
import signal
import subprocess
from typing import List, Optional


class ServeProcess:
    def __init__(self, binary: Optional[str] = None,
                 data_dir: Optional[str] = None, extra_args: List[str] = ()):
        self.binary = binary or os.environ.get("STATESTREAM_BIN", "statestream")
        self.data_dir = data_dir
        self.extra_args = list(extra_args)
        self.port = 0
        self._proc: Optional[subprocess.Popen] = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "ServeProcess":
        args = [self.binary, "serve", f"--listen=127.0.0.1:{self.port}"]
        if self.data_dir:
            args.append(f"--data-dir={self.data_dir}")
        self._proc = subprocess.Popen(args + self.extra_args,
                                      stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, text=True)
        line = self._proc.stdout.readline()
        m = re.fullmatch(r"listening on (\S+):(\d+)\n?", line)
        if not m:
            self.kill()
            raise RuntimeError(f"serve did not start: {line!r}")
        self.port = int(m.group(2))
        return self

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
        if self._proc is not None:
            self._proc.wait()
            self._proc.stdout.close()
        self._proc = None

    def kill_and_restart(self) -> None:
        self.kill()
        self.start()

    def __enter__(self) -> "ServeProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()
