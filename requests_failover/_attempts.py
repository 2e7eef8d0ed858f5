"""One request's attempts: what has happened so far and what may come next.

What urllib3's ``Retry`` is to urllib3: :class:`Attempts` holds the state of
one request's attempts across backends (tries per backend, backends never to
repeat, the deadline, whether the body can still be replayed, the answer to
return, the errors met, a record per attempt for events) and answers the
questions of the attempt loop:

- :meth:`Attempts.next`: the next attempt (backend, backoff, timeout), or
  None: stop;
- :meth:`Attempts.rival`: the backend a slow connect may be raced against;
- :meth:`Attempts.hedge`: a hedge of a slow answer, if one may start now;
- :meth:`Attempts.record`: classify an attempt's outcome (:func:`._retry.classify`)
  and draw the consequences;
- :meth:`Attempts.result`: the answer, or the error users expect.

It is pure: no sockets, no clock of its own (the caller passes ``now``,
monotonic seconds), no selection. The one shared object it touches is the
adapter's :class:`._retry.RetryBudget`, which it reads before a repeat or a
hedge and charges after each outcome. :class:`._sending.Dispatcher` sends; this decides.

The rules, in the order :meth:`next` applies them:

1. at most ``1 + max_retries`` attempts, hedges included;
2. every backend of the plan not yet tried comes before any repeat; a backend
   that read-timed out is never repeated (a second wait would double the
   cost); among repeats, the least tried first;
3. after an attempt that consumed the body, a body that cannot be rewound
   ends the request; a verdict of ``FAILED`` (unsafe to send again) ends it;
4. a repeat waits ``backoff(retry_delay, tries)`` and needs the retry budget;
5. no attempt starts after the deadline ``start + connect + read``, the
   longest one plain request with the caller's timeout could take, and each
   attempt after the first gets a timeout cut to what is left of it.
"""

from __future__ import annotations

import random
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Set, Tuple, Union

import requests

from ._config import Backend
from ._health import describe_error
from ._retry import RetryBudget, Verdict, backoff, classify, never_connected, retry_after
from .exceptions import AllBackendsFailed, all_failed_type

__all__ = ["Attempt", "Attempts", "Outcome", "all_failed", "clip", "deadline", "may_hedge"]

#: Methods whose answers may be hedged (sent to a second backend while the first is slow).
#: Narrower than the failover rule: PUT and DELETE are idempotent but change state,
#: and a hedge sends them twice *on purpose*; only an ``Idempotency-Key`` makes that safe.
HEDGED_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def may_hedge(method: Optional[str], headers: Mapping[str, Any]) -> bool:
    """Whether a request may be sent to two backends at once (GET, HEAD, OPTIONS, or an Idempotency-Key)."""
    return (method or "GET").upper() in HEDGED_METHODS or "Idempotency-Key" in headers


class Attempt(NamedTuple):
    """One attempt: where it goes, after what wait, with what timeout."""

    backend: Backend
    number: int  # 1 for the request's first attempt
    tries: int  # times this backend has been tried in the request, this one included
    delay: float  # seconds to wait before sending (a repeat's backoff; 0 otherwise)
    timeout: Any  # the caller's timeout, cut to what is left of the deadline after the first attempt
    hedge: bool = False  # sent while an earlier attempt was still waiting for its answer


class Outcome(NamedTuple):
    """What one attempt came to, classified; the dispatcher (:mod:`._sending`) records it in the selection."""

    attempt: Attempt
    verdict: Verdict
    status_code: Optional[int]
    error: Optional[str]  # the short description (status() and events); "HTTP 503" for a failed answer
    duration: float  # seconds from sending to the answer's body read (or the error)
    retry_after: Optional[float] = None  # a 503's Retry-After, seconds
    read_timeout: bool = False
    abandoned: bool = False  # a hedge answered first; this one was given up
    won: Optional[bool] = None  # None: no hedge raced it; else whether its answer was the one returned


class Attempts:
    """The state of one request's attempts (see the module docstring for the rules).

    :param plan: the backends in the order to try them (the selection's plan).
    :param method, headers: the request's, for the classification.
    :param timeout: the request's timeout (seconds, (connect, read), or a
        urllib3 ``Timeout``: then no deadline is computed).
    :param started: monotonic seconds when the request started.
    :param replayable: whether the body can be rewound and sent again.
    :param budget: the adapter's retry budget, shared by its requests.
    """

    def __init__(
        self,
        plan: Sequence[Backend],
        method: Optional[str],
        headers: Mapping[str, Any],
        *,
        timeout: Any,
        started: float,
        max_retries: int,
        retry_delay: float,
        budget: RetryBudget,
        replayable: bool = True,
        rng: Union[random.Random, Any] = random,
    ) -> None:
        self.plan = plan
        self.method = method
        self._headers = headers
        self._timeout = timeout
        self._started = started
        self._deadline: Optional[float] = None  # computed when a second attempt is considered
        self._max_attempts = 1 + max_retries
        self._retry_delay = retry_delay
        self._budget = budget
        self._rng = rng
        # A body that cannot be rewound may still go to another backend as long
        # as no attempt has consumed any of it: a connection never opened read nothing.
        self._replayable = replayable
        self._pristine = True
        self._tries: Dict[str, int] = {}
        self._no_repeat: Set[str] = set()
        self._count = 0
        self._done = False
        self._response: Optional[requests.Response] = None  # the answer to return
        self._raise: Optional[BaseException] = None  # an error that is not the backend's fault
        self.errors: List[Tuple[Backend, BaseException]] = []
        self.failures: List[Tuple[str, str]] = []  # (backend url, description), for AllBackendsFailed
        self.outcomes: List[Outcome] = []
        budget.requested()

    # -- what comes next ----------------------------------------------------------------
    def next(self, now: float) -> Optional[Attempt]:
        """The next attempt, or None when the request is over (answered, failed, or out of attempts)."""
        if self._done or self._count >= self._max_attempts:
            return None
        backend = self._next_backend()
        if backend is None:
            return None
        delay = 0.0
        if self._count:
            if not (self._replayable or self._pristine):
                return None
            if self._deadline is None:
                self._deadline = deadline(self._timeout, self._started)
            tries = self._tries.get(backend.url, 0)
            if tries:
                if not self._budget.allows_repeat():
                    return None
                delay = backoff(self._retry_delay, tries, self._rng)
            if self._deadline is not None and now + delay >= self._deadline:
                return None
        return self._start(backend, delay, now)

    def _next_backend(self) -> Optional[Backend]:
        tries = self._tries
        if not tries:
            return self.plan[0]
        for backend in self.plan:
            if not tries.get(backend.url):
                return backend
        again = [b for b in self.plan if b.url not in self._no_repeat]
        if not again:
            return None
        return min(again, key=lambda b: tries[b.url])

    def _start(self, backend: Backend, delay: float, now: float, hedge: bool = False) -> Attempt:
        self._count += 1
        tries = self._tries[backend.url] = self._tries.get(backend.url, 0) + 1
        timeout = self._timeout if self._count == 1 else clip(self._timeout, self._deadline, now + delay)
        return Attempt(backend, self._count, tries, delay, timeout, hedge)

    def rival(self) -> Optional[Backend]:
        """The backend a slow connect of the current attempt may be raced against: the next one not tried."""
        return next((b for b in self.plan if not self._tries.get(b.url)), None)

    def moved(self, attempt: Attempt, backend: Backend, *, tried: bool = True) -> Attempt:
        """``attempt`` went to ``backend`` instead: its rival connected first, or its backend was suspect.

        ``tried``: whether the first backend stays counted as tried (a connect
        was started there); a suspect backend skipped at once was not tried.
        """
        if not tried:
            self._untry(attempt.backend)
        tries = self._tries[backend.url] = self._tries.get(backend.url, 0) + 1
        return attempt._replace(backend=backend, tries=tries)

    def withdraw(self, attempt: Attempt) -> None:
        """``attempt`` was never sent (a hedge that found no thread): it takes no attempt, no try, no budget."""
        self._count -= 1
        self._untry(attempt.backend)
        if attempt.hedge:
            self._budget.refund_hedge()

    def _untry(self, backend: Backend) -> None:
        left = self._tries.get(backend.url, 0) - 1
        if left > 0:
            self._tries[backend.url] = left
        else:
            self._tries.pop(backend.url, None)

    def hedge(self, now: float) -> Optional[Attempt]:
        """A hedge of the attempt in flight, if one may start now; it takes one of the attempts.

        Only for a request that may be sent twice (:func:`may_hedge`), to a
        backend not tried yet, within the attempts, the deadline and the
        extra-load budget (which it charges).
        """
        if self._done or self._count >= self._max_attempts or not may_hedge(self.method, self._headers):
            return None
        backend = self.rival()
        if backend is None:
            return None
        if self._deadline is None:
            self._deadline = deadline(self._timeout, self._started)
        if self._deadline is not None and now >= self._deadline:
            return None
        if not self._budget.take_hedge():
            return None
        return self._start(backend, 0.0, now, hedge=True)

    # -- what happened ------------------------------------------------------------------
    def record(
        self,
        attempt: Attempt,
        duration: float,
        *,
        response: Optional[requests.Response] = None,
        error: Optional[BaseException] = None,
        hedged: bool = False,
    ) -> Outcome:
        """Classify one attempt's answer or error and draw the consequences; returns the outcome.

        ``hedged``: the attempt was one of two in flight (an answer and its
        hedge); the outcome then says whether it won.
        """
        if response is not None:
            outcome = self._answered(attempt, response, duration)
        else:
            assert error is not None
            outcome = self._failed(attempt, error, duration)
        if hedged:
            outcome = outcome._replace(won=outcome.verdict is Verdict.SUCCESS)
        self.outcomes.append(outcome)
        return outcome

    def _answered(self, attempt: Attempt, response: requests.Response, duration: float) -> Outcome:
        self._pristine = False
        verdict = classify(self.method, self._headers, response=response)
        if verdict is Verdict.SUCCESS:
            self._keep(response)
            self._budget.succeeded()
            self._done = True
            return Outcome(attempt, verdict, response.status_code, None, duration)
        description = f"HTTP {response.status_code}"
        self._keep(response)
        self._budget.failed()
        self.failures.append((attempt.backend.url, description))
        self._done = verdict is Verdict.FAILED
        wait = retry_after(response)
        return Outcome(attempt, verdict, response.status_code, description, duration, wait)

    def _failed(self, attempt: Attempt, error: BaseException, duration: float) -> Outcome:
        verdict = classify(self.method, self._headers, error=error)
        description = describe_error(error)
        timed_out = isinstance(error, requests.exceptions.ReadTimeout)
        if verdict is Verdict.RAISE:
            self._raise, self._done = error, True
            return Outcome(attempt, verdict, None, description, duration)
        self._pristine = self._pristine and never_connected(error)
        self.errors.append((attempt.backend, error))
        if timed_out:
            self._no_repeat.add(attempt.backend.url)
        self._keep(None)
        self._budget.failed()
        self.failures.append((attempt.backend.url, description))
        self._done = verdict is Verdict.FAILED
        return Outcome(attempt, verdict, None, description, duration, read_timeout=timed_out)

    def abandoned(self, attempt: Attempt, duration: float) -> Outcome:
        """``attempt`` was given up: another attempt's answer won (its own may still come, unread)."""
        outcome = Outcome(attempt, Verdict.RETRY, None, None, duration, abandoned=True, won=False)
        self.outcomes.append(outcome)
        return outcome

    def _keep(self, response: Optional[requests.Response]) -> None:
        """The answer to return is now ``response``; an earlier 5xx gives its connection back."""
        if self._response is not None and self._response is not response:
            self._response.close()
        self._response = response

    @property
    def done(self) -> bool:
        """Whether the request is decided (answered, unsafe to retry, or an error to raise)."""
        return self._done

    def result(self, source: Backend, request: requests.PreparedRequest) -> requests.Response:
        """The answer to return, or raise: the error that is not the backend's fault, else AllBackendsFailed."""
        if self._raise is not None:
            raise self._raise
        if self._response is not None:
            return self._response
        raise all_failed(self.failures, self.errors, source, request)


def all_failed(
    failures: Sequence[Tuple[str, str]],
    errors: Sequence[Tuple[Backend, BaseException]],
    source: Backend,
    request: requests.PreparedRequest,
) -> AllBackendsFailed:
    """The exception for a request that failed everywhere.

    It is an instance of every exception type met (the last attempt's first),
    so any legacy ``except`` clause for one of them still catches it. Its
    ``args`` are those of the error plain requests would have raised: the one
    from the backend the URL named, if it was tried, else the last one.
    """
    last = errors[-1][1]
    types = [type(exc) for _, exc in reversed(errors)]
    plain = next((exc for backend, exc in errors if backend is source), last)
    error = all_failed_type(*types)(failures, *plain.args, last=last, request=request)
    error.__cause__ = last
    return error


def deadline(timeout: Any, started: float) -> Optional[float]:
    """Monotonic time after which no attempt starts: ``started + connect + read``.

    That is the longest one plain request with this timeout could wait, so
    failover never makes a caller wait longer than its timeout allowed.
    """
    if isinstance(timeout, tuple) and len(timeout) == 2:
        connect, read = timeout
    elif isinstance(timeout, (int, float)):
        connect = read = timeout
    else:  # a urllib3 Timeout object, or bad input the transport will reject as requests does
        return None
    if not isinstance(connect, (int, float)) or not isinstance(read, (int, float)):
        return None
    return started + float(connect) + float(read)


def clip(timeout: Any, deadline: Optional[float], now: float) -> Any:
    """The timeout of an attempt after the first: the caller's, cut to what is left of the deadline."""
    if deadline is None:
        return timeout
    left = max(0.001, deadline - now)
    connect, read = timeout if isinstance(timeout, tuple) else (timeout, timeout)
    return (min(float(connect), left), min(float(read), left))
