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
from requests_failover import _policy as pool
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
    for repeat in (1, 2, 3, 4):
        delays = [backoff(0.5, repeat, rng) for _ in range(200)]
        nominal = 0.5 * 2 ** (repeat - 1)
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
    # A and B are down until the same instant: the tie keeps priority order
    assert pool.plan(state, now=100) == [C, A, B]
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
    # B's failure moved the selection to A; A's, with nothing left to move to, keeps it there
    assert state.current() == A and state.active == A
    assert pool.plan(state, now=1) == [A, B]


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


# -- latency-aware demotion and slow start (the rules in _policy's docstring) ----------------------------

BOUNDS = [
    # the best other backend's EWMA (s), the bound (s): 4 x it, at least 0.25 s more, 1 s with no samples
    (None, 1.0),
    (0.0, 0.25),
    (0.002, 0.252),
    (0.05, 0.3),
    (0.1, 0.4),
    (0.5, 2.0),
    (2.0, 8.0),
]


@pytest.mark.parametrize(("best", "bound"), BOUNDS)
def test_slow_bound(best, bound):
    assert pool.slow_bound(best) == pytest.approx(bound)


def test_ewma_starts_at_the_first_sample_and_moves_by_alpha():
    assert pool.ewma(None, 2.0) == 2.0
    assert pool.ewma(1.0, 2.0) == pytest.approx(1.0 + pool.EWMA_ALPHA)


@pytest.mark.parametrize(("level", "seconds"), [(1, 5), (2, 10), (3, 20), (6, 160), (7, 300), (64, 300), (10**6, 300)])
def test_cool_downs_double_up_to_five_minutes(level, seconds):
    assert pool.cool_down(level) == seconds


HEALTHY = pool.apply_probes(
    pool.State((A, B)), [pool.ProbeResult(A, True), pool.ProbeResult(B, True)], now=0, select=True
)


def test_demotion_ranks_a_backend_after_the_available_ones_until_its_trial():
    state = pool.demote(HEALTHY, A, "slow", now=100)
    assert state.record(A).demoted_until == 105 and state.record(A).demotion_level == 1
    assert state.current() == A, "demotion ranks; the selection stays"
    assert pool.ranked_plan(state, now=100) == [B, A]
    assert pool.trial_due(state, now=104.9) is None
    assert pool.trial_due(state, now=105) == A
    assert pool.ranked_plan(state, now=105) == [B, A], "still demoted until its trial answers"
    assert pool.ranked_plan(state, now=105, trial=A) == [A, B]


def test_a_passing_probe_leaves_the_demotion():
    state = pool.demote(HEALTHY, A, "slow", now=100)
    state = pool.apply_probes(state, [pool.ProbeResult(A, True), pool.ProbeResult(B, True)], now=101, select=True)
    assert state.record(A).demotion_reason == "slow"
    assert pool.ranked_plan(state, now=101) == [B, A]


def test_demoting_again_after_a_slow_trial_doubles_the_cool_down_and_a_fast_one_restores():
    state = pool.demote(HEALTHY, A, "slow", now=100)
    assert pool.demote(state, A, "slower", now=101) is state, "already cooling down: no change"
    state = pool.demote(state, A, "slow on trial", now=105)
    assert (state.record(A).demoted_until, state.record(A).demotion_level) == (115, 2)
    state = pool.restore(state, A, now=115)
    health = state.record(A)
    assert (health.demoted_until, health.demotion_level, health.demotion_reason) == (0, 0, None)
    assert health.recovered_at == 115
    assert pool.ranked_plan(state, now=115) == [A, B]
    assert pool.restore(state, A, now=116) is state


def test_nothing_is_demoted_without_somewhere_better_to_go():
    state = pool.mark_failed(HEALTHY, B, "refused", now=100)
    assert not pool.can_demote(state, A, now=100)
    assert pool.can_demote(HEALTHY, A, now=100)
    both = pool.demote(HEALTHY, B, "slow", now=100)
    assert not pool.can_demote(both, A, now=100)


def test_a_demoted_backend_still_comes_before_one_that_is_down():
    three = pool.State((A, B, C))
    three = pool.apply_probes(three, [pool.ProbeResult(u, True) for u in (A, B, C)], now=0, select=True)
    state = pool.mark_failed(pool.demote(three, A, "slow", now=100), C, "refused", now=100)
    assert pool.ranked_plan(state, now=100) == [B, A, C]
    everyone = pool.demote(pool.demote(state, B, "slow", now=100), C, "slow", now=100)
    assert pool.ranked_plan(everyone, now=100) == pool.plan(everyone, now=100), "all demoted: nothing moves"


def test_failback_records_when_the_primary_was_taken_back():
    state = pool.mark_failed(HEALTHY, A, "refused", now=0)
    assert state.current() == B
    state = pool.apply_probes(state, [pool.ProbeResult(A, True)], now=2, select=False, threshold=1)
    assert state.current() == A
    assert state.record(A).recovered_at == 2
    assert HEALTHY.record(A).recovered_at == 0, "the first selection is no failback"


@pytest.mark.parametrize(
    ("elapsed", "share"),
    [(0, 0.1), (5, 0.325), (10, 0.55), (19.9, 0.9955), (20, None), (300, None), (-3, 0.1)],
)
def test_slow_start_share_ramps_from_ten_percent_over_the_window(elapsed, share):
    health = pool.Health(healthy=True, recovered_at=1000.0)
    result = pool.slow_start_share(health, now=1000.0 + elapsed, window=20.0)
    assert result == (None if share is None else pytest.approx(share))


def test_slow_start_off_or_never_recovered():
    assert pool.slow_start_share(pool.Health(recovered_at=1000.0), now=1000.0, window=0.0) is None
    assert pool.slow_start_share(pool.Health(), now=1000.0, window=20.0) is None


def test_demotion_survives_the_state_file_round_trip_and_hostile_values_are_clamped():
    from requests_failover._state import decode, encode

    state = pool.demote(HEALTHY, A, "slow", now=100)
    assert decode(encode(state), (A, B), now=100).record(A) == state.record(A)
    hostile = pool.State(
        (A, B),
        health={A: pool.Health(healthy=True, demoted_until=10**12, demotion_reason="x", recovered_at=10**12)},
    )
    health = decode(encode(hostile), (A, B), now=100).record(A)
    assert (health.demoted_until, health.recovered_at) == (100 + pool.DEMOTE_CAP, 100)
    with pytest.raises(ValueError, match="demotion_reason"):
        decode(encode(hostile).replace(b'"x"', b"7"), (A, B), now=100)


def test_a_success_observed_before_a_recorded_failure_never_undoes_it():
    # A write behind replayed onto a newer state (another process published the failure at once).
    failed = pool.mark_failed(pool.State((A, B), active=A), A, "refused", now=100.0)
    assert (failed.current(), failed.record(A).healthy) == (B, False)
    assert pool.mark_succeeded(failed, A, now=99.0) is failed, "an answer from before the failure"
    probed = pool.apply_probes(failed, [pool.ProbeResult(A, True)], 99.0, select=True, threshold=1)
    assert (probed.record(A), probed.current()) == (failed.record(A), B)
    later = pool.mark_succeeded(failed, A, now=101.0)
    assert (later.record(A).healthy, later.record(A).consecutive_failures) == (True, 0), "a later one counts"
