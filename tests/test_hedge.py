"""Racing a slow connect against the next backend (the primary black-holed: SYNs dropped).

Assertions are on who answered and what each server received; times are
bounded only loosely (far under the connect timeout): speed targets live in
the benchmark.
"""

from __future__ import annotations

import threading
import time
from typing import Any, List

import pytest

from requests_failover import FailoverSession, _hedge
from requests_failover.testing import served_by, settle

from .conftest import BOUND, wait_until

CONNECT = 10.0  # the request's connect timeout: a black hole would cost all of it
LOOSE = CONNECT / 2  # "well under the connect timeout"


@pytest.fixture
def races(monkeypatch) -> List[str]:
    """Every connect a race starts, by backend."""
    started: List[str] = []
    real = _hedge.Race.start

    def start(self: Any, name: str, pool: Any) -> Any:
        started.append(name)
        return real(self, name, pool)

    monkeypatch.setattr(_hedge.Race, "start", start)
    return started


def warm(primary, secondary, **options: Any) -> FailoverSession:
    session = FailoverSession([primary.url, secondary.url], state_file=False, **options)
    assert served_by(session.get(primary.url + "/warm")) == "primary"
    settle(session)  # the cold start's late probe must not meet the mode changes that follow
    return session


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_black_holed_primary_costs_a_hedge_delay_not_a_connect_timeout(primary, secondary, method):
    with warm(primary, secondary) as session:
        primary.set("blackhole")  # its keep-alive connection is dropped too: a new connect is needed
        started = time.monotonic()
        response = session.request(method, primary.url + "/orders", data=b"order-1", timeout=(CONNECT, CONNECT))
        took = time.monotonic() - started
        assert served_by(response) == "secondary"
        assert took < LOOSE, f"{took:.2f} s: the request waited for the black hole"
        assert [h.path for h in primary.requests] == ["/warm"], "the primary received no request bytes"
        assert [(h.method, h.body) for h in secondary.requests] == [(method, b"order-1")], "sent once, to one server"
        primary.set("refuse")  # its pending connect fails at once: marked down, as any failed connect
        wait_until(lambda: session.status()["backends"][0]["healthy"] is False, "the primary marked down")


def test_a_slow_primary_that_connects_first_still_wins(primary, secondary, races):
    with warm(primary, secondary) as session:
        primary.set("blackhole")
        secondary.set("blackhole")
        # Both come back before the first SYN retransmit (1 s after each SYN):
        # the primary's SYN left first, so its connect completes first.
        threading.Timer(0.5, lambda: (primary.set("up"), secondary.set("up"))).start()
        response = session.post(primary.url + "/orders", data=b"order-2", timeout=(CONNECT, CONNECT))
        assert served_by(response) == "primary"
        assert races == [primary.url, secondary.url], "the rival was raced and lost"
        assert secondary.requests == [] and [h.body for h in primary.requests][-1] == b"order-2"
        wait_until(lambda: secondary.open_connections() == 1, "the loser's connection kept warm in its pool")
        backends = session.status()["backends"]
        assert backends[1]["consecutive_failures"] == 0, f"losing a race is not a failure: {backends[1]}"
        assert secondary.requests == [], "connected, kept, never written to"


def test_hedge_delay_none_restores_waiting_for_the_connect_timeout(primary, secondary, races):
    with warm(primary, secondary, hedge_delay=None) as session:
        primary.set("blackhole")
        started = time.monotonic()
        assert served_by(session.get(primary.url + "/x", timeout=(1.0, 10))) == "secondary"
        assert time.monotonic() - started >= 1.0, "the connect timeout was paid"
        assert races == []


def test_a_keep_alive_connection_is_used_without_a_race(primary, secondary, races):
    with warm(primary, secondary) as session:
        for i in range(20):
            assert served_by(session.get(primary.url + f"/steady/{i}")) == "primary"
        assert races == [], "no connect, no thread, no race"
        assert len({h.client_port for h in primary.requests}) == 1


def test_a_users_adapter_turns_hedging_off(primary, secondary, races):
    from requests.adapters import HTTPAdapter

    with warm(primary, secondary) as session:
        session.mount("http://", HTTPAdapter())
        primary.set("blackhole")
        assert served_by(session.get(primary.url + "/x", timeout=(1.0, 10))) == "secondary"
        assert races == []


def test_cold_start_does_not_wait_for_the_black_holed_primarys_probe(primary, secondary, tmp_path):
    primary.set("blackhole")
    session = FailoverSession([primary.url, secondary.url], state_file=tmp_path / "fresh.json", health_timeout=CONNECT)
    with session:
        started = time.monotonic()
        assert served_by(session.get(primary.url + "/first", timeout=(CONNECT, CONNECT))) == "secondary"
        assert time.monotonic() - started < LOOSE, "the first request waited for the primary's probe"
        assert session.status()["health_checking"] or session.failover_adapter._selection.probes_in_flight()
        primary.set("up")  # its pending probe connects now: the primary takes the selection back
        settle(session, timeout=BOUND)
        wait_until(lambda: session.active_backend == primary.url, "the primary taking the selection back")


@pytest.mark.parametrize("bad", [0, -1, "0.25", True])
def test_hedge_delay_must_be_positive_seconds_or_none(bad):
    with pytest.raises((TypeError, ValueError), match="hedge_delay"):
        FailoverSession(["http://127.0.0.1:1"], state_file=False, hedge_delay=bad)


def test_the_delay_adapts_to_recent_connect_times():
    times = _hedge.ConnectTimes()
    assert times.delay("a", 0.25) == 0.25
    for _ in range(10):
        times.add("a", 0.2)  # a far-away backend: 200 ms connects
    assert times.delay("a", 0.25) == pytest.approx(0.6)
    for _ in range(16):
        times.add("a", 5.0)
    assert times.delay("a", 0.25) == _hedge.MAX_DELAY
    assert times.delay("b", 0.25) == 0.25


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_request_url_with_userinfo_is_raced_to_the_secondary(primary, secondary, method):
    # 0.2 built the rival's URL by slicing the request URL with the primary's length:
    # "http://user:pw@127.0.0.1:P/x" became an InvalidURL after the hedge delay.
    with warm(primary, secondary) as session:
        primary.set("blackhole")
        url = primary.url.replace("http://", "http://user:pw@") + "/orders?id=1"
        response = session.request(method, url, data=b"order-3", timeout=(CONNECT, CONNECT))
        assert served_by(response) == "secondary"
        (hit,) = secondary.requests
        assert (hit.method, hit.path, hit.body) == (method, "/orders?id=1", b"order-3")


THREADS, EACH = 8, 20


def test_after_a_lost_race_the_primary_is_suspect_until_its_connect_settles(primary, secondary, races):
    """Always: once a race to the black-holed primary is lost, no new connect goes to it until that one settles.

    A request opens a connect to the primary only while no race to it was lost yet; afterwards new
    connections go to the secondary at once until the pending connect settles.
    """
    with warm(primary, secondary) as session:
        primary.set("blackhole")  # every pooled connection dropped: each thread needs a new one
        start = threading.Barrier(THREADS)
        served: List[str] = []

        def client() -> None:
            start.wait(BOUND)
            for i in range(EACH):
                served.append(served_by(session.get(primary.url + f"/x/{i}", timeout=(CONNECT, CONNECT))))

        threads = [threading.Thread(target=client) for _ in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(BOUND)
        assert served == ["secondary"] * (THREADS * EACH)
        # 0.2: every request raced the primary (160 connects, each paying the hedge delay)
        assert races.count(primary.url) <= THREADS, "at most one connect per thread before the first lost race"
        assert primary.requests == [primary.requests[0]] and primary.requests[0].path == "/warm"


def test_answer_hedging_is_armed_cold_then_only_by_a_clearly_slow_answer_after_a_history():
    latencies = _hedge.Latencies()
    assert (latencies.armed("a"), latencies.delay("a")) == (True, _hedge.COLD_DELAY)  # no history yet
    for count in range(1, _hedge.MIN_SAMPLES):
        latencies.add("a", 0.4)  # a cold start's connects and handshakes: under COLD_DELAY, still cold
        assert (count, latencies.armed("a"), latencies.delay("a")) == (count, True, _hedge.COLD_DELAY)
    latencies = _hedge.Latencies()
    for _ in range(_hedge.MIN_SAMPLES):
        latencies.add("a", 0.002)
    assert (latencies.armed("a"), latencies.delay("a")) == (False, _hedge.ANSWER_FLOOR), "a history: disarmed"
    latencies.add("a", 0.09)  # later than the 50 ms floor, not twice it
    assert not latencies.armed("a")
    latencies.add("a", 0.2)
    assert latencies.armed("a") and latencies.delay("a") == _hedge.ANSWER_FLOOR
    for _ in range(_hedge.ARMED_FOR):
        latencies.add("a", 0.002)
    assert not latencies.armed("a"), "disarmed after ARMED_FOR fast answers"
    latencies.slow("a", 30.0)  # a read timeout: armed at once, the delay is about answers only
    assert latencies.armed("a") and latencies.delay("a") == _hedge.ANSWER_FLOOR
    assert latencies.armed("b") and latencies.delay("b") == _hedge.COLD_DELAY, "another backend: still cold"


def test_the_answer_delay_is_the_p95_of_recent_answers_with_a_floor_and_a_cap():
    latencies = _hedge.Latencies()
    for i in range(1, 65):
        latencies.add("a", i / 100)  # 0.01 ... 0.64 s
    assert latencies.delay("a") == pytest.approx(0.61)
    for _ in range(64):
        latencies.add("a", 9.0)
    assert latencies.delay("a") == _hedge.MAX_DELAY


def test_closed_workers_end_after_their_job_and_later_jobs_get_new_ones():
    workers = _hedge.Workers()
    release, ran = threading.Event(), []
    assert workers.submit(lambda: (release.wait(BOUND), ran.append("first")))
    workers.close()  # the worker is busy: it must end once its job ends, not linger idle for 30 s
    release.set()
    wait_until(lambda: ran == ["first"] and workers._count == 0, "the busy worker ended", bound=10.0)  # idle: 30 s
    done = threading.Event()
    assert workers.submit(done.set), "a closed pool takes jobs again (a session used after close())"
    assert done.wait(BOUND)
    workers.close()


class _Answer:
    closed = False

    def close(self) -> None:
        self.closed = True


def test_an_answer_that_landed_before_the_decision_is_closed_and_not_a_loser():
    flight = _hedge.Flight()
    flight.start("first")
    flight.start("hedge")
    early = _Answer()
    flight.land("hedge", early, None, 0.1)  # landed, not yet taken by the caller
    assert flight.decide("first") == [], "it answered: not an attempt given up while waiting"
    assert early.closed, "never returned: closed, its connection never pooled half-read"


def test_an_answer_that_lands_after_the_decision_is_closed():
    flight = _hedge.Flight()
    flight.start("first")
    flight.start("hedge")
    (loser,) = flight.decide("first")
    assert loser[0] == "hedge"
    late = _Answer()
    flight.land("hedge", late, None, 3.0)
    assert late.closed and not flight.in_flight
