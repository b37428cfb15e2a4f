# SPDX-License-Identifier: Apache-2.0
"""The bounds of an ExportState or ImportState attempt (internal).

A transfer moves a whole state, so its length grows with the state and the
link; one message (a 1 MiB chunk) does not. An attempt therefore ends once
the client's `timeout` passes without a message sent or received (a stall),
and an import attempt also within `timeout` per chunk, plus two: after its
last write, its last chunks may wait in the connection's buffers for longer
than `timeout`. The C++ SDK does the same (sdk/cpp/statestream/call_scope.h,
StallGuard).
"""
from __future__ import annotations

import asyncio
import threading
import time
from typing import Optional

import grpc

from statestream.errors import StatestreamError
from statestream.streams import _UNBOUNDED_S


def _stalled_error(idle: float) -> StatestreamError:
    """DEADLINE_EXCEEDED (retried): the attempt went `idle` seconds without
    moving a message."""
    return StatestreamError(
        grpc.StatusCode.DEADLINE_EXCEEDED,
        f"no progress for {idle:g}s (the client's timeout)")


def _import_budget(timeout: Optional[float], header,
                   blob: bytes) -> Optional[float]:
    """An import attempt's bound: `timeout` per chunk of `blob`, plus two
    (the header, and the answer); None without a timeout, or past what
    gRPC takes as a deadline (streams._UNBOUNDED_S)."""
    if timeout is None:
        return None
    size = header.state.chunk_bytes or (1 << 20)
    budget = timeout * ((len(blob) + size - 1) // size + 2)
    return None if budget > _UNBOUNDED_S else budget


def _cap(t: Optional[float], budget: Optional[float]) -> Optional[float]:
    """The smaller bound; None is no bound."""
    if budget is None:
        return t
    return budget if t is None else min(t, budget)


class _StallGuard:
    """Cancels the call attached to it once `idle` seconds pass without
    progress() while armed (a thread per attempt: transfers are few, and
    each moves megabytes). No watch when `idle` is None. `stalled` only
    when the cancel ended a call still running (one that had ended keeps
    its own outcome)."""

    def __init__(self, idle: Optional[float]):
        self.idle = idle
        self.stalled = False
        self._fired = False
        self._call = None
        self._done = idle is None
        self._due = time.monotonic() + (idle or 0)
        self._cond = threading.Condition()
        self._thread = None
        if idle is not None:
            self._thread = threading.Thread(target=self._watch, daemon=True,
                                            name="statestream-stall-guard")
            self._thread.start()

    def attach(self, call) -> None:
        """The call to cancel (one with cancel()); at once if already
        stalled."""
        with self._cond:
            self._call = call
            fired = self._fired
        if fired:
            self.stalled = call.cancel()

    def progress(self) -> None:
        """A message went out or came in: `idle` again from now."""
        with self._cond:
            self._due = time.monotonic() + (self.idle or 0)

    def disarm(self) -> None:
        """Stops watching: the rest is bounded by the attempt's timeout."""
        with self._cond:
            self._done = True
            self._cond.notify_all()

    def close(self) -> None:
        self.disarm()
        if self._thread is not None:
            self._thread.join()

    def _watch(self) -> None:
        with self._cond:
            while not self._done:
                left = self._due - time.monotonic()
                if left <= 0:
                    self._fired = True
                    call = self._call
                    break
                self._cond.wait(left)
            else:
                return
        if call is not None:
            self.stalled = call.cancel()


class _AsyncStallGuard:
    """As _StallGuard, on the event loop: a task per attempt."""

    def __init__(self, idle: Optional[float]):
        self.idle = idle
        self.stalled = False
        self._fired = False
        self._call = None
        self._due = time.monotonic() + (idle or 0)
        self._task = None
        if idle is not None:
            self._task = asyncio.get_running_loop().create_task(
                self._watch())

    def attach(self, call) -> None:
        self._call = call
        if self._fired:
            self.stalled = call.cancel()

    def progress(self) -> None:
        self._due = time.monotonic() + (self.idle or 0)

    def disarm(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    close = disarm

    async def _watch(self) -> None:
        while True:
            left = self._due - time.monotonic()
            if left <= 0:
                break
            await asyncio.sleep(left)
        self._fired = True
        if self._call is not None:
            self.stalled = self._call.cancel()
