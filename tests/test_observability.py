"""Events, metrics observers, custom health checks, typed status, the CLI's watch and bad input."""

from __future__ import annotations

import logging
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Iterator, List, get_type_hints

import pytest

from requests_failover import AttemptEvent, FailoverSession, ProbeEvent, Status, SwitchEvent
from requests_failover.testing import settle

from .conftest import BOUND, cli

Make = Callable[..., FailoverSession]


@pytest.fixture
def seen() -> List[Any]:
    return []


def attempts(events: List[Any]) -> List[Any]:
    return [
        (e.backend, e.outcome, e.status_code, e.attempt, e.failover, e.repeat)
        for e in events
        if isinstance(e, AttemptEvent)
    ]


def test_a_success_is_one_attempt_event(make_session: Make, primary, secondary, seen):
    session = make_session([primary.url, secondary.url], observers=[seen.append])
    session.get(primary.url + "/x")
    assert attempts(seen) == [(primary.url, "success", 200, 1, False, False)]
    (event,) = [e for e in seen if isinstance(e, AttemptEvent)]
    assert event.method == "GET" and event.error is None and 0 <= event.duration < BOUND


def test_failover_gives_attempts_a_probe_failure_and_a_switch(make_session: Make, primary, secondary, seen):
    session = make_session([primary.url, secondary.url], observers=[seen.append])
    session.get(primary.url + "/warm")
    seen.clear()
    primary.set("refuse")
    session.post(primary.url + "/orders", data=b"x")
    assert attempts(seen) == [
        (primary.url, "retried", None, 1, False, False),
        (secondary.url, "success", 200, 2, True, False),
    ]
    retried = next(e for e in seen if isinstance(e, AttemptEvent))
    assert retried.error.startswith("ConnectionError") and retried.method == "POST"
    switches = [e for e in seen if isinstance(e, SwitchEvent)]
    assert [(s.previous, s.current) for s in switches] == [(primary.url, secondary.url)]


def test_cold_start_probe_failure_is_a_probe_event(make_session: Make, primary, secondary, seen):
    primary.set("refuse")
    session = make_session([primary.url, secondary.url], observers=[seen.append])
    session.get(primary.url + "/x")
    settle(session)
    probes = {e.backend: e for e in seen if isinstance(e, ProbeEvent)}
    assert probes[primary.url].healthy is False and "refused" in probes[primary.url].error.lower()
    assert probes[primary.url].status_code is None and probes[primary.url].path == "/health"
    assert probes[secondary.url].healthy is True and probes[secondary.url].status_code == 200
    assert probes[secondary.url].duration is not None and probes[secondary.url].error is None


def test_repeats_and_a_503_with_retry_after(make_session: Make, primary, secondary, seen):
    session = make_session([primary.url, secondary.url], observers=[seen.append])
    session.get(primary.url + "/warm")
    seen.clear()
    for backend in (primary, secondary):
        backend.set(status=503, retry_after=5, health=200)
    response = session.get(primary.url + "/x")
    assert response.status_code == 503
    assert attempts(seen) == [
        (primary.url, "retried", 503, 1, False, False),
        (secondary.url, "retried", 503, 2, True, False),
        (primary.url, "failed", 503, 3, False, True),
    ]


def test_an_observer_that_raises_is_logged_and_ignored(make_session: Make, primary, secondary, seen, caplog):
    def broken(event: Any) -> None:
        raise RuntimeError("observer bug")

    session = make_session([primary.url, secondary.url], observers=[broken, seen.append])
    primary.set("refuse")
    assert session.get(primary.url + "/x").json()["server"] == "secondary"
    assert attempts(seen), "the next observer still got every event"
    assert any("observer" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)


def test_on_switch_and_observers_both_get_the_switch(make_session: Make, primary, secondary, seen, events):
    session = make_session([primary.url, secondary.url], observers=[seen.append])
    session.get(primary.url + "/warm")
    primary.set("refuse")
    session.get(primary.url + "/x")
    assert [e for e in seen if isinstance(e, SwitchEvent)] == events[-1:]


@pytest.mark.parametrize("bad", [3, "print", [3], None])
def test_observers_must_be_callables(bad):
    with pytest.raises(TypeError, match="observers"):
        FailoverSession(["http://127.0.0.1:1"], observers=bad, state_file=False)


# -- metrics ----------------------------------------------------------------------------------------


def test_prometheus_exposition_after_a_failover(make_session: Make, primary, secondary):
    prometheus_client = pytest.importorskip("prometheus_client")
    from prometheus_client.parser import text_string_to_metric_families

    from requests_failover.metrics import PrometheusObserver

    registry = prometheus_client.CollectorRegistry()
    session = make_session([primary.url, secondary.url], observers=[PrometheusObserver(registry)])
    session.get(primary.url + "/warm")
    primary.set("refuse")
    session.get(primary.url + "/x")
    session.get(primary.url + "/y")
    text = prometheus_client.generate_latest(registry).decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    P, S = primary.url, secondary.url
    assert samples[("requests_failover_attempts_total", (("backend", P), ("outcome", "success")))] == 1
    assert samples[("requests_failover_attempts_total", (("backend", P), ("outcome", "retried")))] == 1
    assert samples[("requests_failover_attempts_total", (("backend", S), ("outcome", "success")))] == 2
    assert samples[("requests_failover_switches_total", (("current", S), ("previous", P)))] == 1
    assert samples[("requests_failover_active_backend", (("backend", S),))] == 1
    assert samples[("requests_failover_active_backend", (("backend", P),))] == 0
    assert samples[("requests_failover_backend_down", (("backend", P),))] == 1
    assert samples[("requests_failover_attempt_duration_seconds_count", (("backend", S),))] == 2


def test_two_prometheus_observers_share_one_registry(make_session: Make, primary, secondary, tertiary):
    """A session per service, each with its own observer: one set of metrics, told apart by backend."""
    prometheus_client = pytest.importorskip("prometheus_client")
    from prometheus_client.parser import text_string_to_metric_families

    from requests_failover.metrics import PrometheusObserver

    registry = prometheus_client.CollectorRegistry()
    one, two = PrometheusObserver(registry), PrometheusObserver(registry)
    assert one.attempts is two.attempts
    billing = make_session([primary.url, secondary.url], observers=[one])
    search = make_session([tertiary.url], observers=[two])
    billing.get(primary.url + "/a")
    search.get(tertiary.url + "/b")
    search.get(tertiary.url + "/c")
    text = prometheus_client.generate_latest(registry).decode()
    totals = {
        s.labels["backend"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "requests_failover_attempts_total"
    }
    assert totals == {primary.url: 1, tertiary.url: 2}


def test_a_prometheus_name_taken_by_another_collector_says_what_to_do():
    prometheus_client = pytest.importorskip("prometheus_client")
    from requests_failover.metrics import PrometheusObserver

    registry = prometheus_client.CollectorRegistry()
    prometheus_client.Counter("requests_failover_attempts", "someone else's", registry=registry)
    with pytest.raises(ValueError, match=r"^PrometheusObserver: metrics named requests_failover_\* are already"):
        PrometheusObserver(registry)
    assert PrometheusObserver(registry, namespace="billing").attempts._name == "billing_attempts"


def test_opentelemetry_observer_with_the_sdks_in_memory_reader(make_session: Make, primary, secondary):
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from requests_failover.metrics import OpenTelemetryObserver

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    session = make_session([primary.url, secondary.url], observers=[OpenTelemetryObserver(provider)])
    session.get(primary.url + "/warm")
    primary.set("refuse")
    session.get(primary.url + "/x")
    data = reader.get_metrics_data()
    points = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    points[(metric.name, tuple(sorted(point.attributes.items())))] = getattr(
                        point, "value", None
                    ) or getattr(point, "count", None)
    P, S = primary.url, secondary.url
    assert points[("requests_failover.attempts", (("backend", P), ("outcome", "retried")))] == 1
    assert points[("requests_failover.attempts", (("backend", S), ("outcome", "success")))] == 1
    assert points[("requests_failover.switches", (("current", S), ("previous", P)))] == 1
    assert points[("requests_failover.active_backend", (("backend", S),))] == 1
    assert points[("requests_failover.backend.down", (("backend", P),))] == 1
    assert points[("requests_failover.attempt.duration", (("backend", S),))] == 1
    provider.shutdown()


# -- custom health checks ---------------------------------------------------------------------------


def test_health_check_rejects_a_slow_backend(make_session: Make, primary, secondary):
    primary.set(delay=0.3)
    session = make_session(
        [primary.url, secondary.url], health_check=lambda r: r.ok and r.elapsed.total_seconds() < 0.2
    )
    assert session.force_refresh() == secondary.url
    settle(session)  # the primary's probe may still be out: probes race after hedge_delay
    first = session.status()["backends"][0]
    assert first["healthy"] is False and "health_check rejected" in first["last_error"]


def test_health_check_rejects_a_wrong_body(make_session: Make, primary, secondary):
    session = make_session([primary.url, secondary.url], health_check=lambda r: r.json()["server"] != "primary")
    assert session.force_refresh() == secondary.url


def test_a_health_check_that_raises_counts_as_unhealthy(make_session: Make, primary, secondary):
    def broken(response: Any) -> bool:
        raise KeyError("status")

    session = make_session([primary.url, secondary.url], health_check=broken)
    session.force_refresh()
    assert all(b["healthy"] is False for b in session.status()["backends"])
    assert "health_check raised KeyError" in session.status()["backends"][0]["last_error"]


def test_health_headers_reach_the_probe_and_never_the_logs(make_session: Make, primary, secondary, caplog):
    caplog.set_level(logging.DEBUG, logger="requests_failover")
    session = make_session([primary.url, secondary.url], health_headers={"X-Api-Key": "s3cret-key"})
    session.force_refresh()
    assert primary.probes[-1].headers["X-Api-Key"] == "s3cret-key"
    assert "X-Api-Key" not in primary.requests[-1].headers if primary.requests else True
    session.get(primary.url + "/x")
    assert "X-Api-Key" not in primary.requests[-1].headers, "probes only"
    assert "s3cret" not in caplog.text and "s3cret" not in str(session.status())


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"health_check": "yes"}, TypeError),
        ({"health_headers": [("a", "b")]}, TypeError),
        ({"health_headers": {"X-A": 3}}, TypeError),
        ({"health_headers": {"X-A": "a\r\nInjected: 1"}}, ValueError),
    ],
)
def test_bad_health_options_name_the_argument(kwargs, error):
    name = next(iter(kwargs))
    with pytest.raises(error, match=name):
        FailoverSession(["http://127.0.0.1:1"], state_file=False, **kwargs)


@pytest.fixture
def endless_health() -> Iterator[str]:
    """A backend whose /health answers 200 with a 1 GB body, streamed until the client leaves."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    sent: List[int] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n")
                total = 0
                try:
                    while total < 10**9:
                        conn.sendall(b"\0" * 65536)
                        total += 65536
                except OSError:
                    pass
                sent.append(total)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.shutdown(socket.SHUT_RDWR)  # wakes the accept(); close() alone would not
    listener.close()
    thread.join(BOUND)
    assert sent and max(sent) < 50 * 2**20, f"the client read {max(sent)} bytes of the endless body"


def test_a_probe_reads_a_bounded_body(make_session: Make, endless_health, secondary):
    session = make_session([endless_health, secondary.url])
    assert session.force_refresh() == endless_health
    session.close()


# -- typed status ------------------------------------------------------------------------------------


def test_status_keys_are_the_typed_dicts(make_session: Make, primary, secondary):
    session = make_session([primary.url, secondary.url])
    session.get(primary.url + "/x")
    status = session.status()
    assert set(status) == set(get_type_hints(Status))
    from requests_failover import BackendStatus

    assert all(set(b) == set(get_type_hints(BackendStatus)) for b in status["backends"])


# -- the command line ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["check", "http://127.0.0.1:1", "--path", "health"], "--path"),
        (["check", "http://127.0.0.1:1", "--timeout", "0"], "--timeout"),
        (["check", "http://127.0.0.1:1", "--timeout", "soon"], "--timeout"),
        (["check", "http://127.0.0.1:1", "--timeout", "inf"], "--timeout"),
        (["check", "ftp://x"], "backends"),
        (["check", "http://example.com"], "http://"),
        (["status", "http://127.0.0.1:1", "--state-file", "/"], "--state-file"),
        (["status", "http://127.0.0.1:1", "--watch", "--count", "0"], "--count"),
        (["reset", "http://127.0.0.1:1", "--state-file", ""], "--state-file"),
        (["demo", "--requests", "-1"], "--requests"),
        (["demo", "--interval", "-1"], "--interval"),
        (["check"], "URL"),
        (["nope"], "nope"),
    ],
)
def test_every_bad_argument_is_one_line_and_exit_2(args, named):
    result = cli(*args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0] and "Traceback" not in result.stderr, result.stderr


def test_status_watch_redraws_in_a_terminal_until_ctrl_c(primary, secondary, tmp_path):
    main, child = pty.openpty()
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    process = subprocess.Popen(
        [sys.executable, "-m", "requests_failover", "status", "--watch", primary.url, secondary.url],
        stdin=child,
        stdout=child,
        stderr=child,
        env=env,
    )
    os.close(child)
    seen = b""
    deadline = time.monotonic() + BOUND
    try:
        while seen.count(b"\x1b[2J") < 2:
            assert time.monotonic() < deadline, f"no second redraw: {seen!r}"
            ready, _, _ = select.select([main], [], [], 1.0)
            if ready:
                seen += os.read(main, 65536)
        process.send_signal(signal.SIGINT)
        assert process.wait(BOUND) == 0
    finally:
        if process.poll() is None:
            process.kill()
        os.close(main)
    assert seen.count(b"Ctrl-C to stop") >= 2 and primary.url.encode() in seen


def test_status_watch_is_plain_text_when_not_a_terminal(primary, secondary, tmp_path):
    result = cli("status", "--watch", "--count", "2", primary.url, secondary.url, env={"XDG_CACHE_HOME": str(tmp_path)})
    assert result.returncode == 0 and "\x1b" not in result.stdout
    assert result.stdout.count("active:") == 2
