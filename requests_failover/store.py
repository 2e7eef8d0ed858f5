"""Shared stores for the selection: the interface, and Redis/Valkey.

A *store* keeps one document per backend set where every machine of a fleet
can read it. The library does the rest: it validates whatever a store returns
exactly like the state file (an unconfigured host, garbage, another format
version, a huge value: ignored, logged once), keeps the machine's state file
as a local layer under it, calls the store only from its background thread
(never on a request's path once anything is known), and backs off when the
store fails. A store only moves bytes.

To plug another store, implement :class:`StateStore` and pass an instance as
``state_store=``. Every method may raise any exception when the store cannot
be reached; the library then keeps the selection on the machine and tries
again after a backoff.
"""

from __future__ import annotations

import math
import threading
from typing import Any, Callable, Dict, Optional, Protocol, Tuple, runtime_checkable
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from . import _redact, _runtime

#: A document larger than this is not read whole (the state is a few KiB).
MAX_DOCUMENT_BYTES = 1 << 20
#: Keys expire when no machine has written them for this long.
KEY_EXPIRY_SECONDS = 86400
DEFAULT_PREFIX = "requests-failover:"
#: Seconds for every Redis operation (connect, command, read) before it counts as failed.
DEFAULT_REDIS_TIMEOUT = 0.5
EXTRA_HINT = "pip install requests-failover[redis]"
#: The environment variable holding the password of a ``state_store`` URL that carries none.
ENV_STATE_PASSWORD = "REQUESTS_FAILOVER_STATE_PASSWORD"
#: What a key of another type than string reads as: never a valid document.
_WRONG_TYPE = b"\0"


@runtime_checkable
class StateStore(Protocol):
    """The interface of a shared store (documented in docs/deployment.rst).

    ``namespace`` names one backend set (a digest of its URLs); a store keeps
    one document per namespace. Documents are opaque bytes to the store.
    """

    #: Where the store is, for logs and ``status()``: never a password.
    location: str

    def get(self, namespace: str) -> Optional[bytes]:
        """The document, or None when there is none (missing or expired)."""

    def compare_and_set(self, namespace: str, expected: Optional[bytes], new: bytes) -> bool:
        """Store ``new`` if the document is still ``expected`` (None: absent), atomically; announce it."""

    def lease(self, namespace: str, name: str, owner: str, seconds: float) -> bool:
        """Take (or renew) the lease ``name`` for ``owner``; False while someone else holds it."""

    def release(self, namespace: str, name: str, owner: str) -> None:
        """Give the lease ``name`` up if ``owner`` holds it."""

    def watch(self, namespace: str, timeout: float) -> Optional[bytes]:
        """Wait up to ``timeout`` seconds for an announced document; None if none came.

        A store without push notifications sleeps and returns None; the library
        reconciles with :meth:`get` every few seconds either way.
        """

    def close(self) -> None:
        """Release connections (the store may be used again afterwards)."""


_CAS = """
local current = redis.pcall('GETRANGE', KEYS[1], 0, tonumber(ARGV[4]))
if type(current) == 'table' then current = '\\0' end
if current ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', tonumber(ARGV[3]))
redis.call('PUBLISH', KEYS[1], ARGV[2])
return 1
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""


def _import_redis() -> Any:
    try:
        import redis
    except ImportError:
        raise ImportError(f"state_store: the Redis store needs the redis client: {EXTRA_HINT}") from None
    return redis


def redact(url: str) -> str:
    """``url`` without its userinfo (see :mod:`requests_failover._redact`)."""
    return _redact.url(url)


def _flag(value: str) -> bool:
    if value.lower() not in ("", "0", "1", "true", "false", "yes", "no", "on", "off"):
        raise ValueError("expected a boolean")
    return True


def _seconds(value: str) -> bool:
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise ValueError("expected seconds > 0")
    return True


def _count(low: int, high: int) -> Callable[[str], bool]:
    def check(value: str) -> bool:
        if not value.isdigit() or not low <= int(value) <= high:
            raise ValueError(f"expected a whole number from {low} to {high}")
        return True

    return check


def _protocol(value: str) -> bool:
    """RESP 2 or 3; redis-py reads the option from version 5 on (4.x fails at the first connect)."""
    _count(2, 3)(value)
    try:
        import redis
    except ImportError:  # the store cannot be built without it anyway: that error says so
        return True
    major = str(getattr(redis, "__version__", "5")).split(".")[0]
    if major.isdigit() and int(major) < 5:
        raise ValueError(f"needs redis-py 5 or newer (installed: {redis.__version__})")
    return True


#: The query options of a store URL that redis-py accepts and that can work
#: here, each with its check (redis-py passes an unknown one on as a keyword
#: argument and fails at the first connect; ``protocol=9`` fails likewise).
_QUERY_OPTIONS: Dict[str, Callable[[str], bool]] = {
    "db": _count(0, 1 << 16),
    "protocol": _protocol,
    "socket_timeout": _seconds,
    "socket_connect_timeout": _seconds,
    "timeout": _seconds,
    "socket_keepalive": _flag,
    "health_check_interval": _count(0, 86400),
    "max_connections": _count(1, 1 << 16),
}


def _text(value: str) -> bool:
    if not value:
        raise ValueError("expected a value")
    return True


def _cert_reqs(value: str) -> bool:
    if value.lower() not in ("none", "optional", "required"):
        raise ValueError("expected none, optional or required")
    return True


#: TLS options, for ``rediss://`` only (passed to redis-py's SSL connection).
_TLS_OPTIONS: Dict[str, Callable[[str], bool]] = {
    "ssl_check_hostname": _flag,
    "ssl_ca_certs": _text,
    "ssl_ca_path": _text,
    "ssl_certfile": _text,
    "ssl_keyfile": _text,
    "ssl_cert_reqs": _cert_reqs,
    "ssl_ciphers": _text,
}


def check_url(url: str, argument: str = "state_store") -> None:
    """Raise ``ValueError`` naming ``argument`` unless ``url`` is a usable redis:// or rediss:// URL.

    Messages show the URL with its userinfo masked and never quote the
    parser's own message (which may hold part of a password).
    """
    shown = _redact.checked(url, argument)
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError on a bad port
    except ValueError:
        raise ValueError(f"{argument}: invalid URL {shown!r} (a port must be a number from 0 to 65535)") from None
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"{argument}: {shown!r} needs a redis:// or rediss:// scheme")
    if not parts.hostname:
        raise ValueError(f"{argument}: {shown!r} has no host")
    if port == 0:
        raise ValueError(f"{argument}: {shown!r}: a port must be a number from 1 to 65535")
    database = parts.path.strip("/")
    if database and not database.isdigit():
        raise ValueError(f"{argument}: {shown!r}: the path must be a database number")
    if parts.fragment:
        raise ValueError(f"{argument}: {shown!r} cannot carry a fragment")
    options = {**_QUERY_OPTIONS, **_TLS_OPTIONS} if parts.scheme == "rediss" else _QUERY_OPTIONS
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        check = options.get(name)
        if check is None and name in _TLS_OPTIONS:
            raise ValueError(f"{argument}: {shown!r}: option {name!r} needs a rediss:// URL")
        if check is None:
            known = ", ".join(sorted(options))
            raise ValueError(f"{argument}: {shown!r}: unknown option {name!r} (known: {known})")
        try:
            check(value)
        except ValueError as exc:
            raise ValueError(f"{argument}: {shown!r}: option {name}={value!r}: {exc}") from None


def check_prefix(prefix: object) -> str:
    if not isinstance(prefix, str):
        raise TypeError(f"prefix: expected a str, got {type(prefix).__name__}")
    if not prefix or len(prefix) > 100 or any(c.isspace() or not c.isprintable() for c in prefix):
        raise ValueError(f"prefix: expected 1 to 100 printable characters without spaces, got {prefix!r}")
    return prefix


def _from_url(url: str, prefix: str, timeout: float, password: Optional[str]) -> RedisStore:
    return RedisStore.from_url(url, prefix=prefix, timeout=timeout, password=password)


class RedisStore:
    """The selection of a whole fleet in Redis or Valkey (``pip install requests-failover[redis]``).

    One string key per backend set, ``<prefix><namespace>``, holds the JSON
    document; every update is a compare-and-set in a server-side script that
    also publishes the new document on a channel of the same name, so every
    machine learns of it by push. Leases are ``SET NX PX`` keys
    ``<prefix><namespace>:lease:<name>``. Keys expire a day after the last write.

    ``client`` is a ``redis.Redis`` built by you (its timeouts are yours: keep
    them short); :meth:`from_url` builds one with short timeouts and no retries.
    """

    def __init__(self, client: Any, *, prefix: str = DEFAULT_PREFIX) -> None:
        redis = _import_redis()
        if not isinstance(client, redis.Redis):
            raise TypeError(f"client: expected a redis.Redis client, got {type(client).__name__}")
        self._client = client
        self._prefix = check_prefix(prefix)
        self._cas = client.register_script(_CAS)
        self._release = client.register_script(_RELEASE)
        self._watchers: Dict[str, Any] = {}
        self._lock = threading.Lock()
        _runtime.reset_after_fork(self)
        kwargs = client.connection_pool.connection_kwargs
        if "path" in kwargs:
            self.location = f"unix://{kwargs['path']}?db={kwargs.get('db', 0)}"
        else:
            scheme = "rediss" if "ssl" in type(client.connection_pool.connection_class).__name__.lower() else "redis"
            user = kwargs.get("username")
            who = f"{quote(user)}@" if user else ""
            host = kwargs.get("host", "localhost")
            host = f"[{host}]" if ":" in host else host
            self.location = f"{scheme}://{who}{host}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = DEFAULT_REDIS_TIMEOUT,
        password: Optional[str] = None,
    ) -> RedisStore:
        """A store on a ``redis://[user[:password]@]host[:port][/db]`` or ``rediss://`` (TLS) URL.

        ``password`` is used when the URL carries none (for instance from a
        secret in the environment: ``REQUESTS_FAILOVER_STATE_PASSWORD``).
        """
        if not isinstance(url, str):
            raise TypeError(f"url: expected a str, got {type(url).__name__}")
        check_url(url, "url")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 60:
            raise ValueError(f"timeout: expected seconds in (0, 60], got {timeout!r}")
        redis = _import_redis()
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        options: Dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
            "retry_on_timeout": False,
            "retry": Retry(NoBackoff(), 0),
            "client_name": "requests-failover",
        }
        parts = urlsplit(url)
        if parts.password is None and password is not None:
            options["password"] = password
        if parts.username:
            options["username"] = unquote(parts.username)
        client = redis.Redis.from_url(url, **options)
        store = cls(client, prefix=prefix)
        store.location = redact(url)
        store._made_from = (url, prefix, timeout, password)
        return store

    _made_from: Optional[Tuple[str, str, float, Optional[str]]] = None

    def __reduce__(self) -> Tuple[Any, ...]:
        """A store made from a URL pickles as that URL (a session passed to a child process)."""
        if self._made_from is None:
            raise TypeError("a RedisStore built on your own client cannot be pickled; use RedisStore.from_url()")
        return (_from_url, self._made_from)

    def _key(self, namespace: str) -> str:
        return f"{self._prefix}{namespace}"

    def get(self, namespace: str) -> Optional[bytes]:
        redis = _import_redis()
        try:
            value = self._client.getrange(self._key(namespace), 0, MAX_DOCUMENT_BYTES)
        except redis.ResponseError as exc:
            if "WRONGTYPE" not in str(exc):
                raise
            return _WRONG_TYPE  # a key of another type: read as garbage, overwritten by the next update
        return bytes(value) or None

    def compare_and_set(self, namespace: str, expected: Optional[bytes], new: bytes) -> bool:
        args = [expected or b"", new, KEY_EXPIRY_SECONDS, MAX_DOCUMENT_BYTES]
        return bool(self._cas(keys=[self._key(namespace)], args=args))

    def lease(self, namespace: str, name: str, owner: str, seconds: float) -> bool:
        key = f"{self._key(namespace)}:lease:{name}"
        ms = max(1, int(seconds * 1000))
        if self._client.set(key, owner, nx=True, px=ms):
            return True
        # Renew our own lease (XX: only while it still exists).
        return self._client.get(key) == owner.encode() and bool(self._client.set(key, owner, xx=True, px=ms))

    def release(self, namespace: str, name: str, owner: str) -> None:
        self._release(keys=[f"{self._key(namespace)}:lease:{name}"], args=[owner])

    def watch(self, namespace: str, timeout: float) -> Optional[bytes]:
        with self._lock:
            pubsub = self._watchers.get(namespace)
            if pubsub is None:
                pubsub = self._client.pubsub(ignore_subscribe_messages=True)
                self._watchers[namespace] = pubsub
        try:
            if not pubsub.subscribed:
                pubsub.subscribe(self._key(namespace))
            message = pubsub.get_message(timeout=timeout)
        except BaseException:
            self.unwatch(namespace)  # a fresh subscription next time
            raise
        if message is not None and message.get("type") == "message":
            # redis-py has already read the whole message (it offers no bound: see
            # docs/security.rst); what is passed on is at most one byte over the limit,
            # enough for decode() to ignore it as too large without another copy.
            return bytes(message["data"][: MAX_DOCUMENT_BYTES + 1])
        return None

    def unwatch(self, namespace: str) -> None:
        """Drop the subscription of ``namespace`` (the next :meth:`watch` subscribes anew)."""
        with self._lock:
            pubsub = self._watchers.pop(namespace, None)
        if pubsub is not None:
            try:
                pubsub.close()
            except Exception:  # closing a broken connection
                pass

    def close(self) -> None:
        with self._lock:
            namespaces = list(self._watchers)
        for namespace in namespaces:
            self.unwatch(namespace)
        self._client.connection_pool.disconnect()

    def _after_fork(self) -> None:
        # The parent's subscriptions are its own; redis-py resets the pool itself.
        self._watchers = {}
        self._lock = threading.Lock()

    def describe(self, exc: BaseException) -> str:
        """A line for logs and ``status()`` saying what failed and, for a missing password, what to do.

        Without a password the server answers with its own words ("HELLO must
        be called with the client already authenticated", "NOAUTH
        Authentication required"), which do not say where the password goes.
        """
        text = f"{type(exc).__name__}: {exc}"
        redis = _import_redis()
        lacking = "NOAUTH" in text or "HELLO must be called" in text or "Authentication required" in text
        if isinstance(exc, redis.AuthenticationError) or lacking:
            if not self._client.connection_pool.connection_kwargs.get("password"):
                return (
                    f"the server requires a password: set {ENV_STATE_PASSWORD} or put it in the URL "
                    "(redis://:PASSWORD@host:6379/0, percent-encoded)"
                )
            return "the server refused the user name or password (AuthenticationError)"
        return text[:300]

    def __repr__(self) -> str:
        return f"RedisStore({self.location!r}, prefix={self._prefix!r})"
