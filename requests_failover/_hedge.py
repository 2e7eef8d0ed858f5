"""Two hedges against a slow backend: racing a slow connect, and hedging a slow answer.

Racing a connect (Happy Eyeballs, RFC 8305, for backends)
---------------------------------------------------------

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

After a race the first backend lost, that backend is *suspect* until its
pending connect settles (connects late: its connection waits warm in its
pool; fails: the backend is marked down): new connections of other requests
go to the rival at once instead of each paying the hedge delay again
(:class:`Suspects`).

Hedging an answer (backup requests, as Finagle's and "The Tail at Scale")
-------------------------------------------------------------------------
A request that may be sent twice (GET, HEAD, OPTIONS, or one carrying an
``Idempotency-Key``; never another method) whose answer is later than its
backend's recent latency percentile is sent to the next backend too; the
first complete answer wins and the other is abandoned: its response, when
it comes, is closed with its connection (never returned to the pool
half-read). The delay adapts, with a floor::

    delay = max(0.05, min(2.0, p95(last 64 answer times of the backend)))

(recomputed after each of the first ``MIN_SAMPLES`` answers, then every 16th).

Waiting for an answer with a time limit needs the request on another
thread, which costs CPU and latency on every request. So hedging is *armed*
for a backend only while it needs it: for ``ARMED_FOR`` answers after a
clearly slow one (later than twice the delay, once ``MIN_SAMPLES`` answers
make a history), a read timeout or a lost hedge, and while a backend has
no history yet (a process's first answers from it), with the longer
``COLD_DELAY``: a cold start that meets a hung or slow API waits half a
second, not a read timeout, while a cold start's new connections and TLS
handshakes are far under it. A backend that answers fast is sent to on the
caller's thread, as with no hedging at all. The percentile is of answers only: a timeout or an abandoned
attempt arms hedging but does not stretch its delay. An armed attempt runs on a small pool of reusable worker
threads (:class:`Workers`) while the caller waits. The extra load is bounded
by the retry budget (:class:`._retry.RetryBudget`: about 5 % of requests).
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Set, Tuple

from ._urllib3 import has_idle_connection, put_conn, take_conn

__all__ = ["ConnectTimes", "Flight", "Latencies", "Race", "Suspects", "Workers", "has_idle_connection"]

#: The longest delay, whatever the recent connect or answer times (RFC 8305 suggests 2 s).
MAX_DELAY = 2.0
_HISTORY = 16
#: The shortest delay before a slow answer is hedged (seconds), whatever the latencies.
ANSWER_FLOOR = 0.05
#: The answer-time percentile a hedge waits for.
ANSWER_PERCENTILE = 0.95
#: Answers a backend gives before its latency history counts (hedging is armed until then).
MIN_SAMPLES = 8
#: Seconds a backend with no history yet (fewer than ``MIN_SAMPLES`` answers) is waited for before a hedge.
COLD_DELAY = 0.5
#: Answers during which hedging stays armed after a slow one.
ARMED_FOR = 64
_ANSWERS = 64


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
        conn = take_conn(pool)
        conn.timeout = self._timeout
        started = time.monotonic()
        try:
            if getattr(conn, "sock", None) is None:
                conn.connect()
        except BaseException as exc:  # reported to the waiting request or as a lost failure
            conn.close()
            put_conn(pool, None)  # the slot goes back, as urllib3 does after a failed connect
            with self._changed:
                candidate.error, candidate.done = exc, True
                lost = candidate.reported = self.winner is not None
                self._changed.notify_all()
            if lost:
                self._on_lost_failure(candidate.name, exc)
            return
        self._times.add(candidate.name, time.monotonic() - started)
        put_conn(pool, conn)  # warm: the winner's request takes it (LIFO), a loser's waits there
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


class Suspects:
    """Backends whose connect lost a race and is still pending: new connections go elsewhere first.

    Reading is lock-free (one dict lookup and a flag): it runs for every new
    connection of every request.
    """

    def __init__(self) -> None:
        self._pending: Dict[str, Candidate] = {}

    def add(self, name: str, candidate: Candidate) -> None:
        self._pending[name] = candidate

    def __contains__(self, name: str) -> bool:
        candidate = self._pending.get(name)
        if candidate is None:
            return False
        if candidate.done:
            self._pending.pop(name, None)
            return False
        return True


class _Answers:
    """One backend's recent answer times and its hedging state."""

    __slots__ = ("armed", "count", "delay", "times")

    def __init__(self) -> None:
        self.times: Deque[float] = collections.deque(maxlen=_ANSWERS)
        self.delay = ANSWER_FLOOR
        self.armed = 0  # answers left during which hedging is armed
        self.count = 0


class Latencies:
    """Recent answer times per backend: the answer hedge delay, and whether hedging is armed.

    :meth:`add` runs once per answer on the request's thread: no lock (a
    deque append and a few integer updates; a lost update under a race of
    two threads only shifts the percentile by one sample).
    """

    def __init__(self) -> None:
        self._answers: Dict[str, _Answers] = {}

    def _of(self, backend: str) -> _Answers:
        answers = self._answers.get(backend)
        if answers is None:
            answers = self._answers.setdefault(backend, _Answers())
        return answers

    def armed(self, backend: str) -> bool:
        """Whether an answer from ``backend`` should be waited for with a hedge ready."""
        answers = self._answers.get(backend)
        return answers is None or answers.count < MIN_SAMPLES or answers.armed > 0

    def delay(self, backend: str) -> float:
        """Seconds to wait for ``backend``'s answer before hedging it (``COLD_DELAY`` with no history)."""
        answers = self._answers.get(backend)
        return COLD_DELAY if answers is None or answers.count < MIN_SAMPLES else answers.delay

    def add(self, backend: str, seconds: float) -> None:
        """``backend`` answered in ``seconds``."""
        answers = self._of(backend)
        answers.times.append(seconds)
        answers.count += 1
        if answers.armed > 0:
            answers.armed -= 1
        if seconds > 2.0 * answers.delay and answers.count > MIN_SAMPLES:
            answers.armed = ARMED_FOR
        if answers.count % _HISTORY == 0 or answers.count <= MIN_SAMPLES:
            answers.delay = _percentile_delay(answers.times)

    def slow(self, backend: str, seconds: float) -> None:
        """``backend`` took at least ``seconds`` (a read timeout, an abandoned answer): arm hedging.

        Not a sample of the percentile: a hedge's delay is about answers.
        """
        self._of(backend).armed = ARMED_FOR


def _percentile_delay(times: Deque[float]) -> float:
    recent = sorted(times)
    if not recent:
        return ANSWER_FLOOR
    value = recent[min(len(recent) - 1, int(len(recent) * ANSWER_PERCENTILE))]
    return max(ANSWER_FLOOR, min(MAX_DELAY, value))


class Workers:
    """A small pool of reusable threads for armed attempts (see the module docstring).

    A job goes to an idle worker, else to a new one while fewer than
    ``limit`` exist; beyond that :meth:`submit` returns False and the caller
    sends on its own thread, unhedged. A worker idle for ``idle`` seconds
    ends, so a process that stopped hedging holds no thread.
    """

    def __init__(self, limit: int = 32, idle: float = 30.0) -> None:
        self._limit = limit
        self._idle_seconds = idle
        self._lock = threading.Lock()
        self._idle: List[queue.SimpleQueue[Optional[Callable[[], None]]]] = []
        self._count = 0
        self._generation = 0  # close() starts a new one: workers of an older one end after their job

    def submit(self, job: Callable[[], None]) -> bool:
        """Run ``job`` on a worker thread; False when every worker is busy and no more may start."""
        with self._lock:
            if self._idle:
                inbox: Optional[queue.SimpleQueue[Optional[Callable[[], None]]]] = self._idle.pop()
            elif self._count < self._limit:
                self._count += 1
                inbox = None
            else:
                return False
        if inbox is not None:
            inbox.put(job)
        else:
            args = (job, self._generation)
            threading.Thread(target=self._work, args=args, name="requests-failover-hedge", daemon=True).start()
        return True

    def _work(self, job: Optional[Callable[[], None]], generation: int) -> None:
        inbox: queue.SimpleQueue[Optional[Callable[[], None]]] = queue.SimpleQueue()
        while job is not None:
            try:
                job()
            except BaseException:  # a job reports its own errors; never lose the worker to one
                pass
            with self._lock:
                if generation != self._generation:  # closed meanwhile: end now, not after the idle wait
                    self._count -= 1
                    return
                self._idle.append(inbox)
            try:
                job = inbox.get(timeout=self._idle_seconds)
            except queue.Empty:
                with self._lock:
                    if inbox in self._idle:
                        self._idle.remove(inbox)
                        self._count -= 1
                        return
                job = inbox.get()  # handed a job just as the wait ended
        with self._lock:
            self._count -= 1

    def close(self) -> None:
        """Let idle workers end now, busy ones as soon as their job ends; a later submit starts new ones."""
        with self._lock:
            idle, self._idle = self._idle, []
            self._generation += 1
        for inbox in idle:
            inbox.put(None)


#: What lands for one attempt: (attempt, answer or None, error or None, seconds since it was sent).
Landed = Tuple[Any, Any, Optional[BaseException], float]


class Flight:
    """The attempts of one hedged exchange, in flight on worker threads; the first to land is waited for.

    An attempt is any hashable token (the dispatcher's ``Attempt``); an answer
    anything with ``close()`` (a ``requests.Response``). Results land in a
    queue (a worker's thread puts, the caller's takes). Once the caller
    decides, an attempt still in flight is given up: its answer, if it comes,
    is closed unread, so its connection is never pooled half-read.
    """

    def __init__(self) -> None:
        self._landed: queue.SimpleQueue[Landed] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.started: Dict[Any, float] = {}
        self._flying: Set[Any] = set()
        self._decided = False

    def start(self, attempt: Any) -> float:
        now = time.monotonic()
        with self._lock:
            self.started[attempt] = now
            self._flying.add(attempt)
        return now

    def cancel(self, attempt: Any) -> None:
        with self._lock:
            self._flying.discard(attempt)
            self.started.pop(attempt, None)

    @property
    def in_flight(self) -> bool:
        return bool(self._flying) or not self._landed.empty()

    def land(self, attempt: Any, response: Any, error: Optional[BaseException], took: float) -> None:
        """From a worker: ``attempt`` ended. After the decision its answer is closed, never pooled half-read."""
        with self._lock:
            if self._decided:
                if response is not None:
                    response.close()
                return
            if response is None and error is None:
                return  # given up before its answer came (closed already)
            self._landed.put((attempt, response, error, took))  # under the lock: decide() sees it or closes it

    def given_up(self, attempt: Any) -> bool:
        return self._decided

    def wait(self, seconds: Optional[float]) -> Optional[Landed]:
        """The next attempt to land, waiting up to ``seconds`` (None: until one does); None if none did."""
        try:
            landed = self._landed.get(timeout=seconds)
        except queue.Empty:
            return None
        with self._lock:
            self._flying.discard(landed[0])
        return landed

    def decide(self, winner: Any) -> List[Tuple[Any, float]]:
        """``winner``'s answer is the one: every other attempt is given up; returns them with their wait so far."""
        now = time.monotonic()
        with self._lock:
            self._decided = True
            while not self._landed.empty():  # landed meanwhile: answers never returned, closed
                attempt, response, _, _ = self._landed.get()
                self._flying.discard(attempt)  # it answered: not a loser still waiting
                if response is not None:
                    response.close()
            losers = [(a, now - self.started[a]) for a in self._flying if a != winner]
            self._flying.clear()
        return losers
