"""Racing a slow connect against the next backend's (Happy Eyeballs, RFC 8305, for backends).

When an attempt needs a *new* connection and the connect to its backend has
not completed within the hedge delay, a connect to the next backend of the
request's plan starts in parallel. The request is then written to whichever
connection completes first, and only to that one: no request is ever sent
twice, so racing is safe for every method, POST included::

    request thread         connect A (thread)           connect B (thread)
    ─────────────┐         ──────────────────────
    new conn to A ├──────▶  SYN ...                     (not started)
    wait delay    │         ... no answer
    delay over    ├─────────────────────────────────▶  SYN / SYN-ACK: done
    winner = B ◀──┤◀──────────────────────────────────  conn → B's pool
    send to B     │         ... times out: A marked down (or, if it connects
                            late, its connection goes to A's pool, warm)

The delay is a floor (``hedge_delay``, default 0.25 s) that adapts to the
backend's recent connect times, as RFC 8305's connection attempt delay does::

    delay = max(hedge_delay, min(2.0, 3 * p90(last 16 connect times)))

so a far-away backend whose TLS handshake takes 600 ms is not raced on every
new connection. A pooled keep-alive connection is used as before: no race,
no thread. Only a new connection costs one thread for its connect.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from urllib3.util.connection import is_connection_dropped

#: The longest delay, whatever the recent connect times (RFC 8305 suggests 2 s).
MAX_DELAY = 2.0
_HISTORY = 16


class ConnectTimes:
    """Recent successful connect times per backend (seconds), for the adaptive delay."""

    def __init__(self) -> None:
        self._times: Dict[str, Deque[float]] = {}
        self._lock = threading.Lock()

    def add(self, backend: str, seconds: float) -> None:
        with self._lock:
            self._times.setdefault(backend, collections.deque(maxlen=_HISTORY)).append(seconds)

    def delay(self, backend: str, floor: float) -> float:
        with self._lock:
            recent = sorted(self._times.get(backend, ()))
        if not recent:
            return floor
        p90 = recent[min(len(recent) - 1, int(len(recent) * 0.9))]
        return max(floor, min(MAX_DELAY, 3.0 * p90))


def has_idle_connection(pool: Any) -> bool:
    """Whether ``pool`` holds a pooled connection that is still open (advisory)."""
    queue = getattr(getattr(pool, "pool", None), "queue", None)
    if queue is None:
        return False
    for conn in list(queue):
        if conn is not None and getattr(conn, "sock", None) is not None:
            try:
                if not is_connection_dropped(conn):
                    return True
            except Exception:  # an unusual connection class: assume it is usable
                return True
    return False


class Candidate:
    """One side of a race: a backend, its pool, and what its connect did."""

    def __init__(self, name: str, pool: Any) -> None:
        self.name = name
        self.pool = pool
        self.error: Optional[BaseException] = None
        self.done = False
        self.reported = False  # its failure was recorded already


class Race:
    """Connects racing for one attempt; the first to connect wins, the others go to their pools.

    ``on_lost_failure(name, error)`` is called (from a connect thread) when a
    backend that did not win fails to connect: it is marked down as any
    failed connect is. A backend that merely lost (connected later) is not.
    """

    def __init__(
        self,
        connect_timeout: Optional[float],
        times: ConnectTimes,
        on_lost_failure: Callable[[str, BaseException], None],
    ) -> None:
        self._timeout = connect_timeout
        self._times = times
        self._on_lost_failure = on_lost_failure
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._candidates: List[Candidate] = []
        self.winner: Optional[Candidate] = None

    def start(self, name: str, pool: Any) -> Candidate:
        candidate = Candidate(name, pool)
        with self._lock:
            self._candidates.append(candidate)
        threading.Thread(target=self._connect, args=(candidate,), name="requests-failover-connect", daemon=True).start()
        return candidate

    def _connect(self, candidate: Candidate) -> None:
        # Take a slot of the pool (its queue is pre-filled with placeholders):
        # a connection put back without one is discarded as "pool is full".
        pool = candidate.pool
        conn = pool._get_conn()
        conn.timeout = self._timeout
        started = time.monotonic()
        try:
            if getattr(conn, "sock", None) is None:
                conn.connect()
        except BaseException as exc:  # reported to the waiting request or as a lost failure
            conn.close()
            pool._put_conn(None)  # the slot goes back, as urllib3 does after a failed connect
            with self._changed:
                candidate.error, candidate.done = exc, True
                lost = candidate.reported = self.winner is not None
                self._changed.notify_all()
            if lost:
                self._on_lost_failure(candidate.name, exc)
            return
        self._times.add(candidate.name, time.monotonic() - started)
        pool._put_conn(conn)  # warm: the winner's request takes it (LIFO), a loser's waits there
        with self._changed:
            candidate.done = True
            if self.winner is None:
                self.winner = candidate
            self._changed.notify_all()

    def wait(self, seconds: Optional[float]) -> Optional[Candidate]:
        """Wait up to ``seconds`` (None: until decided) for a winner; None if none yet or all failed."""
        deadline = None if seconds is None else time.monotonic() + seconds
        with self._changed:
            while self.winner is None and not all(c.done for c in self._candidates):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._changed.wait(left)
            if self.winner is None and all(c.done for c in self._candidates):
                self.winner = Candidate("", None)  # decided: nobody won
            return self.winner if self.winner is not None and self.winner.name else None

    def settled(self) -> bool:
        """Every connect ended and none succeeded."""
        with self._lock:
            return self.winner is not None and not self.winner.name

    def adopt(self, name: str) -> None:
        """``name`` wins without a connect (it has a keep-alive connection)."""
        with self._changed:
            if self.winner is None:
                self.winner = Candidate(name, None)
            self._changed.notify_all()

    def take_errors(self) -> List[Tuple[str, BaseException]]:
        """Failed connects not recorded yet (a failure after a winner is recorded by its thread)."""
        with self._lock:
            if self.winner is None:
                self.winner = Candidate("", None)  # decided now: later failures are "lost" ones
            taken = [c for c in self._candidates if c.error is not None and not c.reported]
            for candidate in taken:
                candidate.reported = True
            return [(c.name, c.error) for c in taken if c.error is not None]
