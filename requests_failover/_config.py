"""Configuration: parsed backends and the frozen options object.

Everything here is validated once, when a session or adapter is built, and
never changes afterwards; no I/O happens in this module except reading the
``REQUESTS_FAILOVER_BACKENDS`` environment variable (and one stat: a
``state_file`` naming a directory is refused).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping, Optional, Sequence, Tuple, Union
from urllib.parse import unquote

from urllib3.util import parse_url

from . import _redact as redact
from .store import check_url

ENV_BACKENDS = "REQUESTS_FAILOVER_BACKENDS"
ENV_STATE_URL = "REQUESTS_FAILOVER_STATE_URL"

# The defaults of every option, declared once: the adapter's and the session's
# signatures, the options object and the CLI all read them from here.
DEFAULT_HEALTH_PATHS: Tuple[str, ...] = ("/health", "/api/health", "/status")
DEFAULT_HEALTH_TIMEOUT = 3.0
DEFAULT_CACHE_TTL = 300.0
DEFAULT_MAX_RETRIES = 2
DEFAULT_RETRY_DELAY = 1.0
DEFAULT_HEALTHY_THRESHOLD = 2
DEFAULT_HEDGE_DELAY = 0.25
#: Applied to a request sent without a timeout: (connect, read) in seconds.
DEFAULT_TIMEOUT: Tuple[float, float] = (3.0, 30.0)
DEFAULT_POOL_CONNECTIONS = 10
DEFAULT_POOL_MAXSIZE = 10
#: Seconds over which a backend taken back ramps from 10 % to all requests (0: at once).
DEFAULT_SLOW_START = 20.0
DEFAULT_DEMOTE_SLOW = True
DEFAULT_HEDGE_REQUESTS = True

_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Backend:
    """One backend base URL, parsed and normalised.

    ``url`` is the canonical form (lower-case scheme and host, default port
    omitted, no trailing slash, never any userinfo) used for identity, logs,
    ``status()`` and the state file. Userinfo given in the configured URL is
    kept apart in ``auth`` and used only to authenticate requests sent to it.
    """

    scheme: str
    host: str  # lower case; IPv6 without brackets
    port: int
    base_path: str  # "" or "/api" (never a trailing slash)
    auth: Optional[Tuple[str, str]] = field(default=None, repr=False, compare=False)
    # derived once: every request reads them
    netloc: str = field(init=False, repr=False, compare=False)
    origin: str = field(init=False, repr=False, compare=False)
    url: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        host = f"[{self.host}]" if ":" in self.host else self.host
        netloc = host if self.port == _DEFAULT_PORTS[self.scheme] else f"{host}:{self.port}"
        object.__setattr__(self, "netloc", netloc)
        object.__setattr__(self, "origin", f"{self.scheme}://{netloc}")
        object.__setattr__(self, "url", f"{self.scheme}://{netloc}{self.base_path}")

    def origins(self) -> Tuple[str, ...]:
        """Every lower-case ``scheme://host[:port]`` spelling that names this backend."""
        spellings = [self.origin]
        if self.port == _DEFAULT_PORTS[self.scheme]:
            spellings.append(f"{self.origin}:{self.port}")
        return tuple(spellings)

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost" or self.host.endswith(".localhost"):
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def __str__(self) -> str:
        return self.url


#: What a host name may hold once IDNA-encoded (letters, digits, ``-``, ``.``, ``_``).
_HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?\.?")


def parse_backend(value: object, *, argument: str = "backends") -> Backend:
    """Parse one base URL; raise ``TypeError``/``ValueError`` naming ``argument``.

    Messages show the URL with its userinfo masked (:mod:`._redact`) and never
    quote urllib3's own parse message, which repeats the URL whole.
    """
    if not isinstance(value, str):
        raise TypeError(f"{argument}: each backend must be a str URL, got {type(value).__name__}")
    text = value.strip()
    shown = redact.checked(text, argument)
    try:
        parsed = parse_url(text)
    except Exception:  # urllib3 raises LocationParseError (a ValueError) and others, quoting the URL
        raise ValueError(
            f"{argument}: invalid URL {shown!r} (check the host and the port, a number from 1 to 65535)"
        ) from None
    scheme = (parsed.scheme or "").lower()
    if scheme not in _DEFAULT_PORTS or "://" not in text:
        raise ValueError(f"{argument}: {shown!r} needs an http:// or https:// scheme")
    if not parsed.host:
        raise ValueError(f"{argument}: {shown!r} has no host")
    if parsed.query is not None or parsed.fragment is not None:
        raise ValueError(f"{argument}: {shown!r} is a base URL and cannot carry a query or fragment")
    host = _host(parsed.host, shown, argument)
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise ValueError(f"{argument}: {shown!r}: a port must be a number from 1 to 65535")
    port = parsed.port if parsed.port is not None else _DEFAULT_PORTS[scheme]
    base_path = (parsed.path or "").rstrip("/")
    if base_path.startswith("//"):
        raise ValueError(f"{argument}: {shown!r}: the base path cannot start with '//' (one URL per backend)")
    auth: Optional[Tuple[str, str]] = None
    if parsed.auth:
        user, _, password = parsed.auth.partition(":")
        auth = (unquote(user), unquote(password))  # as requests' get_auth_from_url reads them
    return Backend(scheme, host, port, base_path, auth)


def _host(raw: str, shown: str, argument: str) -> str:
    """The host of a backend URL, lower case, IDNA-encoded; an IP literal checked as one."""
    host = raw.lower()
    if host.startswith("["):
        literal = host.strip("[]")
        if "%" in literal:
            raise ValueError(
                f"{argument}: {shown!r}: an IPv6 zone id (%25...) is not supported; "
                "use a host name or a global IPv6 address"
            )
        try:
            ipaddress.IPv6Address(literal)
        except ValueError:
            raise ValueError(f"{argument}: {shown!r} has an invalid IPv6 address") from None
        return literal
    try:
        host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        raise ValueError(f"{argument}: {shown!r} has an invalid host name") from None
    if not _HOST_NAME.fullmatch(host):
        raise ValueError(
            f"{argument}: {shown!r} has an invalid host name (one URL per backend: pass a list, "
            "never several URLs in one string)"
        )
    return host


def _parse_backends(values: object, *, argument: str, allow_insecure: bool) -> Tuple[Backend, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"{argument}: expected a list of base URLs, got {type(values).__name__}")
    backends = tuple(parse_backend(v, argument=argument) for v in values)
    if not backends:
        raise ValueError(f"{argument}: at least one backend URL is required")
    seen = set()
    for backend in backends:
        if backend.url in seen:
            raise ValueError(f"{argument}: {backend.url} is listed twice")
        seen.add(backend.url)
        if backend.scheme == "http" and not backend.is_loopback and not allow_insecure:
            raise ValueError(
                f"{argument}: {backend.url} uses plain http:// on a non-loopback host; "
                "use https:// or pass allow_insecure=True"
            )
    return backends


def _number(name: str, value: object, *, minimum: float, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a number of seconds, got {type(value).__name__}")
    number = float(value)
    if math.isnan(number) or math.isinf(number) or number < minimum or (strict and number == minimum):
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        raise ValueError(f"{name}: must be a finite number {bound}, got {value!r}")
    return number


def validate_timeout(name: str, value: object) -> Tuple[Optional[float], Optional[float]]:
    """Normalise a requests-style timeout (float or (connect, read)) to a pair."""
    if isinstance(value, tuple):
        if len(value) != 2:
            raise ValueError(f"{name}: a timeout tuple must be (connect, read), got {value!r}")
        connect, read = value
        return (
            None if connect is None else _number(name, connect, minimum=0, strict=True),
            None if read is None else _number(name, read, minimum=0, strict=True),
        )
    seconds = _number(name, value, minimum=0, strict=True)
    return (seconds, seconds)


@dataclass(frozen=True)
class Options:
    """Every setting of a :class:`~requests_failover.FailoverAdapter`, validated.

    Built only by :func:`build_options` (its fields have no defaults: the
    defaults are :data:`OPTION_DEFAULTS`). ``targets`` are the backends
    requests are sent to, in priority order. ``aliases`` are the base URLs
    whose requests are rewritten: the targets plus, in development mode, the
    configured backends that the environment replaced.
    """

    targets: Tuple[Backend, ...]
    aliases: Tuple[Backend, ...]
    development: bool
    health_paths: Tuple[str, ...]
    health_timeout: float
    cache_ttl: float
    max_retries: int
    retry_delay: float
    healthy_threshold: int
    hedge_delay: Optional[float]
    default_timeout: Tuple[Optional[float], Optional[float]]
    state_file: Union[bool, str, None]
    transport: Any  # None or a requests adapter that really sends
    on_switch: Optional[Callable[[Any], None]]
    allow_insecure: bool
    health_check: Optional[Callable[[Any], bool]]
    health_headers: Tuple[Tuple[str, str], ...]
    observers: Tuple[Callable[[Any], None], ...]
    state_store: Any  # None, a redis:// or rediss:// URL, or a store object
    pool_connections: int
    pool_maxsize: int
    pool_block: bool
    slow_start: float
    demote_slow: bool
    hedge_requests: bool

    def __repr__(self) -> str:
        """Every field, with the secrets hidden: header values and a store URL's userinfo."""
        shown = []
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if item.name == "health_headers":
                value = redact.headers(value)
            elif item.name == "state_store" and isinstance(value, str):
                value = redact.url(value)
            shown.append(f"{item.name}={value!r}")
        return f"Options({', '.join(shown)})"


_STORE_METHODS = ("get", "compare_and_set", "lease", "release", "watch", "close")


def _state_store(value: object, env: Mapping[str, str]) -> object:
    """Validate ``state_store`` (or the environment's URL when it is None)."""
    argument = "state_store"
    if value is None:
        value = env.get(ENV_STATE_URL, "").strip() or None
        argument = ENV_STATE_URL
        if value is None:
            return None
    if isinstance(value, str):
        check_url(value, argument)
        return value
    missing = [name for name in _STORE_METHODS if not callable(getattr(value, name, None))]
    if missing or not isinstance(getattr(value, "location", None), str):
        lacks = ", ".join(missing) or "a str location"
        raise TypeError(
            f"state_store: expected a redis:// or rediss:// URL or a store object, got {type(value).__name__} "
            f"(lacks {lacks})"
        )
    return value


#: Every keyword option of :class:`~requests_failover.FailoverAdapter` and
#: :class:`~requests_failover.FailoverSession` with its default, declared once:
#: :func:`build_options` reads its arguments by these names, the session and
#: the adapter pass theirs down by them, and tests/test_config.py pins both
#: explicit signatures (kept for ``inspect.signature`` users such as
#: requests-cache) to this table.
OPTION_DEFAULTS: Mapping[str, Any] = MappingProxyType(
    {
        "health_paths": DEFAULT_HEALTH_PATHS,
        "health_timeout": DEFAULT_HEALTH_TIMEOUT,
        "cache_ttl": DEFAULT_CACHE_TTL,
        "max_retries": DEFAULT_MAX_RETRIES,
        "retry_delay": DEFAULT_RETRY_DELAY,
        "healthy_threshold": DEFAULT_HEALTHY_THRESHOLD,
        "hedge_delay": DEFAULT_HEDGE_DELAY,
        "default_timeout": DEFAULT_TIMEOUT,
        "state_file": None,
        "transport": None,
        "on_switch": None,
        "allow_insecure": False,
        "health_check": None,
        "health_headers": None,
        "observers": (),
        "state_store": None,
        "pool_connections": DEFAULT_POOL_CONNECTIONS,
        "pool_maxsize": DEFAULT_POOL_MAXSIZE,
        "pool_block": False,
        "slow_start": DEFAULT_SLOW_START,
        "demote_slow": DEFAULT_DEMOTE_SLOW,
        "hedge_requests": DEFAULT_HEDGE_REQUESTS,
    }
)


def build_options(backends: object, *, environ: Optional[Mapping[str, str]] = None, **given: Any) -> Options:
    """Validate every option once (``given`` by the names of :data:`OPTION_DEFAULTS`); errors name the argument.

    ``environ`` (default ``os.environ``) is where ``REQUESTS_FAILOVER_BACKENDS``
    and ``REQUESTS_FAILOVER_STATE_URL`` are read.
    """
    unknown = sorted(set(given) - set(OPTION_DEFAULTS))
    if unknown:
        raise TypeError(f"{unknown[0]}: not an option of FailoverAdapter")
    o = {**OPTION_DEFAULTS, **given}
    for name in ("allow_insecure", "pool_block", "demote_slow", "hedge_requests"):
        _flag(name, o[name])
    env = os.environ if environ is None else environ
    configured = _parse_backends(backends, argument="backends", allow_insecure=o["allow_insecure"])
    targets, development = configured, False
    override = env.get(ENV_BACKENDS, "").strip()
    if override:
        urls = [part.strip() for part in override.split(",") if part.strip()]
        targets = _parse_backends(urls, argument=ENV_BACKENDS, allow_insecure=o["allow_insecure"])
        development = True
    if o["transport"] is not None and not callable(getattr(o["transport"], "send", None)):
        raise TypeError(f"transport: expected a requests adapter, got {type(o['transport']).__name__}")
    return Options(
        targets=targets,
        aliases=targets + tuple(b for b in configured if b not in targets),
        development=development,
        health_paths=_health_paths(o["health_paths"]),
        health_timeout=_number("health_timeout", o["health_timeout"], minimum=0, strict=True),
        cache_ttl=_number("cache_ttl", o["cache_ttl"], minimum=0),
        max_retries=_count("max_retries", o["max_retries"], 0, None),
        retry_delay=_number("retry_delay", o["retry_delay"], minimum=0),
        healthy_threshold=_count("healthy_threshold", o["healthy_threshold"], 1, 100),
        hedge_delay=None
        if o["hedge_delay"] is None
        else _number("hedge_delay", o["hedge_delay"], minimum=0, strict=True),
        default_timeout=validate_timeout("default_timeout", o["default_timeout"]),
        state_file=_state_file(o["state_file"]),
        transport=o["transport"],
        on_switch=_callable("on_switch", o["on_switch"]),
        allow_insecure=o["allow_insecure"],
        health_check=_callable("health_check", o["health_check"]),
        health_headers=_health_headers(o["health_headers"]),
        observers=_observers(o["observers"]),
        state_store=_state_store(o["state_store"], env),
        pool_connections=_count("pool_connections", o["pool_connections"], 1, None),
        pool_maxsize=_count("pool_maxsize", o["pool_maxsize"], 1, None),
        pool_block=o["pool_block"],
        slow_start=_number("slow_start", o["slow_start"], minimum=0),
        demote_slow=o["demote_slow"],
        hedge_requests=o["hedge_requests"],
    )


def _flag(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__}")


def _count(name: str, value: object, minimum: int, maximum: Optional[int]) -> int:
    """An int option within [minimum, maximum] (no maximum: None)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")
    if maximum is not None and not minimum <= value <= maximum:
        raise ValueError(f"{name}: must be between {minimum} and {maximum}, got {value}")
    if value < minimum:
        raise ValueError(f"{name}: must be >= {minimum}, got {value}")
    return value


def _callable(name: str, value: object) -> Any:
    if value is not None and not callable(value):
        raise TypeError(f"{name}: expected a callable, got {type(value).__name__}")
    return value


def _health_paths(value: object) -> Tuple[str, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError("health_paths: expected a sequence of paths such as ('/health',)")
    paths = tuple(value)
    if not paths:
        raise ValueError("health_paths: at least one path is required")
    for path in paths:
        if not isinstance(path, str):
            raise TypeError(f"health_paths: each path must be a str, got {type(path).__name__}")
        if not path.startswith("/") or any(c in path for c in " \r\n#\\") or path.startswith("///"):
            raise ValueError(f"health_paths: {path!r} must be an absolute path starting with '/'")
        # '/../health' would leave the base path by a back door: '//health' says so openly
        if any(unquote(part) in (".", "..") for part in path.split("?")[0].split("/")):
            raise ValueError(
                f"health_paths: {path!r} contains a '.' or '..' segment; "
                "write a path relative to the host with two leading slashes, such as '//health'"
            )
    return paths


def _state_file(value: object) -> Union[bool, str, None]:
    if value is True:
        raise ValueError("state_file: pass None for the default file, False for memory only, or a path")
    if value is None or value is False:
        return value
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"state_file: expected a path, None or False, got {type(value).__name__}")
    path = os.fspath(value)
    if not isinstance(path, str) or not path:
        raise ValueError("state_file: expected a non-empty str path")
    if os.path.isdir(path):  # one stat: a directory can never be the state file
        example = os.path.join(path, "failover.json")
        raise ValueError(f"state_file: {path!r} is a directory; give the path of a file, such as {example!r}")
    return path


def _observers(value: object) -> Tuple[Callable[[Any], None], ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, frozenset, set)):
        raise TypeError(f"observers: expected a sequence of callables, got {type(value).__name__}")
    for observer in value:
        if not callable(observer):
            raise TypeError(f"observers: each observer must be callable, got {type(observer).__name__}")
    return tuple(value)


def _health_headers(value: object) -> Tuple[Tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise TypeError(f"health_headers: expected a mapping of header names to values, got {type(value).__name__}")
    for name, text in value.items():
        if not isinstance(name, str) or not isinstance(text, str):
            raise TypeError("health_headers: names and values must be str")
        if not name or any(c in name + text for c in "\r\n\0") or ":" in name:
            raise ValueError(f"health_headers: invalid header {name!r}")
    return tuple(value.items())
