"""The public testing module: every failure mode on real sockets, and the pytest plugin."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from importlib import metadata
from pathlib import Path
from typing import Optional

import pytest
import requests

from requests_failover import FailoverSession
from requests_failover.testing import LoopbackBackend, is_testing, served_by, set_testing

from .conftest import BOUND, wait_until

TIMEOUT = (5.0, 10.0)  # generous: a healthy loopback answer takes milliseconds


def test_served_by_names_the_backend_that_answered_and_rejects_other_bodies(primary, secondary):
    assert served_by(requests.get(primary.url + "/a", timeout=TIMEOUT)) == "primary"
    assert served_by(requests.post(secondary.url + "/b", data=b"x", timeout=TIMEOUT)) == "secondary"
    for body in (b"<html>no json</html>", b'{"name": "primary"}', b'["primary"]', b'{"server": 1}'):
        other = requests.Response()
        other._content = body
        with pytest.raises(ValueError, match=r"^response: not a LoopbackBackend answer"):
            served_by(other)


def test_up_answers_json_and_counts_requests_probes_and_bodies(primary):
    answer = requests.post(primary.url + "/orders?x=1", data=b"payload", timeout=TIMEOUT)
    assert answer.status_code == 200
    assert answer.json() == {"server": "primary", "method": "POST", "path": "/orders?x=1", "body": "payload"}
    requests.get(primary.url + "/health", timeout=TIMEOUT)
    assert [h.path for h in primary.requests] == ["/orders?x=1"]
    assert [h.path for h in primary.probes] == ["/health"]
    assert primary.bodies == [b"payload"]


def test_refuse_is_a_connection_refused(primary):
    primary.set("refuse")
    with pytest.raises(requests.exceptions.ConnectionError) as caught:
        requests.get(primary.url + "/", timeout=TIMEOUT)
    assert not isinstance(caught.value, requests.exceptions.Timeout)
    assert "refused" in str(caught.value).lower()
    primary.set("up")
    assert requests.get(primary.url + "/", timeout=TIMEOUT).ok, "it comes back on the same port"


def test_blackhole_drops_syns_a_connect_timeout(primary):
    primary.set("blackhole")
    with pytest.raises(requests.exceptions.ConnectTimeout):
        requests.get(primary.url + "/", timeout=(0.2, 5))
    assert primary.hits() == []
    primary.set("up")
    assert requests.get(primary.url + "/", timeout=TIMEOUT).ok


def test_hang_reads_the_request_and_never_answers(primary):
    primary.set("hang")
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(primary.url + "/slowly", data=b"x", timeout=(5, 0.2))
    assert primary.bodies == [b"x"], "the request arrived"


def test_reset_after_reading_the_request(primary):
    primary.set("reset")
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.put(primary.url + "/r", data=b"y", timeout=TIMEOUT)
    assert primary.bodies == [b"y"]


def test_truncate_resets_mid_body(primary):
    primary.set("truncate")
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError)):
        requests.get(primary.url + "/big", timeout=TIMEOUT)


def test_fixed_status_with_retry_after(primary):
    primary.set(status=503, retry_after=30)
    answer = requests.get(primary.url + "/x", timeout=TIMEOUT)
    assert answer.status_code == 503 and answer.headers["Retry-After"] == "30"


def test_slow_answer(primary):
    primary.set(delay=0.5)
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(primary.url + "/a", timeout=(5, 0.05))
    assert requests.get(primary.url + "/b", timeout=(5, 30)).json()["path"] == "/b", "in time, it answers"


def test_health_failing_while_the_api_answers(primary, secondary):
    primary.set(health=503)
    assert requests.get(primary.url + "/api/items", timeout=TIMEOUT).status_code == 200
    assert requests.get(primary.url + "/health", timeout=TIMEOUT).status_code == 503
    with FailoverSession([primary.url, secondary.url], state_file=False) as session:
        assert session.force_refresh() == secondary.url
    primary.set(health=200)
    assert requests.get(primary.url + "/health", timeout=TIMEOUT).status_code == 200


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.1", "example.com", "::"])
def test_only_loopback_addresses_are_bound(host):
    with pytest.raises(ValueError, match="host"):
        LoopbackBackend(host=host)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"mode": "down"}, "mode"),
        ({"status": 99}, "status"),
        ({"health": True}, "health"),
        ({"delay": -1}, "delay"),
        ({"retry_after": "soon"}, "retry_after"),
        ({"api_delay": -0.1}, "api_delay"),
        ({"api_delay": True}, "api_delay"),
        ({"tail": (1.5, 1.0)}, "tail"),
        ({"tail": (0.1, -1)}, "tail"),
        ({"tail": ("some", 1.0)}, "tail"),
        ({"errors": (0.1, 700)}, "errors"),
        ({"errors": (0.1, 503.0)}, "errors"),
        ({"errors": (-0.1, 503)}, "errors"),
    ],
)
def test_bad_settings_name_the_argument(primary, kwargs, error):
    with pytest.raises(ValueError, match=error):
        primary.set(**kwargs)


@pytest.mark.parametrize(("kwargs", "name"), [({"tail": 0.02}, "tail"), ({"errors": [0.3, 503, 1]}, "errors")])
def test_a_share_that_is_not_a_pair_is_a_type_error(primary, kwargs, name):
    with pytest.raises(TypeError, match=rf"^{name}: expected a \(share, value\) tuple"):
        primary.set(**kwargs)


# -- gray failures: deterministic, health paths untouched ----------------------------------------

HELD = 600.0  # a slow answer waits this long: far past any test's bound, released by close()


class _Pending:
    """A GET in a thread of its own; ``done`` once answered (or failed)."""

    def __init__(self, url: str) -> None:
        self.answer: Optional[requests.Response] = None
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(url,), daemon=True)
        self.thread.start()

    def _run(self, url: str) -> None:
        try:
            self.answer = requests.get(url, timeout=(5, HELD + 60))
        except requests.exceptions.RequestException:
            pass
        finally:
            self.done.set()


def test_tail_slows_exactly_every_nth_api_answer_and_never_a_health_check(primary):
    # tail=(0.25, x): request n is slow iff floor(n/4) > floor((n-1)/4): exactly 4, 8, 12
    primary.set(tail=(0.25, HELD))
    pending = {}
    for n in range(1, 13):
        pending[n] = _Pending(f"{primary.url}/api/{n}")
        wait_until(lambda n=n: len(primary.requests) == n, f"request {n} received")  # n is its place in the count
        assert requests.get(primary.url + "/health", timeout=TIMEOUT).status_code == 200, "health: at once"
    wait_until(lambda: sum(p.done.is_set() for p in pending.values()) == 9, "the nine fast answers")
    assert [n for n, p in pending.items() if not p.done.is_set()] == [4, 8, 12]
    assert all(pending[n].answer.json()["path"] == f"/api/{n}" for n in pending if n % 4)
    assert len(primary.probes) == 12, "health checks are not counted as API requests"
    primary.close()  # releases the held answers unanswered
    for p in pending.values():
        p.thread.join(BOUND)
    assert all(p.done.is_set() for p in pending.values())


def test_api_delay_holds_the_api_while_health_checks_answer_at_once(primary):
    primary.set(api_delay=HELD)
    held = _Pending(primary.url + "/api/items")
    wait_until(lambda: len(primary.requests) == 1, "the API request received")
    for path in primary.health_paths:
        assert requests.get(primary.url + path, timeout=TIMEOUT).status_code == 200
    assert not held.done.is_set(), "the API answer is still held after the health checks were answered"
    primary.set(api_delay=0)
    assert requests.get(primary.url + "/api/next", timeout=TIMEOUT).json()["path"] == "/api/next"
    primary.close()
    held.thread.join(BOUND)
    assert held.answer is None


def test_errors_replace_an_exact_evenly_spread_share_of_api_answers(primary):
    primary.set(errors=(0.3, 503))
    statuses = []
    for n in range(1, 11):
        statuses.append(requests.get(f"{primary.url}/api/{n}", timeout=TIMEOUT).status_code)
        assert requests.get(primary.url + "/health", timeout=TIMEOUT).status_code == 200
    # floor(0.3 n) grows at n = 4 (1.2), 7 (2.1), 10 (3.0)
    assert [n for n, status in enumerate(statuses, 1) if status == 503] == [4, 7, 10]
    assert set(statuses) == {200, 503}
    primary.set(errors=(0.29, 500))  # a fresh counter; the share exact, as written (float 0.29 * 100 < 29)
    assert sum(requests.get(primary.url + "/x", timeout=TIMEOUT).status_code == 500 for _ in range(100)) == 29
    primary.set(errors=(0, 500))
    assert {requests.get(primary.url + "/y", timeout=TIMEOUT).status_code for _ in range(5)} == {200}


def test_close_joins_the_server_threads_and_closes_every_socket():
    backend = LoopbackBackend("short-lived")
    backend.set("hang")
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(backend.url + "/", timeout=(5, 0.1))
    backend.close()
    assert backend.open_connections() == 0
    assert all(not t.is_alive() for t in backend._threads)
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(backend.url + "/", timeout=TIMEOUT)


def test_set_testing_is_one_switch_and_a_context_manager():
    assert not is_testing()
    waits = []
    with set_testing(True, sleep=waits.append):
        assert is_testing()
        from requests_failover import _runtime

        _runtime.sleep(3.0)
    assert waits == [3.0]
    assert not is_testing()
    with pytest.raises(TypeError, match="testing"):
        set_testing("yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="clock"):
        set_testing(True, clock=3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="clock"):
        set_testing(False, clock=lambda: 0.0)


# -- the plugin in a fresh project ------------------------------------------------------------------

EXAMPLE = """
import requests


def place_order(session, base):
    return session.post(base + "/orders", json={"item": 1})


def test_orders_survive_a_refused_primary(failover_primary, failover_secondary, failover_session):
    session = failover_session()
    failover_primary.set("refuse")
    answer = place_order(session, failover_primary.url)
    assert answer.json()["server"] == "secondary"
    assert failover_primary.requests == []
    assert [h.method for h in failover_secondary.requests] == ["POST"]


def test_reads_survive_a_503_with_retry_after(failover_primary, failover_session):
    session = failover_session()
    failover_primary.set(status=503, retry_after=30, health=200)
    assert session.get(failover_primary.url + "/items").json()["server"] == "secondary"
    assert session.active_backend != failover_primary.url


def test_a_black_hole_costs_a_connect_timeout_not_a_failure(failover_primary, failover_session):
    session = failover_session()
    session.get(failover_primary.url + "/warm")
    failover_primary.set("blackhole")
    answer = session.get(failover_primary.url + "/items", timeout=(0.3, 10))
    assert answer.json()["server"] == "secondary"
"""

FAILING = """
def test_expects_the_wrong_backend(failover_primary, failover_session):
    session = failover_session()
    failover_primary.set("refuse")
    assert session.get(failover_primary.url + "/x").json()["server"] == "primary"
"""


def _plugin_installed() -> bool:
    found = metadata.entry_points()
    group = found.select(group="pytest11") if hasattr(found, "select") else found.get("pytest11", [])  # Python 3.9
    return any(ep.value == "requests_failover.pytest_plugin" for ep in group)


def _run_project(tmp_path: Path, source: str) -> subprocess.CompletedProcess:
    project = tmp_path / "project"
    project.mkdir(parents=True)
    (project / "pytest.ini").write_text("[pytest]\n")  # the project's own root, not ours
    (project / "test_example.py").write_text(textwrap.dedent(source))
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error::ResourceWarning"]
    args += ["-W", "error::pytest.PytestUnraisableExceptionWarning"]
    return subprocess.run(args, cwd=project, capture_output=True, text=True, timeout=300, env=_clean_env())


def _clean_env() -> dict:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COV_", "REQUESTS_FAILOVER"))}
    env.pop("PYTHONPATH", None)
    return env


def _doc_example() -> str:
    """The example module of docs/testing.rst ("Testing your code's failover")."""
    text = (Path(__file__).parent.parent / "docs" / "testing.rst").read_text()
    block = text.split(".. code-block:: python\n", 1)[1]
    lines = []
    for line in block.splitlines()[1:]:
        if line and not line.startswith("   "):
            break
        lines.append(line[3:])
    return "\n".join(lines)


def test_the_plugin_works_in_a_fresh_project(tmp_path):
    if not _plugin_installed():
        pytest.skip("requests-failover is not installed (plain checkout): no entry point")
    passing = _run_project(tmp_path / "ok", EXAMPLE)
    assert passing.returncode == 0, passing.stdout + passing.stderr
    assert "3 passed" in passing.stdout


def test_the_documented_examples_pass_in_a_fresh_project(tmp_path):
    if not _plugin_installed():
        pytest.skip("requests-failover is not installed (plain checkout): no entry point")
    source = _doc_example()
    assert source.count("\ndef test_") == 7, source
    result = _run_project(tmp_path, source)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "7 passed" in result.stdout


def test_a_failing_expectation_fails_in_a_fresh_project(tmp_path):
    if not _plugin_installed():
        pytest.skip("requests-failover is not installed (plain checkout): no entry point")
    failing = _run_project(tmp_path, FAILING)
    assert failing.returncode == 1, failing.stdout + failing.stderr
    assert "1 failed" in failing.stdout and "'secondary' == 'primary'" in failing.stdout


def test_the_plugin_is_inert_unless_its_fixtures_are_used(tmp_path):
    if not _plugin_installed():
        pytest.skip("requests-failover is not installed (plain checkout): no entry point")
    plain = _run_project(
        tmp_path, "def test_nothing():\n    import threading\n    assert threading.active_count() == 1\n"
    )
    assert plain.returncode == 0, plain.stdout + plain.stderr


def test_a_connection_that_outlives_refuse_is_never_answered(primary):
    import socket as socket_module

    keep = socket_module.create_connection((primary.host, primary.port))  # accepted while "up"
    try:
        primary.set("refuse")
        primary.set("up")
        primary.set("refuse")  # its connection may or may not have been dropped: either way, no answer
        keep.settimeout(30)
        try:
            keep.sendall(b"GET /late HTTP/1.1\r\nHost: x\r\n\r\n")
            data = keep.recv(65536)
        except OSError:  # reset: the expected way of not answering
            data = b""
        assert not data.startswith(b"HTTP/1.1 200"), data
    finally:
        keep.close()
