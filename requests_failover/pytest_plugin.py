"""pytest plugin: loopback backends and failover sessions for your own tests.

Registered through the ``pytest11`` entry point when requests-failover is
installed, and inert unless a test asks for one of its fixtures (it defines no
hooks and changes nothing else):

``failover_primary``, ``failover_secondary``
    a :class:`~requests_failover.testing.LoopbackBackend` each, closed at
    teardown (threads joined, sockets closed);
``failover_session``
    a factory ``failover_session(backends=None, **options)`` building a
    :class:`~requests_failover.FailoverSession` (default backends: the primary
    and the secondary above) with a private state file in ``tmp_path``, in
    testing mode (no backoff waits) and with ``REQUESTS_FAILOVER_BACKENDS``
    unset; every session it made is closed at teardown.

Example::

    def test_checkout_survives_the_primary(failover_primary, failover_session):
        session = failover_session()
        failover_primary.set("refuse")
        assert place_order(session).ok
        assert failover_primary.requests == []
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Sequence

import pytest

from ._config import ENV_BACKENDS
from .session import FailoverSession
from .testing import LoopbackBackend, set_testing

__all__ = ["failover_primary", "failover_secondary", "failover_session"]


@pytest.fixture
def failover_primary() -> Iterator[LoopbackBackend]:
    """A loopback backend named ``primary``."""
    with LoopbackBackend("primary") as backend:
        yield backend


@pytest.fixture
def failover_secondary() -> Iterator[LoopbackBackend]:
    """A loopback backend named ``secondary``."""
    with LoopbackBackend("secondary") as backend:
        yield backend


@pytest.fixture
def failover_session(
    failover_primary: LoopbackBackend,
    failover_secondary: LoopbackBackend,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[..., FailoverSession]]:
    """A factory of FailoverSessions with a private state file, in testing mode."""
    monkeypatch.delenv(ENV_BACKENDS, raising=False)
    made: List[FailoverSession] = []

    def make(backends: Optional[Sequence[str]] = None, **options: Any) -> FailoverSession:
        if backends is None:
            backends = [failover_primary.url, failover_secondary.url]
        options.setdefault("state_file", tmp_path / "requests-failover-state.json")
        session = FailoverSession(backends, **options)
        made.append(session)
        return session

    with set_testing(True):
        yield make
        for session in made:
            session.close()
