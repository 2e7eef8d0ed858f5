"""Sending one request's attempts: the adapter's machinery behind ``send``.

:class:`FailoverAdapter <requests_failover.adapter.FailoverAdapter>` matches a
URL to a backend and keeps the selection fresh; then :class:`Dispatcher` sends
the request's attempts in the order :class:`._attempts.Attempts` (pure) says:

- a slow new connect is raced against the next backend's, and a backend that
  lost a race is suspect until its connect settles (:class:`ConnectRacer`,
  over :mod:`._hedge`'s ``Race``);
- an attempt to a backend whose answers were clearly slow lately runs on a
  worker thread so that a late answer can be hedged to the next backend
  (:mod:`._hedge`); otherwise it runs on the caller's thread, as a plain
  ``HTTPAdapter`` would;
- every URL sent comes from the one rewrite (:func:`rewrite`, through
  :meth:`Route.to`), and every outcome is classified once
  (:meth:`._attempts.Attempts.record`) and recorded in the selection in one
  place (:meth:`Dispatcher._account`).

What really sends is lent by the adapter as a :class:`Link` of callables
(the user's mounted adapter for a URL, else the adapter's own ``HTTPAdapter``
pools), so nothing here holds the adapter or the session: data flows one way.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional, Sequence, Tuple

import requests
from requests.adapters import BaseAdapter
from requests.auth import HTTPBasicAuth
from requests.utils import rewind_body, select_proxy
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NewConnectionError
from urllib3.exceptions import SSLError as Urllib3SSLError
from urllib3.util.timeout import Timeout as Urllib3Timeout

from . import _runtime
from ._attempts import Attempt, Attempts, Outcome, may_hedge
from ._config import Backend, Options
from ._environment import readdress
from ._health import describe_error
from ._hedge import ConnectTimes, Flight, Latencies, Race, Suspects, Workers, has_idle_connection
from ._retry import RetryBudget, Verdict
from ._selection import SLOW_HEDGE_LOST, SLOW_READ_TIMEOUT, Selection
from ._urllib3 import next_slot_alive
from .events import AttemptEvent, emit

__all__ = ["ConnectRacer", "Dispatcher", "Link", "Route", "rewrite"]

#: ``proxies_for(target, source, proxies)``: the proxies of a request sent to ``target``
#: whose URL named ``source`` (None: a probe), given those requests computed.
ProxiesFor = Callable[[Backend, Optional[Backend], Optional[Mapping[str, str]]], Any]


class Link(NamedTuple):
    """What the adapter lends its dispatcher: how one request is really sent, and its own pools.

    Callables rather than the adapter itself, so that what sending may do with
    the adapter is written here, in one place.
    """

    #: ``send(request, **kwargs)``: one request, no failover: through :attr:`mounted`'s
    #: adapter for its URL, else the adapter's own pools (``HTTPAdapter.send``).
    send: Callable[..., requests.Response]
    #: ``mounted(url)``: ``transport``, or a user's adapter mounted for ``url``; None: our own pools send.
    mounted: Callable[[str], Optional[BaseAdapter]]
    #: ``open_pool(request, verify, cert)``: the urllib3 pool our own ``HTTPAdapter`` sends ``request`` with.
    open_pool: Callable[[requests.PreparedRequest, Any, Any], Any]
    #: ``pooled(pool)``: whether ``pool`` is still our pool manager's (not evicted, not closed).
    pooled: Callable[[Any], bool]


class Route:
    """One request on its way: the request as the caller prepared it, the backend
    its URL names, the rest of its URL, and the proxies requests computed for it.
    Every URL sent to a backend (attempt, race rival, hedge) comes from :meth:`to`.

    :param derive: ``proxies_for`` (see :data:`ProxiesFor`) deciding the proxies
        of attempts to other backends; None: ``proxies`` as given for all.
    """

    __slots__ = ("_derive", "derived", "proxies", "request", "rest", "source")

    def __init__(
        self,
        request: requests.PreparedRequest,
        source: Backend,
        rest: str,
        proxies: Optional[Mapping[str, str]],
        derive: Optional[ProxiesFor] = None,
    ) -> None:
        self.request, self.source, self.rest, self.proxies = request, source, rest, proxies
        self._derive = derive
        self.derived: Dict[str, Any] = {}  # backend url -> the proxies of its attempts

    def to(self, backend: Backend) -> requests.PreparedRequest:
        """The request addressed to ``backend`` (see :func:`rewrite`)."""
        return rewrite(self.request, self.source, self.rest, backend)

    def proxies_to(self, backend: Backend) -> Any:
        """The proxies of the request's attempts to ``backend``: as given for the backend the URL
        names, else derived for ``backend`` (once per backend and request)."""
        if backend is self.source or self._derive is None:
            return self.proxies
        if backend.url not in self.derived:
            self.derived[backend.url] = self._derive(backend, self.source, self.proxies)
        return self.derived[backend.url]

    def replayable(self) -> bool:
        """Whether the body can be sent again: bytes, str, or a stream that can seek back."""
        body: object = self.request.body  # typed bytes | str | None, but streams and generators are accepted
        if body is None or isinstance(body, (bytes, str)):
            return True
        position = getattr(self.request, "_body_position", None)
        return hasattr(body, "seek") and isinstance(position, int)

    def rewind(self) -> None:
        """Rewind a seekable body before it is sent again."""
        body: object = self.request.body
        if body is not None and hasattr(body, "seek"):
            rewind_body(self.request)


def rewrite(request: requests.PreparedRequest, source: Backend, rest: str, target: Backend) -> requests.PreparedRequest:
    """``request`` addressed to ``target``: a copy, so the caller's request is never
    changed. To the backend the URL names, it goes as is, as plain requests sends it."""
    auth = target.auth
    if auth is not None and "Authorization" in request.headers:
        auth = None  # the caller's own credentials win
    if target is source and auth is None:
        return request
    outgoing = request.copy()
    if target is not source:
        outgoing.url = target.url + rest
        auth = readdress(request, outgoing, target, auth)
    if auth is not None:
        outgoing = HTTPBasicAuth(*auth)(outgoing)
    return outgoing


#: What a sent attempt comes back as: its answer, its error, and how long it took (seconds).
Exchanged = Tuple[Optional[requests.Response], Optional[BaseException], float]
#: What lands for an attempt whose worker ended without an answer or an error (never expected).
_NO_ANSWER = RuntimeError("requests-failover: a hedging worker ended without an answer")
_FINAL_OUTCOME = {Verdict.SUCCESS: "success", Verdict.RAISE: "raised"}


class Dispatcher:
    """Sends each request's attempts and records their outcomes: the adapter's sending machinery.

    It owns what sending keeps across requests: the retry budget, the recent
    answer times of each backend (which arm hedging), the worker threads of
    hedged attempts and the :class:`ConnectRacer` (None where no connect is
    raced: ``hedge_delay=None``, or a ``transport`` sends). Outcomes go to the
    ``selection`` (and to the observers as :class:`~requests_failover.events.AttemptEvent`).
    """

    def __init__(self, options: Options, selection: Selection, link: Link) -> None:
        self._options = options
        self._selection = selection
        self._link = link
        self._budget = RetryBudget()
        self._latencies = Latencies()
        self._workers = Workers()
        self._racer: Optional[ConnectRacer] = None
        if options.hedge_delay is not None and options.transport is None:
            self._racer = ConnectRacer(options, selection, link)

    def send(
        self, route: Route, plan: Sequence[Backend], timeout: Any, started: float, kwargs: Dict[str, Any]
    ) -> requests.Response:
        """Send ``route``'s request along ``plan`` until :class:`Attempts` says stop; its answer, or its error.

        :param timeout: the request's timeout; ``started`` (monotonic seconds)
            is when its deadline began.
        :param kwargs: ``stream``, ``verify``, ``cert``, ``proxies``, as given to ``send``.
        """
        request = route.request
        attempts = Attempts(
            plan,
            request.method,
            request.headers,
            timeout=timeout,
            started=started,
            max_retries=self._options.max_retries,
            retry_delay=self._options.retry_delay,
            budget=self._budget,
            replayable=route.replayable(),
        )
        try:
            attempt = attempts.next(time.monotonic())
            while attempt is not None:
                self._perform(attempts, attempt, route, kwargs)
                attempt = attempts.next(time.monotonic())
            return attempts.result(route.source, request)
        finally:
            if self._options.observers and attempts.outcomes:
                self._emit_attempts(attempts)

    def after_fork(self) -> None:
        """In a forked child: the parent's worker threads do not exist here, nor its pooled sockets.

        The budget is rebuilt too: its lock may have been held by a thread of
        the parent that does not exist in the child.
        """
        self._workers = Workers()
        self._budget = RetryBudget()
        if self._racer is not None:
            self._racer.after_fork()

    def close(self) -> None:
        """Stop the worker threads and close the race's pools."""
        self._workers.close()
        if self._racer is not None:
            self._racer.close()

    def _perform(self, attempts: Attempts, attempt: Attempt, route: Route, kwargs: Dict[str, Any]) -> None:
        """Send one attempt (after its backoff), racing its connect or hedging its answer where that applies."""
        if attempt.delay:
            _runtime.sleep(attempt.delay)
        if attempt.number > 1:
            route.rewind()
        sent_at = time.monotonic()
        if self._racer is not None and not attempt.hedge:
            try:
                attempt = self._racer.direct(attempts, attempt, route, kwargs)
            except Exception as exc:
                self._account(attempts.record(attempt, time.monotonic() - sent_at, error=exc))
                return
        if self._hedgeable(attempts, attempt, route, kwargs):
            self._hedged(attempts, attempt, route, kwargs)
            return
        response, error, took = self._exchange(attempt, route, kwargs, sent_at)
        self._account(attempts.record(attempt, took, response=response, error=error))

    def _hedgeable(self, attempts: Attempts, attempt: Attempt, route: Route, kwargs: Mapping[str, Any]) -> bool:
        """Whether ``attempt``'s answer may be hedged: hedging is on and armed for its backend,
        the request may be sent twice, and another backend is left to send it to."""
        return (
            self._options.hedge_requests
            and self._options.hedge_delay is not None  # None: no hedging of any kind, as in 0.2
            and not kwargs["stream"]
            and self._latencies.armed(attempt.backend.url)
            and may_hedge(route.request.method, route.request.headers)
            and isinstance(route.request.body, (bytes, str, type(None)))  # two threads cannot share a stream
            and attempts.rival() is not None
        )

    def _exchange(
        self,
        attempt: Attempt,
        route: Route,
        kwargs: Mapping[str, Any],
        sent_at: float,
        flight: Optional[Flight] = None,
    ) -> Exchanged:
        """Send ``attempt`` and read its answer; never raises. A ``flight`` given up meanwhile closes the answer."""
        try:
            proxies = route.proxies_to(attempt.backend)
            outgoing = route.to(attempt.backend)
            response = self._link.send(outgoing, timeout=attempt.timeout, **{**kwargs, "proxies": proxies})
            if flight is not None and flight.given_up(attempt):
                response.close()  # never read: its connection is closed, not pooled half-read
                return None, None, time.monotonic() - sent_at
            if not kwargs["stream"]:
                # What Session.send would do right after; done here so that a
                # body cut off by a dying backend fails over like any error.
                response.content  # noqa: B018
            return response, None, time.monotonic() - sent_at
        except Exception as exc:
            return None, exc, time.monotonic() - sent_at

    def _hedged(self, attempts: Attempts, attempt: Attempt, route: Route, kwargs: Mapping[str, Any]) -> None:
        """Send ``attempt`` on a worker; if its answer is late, send a hedge to the next backend too.

        The first success wins; a failure waits for the other attempt still in
        flight; the loser is given up (:meth:`Flight.decide`). Every outcome
        is recorded here, on the caller's thread.
        """
        flight = Flight()
        if not self._launch(flight, attempt, route, kwargs):
            response, error, took = self._exchange(attempt, route, kwargs, time.monotonic())
            self._account(attempts.record(attempt, took, response=response, error=error))
            return
        landed = flight.wait(self._latencies.delay(attempt.backend.url))
        if landed is None:
            hedge = attempts.hedge(time.monotonic())
            if hedge is not None and (self._suspect(hedge.backend) or not self._launch(flight, hedge, route, kwargs)):
                attempts.withdraw(hedge)  # its connect would wait on a black hole, or no worker is free
        while landed is not None or flight.in_flight:
            if landed is None:
                landed = flight.wait(None)
                assert landed is not None  # one is in flight: it lands
            sent, response, error, took = landed
            landed = None
            outcome = attempts.record(sent, took, response=response, error=error, hedged=len(flight.started) > 1)
            self._account(outcome)
            if outcome.verdict is Verdict.SUCCESS or attempts.done:
                for loser, seconds in flight.decide(sent):
                    self._account(attempts.abandoned(loser, seconds))
                return

    def _suspect(self, backend: Backend) -> bool:
        """Whether ``backend``'s connect lost a race and is still pending (see :mod:`._hedge`)."""
        return self._racer is not None and self._racer.suspect(backend)

    def _launch(self, flight: Flight, attempt: Attempt, route: Route, kwargs: Mapping[str, Any]) -> bool:
        """Start ``attempt`` of ``flight`` on a worker thread; False when none is free."""
        sent_at = flight.start(attempt)

        def job() -> None:
            # Whatever happens, something lands: the caller waits for it.
            landed: Exchanged = (None, _NO_ANSWER, 0.0)
            try:
                landed = self._exchange(attempt, route, kwargs, sent_at, flight)
            finally:
                flight.land(attempt, *landed)

        if self._workers.submit(job):
            return True
        flight.cancel(attempt)
        return False

    def _account(self, outcome: Outcome) -> None:
        """Record one classified outcome in the selection and the latency history: the one place that does."""
        backend = outcome.attempt.backend
        if outcome.verdict is Verdict.SUCCESS:
            self._latencies.add(backend.url, outcome.duration)
            self._selection.record_success(backend, latency=outcome.duration)
        elif outcome.abandoned:
            if not outcome.attempt.hedge:  # an abandoned hedge started late: it says nothing of its backend
                self._latencies.slow(backend.url, outcome.duration)
                self._selection.record_slow(backend, outcome.duration, SLOW_HEDGE_LOST)
        elif outcome.verdict is not Verdict.RAISE:
            if outcome.read_timeout:
                self._latencies.slow(backend.url, outcome.duration)
                self._selection.record_slow(backend, outcome.duration, SLOW_READ_TIMEOUT)
            self._selection.record_failure(backend, outcome.error or "failed", outcome.retry_after)

    def _emit_attempts(self, attempts: Attempts) -> None:
        """One AttemptEvent per attempt: every one but the last went on to another attempt
        (or was abandoned: a hedge answered first)."""
        now = _runtime.now()
        outcomes = attempts.outcomes
        first = attempts.plan[0]
        final = max((i for i, o in enumerate(outcomes) if not o.abandoned), default=len(outcomes))
        for number, outcome in enumerate(outcomes):
            attempt = outcome.attempt
            if outcome.abandoned:
                verdict = "abandoned"
            elif number < final:
                verdict = "retried"
            else:
                verdict = _FINAL_OUTCOME.get(outcome.verdict, "failed")
            event = AttemptEvent(
                backend=attempt.backend.url,
                method=attempts.method or "GET",
                outcome=verdict,
                status_code=outcome.status_code,
                error=None if outcome.status_code is not None else outcome.error,
                duration=outcome.duration,
                attempt=attempt.number,
                failover=attempt.backend is not first,
                repeat=attempt.tries > 1,
                at=now,
                hedge=attempt.hedge,
                won=outcome.won,
            )
            emit(self._options.observers, event)


class ConnectRacer:
    """Where an attempt really goes: its backend, or the rival its slow new connect was raced against.

    It owns what the race (:mod:`._hedge`) keeps across requests: our own
    urllib3 pools for it, by (origin, verify, cert); each backend's recent
    connect times (the adaptive delay); and the suspects, backends whose
    connect lost a race and is still pending. Only our own pools are raced:
    a URL that a user's adapter or a proxy sends is left to it. A racing
    connect that fails marks its backend down in the ``selection``, as any
    failed connect does.
    """

    def __init__(self, options: Options, selection: Selection, link: Link) -> None:
        self._floor = float(options.hedge_delay or 0.0)
        self._selection = selection
        self._link = link
        self._by_url: Dict[str, Backend] = {b.url: b for b in options.targets}
        self._pools: Dict[Any, Any] = {}  # urllib3 pools by (origin, verify, cert)
        self._connect_times = ConnectTimes()
        self._suspects = Suspects()

    def direct(self, attempts: Attempts, attempt: Attempt, route: Route, kwargs: Mapping[str, Any]) -> Attempt:
        """``attempt``, or the attempt moved to the rival whose connect won the race.

        A backend whose connect lost a race and is still pending is skipped
        for the rival at once (it is suspect, see :mod:`._hedge`); it is not
        counted as tried then. Raises the connect error when every connect
        failed, as the attempt would have.
        """
        rival = attempts.rival()
        if rival is None:
            return attempt
        first = attempt.backend
        known = self._pools.get(_pool_key(first, kwargs))
        if known is not None and next_slot_alive(known):
            return attempt  # the common case, checked first: a keep-alive connection waits, no race
        pool = self._raceable_pool(first, route, kwargs)
        if pool is None or has_idle_connection(pool):
            return attempt  # a user's adapter or a proxy sends; or a keep-alive connection: no race, no thread
        if first.url in self._suspects:
            return attempts.moved(attempt, rival, tried=False)
        won = self._race(first, pool, rival, route, kwargs, attempt.timeout)
        return attempt if won is first else attempts.moved(attempt, won)

    def suspect(self, backend: Backend) -> bool:
        """Whether ``backend``'s connect lost a race and is still pending."""
        return backend.url in self._suspects

    def after_fork(self) -> None:
        """In a forked child: forget the parent's pending connects and close its pooled sockets."""
        self._suspects = Suspects()
        self._connect_times = ConnectTimes()  # its lock may have been held by a connect thread of the parent
        self.close()

    def close(self) -> None:
        """Close the race's pools (the adapter's pool manager closes them too)."""
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            pool.close()

    def _race(
        self, first: Backend, pool: Any, rival: Backend, route: Route, kwargs: Mapping[str, Any], timeout: Any
    ) -> Backend:
        """``first``, or ``rival`` if its connect completes first (see :mod:`._hedge`)."""
        race = Race(_connect_limit(timeout), self._connect_times, self._lost_connect)
        pending = race.start(first.url, pool)
        winner = race.wait(self._connect_times.delay(first.url, self._floor))
        if winner is None and not race.settled():  # still connecting after the delay: race the rival
            rival_pool = self._raceable_pool(rival, route, kwargs)
            if rival_pool is not None:
                if has_idle_connection(rival_pool):
                    race.adopt(rival.url)
                else:
                    race.start(rival.url, rival_pool)
            winner = race.wait(None)
        errors = race.take_errors()
        if winner is None:
            first_error: Optional[BaseException] = None
            for name, error in errors:
                if name == first.url:
                    first_error = error
                else:
                    self._lost_connect(name, error)
            raise _connect_error(first_error, route.to(first))
        for name, error in errors:  # e.g. the first refused after the rival had started
            self._lost_connect(name, error)
        if winner.name != first.url and not pending.done:
            self._suspects.add(first.url, pending)  # new connections skip it until its connect settles
        return self._by_url[winner.name]

    def _lost_connect(self, url: str, error: BaseException) -> None:
        """A racing connect failed: its backend is marked down, as for any failed connect."""
        self._selection.record_failure(self._by_url[url], describe_error(error))

    def _raceable_pool(self, backend: Backend, route: Route, kwargs: Mapping[str, Any]) -> Any:
        """Our own urllib3 pool for ``backend``, or None when another adapter or a proxy would send."""
        outgoing = route.to(backend)
        url = outgoing.url or ""
        if self._link.mounted(url) is not None or _proxied(url, route.proxies_to(backend)):
            return None
        return self._pool(backend, outgoing, kwargs)

    def _pool(self, backend: Backend, request: requests.PreparedRequest, kwargs: Mapping[str, Any]) -> Any:
        """The urllib3 pool our own HTTPAdapter machinery sends ``request`` to ``backend`` with (cached)."""
        key = _pool_key(backend, kwargs)
        pool = self._pools.get(key)
        if pool is None or not self._link.pooled(pool):
            pool = self._link.open_pool(request, kwargs.get("verify", True), kwargs.get("cert"))
            if len(self._pools) >= 64:
                self._pools.clear()
            self._pools[key] = pool
        return pool


def _pool_key(backend: Backend, kwargs: Mapping[str, Any]) -> Tuple[str, str, str]:
    """What tells our race pools apart: the origin, and the TLS settings of the request."""
    return (backend.origin, repr(kwargs.get("verify", True)), repr(kwargs.get("cert")))


def _proxied(url: str, proxies: Optional[Mapping[str, str]]) -> bool:
    """Whether ``proxies`` send ``url`` through a proxy (then the proxy's pool connects, not ours)."""
    return bool(proxies) and bool(select_proxy(url, dict(proxies or {})))


def _connect_error(error: Optional[BaseException], request: requests.PreparedRequest) -> Exception:
    """A failed connect of a race, as the requests exception HTTPAdapter.send would raise."""
    wrapped = MaxRetryError(None, request.url or "", error)  # type: ignore[arg-type]  # no pool to name
    if isinstance(error, ConnectTimeoutError) and not isinstance(error, NewConnectionError):
        return requests.exceptions.ConnectTimeout(wrapped, request=request)
    if isinstance(error, Urllib3SSLError):
        return requests.exceptions.SSLError(wrapped, request=request)
    return requests.exceptions.ConnectionError(wrapped, request=request)


def _connect_limit(timeout: Any) -> Optional[float]:
    """Seconds a connect may take under ``timeout`` (a number, a (connect, read) pair, a urllib3 ``Timeout``)."""
    if isinstance(timeout, Urllib3Timeout):
        connect = timeout.connect_timeout
    else:
        connect = timeout[0] if isinstance(timeout, tuple) else timeout
    return float(connect) if isinstance(connect, (int, float)) and not isinstance(connect, bool) else None
