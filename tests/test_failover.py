"""Failover behaviour against real loopback servers (contract sections 1-5, 8)."""

from __future__ import annotations

import io
import json
import threading
from typing import Any, Callable, Iterator, List

import pytest
import requests

from requests_failover import AllBackendsFailed, FailoverSession, SwitchEvent
from requests_failover.testing import LoopbackBackend, served_by, settle

from .conftest import BOUND, Clock

Make = Callable[..., FailoverSession]


def app_hits(server: LoopbackBackend, method: str = "") -> int:
    return len([h for h in server.hits(health=False) if not method or h.method == method])


# -- the healthy path ---------------------------------------------------------------


def test_primary_up_serves_everything_and_secondary_is_only_probed(make_session: Make, primary, secondary):
    session = make_session([primary.url, secondary.url])
    for _ in range(3):
        assert served_by(session.get(primary.url + "/items")) == "primary"
    assert app_hits(primary) == 3
    assert app_hits(secondary) == 0
    assert session.active_backend == primary.url


def test_fresh_selection_is_used_without_probing_again(make_session: Make, primary, secondary, clock: Clock):
    session = make_session([primary.url, secondary.url], cache_ttl=300)
    session.get(primary.url + "/a")
    probes = len(primary.hits(health=True))
    clock.advance(299)
    session.get(primary.url + "/b")
    assert len(primary.hits(health=True)) == probes, "a fresh selection must not probe"


# -- connection errors: every method fails over -----------------------------------------


@pytest.mark.parametrize("method", ["GET", "POST", "PATCH"])
def test_refused_primary_fails_over_for_every_method(make_session: Make, primary, secondary, method, events):
    session = make_session([primary.url, secondary.url])
    primary.set("refuse")
    response = session.request(method, primary.url + "/orders", data=b"payload")
    assert response.status_code == 200
    assert served_by(response) == "secondary"
    assert response.json()["body"] == "payload"
    assert [h.method for h in secondary.hits(health=False)] == [method], "sent exactly once"
    assert session.active_backend == secondary.url
    assert [(e.previous, e.current) for e in events] == [(primary.url, secondary.url)]


def test_switch_is_logged_once_at_info_naming_both_backends(make_session: Make, primary, secondary, info_lines):
    session = make_session([primary.url, secondary.url])
    session.get(primary.url + "/")
    primary.set("refuse")
    for _ in range(3):
        session.get(primary.url + "/")
    lines = info_lines()
    assert len(lines) == 1, lines
    assert primary.url in lines[0] and secondary.url in lines[0] and "refused" in lines[0].lower()


def test_connect_timeout_fails_over_even_for_post(make_session: Make, primary, secondary):
    session = make_session([primary.url, secondary.url], health_timeout=0.5)
    session.get(primary.url + "/")  # selection made while the primary is up
    primary.set("blackhole")  # SYNs are never answered: a connect timeout
    response = session.post(primary.url + "/pay", data=b"x", timeout=(0.5, 5))
    assert served_by(response) == "secondary"
    assert app_hits(secondary, "POST") == 1


def test_black_holed_primary_costs_one_timeout_then_is_skipped(make_session: Make, primary, secondary):
    # the read timeout's own cost (answer hedging, off here, would hedge a cold backend after COLD_DELAY)
    session = make_session([primary.url, secondary.url], hedge_requests=False)
    session.get(primary.url + "/")
    primary.set("hang")
    assert served_by(session.get(primary.url + "/slow", timeout=(5, 1.5))) == "secondary"
    assert app_hits(primary) == 2  # the first GET, then the one that timed out
    assert served_by(session.get(primary.url + "/next", timeout=(5, 1.5))) == "secondary"
    assert app_hits(primary) == 2, "the second request must not wait on the black hole again"


# -- answers that may have been processed: idempotent only ---------------------------------


def test_503_on_get_fails_over(make_session: Make, primary, secondary):
    session = make_session([primary.url, secondary.url])
    session.get(primary.url + "/")
    primary.set(status=503)
    assert served_by(session.get(primary.url + "/x")) == "secondary"
    assert app_hits(primary, "GET") == 2


def test_503_on_post_is_returned_and_never_replayed(make_session: Make, primary, secondary):
    session = make_session([primary.url, secondary.url])
    session.get(primary.url + "/")
    primary.set(status=503)
    response = session.post(primary.url + "/pay", data=b"once")
    assert response.status_code == 503
    assert served_by(response) == "primary"
    assert app_hits(primary, "POST") == 1
    assert app_hits(secondary, "POST") == 0, "a POST that reached a server is never sent twice"
    assert session.active_backend == secondary.url, "the failing backend is marked down at once"


def test_503_on_post_with_idempotency_key_fails_over(make_session: Make, primary, secondary):
    session = make_session([primary.url, secondary.url])
    session.get(primary.url + "/")
    primary.set(status=503)
    response = session.post(primary.url + "/pay", data=b"k", headers={"Idempotency-Key": "abc"})
    assert served_by(response) == "secondary"
    assert app_hits(primary, "POST") == 1 and app_hits(secondary, "POST") == 1


def test_read_timeout_on_post_raises_read_timeout_and_is_not_replayed(make_session: Make, primary, secondary):
    session = make_session([primary.url, secondary.url])
    session.get(primary.url + "/")
    primary.set("hang")
    with pytest.raises(requests.exceptions.ReadTimeout) as info:
        session.post(primary.url + "/pay", data=b"x", timeout=(1, 0.3))
    assert isinstance(info.value, AllBackendsFailed)
    assert app_hits(secondary, "POST") == 0


def test_reset_after_send_fails_over_get_but_not_post(make_session: Make, primary, secondary):
    session = make_session([primary.url, secondary.url])
    session.get(primary.url + "/")
    primary.set("reset")
    assert served_by(session.get(primary.url + "/g")) == "secondary"
    session.clear_cache()
    primary.set("up")
    session.get(primary.url + "/")
    primary.set("reset")
    with pytest.raises(requests.exceptions.ConnectionError):
        session.post(primary.url + "/p", data=b"x")
    assert app_hits(secondary, "POST") == 0


def test_4xx_is_a_healthy_answer(make_session: Make, primary, secondary):
    session = make_session([primary.url, secondary.url])
    session.get(primary.url + "/")
    primary.set(status=404)
    assert session.get(primary.url + "/missing").status_code == 404
    assert app_hits(secondary) == 0
    assert session.active_backend == primary.url


# -- everything down ------------------------------------------------------------------------


def test_all_down_raises_all_backends_failed_naming_each(make_session: Make, primary, secondary):
    session = make_session([primary.url, secondary.url])
    primary.set("refuse")
    secondary.set("refuse")
    with pytest.raises(AllBackendsFailed) as info:
        session.get(primary.url + "/x")
    error = info.value
    assert isinstance(error, requests.exceptions.ConnectionError)
    assert {url for url, _ in error.failures} == {primary.url, secondary.url}
    assert primary.url in str(error) and secondary.url in str(error)


def test_all_503_returns_the_last_503(make_session: Make, primary, secondary, sleeps):
    session = make_session([primary.url, secondary.url], max_retries=2)
    primary.set(status=503)
    secondary.set(status=503)
    response = session.get(primary.url + "/x")
    assert response.status_code == 503
    assert app_hits(primary) + app_hits(secondary) == 3, "1 + max_retries attempts"
    assert len(sleeps) == 1, "only the repeat of a backend waits"


def test_recovery_after_all_down_needs_no_reset(make_session: Make, primary, secondary):
    session = make_session([primary.url, secondary.url])
    primary.set("refuse")
    secondary.set("refuse")
    with pytest.raises(AllBackendsFailed):
        session.get(primary.url + "/x")
    secondary.set("up")
    assert served_by(session.get(primary.url + "/x")) == "secondary"
    assert session.active_backend == secondary.url


# -- attempt budget and order ---------------------------------------------------------------------


def test_every_untried_backend_comes_before_a_repeat(make_session: Make, primary, secondary, tertiary, sleeps):
    transport = RecordingTransport()
    session = make_session(
        [primary.url, secondary.url, tertiary.url], max_retries=4, retry_delay=0.5, transport=transport
    )
    for server in (primary, secondary, tertiary):
        server.set(status=502)
    assert session.get(primary.url + "/x").status_code == 502
    order = [url.rsplit("/", 1)[0] for url in transport.urls if url.endswith("/x")]
    assert order == [primary.url, secondary.url, tertiary.url, primary.url, secondary.url], "1 + max_retries"
    assert len(sleeps) == 2, "no delay before a backend not yet tried, one before each repeat"
    assert all(0.25 <= delay <= 0.5 for delay in sleeps), "first repeat: retry_delay * uniform(0.5, 1)"


def test_max_retries_zero_makes_one_attempt(make_session: Make, primary, secondary):
    session = make_session([primary.url, secondary.url], max_retries=0)
    session.get(primary.url + "/")
    primary.set(status=503)
    assert session.get(primary.url + "/x").status_code == 503
    assert app_hits(secondary) == 0


def test_retry_budget_stops_repeats_when_failures_dominate(make_session: Make, primary, secondary, sleeps):
    session = make_session([primary.url, secondary.url], max_retries=3)
    primary.set(status=503)
    secondary.set(status=503)
    counts = []
    for _ in range(6):
        before = app_hits(primary) + app_hits(secondary)
        session.get(primary.url + "/x")
        counts.append(app_hits(primary) + app_hits(secondary) - before)
    assert counts[0] == 4, "repeats allowed while the budget lasts"
    assert counts[-1] == 2, "then each backend is tried once, no repeats"


def test_caller_timeout_bounds_all_attempts(make_session: Make, primary, secondary, sleeps):
    session = make_session([primary.url, secondary.url], retry_delay=10)
    primary.set(status=503)
    secondary.set(status=503)
    session.get(primary.url + "/x", timeout=2)
    assert sleeps == [], "a backoff that would overrun the caller's timeout is not taken"


# -- bodies -----------------------------------------------------------------------------------------


def test_generator_body_is_not_replayed(make_session: Make, primary, secondary):
    session = make_session([primary.url, secondary.url])
    session.get(primary.url + "/")
    primary.set(status=503)

    def body() -> Iterator[bytes]:
        yield b"chunk"

    response = session.put(primary.url + "/upload", data=body())
    assert response.status_code == 503
    assert app_hits(secondary) == 0


def test_seekable_body_is_rewound_and_replayed_whole(make_session: Make, primary, secondary):
    session = make_session([primary.url, secondary.url])
    session.get(primary.url + "/")
    primary.set(status=503)
    response = session.put(primary.url + "/upload", data=io.BytesIO(b"whole file"))
    assert served_by(response) == "secondary"
    assert response.json()["body"] == "whole file"


# -- health checks ------------------------------------------------------------------------------------


def test_health_paths_are_tried_in_order(make_session: Make, primary, secondary):
    primary.set(routes={"/health": 404, "/api/health": 500, "/status": 200})
    session = make_session([primary.url, secondary.url])
    assert served_by(session.get(primary.url + "/")) == "primary"
    assert [h.path for h in primary.hits(health=True)] == ["/health", "/api/health", "/status"]


def test_unhealthy_primary_is_skipped_at_selection(make_session: Make, primary, secondary, events):
    primary.set(routes={"/health": 500, "/api/health": 500, "/status": 500})
    session = make_session([primary.url, secondary.url])
    assert served_by(session.get(primary.url + "/")) == "secondary"
    assert app_hits(primary) == 0
    assert events[0].reason == "health check"


def test_connection_error_ends_a_backends_probe_at_once(make_session: Make, primary, secondary):
    primary.set("reset")
    session = make_session([primary.url, secondary.url])
    session.get(primary.url + "/")
    assert [h.path for h in primary.hits(health=True)] == ["/health"]


def test_stale_selection_is_reprobed_from_the_top_in_the_background(make_session: Make, primary, secondary, clock):
    session = make_session([primary.url, secondary.url], cache_ttl=60)
    session.get(primary.url + "/")
    probes = len(primary.probes)
    clock.advance(30)
    assert served_by(session.get(primary.url + "/")) == "primary"
    settle(session)
    assert len(primary.probes) == probes, "fresh: not probed"
    clock.advance(31)
    assert served_by(session.get(primary.url + "/")) == "primary", "stale: served at once"
    settle(session)
    assert len(primary.probes) == probes + 1 and session.status()["cache_valid"] is True


def test_retry_after_holds_a_backend_down_even_if_healthy(make_session: Make, primary, secondary, clock: Clock):
    session = make_session([primary.url, secondary.url], cache_ttl=5)
    session.get(primary.url + "/")
    primary.set(status=503, headers={"Retry-After": "30"}, routes={"/health": 200})
    assert served_by(session.get(primary.url + "/x")) == "secondary"
    primary.set(status=200, headers={})
    clock.advance(10)  # stale: the probe finds the primary healthy, but it is held
    assert served_by(session.get(primary.url + "/x")) == "secondary"
    assert session.force_refresh() == secondary.url
    clock.advance(25)
    assert session.force_refresh() == primary.url


def test_force_refresh_and_clear_cache(make_session: Make, primary, secondary):
    session = make_session([primary.url, secondary.url])
    primary.set("refuse")
    assert session.force_refresh() == secondary.url
    session.clear_cache()
    status = session.status()
    assert status["last_health_check"] is None and status["cache_valid"] is False
    assert session.active_backend == primary.url, "no selection: the first backend"


# -- rewriting ------------------------------------------------------------------------------------------


def test_rest_of_url_and_headers_are_kept_host_is_the_backends(make_session: Make, primary, secondary):
    session = make_session([primary.url, secondary.url])
    primary.set("refuse")
    response = session.get(primary.url + "/a%20b/c?x=1&y=%C3%A9&x=2#frag", headers={"X-Trace": "t1"})
    hit = secondary.hits(health=False)[-1]
    assert hit.path == "/a%20b/c?x=1&y=%C3%A9&x=2"
    assert hit.headers["X-Trace"] == "t1"
    assert hit.headers["Host"] == f"127.0.0.1:{secondary.port}"
    assert response.url.startswith(secondary.url), "resp.url is the backend that answered"


def test_base_paths_are_mapped(make_session: Make, primary, secondary):
    session = make_session([primary.url + "/v1", secondary.url + "/api/v2/"])
    primary.set("refuse")
    session.get(secondary.url + "/api/v2/health")  # any URL under a backend triggers selection
    session.get(primary.url + "/v1/users?id=3")
    assert secondary.hits(health=False)[-1].path == "/api/v2/users?id=3"


def test_base_path_boundary_is_respected(make_session: Make, primary, secondary):
    session = make_session([primary.url + "/v1", secondary.url])
    primary.set(status=503)  # were /v10 treated as a backend URL it would fail over
    assert session.get(primary.url + "/v10/x").status_code == 503
    assert app_hits(secondary) == 0


def test_other_hosts_pass_through_untouched(make_session: Make, primary, secondary, tertiary):
    session = make_session([primary.url, secondary.url])
    tertiary.set(status=503)
    assert session.get(tertiary.url + "/x").status_code == 503
    assert app_hits(tertiary) == 1, "no retries for a host outside the backend list"
    tertiary.set("refuse")
    with pytest.raises(requests.exceptions.ConnectionError) as info:
        session.get(tertiary.url + "/x")
    assert not isinstance(info.value, AllBackendsFailed)


def test_redirects_are_rewritten(make_session: Make, primary, secondary):
    session = make_session([primary.url, secondary.url])
    primary.set("refuse")
    secondary.set(routes={"/old": (302, {"Location": primary.url + "/new"})})
    response = session.get(primary.url + "/old")
    assert served_by(response) == "secondary"
    assert [h.path for h in secondary.hits(health=False)] == ["/old", "/new"]
    assert response.history and response.history[0].status_code == 302


@pytest.mark.skipif("not __import__('tests.conftest', fromlist=['x']).ipv6_loopback_available()")
def test_ipv6_loopback_backend(make_session: Make, primary):
    with LoopbackBackend("v6", host="::1") as v6:
        session = make_session([primary.url, v6.url])
        primary.set("refuse")
        assert served_by(session.get(primary.url + "/x?q=[1]")) == "v6"
        assert session.active_backend == f"http://[::1]:{v6.port}"


def test_explicit_default_port_matches(make_session: Make, secondary):
    session = make_session(["http://localhost", secondary.url], health_timeout=0.5)
    adapter = session.failover_adapter
    assert adapter.match("http://localhost:80/x?y")[1] == "/x?y"
    assert adapter.match("http://LOCALHOST/x")[1] == "/x"
    assert adapter.match("http://localhost:8080/x") is None
    assert adapter.match("http://localhost.evil/x") is None


# -- timeouts ---------------------------------------------------------------------------------------------


class RecordingTransport(requests.adapters.HTTPAdapter):
    def __init__(self) -> None:
        super().__init__()
        self.timeouts: List[Any] = []
        self.urls: List[str] = []

    def send(self, request, **kwargs):  # type: ignore[no-untyped-def]
        self.timeouts.append(kwargs.get("timeout"))
        self.urls.append(request.url)
        return super().send(request, **kwargs)


def test_default_timeout_applies_and_caller_timeout_wins(make_session: Make, primary, secondary):
    transport = RecordingTransport()
    session = make_session([primary.url, secondary.url], transport=transport, default_timeout=(1.5, 7))
    session.get(primary.url + "/")
    assert transport.timeouts[-1] == (1.5, 7)
    session.get(primary.url + "/", timeout=42)
    assert transport.timeouts[-1] == 42


def test_request_without_timeout_does_not_hang_on_a_black_hole(make_session: Make, primary, secondary):
    session = make_session([primary.url, secondary.url], default_timeout=(5, 1.5))
    session.get(primary.url + "/")
    primary.set("hang")
    assert served_by(session.get(primary.url + "/")) == "secondary"


# -- threads ------------------------------------------------------------------------------------------------


def test_threads_hammering_one_session_through_a_switch(make_session: Make, primary, secondary, clock: Clock):
    session = make_session([primary.url, secondary.url], cache_ttl=1000)
    session.get(primary.url + "/")
    errors: List[BaseException] = []
    statuses: List[int] = []
    halfway = threading.Barrier(9)

    def worker() -> None:
        try:
            for i in range(40):
                if i == 20:
                    halfway.wait()
                statuses.append(session.get(primary.url + f"/t{i}").status_code)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    halfway.wait()
    primary.set("refuse")
    for t in threads:
        t.join(timeout=BOUND)
    assert errors == []
    assert statuses == [200] * 320
    assert session.active_backend == secondary.url


def test_stale_selection_is_probed_by_one_thread(make_session: Make, primary, secondary, clock: Clock):
    session = make_session([primary.url, secondary.url], cache_ttl=10)
    session.get(primary.url + "/")
    probes_before = len(primary.hits(health=True))
    clock.advance(11)
    start = threading.Barrier(8)

    def worker() -> None:
        start.wait()
        session.get(primary.url + "/")

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=BOUND)
    settle(session)
    assert len(primary.hits(health=True)) - probes_before == 1


# -- observability and safety ---------------------------------------------------------------------------------


def test_status_is_json_serialisable_and_complete(make_session: Make, primary, secondary):
    session = make_session([primary.url, secondary.url])
    primary.set("refuse")
    session.get(primary.url + "/")
    status = json.loads(json.dumps(session.status()))
    assert status["active_backend"] == secondary.url
    assert status["cache_valid"] is True and status["health_checking"] is False
    assert isinstance(status["last_health_check"], float)
    assert status["state_file"] is None
    first, second = status["backends"]
    assert first["url"] == primary.url and first["healthy"] is False and first["consecutive_failures"] >= 1
    assert "refused" in first["last_error"].lower()
    assert second["healthy"] is True and second["last_latency_ms"] > 0


def test_userinfo_never_appears_in_logs_status_or_errors(make_session: Make, primary, secondary, caplog):
    caplog.set_level("DEBUG", logger="requests_failover")
    p_auth = primary.url.replace("http://", "http://alice:s3cret@")
    s_auth = secondary.url.replace("http://", "http://bob:hunter2@")
    session = make_session([p_auth, s_auth])
    session.get(primary.url + "/x")
    assert primary.hits(health=False)[-1].headers["Authorization"] == "Basic YWxpY2U6czNjcmV0"  # alice:s3cret
    primary.set("refuse")
    session.get(primary.url + "/x")
    assert secondary.hits(health=False)[-1].headers["Authorization"] == "Basic Ym9iOmh1bnRlcjI="  # bob:hunter2
    secondary.set("refuse")
    with pytest.raises(AllBackendsFailed) as info:
        session.get(primary.url + "/x")
    text = json.dumps(session.status()) + caplog.text + str(info.value) + repr(session)
    assert "s3cret" not in text and "hunter2" not in text
    assert primary.url in text


def test_a_broken_on_switch_hook_does_not_break_requests(make_session: Make, primary, secondary):
    def hook(event: SwitchEvent) -> None:
        raise RuntimeError("boom")

    session = make_session([primary.url, secondary.url], on_switch=hook)
    primary.set("refuse")
    assert served_by(session.get(primary.url + "/")) == "secondary"


def test_library_never_prints(make_session: Make, primary, secondary, capsys):
    session = make_session([primary.url, secondary.url])
    primary.set("refuse")
    session.get(primary.url + "/")
    assert capsys.readouterr() == ("", "")


def test_timeout_then_refused_is_still_a_read_timeout_with_the_plain_args(make_session: Make, primary, secondary):
    session = make_session([primary.url, secondary.url])
    session.get(primary.url + "/")
    primary.set("hang")
    secondary.set("refuse")
    with pytest.raises(requests.exceptions.ReadTimeout) as info:
        session.get(primary.url + "/slow", timeout=(1, 0.3))
    error = info.value
    assert isinstance(error, AllBackendsFailed) and isinstance(error, requests.exceptions.ConnectionError)
    assert "Read timed out" in str(error.args[0].args[0]), "args are those plain requests would raise"
    assert primary.url in str(error) and secondary.url in str(error)
    assert app_hits(primary, "GET") == 2, "a backend that read-timed out is not waited on twice"


def test_invalid_timeout_is_rejected_as_requests_rejects_it(make_session: Make, primary, secondary):
    session = make_session([primary.url, secondary.url])
    with pytest.raises(ValueError, match=r"\(connect, read\)"):
        session.get(primary.url + "/", timeout=(1, 2, 3))
    with pytest.raises(ValueError):
        session.get(primary.url + "/", timeout="soon")
