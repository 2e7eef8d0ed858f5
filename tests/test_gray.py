"""Gray failure: a primary that is slow or hung while its health checks pass; slow start on failback.

Latency is real (loopback servers answer late on purpose); cool-downs and
slow-start windows run on the test clock (``make_session``), so no test waits
for them to pass. Slow answers are made slower than the rule's bound by a
wide margin (``SLOW``), fast ones are loopback answers of a few milliseconds
against a bound of at least 250 ms.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, List

import pytest

from requests_failover import DemotionEvent, FailoverSession
from requests_failover import _policy as pool
from requests_failover._selection import SLOW_HEDGE_LOST, SLOW_READ_TIMEOUT
from requests_failover.testing import LoopbackBackend, served_by, set_testing, settle

from ._workers import Answer
from .conftest import BOUND, Clock, Worker, wait_until

Make = Callable[..., FailoverSession]

#: API answers this late are slow for any bound the rule computes here (1 s with no reference).
SLOW = pool.DEMOTE_ABSOLUTE + 0.3
#: The longest slow-start window a process may draw for the default 20 s (jitter up to 1.2).
LONGEST_WINDOW = 20.0 * 1.2


@pytest.fixture
def make_session(make_session: Make) -> Make:
    """Demotion on its own: answer hedging off (it would answer a slow primary's requests from the
    secondary before the slow answer is seen); demotion through lost hedges: test_hedge_answers.py."""

    def make(backends: List[str], **options: Any) -> FailoverSession:
        options.setdefault("hedge_requests", False)
        return make_session(backends, **options)

    return make


@pytest.fixture
def gray(primary: LoopbackBackend) -> LoopbackBackend:
    """The primary, made slow with ``set(api_delay=...)``: its health paths keep answering at once."""
    return primary


def backend_status(session: FailoverSession, url: str) -> Dict[str, Any]:
    return dict(next(b for b in session.status()["backends"] if b["url"] == url))


def demote_by_slow_answers(session: FailoverSession, primary: LoopbackBackend) -> None:
    """Warm up on a fast primary, then three slow answers in a row: demoted."""
    assert served_by(session.get(primary.url + "/warm")) == "primary"
    primary.set(api_delay=SLOW)
    for i in range(pool.SLOW_STREAK):
        assert served_by(session.get(primary.url + f"/slow/{i}")) == "primary"


def served(session: FailoverSession, url: str, count: int) -> List[str]:
    return [served_by(session.get(f"{url}/n/{i}")) for i in range(count)]


def test_a_slow_primary_whose_health_checks_pass_is_demoted(make_session: Make, gray, secondary, clock: Clock):
    seen: List[Any] = []
    session = make_session([gray.url, secondary.url], observers=[seen.append])
    demote_by_slow_answers(session, gray)

    status = backend_status(session, gray.url)
    assert status["healthy"] is True
    assert status["demoted_until"] == clock.now + pool.DEMOTE_BASE
    assert status["demotion_reason"].startswith(f"{pool.SLOW_STREAK} slow answers in a row")
    assert session.active_backend == gray.url, "demotion ranks, it does not switch the selection"
    demotions = [e for e in seen if isinstance(e, DemotionEvent)]
    assert [(e.backend, e.demoted, e.until, e.level) for e in demotions] == [
        (gray.url, True, clock.now + pool.DEMOTE_BASE, 1)
    ]

    api_hits = len(gray.requests)
    assert served(session, gray.url, 5) == ["secondary"] * 5
    assert session.force_refresh() == gray.url  # its health probe passes ...
    assert served(session, gray.url, 5) == ["secondary"] * 5  # ... and does not undo the demotion
    assert len(gray.requests) == api_hits


def test_one_slow_answer_among_fast_ones_never_demotes(make_session: Make, gray, secondary, clock: Clock):
    session = make_session([gray.url, secondary.url])
    assert served_by(session.get(gray.url + "/warm")) == "primary"
    for round in range(2):
        gray.set(api_delay=SLOW)
        assert served_by(session.get(gray.url + f"/tail/{round}")) == "primary"
        gray.set(api_delay=0.0)
        assert served(session, gray.url, pool.SLOW_STREAK) == ["primary"] * pool.SLOW_STREAK
    assert backend_status(session, gray.url)["demotion_reason"] is None


def test_demote_slow_false_turns_it_off(make_session: Make, gray, secondary, clock: Clock):
    session = make_session([gray.url, secondary.url], demote_slow=False)
    demote_by_slow_answers(session, gray)
    assert backend_status(session, gray.url)["demoted_until"] is None
    gray.set(api_delay=0.0)
    assert served(session, gray.url, 3) == ["primary"] * 3


def test_recovered_after_the_cool_down_when_fast_again(make_session: Make, gray, secondary, clock: Clock):
    seen: List[Any] = []
    session = make_session([gray.url, secondary.url], observers=[seen.append], slow_start=0)
    demote_by_slow_answers(session, gray)
    gray.set(api_delay=0.0)
    assert served(session, gray.url, 3) == ["secondary"] * 3  # fast again, but cooling down

    clock.advance(pool.DEMOTE_BASE)
    assert served(session, gray.url, 4) == ["primary"] * 4  # the trial answered fast: trusted again
    status = backend_status(session, gray.url)
    assert (status["demoted_until"], status["demotion_reason"]) == (None, None)
    last = [e for e in seen if isinstance(e, DemotionEvent)][-1]
    assert (last.backend, last.demoted, last.until, last.level) == (gray.url, False, None, 0)
    assert last.reason.startswith("answered in")


def test_cool_downs_grow_while_it_stays_slow(make_session: Make, gray, secondary, clock: Clock):
    session = make_session([gray.url, secondary.url])
    demote_by_slow_answers(session, gray)
    for level in (2, 3, 4):
        clock.advance(pool.cool_down(level - 1))  # the cool-down is over: one trial, slow again
        api_hits = len(gray.requests)
        assert served(session, gray.url, 3) == ["primary", "secondary", "secondary"]
        assert len(gray.requests) == api_hits + 1
        status = backend_status(session, gray.url)
        assert status["demoted_until"] == clock.now + pool.DEMOTE_BASE * 2 ** (level - 1)
        assert status["demotion_reason"].startswith("slow on trial")


def test_one_trial_at_a_time_while_others_keep_away(make_session: Make, gray, secondary, clock: Clock):
    session = make_session([gray.url, secondary.url])
    demote_by_slow_answers(session, gray)
    clock.advance(pool.DEMOTE_BASE)
    api_hits = len(gray.requests)
    trial: List[str] = []
    thread = threading.Thread(target=lambda: trial.append(served_by(session.get(gray.url + "/trial"))))
    thread.start()
    wait_until(lambda: len(gray.requests) == api_hits + 1, "the trial request reached the primary")
    # whether the trial is still in flight or already answered (slow: demoted again), nobody else goes there
    assert served(session, gray.url, 5) == ["secondary"] * 5
    thread.join(BOUND)
    assert trial == ["primary"]
    assert len(gray.requests) == api_hits + 1


def test_a_hung_api_is_demoted_after_its_first_read_timeout(make_session: Make, gray, secondary, clock: Clock):
    session = make_session([gray.url, secondary.url])
    assert served_by(session.get(gray.url + "/warm")) == "primary"
    gray.set(api_delay=30.0)  # hung: far past the read timeout; its health checks still answer at once
    assert served_by(session.get(gray.url + "/hung", timeout=(2, 0.5))) == "secondary"
    status = backend_status(session, gray.url)
    assert status["demotion_reason"].startswith("read timeout after")
    assert status["demoted_until"] == clock.now + pool.DEMOTE_BASE

    # its probes pass: after its down time it is taken back (failback), and yet stays demoted
    for _ in range(2):
        clock.advance(1)
        settle(session)
    assert session.active_backend == gray.url
    api_hits = len(gray.requests)
    assert served(session, gray.url, 5) == ["secondary"] * 5
    assert len(gray.requests) == api_hits


def failback(session: FailoverSession, primary: LoopbackBackend, secondary: LoopbackBackend, clock: Clock) -> None:
    """The primary refuses, the session fails over, the primary comes back and is taken back."""
    assert served_by(session.get(primary.url + "/warm")) == "primary"
    primary.set("refuse")
    assert served_by(session.get(primary.url + "/fail")) == "secondary"
    settle(session)
    primary.set("up")
    for _ in range(2):  # healthy_threshold = 2 probes, CONFIRM_AFTER apart
        clock.advance(1)
        settle(session)
    assert session.active_backend == primary.url


def test_slow_start_ramps_the_primary_share_after_failback(make_session: Make, primary, secondary, clock: Clock):
    session = make_session([primary.url, secondary.url])
    failback(session, primary, secondary, clock)
    assert backend_status(session, primary.url)["slow_start_share"] == pytest.approx(pool.SLOW_START_FLOOR)

    first = served(session, primary.url, 60)  # at 10 %: 6 expected; more than 30 has odds below 1e-12
    assert first.count("primary") <= 30
    assert first.count("primary") + first.count("secondary") == 60

    clock.advance(10)
    share = backend_status(session, primary.url)["slow_start_share"]
    assert 0.1 + 0.9 * 10 / LONGEST_WINDOW <= share <= 0.1 + 0.9 * 10 / (20.0 * 0.8)

    clock.advance(LONGEST_WINDOW - 10)  # the ramp is over in every process
    assert backend_status(session, primary.url)["slow_start_share"] is None
    assert served(session, primary.url, 20) == ["primary"] * 20


def test_slow_start_zero_takes_the_primary_back_at_once(make_session: Make, primary, secondary, clock: Clock):
    session = make_session([primary.url, secondary.url], slow_start=0)
    failback(session, primary, secondary, clock)
    assert backend_status(session, primary.url)["slow_start_share"] is None
    assert served(session, primary.url, 20) == ["primary"] * 20


def test_demotion_is_shared_between_processes(gray, secondary, tmp_path, workers: List[Worker]):
    """Always: a backend one process demoted gets no request from another until its cool-down ends."""
    state_file = str(tmp_path / "state.json")
    backends = [gray.url, secondary.url]
    child = Worker(backends, "child", state_file=state_file, hedge_requests=False)
    workers.append(child)
    assert child.get("/warm") == Answer("ok", 200, "primary")
    gray.set(api_delay=SLOW)
    for i in range(pool.SLOW_STREAK):
        assert child.get(f"/slow/{i}") == Answer("ok", 200, "primary")
    demoted_until = child.status()["backends"][0]["demoted_until"]
    assert demoted_until is not None, "the child demoted the primary"

    # this process, its clock at the instant of the child's demotion, reads it from the file
    clock = Clock(start=demoted_until - pool.DEMOTE_BASE)
    with set_testing(True, clock=clock):
        session = FailoverSession(backends, state_file=state_file, hedge_requests=False)
        try:
            wait_until(lambda: backend_status(session, gray.url)["demoted_until"] == demoted_until, "shared")
            api_hits = len(gray.requests)
            gray.set(api_delay=0.0)
            assert served(session, gray.url, 5) == ["secondary"] * 5
            assert len(gray.requests) == api_hits, "never sent to the demoted primary"

            clock.advance(pool.DEMOTE_BASE)  # its cool-down is over here: our trial answers fast
            assert served_by(session.get(gray.url + "/trial")) == "primary"
            settle(session)
            wait_until(lambda: child.status()["backends"][0]["demoted_until"] is None, "the child trusts it again")
        finally:
            session.close()


def test_record_slow_a_lost_hedge_is_one_slow_answer_a_read_timeout_demotes_at_once(
    make_session: Make, primary, secondary, clock: Clock
):
    # the interface the attempt loop calls (hedging reports a request it abandoned for a faster one)
    session = make_session([primary.url, secondary.url])
    assert served_by(session.get(primary.url + "/warm")) == "primary"
    selection = session.failover_adapter._selection
    backend = selection.plan()[0]
    for _ in range(pool.SLOW_STREAK - 1):
        selection.record_slow(backend, 0.05, SLOW_HEDGE_LOST)
    selection.record_success(backend, latency=0.001)  # a fast answer ends the streak
    for _ in range(pool.SLOW_STREAK - 1):
        selection.record_slow(backend, 0.05, SLOW_HEDGE_LOST)
    assert backend_status(session, primary.url)["demotion_reason"] is None
    selection.record_slow(backend, 0.05, SLOW_HEDGE_LOST)
    assert backend_status(session, primary.url)["demotion_reason"].startswith(f"{pool.SLOW_STREAK} slow answers")

    session.clear_cache()
    assert served_by(session.get(primary.url + "/again")) == "primary"
    selection.record_slow(backend, 5.0, SLOW_READ_TIMEOUT)
    status = backend_status(session, primary.url)
    assert (status["demotion_reason"], status["demoted_until"]) == ("read timeout after 5.0 s", clock.now + 5)


def test_an_answer_to_a_request_sent_before_a_recorded_failure_does_not_undo_it(
    make_session: Make, primary, secondary, clock: Clock
):
    # a backend draining requests in flight while it refuses new ones: their late successes change nothing
    session = make_session([primary.url, secondary.url])
    assert served_by(session.get(primary.url + "/warm")) == "primary"
    selection = session.failover_adapter._selection
    backend = selection.plan()[0]
    selection.record_failure(backend, "refused")
    clock.advance(0.5)
    selection.record_success(backend, latency=2.0)  # sent 1.5 s before the failure was recorded
    status = backend_status(session, primary.url)
    assert (status["healthy"], session.active_backend) == (False, secondary.url)
    clock.advance(0.5)
    selection.record_success(backend, latency=0.1)  # sent after it: counts
    assert backend_status(session, primary.url)["healthy"] is True
