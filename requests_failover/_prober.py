"""Scheduling the probes of one adapter's selection: when, by whom, on which thread.

A full probe *round* (every backend, until the priority order is decided) runs
when the selection is stale, claimed first so that one thread of one process
of the fleet probes while everybody else keeps using the stale selection
(stale-while-revalidate); failback probes (one backend of higher priority than
the current one, on its own schedule) run when due. Only the first request of
a backend set with nothing known anywhere waits for a round, and only as long
as its own timeout allows (:func:`first_wait`).

The probes run on threads of their own that :meth:`Prober.stop` ends: their
sockets are shut down, so a probe blocked on a black-holed backend does not
outlive ``close()``. What the probes find goes into the :class:`.Books`.

Two locks: ``_probe_lock`` lets one thread of this process run a round (the
first one, or a forced refresh); ``_threads_lock`` guards the set of probe
threads in flight.
"""

from __future__ import annotations

import dataclasses
import socket
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Set, Tuple

from . import _policy, _runtime
from ._background import WORKER
from ._books import CHANGED_ELSEWHERE, Books
from ._config import Backend, Options
from ._health import ProbeConfig, ProbeSettings, Sender, probe, probe_all
from ._policy import ProbeResult, State
from ._state import Lease, claim_is_void, owner_token

#: Shortest time (seconds) between two background probe rounds, whatever ``cache_ttl`` says:
#: ``cache_ttl=0`` means "re-probe as soon as allowed", never a busy loop of probes.
PROBE_FLOOR = 1.0
#: Longest wait (seconds) of close() for the probes it interrupted to end.
CLOSE_WAIT = 1.0


class Prober:
    """Runs the probe rounds and failback probes of one selection, on probe threads it can end."""

    def __init__(self, options: Options, send: Sender, books: Books, observe: Callable[[ProbeResult], None]) -> None:
        self._options = options
        self._config = ProbeConfig.of(options)
        self._send = send
        self._books = books
        self._observe = observe
        self._clock = _runtime.now
        self._by_url: Dict[str, Backend] = {b.url: b for b in options.targets}
        #: What background probes are sent with: the first request's (see :class:`.ProbeSettings`).
        self.settings = ProbeSettings()
        self._probe_lock = threading.Lock()
        self._fresh_process()
        _runtime.reset_after_fork(self)

    def _fresh_process(self) -> None:
        self._threads: Set[threading.Thread] = set()  # probe threads in flight, all started
        self._threads_lock = threading.Lock()
        self._probing: Set[str] = set()  # backends probed in the background right now
        self._round = False  # a full background probe round is running
        self._registered = -1  # the worker generation this selection registered with

    def _after_fork(self) -> None:
        self._probe_lock = threading.Lock()
        self._fresh_process()

    # -- what status() and tests read --------------------------------------------------------------
    def checking(self, state: State, now: float) -> bool:
        """Whether a probe round runs here, or a live prober anywhere holds the claim."""
        return self._probe_lock.locked() or self._round or claimed(state, now)

    def in_flight(self) -> int:
        """Probe threads running now."""
        return len(self._threads)

    def busy(self) -> bool:
        return bool(self._threads or self._probing or self._round)

    # -- the request's side ----------------------------------------------------------------------------
    def register(self, client: Any, send_kwargs: Mapping[str, Any]) -> None:
        """Hand ``client`` (the selection) to the background thread, once per process and ``close()``.

        The request that registers it gives the background probes their
        settings (:class:`.ProbeSettings`).
        """
        if self._registered != WORKER.generation:
            self.settings = ProbeSettings.of_request(send_kwargs)
            self._registered = WORKER.generation
            WORKER.add(client)

    def unregister(self, client: Any) -> None:
        WORKER.remove(client)
        self._registered = -1  # a request after close() registers again

    def first_round(self, send_kwargs: Mapping[str, Any], timeout: Any) -> None:
        """Nothing is known anywhere: probe, waiting until the order is decided or ``timeout`` allows no more.

        The probes go on in the background, and the request goes to the first
        backend meanwhile. Another thread of this process or another prober
        already at it: no wait.
        """
        self.settings = ProbeSettings.of_request(send_kwargs)
        if not self._probe_lock.acquire(blocking=False):
            return  # another thread of this process is probing: go ahead with the first backend
        decided = threading.Event()

        def first_round() -> None:
            try:
                self.probe_round(dict(send_kwargs), "health check")
            finally:
                self._probe_lock.release()
                decided.set()

        try:
            claimed = self._claim()
            if claimed:
                self._spawn(first_round)
        except BaseException:
            self._probe_lock.release()
            raise
        if not claimed:
            self._probe_lock.release()
            return
        decided.wait(first_wait(timeout, self._options.default_timeout))

    def refresh(self, send_kwargs: Mapping[str, Any]) -> None:
        """Probe every backend now, ignoring the cache and any other prober; a healthy one is taken at once."""
        with self._probe_lock:
            self.probe_round(send_kwargs, "forced refresh", threshold=1)

    # -- rounds ------------------------------------------------------------------------------------------
    def _probe_time_limit(self) -> float:
        """Seconds a probe round may take at most (the claim's and the leases' length)."""
        return self._options.health_timeout * len(self._options.health_paths) + 5.0

    def _claim(self) -> bool:
        """Claim the probe round in the store, unless it is fresh or a live prober holds it.

        A shared store gives the round to one machine of the fleet through a
        lease, held (never released) for half a stale period at most: the
        winner's fresh selection reaches the others long before it ends.
        """
        limit = self._probe_time_limit()
        ttl = self._options.cache_ttl
        lease = self._books.store.lease("round", owner_token(), min(limit, max(ttl / 2, 0.001)))
        if lease is not Lease.LOCAL:
            return lease is Lease.TAKEN and not self._books.sync().is_fresh(self._clock(), ttl)
        taken = False

        def claim(current: State) -> State:
            nonlocal taken
            now = self._clock()
            taken = False  # a shared store may call this again on a newer state
            if current.is_fresh(now, ttl) or claimed(current, now):
                return current  # another process probed, or is probing, meanwhile
            taken = True
            return dataclasses.replace(current, probing_until=now + limit, probing_by=owner_token())

        self._books.update_now(claim, CHANGED_ELSEWHERE)
        return taken

    def probe_round(self, send_kwargs: Mapping[str, Any], reason: str, threshold: Optional[int] = None) -> None:
        """Probe every backend; return once the priority order is decided (late results follow)."""
        books = self._books
        state = books.state
        hold = {url: state.record(url).hold_until for url in state.backends}
        if threshold is None:
            threshold = self._options.healthy_threshold
        confirm = threshold

        def late(result: ProbeResult) -> None:
            if not books.closed:
                at = self._clock()  # when it was observed: a later failure recorded elsewhere wins
                books.update(lambda s: _policy.apply_probes(s, [result], at, select=False, threshold=confirm), reason)

        results = probe_all(
            self._options.targets,
            self._config,
            self._send,
            send_kwargs,
            hold=hold,
            now=self._clock(),
            on_late=late,
            spawn=self._spawn,
            observe=self._observe,
        )
        if not books.closed:
            at = self._clock()
            books.update(lambda s: _policy.apply_probes(s, results, at, select=True, threshold=confirm), reason)

    # -- background work (called by the worker thread) -----------------------------------------------
    def tick(self, state: State, now: float) -> float:
        """Start the round or the failback probes due in ``state`` at ``now``; when to look again."""
        due = float("inf")
        # A round is due once the selection is stale, and never sooner than PROBE_FLOOR after the
        # last one: cache_ttl=0 re-probes once a second, not in a loop.
        interval = max(self._options.cache_ttl, PROBE_FLOOR)
        if state.is_fresh(now, interval):
            due = state.checked_at + interval if state.checked_at is not None else due
        elif claimed(state, now):
            due = state.probing_until  # another process probes; look again when its claim ends
        elif not self._round:
            if self._claim():
                self._round = True
                self._spawn(self._background_round)
            else:  # another machine holds the round's lease: look again soon
                due = now + _runtime.interval(1.0)
        return min(due, self._failback_probes(state, now))

    def _failback_probes(self, state: State, now: float) -> float:
        """Start the failback probes due; when the next one is."""
        due = float("inf")
        scale = _runtime.interval(1.0)
        for url, at in _policy.probes_due(state, now, self._options.healthy_threshold).items():
            if url in self._probing:
                continue
            health = state.record(url)
            since = max(health.failed_at, health.probed_at)
            at = since + (at - since) * scale if at > since else at  # testing mode: 1/100 of each interval
            wait = at - now
            if wait > 0:
                due = min(due, now + wait)
            elif self._books.store.lease(f"probe {url}", owner_token(), self._probe_time_limit()) is Lease.HELD:
                due = min(due, now + _runtime.interval(1.0))  # another machine probes it now
            else:
                self._probing.add(url)
                self._spawn(lambda url=url: self._probe_one(url))  # type: ignore[misc]  # binds the loop value
        return due

    def _background_round(self) -> None:
        try:
            self.probe_round(self.settings.send_kwargs, "health check")
        finally:
            self._round = False
            WORKER.wake()

    def _probe_one(self, url: str) -> None:
        """A failback probe of one backend of higher priority than the current one."""
        books, config = self._books, self._config
        try:
            result = probe(
                self._by_url[url],
                config.paths,
                config.timeout,
                self._send,
                self.settings.send_kwargs,
                check=config.check,
                headers=config.headers,
            )
            self._observe(result)
            if not books.closed:
                threshold = self._options.healthy_threshold
                at = self._clock()
                books.update(
                    lambda s: _policy.apply_probes(s, [result], at, select=False, threshold=threshold),
                    f"{url} is healthy again",
                )
        finally:
            if books.store.lease_based:
                books.flush()  # the result is in the shared store before another machine may probe
                books.store.release(f"probe {url}", owner_token())
            self._probing.discard(url)
            WORKER.wake()

    # -- probe threads ---------------------------------------------------------------------------------
    def _spawn(self, target: Callable[[], None]) -> None:
        """Start a probe thread that :meth:`stop` ends."""

        def run() -> None:
            try:
                target()
            finally:
                with self._threads_lock:  # after the spawner added it
                    self._threads.discard(thread)

        thread = threading.Thread(target=run, name="requests-failover-probe", daemon=True)
        with self._threads_lock:
            thread.start()
            self._threads.add(thread)

    def stop(self, deadline: float) -> None:
        """End the probes in flight, waiting for them until ``deadline`` (monotonic).

        Each probe thread's sockets are shut down (again every few
        milliseconds, for a probe that was about to open one): the probe then
        fails at once and urllib3 closes them.
        """
        while True:
            with self._threads_lock:
                threads = [t for t in self._threads if t is not threading.current_thread()]
            if not threads or time.monotonic() >= deadline:
                return
            _interrupt(threads)
            for thread in threads:
                thread.join(max(0.0, min(0.01, deadline - time.monotonic())))


def claimed(state: State, now: float) -> bool:
    """Whether a live prober holds the claim (one of a process that died is void at once)."""
    return state.probing_until > now and not claim_is_void(state.probing_by)


def _interrupt(threads: Iterable[threading.Thread]) -> None:
    """Shut down the sockets that ``threads`` (probe threads) are using.

    A thread blocked in ``connect()``, a TLS handshake or ``recv()`` cannot be
    stopped from outside, but shutting its socket down ends the call at once
    with an error (a connect in progress too). The sockets are created deep in
    urllib3, out of our reach, so they are found in the threads' own frames:
    a local that is a socket (``create_connection``'s while it connects), or
    an object's ``sock``/``_sock`` (the connection, the socket file).
    """
    frames = sys._current_frames()
    found: Dict[int, socket.socket] = {}
    for thread in threads:
        frame = frames.get(thread.ident) if thread.ident is not None else None
        while frame is not None:
            module = str(frame.f_globals.get("__name__", ""))
            if module not in _HTTP_MODULES and not module.startswith(("urllib3.", "requests.")):
                frame = frame.f_back  # e.g. a write to a Redis store: its connection is not the probe's
                continue
            for value in list(frame.f_locals.values()):
                attributes = getattr(value, "__dict__", None)
                for candidate in (
                    value,
                    *((attributes.get("sock"), attributes.get("_sock")) if isinstance(attributes, dict) else ()),
                ):
                    if isinstance(candidate, socket.socket):
                        found[id(candidate)] = candidate
            frame = frame.f_back
    del frames
    for sock in found.values():
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:  # closed or never connected: nothing to end
            pass


#: The modules a probe's HTTP exchange runs in (their frames hold the probe's sockets).
_HTTP_MODULES = frozenset({"socket", "ssl", "http.client"})  # and urllib3.*, requests.*


def _parts(timeout: Any) -> Optional[Tuple[Optional[float], Optional[float]]]:
    """(connect, read) of a requests timeout; None for what is not a number or a pair (a urllib3 Timeout)."""
    if isinstance(timeout, tuple) and len(timeout) == 2:
        connect, read = timeout
    else:
        connect = read = timeout
    for part in (connect, read):
        if part is not None and (isinstance(part, bool) or not isinstance(part, (int, float))):
            return None
    return connect, read


def first_wait(timeout: Any, default: Tuple[Optional[float], Optional[float]]) -> Optional[float]:
    """How long the first request of a backend set waits for the first probe round.

    Its connect timeout (a plain request would have spent that much
    connecting), and at most half its read timeout (the other half is the
    attempt's); None: the caller set no limit.
    """
    parts = _parts(timeout) if timeout is not None else None
    connect, read = parts if parts is not None else default
    bounds = [x for x in (connect, None if read is None else read / 2) if x is not None]
    return min(bounds) if bounds else None
