"""The pure parts, as tables: outcome classification, backoff, selection logic."""

from __future__ import annotations

import pickle
import random
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest
import requests
from urllib3.exceptions import (
    ConnectTimeoutError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
)

from requests_failover import AllBackendsFailed
from requests_failover import _pool as pool
from requests_failover._retry import RetryBudget, Verdict, backoff, classify, retry_after
from requests_failover.exceptions import all_failed_type

R, F, S, X = Verdict.RETRY, Verdict.FAILED, Verdict.SUCCESS, Verdict.RAISE


def refused() -> Exception:
    return requests.exceptions.ConnectionError(MaxRetryError(None, "/", NewConnectionError(None, "refused")))


def connect_timeout() -> Exception:
    return requests.exceptions.ConnectTimeout(MaxRetryError(None, "/", ConnectTimeoutError(None, "slow")))


def reset() -> Exception:
    return requests.exceptions.ConnectionError(ProtocolError("Connection aborted.", ConnectionResetError()))


ERRORS = [
    # error, GET, POST, POST with Idempotency-Key
    ("refused", refused, R, R, R),
    ("connect timeout", connect_timeout, R, R, R),
    ("tls handshake", lambda: requests.exceptions.SSLError("handshake"), R, R, R),
    ("proxy", lambda: requests.exceptions.ProxyError("proxy down"), R, R, R),
    ("read timeout", lambda: requests.exceptions.ReadTimeout("slow"), R, F, R),
    ("reset after send", reset, R, F, R),
    ("body cut off", lambda: requests.exceptions.ChunkedEncodingError("cut"), R, F, R),
    ("unknown connection error", lambda: requests.exceptions.ConnectionError("?"), R, F, R),
    ("invalid header", lambda: requests.exceptions.InvalidHeader("bad"), X, X, X),
    ("invalid url", lambda: requests.exceptions.InvalidURL("bad"), X, X, X),
    ("programming error", lambda: ValueError("bug"), X, X, X),
]


@pytest.mark.parametrize(("name", "make", "get", "post", "keyed"), ERRORS, ids=[e[0] for e in ERRORS])
def test_errors_are_classified_by_whether_the_server_got_the_request(name, make, get, post, keyed):
    assert classify("GET", {}, error=make()) is get
    assert classify("POST", {}, error=make()) is post
    assert classify("POST", {"Idempotency-Key": "k"}, error=make()) is keyed


def response(status: int) -> requests.Response:
    r = requests.Response()
    r.status_code = status
    return r


@pytest.mark.parametrize(
    ("status", "method", "verdict"),
    [
        (200, "POST", S),
        (302, "GET", S),
        (404, "GET", S),
        (429, "GET", S),
        (501, "GET", S),
        (505, "GET", S),
        *[(s, m, R) for s in (500, 502, 503, 504) for m in ("GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE")],
        *[(s, m, F) for s in (500, 502, 503, 504) for m in ("POST", "PATCH", "CONNECT")],
    ],
)
def test_answers_are_classified(status: int, method: str, verdict: Verdict):
    assert classify(method, {}, response=response(status)) is verdict


def test_retry_after_in_seconds_and_as_a_date():
    r = response(503)
    r.headers["Retry-After"] = "120"
    assert retry_after(r) == 120
    when = datetime.now(timezone.utc) + timedelta(seconds=100)
    r.headers["Retry-After"] = format_datetime(when, usegmt=True)
    assert 95 <= retry_after(r, now=when.timestamp() - 100) <= 101
    r.headers["Retry-After"] = "soon"
    assert retry_after(r) is None
    assert retry_after(response(500)) is None


def test_backoff_is_exponential_with_jitter():
    rng = random.Random(7)
    for round_ in (1, 2, 3, 4):
        delays = [backoff(0.5, round_, rng) for _ in range(200)]
        nominal = 0.5 * 2 ** (round_ - 1)
        assert all(nominal / 2 <= d <= nominal for d in delays)
        assert len(set(delays)) > 100, "jittered"


def test_retry_budget_allows_repeats_until_failures_dominate():
    budget = RetryBudget(capacity=10, ratio=0.1)
    for _ in range(4):
        budget.failed()
    assert budget.allows_repeat()
    budget.failed()
    assert not budget.allows_repeat()
    for _ in range(11):
        budget.succeeded()
    assert budget.allows_repeat()


# -- selection logic -------------------------------------------------------------------------------

A, B, C = "https://a.example", "https://b.example", "https://c.example"
EMPTY = pool.State((A, B, C))


def test_plan_puts_the_selection_first_then_up_then_down():
    state = pool.mark_failed(EMPTY, B, "x", now=100)
    state = pool.mark_failed(state, A, "x", now=100)
    assert state.current() == C
    assert pool.plan(state, now=100) == [C, B, A] or pool.plan(state, now=100) == [C, A, B]
    assert pool.plan(EMPTY, now=0) == [A, B, C]


def test_down_time_doubles_to_a_cap_and_resets_on_success():
    state = EMPTY
    downs = []
    for _ in range(8):
        state = pool.mark_failed(state, A, "x", now=1000)
        downs.append(state.record(A).down_until - 1000)
    assert downs == [1, 2, 4, 8, 16, 30, 30, 30]
    state = pool.mark_succeeded(state, A, now=1000)
    assert state.record(A).consecutive_failures == 0 and state.record(A).healthy is True


def test_failure_of_the_selection_moves_it_to_the_next_healthy():
    state = pool.apply_probes(EMPTY, [pool.ProbeResult(u, True) for u in (A, B, C)], now=0, select=True)
    assert state.current() == A
    state = pool.mark_failed(state, A, "refused", now=1)
    assert state.current() == B
    state = pool.mark_failed(state, B, "refused", now=1)
    assert state.current() == C


def test_all_down_keeps_the_stored_selection():
    state = pool.State((A, B), active=B)
    state = pool.mark_failed(state, B, "x", now=1)
    state = pool.mark_failed(state, A, "x", now=1)
    assert state.current() in (A, B)
    assert pool.plan(state, now=1)[0] == state.current()


def test_retry_after_holds_even_against_a_healthy_probe():
    state = pool.mark_failed(EMPTY, A, "HTTP 503", now=0, retry_after=30)
    state = pool.apply_probes(state, [pool.ProbeResult(A, True), pool.ProbeResult(B, True)], now=10, select=True)
    assert state.current() == B
    state = pool.apply_probes(state, [pool.ProbeResult(A, True), pool.ProbeResult(B, True)], now=31, select=True)
    assert state.current() == A


def test_retry_after_is_capped():
    state = pool.mark_failed(EMPTY, A, "HTTP 503", now=0, retry_after=10**9)
    assert state.record(A).hold_until == pool.RETRY_AFTER_CAP


def test_success_on_a_healthy_selection_changes_nothing():
    state = pool.apply_probes(EMPTY, [pool.ProbeResult(A, True)], now=0, select=True)
    assert pool.mark_succeeded(state, A, now=1) is state


def test_probe_decision_waits_only_for_higher_priority_backends():
    order = [A, B, C]
    ok, bad = pool.ProbeResult(A, True), pool.ProbeResult(A, False)
    assert pool.select_from_probes(order, {A: ok}, {}, 0) == A
    assert pool.select_from_probes(order, {B: pool.ProbeResult(B, True)}, {}, 0) is None
    assert pool.select_from_probes(order, {A: bad, B: pool.ProbeResult(B, True)}, {}, 0) == B
    assert pool.select_from_probes(order, {B: pool.ProbeResult(B, True)}, {A: 10}, 0) == B


# -- exceptions --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "last",
    [
        requests.exceptions.ReadTimeout,
        requests.exceptions.ConnectTimeout,
        requests.exceptions.SSLError,
        requests.exceptions.ProxyError,
        requests.exceptions.ConnectionError,
    ],
)
def test_all_backends_failed_is_also_the_last_error_and_pickles(last):
    error = all_failed_type(last)([(A, "refused"), (B, "timed out")])
    assert isinstance(error, AllBackendsFailed)
    assert isinstance(error, last)
    assert isinstance(error, requests.exceptions.RequestException)
    clone = pickle.loads(pickle.dumps(error))
    assert type(clone) is type(error)
    assert clone.failures == error.failures
    assert A in str(clone) and "timed out" in str(clone)


def test_all_backends_failed_is_an_instance_of_every_error_met():
    cls = all_failed_type(requests.exceptions.ConnectionError, requests.exceptions.ReadTimeout)
    error = cls([(A, "refused"), (B, "timed out")])
    assert isinstance(error, requests.exceptions.ReadTimeout)
    assert isinstance(error, requests.exceptions.ConnectionError)
    assert all_failed_type(requests.exceptions.ConnectTimeout, requests.exceptions.ReadTimeout).__mro__
    assert all_failed_type(ValueError) is AllBackendsFailed


def test_error_descriptions_keep_the_message_not_the_connection_object():
    from requests_failover._health import describe_error

    text = describe_error(connect_timeout())
    assert text == "ConnectTimeout (ConnectTimeoutError: slow)"
    assert describe_error(refused()) == "ConnectionError (NewConnectionError: refused)"
    assert describe_error(requests.exceptions.ReadTimeout("x")) == "ReadTimeout (x)"
