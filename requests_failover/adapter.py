"""``FailoverAdapter``: sends each request to a backend, failing over and hedging.

``send`` is a short chain: match the URL to a backend (requests for other
hosts pass straight to the transport, untouched), keep the selection fresh,
then let :class:`._attempts.Attempts` (one request's attempt state, pure)
say which attempt comes next while :meth:`FailoverAdapter._perform` sends
each one:

- a slow new connect is raced against the next backend's, and a backend that
  lost a race is suspect until its connect settles (:mod:`._hedge`);
- an attempt to a backend whose answers were clearly slow lately runs on a
  worker thread so that a late answer can be hedged to the next backend
  (:mod:`._hedge`); otherwise it runs on the caller's thread, as a plain
  ``HTTPAdapter`` would;
- every URL sent comes from the one rewrite (:func:`_rewrite`, through
  ``_Route.to``), and every outcome is classified once
  (:meth:`._attempts.Attempts.record`) and recorded in the selection in one
  place (:meth:`FailoverAdapter._account`).
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import requests
from requests.adapters import BaseAdapter, HTTPAdapter
from requests.auth import HTTPBasicAuth
from requests.utils import rewind_body, select_proxy
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NewConnectionError
from urllib3.exceptions import SSLError as Urllib3SSLError

from . import _runtime
from ._attempts import Attempt, Attempts, Outcome, may_hedge
from ._config import (
    DEFAULT_CACHE_TTL,
    DEFAULT_DEMOTE_SLOW,
    DEFAULT_HEALTH_PATHS,
    DEFAULT_HEALTH_TIMEOUT,
    DEFAULT_HEALTHY_THRESHOLD,
    DEFAULT_HEDGE_DELAY,
    DEFAULT_HEDGE_REQUESTS,
    DEFAULT_MAX_RETRIES,
    DEFAULT_POOL_CONNECTIONS,
    DEFAULT_POOL_MAXSIZE,
    DEFAULT_RETRY_DELAY,
    DEFAULT_SLOW_START,
    DEFAULT_TIMEOUT,
    OPTION_DEFAULTS,
    Backend,
    Options,
    build_options,
)
from ._environment import Environment, keep_cookies, readdress
from ._health import describe_error
from ._hedge import ConnectTimes, Flight, Latencies, Race, Suspects, Workers, has_idle_connection
from ._retry import RetryBudget, Verdict
from ._selection import SLOW_HEDGE_LOST, SLOW_READ_TIMEOUT, Selection, Status
from ._urllib3 import is_managed
from .events import AttemptEvent, Observer, SwitchEvent, emit
from .store import StateStore

__all__ = ["FailoverAdapter"]


class FailoverAdapter(HTTPAdapter):
    """A transport adapter that sends requests for ``backends`` to a healthy one.

    Mount it on an existing session for code that cannot change its session
    class::

        adapter = FailoverAdapter(["https://primary.example", "https://secondary.example"])
        for prefix in adapter.prefixes:
            session.mount(prefix, adapter)

    Requests for other hosts that reach it are sent as a plain ``HTTPAdapter``
    sends them (it is one), which is how :class:`FailoverSession` mounts it in
    place of requests' own adapters for ``http://`` and ``https://``.

    :param backends: base URLs (scheme, host, optional port and base path) in
        priority order.
    :param health_paths: paths probed in order; a 2xx answer means healthy.
    :param health_timeout: seconds for one probe request (connect and read).
    :param cache_ttl: seconds a selection stays fresh; once stale, the
        background thread re-probes from the top while requests keep using it.
    :param healthy_threshold: consecutive healthy probes before a backend of
        higher priority that failed is taken back (failback). While a lower
        backend is used, the higher ones are probed in the background on the
        down-time schedule (1, 2, 4 ... 30 s).
    :param max_retries: extra attempts after the first, across backends.
        (``HTTPAdapter.max_retries``, urllib3's own retries, stays off.)
    :param retry_delay: seconds, base of the backoff before a backend is tried
        a second time within one request:
        ``retry_delay * 2 ** (round - 1) * uniform(0.5, 1)``.
    :param default_timeout: timeout, seconds or (connect, read), for requests
        sent without one. The caller's own timeout always wins.
    :param state_file: path of the selection file shared by processes; None:
        a per-backend-set file in the user cache directory; False: memory only.
    :param transport: the adapter that really sends, probes included
        (default: this adapter's own ``HTTPAdapter`` machinery). A
        ``requests_mock.Adapter()`` here makes failover testable without servers.
    :param on_switch: called with a :class:`SwitchEvent` whenever the active
        backend changes. Exceptions it raises are logged and ignored.
    :param allow_insecure: accept plain ``http://`` backends on hosts other
        than loopback.
    :param health_check: ``callable(response) -> bool``, the verdict on one
        probe answer (``response.elapsed`` is its latency; the body is read,
        at most 64 KiB). None: any 2xx is healthy. One that raises counts as
        unhealthy.
    :param health_headers: headers sent with every probe (an API key for a
        protected health endpoint); never logged.
    :param observers: callables receiving every :mod:`event <requests_failover.events>`:
        attempts, probes, switches. One that raises is logged and ignored.
    :param state_store: a store shared by a fleet of machines, under which
        ``state_file`` stays the machine's local layer: a ``redis://`` or
        ``rediss://`` URL (needs ``requests-failover[redis]``) or a
        :class:`~requests_failover.store.StateStore` such as a
        :class:`~requests_failover.RedisStore`. None: the environment's
        ``REQUESTS_FAILOVER_STATE_URL``, else the state file alone.
    :param pool_connections, pool_maxsize, pool_block: as for ``HTTPAdapter``.
    :param slow_start: seconds over which a backend taken back (failback, or
        the end of a demotion) ramps from 10 % of the requests to all of them,
        jittered per process; 0 takes it back at once.
    :param demote_slow: rank a backend whose answers stay far slower than the
        others' (or that hit a read timeout) after them, even while its
        health probes pass, for a cool-down of 5 s doubling to 5 min; False
        turns latency-aware demotion off.
    :param hedge_requests: hedge slow answers: a GET, HEAD or OPTIONS request
        (or any carrying an ``Idempotency-Key``) whose answer is later than
        its backend's recent p95 (at least 50 ms) is sent to the next backend
        too, and the first answer wins; within a budget of about 5 % extra
        requests. False turns it off (see :mod:`._hedge`).
    """

    __attrs__ = [*HTTPAdapter.__attrs__, "_options", "_transport", "trust_env"]

    #: Whether the environment's proxy variables apply (a session's
    #: ``trust_env``, passed down by :class:`FailoverSession`). None: not known
    #: (mounted on a plain session): the proxies requests computed are used as given.
    trust_env: Optional[bool] = None
    #: The session's cache of what the environment says (proxies per backend),
    #: passed down with ``trust_env``; one of the adapter's own when not given.
    environment: Optional[Environment] = None

    def __init__(
        self,
        backends: Sequence[str],
        *,
        health_paths: Sequence[str] = DEFAULT_HEALTH_PATHS,
        health_timeout: float = DEFAULT_HEALTH_TIMEOUT,
        cache_ttl: float = DEFAULT_CACHE_TTL,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_delay: float = DEFAULT_RETRY_DELAY,
        healthy_threshold: int = DEFAULT_HEALTHY_THRESHOLD,
        hedge_delay: Optional[float] = DEFAULT_HEDGE_DELAY,
        default_timeout: Union[float, Tuple[Optional[float], Optional[float]]] = DEFAULT_TIMEOUT,
        state_file: Union[bool, str, os.PathLike[str], None] = None,
        transport: Optional[BaseAdapter] = None,
        on_switch: Optional[Callable[[SwitchEvent], None]] = None,
        allow_insecure: bool = False,
        health_check: Optional[Callable[[requests.Response], bool]] = None,
        health_headers: Optional[Mapping[str, str]] = None,
        observers: Sequence[Observer] = (),
        state_store: Union[str, StateStore, None] = None,
        pool_connections: int = DEFAULT_POOL_CONNECTIONS,
        pool_maxsize: int = DEFAULT_POOL_MAXSIZE,
        pool_block: bool = False,
        slow_start: float = DEFAULT_SLOW_START,
        demote_slow: bool = DEFAULT_DEMOTE_SLOW,
        hedge_requests: bool = DEFAULT_HEDGE_REQUESTS,
    ) -> None:
        given = locals()  # the options, by their names in OPTION_DEFAULTS (listed above for inspect.signature)
        options = build_options(backends, **{name: given[name] for name in OPTION_DEFAULTS})
        super().__init__(
            pool_connections=options.pool_connections, pool_maxsize=options.pool_maxsize, pool_block=options.pool_block
        )
        self._options: Options = options
        self._transport: Optional[BaseAdapter] = options.transport
        self._start()

    def _start(self) -> None:
        """Build the runtime (selection, budget, lookup table) from the configuration."""
        by_origin: Dict[str, List[Backend]] = {}
        for alias in self._options.aliases:
            for origin in alias.origins():
                by_origin.setdefault(origin, []).append(alias)
        for candidates in by_origin.values():
            candidates.sort(key=lambda b: len(b.base_path), reverse=True)
        self._by_origin = by_origin
        self._selection = Selection(self._options, self._probe_send)
        self._budget = RetryBudget()
        self._mounts: Tuple[Mapping[str, BaseAdapter], ...] = ()
        self._by_url: Dict[str, Backend] = {b.url: b for b in self._options.targets}
        self._pools: Dict[Any, Any] = {}  # urllib3 pools by (origin, verify, cert), for the connect race
        self._connect_times = ConnectTimes()
        self._suspects = Suspects()
        self._latencies = Latencies()
        self._workers = Workers()
        _runtime.reset_after_fork(self)

    def __setstate__(self, state: Dict[str, Any]) -> None:
        super().__setstate__(state)  # type: ignore[misc]  # types-requests does not declare it
        self._start()

    def _after_fork(self) -> None:
        """In a forked child: never send on a connection the parent opened.

        Two processes writing requests on one socket get each other's answers.
        Closing the child's copies of the pooled sockets leaves the parent's
        connections open (no shutdown is sent); new ones are opened on demand.
        """
        HTTPAdapter.close(self)
        self._drop_pools()
        self._workers = Workers()  # the parent's worker threads do not exist here
        self._suspects = Suspects()
        for adapter in (self._transport, *(a for m in self._mounts for a in m.values())):
            if isinstance(adapter, HTTPAdapter) and adapter is not self:
                HTTPAdapter.close(adapter)  # the pools only (a subclass's close may do more)

    # -- public -----------------------------------------------------------------
    @property
    def prefixes(self) -> Tuple[str, ...]:
        """The URL prefixes to mount this adapter on (every spelling of every backend)."""
        return tuple(dict.fromkeys(o for b in self._options.aliases for o in b.origins()))

    @property
    def backends(self) -> Tuple[str, ...]:
        """The backends requests are sent to, in priority order."""
        return tuple(b.url for b in self._options.targets)

    @property
    def active_backend(self) -> str:
        """The base URL requests go to now."""
        return self._selection.sync().current()

    def send_through(self, *mappings: Mapping[str, BaseAdapter]) -> None:
        """Send each attempt through the adapter that ``mappings`` have for its URL.

        Each mapping is read live at every attempt with requests' own rule
        (first matching prefix, the mappings in order); this adapter's own
        entries are skipped. Where no other adapter covers a URL, this
        adapter's own pools send. ``transport=``, when given, sends everything.
        :class:`FailoverSession` passes its ``backend_adapters`` and
        ``adapters`` down here.
        """
        self._mounts = mappings

    def status(self) -> Status:
        """A JSON-serialisable snapshot of the selection and each backend's health."""
        return self._selection.status()

    def force_refresh(self, **send_kwargs: Any) -> str:
        """Probe every backend now, ignoring the cache; return the new active base URL."""
        return self._selection.refresh(send_kwargs)

    def clear_cache(self) -> None:
        """Forget the selection, in memory and in the shared file."""
        self._selection.clear()

    def close(self) -> None:
        """Stop background work, wait for probes in flight, then close every pooled socket."""
        self._selection.close()
        self._workers.close()
        super().close()
        self._drop_pools()
        if self._transport is not None:
            self._transport.close()

    # -- sending -------------------------------------------------------------------
    def _sender(self, url: str) -> Optional[BaseAdapter]:
        """``transport``, else another adapter mounted for ``url`` (requests' rule), else None."""
        if self._transport is not None:
            return self._transport
        lowered = url.lower()
        for mapping in self._mounts:
            for prefix, adapter in mapping.items():
                if adapter is not self and lowered.startswith(prefix.lower()):
                    return adapter
        return None

    def _pool(self, backend: Backend, request: requests.PreparedRequest, kwargs: Mapping[str, Any]) -> Any:
        """The urllib3 pool our own HTTPAdapter machinery sends ``request`` to ``backend`` with (cached)."""
        verify, cert = kwargs.get("verify", True), kwargs.get("cert")
        url = request.url or ""
        key = (backend.origin, repr(verify), repr(cert))
        pool = self._pools.get(key)
        if pool is None or not self._still_pooled(pool):
            if hasattr(self, "get_connection_with_tls_context"):  # requests >= 2.32.2
                pool = self.get_connection_with_tls_context(request, verify, proxies=None, cert=cert)
            else:  # pragma: no cover - older requests
                pool = self.get_connection(url, None)
            self.cert_verify(pool, url, verify, cert)  # type: ignore[no-untyped-call]  # untyped in types-requests
            if len(self._pools) >= 64:
                self._pools.clear()
            self._pools[key] = pool
        return pool

    def _still_pooled(self, pool: Any) -> bool:
        """Whether ``pool`` is still the pool manager's (not evicted, not closed)."""
        return is_managed(self.poolmanager, pool)

    def _drop_pools(self) -> None:
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            pool.close()

    def _connect(self, attempts: Attempts, attempt: Attempt, route: _Route, kwargs: Mapping[str, Any]) -> Attempt:
        """Where ``attempt`` really goes: its backend, or the rival its slow new connect was raced against.

        A backend whose connect lost a race and is still pending is skipped
        for the rival at once (it is suspect, see :mod:`._hedge`); it is not
        counted as tried then. Raises the connect error when every connect
        failed, as the attempt would have.
        """
        if self._options.hedge_delay is None or self._transport is not None or attempt.hedge:
            return attempt
        rival = attempts.rival()
        if rival is None:
            return attempt
        first = attempt.backend
        pool = self._raceable_pool(first, route, kwargs)
        if pool is None or has_idle_connection(pool):
            return attempt  # a user's adapter or a proxy sends; or a keep-alive connection: no race, no thread
        if first.url in self._suspects:
            return attempts.moved(attempt, rival, tried=False)
        won = self._race(first, pool, rival, route, kwargs, attempt.timeout)
        return attempt if won is first else attempts.moved(attempt, won)

    def _attempt_proxies(self, backend: Backend, route: _Route) -> Any:
        """The proxies of the request's attempts to ``backend``: as given for the backend the URL
        names, else :meth:`_proxies_for` (once per backend and request)."""
        if backend is route.source:
            return route.proxies
        derived = route.derived
        if backend.url not in derived:
            derived[backend.url] = self._proxies_for(backend, route.source, route.proxies)
        return derived[backend.url]

    def _raceable_pool(self, backend: Backend, route: _Route, kwargs: Mapping[str, Any]) -> Any:
        """Our own urllib3 pool for ``backend``, or None when another adapter or a proxy would send."""
        outgoing = route.to(backend)
        url = outgoing.url or ""
        if self._sender(url) is not None or _proxied(url, self._attempt_proxies(backend, route)):
            return None
        return self._pool(backend, outgoing, kwargs)

    def _race(
        self, first: Backend, pool: Any, rival: Backend, route: _Route, kwargs: Mapping[str, Any], timeout: Any
    ) -> Backend:
        """``first``, or ``rival`` if its connect completes first (see :mod:`._hedge`)."""
        connect = timeout[0] if isinstance(timeout, tuple) else timeout
        race = Race(connect if isinstance(connect, (int, float)) else None, self._connect_times, self._lost_connect)
        pending = race.start(first.url, pool)
        winner = race.wait(self._connect_times.delay(first.url, float(self._options.hedge_delay or 0.0)))
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

    def _send_one(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        """Send one request, no failover: through :meth:`_sender`, else our own pools."""
        sender = self._sender(request.url or "")
        if sender is not None:
            return sender.send(request, **kwargs)
        return super().send(request, **kwargs)

    def _probe_send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        """Send a health probe: never through an adapter that could answer from a cache.

        Probes go through ``transport`` when one is given (that is how tests
        without servers work), else through this adapter's own pools, with
        ``Cache-Control: no-cache`` for any cache on the way. The proxies are
        those requests would use for the probed backend's own URL (the
        request that triggered the probe may have been for another backend).
        """
        request.headers["Cache-Control"] = "no-cache"
        if self.trust_env:
            matched = self.match(request.url)
            if matched is not None:
                kwargs["proxies"] = self._proxies_for(matched[0], None, kwargs.get("proxies"))
        if self._transport is not None:
            return self._transport.send(request, **kwargs)
        return super().send(request, **kwargs)

    def _proxies_for(self, target: Backend, source: Optional[Backend], proxies: Optional[Mapping[str, str]]) -> Any:
        """Proxies for a request sent to ``target``: what requests would use had it been addressed there.

        ``Session.request`` evaluated the proxy environment variables (and
        ``NO_PROXY``) for the URL asked for, ``source``'s (None: not known, a
        probe); the backend really used may differ, so the environment's part
        is decided again for ``target`` (see
        :meth:`.Environment.proxies_for`, cached: requests' helpers scan all
        of ``os.environ``). Only done when ``trust_env`` is known to be true
        (a FailoverSession passes it down, with its :class:`.Environment`).
        """
        if not self.trust_env:
            return proxies
        if self.environment is None:
            self.environment = Environment()
        return self.environment.proxies_for(target.origin, None if source is None else source.origin, proxies)

    def match(self, url: Optional[str]) -> Optional[Tuple[Backend, str]]:
        """The configured backend ``url`` belongs to and the rest of it, or None."""
        if not url:
            return None
        scheme_end = url.find("://")
        if scheme_end < 0:
            return None
        path_start = len(url)
        for mark in "/?#":
            found = url.find(mark, scheme_end + 3)
            if 0 <= found < path_start:
                path_start = found
        origin = url[:path_start].lower()
        if "@" in origin:  # userinfo: "scheme://user:pw@host"
            origin = origin[: scheme_end + 3] + origin.rpartition("@")[2]
        candidates = self._by_origin.get(origin)
        if not candidates:
            return None
        rest = url[path_start:]
        for backend in candidates:
            base = backend.base_path
            if not base:
                return backend, rest
            if rest.startswith(base) and (len(rest) == len(base) or rest[len(base)] in "/?#"):
                return backend, rest[len(base) :]
        return None

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: Union[bool, str] = True,
        cert: Any = None,
        proxies: Optional[Mapping[str, str]] = None,
    ) -> requests.Response:
        """Send ``request`` to the active backend, failing over as the policy allows.

        A short chain: match the URL to a backend (else send as requests
        would), keep the selection fresh, then let :class:`._attempts.Attempts`
        say which attempt comes next while :meth:`_perform` sends each one.
        """
        kwargs: Dict[str, Any] = {"stream": stream, "verify": verify, "cert": cert, "proxies": proxies}
        matched = self.match(request.url)
        if matched is None:
            return self._send_one(request, timeout=timeout, **kwargs)
        route = _Route(request, matched[0], matched[1], proxies)
        if timeout is None:
            timeout = self._options.default_timeout
        started = time.monotonic()  # before the first probe round: a wait there counts against the deadline
        self._selection.ensure_fresh({"verify": verify, "cert": cert, "proxies": proxies}, timeout)
        attempts = Attempts(
            self._selection.plan(),
            request.method,
            request.headers,
            timeout=timeout,
            started=started,
            max_retries=self._options.max_retries,
            retry_delay=self._options.retry_delay,
            budget=self._budget,
            replayable=_replayable(request),
        )
        try:
            attempt = attempts.next(time.monotonic())
            while attempt is not None:
                self._perform(attempts, attempt, route, kwargs)
                attempt = attempts.next(time.monotonic())
            response = attempts.result(route.source, request)
            keep_cookies(request, response)
            return response
        finally:
            if self._options.observers and attempts.outcomes:
                self._emit_attempts(attempts)

    def _perform(self, attempts: Attempts, attempt: Attempt, route: _Route, kwargs: Dict[str, Any]) -> None:
        """Send one attempt (after its backoff), racing its connect or hedging its answer where that applies."""
        if attempt.delay:
            _runtime.sleep(attempt.delay)
        if attempt.number > 1:
            route.rewind()
        sent_at = time.monotonic()
        try:
            attempt = self._connect(attempts, attempt, route, kwargs)
        except Exception as exc:
            self._account(attempts.record(attempt, time.monotonic() - sent_at, error=exc))
            return
        if (
            self._options.hedge_requests
            and self._options.hedge_delay is not None  # None: no hedging of any kind, as in 0.2
            and not kwargs["stream"]
            and self._latencies.armed(attempt.backend.url)
            and may_hedge(route.request.method, route.request.headers)
            and isinstance(route.request.body, (bytes, str, type(None)))  # two threads cannot share a stream
            and attempts.rival() is not None
        ):
            self._hedged(attempts, attempt, route, kwargs)
            return
        response, error, took = self._exchange(attempt, route, kwargs, sent_at)
        self._account(attempts.record(attempt, took, response=response, error=error))

    def _exchange(
        self,
        attempt: Attempt,
        route: _Route,
        kwargs: Mapping[str, Any],
        sent_at: float,
        flight: Optional[Flight] = None,
    ) -> Tuple[Optional[requests.Response], Optional[BaseException], float]:
        """Send ``attempt`` and read its answer; never raises. A ``flight`` given up meanwhile closes the answer."""
        try:
            proxies = self._attempt_proxies(attempt.backend, route)
            outgoing = route.to(attempt.backend)
            response = self._send_one(outgoing, timeout=attempt.timeout, **{**kwargs, "proxies": proxies})
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

    def _hedged(self, attempts: Attempts, attempt: Attempt, route: _Route, kwargs: Mapping[str, Any]) -> None:
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
            if hedge is not None and (
                hedge.backend.url in self._suspects or not self._launch(flight, hedge, route, kwargs)
            ):
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

    def _launch(self, flight: Flight, attempt: Attempt, route: _Route, kwargs: Mapping[str, Any]) -> bool:
        """Start ``attempt`` of ``flight`` on a worker thread; False when none is free."""
        sent_at = flight.start(attempt)

        def job() -> None:
            # Whatever happens, something lands: the caller waits for it.
            landed: Tuple[Optional[requests.Response], Optional[BaseException], float] = (None, _NO_ANSWER, 0.0)
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


#: What lands for an attempt whose worker ended without an answer or an error (never expected).
_NO_ANSWER = RuntimeError("requests-failover: a hedging worker ended without an answer")
_FINAL_OUTCOME = {Verdict.SUCCESS: "success", Verdict.RAISE: "raised"}


class _Route:
    """One request on its way: the request as the caller prepared it, the backend
    its URL names, the rest of its URL, and the proxies requests computed for it.
    Every URL sent to a backend (attempt, race rival, hedge) comes from :meth:`to`."""

    __slots__ = ("derived", "proxies", "request", "rest", "source")

    def __init__(
        self, request: requests.PreparedRequest, source: Backend, rest: str, proxies: Optional[Mapping[str, str]]
    ) -> None:
        self.request, self.source, self.rest, self.proxies = request, source, rest, proxies
        self.derived: Dict[str, Any] = {}  # backend url -> the proxies of its attempts

    def to(self, backend: Backend) -> requests.PreparedRequest:
        return _rewrite(self.request, self.source, self.rest, backend)

    def rewind(self) -> None:
        """Rewind a seekable body before it is sent again."""
        body: object = self.request.body
        if body is not None and hasattr(body, "seek"):
            rewind_body(self.request)


def _proxied(url: str, proxies: Optional[Mapping[str, str]]) -> bool:
    return bool(proxies) and bool(select_proxy(url, dict(proxies or {})))


def _connect_error(error: Optional[BaseException], request: requests.PreparedRequest) -> Exception:
    """A failed connect of a race, as the requests exception HTTPAdapter.send would raise."""
    wrapped = MaxRetryError(None, request.url or "", error)  # type: ignore[arg-type]  # no pool to name
    if isinstance(error, ConnectTimeoutError) and not isinstance(error, NewConnectionError):
        return requests.exceptions.ConnectTimeout(wrapped, request=request)
    if isinstance(error, Urllib3SSLError):
        return requests.exceptions.SSLError(wrapped, request=request)
    return requests.exceptions.ConnectionError(wrapped, request=request)


def _replayable(request: requests.PreparedRequest) -> bool:
    """Whether the body can be sent again: bytes, str, or a stream that can seek back."""
    body: object = request.body  # typed bytes | str | None, but streams and generators are accepted
    if body is None or isinstance(body, (bytes, str)):
        return True
    position = getattr(request, "_body_position", None)
    return hasattr(body, "seek") and isinstance(position, int)


def _rewrite(
    request: requests.PreparedRequest, source: Backend, rest: str, target: Backend
) -> requests.PreparedRequest:
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
