"""One request's attempts (requests_failover._attempts), as tables: no sockets, no clock.

Each row drives an :class:`Attempts` with scripted outcomes and states the
exact attempts it allowed (backend, repeat or not) and how the request ended.
"""

from __future__ import annotations

import io
import random
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import pytest
import requests
from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError

from requests_failover import AllBackendsFailed
from requests_failover._attempts import Attempt, Attempts, may_hedge
from requests_failover._config import parse_backend
from requests_failover._retry import RetryBudget, Verdict

A, B, C = (parse_backend(f"https://{name}.example") for name in "abc")
NAMES = {A.url: "a", B.url: "b", C.url: "c"}
START = 1000.0


def answer(status: int) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response.raw = io.BytesIO(b"")
    return response


def refused() -> Exception:
    return requests.exceptions.ConnectionError(MaxRetryError(None, "/", NewConnectionError(None, "refused")))  # type: ignore[arg-type]


def reset() -> Exception:
    return requests.exceptions.ConnectionError(ProtocolError("Connection aborted.", ConnectionResetError()))


OUTCOMES: Dict[str, Callable[[], Union[requests.Response, Exception]]] = {
    "200": lambda: answer(200),
    "404": lambda: answer(404),
    "503": lambda: answer(503),
    "refused": refused,
    "reset": reset,
    "read timeout": lambda: requests.exceptions.ReadTimeout("slow"),
    "invalid url": lambda: requests.exceptions.InvalidURL("bad"),
}


def drive(
    script: Sequence[str],
    *,
    method: str = "GET",
    headers: Optional[Dict[str, str]] = None,
    plan: Sequence[Any] = (A, B),
    max_retries: int = 2,
    timeout: Any = (3.0, 30.0),
    replayable: bool = True,
    budget: Optional[RetryBudget] = None,
    step: float = 0.0,
) -> Tuple[List[str], str]:
    """Run ``script`` (one outcome per attempt) through Attempts; return the attempts made and the ending.

    An attempt reads "a" (backend a), "a+" (a repeat, after a backoff); ``step``
    seconds pass per attempt. The ending is "200", "503" ... (the answer
    returned), "AllBackendsFailed", or the name of the error raised as is.
    """
    attempts = Attempts(
        plan,
        method,
        headers or {},
        timeout=timeout,
        started=START,
        max_retries=max_retries,
        retry_delay=1.0,
        budget=budget or RetryBudget(),
        replayable=replayable,
        rng=random.Random(7),
    )
    made: List[str] = []
    now = START
    for outcome in script:
        attempt = attempts.next(now)
        if attempt is None:
            break
        made.append(NAMES[attempt.backend.url] + ("+" if attempt.tries > 1 else ""))
        assert (attempt.delay > 0) == (attempt.tries > 1), "a backoff before a repeat, none before a first try"
        now += attempt.delay + step
        result = OUTCOMES[outcome]()
        if isinstance(result, requests.Response):
            attempts.record(attempt, step, response=result)
        else:
            attempts.record(attempt, step, error=result)
    else:
        assert attempts.next(now) is None, "the script ran out before the attempts did"
    try:
        return made, str(attempts.result(A, requests.Request("GET", A.url + "/x").prepare()).status_code)
    except AllBackendsFailed:
        return made, "AllBackendsFailed"
    except Exception as exc:
        return made, type(exc).__name__


ROWS = [
    # name, script, options, attempts made, ending
    ("200 at once", ["200"], {}, ["a"], "200"),
    ("404 is an answer", ["404"], {}, ["a"], "404"),
    ("503 then 200", ["503", "200"], {}, ["a", "b"], "200"),
    ("refused then 200", ["refused", "200"], {}, ["a", "b"], "200"),
    ("503 everywhere: the last 503", ["503", "503", "503"], {}, ["a", "b", "a+"], "503"),
    ("refused everywhere", ["refused", "refused", "refused"], {}, ["a", "b", "a+"], "AllBackendsFailed"),
    ("503 then refused: the 503 is returned", ["503", "refused", "refused"], {}, ["a", "b", "a+"], "AllBackendsFailed"),
    (
        "untried first: three backends",
        ["503", "503", "503", "200"],
        {"plan": (A, B, C), "max_retries": 3},
        ["a", "b", "c", "a+"],
        "200",
    ),
    ("max_retries=0: one attempt", ["503"], {"max_retries": 0}, ["a"], "503"),
    ("read timeout on a GET fails over", ["read timeout", "200"], {}, ["a", "b"], "200"),
    ("read timeout on a POST is not replayed", ["read timeout"], {"method": "POST"}, ["a"], "AllBackendsFailed"),
    ("reset on a POST is not replayed", ["reset"], {"method": "POST"}, ["a"], "AllBackendsFailed"),
    ("refused POST fails over", ["refused", "200"], {"method": "POST"}, ["a", "b"], "200"),
    ("503 on a POST is returned", ["503"], {"method": "POST"}, ["a"], "503"),
    (
        "503 on a POST with Idempotency-Key fails over",
        ["503", "200"],
        {"method": "POST", "headers": {"Idempotency-Key": "k"}},
        ["a", "b"],
        "200",
    ),
    ("a read-timed-out backend is never repeated", ["read timeout", "503", "503"], {}, ["a", "b", "b+"], "503"),
    ("non-replayable body after a 503: stop", ["503"], {"replayable": False}, ["a"], "503"),
    ("non-replayable body, never connected: goes on", ["refused", "200"], {"replayable": False}, ["a", "b"], "200"),
    ("an error not the backend's fault is raised as is", ["invalid url"], {}, ["a"], "InvalidURL"),
    (
        "deadline passed: no third attempt",
        ["503", "503", "200"],
        {"timeout": (1.0, 1.0), "step": 1.5},
        ["a", "b"],
        "503",
    ),
    (
        "deadline: a backoff that would overrun it is not taken",
        ["503", "503", "200"],
        {"timeout": (0.1, 0.1)},
        ["a", "b"],
        "503",
    ),
]


@pytest.mark.parametrize(("name", "script", "options", "made", "ending"), ROWS, ids=[r[0] for r in ROWS])
def test_attempts_table(name, script, options, made, ending):
    assert drive(script, **options) == (made, ending)


def test_budget_spent_no_repeat():
    budget = RetryBudget(capacity=10, ratio=0.1)
    for _ in range(5):
        budget.failed()
    assert drive(["503", "503", "200"], budget=budget) == (["a", "b"], "503"), "first tries only"


def test_a_later_attempt_gets_what_is_left_of_the_deadline():
    attempts = Attempts(
        [A, B], "GET", {}, timeout=(2.0, 4.0), started=START, max_retries=2, retry_delay=1.0, budget=RetryBudget()
    )
    first = attempts.next(START)
    assert first is not None and first.timeout == (2.0, 4.0), "the first attempt: the caller's timeout as given"
    attempts.record(first, 5.0, response=answer(503))
    second = attempts.next(START + 5.0)
    assert second is not None and second.timeout == (1.0, 1.0), "6 s allowed, 5 spent"


def plan_a_hedge(
    method: str = "GET", headers: Optional[Dict[str, str]] = None, **budget: Any
) -> Tuple[Attempts, Attempt]:
    attempts = Attempts(
        [A, B, C],
        method,
        headers or {},
        timeout=(3.0, 30.0),
        started=START,
        max_retries=2,
        retry_delay=1.0,
        budget=RetryBudget(**budget),
    )
    first = attempts.next(START)
    assert first is not None
    return attempts, first


def test_hedge_won():
    attempts, first = plan_a_hedge()
    hedge = attempts.hedge(START + 0.05)
    assert hedge is not None and (hedge.backend, hedge.hedge, hedge.number) == (B, True, 2)
    won = attempts.record(hedge, 0.01, response=answer(200), hedged=True)
    lost = attempts.abandoned(first, 0.06)
    assert (won.won, won.verdict, lost.won, lost.abandoned) == (True, Verdict.SUCCESS, False, True)
    assert attempts.done and attempts.next(START + 0.07) is None
    assert attempts.result(A, requests.Request("GET", A.url).prepare()).status_code == 200


def test_a_failed_hedge_leaves_the_first_attempt_to_answer():
    attempts, first = plan_a_hedge()
    hedge = attempts.hedge(START + 0.05)
    assert hedge is not None
    assert attempts.record(hedge, 0.01, error=refused(), hedged=True).won is False
    assert not attempts.done
    assert attempts.record(first, 0.2, response=answer(200), hedged=True).won is True
    assert attempts.done


@pytest.mark.parametrize(
    ("method", "headers", "hedged"),
    [
        ("GET", {}, True),
        ("HEAD", {}, True),
        ("OPTIONS", {}, True),
        ("POST", {"Idempotency-Key": "k"}, True),
        ("POST", {}, False),
        ("PATCH", {}, False),
        ("PUT", {}, False),  # idempotent, but a hedge sends it twice on purpose: only with a key
        ("DELETE", {}, False),
    ],
)
def test_only_requests_that_may_be_sent_twice_are_hedged(method, headers, hedged):
    assert may_hedge(method, headers) is hedged
    attempts, _ = plan_a_hedge(method, headers)
    assert (attempts.hedge(START + 0.05) is not None) is hedged


def test_hedges_stop_when_the_extra_load_budget_is_spent():
    budget = RetryBudget(extra_capacity=2.0, extra_ratio=0.05)
    granted = 0
    for _ in range(100):  # every request slow: each asks for a hedge
        attempts = Attempts(
            [A, B], "GET", {}, timeout=(3.0, 30.0), started=START, max_retries=2, retry_delay=1.0, budget=budget
        )
        attempts.next(START)
        granted += attempts.hedge(START + 0.05) is not None
    # the reserve of 2 (requests 1 and 2), then one per 20 requests (each deposits 0.05):
    # requests 22, 42, 62 and 82; never more than extra_capacity + 0.05 * n
    assert granted == 2 + 4


def test_no_hedge_without_an_untried_backend_or_attempts_left():
    attempts = Attempts(
        [A], "GET", {}, timeout=(3.0, 30.0), started=START, max_retries=2, retry_delay=1.0, budget=RetryBudget()
    )
    attempts.next(START)
    assert attempts.hedge(START + 0.05) is None, "nowhere to hedge to"
    attempts = Attempts(
        [A, B], "GET", {}, timeout=(3.0, 30.0), started=START, max_retries=0, retry_delay=1.0, budget=RetryBudget()
    )
    attempts.next(START)
    assert attempts.hedge(START + 0.05) is None, "max_retries=0: one attempt, hedges included"


def test_no_hedge_while_failures_throttle_repeats():
    budget = RetryBudget()
    for _ in range(5):
        budget.failed()
    attempts = Attempts(
        [A, B], "GET", {}, timeout=(3.0, 30.0), started=START, max_retries=2, retry_delay=1.0, budget=budget
    )
    attempts.next(START)
    assert attempts.hedge(START + 0.05) is None


def test_a_suspect_backend_skipped_at_once_is_not_counted_as_tried():
    attempts = Attempts(
        [A, B], "POST", {}, timeout=(3.0, 30.0), started=START, max_retries=2, retry_delay=1.0, budget=RetryBudget()
    )
    first = attempts.next(START)
    assert first is not None
    moved = attempts.moved(first, B, tried=False)
    assert (moved.backend, moved.tries) == (B, 1)
    attempts.record(moved, 0.01, error=refused())
    again = attempts.next(START + 0.01)
    assert again is not None and (again.backend, again.tries, again.delay) == (A, 1, 0.0), "a: a first try"
