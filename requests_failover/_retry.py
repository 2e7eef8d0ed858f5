"""Retry policy: classifying outcomes, backoff, and the retry budget.

Outcomes are sorted by urllib3's question: *did the server receive the
request?* A connection that was never made (refused, DNS, connect timeout,
TLS handshake, proxy) did not reach it, so any method may go elsewhere. A
read timeout or a reset after sending may have reached it, and so may a
500/502/503/504 answer: only idempotent methods, or requests carrying an
``Idempotency-Key`` header, go elsewhere then. Every other answer (2xx, 3xx,
4xx, other 5xx) is the backend's real answer and is returned.

Backoff before trying a backend *again* within one request::

    delay = retry_delay * 2 ** (repeat - 1) * uniform(0.5, 1.0)

(repeat = 1 for the first repeat). A backend not yet tried for this request
is tried without delay.
"""

from __future__ import annotations

import email.utils
import enum
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Union

import requests
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NewConnectionError

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
RETRY_STATUSES = frozenset({500, 502, 503, 504})


class Verdict(enum.Enum):
    SUCCESS = "success"  # the backend answered; return the response
    RETRY = "retry"  # the backend failed; safe to try another one
    FAILED = "failed"  # the backend failed; unsafe to send the request again
    RAISE = "raise"  # not the backend's fault (bad URL, bad header...): raise as is


def is_idempotent(method: Optional[str], headers: Mapping[str, Any]) -> bool:
    return (method or "GET").upper() in IDEMPOTENT_METHODS or "Idempotency-Key" in headers


def reached_server(exc: BaseException) -> Optional[bool]:
    """Whether the request may have reached the server; None: not a network failure."""
    if isinstance(
        exc, (requests.exceptions.ConnectTimeout, requests.exceptions.SSLError, requests.exceptions.ProxyError)
    ):
        return False
    if isinstance(exc, (requests.exceptions.ReadTimeout, requests.exceptions.ChunkedEncodingError)):
        return True  # the answer was cut off: the request certainly arrived
    if isinstance(exc, requests.exceptions.ConnectionError):
        reason: Any = exc.args[0] if exc.args else None
        if isinstance(reason, MaxRetryError):
            reason = reason.reason
        # Never connected: NewConnectionError (and NameResolutionError) subclass
        # ConnectTimeoutError. Anything else (reset, protocol error, unknown):
        # assume the request arrived.
        return not isinstance(reason, (NewConnectionError, ConnectTimeoutError))
    return None


def never_connected(exc: BaseException) -> bool:
    """Whether no connection was ever made, so no byte of the request left us.

    Narrower than ``reached_server(exc) is False``: a TLS or proxy error may
    come after a body began to stream. Used to fail over a body that cannot
    be rewound (a generator, an upload stream): it was provably not consumed.
    """
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return True
    if isinstance(exc, requests.exceptions.ConnectionError) and not isinstance(
        exc, (requests.exceptions.SSLError, requests.exceptions.ProxyError)
    ):
        reason: Any = exc.args[0] if exc.args else None
        if isinstance(reason, MaxRetryError):
            reason = reason.reason
        return isinstance(reason, (NewConnectionError, ConnectTimeoutError))
    return False


def classify(
    method: Optional[str],
    headers: Mapping[str, Any],
    *,
    response: Optional[requests.Response] = None,
    error: Optional[BaseException] = None,
) -> Verdict:
    """The one place that decides what an attempt's outcome means."""
    if response is not None and response.status_code not in RETRY_STATUSES:
        return Verdict.SUCCESS  # the common case first
    if error is not None:
        reached = reached_server(error)
        if reached is None:
            return Verdict.RAISE
        if not reached or is_idempotent(method, headers):
            return Verdict.RETRY
        return Verdict.FAILED
    assert response is not None
    if response.status_code not in RETRY_STATUSES:
        return Verdict.SUCCESS
    return Verdict.RETRY if is_idempotent(method, headers) else Verdict.FAILED


def retry_after(response: requests.Response, now: Optional[float] = None) -> Optional[float]:
    """Seconds from a 503's ``Retry-After`` (delta-seconds or HTTP-date), else None."""
    if response.status_code != 503:
        return None
    value = response.headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def backoff(retry_delay: float, repeat: int, rng: Union[random.Random, Any] = random) -> float:
    """Delay before the ``repeat``-th repeat of a backend (see module docstring)."""
    return float(retry_delay * 2 ** (repeat - 1) * rng.uniform(0.5, 1.0))


@dataclass
class RetryBudget:
    """How much extra load one adapter's requests may add: repeats and hedges.

    Repeats (a backend tried again within one request) are limited by a token
    bucket, as gRPC's retry throttling: each failed attempt takes one token,
    each success gives back ``ratio``; a repeat is allowed only while more
    than half the tokens remain. The first attempt on each backend is never
    throttled: failing over to a backend not yet tried adds at most one
    request per backend. Repeats, which multiply load on sick backends, stop
    when failures dominate.

    Hedges (a slow answer's request sent to a second backend, see
    :mod:`._hedge`) share that bucket (no hedge while repeats are throttled)
    and draw on a second one, Finagle's ``maxExtraLoad``: every request
    deposits ``extra_ratio`` hedges, up to ``extra_capacity``, and each hedge
    takes one. Over any stretch of ``n`` requests, at most
    ``extra_capacity + extra_ratio * n`` are hedged: under saturation, when
    every answer is slow, hedging adds ``extra_ratio`` (5 %) to the load and
    never doubles it.
    """

    capacity: float = 10.0
    ratio: float = 0.1
    extra_ratio: float = 0.05
    extra_capacity: float = 3.0

    def __post_init__(self) -> None:
        self._tokens = self.capacity
        self._extra = self.extra_capacity
        self._lock = threading.Lock()

    def failed(self) -> None:
        with self._lock:
            self._tokens = max(0.0, self._tokens - 1)

    def succeeded(self) -> None:
        if self._tokens < self.capacity:
            with self._lock:
                self._tokens = min(self.capacity, self._tokens + self.ratio)

    def allows_repeat(self) -> bool:
        return self._tokens > self.capacity / 2

    def requested(self) -> None:
        """A request started: it earns ``extra_ratio`` of a hedge (no lock while the bucket is full)."""
        if self._extra < self.extra_capacity:
            with self._lock:
                self._extra = min(self.extra_capacity, self._extra + self.extra_ratio)

    def refund_hedge(self) -> None:
        """Give back a hedge taken but never sent."""
        with self._lock:
            self._extra = min(self.extra_capacity, self._extra + 1.0)

    def take_hedge(self) -> bool:
        """Take one hedge from the budget; False (nothing taken) when it is spent or repeats are throttled."""
        with self._lock:
            if self._extra < 1.0 - 1e-9 or not self._tokens > self.capacity / 2:
                return False
            self._extra -= 1.0
            return True
