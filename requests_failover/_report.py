"""Reporting on one adapter's selection: the log, events to observers and hooks, ``status()``.

Nothing here decides anything: the :class:`.Books` and the :class:`.Prober`
hand their changes and probe results to a :class:`Reporter`, which logs a
switch, emits :class:`.SwitchEvent`, :class:`.ProbeEvent` and
:class:`.DemotionEvent` (a broken ``on_switch`` hook never breaks a request),
and remembers per backend whether its last probe found a health path, for
:func:`status`. No lock: its one dictionary is written a key at a time.
"""

from __future__ import annotations

import logging
from typing import Callable, Dict, List, Optional, TypedDict

from . import _policy
from ._config import Options
from ._fleet import StoreStatus
from ._health import lacks_health_endpoint
from ._policy import ProbeResult, State
from .events import DemotionEvent, ProbeEvent, SwitchEvent, emit

log = logging.getLogger("requests_failover")


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


class Reporter:
    """Tells the log, the observers and the hooks what changed; remembers what ``status()`` shows."""

    def __init__(self, options: Options, clock: Callable[[], float]) -> None:
        self._options = options
        self._clock = clock
        self.endpoints: Dict[str, bool] = {}  # url -> whether its last probe here found a health path

    def announce(self, previous: State, current: State, reason: str) -> None:
        """Log and emit a switch of the selected backend, if ``previous`` -> ``current`` is one."""
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

    def observe_probe(self, result: ProbeResult) -> None:
        """A probe ended: note whether a health path exists; emit a :class:`.ProbeEvent`."""
        if result.status is not None:  # an answer came: it tells whether a health path exists
            self.endpoints[result.url] = not lacks_health_endpoint(result)
        if self._options.observers:
            event = ProbeEvent(
                result.url, result.path, result.healthy, result.status, result.duration, result.error, self._clock()
            )
            emit(self._options.observers, event)

    def demotion(self, event: DemotionEvent) -> None:
        if self._options.observers:
            emit(self._options.observers, event)

    def backends(self, state: State, now: float, window: float) -> List[BackendStatus]:
        """Each backend's part of :class:`Status` (``window``: this process's slow start, seconds)."""
        options = self._options
        due = _policy.probes_due(state, now, options.healthy_threshold)
        stale_at = state.checked_at + options.cache_ttl if state.checked_at is not None else None
        backends: List[BackendStatus] = []
        for url in state.backends:
            health = state.record(url)
            demoted = health.demoted() and options.demote_slow
            backends.append(
                {
                    "url": url,
                    "healthy": health.healthy,
                    "consecutive_failures": health.consecutive_failures,
                    "last_latency_ms": health.last_latency_ms,
                    "last_error": health.last_error,
                    "down_until": health.down_until if health.down_until > now else None,
                    "next_probe_at": due.get(url, stale_at),
                    "health_endpoint": self.endpoints.get(url),
                    "demoted_until": health.demoted_until if demoted else None,
                    "demotion_reason": health.demotion_reason if demoted else None,
                    "slow_start_share": _policy.slow_start_share(health, now, window),
                }
            )
        return backends
