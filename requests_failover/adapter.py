"""``FailoverAdapter``: sends each request to a backend, failing over and hedging.

``send`` is a short chain: match the URL to a backend (requests for other
hosts pass straight to the transport, untouched), keep the selection fresh,
then hand the request to the adapter's :class:`._sending.Dispatcher`, which
sends its attempts in the order :class:`._attempts.Attempts` says, racing
slow connects and hedging late answers, and records every outcome.

The adapter keeps what requests users see: the public API, the documented
``HTTPAdapter`` hooks (its own pools send, through ``HTTPAdapter.send``),
pickling and fork handling; and lends the dispatcher how a request is really
sent (:class:`._sending.Link`): the user's mounted adapter for a URL, else
its own pools.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import requests
from requests.adapters import BaseAdapter, HTTPAdapter
from requests.utils import select_proxy

from . import _runtime
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
from ._environment import Environment, keep_cookies
from ._selection import Selection, Status
from ._sending import Dispatcher, Link, Route
from ._urllib3 import is_managed
from .events import Observer, SwitchEvent
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
        """Build the runtime (lookup table, selection, sending machinery) from the configuration."""
        by_origin: Dict[str, List[Backend]] = {}
        for alias in self._options.aliases:
            for origin in alias.origins():
                by_origin.setdefault(origin, []).append(alias)
        for candidates in by_origin.values():
            candidates.sort(key=lambda b: len(b.base_path), reverse=True)
        self._by_origin = by_origin
        self._last_match: Tuple[Optional[str], Optional[Tuple[Backend, str]]] = (None, None)
        self._direct = _DirectPools()  # see get_connection_with_tls_context
        self._mounts: Tuple[Mapping[str, BaseAdapter], ...] = ()
        self._selection = Selection(self._options, self._probe_send)
        link = Link(send=self._send_one, mounted=self._sender, open_pool=self._open_pool, pooled=self._still_pooled)
        self._dispatcher = Dispatcher(self._options, self._selection, link)
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
        self._direct.drop()
        self._dispatcher.after_fork()
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
        self._dispatcher.close()
        super().close()
        self._direct.drop()
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

    def _open_pool(self, request: requests.PreparedRequest, verify: Any, cert: Any) -> Any:
        """The urllib3 pool this adapter's own HTTPAdapter machinery sends ``request`` with (for the connect race)."""
        if hasattr(HTTPAdapter, "get_connection_with_tls_context"):  # requests >= 2.32.2 (ours overrides it)
            pool = self.get_connection_with_tls_context(request, verify, proxies=None, cert=cert)
        else:  # pragma: no cover - older requests
            pool = self.get_connection(request.url or "", None)
        self.cert_verify(pool, request.url or "", verify, cert)  # type: ignore[no-untyped-call]  # untyped in types-requests
        return pool

    def get_connection_with_tls_context(
        self,
        request: requests.PreparedRequest,
        verify: Any,
        proxies: Optional[Mapping[str, str]] = None,
        cert: Any = None,
    ) -> Any:
        """HTTPAdapter's pool for ``request``; a backend's direct pool is kept (see :class:`_DirectPools`).

        requests works the same pool out again for every request (a URL parse,
        the pool's key built and normalised, the manager's lock). Other hosts
        and proxied requests are left to requests (as is ``get_connection``,
        which requests < 2.32.2 calls instead).
        """
        url = request.url or ""
        if (proxies and select_proxy(url, dict(proxies))) or self.match(url) is None:
            return super().get_connection_with_tls_context(request, verify, proxies=proxies, cert=cert)
        return self._direct.get(
            self.poolmanager,
            (_origin(url), repr(verify), repr(cert)),
            lambda: super(FailoverAdapter, self).get_connection_with_tls_context(request, verify, proxies, cert),
        )

    def _still_pooled(self, pool: Any) -> bool:
        """Whether ``pool`` is still the pool manager's (not evicted, not closed)."""
        return is_managed(self.poolmanager, pool)

    def _send_one(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        """Send one request, no failover: through :meth:`_sender`, else our own pools."""
        sender = self._sender(request.url or "")
        if sender is not None:
            return sender.send(request, **kwargs)
        return super().send(request, **kwargs)

    def _probe_send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        """Send a health probe: never through an adapter that could answer from a cache.

        Through ``transport`` if given (tests without servers), else our own pools, with
        ``Cache-Control: no-cache`` for any cache on the way, and the proxies requests would
        use for the probed backend's own URL (not the triggering request's backend's).
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
        """The configured backend ``url`` belongs to and the rest of it, or None.

        (The last answer is kept: a request asks three times for its URL.)
        """
        last_url, last = self._last_match
        if url is not None and url == last_url:
            return last
        found = self._match(url)
        self._last_match = (url, found)
        return found

    def _match(self, url: Optional[str]) -> Optional[Tuple[Backend, str]]:
        if not url:
            return None
        scheme_end = url.find("://")
        if scheme_end < 0:
            return None
        path_start = _path_start(url, scheme_end)
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
        would), keep the selection fresh, then let the
        :class:`._sending.Dispatcher` send the attempts of the selection's plan.
        """
        kwargs: Dict[str, Any] = {"stream": stream, "verify": verify, "cert": cert, "proxies": proxies}
        matched = self.match(request.url)
        if matched is None:
            return self._send_one(request, timeout=timeout, **kwargs)
        if timeout is None:
            timeout = self._options.default_timeout
        started = time.monotonic()  # before the first probe round: a wait there counts against the deadline
        self._selection.ensure_fresh({"verify": verify, "cert": cert, "proxies": proxies}, timeout)
        plan = self._selection.plan()
        route = Route(request, matched[0], matched[1], proxies, derive=self._proxies_for)
        response = self._dispatcher.send(route, plan, timeout, started, kwargs)
        keep_cookies(request, response)
        return response


def _path_start(url: str, scheme_end: int) -> int:
    """Where the path (or query, or fragment) of ``url`` starts; its length if it has none."""
    path_start = len(url)
    for mark in "/?#":
        found = url.find(mark, scheme_end + 3)
        if 0 <= found < path_start:
            path_start = found
    return path_start


def _origin(url: str) -> str:
    """``scheme://authority`` of ``url``, lowercased (the whole URL if it has no scheme)."""
    scheme_end = url.find("://")
    return url.lower() if scheme_end < 0 else url[: _path_start(url, scheme_end)].lower()


class _DirectPools:
    """The pools :meth:`FailoverAdapter.get_connection_with_tls_context` keeps: one per backend origin
    and TLS settings (``verify``, ``cert``), all from one pool manager.

    A pool is used until it is closed (urllib3 < 2.7 closes a pool it
    evicts). urllib3 2.7 no longer closes a pool its manager lets go (it
    relies on garbage collection), so a pool kept here stays in use, and is
    closed here when let go: ``drop()`` (``close()``, a fork) or a new pool
    manager (a user's ``init_poolmanager()``).
    """

    def __init__(self) -> None:
        self._pools: Dict[Tuple[str, str, str], Any] = {}
        self._manager: Any = None

    def get(self, manager: Any, key: Tuple[str, str, str], open_pool: Callable[[], Any]) -> Any:
        if manager is not self._manager:
            self.drop()
            self._manager = manager
        pool = self._pools.get(key)
        if pool is None or getattr(pool, "pool", None) is None:  # none yet, or closed since
            pool = open_pool()
            if len(self._pools) >= 64:
                self._pools = {}  # let go, not closed: another request may be using one
            self._pools[key] = pool
        return pool

    def drop(self) -> None:
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            pool.close()
