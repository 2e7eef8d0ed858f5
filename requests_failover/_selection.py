"""The live selection of one adapter: what the adapter asks, answered by three parts.

The adapter calls one object, :class:`Selection`; behind it each part has one
job: the :class:`.Books` keep the state in memory and in its store
(write-behind, read-your-writes, other processes' changes), the
:class:`.Prober` schedules the probes that keep it fresh, and the
:class:`.Reporter` tells the log, observers and hooks, and builds
``status()``. Here remain the request's own decisions, which need all three:
the order of backends for a request (:meth:`Selection.plan`, with slow start
and demotion trials) and what a request's outcome records (``record_*``,
with this process's latency books).

Thread-safe: updates serialise in the books (never during a request or a
probe), reads are a plain attribute load, and one stale selection is probed
by one thread of one process while everybody else keeps using the stale one.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Tuple

from . import _policy, _runtime
from ._background import WORKER
from ._books import Books
from ._config import Backend, Options
from ._health import Sender
from ._policy import State
from ._prober import CLOSE_WAIT, Prober
from ._report import BackendStatus, Reporter, Status
from .events import DemotionEvent

__all__ = ["SLOW_HEDGE_LOST", "SLOW_READ_TIMEOUT", "BackendStatus", "Selection", "Status"]

log = logging.getLogger("requests_failover")

INF = float("inf")

#: ``record_slow`` reasons: a read timeout demotes at once; a request abandoned
#: because a hedge to another backend answered first is one slow sample.
SLOW_READ_TIMEOUT = "read timeout"
SLOW_HEDGE_LOST = "hedge lost"
#: Seconds after which a trial of a demoted backend that never reported is given up (another one starts).
TRIAL_TIMEOUT = 60.0


class Selection:
    """What the adapter asks of its selection: a plan per request, outcomes recorded, status, close."""

    def __init__(self, options: Options, send: Sender) -> None:
        self._options = options
        self._clock = _runtime.now
        self._by_url: Dict[str, Backend] = {b.url: b for b in options.targets}
        self._reporter = Reporter(options, self._clock)
        self._books = Books(options, self._reporter.announce, self._clock)
        self._prober = Prober(options, send, self._books, self._reporter.observe_probe)
        self._plan_cache: Optional[_Plan] = None
        self._speed = _Speed(tuple(self._by_url))

    # -- reading --------------------------------------------------------------
    def sync(self) -> State:
        """The current state, adopting another process's change if there is one (see :meth:`.Books.sync`)."""
        return self._books.sync()

    def plan(self) -> List[Backend]:
        """The order of backends for one request (cached until the state or the time it depends on changes).

        Demoted backends come after the others (:func:`._policy.ranked_plan`),
        but for one trial request per process once a cool-down is over; while
        the first backend is in its slow start, it comes first only for its
        share of requests (one random draw per request).
        """
        state, now = self._books.state, self._clock()
        cached = self._plan_cache
        if cached is None or cached.state is not state or now >= cached.until or _stepped_back(cached.until, now):
            cached = self._plan_for(self._clamped(state, now), now)
        if cached.other is not None:
            share = _policy.slow_start_share(cached.ramping, now, cached.window)
            if share is not None and self._speed.dice().random() >= share:
                return cached.other
        return cached.order

    def _plan_for(self, state: State, now: float) -> _Plan:
        """Compute the plan of ``state`` at ``now``; cache it unless a trial is due (a per-request choice)."""
        options = self._options
        trial: Optional[str] = None
        due = _policy.trial_due(state, now) if options.demote_slow else None
        if due is not None and self._speed.claim_trial(due, state.record(due).demoted_until, now):
            trial = due
        urls = _policy.ranked_plan(state, now, trial) if options.demote_slow else _policy.plan(state, now)
        order = [self._by_url[url] for url in urls]
        # the plan depends on time only through the down/hold/cool-down times still ahead
        ahead = [t for h in state.health.values() for t in (h.down_until, h.hold_until, h.demoted_until) if t > now]
        first = state.record(urls[0])
        window = options.slow_start * self._speed.dice_jitter()
        other: Optional[List[Backend]] = None
        if trial is None and len(urls) > 1 and _policy.slow_start_share(first, now, window) is not None:
            second = state.record(urls[1])
            if second.available(now) and not (options.demote_slow and second.demoted()):
                other = [order[1], order[0], *order[2:]]
                ahead.append(first.recovered_at + window)
        plan = _Plan(state, min(ahead, default=INF), order, other, first, window)
        if due is None:
            self._plan_cache = plan
        return plan

    def _clamped(self, state: State, now: float) -> State:
        """``state``, its times clamped to the horizon if the clock stepped back (see :func:`_policy.clamp`)."""
        if _policy.clamp(state, now) is state:
            return state
        self._books.update(lambda s: _policy.clamp(s, self._clock()), "the clock stepped back")
        return self._books.state

    # -- freshness: the request path never waits for a probe once anything is known ----
    def ensure_fresh(self, send_kwargs: Mapping[str, Any], timeout: Any = None) -> None:
        """Make sure the selection is being kept fresh; probe here only when nothing is known.

        A stale selection keeps serving while the background thread re-probes
        it (stale-while-revalidate). Only the very first request of a backend
        set with no state anywhere waits, until the priority order is decided
        but never longer than its own ``timeout`` allows (see
        :func:`._prober.first_wait`). Its attempts keep ``timeout`` as given;
        their deadline (connect + read, counted from before this wait)
        already includes the time waited here. ``send_kwargs`` (``verify``,
        ``cert``, ``proxies``) become the background probes' settings when
        this request is the first (:class:`.ProbeSettings`).
        """
        if self._books.closed:
            self._books.reopen()
        self._prober.register(self, send_kwargs)
        state = self._books.sync()
        if state.checked_at is not None or state.health:
            return
        self._prober.first_round(send_kwargs, timeout)

    def refresh(self, send_kwargs: Mapping[str, Any]) -> str:
        """Probe now, ignoring the cache and any other prober; return the selection.

        An explicit refresh takes the first healthy backend at once: no
        ``healthy_threshold`` confirmation is waited for.
        """
        if self._books.closed:
            self._books.reopen()
        self._prober.refresh(send_kwargs)
        self._books.flush()
        return self._books.state.current()

    # -- background work (the worker thread calls these: see :class:`._background.Client`) ----
    def _tick(self) -> Optional[float]:
        """Do what is due now without blocking; return when this selection is next due."""
        books = self._books
        if books.closed:
            return None
        books.flush()
        now = self._clock()
        due = books.replay_due(now)
        state = self._clamped(books.sync(), now)
        if state.checked_at is None and not state.health:
            return None  # nothing known: the first request probes
        return min(due, self._prober.tick(state, now))

    def _flush(self) -> None:
        self._books.flush()

    def _stop(self, deadline: float) -> None:
        """No new background work; end the probes in flight, waiting for them until ``deadline`` (monotonic)."""
        self._books.closed = True
        self._prober.stop(deadline)

    # -- recording outcomes ------------------------------------------------------
    def record_failure(self, backend: Backend, error: str, retry_after: Optional[float] = None) -> None:
        """``backend`` failed a request: marked down, in memory and in the shared store before returning.

        Read-your-writes: a request that discovered an outage returns only once
        the discovery is published, so any process or session that asks
        afterwards follows it instead of meeting the outage itself.
        """
        log.warning("backend %s marked down: %s", backend.url, error)
        self._books.update(
            lambda s: _policy.mark_failed(s, backend.url, error, self._clock(), retry_after),
            error,
            wake=False,  # the write is ours: the background thread would only contend for it
        )
        self._books.publish()
        WORKER.wake()  # failback probes to schedule

    def record_success(self, backend: Backend, latency: Optional[float] = None) -> None:
        """``backend`` answered, ``latency`` seconds after the request was sent (None: not measured).

        The latency feeds this process's demotion rule (:mod:`._policy`): a
        few float operations, no lock, no write unless a demotion begins or ends.
        """
        if latency is not None and self._options.demote_slow:
            self._observe_latency(backend.url, latency, None)
        state, now = self._books.state, self._clock()
        if _policy.mark_succeeded(state, backend.url, now) is state:
            return  # the common case: nothing changed, nothing written
        if latency and now - latency < state.record(backend.url).failed_at < now:
            return  # sent before a failure recorded while it was in flight: the failure stands
        self._books.update(lambda s: _policy.mark_succeeded(s, backend.url, now), f"{backend.url} answered")

    def record_slow(self, backend: Backend, seconds: float, reason: str) -> None:
        """``backend`` was given up on after ``seconds``: a lower bound of a latency never seen.

        ``reason`` :data:`SLOW_READ_TIMEOUT` demotes at once (the caller's
        whole read timeout went by); :data:`SLOW_HEDGE_LOST` (a hedge to
        another backend answered first) counts as one slow answer; any other
        reason is taken as a timeout.
        """
        if self._options.demote_slow:
            self._observe_latency(backend.url, seconds, reason)

    def _observe_latency(self, url: str, seconds: float, slow: Optional[str]) -> None:
        """One latency sample of ``url`` (``slow``: a record_slow reason); demote or restore it if due.

        The common case (a fast answer of a backend that is not demoted) reads
        a few attributes and writes two, without a lock: two threads racing
        here may lose one sample, which moves an average, never a decision.
        """
        books = self._speed.latency
        stats = books[url]
        average = stats.ewma
        if slow is None and seconds <= _policy.FAST_ENOUGH:  # below every bound the rule can compute
            stats.ewma = seconds if average is None else average + _policy.EWMA_ALPHA * (seconds - average)
            stats.streak = 0
            health = self._books.state.health.get(url)
            if health is None or health.demotion_reason is None:
                return  # the hot path
        best: Optional[float] = None
        for other, other_stats in books.items():
            if other != url and other_stats.ewma is not None and (best is None or other_stats.ewma < best):
                best = other_stats.ewma
        bound = _policy.slow_bound(best)
        is_slow = slow is not None or seconds > bound
        stats.ewma = _policy.ewma(average, seconds)
        stats.streak = stats.streak + 1 if is_slow else 0
        health = self._books.state.record(url)
        if not is_slow and not health.demoted():
            return
        now = self._clock()
        if slow is not None and slow != SLOW_HEDGE_LOST:
            why = f"{slow} after {seconds:.1f} s"
        elif slow is not None:
            why = f"{slow} after {seconds * 1000:.0f} ms"
        else:
            why = f"{seconds * 1000:.0f} ms, bound {bound * 1000:.0f} ms"
        if health.demoted():
            if now < health.demoted_until:
                return  # cooling down: a sample from a fallback request, not a trial
            self._speed.trials.pop(url, None)
            if is_slow:
                self._demote(url, f"slow on trial: {why}", now)
            else:
                stats.ewma, stats.streak = seconds, 0  # a fresh start: the slow samples are history
                self._restore(url, f"answered in {seconds * 1000:.0f} ms on trial (bound {bound * 1000:.0f} ms)", now)
            return
        if slow is not None and slow != SLOW_HEDGE_LOST:
            self._demote(url, why, now)
        elif stats.streak >= _policy.SLOW_STREAK:
            self._demote(url, f"{stats.streak} slow answers in a row (last: {why})", now)

    def _demote(self, url: str, why: str, now: float) -> None:
        def demote(s: State) -> State:
            return _policy.demote(s, url, why, now) if _policy.can_demote(s, url, now) else s

        after = demote(self._books.state).record(url)
        if after is self._books.state.record(url):
            return  # already demoted, or nowhere better to go
        cool = after.demoted_until - now
        log.warning("backend %s demoted for %.0f s: %s", url, cool, why)
        self._books.update(demote, f"{url} demoted: {why}")
        self._speed.latency[url].streak = 0
        self._reporter.demotion(DemotionEvent(url, True, why, after.demoted_until, after.demotion_level, now))

    def _restore(self, url: str, why: str, now: float) -> None:
        if not self._books.state.record(url).demoted():
            return
        log.info("backend %s trusted again: %s", url, why)
        self._books.update(lambda s: _policy.restore(s, url, now), f"{url} trusted again: {why}")
        self._reporter.demotion(DemotionEvent(url, False, why, None, 0, now))

    def clear(self) -> None:
        if self._books.closed:
            self._books.reopen()
        self._books.update_now(lambda s: State(s.backends), "cache cleared")

    def close(self) -> None:
        """Stop background work; write what is pending; end the probes in flight (no socket left).

        A probe blocked on a black-holed or hanging backend is not waited for:
        its socket is shut down, which ends the probe at once. The selection
        stays usable: the next request reopens it (as a closed
        ``requests.Session`` stays usable).
        """
        self._books.closed = True
        self._prober.unregister(self)
        self._books.close()
        self._prober.stop(time.monotonic() + CLOSE_WAIT)
        self._books.close_store()

    def idle(self) -> bool:
        """No probe in flight and nothing waiting to be written (for tests)."""
        return not (self._prober.busy() or self._books.writing())

    def probes_in_flight(self) -> int:
        """Probe threads running now (for tests)."""
        return self._prober.in_flight()

    def status(self) -> Status:
        state = self._books.sync()
        now = self._clock()
        store = self._books.store
        return {
            "active_backend": state.current(),
            "last_health_check": state.checked_at,
            "cache_valid": state.is_fresh(now, self._options.cache_ttl),
            "health_checking": self._prober.checking(state, now),
            "state_file": store.location,
            "state_store": store.status(),
            "development_mode": self._options.development,
            "backends": self._reporter.backends(state, now, self._options.slow_start * self._speed.dice_jitter()),
        }


class _Latency:
    """One backend's answers as this process saw them (memory only: see :mod:`._policy`)."""

    __slots__ = ("ewma", "streak")

    def __init__(self) -> None:
        self.ewma: Optional[float] = None  # seconds
        self.streak = 0  # slow samples in a row


class _Speed:
    """This process's latency books: samples per backend, trials in flight, slow-start dice.

    Per process on purpose: after ``fork()`` the child draws its own jitter
    and random sequence (a fleet of forked workers must not ramp in step) and
    forgets the parent's trials.
    """

    def __init__(self, backends: Tuple[str, ...]) -> None:
        self.latency: Dict[str, _Latency] = {url: _Latency() for url in backends}
        self._pid = -1
        self._random = random.Random()
        self._jitter = 1.0
        self._lock = threading.Lock()
        self.trials: Dict[str, Tuple[float, float]] = {}  # url -> (its demoted_until, when our trial began)

    def _check_process(self) -> None:
        if self._pid != os.getpid():
            self._random = random.Random()  # seeded from os.urandom
            self._jitter = self._random.uniform(0.8, 1.2)
            self._lock = threading.Lock()
            self.trials = {}
            self._pid = os.getpid()

    def dice(self) -> random.Random:
        self._check_process()
        return self._random

    def dice_jitter(self) -> float:
        """This process's slow-start jitter: the window times uniform(0.8, 1.2)."""
        self._check_process()
        return self._jitter

    def claim_trial(self, url: str, cooled_at: float, now: float) -> bool:
        """Whether this request is ``url``'s trial: none of ours is in flight for this cool-down."""
        self._check_process()
        with self._lock:
            claim = self.trials.get(url)
            if claim is not None and claim[0] == cooled_at and now - claim[1] < TRIAL_TIMEOUT:
                return False
            self.trials[url] = (cooled_at, now)
            return True


class _Plan(NamedTuple):
    """A computed plan, valid for ``state`` until ``until`` (unix time)."""

    state: State
    until: float
    order: List[Backend]
    other: Optional[List[Backend]]  # slow start: the order when the ramping first backend is not chosen
    ramping: _policy.Health  # the first backend's record (its recovered_at)
    window: float  # seconds of this process's slow start


def _stepped_back(until: float, now: float) -> bool:
    """Whether ``until`` lies further ahead than any time the library writes: the clock stepped back."""
    return now + _policy.FURTHEST < until < INF
