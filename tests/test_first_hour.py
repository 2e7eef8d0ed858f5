"""What a new user meets first: a service with no health endpoint, base paths, bad paths and files.

Every server here is a real loopback server; the service "without a health
endpoint" answers 404 on every health path, as most HTTP services do.
"""

from __future__ import annotations

import logging
from typing import Callable, Dict, Iterator

import pytest

from requests_failover import FailoverSession, _health
from requests_failover.testing import LoopbackBackend, served_by, settle

from .conftest import Clock

Make = Callable[..., FailoverSession]
NO_HEALTH: Dict[str, int] = {"/health": 404, "/api/health": 404, "/status": 404}
#: The documented failback bound (docs/how-it-works.rst): back within about 32 s of the recovery.
FAILBACK_BOUND = 32


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The once-per-backend warning starts unsaid in every test (ports are reused)."""
    monkeypatch.setattr(_health, "_warned", set(), raising=False)


def no_endpoint_warnings(caplog: pytest.LogCaptureFixture, url: str) -> int:
    return sum(
        1
        for r in caplog.records
        if r.levelno == logging.WARNING and url in r.getMessage() and "has no health endpoint" in r.getMessage()
    )


def test_a_service_without_health_endpoint_fails_over_and_back(
    make_session: Make, primary, secondary, clock: Clock, caplog: pytest.LogCaptureFixture
):
    caplog.set_level(logging.DEBUG, logger="requests_failover")
    primary.set(routes=NO_HEALTH)
    secondary.set(routes=NO_HEALTH)
    session = make_session([primary.url, secondary.url], slow_start=0)  # a step failback (test_gray ramps)
    assert served_by(session.get(primary.url + "/warm")) == "primary"
    first = session.status()["backends"][0]
    assert (first["healthy"], first["last_error"], first["health_endpoint"]) == (True, None, False)

    primary.set("refuse")  # the outage: the primary's port refuses connections
    assert served_by(session.get(primary.url + "/during")) == "secondary"
    settle(session)
    assert session.active_backend == secondary.url
    primary.set("up")  # the restart, on the same port, still without a health endpoint

    waited = 0
    while session.active_backend != primary.url and waited < FAILBACK_BOUND:
        clock.advance(1)
        waited += 1
        settle(session)
    assert session.active_backend == primary.url, f"no failback {waited} s after the restart"
    assert served_by(session.get(primary.url + "/back")) == "primary"
    assert [h.path for h in primary.probes][:3] == ["/health", "/api/health", "/status"]
    assert "/" in [h.path for h in primary.requests]  # the base URL judged it
    assert no_endpoint_warnings(caplog, primary.url) == 1  # said once, however many probes


def test_a_backend_with_no_health_endpoint_that_fails_is_down(make_session: Make, primary, secondary):
    primary.set(status=503, routes=NO_HEALTH)
    session = make_session([primary.url, secondary.url])
    assert session.force_refresh() == secondary.url
    first = session.status()["backends"][0]
    assert first["healthy"] is False and first["health_endpoint"] is False
    assert first["last_error"] == (
        "no health endpoint (HTTP 404/405 on /health, /api/health, /status); the base URL answered HTTP 503"
    )


def test_a_health_check_keeps_the_last_word(make_session: Make, primary, secondary):
    """With ``health_check`` the user's verdict on each answer is final: no base-URL fallback."""
    primary.set(routes=NO_HEALTH)
    session = make_session([primary.url, secondary.url], health_check=lambda r: r.status_code == 200)
    assert session.force_refresh() == secondary.url
    assert [h.path for h in primary.hits()] == ["/health", "/api/health", "/status"]


@pytest.fixture
def api() -> Iterator[LoopbackBackend]:
    with LoopbackBackend("api") as server:
        yield server


def probed_paths(server: LoopbackBackend, base: str, **options: object) -> list:
    with FailoverSession([server.url + base], state_file=False, **options) as session:  # type: ignore[arg-type]
        session.force_refresh()
    return [h.path for h in server.hits()]


def test_a_base_path_is_never_doubled(api):
    api.set(routes={"/api/health": 404, "/api/status": 404})
    assert probed_paths(api, "/api") == ["/api/health", "/api/status", "/api"]


def test_a_health_path_may_start_with_the_base_path_or_name_the_host(api):
    assert probed_paths(api, "/api", health_paths=("/api/ready",)) == ["/api/ready"]
    api.reset_hits()
    assert probed_paths(api, "/api", health_paths=("//healthz",)) == ["/healthz"]
    api.reset_hits()
    assert probed_paths(api, "/api", health_paths=("/ready",)) == ["/api/ready"]


@pytest.mark.parametrize("path", ["/../health", "/api/../../health", "/%2E%2E/health", "/./health"])
def test_health_paths_that_climb_out_are_refused(path):
    with pytest.raises(ValueError, match=r"^health_paths: .* '\.' or '\.\.' segment.*'//health'"):
        FailoverSession(["http://127.0.0.1:1/api"], health_paths=(path,), state_file=False)


def test_a_state_file_naming_a_directory_is_refused_at_construction(tmp_path):
    with pytest.raises(ValueError) as raised:
        FailoverSession(["http://127.0.0.1:1"], state_file=str(tmp_path))
    assert str(raised.value) == (
        f"state_file: {str(tmp_path)!r} is a directory; give the path of a file, "
        f"such as {str(tmp_path / 'failover.json')!r}"
    )
    assert list(tmp_path.iterdir()) == []  # no lock file, no temp file left next to it
