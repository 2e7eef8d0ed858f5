"""The one background thread per process: re-probes, failback probes, write-behind.

Selections register when they first serve a request (never at import). The
thread calls each registered selection's ``_tick()``, which does the work due
now without blocking (probes run in their own threads) and returns when it is
next due (unix time of the library's clock); the thread sleeps until the
earliest such time or until :meth:`Worker.wake`. It is a daemon thread, so it
never keeps the interpreter alive; pending writes are flushed at exit. A
forked child starts its own thread lazily (``generation`` changes in the
child, so each selection registers again on its next request).
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
import weakref
from typing import Optional, Protocol

from . import _runtime

log = logging.getLogger("requests_failover")

#: Longest sleep between two passes (seconds), whatever is due.
IDLE_WAIT = 30.0
#: In testing mode with a test clock, the thread looks at that clock this often (real seconds).
TEST_POLL = 0.005
#: At interpreter exit, how long (seconds) to wait for the thread and probes in flight to end:
#: a daemon thread still running while the interpreter finalizes can crash it.
EXIT_WAIT = 1.0


class Client(Protocol):
    def _tick(self) -> Optional[float]: ...

    def _flush(self) -> None: ...

    def _stop(self, deadline: float) -> None: ...


class Worker:
    def __init__(self) -> None:
        self._reset()
        _runtime.reset_after_fork(self)
        atexit.register(self._at_exit)
        self.generation = 0

    def _reset(self) -> None:
        self._cond = threading.Condition()
        self._clients: weakref.WeakSet[Client] = weakref.WeakSet()
        self._thread: Optional[threading.Thread] = None
        self._woken = False
        self._stopping = False
        self.passes = 0  # passes over the selections completed (testing.settle waits on it)

    def _after_fork(self) -> None:
        clients = list(self._clients)
        self._reset()
        self._clients.update(clients)  # they stay registered; the thread starts on the next wake
        self.generation += 1

    def add(self, client: Client) -> None:
        with self._cond:
            self._clients.add(client)
            self._start()
            self._woken = True
            self._cond.notify()

    def remove(self, client: Client) -> None:
        with self._cond:
            self._clients.discard(client)

    def wake(self) -> None:
        """Run a pass now (a write to flush, a probe result to act on)."""
        with self._cond:
            if len(self._clients):
                self._start()
            self._woken = True
            self._cond.notify()

    def _start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="requests-failover", daemon=True)
        self._thread.start()
        # multiprocessing children end with os._exit(), after its own exit
        # hooks but without atexit's: flush there too (per process)
        import multiprocessing.util

        multiprocessing.util.Finalize(self, self._at_exit, exitpriority=10)

    def _pass(self) -> float:
        """One pass over the registered selections (each does what is due); the earliest next due time."""
        with self._cond:
            clients = list(self._clients)
            self._woken = False
        due = float("inf")
        for client in clients:
            try:
                next_due = client._tick()
            except Exception:  # the thread must outlive any one failure
                log.exception("background work failed")
                continue
            if next_due is not None:
                due = min(due, next_due)
        self.passes += 1
        return due  # the references to the selections end with this frame

    def _run(self) -> None:
        while not self._stopping:
            due = self._pass()
            with self._cond:
                if self._woken or self._stopping:
                    continue
                wait = min(IDLE_WAIT, max(0.0, due - _runtime.now()))
                if _runtime.custom_clock():
                    wait = min(wait, TEST_POLL)  # a test clock moves without notice
                self._cond.wait(wait)

    def _at_exit(self) -> None:
        """Write what is pending, then stop: the thread and the probes in flight end (bounded)."""
        deadline = time.monotonic() + EXIT_WAIT
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        for client in list(self._clients):
            try:
                client._flush()
                client._stop(deadline)
            except Exception:  # pragma: no cover - nothing to report to at exit
                pass
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, deadline - time.monotonic()))


WORKER = Worker()
