"""The live selection of one adapter: state in memory, persisted, probed, observed.

This is where the pure logic (:mod:`._pool`), persistence (:mod:`._state`)
and probing (:mod:`._health`) meet. It is thread-safe: updates serialise on
one lock (never held while sending a request or a probe), reads are a plain
attribute load, and one stale selection is probed by one thread of one
process while everybody else keeps using the stale one.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Set, Tuple, TypedDict, Union

from . import _pool, _runtime
from ._background import WORKER
from ._config import Backend, Options
from ._fleet import SharedStore, StoreStatus, resolve
from ._health import Sender, lacks_health_endpoint, probe, probe_all
from ._pool import ProbeResult, State
from ._state import FileStore, MemoryStore, Update, claim_is_void, open_store, owner_token
from .events import ProbeEvent, SwitchEvent, emit

log = logging.getLogger("requests_failover")

#: Probes race after this many hedge delays (their answer, not just their connect, is awaited).
PROBE_RACE_FACTOR = 4.0


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
        self._store: Union[MemoryStore, FileStore, SharedStore] = open_store(options.state_file, self._backends)
        if options.state_store is not None:
            self._store = SharedStore(resolve(options.state_store), self._store, self._backends)
        self._lock = threading.Lock()
        self._probe_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._fresh_process()
        loaded = self._store.load(self._backends, self._clock())
        self._state: State = loaded or State(self._backends)
        self._persisted = self._state  # what the store holds, as far as we know
        self._plan_cache: Optional[Tuple[State, float, List[Backend]]] = None
        self._closed = False
        self._probe_kwargs: Mapping[str, Any] = {}
        self._endpoints: Dict[str, bool] = {}  # url -> whether its last probe here found a health path
        _runtime.reset_after_fork(self)

    def _fresh_process(self) -> None:
        self._pending: List[Update] = []  # write-behind: applied in memory, not yet in the store
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
        """The order of backends for one request (cached until the state or the time it depends on changes)."""
        state, now = self._state, self._clock()
        cached = self._plan_cache
        if cached is not None and cached[0] is state and now < cached[1]:
            return cached[2]
        order = [self._by_url[url] for url in _pool.plan(state, now)]
        # the plan depends on time only through the down/hold times still ahead
        ahead = [t for h in state.health.values() for t in (h.down_until, h.hold_until) if t > now]
        self._plan_cache = (state, min(ahead, default=float("inf")), order)
        return order

    # -- freshness: the request path never waits for a probe once anything is known ----
    def ensure_fresh(self, send_kwargs: Mapping[str, Any]) -> None:
        """Make sure the selection is being kept fresh; probe here only when nothing is known.

        A stale selection keeps serving while the background thread re-probes
        it (stale-while-revalidate). Only the very first request of a backend
        set with no state anywhere waits, and only until the priority order is
        decided.
        """
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
        try:
            if self._claim():
                self._probe_round(dict(send_kwargs), "health check")
        finally:
            self._probe_lock.release()

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
                    lambda s: _pool.apply_probes(s, [result], self._clock(), select=False, threshold=threshold),
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
                lambda s: _pool.apply_probes(s, results, self._clock(), select=True, threshold=threshold), reason
            )

    # -- background work (called by the worker thread) ------------------------------------
    def _tick(self) -> Optional[float]:
        """Do what is due now without blocking; return when this selection is next due."""
        if self._closed:
            return None
        self._flush()
        state = self.sync()
        now = self._clock()
        ttl = self._options.cache_ttl
        due = float("inf")
        if state.checked_at is None and not state.health:
            return None  # nothing known: the first request probes
        if state.is_fresh(now, ttl):
            due = state.checked_at + ttl if state.checked_at is not None else due
        elif self._claimed(state, now):
            due = state.probing_until  # another process probes; look again when its claim ends
        elif not self._round:
            if self._claim():
                self._round = True
                self._spawn(self._background_round)
            else:  # another machine holds the round's lease: look again soon
                due = min(due, now + _runtime.interval(1.0))
        scale = _runtime.interval(1.0)
        for url, at in _pool.probes_due(state, now, self._options.healthy_threshold).items():
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
                    lambda s: _pool.apply_probes(s, [result], self._clock(), select=False, threshold=threshold),
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
        log.warning("backend %s marked down: %s", backend.url, error)
        self._update(
            lambda s: _pool.mark_failed(s, backend.url, error, self._clock(), retry_after),
            error,
        )

    def record_success(self, backend: Backend) -> None:
        state = self._state
        if backend.url == state.current():
            health = state.health.get(backend.url)
            if health is not None and health.healthy is True and health.consecutive_failures == 0:
                return  # the hot path: the selected backend answered, as expected
        if _pool.mark_succeeded(state, backend.url, self._clock()) is state:
            return  # the common case: nothing changed, nothing written
        self._update(lambda s: _pool.mark_succeeded(s, backend.url, self._clock()), f"{backend.url} answered")

    def clear(self) -> None:
        self._update_now(lambda s: State(s.backends), "cache cleared")

    # -- plumbing -------------------------------------------------------------------
    def _update(self, fn: Update, reason: str) -> None:
        """Apply ``fn`` in memory now; the store follows on the background thread (write-behind).

        No file lock, write or fsync on the caller's path: the worker flushes
        within milliseconds, and other processes see the change then.
        """
        with self._lock:
            previous = self._state
            self._state = current = fn(previous)
            if current is previous:
                return
            if self._store.persistent:
                self._pending.append(fn)
            else:
                self._persisted = current  # memory is the store
        self._announce(previous, current, reason)
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
            if not updates:
                return
            previous, current = self._stored(
                self._store.update(lambda s: _apply(updates, s), self._persisted, self._clock())
            )
        self._announce(previous, current, "changed by another process")

    def _stored(self, result: State) -> Tuple[State, State]:
        """Keep what the store now holds, with our updates not yet written on top; (before, after)."""
        with self._lock:
            self._persisted = result
            previous, self._state = self._state, _apply(self._pending, result)
            return previous, self._state

    def close(self) -> None:
        """Stop background work; write what is pending; wait for probes in flight (no socket left)."""
        self._closed = True
        WORKER.remove(self)
        self._flush()
        with self._flush_lock:  # a flush the worker thread has under way ends first
            pass
        self._stop(time.monotonic() + self._budget())
        self._store.close()

    def _stop(self, deadline: float) -> None:
        """No new background work; wait until ``deadline`` (monotonic) for the probes in flight."""
        self._closed = True
        with self._threads_lock:
            threads = list(self._threads)
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))

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
        due = _pool.probes_due(state, now, self._options.healthy_threshold)
        stale_at = state.checked_at + self._options.cache_ttl if state.checked_at is not None else None
        backends: List[BackendStatus] = []
        for url in self._backends:
            health = state.record(url)
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
