"""``FailoverAdapter``: the attempt loop behind every request to a backend.

``send`` runs one flat loop: pick the next backend of the request's plan,
copy the request with its URL rewritten to that backend, rewind the body,
send, classify the outcome (:func:`._retry.classify`), record it in the
selection. Requests for hosts that are not configured backends pass straight
to the transport, untouched.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Set, Tuple, Union

import requests
from requests.adapters import BaseAdapter, HTTPAdapter
from requests.auth import HTTPBasicAuth
from requests.utils import rewind_body, select_proxy
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NewConnectionError
from urllib3.exceptions import SSLError as Urllib3SSLError

from . import _runtime
from ._config import (
    DEFAULT_CACHE_TTL,
    DEFAULT_DEMOTE_SLOW,
    DEFAULT_HEALTH_PATHS,
    DEFAULT_HEALTH_TIMEOUT,
    DEFAULT_HEALTHY_THRESHOLD,
    DEFAULT_HEDGE_DELAY,
    DEFAULT_MAX_RETRIES,
    DEFAULT_POOL_CONNECTIONS,
    DEFAULT_POOL_MAXSIZE,
    DEFAULT_RETRY_DELAY,
    DEFAULT_SLOW_START,
    DEFAULT_TIMEOUT,
    Backend,
    Options,
    build_options,
)
from ._environment import Environment, readdress
from ._health import describe_error
from ._hedge import ConnectTimes, Race, has_idle_connection
from ._retry import RetryBudget, Verdict, backoff, classify, never_connected, retry_after
from ._selection import SLOW_READ_TIMEOUT, Selection, Status
from .events import AttemptEvent, Observer, SwitchEvent, emit
from .exceptions import AllBackendsFailed, all_failed_type
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
    ) -> None:
        options = build_options(
            backends,
            health_paths=health_paths,
            health_timeout=health_timeout,
            cache_ttl=cache_ttl,
            max_retries=max_retries,
            retry_delay=retry_delay,
            healthy_threshold=healthy_threshold,
            hedge_delay=hedge_delay,
            default_timeout=default_timeout,
            state_file=state_file,
            on_switch=on_switch,
            allow_insecure=allow_insecure,
            health_check=health_check,
            health_headers=health_headers,
            observers=observers,
            state_store=state_store,
            slow_start=slow_start,
            demote_slow=demote_slow,
        )
        if transport is not None and not callable(getattr(transport, "send", None)):
            raise TypeError(f"transport: expected a requests adapter, got {type(transport).__name__}")
        for name, value in (("pool_connections", pool_connections), ("pool_maxsize", pool_maxsize)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
            if value < 1:
                raise ValueError(f"{name}: must be >= 1, got {value}")
        if not isinstance(pool_block, bool):
            raise TypeError(f"pool_block: expected a bool, got {type(pool_block).__name__}")
        super().__init__(pool_connections=pool_connections, pool_maxsize=pool_maxsize, pool_block=pool_block)
        self._options: Options = options
        self._transport = transport
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
        container = getattr(self.poolmanager.pools, "_container", None)
        if container is None or getattr(pool, "pool", None) is None:
            return False
        return any(value is pool for value in list(container.values()))

    def _drop_pools(self) -> None:
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            pool.close()

    def _race(
        self,
        first: Backend,
        rival: Backend,
        outgoing: requests.PreparedRequest,
        proxies: Optional[Mapping[str, str]],
        timeout: Any,
        kwargs: Mapping[str, Any],
    ) -> Backend:
        """The backend this attempt goes to: ``first``, or ``rival`` if its connect completes first.

        Only when ``first`` needs a new connection of our own pools (no adapter
        of the user's, no proxy) and that connect is slower than the hedge
        delay (see :mod:`._hedge`). Raises ``first``'s connect error when every
        connect failed, as the attempt would have.
        """
        url = outgoing.url or ""
        if self._sender(url) is not None or _proxied(url, proxies):
            return first
        pool = self._pool(first, outgoing, kwargs)
        if has_idle_connection(pool):
            return first  # a keep-alive connection: no race, no thread
        connect = timeout[0] if isinstance(timeout, tuple) else timeout
        race = Race(connect if isinstance(connect, (int, float)) else None, self._connect_times, self._lost_connect)
        race.start(first.url, pool)
        winner = race.wait(self._connect_times.delay(first.url, float(self._options.hedge_delay or 0.0)))
        if winner is None and not race.settled():  # still connecting after the delay: race the rival
            rival_outgoing = outgoing.copy()
            rival_outgoing.url = rival.url + url[len(first.url) :]
            if self._sender(rival_outgoing.url or "") is None and not _proxied(rival_outgoing.url or "", proxies):
                rival_pool = self._pool(rival, rival_outgoing, kwargs)
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
            raise _connect_error(first_error, outgoing)
        for name, error in errors:  # e.g. the first refused after the rival had started
            self._lost_connect(name, error)
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
        """Send ``request`` to the active backend, failing over as the policy allows."""
        kwargs: Dict[str, Any] = {"stream": stream, "verify": verify, "cert": cert, "proxies": proxies}
        matched = self.match(request.url)
        if matched is None:
            return self._send_one(request, timeout=timeout, **kwargs)
        source, rest = matched
        if timeout is None:
            timeout = self._options.default_timeout
        started = time.monotonic()
        deadline: Optional[float] = None  # computed when a second attempt is considered

        self._selection.ensure_fresh({"verify": verify, "cert": cert, "proxies": proxies})
        plan = self._selection.plan()
        method = request.method
        # A body that cannot be rewound may still go to another backend as long
        # as no attempt has consumed any of it: a connection never opened read nothing.
        replayable, pristine = _replayable(request), True
        records: Optional[List[_Attempt]] = [] if self._options.observers else None
        tries: Dict[str, int] = {}
        no_repeat: Set[str] = set()  # backends that read-timed out: never twice in one request
        failures: List[Tuple[str, str]] = []
        errors: List[Tuple[Backend, BaseException]] = []
        last_response: Optional[requests.Response] = None

        try:
            for attempt in range(1 + self._options.max_retries):
                backend = _next_backend(plan, tries, no_repeat)
                if backend is None:
                    break
                if attempt:
                    if not (replayable or pristine):
                        break
                    if attempt == 1:
                        deadline = _deadline(timeout, started)
                    if tries.get(backend.url):
                        if not self._budget.allows_repeat():
                            break
                        delay = backoff(self._options.retry_delay, tries[backend.url])
                        if deadline is not None and time.monotonic() + delay >= deadline:
                            break
                        _runtime.sleep(delay)
                    if deadline is not None and time.monotonic() >= deadline:
                        break
                    if request.body is not None and hasattr(request.body, "seek"):
                        rewind_body(request)
                tries[backend.url] = tries.get(backend.url, 0) + 1
                outgoing = _rewrite(request, source, rest, backend)
                if backend is not source:
                    kwargs["proxies"] = self._proxies_for(backend, source, proxies)
                else:
                    kwargs["proxies"] = proxies
                sent_at = time.monotonic()
                try:
                    attempt_timeout = _clip(timeout, deadline, attempt)
                    if self._options.hedge_delay is not None and self._transport is None:
                        rival = next((b for b in plan if not tries.get(b.url)), None)  # the next one not tried
                        if rival is not None:
                            won = self._race(backend, rival, outgoing, kwargs["proxies"], attempt_timeout, kwargs)
                            if won is not backend:
                                backend, outgoing = won, _rewrite(request, source, rest, won)
                                tries[won.url] = tries.get(won.url, 0) + 1
                                kwargs["proxies"] = (
                                    self._proxies_for(won, source, proxies) if won is not source else proxies
                                )
                    response = self._send_one(outgoing, timeout=attempt_timeout, **kwargs)
                    if not stream:
                        # What Session.send would do right after; done here so that a
                        # body cut off by a dying backend fails over like any error.
                        response.content  # noqa: B018
                except Exception as exc:
                    verdict = classify(method, request.headers, error=exc)
                    if records is not None:
                        took = time.monotonic() - sent_at
                        records.append(_Attempt(backend, None, describe_error(exc), took, verdict, tries[backend.url]))
                    if verdict is Verdict.RAISE:
                        raise
                    pristine = pristine and never_connected(exc)
                    error = describe_error(exc)
                    errors.append((backend, exc))
                    if isinstance(exc, requests.exceptions.ReadTimeout):
                        no_repeat.add(backend.url)
                        self._selection.record_slow(backend, time.monotonic() - sent_at, SLOW_READ_TIMEOUT)
                    if last_response is not None:
                        last_response.close()
                        last_response = None
                    self._budget.failed()
                    failures.append((backend.url, error))
                    self._selection.record_failure(backend, error)
                    if verdict is Verdict.FAILED:
                        break
                    continue
                pristine = False
                verdict = classify(method, request.headers, response=response)
                if records is not None:
                    took = time.monotonic() - sent_at
                    records.append(_Attempt(backend, response.status_code, None, took, verdict, tries[backend.url]))
                if verdict is Verdict.SUCCESS:
                    if last_response is not None:
                        last_response.close()  # an earlier 5xx: give its connection back
                    self._budget.succeeded()
                    self._selection.record_success(backend, latency=time.monotonic() - sent_at)
                    return response
                error = f"HTTP {response.status_code}"
                if last_response is not None:
                    last_response.close()
                last_response = response
                self._budget.failed()
                failures.append((backend.url, error))
                self._selection.record_failure(backend, error, retry_after(response))
                if verdict is Verdict.FAILED:
                    break

            if last_response is not None:
                return last_response
            raise _all_failed(failures, errors, source, request)
        finally:
            if records:
                self._emit_attempts(records, method or "GET", plan[0])

    def _emit_attempts(self, records: Sequence[_Attempt], method: str, first: Backend) -> None:
        """One AttemptEvent per attempt: every one but the last went on to another attempt."""
        now = _runtime.now()
        last = len(records) - 1
        for number, record in enumerate(records):
            outcome = "retried" if number < last else _FINAL_OUTCOME.get(record.verdict, "failed")
            event = AttemptEvent(
                backend=record.backend.url,
                method=method,
                outcome=outcome,
                status_code=record.status_code,
                error=record.error,
                duration=record.duration,
                attempt=number + 1,
                failover=record.backend is not first,
                repeat=record.tries > 1,
                at=now,
            )
            emit(self._options.observers, event)


class _Attempt(NamedTuple):
    backend: Backend
    status_code: Optional[int]
    error: Optional[str]
    duration: float
    verdict: Verdict
    tries: int  # how many times this backend has been tried in the request, this one included


_FINAL_OUTCOME = {Verdict.SUCCESS: "success", Verdict.RAISE: "raised"}


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


def _next_backend(plan: Sequence[Backend], tries: Mapping[str, int], no_repeat: Set[str]) -> Optional[Backend]:
    """The backend of this attempt: the plan in order, then around again (skipping
    backends that read-timed out: a second wait on them would double the cost)."""
    if not tries:
        return plan[0]
    untried = [b for b in plan if not tries.get(b.url)]
    if untried:
        return untried[0]
    again = [b for b in plan if b.url not in no_repeat]
    if not again:
        return None
    return min(again, key=lambda b: tries[b.url])


def _all_failed(
    failures: Sequence[Tuple[str, str]],
    errors: Sequence[Tuple[Backend, BaseException]],
    source: Backend,
    request: requests.PreparedRequest,
) -> AllBackendsFailed:
    """The exception for a request that failed everywhere.

    It is an instance of every exception type met (the last attempt's first),
    so any legacy ``except`` clause for one of them still catches it. Its
    ``args`` are those of the error plain requests would have raised: the one
    from the backend the URL named, if it was tried, else the last one.
    """
    last = errors[-1][1]
    types = [type(exc) for _, exc in reversed(errors)]
    plain = next((exc for backend, exc in errors if backend is source), last)
    error = all_failed_type(*types)(failures, *plain.args, last=last, request=request)
    error.__cause__ = last
    return error


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


def _deadline(timeout: Any, started: float) -> Optional[float]:
    """Monotonic time after which no attempt starts: now + connect + read.

    That is the longest one plain request with this timeout could wait, so
    failover never makes a caller wait longer than its timeout allowed.
    """
    if isinstance(timeout, tuple) and len(timeout) == 2:
        connect, read = timeout
    elif isinstance(timeout, (int, float)):
        connect = read = timeout
    else:  # a urllib3 Timeout object, or bad input the transport will reject as requests does
        return None
    if not isinstance(connect, (int, float)) or not isinstance(read, (int, float)):
        return None
    return started + float(connect) + float(read)


def _clip(timeout: Any, deadline: Optional[float], attempt: int) -> Any:
    """The timeout of one attempt: the caller's, cut to what is left after the first."""
    if deadline is None or attempt == 0:
        return timeout
    left = max(0.001, deadline - time.monotonic())
    connect, read = timeout if isinstance(timeout, tuple) else (timeout, timeout)
    return (min(float(connect), left), min(float(read), left))
