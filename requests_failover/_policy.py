"""Selection logic: health records, marking down and up, choosing a backend.

Pure functions over an immutable :class:`State`; no I/O, no clock (callers
pass ``now``, unix seconds). Persistence (:mod:`._state`) and probing
(:mod:`._health`) live elsewhere, so this module is tested as plain data.

Down time after failures (elastic-transport's formula)::

    down_for = min(DOWN_CAP, DOWN_BASE * 2 ** (level - 1))

so 1 s, 2 s, 4 s ... capped at 30 s. ``level`` counts failures since the
backend was last *stable*: a success forgives them only once the last failure
is ``STABLE_AFTER`` seconds old, so a backend that flaps (fails again soon
after coming back) stays down longer each time. While a backend is down its
next health probe is due at ``down_until`` (the same schedule); a healthy
probe of a backend that failed is confirmed ``CONFIRM_AFTER`` seconds later,
and a higher-priority backend is taken back (failback) only after
``healthy_threshold`` consecutive healthy probes. A ``Retry-After`` on a 503
holds the backend down for that long (capped at ``RETRY_AFTER_CAP``) even if
its health probe answers meanwhile.

Latency-aware demotion (``demote_slow``). Each process keeps, in memory and
per backend, an EWMA of its API latencies (``EWMA_ALPHA`` = 0.3; a sample is
the seconds from sending to the complete answer) and a *streak* of
consecutive slow samples. A sample is slow when it exceeds::

    bound = max(DEMOTE_RATIO * best, best + DEMOTE_MARGIN)   # 4 x, + 0.25 s

where ``best`` is the lowest EWMA among the other backends this process has
samples of, or ``bound = DEMOTE_ABSOLUTE`` (1 s) when it has none. A backend
is demoted after ``SLOW_STREAK`` (3) slow samples in a row (a single outlier,
a 2 % tail, never demotes; a backend that stays slow does, within three
answers), and at once on a read timeout (the caller's whole read timeout
went by: a hung API is demoted after its first one). A request abandoned
because a hedge to another backend won counts as one slow sample. Only a
backend with somewhere better to go is demoted (another backend that is
available and not demoted).

A demoted backend is ranked after every available backend that is not
demoted (:func:`ranked_plan`), whatever its health probes say: a passing
probe does not undo a demotion. Its cool-down::

    cool_down = min(DEMOTE_CAP, DEMOTE_BASE * 2 ** (demotion_level - 1))

5 s, 10 s, 20 s ... capped at 5 minutes. Once over, the next request that
would go to it first is its *trial* (one request per process at a time): a
slow answer (or a read timeout) demotes it again for a doubled cool-down; an
answer within the bound takes it back (the demotion fields clear). Demotion
is a health record like any other, shared through the state file and the
store; the latency samples are not (a State write per request would cost
every request a lock and a write): only a demotion and its end are written.

Slow start (``slow_start`` seconds, the window; 0 turns it off). When a
backend is taken back (failback from a probe, or the end of a demotion) its
``recovered_at`` is recorded, and for ``window`` seconds (times a per-process
jitter) a request goes to it first only with probability::

    share = SLOW_START_FLOOR + (1 - SLOW_START_FLOOR) * elapsed / window   # 10 % -> 100 %

else to the next available backend first (:func:`slow_start_share`), so a
fleet sharing one store moves its load back gradually, not in one instant.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

DOWN_BASE = 1.0
DOWN_CAP = 30.0
RETRY_AFTER_CAP = 60.0
CLOCK_SLACK = 5.0
#: Seconds after the last failure from which a success resets ``level``.
STABLE_AFTER = 60.0
#: Seconds between a recovering backend's healthy probes (until it is taken back).
CONFIRM_AFTER = 1.0

#: Latency-aware demotion (see the module docstring).
EWMA_ALPHA = 0.3
DEMOTE_RATIO = 4.0
DEMOTE_MARGIN = 0.25  # seconds
DEMOTE_ABSOLUTE = 1.0  # seconds: the bound when no other backend has samples
SLOW_STREAK = 3
#: An answer this fast is never slow: every bound is at least this (``max(..., best + DEMOTE_MARGIN)``).
FAST_ENOUGH = DEMOTE_MARGIN
DEMOTE_BASE = 5.0
DEMOTE_CAP = 300.0
#: Slow start: the share of requests a just-recovered backend gets first.
SLOW_START_FLOOR = 0.1


@dataclass(frozen=True)
class Health:
    """What is known of one backend."""

    healthy: Optional[bool] = None  # None: never checked
    consecutive_failures: int = 0
    down_until: float = 0.0  # not tried outside a probe before this
    hold_until: float = 0.0  # Retry-After: not selected before this, probe or not
    last_latency_ms: Optional[float] = None
    last_error: Optional[str] = None
    level: int = 0  # failures since the backend was last stable: the down-time exponent
    successes: int = 0  # consecutive healthy probes or answers since the last failure
    failed_at: float = 0.0  # unix time of the last failure
    probed_at: float = 0.0  # unix time of the last probe result
    demoted_until: float = 0.0  # slow: ranked last until then, then on trial (see demotion_reason)
    demotion_level: int = 0  # demotions in a row: the cool-down exponent
    demotion_reason: Optional[str] = None  # why it is demoted; None: not demoted
    recovered_at: float = 0.0  # unix time it was last taken back: slow start counts from it

    def available(self, now: float) -> bool:
        return now >= self.down_until and now >= self.hold_until

    def eligible(self, threshold: int) -> bool:
        """Healthy and trusted: never failed since it was stable, or confirmed ``threshold`` times."""
        return self.healthy is True and (self.level == 0 or self.successes >= threshold)

    def demoted(self) -> bool:
        """Demoted for slowness: cooling down, or (cool-down over) waiting for its trial."""
        return self.demotion_reason is not None


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
    duration: Optional[float] = None  # seconds for the whole probe (every path asked)


def _replace(state: State, url: str, health: Health, **changes: object) -> State:
    table: Dict[str, Health] = dict(state.health)
    table[url] = health
    return dataclasses.replace(state, health=table, **changes)  # type: ignore[arg-type]  # changes are State fields


#: No down, hold, failure or probe time this library writes lies further ahead than this (seconds).
HORIZON = max(DOWN_CAP, RETRY_AFTER_CAP)
#: No time at all lies further ahead than this (a demotion's cool-down, at most).
FURTHEST = max(HORIZON, DEMOTE_CAP)


def clamp(state: State, now: float) -> State:
    """``state`` with every time further ahead of ``now`` than the library writes brought back.

    As decoding a stored document does (:data:`HORIZON` for down, hold,
    failure and probe times, ``DEMOTE_CAP`` for a cool-down, now for a
    recovery): such a time was written before the wall clock stepped back.
    Without this a step back of an hour would keep a backend down, or held
    by ``Retry-After``, for an hour. Returns ``state`` itself when nothing is
    that far ahead (the common case: no allocation).
    """
    horizon = now + HORIZON
    far = [
        url
        for url, h in state.health.items()
        if max(h.down_until, h.hold_until, h.failed_at, h.probed_at) > horizon
        or h.demoted_until > now + DEMOTE_CAP
        or h.recovered_at > now
    ]
    if not far and state.probing_until <= horizon:
        return state
    table: Dict[str, Health] = dict(state.health)
    for url in far:
        h = table[url]
        table[url] = dataclasses.replace(
            h,
            down_until=min(h.down_until, horizon),
            hold_until=min(h.hold_until, horizon),
            failed_at=min(h.failed_at, horizon),
            probed_at=min(h.probed_at, horizon),
            demoted_until=min(h.demoted_until, now + DEMOTE_CAP),
            recovered_at=min(h.recovered_at, now),
        )
    return dataclasses.replace(state, health=table, probing_until=min(state.probing_until, horizon))


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
    level = min(old.level + 1, 64)
    down_for = min(DOWN_CAP, DOWN_BASE * 2 ** (level - 1))
    return dataclasses.replace(
        old,
        healthy=False,
        consecutive_failures=old.consecutive_failures + 1,
        level=level,
        successes=0,
        failed_at=now,
        down_until=max(now + down_for, hold_until),
        hold_until=hold_until,
        last_error=error,
    )


def _succeeded(old: Health, now: float) -> Health:
    """``old`` after a success (a healthy probe or an answer)."""
    level = 0 if now - old.failed_at >= STABLE_AFTER else old.level
    return dataclasses.replace(
        old, healthy=True, consecutive_failures=0, down_until=0.0, successes=old.successes + 1, level=level
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
    """``url`` answered a request: healthy again; selected if the current one is down.

    Returns ``state`` itself when nothing changes (the caller then writes
    nothing): first of all, cheaply, when the selected backend answered as
    expected, the hot path of every request.
    """
    old = state.record(url)
    if old.healthy is True and old.consecutive_failures == 0 and url == state.current():
        return state
    if old.failed_at > now:
        return state  # a failure recorded after this answer wins (see :func:`_apply_probes`)
    active = state.active
    current = state.record(state.current())
    if state.current() != url and (current.healthy is False or not current.available(now)):
        active = url
    if old.healthy is True and old.consecutive_failures == 0 and active == state.active:
        return state  # nothing to record: the hot path writes nothing
    return _replace(state, url, _succeeded(old, now), active=active)


def apply_probes(
    state: State, results: Iterable[ProbeResult], now: float, *, select: bool, threshold: int = 2
) -> State:
    """Record probe results and choose (:func:`_apply_probes`); a backend taken back starts its slow start."""
    return _note_failback(state, _apply_probes(state, results, now, select=select, threshold=threshold), now)


def _apply_probes(
    state: State, results: Iterable[ProbeResult], now: float, *, select: bool, threshold: int = 2
) -> State:
    """Record probe results and choose.

    With ``select`` (a full probe round) the first *eligible* backend in
    priority order is chosen (healthy, not held by ``Retry-After``, and either
    never failed since it was stable or confirmed ``threshold`` times), else
    the first healthy one, else the stored selection stays. Without it (a
    failback probe, a late result) the selection moves only to a backend of
    higher priority than the current one that is eligible.
    """
    table: Dict[str, Health] = dict(state.health)
    for result in results:
        old = table.get(result.url, _UNKNOWN)
        if result.healthy and old.failed_at > now:
            # A failure recorded after this answer (by another process, or a request of ours
            # published at once while this result waited to be written behind) wins: a success
            # observed earlier never undoes it when it is replayed onto a newer state.
            continue
        new = _succeeded(old, now) if result.healthy else _failed(old, result.error, now, old.hold_until)
        if result.healthy:
            new = dataclasses.replace(new, last_error=None)
        table[result.url] = dataclasses.replace(new, last_latency_ms=result.latency_ms, probed_at=now)
    probed = dataclasses.replace(state, health=table)

    def usable(url: str) -> bool:
        return now >= probed.record(url).hold_until

    if not select:
        current = state.backends.index(state.current())
        better = next((u for u in state.backends[:current] if usable(u) and probed.record(u).eligible(threshold)), None)
        return probed if better is None else dataclasses.replace(probed, active=better)
    active = next((u for u in state.backends if usable(u) and probed.record(u).eligible(threshold)), None)
    if active is None:
        active = next((u for u in state.backends if usable(u) and probed.record(u).healthy), state.active)
    return dataclasses.replace(probed, active=active, checked_at=now, probing_until=0.0, probing_by=None)


def probes_due(state: State, now: float, threshold: int) -> Dict[str, float]:
    """When each backend of higher priority than the current one is next probed (failback).

    A backend that failed is probed when its down time ends; one that answered
    healthy but is not yet confirmed, ``CONFIRM_AFTER`` after that probe; one
    never probed, now. A ``Retry-After`` hold delays all of them.
    """
    current = state.backends.index(state.current())
    due: Dict[str, float] = {}
    for url in state.backends[:current]:
        health = state.record(url)
        if health.eligible(threshold) and now >= health.hold_until:
            due[url] = now  # ready to be taken back: one more probe decides
        elif health.healthy is None:
            due[url] = max(now, health.hold_until)
        elif health.healthy:
            due[url] = max(health.probed_at + CONFIRM_AFTER, health.hold_until)
        else:
            due[url] = max(health.down_until, health.hold_until)
    return due


def select_from_probes(
    order: Sequence[str],
    results: Mapping[str, ProbeResult],
    hold: Mapping[str, float],
    now: float,
    skip_pending: bool = False,
) -> Optional[str]:
    """Given results so far, the backend to select, or None while undecided.

    Decided as soon as some backend answered healthy and every backend before
    it in priority order has answered unhealthy (or is held by Retry-After).
    With ``skip_pending`` (the hedge delay has passed), backends that have not
    answered yet are passed over too.
    """
    for url in order:
        if now < hold.get(url, 0.0):
            continue
        result = results.get(url)
        if result is None:
            if skip_pending:
                continue
            return None
        if result.healthy:
            return url
    return None


# -- latency-aware demotion and slow start (see the module docstring) ---------------


def _note_failback(before: State, after: State, now: float) -> State:
    """``after``, with ``recovered_at`` set if its selection moved to a backend of higher priority."""
    current = after.current()
    if after.backends.index(current) >= before.backends.index(before.current()):
        return after
    return _replace(after, current, dataclasses.replace(after.record(current), recovered_at=now))


def ewma(previous: Optional[float], sample: float) -> float:
    """The latency average after one more sample (the first sample starts it)."""
    return sample if previous is None else previous + EWMA_ALPHA * (sample - previous)


def slow_bound(best: Optional[float]) -> float:
    """Seconds above which an answer is slow, given the best other backend's EWMA (None: no samples)."""
    if best is None:
        return DEMOTE_ABSOLUTE
    return max(DEMOTE_RATIO * best, best + DEMOTE_MARGIN)


def cool_down(level: int) -> float:
    """Seconds a backend stays demoted after its ``level``-th demotion in a row."""
    return min(DEMOTE_CAP, DEMOTE_BASE * 2.0 ** (min(max(level, 1), 64) - 1))


def can_demote(state: State, url: str, now: float) -> bool:
    """Whether demoting ``url`` would move requests anywhere: another backend is available and not demoted."""
    return any(u != url and state.record(u).available(now) and not state.record(u).demoted() for u in state.backends)


def demote(state: State, url: str, reason: str, now: float) -> State:
    """``url`` is slow: ranked last for the next cool-down (doubled if it was demoted already)."""
    old = state.record(url)
    if old.demoted() and now < old.demoted_until:
        return state  # already cooling down (another thread's or process's verdict came first)
    level = min(old.demotion_level + 1, 64) if old.demoted() else 1
    health = dataclasses.replace(
        old, demoted_until=now + cool_down(level), demotion_level=level, demotion_reason=reason[:300]
    )
    return _replace(state, url, health)


def restore(state: State, url: str, now: float) -> State:
    """``url`` answered fast on its trial: trusted again, from now on its slow start."""
    old = state.record(url)
    if not old.demoted():
        return state
    health = dataclasses.replace(old, demoted_until=0.0, demotion_level=0, demotion_reason=None, recovered_at=now)
    return _replace(state, url, health)


def trial_due(state: State, now: float) -> Optional[str]:
    """The demoted backend whose cool-down is over and that would get requests first, or None."""
    first = state.current()  # what plan() puts first when nothing is demoted
    health = state.record(first)
    return first if health.demoted() and now >= health.demoted_until else None


def ranked_plan(state: State, now: float, trial: Optional[str] = None) -> List[str]:
    """:func:`plan`, with demoted backends (but ``trial``) after every available one that is not demoted.

    The order among backends of one rank stays :func:`plan`'s; when every
    backend is demoted, nothing moves (a backend is always returned).
    """
    order = plan(state, now)

    def rank(position: int) -> int:
        url = order[position]
        health = state.record(url)
        if health.demoted() and url != trial:
            return 1
        return 0 if position == 0 or health.available(now) else 2

    ranks = [rank(i) for i in range(len(order))]
    if 1 not in ranks:
        return order
    return [order[i] for i in sorted(range(len(order)), key=lambda i: ranks[i])]


def slow_start_share(health: Health, now: float, window: float) -> Optional[float]:
    """The share of requests a just-recovered backend gets first (None: not in slow start)."""
    if window <= 0 or health.recovered_at <= 0:
        return None
    elapsed = max(0.0, now - health.recovered_at)
    if elapsed >= window:
        return None
    return SLOW_START_FLOOR + (1.0 - SLOW_START_FLOOR) * elapsed / window
