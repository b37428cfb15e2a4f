# SPDX-License-Identifier: Apache-2.0
"""A real `statestream serve` process for tests and examples.

    with ServeProcess(binary, data_dir=tmp) as server:
        client = Client(server.address)
        ...
        server.kill_and_restart()   # SIGKILL, then a new process, same port

The process is killed (SIGKILL) on exit in every path."""
from __future__ import annotations

import os
import random
import re
import select
import signal
import socket
import subprocess
import tempfile
import time
from typing import List, Optional, Tuple


def stable_port() -> int:
    """A free loopback port below the kernel's ephemeral range, so that
    kill_and_restart can take it again: an outgoing connection may take a
    port that bind(0) picked while its server is down, never one of these.
    Any free port when the range leaves no room below it."""
    low = 32768
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    candidates = list(range(10000, low)) if low - 10000 >= 1000 else []
    random.SystemRandom().shuffle(candidates)
    for port in candidates[:200] + [0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError("no free loopback port")


class ServeProcess:
    """start() waits up to `start_timeout` seconds for the process's
    `listening on HOST:PORT` line (the lines before it, such as
    --metrics-listen's `metrics on HOST:PORT`, are skipped); a process
    that exits or prints none by then is killed, and start() raises
    RuntimeError with what it printed (stdout and stderr)."""

    def __init__(self, binary: Optional[str] = None,
                 data_dir: Optional[str] = None, extra_args: List[str] = (),
                 start_timeout: float = 60.0):
        self.binary = binary or os.environ.get("STATESTREAM_BIN", "statestream")
        self.data_dir = data_dir
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        self.port = 0
        self._proc: Optional[subprocess.Popen] = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "ServeProcess":
        pick = self.port == 0
        for attempt in range(1, 6):
            if pick:
                self.port = stable_port()
            args = [self.binary, "serve", f"--listen=127.0.0.1:{self.port}"]
            if self.data_dir:
                args.append(f"--data-dir={self.data_dir}")
            with tempfile.TemporaryFile(mode="w+") as stderr:
                self._proc = subprocess.Popen(args + self.extra_args,
                                              stdout=subprocess.PIPE,
                                              stderr=stderr)
                printed, port = self._listening_port()
                if port is not None:
                    self.port = port
                    return self
                self.kill()
                stderr.seek(0)
                err = stderr.read()
            # A picked port taken before serve bound it: pick another.
            if not (pick and attempt < 5 and "cannot listen" in err):
                raise RuntimeError(f"serve did not start: {printed!r} {err}")
        raise AssertionError("unreachable")

    def _listening_port(self) -> Tuple[str, Optional[int]]:
        """Reads the process's stdout up to its `listening on HOST:PORT`
        line: (what it printed, the port); the port is None when the
        process closed its stdout (exited) or start_timeout passed first.
        Reads the pipe itself (select, os.read): a buffered readline
        cannot time out."""
        fd = self._proc.stdout.fileno()
        give_up = time.monotonic() + self.start_timeout
        printed = b""
        while True:
            for line in printed.split(b"\n")[:-1]:
                m = re.fullmatch(rb"listening on (\S+):(\d+)", line)
                if m:
                    return printed.decode(errors="replace"), int(m.group(2))
            left = give_up - time.monotonic()
            if left <= 0:
                return (printed.decode(errors="replace") +
                        f"[no `listening on` within {self.start_timeout} s]",
                        None)
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            data = os.read(fd, 4096)
            if not data:
                return printed.decode(errors="replace"), None
            printed += data

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
