"""Health probes: one backend (its paths in order), several concurrently.

Where a health path is probed (:func:`probe_url`): relative to the backend's
base URL (``/health`` on ``https://host/api`` is ``/api/health``), except a
path that already starts with the base path, used as is (``/api/health``
there is ``/api/health``, never ``/api/api/health``), and a path written
with two leading slashes, relative to the host (``//healthz`` is
``https://host/healthz`` whatever the base path).

A backend with no health endpoint (every path answered 404 or 405, and no
``health_check`` judges the answers) is judged by its base URL instead: any
answer below 500 counts as up. That is said once per backend at WARNING.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import threading
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple

import requests
from requests.auth import HTTPBasicAuth

from ._config import Backend, Options
from ._policy import ProbeResult, select_from_probes

log = logging.getLogger("requests_failover")

#: Sends one prepared request: ``send(request, timeout=..., **kwargs) -> Response``.
Sender = Callable[..., requests.Response]
#: Probes race after this many hedge delays (their answer, not just their connect, is awaited).
PROBE_RACE_FACTOR = 4.0


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    """How a backend is probed: what of the adapter's :class:`.Options` a probe needs, derived once.

    ``race_after``: seconds after which a backend that answered healthy
    decides a probe round even while backends of higher priority have not
    answered (None: never). A probe's answer takes a connect and a request,
    so it is ``PROBE_RACE_FACTOR`` hedge delays (1 s by default): a primary
    that is merely far away or busy is not raced.
    """

    paths: Tuple[str, ...]
    timeout: float
    check: Optional[Callable[[requests.Response], bool]]
    headers: Tuple[Tuple[str, str], ...]
    race_after: Optional[float]

    @classmethod
    def of(cls, options: Options) -> ProbeConfig:
        hedge = options.hedge_delay
        return cls(
            paths=options.health_paths,
            timeout=options.health_timeout,
            check=options.health_check,
            headers=options.health_headers,
            race_after=None if hedge is None else PROBE_RACE_FACTOR * hedge,
        )


@dataclasses.dataclass(frozen=True)
class ProbeSettings:
    """The transport settings every background probe of an adapter is sent with.

    A probe has no request of its own to take ``verify``, ``cert`` and
    ``proxies`` from: the background probes of an adapter use those of the
    first request it sent (again after ``close()`` or a fork, when it starts
    background work anew). An adapter whose requests pass different TLS or
    proxy settings probes with the first ones; the proxies are then decided
    per probed backend (``FailoverAdapter._probe_send``). ``force_refresh``
    probes with its own keyword arguments instead.
    """

    send_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def of_request(cls, send_kwargs: Mapping[str, Any]) -> ProbeSettings:
        """The settings of a request (a copy: the caller's mapping may change)."""
        return cls(dict(send_kwargs))


def describe_error(exc: BaseException) -> str:
    """A short, secret-free description of a failure, for logs and status."""
    name = type(exc).__name__
    reason: Any = exc.args[0] if exc.args else None
    inner = getattr(reason, "reason", None)  # urllib3's MaxRetryError carries the cause
    if inner is not None:
        reason = inner
    if isinstance(reason, BaseException):
        # urllib3 puts the connection object (pool, address, object id) first
        # and the message last: keep the message only
        last = reason.args[-1] if reason.args else ""
        detail = last if isinstance(last, str) else str(reason)
        if ": " in detail:
            detail = detail.rsplit(": ", 1)[-1]
        return f"{name} ({type(reason).__name__}: {detail})"[:300]
    if reason is not None:
        return f"{name} ({str(reason).rsplit(': ', 1)[-1]})"[:300]
    return name


#: Bytes of a probe answer read at most: a health endpoint that streams forever costs nothing.
MAX_PROBE_BODY = 64 * 1024


#: Answers that say "no such endpoint" rather than "unhealthy".
NOT_FOUND = frozenset({404, 405})

_warned: Set[str] = set()  # backends already reported as having no health endpoint
_warned_lock = threading.Lock()


def probe_url(backend: Backend, path: str) -> str:
    """The URL probed for ``path`` (see the module docstring): never a doubled base path."""
    if path.startswith("//"):
        return backend.origin + path[1:]
    base = backend.base_path
    if base and (path.split("?")[0] == base or path.startswith(base + "/")):
        return backend.origin + path
    return backend.url + path


def lacks_health_endpoint(result: ProbeResult) -> bool:
    """Whether ``result`` was decided by the base URL because no health path exists.

    Such a result carries no ``path`` but an HTTP ``status`` (a result with no
    path and no status is a probe that could not run at all).
    """
    return result.path is None and result.status is not None


def prepare(backend: Backend, path: str, headers: Sequence[Tuple[str, str]] = ()) -> requests.PreparedRequest:
    """The probe of ``path``; ``path`` ``""`` is the backend's base URL itself."""
    url = probe_url(backend, path) if path else backend.url + ("" if backend.base_path else "/")
    request = requests.Request("GET", url, headers=dict(headers))
    prepared = request.prepare()
    if backend.auth is not None:
        prepared = HTTPBasicAuth(*backend.auth)(prepared)
    return prepared


def probe(
    backend: Backend,
    paths: Sequence[str],
    timeout: float,
    send: Sender,
    send_kwargs: Optional[Mapping[str, Any]] = None,
    clock: Callable[[], float] = time.monotonic,
    check: Optional[Callable[[requests.Response], bool]] = None,
    headers: Sequence[Tuple[str, str]] = (),
) -> ProbeResult:
    """Probe ``backend``: healthy when one of ``paths``, tried in order, passes ``check``.

    ``check`` (default: a 2xx status) sees the answer with its body read (at
    most ``MAX_PROBE_BODY`` bytes) and ``elapsed`` set. A failing answer moves
    on to the next path; an exception (refused, timeout, TLS) ends this
    backend's probe at once: the next path would meet the same network.
    Paths that lead to the same URL (``/health`` and ``/api/health`` on a
    base path ``/api``) are asked once.

    Without ``check``, a backend whose every path answered 404 or 405 has no
    health endpoint: its base URL is asked instead and any answer below 500
    means up. The result then has no ``path`` (:func:`lacks_health_endpoint`).
    """
    kwargs: Dict[str, Any] = dict(send_kwargs or {})
    kwargs["timeout"] = (timeout, timeout)
    kwargs["stream"] = True
    status: Optional[int] = None
    latency: Optional[float] = None
    error: Optional[str] = None
    began = clock()

    def result(healthy: bool, path: Optional[str]) -> ProbeResult:
        duration = round(clock() - began, 6)
        return ProbeResult(backend.url, healthy, path, status, latency, None if healthy else error, duration)

    unique: List[str] = []  # the paths in order, one per URL
    asked: Set[str] = set()
    for path in paths:
        url = probe_url(backend, path)
        if url not in asked:
            asked.add(url)
            unique.append(path)
    missing: List[str] = []  # paths answered 404/405: the backend may have no health endpoint
    for path in unique:
        started = clock()
        try:
            response = send(prepare(backend, path, headers), **kwargs)
            _read_limited(response)
        except Exception as exc:  # any failure of the network or the transport
            latency = round((clock() - started) * 1000, 3)
            error = describe_error(exc)
            log.debug("probe %s%s failed: %s", backend.url, path, error)
            return result(False, path)
        latency = round((clock() - started) * 1000, 3)
        status = response.status_code
        response.elapsed = datetime.timedelta(milliseconds=latency)
        log.debug("probe %s%s answered %s in %.1f ms", backend.url, path, status, latency)
        try:
            healthy = bool(check(response)) if check is not None else 200 <= status < 300
            error = f"HTTP {status} on {path}" if check is None else f"health_check rejected HTTP {status} on {path}"
        except Exception as exc:  # a broken check must not break probing
            healthy, error = False, f"health_check raised {type(exc).__name__} on {path}"
        if healthy:
            return result(True, path)
        if status in NOT_FOUND:
            missing.append(path)
    if check is None and len(missing) == len(unique):
        return _probe_base(backend, unique, kwargs, send, clock, began, headers)
    return result(False, unique[-1])


def _probe_base(
    backend: Backend,
    paths: Sequence[str],
    kwargs: Mapping[str, Any],
    send: Sender,
    clock: Callable[[], float],
    began: float,
    headers: Sequence[Tuple[str, str]],
) -> ProbeResult:
    """Judge a backend that has no health endpoint by its base URL: any answer below 500 is up."""
    answers = f"HTTP 404/405 on {', '.join(paths)}"
    started = clock()
    status: Optional[int] = None
    try:
        response = send(prepare(backend, "", headers), **kwargs)
        _read_limited(response)
    except Exception as exc:  # any failure of the network or the transport
        error: Optional[str] = f"no health endpoint ({answers}); the base URL: {describe_error(exc)}"
    else:
        status = response.status_code
        error = None if status < 500 else f"no health endpoint ({answers}); the base URL answered HTTP {status}"
    latency = round((clock() - started) * 1000, 3)
    log.debug("probe %s (base URL, no health endpoint) answered %s in %.1f ms", backend.url, status, latency)
    with _warned_lock:
        first = backend.url not in _warned
        _warned.add(backend.url)
    if first:
        log.warning(
            "backend %s has no health endpoint (%s): judged by its base URL instead, where any answer "
            "below 500 counts as up; set health_paths to a path it serves (or health_check to judge its answers)",
            backend.url,
            answers,
        )
    healthy = error is None
    return ProbeResult(backend.url, healthy, None, status, latency, error, round(clock() - began, 6))


def _read_limited(response: requests.Response) -> None:
    """Read at most ``MAX_PROBE_BODY`` bytes of the body, then release the connection."""
    try:
        if getattr(response, "_content", None) is False and response.raw is not None:  # not read yet
            body = response.raw.read(MAX_PROBE_BODY + 1, decode_content=True)
            response._content = body[:MAX_PROBE_BODY] if isinstance(body, bytes) else b""
            if len(body) > MAX_PROBE_BODY:
                response.raw.close()  # more to come: drop the connection rather than read it
        response._content_consumed = True  # type: ignore[attr-defined]  # as Response.content leaves it
    finally:
        response.close()


def probe_all(
    backends: Sequence[Backend],
    config: ProbeConfig,
    send: Sender,
    send_kwargs: Optional[Mapping[str, Any]] = None,
    *,
    hold: Optional[Mapping[str, float]] = None,
    now: float = 0.0,
    on_late: Optional[Callable[[ProbeResult], None]] = None,
    spawn: Optional[Callable[[Callable[[], None]], None]] = None,
    observe: Optional[Callable[[ProbeResult], None]] = None,
) -> List[ProbeResult]:
    """Probe every backend concurrently, as ``config`` says; return once the selection is decided.

    The return comes as soon as a backend answered healthy and every backend
    before it in priority order answered unhealthy (so a healthy primary is
    not kept waiting by a dead secondary). Probes still running then report to
    ``on_late`` when they finish. ``spawn`` starts each probe's thread (the
    caller tracks them, to wait for them at close).

    With ``config.race_after``, probes race as connects do: once that long
    has passed, a backend that answered healthy decides even while backends
    of higher priority have not answered yet (a black-holed primary's probe
    waits its whole timeout); their late results can take the selection back.
    """
    order = [b.url for b in backends]
    race_after = config.race_after
    results: Dict[str, ProbeResult] = {}
    lock = threading.Lock()
    changed = threading.Condition(lock)
    returned = False

    def run(backend: Backend) -> None:
        nonlocal returned
        try:
            result = probe(
                backend, config.paths, config.timeout, send, send_kwargs, check=config.check, headers=config.headers
            )
        except BaseException as exc:  # pragma: no cover - probe() catches Exception
            result = ProbeResult(backend.url, False, error=describe_error(exc))
        if observe is not None:
            observe(result)
        with changed:
            late = returned
            results[backend.url] = result
            changed.notify_all()
        if late and on_late is not None:
            on_late(result)

    if len(backends) == 1:
        run(backends[0])
        return [results[order[0]]]
    for backend in backends:
        if spawn is not None:
            spawn(lambda backend=backend: run(backend))  # type: ignore[misc]  # default binds the loop value
        else:
            threading.Thread(target=run, args=(backend,), name="requests-failover-probe", daemon=True).start()
    started = time.monotonic()
    with changed:
        while len(results) < len(order):
            racing = race_after is not None and time.monotonic() - started >= race_after
            if select_from_probes(order, results, hold or {}, now, skip_pending=racing) is not None:
                break
            changed.wait(None if race_after is None or racing else race_after)
        returned = True
        return [results[u] for u in order if u in results]
