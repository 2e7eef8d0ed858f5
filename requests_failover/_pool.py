"""Selection logic: health records, marking down and up, choosing a backend.

Pure functions over an immutable :class:`State`; no I/O, no clock (callers
pass ``now``, unix seconds). Persistence (:mod:`._state`) and probing
(:mod:`._health`) live elsewhere, so this module is tested as plain data.

Down time after failures (elastic-transport's formula)::

    down_for = min(DOWN_CAP, DOWN_BASE * 2 ** (consecutive_failures - 1))

so 1 s, 2 s, 4 s ... capped at 30 s, reset by one success. A ``Retry-After``
on a 503 holds the backend down for that long (capped at
``RETRY_AFTER_CAP``) even if its health probe answers meanwhile.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

DOWN_BASE = 1.0
DOWN_CAP = 30.0
RETRY_AFTER_CAP = 60.0
CLOCK_SLACK = 5.0


@dataclass(frozen=True)
class Health:
    """What is known of one backend."""

    healthy: Optional[bool] = None  # None: never checked
    consecutive_failures: int = 0
    down_until: float = 0.0  # not tried outside a probe before this
    hold_until: float = 0.0  # Retry-After: not selected before this, probe or not
    last_latency_ms: Optional[float] = None
    last_error: Optional[str] = None

    def available(self, now: float) -> bool:
        return now >= self.down_until and now >= self.hold_until


_UNKNOWN = Health()


@dataclass(frozen=True)
class State:
    """The selection of one backend set: what the shared file holds."""

    backends: Tuple[str, ...]  # canonical URLs, priority order
    active: Optional[str] = None
    checked_at: Optional[float] = None  # when the last full probe round ended
    health: Mapping[str, Health] = dataclasses.field(default_factory=dict)
    probing_until: float = 0.0  # a probe round claimed by some process runs until then
    probing_by: Optional[str] = None  # who claimed it: "host pid start-time"

    def record(self, url: str) -> Health:
        return self.health.get(url, _UNKNOWN)

    def current(self) -> str:
        """The backend requests go to: the selection, else the first one."""
        return self.active if self.active is not None else self.backends[0]

    def is_fresh(self, now: float, ttl: float) -> bool:
        # A check a little in the future is another process's clock reading
        # taken after ours; one far in the future is a hostile file's.
        return self.checked_at is not None and -CLOCK_SLACK <= now - self.checked_at < ttl


@dataclass(frozen=True)
class ProbeResult:
    """The outcome of probing one backend."""

    url: str
    healthy: bool
    path: Optional[str] = None  # the health path that answered last
    status: Optional[int] = None
    latency_ms: Optional[float] = None
    error: Optional[str] = None


def _replace(state: State, url: str, health: Health, **changes: object) -> State:
    table: Dict[str, Health] = dict(state.health)
    table[url] = health
    return dataclasses.replace(state, health=table, **changes)  # type: ignore[arg-type]  # changes are State fields


def plan(state: State, now: float) -> List[str]:
    """The order in which one request tries the backends.

    The current selection first, then every other backend that is not down
    in priority order, then the ones that are down, soonest back first.
    """
    first = state.current()
    rest = [url for url in state.backends if url != first]
    up = [url for url in rest if state.record(url).available(now)]
    down = sorted(
        (url for url in rest if url not in up),
        key=lambda url: max(state.record(url).down_until, state.record(url).hold_until),
    )
    return [first, *up, *down]


def _choose(state: State, now: float, exclude: str) -> Optional[str]:
    """First backend in priority order worth moving to, or None."""
    candidates = [u for u in state.backends if u != exclude and state.record(u).available(now)]
    for url in candidates:
        if state.record(url).healthy is not False:
            return url
    return candidates[0] if candidates else None


def _failed(old: Health, error: Optional[str], now: float, hold_until: float) -> Health:
    """``old`` after one more failure: down for the backoff of the module docstring."""
    failures = old.consecutive_failures + 1
    down_for = min(DOWN_CAP, DOWN_BASE * 2 ** (failures - 1))
    return dataclasses.replace(
        old,
        healthy=False,
        consecutive_failures=failures,
        down_until=max(now + down_for, hold_until),
        hold_until=hold_until,
        last_error=error,
    )


def mark_failed(state: State, url: str, error: str, now: float, retry_after: Optional[float] = None) -> State:
    """``url`` failed a request: down at once, and the selection moves on."""
    old = state.record(url)
    hold_until = old.hold_until
    if retry_after is not None:
        hold_until = max(hold_until, now + min(RETRY_AFTER_CAP, max(0.0, retry_after)))
    health = _failed(old, error, now, hold_until)
    active = state.active
    if state.current() == url:
        active = _choose(state, now, exclude=url) or state.current()
    return _replace(state, url, health, active=active)


def mark_succeeded(state: State, url: str, now: float) -> State:
    """``url`` answered a request: healthy again; selected if the current one is down."""
    old = state.record(url)
    active = state.active
    current = state.record(state.current())
    if state.current() != url and (current.healthy is False or not current.available(now)):
        active = url
    if old.healthy is True and old.consecutive_failures == 0 and active == state.active:
        return state  # nothing to record: the hot path writes nothing
    health = dataclasses.replace(old, healthy=True, consecutive_failures=0, down_until=0.0)
    return _replace(state, url, health, active=active)


def apply_probes(state: State, results: Iterable[ProbeResult], now: float, *, select: bool) -> State:
    """Record probe results; with ``select``, choose the first healthy backend.

    A backend held by ``Retry-After`` is not selected even if it answered.
    When none is healthy the stored selection (else the first backend) stays.
    """
    table: Dict[str, Health] = dict(state.health)
    for result in results:
        old = table.get(result.url, _UNKNOWN)
        if result.healthy:
            new = dataclasses.replace(old, healthy=True, consecutive_failures=0, down_until=0.0, last_error=None)
        else:
            new = _failed(old, result.error, now, old.hold_until)
        table[result.url] = dataclasses.replace(new, last_latency_ms=result.latency_ms)
    if not select:
        return dataclasses.replace(state, health=table)
    probed = dataclasses.replace(state, health=table)
    active = next(
        (u for u in state.backends if probed.record(u).healthy and now >= probed.record(u).hold_until),
        state.active,
    )
    return dataclasses.replace(probed, active=active, checked_at=now, probing_until=0.0, probing_by=None)


def select_from_probes(
    order: Sequence[str], results: Mapping[str, ProbeResult], hold: Mapping[str, float], now: float
) -> Optional[str]:
    """Given results so far, the backend to select, or None while undecided.

    Decided as soon as some backend answered healthy and every backend before
    it in priority order has answered unhealthy (or is held by Retry-After).
    """
    for url in order:
        if now < hold.get(url, 0.0):
            continue
        result = results.get(url)
        if result is None:
            return None
        if result.healthy:
            return url
    return None
