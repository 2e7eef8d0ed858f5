"""Hedging slow answers (requests_failover._hedge, the second half), on real loopback servers.

Hedging is armed for a backend with no history yet (after COLD_DELAY), and,
once it has a history, after a clearly slow answer; :func:`armed` does that (MIN_SAMPLES fast answers, one
slow one). Each test then sets a backend's answers slow with ``set(delay=...)``
and states who answered and what each server received; times are bounded only
loosely (far under the slow answer): speed targets live in the benchmark.
"""

from __future__ import annotations

import threading
import time
from typing import Any, List

import pytest

from requests_failover import AttemptEvent, FailoverSession
from requests_failover._hedge import MIN_SAMPLES
from requests_failover._retry import RetryBudget
from requests_failover.testing import served_by, settle

from .conftest import BOUND, wait_until

SLOW = 3.0  # seconds a slow backend takes to answer


def armed(primary, secondary, **options: Any) -> FailoverSession:
    """A session whose primary has a history of fast answers, then one slow answer: hedging is armed."""
    session = FailoverSession([primary.url, secondary.url], state_file=False, **options)
    assert served_by(session.get(primary.url + "/warm")) == "primary"
    settle(session)
    for _ in range(MIN_SAMPLES):
        assert served_by(session.get(primary.url + "/warm")) == "primary"
    primary.set(delay=1.0)  # more than twice the p95 of the fast answers, even on a loaded machine
    session.get(primary.url + "/warm")  # (not hedged: a history, not yet armed; this answer arms it)
    primary.set(delay=0)
    primary.reset_hits()
    secondary.reset_hits()
    return session


def test_a_cold_backend_is_hedged_only_after_the_cold_delay(primary, secondary):
    # Fast answers from a backend with no history go unhedged; a slow one is hedged after COLD_DELAY.
    with FailoverSession([primary.url, secondary.url], state_file=False) as session:
        for i in range(3):
            assert served_by(session.get(primary.url + f"/x/{i}", timeout=(5, 30))) == "primary"
        assert secondary.requests == [], "answers far under COLD_DELAY are never hedged"
        primary.set(delay=SLOW)
        started = time.monotonic()
        assert served_by(session.get(primary.url + "/slow", timeout=(5, 30))) == "secondary"
        assert time.monotonic() - started < SLOW, "answered before the primary did"
        assert [h.path for h in secondary.requests] == ["/slow"]


def test_a_hung_api_at_a_cold_start_costs_no_read_timeout_and_is_demoted(primary, secondary):
    # Always: no request waits for the hung primary's read timeout; it is demoted, then left alone.
    with FailoverSession([primary.url, secondary.url], state_file=False) as session:
        primary.set(api_delay=60.0)  # a hung API behind passing health checks
        for i in range(6):
            started = time.monotonic()
            assert served_by(session.get(primary.url + f"/x/{i}", timeout=(5, 30))) == "secondary"
            assert time.monotonic() - started < 30, "far under the read timeout"
        assert session.status()["backends"][0]["demoted_until"] is not None
        assert len(primary.requests) < 6, "once demoted, the hung primary gets no more requests"


def test_a_slow_answer_is_hedged_and_the_first_answer_wins(primary, secondary):
    seen: List[Any] = []
    with armed(primary, secondary, observers=[seen.append]) as session:
        assert primary.open_connections() == 1, "one pooled connection: the one the slow answer will use"
        primary.set(delay=SLOW)
        started = time.monotonic()
        response = session.get(primary.url + "/report?id=7", timeout=(5, 30))
        assert served_by(response) == "secondary"
        assert time.monotonic() - started < SLOW, "answered before the primary did"
        assert [h.path for h in primary.requests] == ["/report?id=7"]
        assert [h.path for h in secondary.requests] == ["/report?id=7"]
        attempts = [(e.backend, e.outcome, e.hedge, e.won) for e in seen if isinstance(e, AttemptEvent)]
        assert attempts[-2:] == [
            (secondary.url, "success", True, True),
            (primary.url, "abandoned", False, False),
        ]
        # the loser's answer comes after SLOW seconds: it is closed unread, never pooled half-read
        wait_until(lambda: primary.open_connections() == 0, "the abandoned attempt's connection closed")


def test_once_armed_a_get_to_a_hung_primary_waits_for_no_read_timeout(primary, secondary):
    with armed(primary, secondary) as session:
        primary.set("hang")
        for i in range(2):
            started = time.monotonic()
            assert served_by(session.get(primary.url + f"/x/{i}", timeout=(5, 30))) == "secondary"
            assert time.monotonic() - started < 15, "far under the read timeout"


def test_a_post_is_never_hedged(primary, secondary):
    with armed(primary, secondary) as session:
        primary.set(delay=0.5)
        assert served_by(session.post(primary.url + "/orders", data=b"order-1", timeout=(5, 30))) == "primary"
        assert [h.body for h in primary.requests] == [b"order-1"]
        assert secondary.requests == [], "sent once, to one server"


def test_a_post_with_an_idempotency_key_is_hedged(primary, secondary):
    with armed(primary, secondary) as session:
        primary.set(delay=SLOW)
        headers = {"Idempotency-Key": "order-2"}
        response = session.post(primary.url + "/orders", data=b"order-2", headers=headers, timeout=(5, 30))
        assert served_by(response) == "secondary"
        for server in (primary, secondary):
            (hit,) = [h for h in server.requests if h.method == "POST"]
            assert (hit.body, hit.headers.get("Idempotency-Key")) == (b"order-2", "order-2")


def test_hedge_requests_false_turns_it_off(primary, secondary):
    with armed(primary, secondary, hedge_requests=False) as session:
        primary.set(delay=1.5)
        assert served_by(session.get(primary.url + "/x", timeout=(5, 30))) == "primary"
        assert secondary.requests == []


THREADS, EACH = 8, 3


def test_under_saturation_the_budget_stops_hedging(primary, secondary):
    """Always: hedges add at most the budget's reserve plus 5 % of the requests, never double the load."""
    with armed(primary, secondary) as session:
        primary.set(delay=1.5)
        secondary.set(delay=1.5)  # every answer slow everywhere: each request would ask for a hedge
        before = len(primary.requests) + len(secondary.requests)
        start = threading.Barrier(THREADS)
        answered: List[int] = []

        def client() -> None:
            start.wait(BOUND)
            for i in range(EACH):
                answered.append(session.get(primary.url + f"/x/{i}", timeout=(5, 30)).status_code)

        threads = [threading.Thread(target=client) for _ in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(BOUND)
        requests = THREADS * EACH
        assert answered == [200] * requests
        sent = len(primary.requests) + len(secondary.requests) - before
        budget = RetryBudget()
        assert requests < sent, "slow answers were hedged"
        assert sent <= requests + budget.extra_capacity + budget.extra_ratio * requests, "the budget bounds them"


@pytest.mark.parametrize("bad", [None, 1, "yes"])
def test_hedge_requests_must_be_a_bool(bad):
    with pytest.raises(TypeError, match="hedge_requests"):
        FailoverSession(["http://127.0.0.1:1"], state_file=False, hedge_requests=bad)


def test_an_abandoned_attempt_does_not_mark_its_backend_down_in_metrics():
    from requests_failover.metrics import _Gauges

    gauges = _Gauges()
    fields = dict(method="GET", status_code=None, error=None, duration=0.1, attempt=1, failover=False, repeat=False)
    assert gauges.see(AttemptEvent(backend="http://a", outcome="success", at=0.0, **fields)) == (
        "http://a",
        ("http://a", False),
    )
    lost = AttemptEvent(backend="http://a", outcome="abandoned", at=1.0, hedge=False, won=False, **fields)
    assert gauges.see(lost) == (None, None), "a lost hedge is slow, not down"
