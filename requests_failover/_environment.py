"""What requests recomputes from the environment on every call, cached for backend URLs.

One :class:`Environment` per session: the session's own environment merge,
its ``.netrc`` lookups, and (handed down to the failover adapter, like
``trust_env``) the proxies of each backend's requests and probes all read it.

For every request ``requests.Session`` evaluates the proxy variables (scanning
all of ``os.environ``), ``NO_PROXY``, ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE``
and looks for a ``.netrc`` file on disk. For a backend URL each answer is a
pure function of a few inputs, so it is cached keyed on all of them:

- proxies and CA bundle: the backend's origin, the ``no_proxy`` given, the
  values of the proxy variables (``http_proxy``, ``https_proxy``,
  ``all_proxy``, ``no_proxy`` in both cases, and any other ``*_proxy``
  variable, found by a full scan whenever the number of environment variables
  changes), ``REQUEST_METHOD`` (under CGI requests ignores ``HTTP_PROXY``),
  ``REQUESTS_CA_BUNDLE`` and ``CURL_CA_BUNDLE``;
- netrc: the host, ``NETRC``, ``HOME``, and the identity (inode, size,
  modification time) of each file requests would look at, re-read with one
  ``os.stat`` per candidate and request.

A change of any of them takes effect on the very next request, as in plain
requests. requests' helpers are looked up where requests looks them up
(``requests.sessions.get_netrc_auth``, ``get_environ_proxies``), so a test
that replaces one sees its replacement used. (One edge is not seen: a netrc file rewritten in place with the
same size within the file system's timestamp granularity.)
"""

from __future__ import annotations

import copy
import os
import threading
from http import cookiejar
from http.cookiejar import CookieJar
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Tuple
from urllib.parse import urlsplit
from urllib.request import getproxies

from requests import PreparedRequest, sessions
from requests import cookies as _cookies
from requests.utils import NETRC_FILES

from . import _runtime

_PROXY_NAMES = (
    *("http_proxy", "https_proxy", "all_proxy", "no_proxy"),
    *("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"),
)
get_cookie_header: Any = _cookies.get_cookie_header  # untyped in types-requests
_LIMIT = 256  # entries per cache: backends x variants seen; cleared when full


class Environment:
    """The caches of one session (thread-safe: dictionary reads and writes only)."""

    def __init__(self) -> None:
        self._settings: Dict[Any, Tuple[Dict[str, str], Optional[str]]] = {}
        self._netrc: Dict[Any, Optional[Tuple[str, str]]] = {}
        self._netrc_paths: Dict[Tuple[Optional[str], Optional[str]], Tuple[str, ...]] = {}
        self._proxies: Dict[Any, Dict[str, str]] = {}
        self._extra: Tuple[str, ...] = ()
        self._count = -1
        self._scan_lock = threading.Lock()
        _runtime.reset_after_fork(self)

    def _after_fork(self) -> None:
        self._scan_lock = threading.Lock()  # a scan of the parent's may have held it

    def __getstate__(self) -> Dict[str, Any]:
        # A prepared request records the environment it was derived with (a
        # pickled request or response carries it along): the caches are
        # rebuilt on demand, the lock is new.
        return {}

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]  # a fresh, empty cache

    def _fingerprint(self) -> Tuple[Any, ...]:
        environ = os.environ
        count = len(environ)
        if count != self._count:
            with self._scan_lock:
                self._extra = tuple(
                    sorted(k for k in list(environ) if k.lower().endswith("_proxy") and k not in _PROXY_NAMES)
                )
                self._count = count
        get = environ.get
        return (
            count,
            tuple(map(get, _PROXY_NAMES)),
            tuple(map(get, self._extra)),
            get("REQUEST_METHOD"),
            get("REQUESTS_CA_BUNDLE"),
            get("CURL_CA_BUNDLE"),
        )

    def settings(self, origin: str, no_proxy: Optional[str]) -> Tuple[Dict[str, str], Optional[str]]:
        """(proxies from the environment for ``origin``, the CA bundle it names or None)."""
        fingerprint = self._fingerprint()
        helper = sessions.get_environ_proxies  # where requests looks it up: a test may replace it
        key = (origin, no_proxy, fingerprint, helper)
        found = self._settings.get(key)
        if found is None:
            bundle = fingerprint[4] or fingerprint[5] or None
            found = (helper(origin + "/", no_proxy=no_proxy), bundle)
            if len(self._settings) >= _LIMIT:
                self._settings.clear()
            self._settings[key] = found
        return found

    def proxies_for(self, target: str, source: Optional[str], given: Optional[Mapping[str, str]]) -> Dict[str, str]:
        """The proxies requests would use for a request addressed to ``target`` (an origin).

        ``given`` are the proxies ``Session.send`` passed down: the caller's
        and the session's, plus what the environment contributed for the URL
        asked for, ``source`` (an origin; None when not known, as for a probe).
        The environment's contribution for ``source`` (for None: any value the
        proxy variables hold) is taken out, and its contribution for
        ``target`` (``NO_PROXY`` applied to ``target``'s host) put in, so each
        backend gets what requests would give it if the caller had addressed
        it directly. Explicit proxies stay (one equal to the environment's own
        value for that scheme cannot be told apart from it, and is treated as
        the environment's).
        """
        pairs = tuple(sorted(given.items())) if given else ()
        fingerprint = self._fingerprint()
        key = (target, source, pairs, fingerprint, sessions.get_environ_proxies)
        found = self._proxies.get(key)
        if found is None:
            no_proxy = dict(pairs).get("no_proxy")
            contributed = self.settings(source, no_proxy)[0] if source is not None else getproxies()
            found = {k: v for k, v in pairs if contributed.get(k) != v}
            for scheme, value in self.settings(target, no_proxy)[0].items():
                found.setdefault(scheme, value)
            if len(self._proxies) >= _LIMIT:
                self._proxies.clear()
            self._proxies[key] = found
        return dict(found)

    def netrc_auth(self, host_url: str) -> Optional[Tuple[str, str]]:
        """``get_netrc_auth(host_url)``, recomputed only when its inputs changed."""
        netrc, home = os.environ.get("NETRC"), os.environ.get("HOME")
        paths = self._netrc_paths.get((netrc, home))
        if paths is None:  # the files requests would look at, for these values of NETRC and HOME
            candidates = (netrc,) if netrc is not None else tuple(f"~/{name}" for name in NETRC_FILES)
            paths = tuple(os.path.expanduser(candidate) for candidate in candidates)
            if len(self._netrc_paths) >= _LIMIT:
                self._netrc_paths.clear()
            self._netrc_paths[(netrc, home)] = paths
        stamps: List[Optional[Tuple[int, int, int]]] = []
        for path in paths:
            try:
                info = os.stat(path)
                stamps.append((info.st_ino, info.st_size, info.st_mtime_ns))
            except (OSError, ValueError):
                stamps.append(None)
        helper = sessions.get_netrc_auth  # where requests looks it up: a test may replace it
        key = (host_url, netrc, home, tuple(stamps), helper)
        if key in self._netrc:
            return self._netrc[key]
        auth = helper(host_url)
        if len(self._netrc) >= _LIMIT:
            self._netrc.clear()
        self._netrc[key] = auth
        return auth


# -- what belongs to one backend: .netrc credentials and cookies, decided again per backend -------------------------

#: The attribute of a prepared request that says where its credential and cookies came from.
PROVENANCE = "_requests_failover_provenance"


class Provenance(NamedTuple):
    """What :class:`~requests_failover.FailoverSession` derived for the URL asked for.

    ``netrc``: whether ``.netrc`` applies (``trust_env``, no ``auth=`` of the
    request or the session); ``authorization``: the ``Authorization`` value it
    gave for the URL asked for (None: no entry); ``cookie``: the ``Cookie``
    value computed from ``jar`` for that URL (None: none); ``callers``: the
    caller's ``Authorization`` that the entry replaced; ``session_jar``: the
    session's own jar, where :func:`keep_cookies` keeps what another backend set.
    """

    environment: Environment
    netrc: bool
    authorization: Optional[str]
    jar: Optional[CookieJar]
    cookie: Optional[str]
    callers: Optional[str] = None  # the caller's Authorization header that .netrc replaced (requests' rule)
    session_jar: Optional[CookieJar] = None  # where cookies set by another backend are kept


def mark(
    prepared: PreparedRequest,
    environment: Environment,
    jar: Optional[CookieJar],
    *,
    netrc: bool,
    derived: bool,
    callers: Optional[str] = None,
    session_jar: Optional[CookieJar] = None,
) -> None:
    """Record on ``prepared`` which of its headers the session derived (not the caller).

    ``netrc``: whether ``.netrc`` applies to the request; ``derived``: whether
    its ``Authorization`` came from ``.netrc``; ``callers``: the header the
    caller set, which that entry replaced (requests lets ``.netrc`` override
    ``headers=``).
    """
    headers = prepared.headers
    authorization = headers.get("Authorization") if derived else None
    cookie = headers.get("Cookie")
    provenance = Provenance(environment, netrc, authorization, jar, cookie, callers, session_jar)
    setattr(prepared, PROVENANCE, provenance)


def readdress(
    request: PreparedRequest, outgoing: PreparedRequest, target: Any, auth: Optional[Tuple[str, str]]
) -> Optional[Tuple[str, str]]:
    """Make ``outgoing`` (``request`` rewritten to the backend ``target``) carry what is ``target``'s own.

    Returns the credential to apply to ``outgoing`` (``auth``, the one
    :func:`._sending.rewrite` chose, unless ``.netrc`` decides). As requests would for a
    request addressed to ``target`` directly:

    - a ``.netrc`` credential of the host asked for is never sent to another
      backend: ``target`` gets its own ``.netrc`` entry (which, as in
      requests, overrides an ``Authorization`` of ``headers=``), else the
      caller's ``Authorization`` header, else the userinfo of its configured
      URL, else nothing; ``auth=`` (no ``.netrc`` then) is kept;
    - a ``Secure`` cookie is never sent over plain ``http://``: the ``Cookie``
      header is computed again from the jar without them.

    A request the session did not prepare (a plain session with the adapter
    mounted) is left as it is.
    """
    provenance: Optional[Provenance] = getattr(request, PROVENANCE, None)
    if provenance is None:
        return auth
    headers = outgoing.headers
    if provenance.netrc:
        own = provenance.environment.netrc_auth(target.origin)
        derived = provenance.authorization is not None and headers.get("Authorization") == provenance.authorization
        if own is not None:  # as requests: an entry overrides headers=
            headers.pop("Authorization", None)
            auth = own
        elif derived:  # the host asked for's entry: never sent on
            headers.pop("Authorization", None)
            if provenance.callers is not None:
                headers["Authorization"] = provenance.callers
                auth = None
            else:
                auth = target.auth
    if (
        provenance.jar is not None
        and provenance.cookie is not None
        and headers.get("Cookie") == provenance.cookie
        and target.scheme == "http"
        and (request.url or "").lower().startswith("https:")
    ):
        plain = outgoing.copy()
        plain.url = "http:" + (request.url or "")[len("https:") :]  # the URL asked for, over plain http
        plain.headers.pop("Cookie", None)  # the jar adds none to a request that has one
        cookie = get_cookie_header(provenance.jar, plain)
        if cookie:
            headers["Cookie"] = cookie
        else:
            headers.pop("Cookie", None)
    return auth


def keep_cookies(request: PreparedRequest, response: Any) -> None:
    """Keep in the session's jar the cookies a backend set when it answered for another one.

    ``Session.send`` stores a response's cookies under the URL asked for
    (requests' ``extract_cookies_to_jar(jar, request, ...)``), so a host-only
    cookie of the backend that answered becomes the asked-for host's: one
    service, one session. A cookie scoped with ``Domain=`` to the answering
    backend's domain would be refused there (it does not domain-match the
    host asked for): it is checked here against the answering backend, as
    requests would for a request sent to it directly, and kept as a host-only
    cookie of the host asked for. Called by the adapter once per request
    whose answer came from another backend (no hook: a prepared request
    stays what requests' own preparation makes).
    """
    provenance: Optional[Provenance] = getattr(request, PROVENANCE, None)
    sent = getattr(response, "request", None)
    if provenance is None or provenance.session_jar is None or sent is None or sent is request:
        return
    asked = request.url or ""
    asked_host = (urlsplit(asked).hostname or "").lower()
    answered_host = (urlsplit(sent.url or "").hostname or "").lower()
    if not asked_host or asked_host == answered_host or getattr(response, "raw", None) is None:
        return
    theirs = _cookies.RequestsCookieJar()
    _extract_cookies_to_jar(theirs, sent, response.raw)  # the answering backend's policy
    host_only: str = _eff_request_host(_Asked(asked))[1]
    for cookie in theirs:
        domain = cookie.domain.lstrip(".")
        if not cookie.domain_specified or asked_host == domain or asked_host.endswith("." + domain):
            continue  # requests stores it under the URL asked for itself
        kept = copy.copy(cookie)
        # a host-only cookie of the host asked for, spelled as the jar spells one it sets itself
        kept.domain, kept.domain_specified, kept.domain_initial_dot = host_only, False, False
        provenance.session_jar.set_cookie(kept)


_extract_cookies_to_jar: Any = _cookies.extract_cookies_to_jar  # untyped in types-requests
_eff_request_host: Any = getattr(cookiejar, "eff_request_host")  # noqa: B009 - not in typeshed's stub


class _Asked:
    """The URL asked for, as ``http.cookiejar`` reads a request."""

    def __init__(self, url: str) -> None:
        self._url = url

    def get_full_url(self) -> str:
        return self._url

    def get_header(self, name: str, default: Optional[str] = None) -> Optional[str]:
        return default
