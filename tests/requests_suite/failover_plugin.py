"""pytest plugin: every ``requests.Session`` becomes a ``FailoverSession``.

Loaded with ``-p failover_plugin`` into requests' own test suite. The primary
backend is the suite's local httpbin, the secondary a loopback port where
nothing listens, so every request to httpbin goes through the failover
adapter (matching, copying, classifying, recording) and must behave exactly as
with a plain ``requests.Session``.
"""

from __future__ import annotations

import socket
from typing import Any, List, Optional

import pytest
import requests
import requests.sessions

from requests_failover import FailoverAdapter, FailoverSession
from requests_failover.testing import set_testing


def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


DEAD = f"http://127.0.0.1:{_dead_port()}"
_backends: Optional[List[str]] = None


class DropinSession(FailoverSession):
    """``requests.Session()`` as the suite calls it: no arguments."""

    def __init__(self) -> None:
        backends = _backends or [DEAD]
        super().__init__(
            backends if len(backends) > 1 else [*backends, f"http://127.0.0.1:{_dead_port()}"],
            health_paths=("/get",),  # httpbin has no /health
            state_file=False,
        )


_handled = 0
_original_send = FailoverAdapter.send


def _counting_send(self: FailoverAdapter, request: Any, *args: Any, **kwargs: Any) -> Any:
    global _handled
    if self.match(request.url) is not None:
        _handled += 1
    return _original_send(self, request, *args, **kwargs)


def pytest_configure(config: Any) -> None:
    set_testing(True)  # no backoff waits in a test suite
    requests.Session = DropinSession  # type: ignore[misc]
    requests.sessions.Session = DropinSession  # type: ignore[misc]
    FailoverAdapter.send = _counting_send  # type: ignore[method-assign]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    # run.py reads this line: a plugin that routed nothing would prove nothing
    terminalreporter.write_line(f"failover adapter handled {_handled} backend requests")


@pytest.fixture(autouse=True)
def _httpbin_is_the_primary(request: Any) -> Any:
    global _backends
    httpbin = request.getfixturevalue("httpbin")  # the suite's URL builder
    _backends = [httpbin().rstrip("/"), DEAD]
    yield
    _backends = None
