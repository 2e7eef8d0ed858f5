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
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from . import _pool, _runtime
from ._config import Backend, Options
from ._health import Sender, probe_all
from ._pool import ProbeResult, State
from ._state import claim_is_void, open_store, owner_token

log = logging.getLogger("requests_failover")


@dataclass(frozen=True)
class SwitchEvent:
    """Passed to ``on_switch`` when the active backend changes.

    ``previous`` and ``current`` are backend base URLs (never with userinfo);
    ``reason`` says why, for example ``"health check"`` or
    ``"ConnectionError (NewConnectionError: ...)"``; ``at`` is unix time.
    """

    previous: str
    current: str
    reason: str
    at: float


class Selection:
    def __init__(self, options: Options, send: Sender) -> None:
        self._options = options
        self._send = send
        self._clock = _runtime.now
        self._backends = tuple(b.url for b in options.targets)
        self._by_url: Dict[str, Backend] = {b.url: b for b in options.targets}
        self._store = open_store(options.state_file, self._backends)
        self._lock = threading.Lock()
        self._probe_lock = threading.Lock()
        _runtime.reset_after_fork(self)
        loaded = self._store.load(self._backends, self._clock())
        self._state: State = loaded or State(self._backends)
        self._plan_cache: Optional[Tuple[State, float, List[Backend]]] = None

    def _after_fork(self) -> None:
        # A lock inherited through fork() may be held by a thread that does not
        # exist in the child; start the child with fresh ones.
        self._lock = threading.Lock()
        self._probe_lock = threading.Lock()

    # -- reading --------------------------------------------------------------
    def sync(self) -> State:
        """The current state, adopting another process's change if there is one (one stat).

        The read and the adoption happen under one lock: a thread that read an
        older file can never store it after another thread stored a newer one.
        """
        if not self._store.changed():
            return self._state
        with self._lock:
            shared = self._store.poll(self._backends, self._clock())
            if shared is None:
                return self._state
            previous, self._state = self._state, shared
        self._announce(previous, shared, "changed by another process")
        return shared

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

    # -- probing ----------------------------------------------------------------
    def ensure_fresh(self, send_kwargs: Mapping[str, Any]) -> None:
        """Re-probe if the selection is stale and nobody else is probing it."""
        state = self.sync()
        now = self._clock()
        if state.is_fresh(now, self._options.cache_ttl) or self._claimed(state, now):
            return
        if not self._probe_lock.acquire(blocking=False):
            return  # another thread of this process is probing: use the stale selection
        try:
            claimed = False
            budget = self._options.health_timeout * len(self._options.health_paths) + 5.0

            def claim(current: State) -> State:
                nonlocal claimed
                now = self._clock()
                if current.is_fresh(now, self._options.cache_ttl) or self._claimed(current, now):
                    return current  # another process probed, or is probing, meanwhile
                claimed = True
                return dataclasses.replace(current, probing_until=now + budget, probing_by=owner_token())

            self._update(claim, "changed by another process")
            if claimed:
                self._probe(send_kwargs, "health check")
        finally:
            self._probe_lock.release()

    @staticmethod
    def _claimed(state: State, now: float) -> bool:
        """Whether a live prober holds the claim (one of a process that died is void at once)."""
        return state.probing_until > now and not claim_is_void(state.probing_by)

    def refresh(self, send_kwargs: Mapping[str, Any]) -> str:
        """Probe now, ignoring the cache and any other prober; return the selection."""
        with self._probe_lock:
            self._probe(send_kwargs, "forced refresh")
        return self._state.current()

    def _probe(self, send_kwargs: Mapping[str, Any], reason: str) -> None:
        state = self._state
        now = self._clock()
        hold = {url: state.record(url).hold_until for url in self._backends}

        def late(result: ProbeResult) -> None:
            self._update(lambda s: _pool.apply_probes(s, [result], self._clock(), select=False), reason)

        results = probe_all(
            self._options.targets,
            self._options.health_paths,
            self._options.health_timeout,
            self._send,
            send_kwargs,
            hold=hold,
            now=now,
            on_late=late,
        )
        self._update(lambda s: _pool.apply_probes(s, results, self._clock(), select=True), reason)

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
        self._update(lambda s: State(s.backends), "cache cleared")

    # -- plumbing -------------------------------------------------------------------
    def _update(self, fn: Callable[[State], State], reason: str) -> None:
        with self._lock:
            previous = self._state
            self._state = self._store.update(fn, previous, self._clock())
            current = self._state
        self._announce(previous, current, reason)

    def _announce(self, previous: State, current: State, reason: str) -> None:
        before, after = previous.current(), current.current()
        if before == after:
            return
        log.info("switched backend from %s to %s: %s", before, after, reason)
        hook = self._options.on_switch
        if hook is not None:
            try:
                hook(SwitchEvent(before, after, reason, self._clock()))
            except Exception:  # a broken hook must not break the request
                log.exception("on_switch hook raised")

    def status(self) -> Dict[str, Any]:
        state = self.sync()
        now = self._clock()
        return {
            "active_backend": state.current(),
            "last_health_check": state.checked_at,
            "cache_valid": state.is_fresh(now, self._options.cache_ttl),
            "health_checking": self._probe_lock.locked() or self._claimed(state, now),
            "state_file": self._store.location,
            "development_mode": self._options.development,
            "backends": [
                {
                    "url": url,
                    "healthy": state.record(url).healthy,
                    "consecutive_failures": state.record(url).consecutive_failures,
                    "last_latency_ms": state.record(url).last_latency_ms,
                    "last_error": state.record(url).last_error,
                    "down_until": state.record(url).down_until or None,
                }
                for url in self._backends
            ],
        }
