"""What requests recomputes from the environment on every call, cached for backend URLs.

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

import os
import threading
from typing import Any, Dict, List, Optional, Tuple

from requests import sessions
from requests.utils import NETRC_FILES

_PROXY_NAMES = (
    *("http_proxy", "https_proxy", "all_proxy", "no_proxy"),
    *("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"),
)
_LIMIT = 256  # entries per cache: backends x variants seen; cleared when full


class Environment:
    """The caches of one session (thread-safe: dictionary reads and writes only)."""

    def __init__(self) -> None:
        self._settings: Dict[Any, Tuple[Dict[str, str], Optional[str]]] = {}
        self._netrc: Dict[Any, Optional[Tuple[str, str]]] = {}
        self._extra: Tuple[str, ...] = ()
        self._count = -1
        self._scan_lock = threading.Lock()

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

    def netrc_auth(self, host_url: str) -> Optional[Tuple[str, str]]:
        """``get_netrc_auth(host_url)``, recomputed only when its inputs changed."""
        netrc = os.environ.get("NETRC")
        candidates = (netrc,) if netrc is not None else tuple(f"~/{name}" for name in NETRC_FILES)
        stamps: List[Optional[Tuple[int, int, int]]] = []
        for candidate in candidates:
            try:
                info = os.stat(os.path.expanduser(candidate))
                stamps.append((info.st_ino, info.st_size, info.st_mtime_ns))
            except (OSError, ValueError):
                stamps.append(None)
        helper = sessions.get_netrc_auth  # where requests looks it up: a test may replace it
        key = (host_url, netrc, os.environ.get("HOME"), tuple(stamps), helper)
        if key in self._netrc:
            return self._netrc[key]
        auth = helper(host_url)
        if len(self._netrc) >= _LIMIT:
            self._netrc.clear()
        self._netrc[key] = auth
        return auth
