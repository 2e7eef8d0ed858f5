"""Typed events: what observers (``observers=[...]``) and ``on_switch`` receive.

Three frozen dataclasses, one per thing that happens:

- :class:`AttemptEvent`: one per attempt of a request to a backend;
- :class:`ProbeEvent`: one per health probe of a backend;
- :class:`SwitchEvent`: one per change of the active backend.

An observer is any callable taking one event. It is called on the thread
where the event happened (a request's, or the background thread for probes);
one that raises is logged and ignored, never breaking a request. With no
observer, no event object is even built.

Backend URLs in events never carry userinfo; ``error`` strings never carry
secrets (they are the same short descriptions as in ``status()``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

log = logging.getLogger("requests_failover")

__all__ = ["AttemptEvent", "DemotionEvent", "Event", "Observer", "ProbeEvent", "SwitchEvent"]


@dataclass(frozen=True)
class SwitchEvent:
    """The active backend changed.

    ``previous`` and ``current`` are backend base URLs; ``reason`` says why,
    for example ``"health check"`` or ``"ConnectionError (NewConnectionError:
    ...)"``; ``at`` is unix time.
    """

    previous: str
    current: str
    reason: str
    at: float


@dataclass(frozen=True)
class AttemptEvent:
    """One attempt of one request, sent to one backend.

    ``outcome``:

    - ``"success"``: its answer was returned to the caller (any status that
      is the backend's real answer: 2xx, 3xx, 4xx, 501 ...);
    - ``"retried"``: it failed and the request went on to another attempt;
    - ``"failed"``: it failed and the request ended with it (no attempt left,
      or not safe to send again): its 5xx was returned or its error raised;
    - ``"raised"``: an error that is not the backend's fault (a bad URL, a bad
      header) was raised as requests raises it;
    - ``"abandoned"``: a hedge to another backend answered first; this
      attempt's answer, if it comes, is closed unread.

    ``status_code`` is the answer's status (None without one); ``error`` the
    exception's short description (None with an answer); ``duration`` seconds
    from sending to the answer's body read (or the error); ``attempt`` is 1 for
    the first attempt of the request; ``failover`` is true when the backend is
    not the one the request's plan started with; ``repeat`` when the same
    backend was already tried for this request.

    Response hedging (added in 0.3): ``hedge`` is true for an attempt sent
    while an earlier one was still waiting for its answer; ``won`` is None
    when no hedge raced the attempt, else whether its answer was the one
    returned.
    """

    backend: str
    method: str
    outcome: str
    status_code: Optional[int]
    error: Optional[str]
    duration: float
    attempt: int
    failover: bool
    repeat: bool
    at: float
    hedge: bool = False
    won: Optional[bool] = None


@dataclass(frozen=True)
class ProbeEvent:
    """One health probe of one backend: its paths tried in order until one decided.

    ``path`` is the last path asked; ``healthy`` the verdict (2xx, or the
    ``health_check`` callable's); ``status_code`` the last answer's status;
    ``duration`` seconds for the whole probe; ``error`` why it is unhealthy.
    """

    backend: str
    path: Optional[str]
    healthy: bool
    status_code: Optional[int]
    duration: Optional[float]
    error: Optional[str]
    at: float


Event = Union[SwitchEvent, AttemptEvent, ProbeEvent, "DemotionEvent"]
#: A callable receiving every event.
Observer = Callable[[Event], None]


def emit(observers: Sequence[Observer], event: Event) -> None:
    """Give ``event`` to every observer; one that raises is logged and ignored."""
    for observer in observers:
        try:
            observer(event)
        except Exception:
            log.exception("observer %r raised on %s", observer, type(event).__name__)


# -- latency-aware demotion ---------------------------------------------------------


@dataclass(frozen=True)
class DemotionEvent:
    """A backend was demoted for being slow, or trusted again after its trial.

    ``demoted`` is true when this process demoted ``backend`` (its answers
    stayed far slower than the others', or a read timeout; again after a slow
    trial, for a doubled cool-down), false when its trial answered fast and it
    is trusted again. ``reason`` says why (for example ``"read timeout after
    5.0 s"`` or ``"3 slow answers in a row (last: 2004 ms, bound 1000 ms)"``);
    ``until`` is the unix time its cool-down ends (None when trusted again),
    after which one request tries it; ``level`` counts demotions in a row
    (the cool-down is 5 s x 2 ** (level - 1), capped at 300 s); ``at`` is
    unix time.
    """

    backend: str
    demoted: bool
    reason: str
    until: Optional[float]
    level: int
    at: float
