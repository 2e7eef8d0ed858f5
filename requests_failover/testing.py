"""Test your own code against an outage: loopback backends and a testing switch.

Public API, for users' test suites (and the library's own):

:class:`LoopbackBackend`
    a real HTTP/1.1 server on ``127.0.0.1`` (an ephemeral port) that can be
    broken on purpose at any time, and that records what it received::

        with LoopbackBackend("primary") as primary, LoopbackBackend("secondary") as secondary:
            session = FailoverSession([primary.url, secondary.url], state_file=False)
            primary.set("refuse")
            assert session.post(primary.url + "/orders", json={}).json()["server"] == "secondary"
            assert primary.requests == []          # the primary never saw the POST

    Modes (``backend.set(mode)``):

    ``up``
        answers every request: ``status`` (default 200) with a JSON body
        ``{"server", "method", "path", "body"}``, after ``delay`` seconds;
    ``refuse``
        nothing listens on the port: connections are refused at once;
    ``blackhole``
        SYNs are never answered (the listen queue is full): the client waits
        for its connect timeout, as with a firewall drop or a dead host;
    ``hang``
        connections are accepted and requests read, never answered: the
        client waits for its read timeout;
    ``reset``
        the request is read and the connection reset without an answer;
    ``truncate``
        the status line, headers and half of the body are sent, then the
        connection is reset (a backend dying mid-answer).

    ``set(status=503, retry_after=30)`` answers a fixed status (with a
    ``Retry-After``); ``set(health=503)`` makes only the health paths fail
    while the API answers; ``set(delay=0.5)`` answers slowly.

    Gray failures (``up`` mode; the health paths keep answering at once, so a
    health check passes while the API is sick):

    ``set(api_delay=2.0)``
        every API answer (any path but a health path) waits 2 s;
    ``set(tail=(0.02, 1.0))``
        2 % of API answers wait 1 s more, evenly spread and deterministic:
        the n-th API request since the ``set`` (n = 1, 2, ...) is slow iff
        ``floor(n * share) > floor((n - 1) * share)``, so ``(0.25, x)`` slows
        exactly requests 4, 8, 12, ...; ``(0, 0)`` clears;
    ``set(errors=(0.3, 503))``
        30 % of API answers are a 503 instead, spread the same way (a counter
        of its own); ``(0, 500)`` clears.

:func:`served_by`
    which backend answered a response (the ``"server"`` field of its JSON).

:func:`set_testing`
    the one switch (as ``stamina.set_testing``): backoff waits return at once,
    and the library's clock can be replaced by one the test moves by hand.

The pytest plugin (:mod:`requests_failover.pytest_plugin`, registered through
the ``pytest11`` entry point, inert unless a test asks for its fixtures)
gives ``failover_primary``, ``failover_secondary`` and ``failover_session``.
"""

from __future__ import annotations

import json
import math
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from fractions import Fraction
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from . import _runtime
from ._config import DEFAULT_HEALTH_PATHS

__all__ = ["MODES", "Hit", "LoopbackBackend", "is_testing", "served_by", "set_testing", "settle"]

MODES = ("up", "refuse", "blackhole", "hang", "reset", "truncate")
_LOOPBACK = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True)
class Hit:
    """One request a :class:`LoopbackBackend` received."""

    method: str
    path: str
    headers: Dict[str, str]
    body: bytes
    client_port: int = 0  # the client's source port: which connection carried it


@dataclass
class _Spread:
    """A share of API answers singled out, evenly spread: the n-th is picked iff floor(n*share) grows.

    ``share`` is exact (the decimal the caller wrote, as a Fraction), so
    ``0.29`` picks 29 of every 100 requests, which float arithmetic would not.
    """

    share: Fraction
    value: Union[float, int]  # tail: extra seconds; errors: the status
    count: int = 0  # API requests seen since the share was set

    def pick(self) -> bool:
        if not self.share:
            return False
        self.count += 1
        n = self.count
        return math.floor(n * self.share) > math.floor((n - 1) * self.share)


def _is_seconds(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0


def _is_status(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599


def _spread(name: str, pair: object, valid: Callable[[object], bool], kind: str) -> _Spread:
    """Validate a ``(share, value)`` argument of ``set``: share 0 to 1, ``valid(value)``."""
    if not isinstance(pair, tuple) or len(pair) != 2:
        raise TypeError(f"{name}: expected a (share, value) tuple, got {type(pair).__name__}")
    share, value = pair
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1:
        raise ValueError(f"{name}: the share is a number from 0 to 1, got {share!r}")
    if isinstance(value, bool) or not valid(value):
        raise ValueError(f"{name}: {kind}, got {value!r}")
    return _Spread(Fraction(str(share)), value)


@dataclass
class _Behaviour:
    mode: str = "up"
    status: int = 200
    headers: Dict[str, str] = field(default_factory=dict)
    routes: Dict[str, Tuple[int, Dict[str, str]]] = field(default_factory=dict)  # path -> answer
    delay: float = 0.0
    api_delay: float = 0.0  # non-health paths only
    tail: _Spread = field(default_factory=lambda: _Spread(Fraction(0), 0.0))
    errors: _Spread = field(default_factory=lambda: _Spread(Fraction(0), 500))


class LoopbackBackend:
    """An HTTP/1.1 backend on a loopback address (an ephemeral port) with switchable failures.

    :param name: returned as ``"server"`` in every JSON answer.
    :param host: a loopback address (``127.0.0.1`` or ``::1``); nothing else
        is accepted, so a test can never open a port to the network.
    :param health_paths: the paths counted as probes in :attr:`probes` and
        failed by ``set(health=...)``.
    """

    def __init__(
        self, name: str = "backend", host: str = "127.0.0.1", *, health_paths: Sequence[str] = DEFAULT_HEALTH_PATHS
    ) -> None:
        if not isinstance(name, str):
            raise TypeError(f"name: expected a str, got {type(name).__name__}")
        if host not in _LOOPBACK:
            raise ValueError(f"host: a loopback address {_LOOPBACK}, got {host!r}")
        host = "127.0.0.1" if host == "localhost" else host
        if isinstance(health_paths, str) or not all(isinstance(p, str) for p in health_paths):
            raise TypeError("health_paths: expected a sequence of str paths")
        self.name = name
        self.host = host
        self.health_paths = tuple(health_paths)
        self._family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._lock = threading.Lock()
        self._behaviour = _Behaviour()
        self._hits: List[Hit] = []
        self._conns: List[socket.socket] = []
        self._threads: List[threading.Thread] = []
        self._closed = threading.Event()
        self._listener: Optional[socket.socket] = None
        self._filler: Optional[socket.socket] = None
        self.port = 0
        self.port = self._listen(backlog=64).getsockname()[1]

    # -- control ----------------------------------------------------------------
    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:41234``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def mode(self) -> str:
        return self._behaviour.mode

    def set(
        self,
        mode: Optional[str] = None,
        *,
        status: Optional[int] = None,
        headers: Optional[Dict[str, str]] = None,
        retry_after: Optional[float] = None,
        health: Optional[int] = None,
        delay: Optional[float] = None,
        routes: Optional[Dict[str, Union[int, Tuple[int, Dict[str, str]]]]] = None,
        api_delay: Optional[float] = None,
        tail: Optional[Tuple[float, float]] = None,
        errors: Optional[Tuple[float, int]] = None,
    ) -> LoopbackBackend:
        """Change behaviour; takes effect for the next connection or request.

        :param mode: one of :data:`MODES`.
        :param status: the status of every answer (``up`` mode).
        :param headers: extra headers of every answer.
        :param retry_after: seconds, sent as ``Retry-After`` with every answer.
        :param health: the status the health paths answer (``200`` again to
            heal them), whatever ``status`` is.
        :param delay: seconds to wait before answering (a slow backend).
        :param routes: path (without query) -> status, or (status, headers),
            answered instead for that path.
        :param api_delay: seconds to wait before every answer to a path that
            is not a health path (health checks pass, the API is slow).
        :param tail: ``(share, seconds)``: that share (0 to 1) of API answers
            wait ``seconds`` more; the n-th API request counted from this call
            is slow iff ``floor(n * share) > floor((n - 1) * share)``
            (deterministic, evenly spread). ``(0, 0)`` clears.
        :param errors: ``(share, status)``: that share of API answers get
            ``status`` instead, spread the same way with a counter of its own.
            ``(0, 500)`` clears.
        """
        if mode is not None and mode not in MODES:
            raise ValueError(f"mode: one of {MODES}, got {mode!r}")
        for name, value in (("status", status), ("health", health)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not 100 <= value <= 599):
                raise ValueError(f"{name}: an HTTP status 100-599, got {value!r}")
        for name, number in (("retry_after", retry_after), ("delay", delay), ("api_delay", api_delay)):
            if number is not None and (isinstance(number, bool) or not isinstance(number, (int, float)) or number < 0):
                raise ValueError(f"{name}: a number of seconds >= 0, got {number!r}")
        tail_spread = None if tail is None else _spread("tail", tail, _is_seconds, "seconds >= 0")
        errors_spread = None if errors is None else _spread("errors", errors, _is_status, "an HTTP status 100-599")
        with self._lock:
            b = self._behaviour
            if status is not None:
                b.status = status
            if headers is not None:
                b.headers = dict(headers)
            if retry_after is not None:
                b.headers["Retry-After"] = str(int(retry_after))
            if delay is not None:
                b.delay = float(delay)
            if api_delay is not None:
                b.api_delay = float(api_delay)
            if tail_spread is not None:
                b.tail = tail_spread
            if errors_spread is not None:
                b.errors = errors_spread
            if routes is not None:
                b.routes = {p: (a, {}) if isinstance(a, int) else (a[0], dict(a[1])) for p, a in routes.items()}
            if health is not None:
                for path in self.health_paths:
                    b.routes[path] = (health, {})
            previous, b.mode = b.mode, (mode or b.mode)
        if mode is not None and mode != previous:
            self._apply_mode(previous, mode)
        return self

    def _apply_mode(self, previous: str, mode: str) -> None:
        if previous in ("refuse", "blackhole") or mode in ("refuse", "blackhole"):
            self._close_listener()
            self._drop_connections()
            if mode == "blackhole":
                self._listen(backlog=0)
                # one established, never accepted connection fills a zero-length queue
                self._filler = socket.create_connection((self.host, self.port))
            elif mode != "refuse":
                self._listen(backlog=64)
        elif mode in ("hang", "reset", "truncate"):
            self._drop_connections()

    # -- what it received -------------------------------------------------------------
    def hits(self, *, health: Optional[bool] = None) -> List[Hit]:
        """Requests received; ``health=False`` leaves probes out, ``True`` keeps only them."""
        with self._lock:
            hits = list(self._hits)
        if health is None:
            return hits
        return [h for h in hits if self._is_health(h.path) == health]

    @property
    def requests(self) -> List[Hit]:
        """Requests received other than health probes."""
        return self.hits(health=False)

    @property
    def probes(self) -> List[Hit]:
        """Health probes received."""
        return self.hits(health=True)

    @property
    def bodies(self) -> List[bytes]:
        """The bodies of the requests (not probes) received, in order."""
        return [h.body for h in self.requests]

    def _is_health(self, path: str) -> bool:
        return path.split("?")[0] in self.health_paths

    def open_connections(self) -> int:
        """Client connections currently open on this backend."""
        with self._lock:
            return len(self._conns)

    def reset_hits(self) -> None:
        with self._lock:
            self._hits.clear()

    def close(self) -> None:
        """Stop listening, close every connection, and wait for the server's threads."""
        self._closed.set()
        self._close_listener()
        self._drop_connections()
        with self._lock:
            threads, self._threads = self._threads, []
        for thread in threads:
            thread.join(10.0)

    def __enter__(self) -> LoopbackBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<LoopbackBackend {self.name} {self.url} mode={self.mode}>"

    # -- sockets --------------------------------------------------------------------
    def _start(self, target: Callable[..., None], *args: object, name: str) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name=name)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()

    def _listen(self, backlog: int) -> socket.socket:
        sock = socket.socket(self._family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(backlog)
        self._listener = sock
        if backlog:
            self._start(self._accept_loop, sock, name=f"{self.name}-accept")
        return sock

    def _close_listener(self) -> None:
        for sock in (self._listener, self._filler):
            if sock is not None:
                try:  # shutdown() wakes a thread blocked in accept(); close() alone does not
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
        self._listener = self._filler = None

    def _drop_connections(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def _accept_loop(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return  # listener closed
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                current = sock is self._listener
                if current:
                    self._conns.append(conn)
            if not current:  # accepted just as the mode changed: it belongs to the old mode
                conn.close()
                continue
            self._start(self._serve, conn, name=f"{self.name}-conn")

    def _serve(self, conn: socket.socket) -> None:
        try:
            _Handler(conn, conn.getpeername(), self)  # type: ignore[arg-type]  # duck-typed: the handler uses .name, ._answer
        except OSError:
            pass
        finally:
            with self._lock:
                if conn in self._conns:
                    self._conns.remove(conn)
            try:
                conn.close()
            except OSError:  # pragma: no cover
                pass

    # -- called by the handler --------------------------------------------------------
    def _answer(self, hit: Hit) -> Tuple[str, int, Dict[str, str], float]:
        with self._lock:
            self._hits.append(hit)
            b = self._behaviour
            status, headers = b.routes.get(hit.path.split("?")[0], (b.status, b.headers))
            delay = b.delay
            if b.mode == "up" and not self._is_health(hit.path):
                # counted under the lock: concurrent requests still get exactly one slot each
                delay += b.api_delay + (float(b.tail.value) if b.tail.pick() else 0.0)
                if b.errors.pick():
                    status = int(b.errors.value)
            return b.mode, status, dict(headers), delay


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: LoopbackBackend  # type: ignore[assignment]  # we pass our own object as the "server"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = self._read_chunked()
        hit = Hit(self.command, self.path, dict(self.headers.items()), body, self.client_address[1])
        mode, status, headers, delay = self.server._answer(hit)
        if mode in ("refuse", "blackhole"):  # a connection that outlived the mode change: never answered
            self._reset()
            return
        if mode == "hang":
            self.close_connection = True
            # hold the connection open, answer nothing, until the peer or close() ends it
            while self.connection.recv(65536):
                pass
            return
        if mode == "reset":
            self._reset()
            return
        if delay and self.server._closed.wait(delay):
            return
        payload = json.dumps(
            {"server": self.server.name, "method": self.command, "path": self.path, "body": body.decode("latin-1")}
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command == "HEAD":
            return
        if mode == "truncate":
            self.wfile.write(payload[: len(payload) // 2])
            self.wfile.flush()
            self._reset()
            return
        self.wfile.write(payload)

    def _reset(self) -> None:
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True

    def _read_chunked(self) -> bytes:
        data = b""
        while True:
            size = int(self.rfile.readline().strip().split(b";")[0], 16)
            if size == 0:
                self.rfile.readline()
                return data
            data += self.rfile.read(size)
            self.rfile.readline()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _handle


# -- the testing switch ------------------------------------------------------------------------


class _Restore:
    """Returned by :func:`set_testing`: as a context manager, restores the mode before it."""

    def __init__(self, previous: Tuple[bool, Callable[[], float], Callable[[float], None]]) -> None:
        self._previous = previous

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        _runtime.restore(self._previous)


def set_testing(
    testing: bool,
    *,
    clock: Optional[Callable[[], float]] = None,
    sleep: Optional[Callable[[float], None]] = None,
) -> _Restore:
    """Turn testing mode on or off for this process.

    :param testing: True: backoff waits are instant (``sleep`` replaces them);
        False: real waits and the real clock again.
    :param clock: unix-time source the library reads instead of ``time.time``
        (for example a fake clock a test advances to make a selection stale).
    :param sleep: called with each backoff delay in seconds instead of
        sleeping (for example ``list.append`` to assert the delays); default in
        testing mode: return at once.

    Used as a context manager (``with set_testing(True): ...``), the mode
    before the call comes back at the end of the block.
    """
    if not isinstance(testing, bool):
        raise TypeError(f"testing: expected a bool, got {type(testing).__name__}")
    for name, fn in (("clock", clock), ("sleep", sleep)):
        if fn is not None and not callable(fn):
            raise TypeError(f"{name}: expected a callable, got {type(fn).__name__}")
    if not testing and (clock is not None or sleep is not None):
        raise ValueError("clock/sleep: only with set_testing(True, ...)")
    previous = _runtime.snapshot()
    _runtime.configure(testing, clock, sleep)
    return _Restore(previous)


def settle(session: Any, timeout: float = 30.0) -> None:
    """Wait until ``session``'s background work is done: writes flushed, probes answered.

    Background re-probes, failback probes and writes to the state file happen
    on the library's background thread; a test that asserts on their outcome
    calls this first. It waits for two complete rounds of that thread started
    after the call (so work that is due now has been started and acted upon)
    and for every probe in flight to end. ``session`` is a FailoverSession or
    a FailoverAdapter. Raises ``TimeoutError`` after ``timeout`` seconds.
    """
    from ._background import WORKER

    adapter = getattr(session, "failover_adapter", session)
    selection = getattr(adapter, "_selection", None)
    if selection is None:
        raise TypeError(f"session: expected a FailoverSession or FailoverAdapter, got {type(session).__name__}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise ValueError(f"timeout: a number of seconds > 0, got {timeout!r}")
    deadline = time.monotonic() + timeout
    start = WORKER.passes
    WORKER.wake()
    while WORKER.passes < start + 2 or not selection.idle():
        if time.monotonic() > deadline:
            raise TimeoutError(f"background work of {session!r} did not settle in {timeout} s")
        if selection.idle():
            WORKER.wake()
        time.sleep(0.002)


def served_by(response: Any) -> str:
    """Which :class:`LoopbackBackend` answered ``response``: the ``"server"`` field of its JSON body.

    A backend in ``up`` mode names itself in every answer, so a test says
    ``assert served_by(session.get(url)) == "secondary"`` rather than reading
    the body by hand. Raises ``ValueError`` when the body is not a loopback
    backend's answer (not JSON, or no ``"server"`` string in it).
    """
    try:
        document = response.json()
    except ValueError as exc:  # requests' JSONDecodeError is a ValueError
        raise ValueError(f"response: not a LoopbackBackend answer (no JSON body): {exc}") from None
    server = document.get("server") if isinstance(document, dict) else None
    if not isinstance(server, str):
        raise ValueError('response: not a LoopbackBackend answer (no "server" name in its JSON body)')
    return server


def is_testing() -> bool:
    """Whether testing mode is on."""
    return _runtime.testing()
