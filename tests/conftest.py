"""Shared fixtures: real loopback servers, a controllable clock, sessions."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional

import pytest

from requests_failover import FailoverSession, SwitchEvent
from requests_failover.testing import LoopbackBackend, set_testing

from . import _workers
from ._valkey import ValkeyServer
from ._workers import Answer

SPAWN = multiprocessing.get_context("spawn")
# The one upper bound of every wait in the suite (a child's answer, a thread's end, a polled
# condition): far above any real cost on a loaded machine, so only a hang or a real defect reaches it.
BOUND = 60.0


@pytest.fixture(autouse=True)
def _no_env_override(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Development mode and the default state file never leak in from the outside."""
    for name in ("REQUESTS_FAILOVER_BACKENDS", "REQUESTS_FAILOVER_STATE_URL", "REQUESTS_FAILOVER_STATE_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
    for name in (
        *("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "all_proxy", "no_proxy"),
        *("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"),
    ):
        monkeypatch.delenv(name, raising=False)


# Our own tests are the first users of the public pytest plugin (requests_failover.pytest_plugin).
@pytest.fixture
def primary(failover_primary: LoopbackBackend) -> LoopbackBackend:
    return failover_primary


@pytest.fixture
def secondary(failover_secondary: LoopbackBackend) -> LoopbackBackend:
    return failover_secondary


@pytest.fixture
def tertiary() -> Iterator[LoopbackBackend]:
    with LoopbackBackend("tertiary") as server:
        yield server


class Clock:
    """Unix time that moves only when a test says so."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sleeps() -> List[float]:
    """Backoff delays asked for; nothing really sleeps."""
    return []


@pytest.fixture
def events() -> List[SwitchEvent]:
    return []


@pytest.fixture
def make_session(
    clock: Clock, sleeps: List[float], events: List[SwitchEvent]
) -> Iterator[Callable[..., FailoverSession]]:
    """Build a FailoverSession with memory state, in testing mode: the test clock, recorded sleeps."""
    made: List[FailoverSession] = []

    def make(backends: List[str], **options: Any) -> FailoverSession:
        options.setdefault("state_file", False)
        options.setdefault("on_switch", events.append)
        options.setdefault("health_timeout", 2.0)
        session = FailoverSession(backends, **options)
        made.append(session)
        return session

    with set_testing(True, clock=clock, sleep=sleeps.append):
        yield make
    for session in made:
        session.close()


@pytest.fixture
def info_lines(caplog: pytest.LogCaptureFixture) -> Callable[[], List[str]]:
    caplog.set_level(logging.DEBUG, logger="requests_failover")

    def lines() -> List[str]:
        return [r.getMessage() for r in caplog.records if r.name == "requests_failover" and r.levelno == logging.INFO]

    return lines


def ipv6_loopback_available() -> bool:
    import socket

    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


def wait_until(condition: Callable[[], bool], what: str, bound: float = BOUND) -> None:
    """Poll ``condition`` until true; fail naming ``what`` after ``bound`` seconds.

    The suite's one polling helper. ``bound`` is an upper bound against a hang, never a timing assertion.
    """
    deadline = time.monotonic() + bound
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.005)


def wait_for_child(pid: int, what: str) -> int:
    """The exit code of the forked child ``pid``; a child still running after ``BOUND`` is killed and fails the test."""
    deadline = time.monotonic() + BOUND
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"the forked child {what}")


def cli(*args: str, env: Optional[Mapping[str, str]] = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m requests_failover ARGS`` (this checkout's) with ``env`` over this environment; text output."""
    return subprocess.run(
        [sys.executable, "-m", "requests_failover", *args],
        capture_output=True,
        text=True,
        timeout=2 * BOUND,  # a fresh interpreter per call: room for a slow start on a loaded machine
        env={**os.environ, **(env or {})},
    )


def root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.fixture
def valkey(tmp_path: Path) -> Iterator[ValkeyServer]:
    """A real Valkey server of this test's own (a free loopback port), stopped at teardown."""
    directory = tmp_path / "valkey"
    directory.mkdir()
    server = ValkeyServer(str(directory))
    server.start()
    yield server
    server.stop()


class Worker:
    """A child process holding one FailoverSession, driven command by command."""

    def __init__(self, backends: List[str], name: str, **options: Any) -> None:
        self.name = name
        self.conn, child = SPAWN.Pipe()
        self.process = SPAWN.Process(target=_workers.serve, args=(child, backends, options, name), daemon=True)
        self.process.start()
        assert self._recv()[0] == "ready"

    def _recv(self) -> Any:
        assert self.conn.poll(BOUND), f"worker {self.name} did not answer"
        return self.conn.recv()

    def get(self, path: str) -> Answer:
        """GET ``path`` in the child (its first backend's URL + ``path``) and return its answer."""
        self.send_get(path)
        return self.result()

    def send_get(self, path: str) -> None:
        self.conn.send(("get", path))

    def result(self) -> Answer:
        """The answer to the last :meth:`send_get`."""
        answer = self._recv()
        assert isinstance(answer, Answer), f"worker {self.name} answered {answer!r}"
        return answer

    def status(self) -> Dict[str, Any]:
        self.conn.send(("status",))
        return dict(self._recv())

    def close(self) -> None:
        try:
            self.conn.send(("exit",))
        except OSError:
            pass
        self.process.join(BOUND)
        if self.process.is_alive():
            self.process.kill()


@pytest.fixture
def workers() -> Iterator[List[Worker]]:
    started: List[Worker] = []
    yield started
    for worker in started:
        worker.close()


class _Blocker:
    """A client of the background thread whose round blocks until released."""

    def __init__(self) -> None:
        self.inside = threading.Event()
        self.release = threading.Event()

    def _tick(self) -> None:
        self.inside.set()
        self.release.wait(BOUND)

    def _flush(self) -> None:
        pass

    def _stop(self, deadline: float) -> None:
        self.release.set()


@contextlib.contextmanager
def background_paused() -> Iterator[None]:
    """Hold the library's background thread (of this process) inside one round.

    Nothing is written behind while it is held: what a test then finds in the
    shared store was written on a request's own thread.
    """
    from requests_failover._background import WORKER

    blocker = _Blocker()
    WORKER.add(blocker)
    try:
        assert blocker.inside.wait(BOUND), "the background thread never ran"
        yield
    finally:
        blocker.release.set()
        WORKER.remove(blocker)
