"""``FailoverSession``: a ``requests.Session`` that survives a dead backend."""

from __future__ import annotations

import os
from collections import OrderedDict
from http import cookiejar as cookielib
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

import requests
from requests import cookies as _cookies
from requests import sessions as _sessions
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict

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
)
from ._environment import Environment, mark
from ._selection import Status
from .adapter import FailoverAdapter
from .events import Observer, SwitchEvent
from .store import StateStore

__all__ = ["FailoverSession"]

# requests' own merge helpers (untyped in types-requests)
merge_setting: Any = _sessions.merge_setting
merge_hooks: Any = _sessions.merge_hooks
merge_cookies: Any = _cookies.merge_cookies
cookiejar_from_dict: Any = _cookies.cookiejar_from_dict
RequestsCookieJar: Any = _cookies.RequestsCookieJar

#: Mappings whose items requests' ``to_key_val_list`` would list as they are (``list(value.items())``).
_PLAIN_MAPPINGS = (dict, OrderedDict, CaseInsensitiveDict)


def _merge_setting(request_setting: Any, session_setting: Any, dict_class: type = OrderedDict) -> Any:
    """``requests.sessions.merge_setting``, the same result, with plain mappings merged directly.

    requests 2.34 tells a mapping by a runtime ``Protocol`` check, about ten
    microseconds on every merge of every request (headers, params, proxies);
    for the mapping types requests itself builds, the items are taken as it
    would take them. Anything else goes to requests' own function.
    """
    if session_setting is None:
        return request_setting
    if request_setting is None:
        return session_setting
    if type(request_setting) not in _PLAIN_MAPPINGS or type(session_setting) not in _PLAIN_MAPPINGS:
        return merge_setting(request_setting, session_setting, dict_class)
    merged = dict_class(list(session_setting.items()))
    merged.update(list(request_setting.items()))
    for key in [k for k, v in merged.items() if v is None]:
        del merged[key]
    return merged


class FailoverSession(requests.Session):
    """A drop-in ``requests.Session`` whose requests to ``backends`` fail over.

    ``requests.Session()`` becomes ``FailoverSession([primary, secondary])``.
    Every request whose URL starts with one of the backends' base URLs is
    sent to the backend selected now, with the rest of the URL unchanged;
    requests to any other host are sent exactly as ``requests.Session``
    sends them. Keyword options are those of :class:`FailoverAdapter`.

    The failover adapter is mounted, as requests intends: it takes the place
    of requests' own adapters for ``https://`` and ``http://`` (it is an
    ``HTTPAdapter`` and sends other hosts' requests as one), so tools that
    copy, wrap or re-read ``session.adapters`` keep failing over. When an
    adapter mounted later would take a backend's URLs (``mount("https://",
    CacheControlAdapter())``, a retrying adapter, a prefix under a backend),
    the failover adapter is mounted again at that backend's own prefix and
    sends each attempt through the adapter mounted before it: the user's
    adapter sends, the failover loop decides where.
    """

    __attrs__ = [*requests.Session.__attrs__, "failover_adapter", "backend_adapters"]

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
        adapter = FailoverAdapter(backends, **{name: given[name] for name in OPTION_DEFAULTS})
        super().__init__()  # mounts requests' own adapters, replaced below
        #: The adapter that handles every request to a backend.
        self.failover_adapter = adapter
        #: Adapters mounted at exactly a backend's prefix: they send that
        #: backend's requests, under the failover loop (see :meth:`mount`).
        self.backend_adapters: Dict[str, BaseAdapter] = {}
        self._environment = Environment()
        for prefix in ("https://", "http://"):
            self.adapters[prefix].close()
            self.adapters[prefix] = adapter  # in place: requests' order of prefixes stays
        self._pass_down()

    def __setstate__(self, state: Dict[str, Any]) -> None:
        super().__setstate__(state)  # type: ignore[misc]  # types-requests does not declare it
        self._environment = Environment()
        self._pass_down()

    def _pass_down(self) -> None:
        """Give the failover adapter what it needs from this session (never the session)."""
        self.failover_adapter.send_through(self.backend_adapters, self.adapters)
        self.failover_adapter.trust_env = self.trust_env
        self.failover_adapter.environment = self._environment

    @property
    def trust_env(self) -> bool:
        return bool(self.__dict__.get("_trust_env", True))

    @trust_env.setter
    def trust_env(self, value: bool) -> None:
        self.__dict__["_trust_env"] = value
        adapter = self.__dict__.get("failover_adapter")
        if adapter is not None:
            adapter.trust_env = value

    def mount(self, prefix: Union[str, bytes], adapter: BaseAdapter) -> None:
        """Mount ``adapter`` as requests does; the backends' URLs stay with the failover adapter.

        If ``adapter`` would now be chosen for a backend's URLs (its prefix is
        ``https://``, or the backend's own), the failover adapter is mounted
        at the backend's prefix, ahead of it, and sends through it. A prefix
        longer than a backend's origin (``https://primary.example/v2``) is
        requests' way to say "this adapter, for these URLs": those requests go
        to that adapter only, without failover.
        """
        ours: Optional[FailoverAdapter] = self.__dict__.get("failover_adapter")
        if ours is None:  # requests.Session.__init__ mounting its own adapters
            super().mount(prefix, adapter)
            return
        text = prefix.decode("latin-1") if isinstance(prefix, bytes) else prefix
        if adapter is not ours and text.lower() in ours.prefixes:
            # the backend's own prefix: it stays ours, the adapter sends for it
            self.backend_adapters[text.lower()] = adapter
            return
        super().mount(prefix, adapter)
        if adapter is not ours:
            for own in ours.prefixes:
                if self._choice(own) is adapter:
                    super().mount(own, ours)

    # -- requests' per-request environment scans, cached for backend URLs ---------------------
    def merge_environment_settings(  # type: ignore[override]  # the same dict as requests' own
        self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any
    ) -> Dict[str, Any]:
        """requests' own merge, with the environment's answers cached for backend URLs.

        The result is what ``requests.Session.merge_environment_settings``
        returns (same precedence: explicit arguments, then the environment, then
        the session's attributes); for a backend URL the proxy and CA bundle
        variables are not re-scanned unless one of them changed (see
        :mod:`requests_failover._environment`).
        """
        matched = self.failover_adapter.match(url) if self.trust_env and isinstance(url, str) else None
        if matched is None:
            return dict(super().merge_environment_settings(url, proxies, stream, verify, cert))
        no_proxy = proxies.get("no_proxy") if proxies is not None else None
        env_proxies, bundle = self._environment.settings(matched[0].origin, no_proxy)
        if env_proxies:
            for key, value in env_proxies.items():
                proxies.setdefault(key, value)  # in place, as requests does
        if bundle and (verify is True or verify is None):
            verify = bundle
        return {
            "proxies": _merge_setting(proxies, self.proxies),
            "stream": _merge_setting(stream, self.stream),
            "verify": _merge_setting(verify, self.verify),
            "cert": _merge_setting(cert, self.cert),
        }

    def prepare_request(self, request: requests.Request) -> requests.PreparedRequest:
        """requests' own preparation; for a backend URL, what it derived is recorded per backend.

        Mirrors ``requests.Session.prepare_request`` (unchanged since requests
        2.x; requests' own suite run through FailoverSession checks it), with
        the ``.netrc`` lookup cached. For a backend URL the prepared request
        also records which ``Authorization`` and ``Cookie`` values the session
        derived (not the caller), so that a request sent to another backend
        carries that backend's own (:func:`._environment.readdress`), and the
        cookies another backend sets are kept (:func:`._environment.keep_cookies`).
        Other URLs go to requests' code.
        """
        url = request.url
        matched = self.failover_adapter.match(url) if isinstance(url, str) else None
        if matched is None:
            return super().prepare_request(request)
        netrc = bool(self.trust_env and not request.auth and not self.auth)
        auth = self._environment.netrc_auth(matched[0].origin) if netrc else request.auth
        cookies = request.cookies or {}
        merged_cookies = merge_cookies(RequestsCookieJar(), self.cookies)
        if cookies:  # (an empty dict adds nothing: no jar built for it)
            if not isinstance(cookies, cookielib.CookieJar):
                cookies = cookiejar_from_dict(cookies)
            merged_cookies = merge_cookies(merged_cookies, cookies)
        headers = _merge_setting(request.headers, self.headers, dict_class=CaseInsensitiveDict)
        prepared = requests.PreparedRequest()
        prepared.prepare(
            method=(request.method or "").upper(),
            url=url,
            files=request.files,
            data=request.data,
            json=request.json,
            headers=headers,
            params=_merge_setting(request.params, self.params) or None,  # empty: as requests (no query added)
            auth=_merge_setting(auth, self.auth),
            cookies=merged_cookies,
            hooks=merge_hooks(request.hooks, self.hooks),
        )
        derived = netrc and auth is not None
        callers = headers.get("Authorization") if derived and headers else None
        mark(
            prepared,
            self._environment,
            merged_cookies,
            netrc=netrc,
            derived=derived,
            callers=callers,
            session_jar=self.cookies,
        )
        return prepared

    # -- redirects: the configured backends are one origin ------------------------------------
    def should_strip_auth(self, old_url: str, new_url: str) -> bool:
        """requests' rule, with every configured backend counted as one origin.

        A redirect from a backend to a URL of any configured backend keeps the
        caller's ``Authorization`` (the request is rewritten to the backend
        that is up, which may look like a host change), unless it goes from
        ``https`` to plain ``http``. Any other host: requests' own rule.
        """
        adapter = self.failover_adapter
        if adapter.match(old_url) is not None and adapter.match(new_url) is not None:
            return old_url.lower().startswith("https:") and new_url.lower().startswith("http:")
        return bool(super().should_strip_auth(old_url, new_url))  # type: ignore[no-untyped-call]

    def rebuild_auth(self, prepared_request: requests.PreparedRequest, response: requests.Response) -> None:
        """requests' own (strip on another origin, then ``.netrc`` of the new URL), recorded per backend."""
        headers = prepared_request.headers
        original = response.request.url or ""
        url = prepared_request.url or ""
        if "Authorization" in headers and self.should_strip_auth(original, url):
            del headers["Authorization"]
        matched = self.failover_adapter.match(url)
        if matched is None:
            new_auth = _sessions.get_netrc_auth(url) if self.trust_env else None
        else:
            new_auth = self._environment.netrc_auth(matched[0].origin) if self.trust_env else None
        if new_auth is not None:
            prepared_request.prepare_auth(new_auth)
        if matched is not None:
            jar = getattr(prepared_request, "_cookies", None)
            mark(prepared_request, self._environment, jar, netrc=self.trust_env, derived=new_auth is not None)

    def _choice(self, url: str) -> Optional[BaseAdapter]:
        """The adapter requests would choose for ``url`` (first matching prefix)."""
        lowered = url.lower()
        for prefix, adapter in self.adapters.items():
            if lowered.startswith(prefix.lower()):
                return adapter
        return None

    def close(self) -> None:
        """Close every adapter once (the failover adapter is mounted more than once)."""
        closed: Dict[int, BaseAdapter] = {}
        for adapter in (*self.adapters.values(), *self.backend_adapters.values()):
            if id(adapter) not in closed:
                closed[id(adapter)] = adapter
                adapter.close()

    @property
    def active_backend(self) -> str:
        """The base URL requests go to now."""
        return self.failover_adapter.active_backend

    def status(self) -> Status:
        """A JSON-serialisable snapshot: the selection and each backend's health (see :class:`Status`)."""
        return self.failover_adapter.status()

    def force_refresh(self) -> str:
        """Probe every backend now, ignoring the cache; return the new active base URL.

        Probes use this session's ``verify``, ``cert`` and proxy settings.
        """
        first = self.failover_adapter.backends[0]
        settings = self.merge_environment_settings(first, {}, None, self.verify, self.cert)
        return self.failover_adapter.force_refresh(
            verify=settings["verify"], cert=settings["cert"], proxies=settings["proxies"]
        )

    def clear_cache(self) -> None:
        """Forget the selection in memory and in the shared file."""
        self.failover_adapter.clear_cache()

    def __repr__(self) -> str:
        return f"<FailoverSession {list(self.failover_adapter.backends)!r} active={self.active_backend!r}>"
