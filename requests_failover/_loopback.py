"""A small HTTP backend on loopback that can be broken on purpose.

Used by the ``demo`` command and by the test suite. One object serves one
ephemeral port and can be switched between modes at any time:

``up``
    answers every request: ``status`` (default 200) with a JSON body naming
    the server, the method, the path and the body it received;
``refuse``
    nothing listens on the port: connections are refused;
``drop``
    the listen queue is full, so connection attempts hang until the client's
    connect timeout (a black hole at the TCP level);
``blackhole``
    connections are accepted, requests read, and never answered (a read
    timeout for the client);
``reset``
    the request is read and the connection reset without an answer.

Every request that reaches the server is recorded in ``hits``. Health paths
can answer differently from the rest through ``routes``.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Dict, List, Optional, Tuple, Union

MODES = ("up", "refuse", "drop", "blackhole", "reset")


@dataclass(frozen=True)
class Hit:
    method: str
    path: str
    headers: Dict[str, str]
    body: bytes
    client_port: int = 0  # the client's source port: which connection carried it


@dataclass
class _Behaviour:
    mode: str = "up"
    status: int = 200
    headers: Dict[str, str] = field(default_factory=dict)
    routes: Dict[str, Tuple[int, Dict[str, str]]] = field(default_factory=dict)  # path -> answer


class LoopbackServer:
    """An HTTP/1.1 server on ``host`` (an ephemeral port) with switchable failures."""

    def __init__(self, name: str = "backend", host: str = "127.0.0.1") -> None:
        self.name = name
        self.host = host
        self._family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._lock = threading.Lock()
        self._behaviour = _Behaviour()
        self._hits: List[Hit] = []
        self._conns: List[socket.socket] = []
        self._listener: Optional[socket.socket] = None
        self._filler: Optional[socket.socket] = None
        self.port = 0
        self.port = self._listen(backlog=64).getsockname()[1]

    # -- control ----------------------------------------------------------------
    @property
    def url(self) -> str:
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
        routes: Optional[Dict[str, Union[int, Tuple[int, Dict[str, str]]]]] = None,
    ) -> LoopbackServer:
        """Change behaviour; takes effect for the next connection or request.

        ``routes`` maps a path (without query) to a status, or to a status and
        headers, answered instead of ``status``/``headers`` for that path.
        """
        if mode is not None and mode not in MODES:
            raise ValueError(f"mode: one of {MODES}, got {mode!r}")
        with self._lock:
            b = self._behaviour
            if status is not None:
                b.status = status
            if headers is not None:
                b.headers = dict(headers)
            if routes is not None:
                b.routes = {p: (a, {}) if isinstance(a, int) else (a[0], dict(a[1])) for p, a in routes.items()}
            previous, b.mode = b.mode, (mode or b.mode)
        if mode is not None and mode != previous:
            self._apply_mode(previous, mode)
        return self

    def _apply_mode(self, previous: str, mode: str) -> None:
        if previous in ("refuse", "drop") or mode in ("refuse", "drop"):
            self._close_listener()
            self._drop_connections()
            if mode == "drop":
                self._listen(backlog=0)
                # one established connection fills a zero-length queue
                self._filler = socket.create_connection((self.host, self.port))
            elif mode != "refuse":
                self._listen(backlog=64)
        elif mode in ("blackhole", "reset"):
            self._drop_connections()

    def hits(self, *, health: Optional[bool] = None) -> List[Hit]:
        """Requests received; ``health=False`` leaves probes out, ``True`` keeps only them."""
        with self._lock:
            hits = list(self._hits)
        if health is None:
            return hits
        return [h for h in hits if self._is_health(h.path) == health]

    @staticmethod
    def _is_health(path: str) -> bool:
        return path.split("?")[0] in ("/health", "/api/health", "/status")

    def open_connections(self) -> int:
        """Client connections currently open on this server."""
        with self._lock:
            return len(self._conns)

    def reset_hits(self) -> None:
        with self._lock:
            self._hits.clear()

    def close(self) -> None:
        self._close_listener()
        self._drop_connections()

    def __enter__(self) -> LoopbackServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- sockets --------------------------------------------------------------------
    def _listen(self, backlog: int) -> socket.socket:
        sock = socket.socket(self._family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(backlog)
        self._listener = sock
        if backlog:
            threading.Thread(target=self._accept_loop, args=(sock,), daemon=True, name=f"{self.name}-accept").start()
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
                self._conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True, name=f"{self.name}-conn").start()

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
    def _answer(self, hit: Hit) -> Tuple[str, int, Dict[str, str]]:
        with self._lock:
            self._hits.append(hit)
            b = self._behaviour
            status, headers = b.routes.get(hit.path.split("?")[0], (b.status, b.headers))
            return b.mode, status, dict(headers)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: LoopbackServer  # type: ignore[assignment]  # we pass our own object as the "server"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = self._read_chunked()
        hit = Hit(self.command, self.path, dict(self.headers.items()), body, self.client_address[1])
        mode, status, headers = self.server._answer(hit)
        if mode == "blackhole":
            self.close_connection = True
            # hold the connection open, answer nothing, until the peer or close() ends it
            while self.connection.recv(65536):
                pass
            return
        if mode == "reset":
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
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
        if self.command != "HEAD":
            self.wfile.write(payload)

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
