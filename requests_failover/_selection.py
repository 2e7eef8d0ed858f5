"""The live selection of one adapter: state in memory, persisted, probed, observed.

This is where the pure logic (:mod:`._policy`), persistence (:mod:`._state`)
and probing (:mod:`._health`) meet. It is thread-safe: updates serialise on
one lock (never held while sending a request or a probe), reads are a plain
attribute load, and one stale selection is probed by one thread of one
process while everybody else keeps using the stale one.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import socket
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, NamedTuple, Optional, Set, Tuple, TypedDict, Union

from . import _policy, _runtime
from ._background import WORKER
from ._config import Backend, Options
from ._fleet import SharedStore, StoreStatus, resolve
from ._health import Sender, lacks_health_endpoint, probe, probe_all
from ._policy import ProbeResult, State
from ._state import FileStore, MemoryStore, Update, claim_is_void, open_store, owner_token
from .events import DemotionEvent, ProbeEvent, SwitchEvent, emit

log = logging.getLogger("requests_failover")

#: Probes race after this many hedge delays (their answer, not just their connect, is awaited).
PROBE_RACE_FACTOR = 4.0
#: Shortest time (seconds) between two background probe rounds, whatever ``cache_ttl`` says:
#: ``cache_ttl=0`` means "re-probe as soon as allowed", never a busy loop of probes.
PROBE_FLOOR = 1.0
#: Longest wait (seconds) of a request for its discovery to reach a remote store (Redis):
#: the remote calls stay on the background thread, so a frozen store costs a request this, once.
PUBLISH_WAIT = 0.5
#: Longest wait (seconds) of close() for the probes it interrupted to end.
CLOSE_WAIT = 1.0
INF = float("inf")
#: Updates kept for a remote store that is away, at most (the oldest are dropped first).
MAX_UNPUBLISHED = 64

#: ``record_slow`` reasons: a read timeout demotes at once; a request abandoned
#: because a hedge to another backend answered first is one slow sample.
SLOW_READ_TIMEOUT = "read timeout"
SLOW_HEDGE_LOST = "hedge lost"
#: Seconds after which a trial of a demoted backend that never reported is given up (another one starts).
TRIAL_TIMEOUT = 60.0


class BackendStatus(TypedDict):
    """One backend in :class:`Status`."""

    url: str
    healthy: Optional[bool]  # None: never checked
    consecutive_failures: int
    last_latency_ms: Optional[float]
    last_error: Optional[str]
    down_until: Optional[float]  # unix time; None when not down
    next_probe_at: Optional[float]  # unix time of its next background probe, if one is planned
    # False: no health path exists (every one answered 404/405), so its base URL judges it;
    # True: a health path answered; None: not probed by this process yet
    health_endpoint: Optional[bool]
    demoted_until: Optional[float]  # unix time its cool-down ends (past: its trial is due); None: not demoted
    demotion_reason: Optional[str]  # why it is demoted (slow answers, a read timeout); None: not demoted
    slow_start_share: Optional[float]  # share of requests it gets first while ramping up; None: not ramping


class Status(TypedDict):
    """What ``status()`` returns: a JSON-serialisable snapshot of the selection."""

    active_backend: str
    last_health_check: Optional[float]  # unix time of the last full probe round
    cache_valid: bool
    health_checking: bool
    state_file: Optional[str]  # the local layer when a shared store is in use
    state_store: Optional[StoreStatus]  # the shared store (Redis, ...): None when there is none
    development_mode: bool
    backends: List[BackendStatus]


class Selection:
    def __init__(self, options: Options, send: Sender) -> None:
        self._options = options
        self._send = send
        self._clock = _runtime.now
        self._backends = tuple(b.url for b in options.targets)
        self._by_url: Dict[str, Backend] = {b.url: b for b in options.targets}
        self._store = self._open_store()
        self._lock = threading.Lock()
        self._probe_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._fresh_process()
        loaded = self._store.load(self._backends, self._clock())
        self._state: State = loaded or State(self._backends)
        self._persisted = self._state  # what the store holds, as far as we know
        self._plan_cache: Optional[_Plan] = None
        self._speed = _Speed(self._backends)
        self._closed = False
        self._probe_kwargs: Mapping[str, Any] = {}
        self._endpoints: Dict[str, bool] = {}  # url -> whether its last probe here found a health path
        _runtime.reset_after_fork(self)

    def _open_store(self) -> Union[MemoryStore, FileStore, SharedStore]:
        local = open_store(self._options.state_file, self._backends)
        if self._options.state_store is not None:
            return SharedStore(resolve(self._options.state_store), local, self._backends)
        return local

    def _fresh_process(self) -> None:
        self._pending: List[Update] = []  # write-behind: applied in memory, not yet in the store
        self._unpublished: List[Update] = []  # written while the remote store was away, for it
        self._taken = 0  # flushes that took pending updates (a generation count)
        self._written = 0  # the last of them that ended
        self._flushed = threading.Condition(threading.Lock())  # notified when a flush ends
        self._threads: Set[threading.Thread] = set()  # probe threads in flight, all started
        self._threads_lock = threading.Lock()
        self._probing: Set[str] = set()  # backends probed in the background right now
        self._round = False  # a full background probe round is running
        self._registered = -1  # the worker generation this selection registered with

    def _after_fork(self) -> None:
        # A lock inherited through fork() may be held by a thread that does not
        # exist in the child; the parent writes its own pending updates.
        self._lock = threading.Lock()
        self._probe_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._fresh_process()

    # -- reading --------------------------------------------------------------
    def sync(self) -> State:
        """The current state, adopting another process's change if there is one (one stat).

        The read and the adoption happen under one lock: a thread that read an
        older file can never store it after another thread stored a newer one.
        Updates of ours not yet written are applied on top.
        """
        if not self._store.changed():
            return self._state
        with self._lock:
            shared = self._store.poll(self._backends, self._clock())
            if shared is None:
                return self._state
            self._persisted = shared
            previous, self._state = self._state, _apply(self._pending, shared)
            current = self._state
        self._announce(previous, current, "changed by another process")
        return current

    def plan(self) -> List[Backend]:
        """The order of backends for one request (cached until the state or the time it depends on changes).

        Demoted backends come after the others (:func:`._policy.ranked_plan`),
        but for one trial request per process once a cool-down is over; while
        the first backend is in its slow start, it comes first only for its
        share of requests (one random draw per request).
        """
        state, now = self._state, self._clock()
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
        self._update(lambda s: _policy.clamp(s, self._clock()), "the clock stepped back")
        return self._state

    # -- freshness: the request path never waits for a probe once anything is known ----
    def ensure_fresh(self, send_kwargs: Mapping[str, Any], timeout: Any = None) -> None:
        """Make sure the selection is being kept fresh; probe here only when nothing is known.

        A stale selection keeps serving while the background thread re-probes
        it (stale-while-revalidate). Only the very first request of a backend
        set with no state anywhere waits, until the priority order is decided
        but never longer than its own ``timeout`` allows (see
        :func:`_first_wait`): the probes go on in the background, and the
        request goes to the first backend meanwhile. Its attempts keep
        ``timeout`` as given; their deadline (connect + read, counted from
        before this wait) already includes the time waited here.
        """
        if self._closed:
            self._reopen()
        if self._registered != WORKER.generation:
            self._probe_kwargs = dict(send_kwargs)
            self._registered = WORKER.generation
            WORKER.add(self)
        state = self.sync()
        if state.checked_at is not None or state.health:
            return
        self._probe_kwargs = dict(send_kwargs)
        if not self._probe_lock.acquire(blocking=False):
            return  # another thread of this process is probing: go ahead with the first backend
        decided = threading.Event()

        def first_round() -> None:
            try:
                self._probe_round(dict(send_kwargs), "health check")
            finally:
                self._probe_lock.release()
                decided.set()

        try:
            claimed = self._claim()
            if claimed:
                self._spawn(first_round)
        except BaseException:
            self._probe_lock.release()
            raise
        if not claimed:
            self._probe_lock.release()
            return
        decided.wait(_first_wait(timeout, self._options.default_timeout))

    def _budget(self) -> float:
        """Seconds a probe round may take at most."""
        return self._options.health_timeout * len(self._options.health_paths) + 5.0

    def _claim(self) -> bool:
        """Claim the probe round in the store, unless it is fresh or a live prober holds it.

        A shared store gives the round to one machine of the fleet through a
        lease, held (never released) for half a stale period at most: the
        winner's fresh selection reaches the others long before it ends.
        """
        budget = self._budget()
        lease = self._store.lease("round", owner_token(), min(budget, max(self._options.cache_ttl / 2, 0.001)))
        if lease is not None:
            return lease and not self.sync().is_fresh(self._clock(), self._options.cache_ttl)
        claimed = False

        def claim(current: State) -> State:
            nonlocal claimed
            now = self._clock()
            claimed = False  # a shared store may call this again on a newer state
            if current.is_fresh(now, self._options.cache_ttl) or self._claimed(current, now):
                return current  # another process probed, or is probing, meanwhile
            claimed = True
            return dataclasses.replace(current, probing_until=now + budget, probing_by=owner_token())

        self._update_now(claim, "changed by another process")
        return claimed

    @staticmethod
    def _claimed(state: State, now: float) -> bool:
        """Whether a live prober holds the claim (one of a process that died is void at once)."""
        return state.probing_until > now and not claim_is_void(state.probing_by)

    def refresh(self, send_kwargs: Mapping[str, Any]) -> str:
        """Probe now, ignoring the cache and any other prober; return the selection.

        An explicit refresh takes the first healthy backend at once: no
        ``healthy_threshold`` confirmation is waited for.
        """
        if self._closed:
            self._reopen()
        with self._probe_lock:
            self._probe_round(send_kwargs, "forced refresh", threshold=1)
        self._flush()
        return self._state.current()

    def _probe_round(self, send_kwargs: Mapping[str, Any], reason: str, threshold: Optional[int] = None) -> None:
        """Probe every backend; return once the priority order is decided."""
        state = self._state
        now = self._clock()
        hold = {url: state.record(url).hold_until for url in self._backends}
        if threshold is None:
            threshold = self._options.healthy_threshold

        def late(result: ProbeResult) -> None:
            if not self._closed:
                self._update(
                    lambda s: _policy.apply_probes(s, [result], self._clock(), select=False, threshold=threshold),
                    reason,
                )

        results = probe_all(
            self._options.targets,
            self._options.health_paths,
            self._options.health_timeout,
            self._send,
            send_kwargs,
            hold=hold,
            now=now,
            on_late=late,
            spawn=self._spawn,
            check=self._options.health_check,
            headers=self._options.health_headers,
            observe=self._observe_probe,
            # A probe's answer takes a connect and a request: race on four hedge delays
            # (1 s by default), so a primary that is merely far away or busy is not raced.
            hedge_delay=None if self._options.hedge_delay is None else PROBE_RACE_FACTOR * self._options.hedge_delay,
        )
        if not self._closed:
            self._update(
                lambda s: _policy.apply_probes(s, results, self._clock(), select=True, threshold=threshold), reason
            )

    # -- background work (called by the worker thread) ------------------------------------
    def _tick(self) -> Optional[float]:
        """Do what is due now without blocking; return when this selection is next due."""
        if self._closed:
            return None
        self._flush()
        now = self._clock()
        due = float("inf")
        if self._unpublished:
            if self._store_unreachable() is False:
                self._replay()
            else:  # look again soon: the feed notices the store answering before we do
                due = now + _runtime.interval(1.0)
        state = self._clamped(self.sync(), now)
        ttl = self._options.cache_ttl
        if state.checked_at is None and not state.health:
            return None  # nothing known: the first request probes
        # A round is due once the selection is stale, and never sooner than PROBE_FLOOR after the
        # last one: cache_ttl=0 re-probes once a second, not in a loop.
        interval = max(ttl, PROBE_FLOOR)
        if state.is_fresh(now, interval):
            due = min(due, state.checked_at + interval) if state.checked_at is not None else due
        elif self._claimed(state, now):
            due = state.probing_until  # another process probes; look again when its claim ends
        elif not self._round:
            if self._claim():
                self._round = True
                self._spawn(self._background_round)
            else:  # another machine holds the round's lease: look again soon
                due = min(due, now + _runtime.interval(1.0))
        scale = _runtime.interval(1.0)
        for url, at in _policy.probes_due(state, now, self._options.healthy_threshold).items():
            if url in self._probing:
                continue
            health = state.record(url)
            since = max(health.failed_at, health.probed_at)
            at = since + (at - since) * scale if at > since else at  # testing mode: 1/100 of each interval
            wait = at - now
            if wait <= 0:
                if self._store.lease(f"probe {url}", owner_token(), self._budget()) is False:
                    due = min(due, now + _runtime.interval(1.0))  # another machine probes it now
                    continue
                self._probing.add(url)
                self._spawn(lambda url=url: self._probe_one(url))  # type: ignore[misc]  # binds the loop value
            else:
                due = min(due, now + wait)
        return due

    def _background_round(self) -> None:
        try:
            self._probe_round(self._probe_kwargs, "health check")
        finally:
            self._round = False
            WORKER.wake()

    def _probe_one(self, url: str) -> None:
        """A failback probe of one backend of higher priority than the current one."""
        try:
            result = probe(
                self._by_url[url],
                self._options.health_paths,
                self._options.health_timeout,
                self._send,
                self._probe_kwargs,
                check=self._options.health_check,
                headers=self._options.health_headers,
            )
            self._observe_probe(result)
            if not self._closed:
                threshold = self._options.healthy_threshold
                self._update(
                    lambda s: _policy.apply_probes(s, [result], self._clock(), select=False, threshold=threshold),
                    f"{url} is healthy again",
                )
        finally:
            if self._store.lease_based:
                self._flush()  # the result is in the shared store before another machine may probe
                self._store.release(f"probe {url}", owner_token())
            self._probing.discard(url)
            WORKER.wake()

    def _spawn(self, target: Callable[[], None]) -> None:
        """Start a probe thread that :meth:`close` waits for."""

        def run() -> None:
            try:
                target()
            finally:
                with self._threads_lock:  # after the spawner added it
                    self._threads.discard(thread)

        thread = threading.Thread(target=run, name="requests-failover-probe", daemon=True)
        with self._threads_lock:
            thread.start()
            self._threads.add(thread)

    # -- recording outcomes ------------------------------------------------------
    def record_failure(self, backend: Backend, error: str, retry_after: Optional[float] = None) -> None:
        """``backend`` failed a request: marked down, in memory and in the shared store before returning.

        Read-your-writes: a request that discovered an outage returns only once
        the discovery is published, so any process or session that asks
        afterwards follows it instead of meeting the outage itself.
        """
        log.warning("backend %s marked down: %s", backend.url, error)
        self._update(
            lambda s: _policy.mark_failed(s, backend.url, error, self._clock(), retry_after),
            error,
            wake=False,  # the write is ours: the background thread would only contend for it
        )
        self._publish()
        WORKER.wake()  # failback probes to schedule

    def record_success(self, backend: Backend, latency: Optional[float] = None) -> None:
        """``backend`` answered, ``latency`` seconds after the request was sent (None: not measured).

        The latency feeds this process's demotion rule (:mod:`._policy`): a
        few float operations, no lock, no write unless a demotion begins or ends.
        """
        if latency is not None and self._options.demote_slow:
            self._observe_latency(backend.url, latency, None)
        state = self._state
        if backend.url == state.current():
            health = state.health.get(backend.url)
            if health is not None and health.healthy is True and health.consecutive_failures == 0:
                return  # the hot path: the selected backend answered, as expected
        if _policy.mark_succeeded(state, backend.url, self._clock()) is state:
            return  # the common case: nothing changed, nothing written
        self._update(lambda s: _policy.mark_succeeded(s, backend.url, self._clock()), f"{backend.url} answered")

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
            health = self._state.health.get(url)
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
        health = self._state.record(url)
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

        after = demote(self._state).record(url)
        if after is self._state.record(url):
            return  # already demoted, or nowhere better to go
        cool = after.demoted_until - now
        log.warning("backend %s demoted for %.0f s: %s", url, cool, why)
        self._update(demote, f"{url} demoted: {why}")
        self._speed.latency[url].streak = 0
        self._emit(DemotionEvent(url, True, why, after.demoted_until, after.demotion_level, now))

    def _restore(self, url: str, why: str, now: float) -> None:
        if not self._state.record(url).demoted():
            return
        log.info("backend %s trusted again: %s", url, why)
        self._update(lambda s: _policy.restore(s, url, now), f"{url} trusted again: {why}")
        self._emit(DemotionEvent(url, False, why, None, 0, now))

    def _emit(self, event: DemotionEvent) -> None:
        if self._options.observers:
            emit(self._options.observers, event)

    def clear(self) -> None:
        if self._closed:
            self._reopen()
        self._update_now(lambda s: State(s.backends), "cache cleared")

    # -- plumbing -------------------------------------------------------------------
    def _update(self, fn: Update, reason: str, wake: bool = True) -> None:
        """Apply ``fn`` in memory now; the store follows on the background thread (write-behind).

        No file lock or write on the caller's path: the worker flushes within
        milliseconds, and other processes see the change then. A failure is
        published at once on top of this (:meth:`_publish`).
        """
        with self._lock:
            previous = self._state
            self._state = current = fn(previous)
            if current is previous:
                return
            if self._store.persistent and not self._closed:
                self._pending.append(fn)
            else:  # memory is the store (or, once closed, all there is: nothing piles up unwritten)
                self._persisted = current
        self._announce(previous, current, reason)
        if wake:
            WORKER.wake()  # a write to flush, or a schedule (failback probes) to recompute

    def _update_now(self, fn: Update, reason: str) -> None:
        """Apply ``fn`` to the store's freshest state and publish it before returning."""
        self._flush()
        with self._flush_lock:
            previous, current = self._stored(self._store.update(fn, self._persisted, self._clock()))
        self._announce(previous, current, reason)

    def _flush(self) -> None:
        """Write pending updates: each applied to the store's freshest state, under its lock."""
        if not self._pending:
            return
        with self._flush_lock:
            with self._lock:
                updates, self._pending = self._pending, []
                if updates:
                    self._taken += 1
                    taken = self._taken
            if not updates:
                return
            try:
                previous, current = self._stored(
                    self._store.update(lambda s: _apply(updates, s), self._persisted, self._clock())
                )
                if self._store_unreachable():  # kept on this machine only: replayed once the store answers
                    self._unpublished = (self._unpublished + updates)[-MAX_UNPUBLISHED:]
            finally:
                with self._flushed:
                    self._written = taken
                    self._flushed.notify_all()
        self._announce(previous, current, "changed by another process")

    def _store_unreachable(self) -> Optional[bool]:
        """Whether the remote store is known unreachable (None: not known, or no remote store)."""
        status = self._store.status()
        return None if status is None or status["reachable"] is None else not status["reachable"]

    def _replay(self) -> None:
        """Publish what this machine learned while the remote store was away, now that it answers.

        Without this the store's older document, read back when it answers
        again, would win over the outage this machine discovered meanwhile
        (and nothing else might write it: the switch is done here). The
        updates are applied to the store's current document, as any update.
        """
        with self._flush_lock:
            updates, self._unpublished = self._unpublished, []
            if not updates:
                return
            previous, current = self._stored(
                self._store.update(lambda s: _apply(updates, s), self._persisted, self._clock())
            )
        self._announce(previous, current, "changed by another process")

    def _publish(self) -> None:
        """Return once the updates pending now are in the store (read-your-writes).

        The state file is written here, on the caller's thread (a temp file
        and a rename, no fsync: well under a millisecond). A remote store's
        calls stay on the background thread, as everywhere on a request's path:
        the caller waits for that flush at most ``PUBLISH_WAIT``, so a store that
        hangs costs a request that, once (its breaker then skips it).
        """
        with self._lock:
            # the next flush takes them, or the flush under way took them already
            target = self._taken + 1 if self._pending else self._taken
        if self._store.lease_based:
            WORKER.wake()  # its thread writes
            deadline = time.monotonic() + PUBLISH_WAIT
            with self._flushed:
                while self._written < target and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._flushed.wait(left)
            return
        self._flush()
        with self._flush_lock:  # a flush another thread had under way (with our update) ends first
            pass

    def _stored(self, result: State) -> Tuple[State, State]:
        """Keep what the store now holds, with our updates not yet written on top; (before, after)."""
        with self._lock:
            self._persisted = result
            previous, self._state = self._state, _apply(self._pending, result)
            return previous, self._state

    def close(self) -> None:
        """Stop background work; write what is pending; end the probes in flight (no socket left).

        A probe blocked on a black-holed or hanging backend is not waited for:
        its socket is shut down, which ends the probe at once. The selection
        stays usable: the next request reopens it (as a closed
        ``requests.Session`` stays usable).
        """
        self._closed = True
        WORKER.remove(self)
        self._registered = -1  # a request after close() registers again
        self._flush()
        with self._flush_lock:  # a flush the worker thread has under way ends first
            pass
        with self._flushed:
            self._flushed.notify_all()  # a request waiting for a publish stops waiting
        self._stop(time.monotonic() + CLOSE_WAIT)
        self._store.close()

    def _reopen(self) -> None:
        """A request after :meth:`close`: open the store again; background work resumes."""
        with self._flush_lock:
            if not self._closed:
                return
            self._store = self._open_store()
            self._closed = False

    def _stop(self, deadline: float) -> None:
        """No new background work; end the probes in flight, waiting for them until ``deadline`` (monotonic).

        Each probe thread's sockets are shut down (again every few
        milliseconds, for a probe that was about to open one): the probe then
        fails at once and urllib3 closes them.
        """
        self._closed = True
        while True:
            with self._threads_lock:
                threads = [t for t in self._threads if t is not threading.current_thread()]
            if not threads or time.monotonic() >= deadline:
                return
            _interrupt(threads)
            for thread in threads:
                thread.join(max(0.0, min(0.01, deadline - time.monotonic())))

    def idle(self) -> bool:
        """No probe in flight and nothing waiting to be written (for tests)."""
        busy = self._threads or self._pending or self._probing or self._round or self._flush_lock.locked()
        return not busy

    def _announce(self, previous: State, current: State, reason: str) -> None:
        before, after = previous.current(), current.current()
        if before == after:
            return
        log.info("switched backend from %s to %s: %s", before, after, reason)
        hook, observers = self._options.on_switch, self._options.observers
        if hook is None and not observers:
            return
        event = SwitchEvent(before, after, reason, self._clock())
        emit(observers, event)
        if hook is not None:
            try:
                hook(event)
            except Exception:  # a broken hook must not break the request
                log.exception("on_switch hook raised")

    def _observe_probe(self, result: ProbeResult) -> None:
        if result.status is not None:  # an answer came: it tells whether a health path exists
            self._endpoints[result.url] = not lacks_health_endpoint(result)
        if self._options.observers:
            event = ProbeEvent(
                result.url, result.path, result.healthy, result.status, result.duration, result.error, self._clock()
            )
            emit(self._options.observers, event)

    def status(self) -> Status:
        state = self.sync()
        now = self._clock()
        due = _policy.probes_due(state, now, self._options.healthy_threshold)
        stale_at = state.checked_at + self._options.cache_ttl if state.checked_at is not None else None
        window = self._options.slow_start * self._speed.dice_jitter()
        backends: List[BackendStatus] = []
        for url in self._backends:
            health = state.record(url)
            demoted = health.demoted() and self._options.demote_slow
            backends.append(
                {
                    "url": url,
                    "healthy": health.healthy,
                    "consecutive_failures": health.consecutive_failures,
                    "last_latency_ms": health.last_latency_ms,
                    "last_error": health.last_error,
                    "down_until": health.down_until if health.down_until > now else None,
                    "next_probe_at": due.get(url, stale_at),
                    "health_endpoint": self._endpoints.get(url),
                    "demoted_until": health.demoted_until if demoted else None,
                    "demotion_reason": health.demotion_reason if demoted else None,
                    "slow_start_share": _policy.slow_start_share(health, now, window),
                }
            )
        return {
            "active_backend": state.current(),
            "last_health_check": state.checked_at,
            "cache_valid": state.is_fresh(now, self._options.cache_ttl),
            "health_checking": self._probe_lock.locked() or self._round or self._claimed(state, now),
            "state_file": self._store.location,
            "state_store": self._store.status(),
            "development_mode": self._options.development,
            "backends": backends,
        }


def _apply(updates: Iterable[Update], state: State) -> State:
    for update in updates:
        state = update(state)
    return state


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


def _interrupt(threads: Iterable[threading.Thread]) -> None:
    """Shut down the sockets that ``threads`` (probe threads) are using.

    A thread blocked in ``connect()``, a TLS handshake or ``recv()`` cannot be
    stopped from outside, but shutting its socket down ends the call at once
    with an error (a connect in progress too). The sockets are created deep in
    urllib3, out of our reach, so they are found in the threads' own frames:
    a local that is a socket (``create_connection``'s while it connects), or
    an object's ``sock``/``_sock`` (the connection, the socket file).
    """
    frames = sys._current_frames()
    found: Dict[int, socket.socket] = {}
    for thread in threads:
        frame = frames.get(thread.ident) if thread.ident is not None else None
        while frame is not None:
            module = str(frame.f_globals.get("__name__", ""))
            if module not in _HTTP_MODULES and not module.startswith(("urllib3.", "requests.")):
                frame = frame.f_back  # e.g. a write to a Redis store: its connection is not the probe's
                continue
            for value in list(frame.f_locals.values()):
                attributes = getattr(value, "__dict__", None)
                for candidate in (
                    value,
                    *((attributes.get("sock"), attributes.get("_sock")) if isinstance(attributes, dict) else ()),
                ):
                    if isinstance(candidate, socket.socket):
                        found[id(candidate)] = candidate
            frame = frame.f_back
    del frames
    for sock in found.values():
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:  # closed or never connected: nothing to end
            pass


#: The modules a probe's HTTP exchange runs in (their frames hold the probe's sockets).
_HTTP_MODULES = frozenset({"socket", "ssl", "http.client"})  # and urllib3.*, requests.*


def _parts(timeout: Any) -> Optional[Tuple[Optional[float], Optional[float]]]:
    """(connect, read) of a requests timeout; None for what is not a number or a pair (a urllib3 Timeout)."""
    if isinstance(timeout, tuple) and len(timeout) == 2:
        connect, read = timeout
    else:
        connect = read = timeout
    for part in (connect, read):
        if part is not None and (isinstance(part, bool) or not isinstance(part, (int, float))):
            return None
    return connect, read


def _first_wait(timeout: Any, default: Tuple[Optional[float], Optional[float]]) -> Optional[float]:
    """How long the first request of a backend set waits for the first probe round.

    Its connect timeout (a plain request would have spent that much
    connecting), and at most half its read timeout (the other half is the
    attempt's); None: the caller set no limit.
    """
    parts = _parts(timeout) if timeout is not None else None
    connect, read = parts if parts is not None else default
    bounds = [x for x in (connect, None if read is None else read / 2) if x is not None]
    return min(bounds) if bounds else None
