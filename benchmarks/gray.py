"""Gray failures under load (issue 23's goals), side by side: plain requests, a hand-rolled loop, FailoverSession.

Every scenario: two loopback backends (in their own process) whose health
paths always answer 200 at once; 4 threads sending at most 40 requests/s in
all for 20 s (``--quick``: 8 s); the caller's timeout ``(1, 5)``; defaults
otherwise. Three clients meet the same fault, one after the other:

plain
    a ``requests.Session`` asking the primary;
loop
    a ``requests.Session`` that asks the primary with a 1 s read timeout and,
    on any error or 5xx, asks the secondary (what people write by hand);
failover
    ``FailoverSession([primary, secondary], state_file=False)``.

"Load" is the API requests both backends received per request made (probes
not counted). The targets are the goals for FailoverSession; the other two
clients' figures are in the detail column.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import requests
from _harness import Backends, Context, Row, at_least, at_most, below, exactly, fmt, percentile

from requests_failover import FailoverSession

THREADS = 4
RATE = 40.0  # requests per second, all threads together
TIMEOUT = (1.0, 5.0)  # the caller's
LOOP_TIMEOUT = (1.0, 1.0)  # the hand-rolled loop's first try
FAST = 1.0  # "answered" means a non-5xx answer within this many seconds

Call = Callable[[str, Dict[str, str]], requests.Response]


@dataclass(frozen=True)
class Outcome:
    """One request made by the load: when it started, how long it took, who answered."""

    seq: int
    started: float  # time.perf_counter()
    seconds: float
    ok: bool  # an answer below 500
    server: str  # "primary", "secondary", or "" when nothing answered

    @property
    def fast(self) -> bool:
        return self.ok and self.seconds < FAST


class Client:
    """One of the three clients compared; ``call(path, headers)`` sends a GET the client's way."""

    def __init__(self, kind: str, b: Backends) -> None:
        self.kind = kind
        self._b = b
        self._session: requests.Session = (
            FailoverSession([b.primary, b.secondary], state_file=False) if kind == "failover" else requests.Session()
        )

    def call(self, path: str, headers: Dict[str, str]) -> requests.Response:
        primary = self._b.primary + path
        if self.kind != "loop":
            return self._session.get(primary, headers=headers, timeout=TIMEOUT)
        try:
            answer = self._session.get(primary, headers=headers, timeout=LOOP_TIMEOUT)
            if answer.status_code < 500:
                return answer
        except requests.exceptions.RequestException:
            pass
        return self._session.get(self._b.secondary + path, headers=headers, timeout=TIMEOUT)

    def close(self) -> None:
        self._session.close()


CLIENTS = ("plain", "loop", "failover")


def load(call: Call, duration: float, threads: int = THREADS, rate: float = RATE) -> List[Outcome]:
    """Send GETs from ``threads`` threads on one schedule (request n due at n/rate s) for ``duration`` s.

    A free thread takes the next slot of the schedule; slots that passed while
    every thread waited for slow answers are skipped, so slow answers mean
    fewer requests made in the same time (as with a thread pool behind a
    caller), never a backlog sent late.
    """
    lock = threading.Lock()
    outcomes: List[Outcome] = []
    start = time.perf_counter() + 0.05
    taken = [-1]  # the last slot taken

    def run() -> None:
        while True:
            with lock:
                n = taken[0] = max(taken[0] + 1, math.ceil((time.perf_counter() - start) * rate))
            due = start + n / rate
            if due >= start + duration:
                return
            time.sleep(max(0.0, due - time.perf_counter()))
            began = time.perf_counter()
            try:
                answer = call(f"/api/{n}", {"X-Seq": str(n)})
                ok, server = answer.status_code < 500, str(answer.json().get("server", ""))
            except (requests.exceptions.RequestException, ValueError):
                ok, server = False, ""
            outcome = Outcome(n, began, time.perf_counter() - began, ok, server if ok else "")
            with lock:
                outcomes.append(outcome)

    pool = [threading.Thread(target=run, name=f"load-{i}") for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return sorted(outcomes, key=lambda o: o.seq)


@dataclass(frozen=True)
class Measured:
    """One client's run of one scenario."""

    outcomes: List[Outcome]
    received: Dict[str, int]  # API requests each backend received
    primary_seqs: List[int]  # X-Seq of the requests the primary received
    cpu: float  # client CPU seconds over the run

    @property
    def made(self) -> int:
        return len(self.outcomes)

    def share(self, predicate: Callable[[Outcome], bool], among: Optional[Sequence[Outcome]] = None) -> float:
        pool = self.outcomes if among is None else among
        return sum(1 for o in pool if predicate(o)) / len(pool) * 100 if pool else float("nan")

    @property
    def p99(self) -> float:
        return percentile([o.seconds for o in self.outcomes], 0.99)

    @property
    def load(self) -> float:
        return sum(self.received.values()) / self.made if self.made else float("nan")

    @property
    def cpu_per_request(self) -> float:
        return self.cpu / self.made if self.made else float("nan")

    @property
    def failed(self) -> int:
        return sum(1 for o in self.outcomes if not o.ok)


def _received(b: Backends, name: str) -> int:
    """API requests ``name`` received, once the count stops moving (abandoned requests may still arrive)."""
    count, deadline = b.hits(name), time.monotonic() + 5
    while time.monotonic() < deadline:
        time.sleep(0.1)
        previous, count = count, b.hits(name)
        if count == previous:
            break
    return count


def measure(
    b: Backends, kind: str, fault: Dict[str, Any], duration: float, during: Optional[Callable[[], None]] = None
) -> Measured:
    """Run ``kind``'s client against the primary with ``fault`` set (``b.set("primary", **fault)``).

    ``during``, if given, runs in this thread while the load runs (the
    failback scenario changes the primary's mode from there).
    """
    b.heal()
    client = Client(kind, b)
    try:
        for i in range(5):  # warm: connections, the failover session's first probes
            client.call(f"/warm/{i}", {})
        b.set("primary", **fault)
        for name in ("primary", "secondary"):
            b.reset(name)
        cpu = time.process_time()
        if during is None:
            outcomes = load(client.call, duration)
        else:
            result: List[List[Outcome]] = []
            runner = threading.Thread(target=lambda: result.append(load(client.call, duration)))
            runner.start()
            during()
            runner.join()
            outcomes = result[0]
        cpu = time.process_time() - cpu
        received = {name: _received(b, name) for name in ("primary", "secondary")}
        return Measured(outcomes, received, b.seqs("primary"), cpu)
    finally:
        client.close()
        b.heal()


def _duration(ctx: Context) -> float:
    return 8.0 if ctx.quick else 20.0  # quick: still longer than a 5 s read timeout


def _side(runs: Dict[str, Measured], figure: Callable[[Measured], float], unit: str) -> str:
    """The plain and loop figures for the detail column."""
    return ", ".join(f"{kind} {fmt(figure(runs[kind]), unit)}" for kind in ("plain", "loop"))


def _rows(title: str, runs: Dict[str, Measured], goals: Dict[str, Any], extra: Sequence[Row] = ()) -> List[Row]:
    """The standard rows of a scenario: answered < 1 s, p99, load (FailoverSession's, with the goal if any)."""
    f = runs["failover"]
    figures: List[Tuple[str, str, Callable[[Measured], float], str]] = [
        ("answered", f"answered < {FAST:g} s", lambda m: m.share(lambda o: o.fast), "%"),
        ("p99", "p99", lambda m: m.p99, "s"),
        ("load", "load", lambda m: m.load, "x"),
    ]
    rows = []
    for key, label, figure, unit in figures:
        detail = _side(runs, figure, unit)
        if key == "answered":
            detail += f" ({f.made} requests made)"
        rows.append(Row(f"{title}: {label}", figure(f), unit, goals.get(key), detail))
    return rows + list(extra)


def _runs(ctx: Context, fault: Dict[str, Any]) -> Dict[str, Measured]:
    return {kind: measure(ctx.backends, kind, fault, _duration(ctx)) for kind in CLIENTS}


def _interleaved_runs(ctx: Context, fault: Dict[str, Any], rounds: int = 5) -> Dict[str, Measured]:
    """Each client's run cut into ``rounds`` slices, the clients taking turns (the order rotated every round).

    The same load in all; a drift of this shared machine's speed during the
    minute then touches the three clients alike, which a comparison of CPU
    per request needs (one client after the other, it moved by +-10 %).
    """
    slices: Dict[str, List[Measured]] = {kind: [] for kind in CLIENTS}
    for i in range(rounds):
        for kind in CLIENTS[i % 3 :] + CLIENTS[: i % 3]:
            slices[kind].append(measure(ctx.backends, kind, fault, _duration(ctx) / rounds))
    return {kind: _joined(parts) for kind, parts in slices.items()}


def _joined(parts: Sequence[Measured]) -> Measured:
    """The slices of one client's run as one run."""
    return Measured(
        [o for m in parts for o in m.outcomes],
        {name: sum(m.received[name] for m in parts) for name in parts[0].received},
        [seq for m in parts for seq in m.primary_seqs],
        sum(m.cpu for m in parts),
    )


def slow_primary(ctx: Context) -> List[Row]:
    runs = _runs(ctx, {"api_delay": 2.0})
    goals = {"answered": at_least(99), "p99": below(1.0), "load": at_most(1.10)}
    return _rows("slow primary (every API answer after 2 s)", runs, goals)


def long_tail(ctx: Context) -> List[Row]:
    runs = _runs(ctx, {"tail": (0.02, 1.0)})
    return _rows("long tail (2 % of primary answers after 1 s)", runs, {"p99": at_most(0.1), "load": at_most(1.05)})


def hung_api(ctx: Context) -> List[Row]:
    runs = _runs(ctx, {"api_delay": 30.0})
    return _rows("hung API (answers after 30 s)", runs, {"answered": at_least(99.5)})


def _primary_share_once_detected(m: Measured) -> float:
    """Share of the requests made after the first one the secondary answered that reached the primary."""
    detected = min((o.seq for o in m.outcomes if o.server == "secondary"), default=-1)
    after = [o.seq for o in m.outcomes if o.seq > detected]
    reached = set(m.primary_seqs)
    return sum(1 for seq in after if seq in reached) / len(after) * 100 if after else float("nan")


def errors_503(ctx: Context) -> List[Row]:
    runs = _runs(ctx, {"errors": (0.3, 503)})
    title = "30 % of primary answers 503"
    f = runs["failover"]
    return _rows(
        title,
        runs,
        {},
        extra=[
            Row(
                f"{title}: answered",
                f.share(lambda o: o.ok),
                "%",
                at_least(100),
                _side(runs, lambda m: m.share(lambda o: o.ok), "%"),
            ),
            Row(
                f"{title}: primary's share once detected",
                _primary_share_once_detected(f),
                "%",
                at_most(5),
                _side(runs, _primary_share_once_detected, "%"),
            ),
        ],
    )


def healthy(ctx: Context) -> List[Row]:
    runs = _interleaved_runs(ctx, {})
    plain, f = runs["plain"], runs["failover"]
    return _rows(
        "healthy",
        runs,
        {"load": at_most(1.02)},
        extra=[
            Row(
                "healthy: p99 over plain requests'",
                (f.p99 - plain.p99) * 1000,
                "ms",
                at_most(2),
                f"{f.p99 * 1000:.2f} vs {plain.p99 * 1000:.2f} ms",
            ),
            Row(
                "healthy: client CPU per request, of plain",
                f.cpu_per_request / plain.cpu_per_request,
                "x",
                at_most(0.90),
                f"{f.cpu_per_request * 1e6:.0f} vs {plain.cpu_per_request * 1e6:.0f} us"
                f" (loop {runs['loop'].cpu_per_request * 1e6:.0f})",
            ),
        ],
    )


# -- failback: refused 6 s, then back ------------------------------------------------------------

OUTAGE = 6.0
RAMP_SECONDS = 5  # rows of the per-second table


@dataclass(frozen=True)
class Failback:
    """One client's failback run, read from its outcomes."""

    measured: Measured
    recovered: float  # perf_counter when the primary came back
    at: float  # seconds after recovery where the late share is taken

    @property
    def first(self) -> float:
        """When the primary's first answer after recovery completed (NaN: never)."""
        ends = [o.started + o.seconds for o in self.measured.outcomes if o.server == "primary"]
        return min(ends) if ends else float("nan")

    def window(self, begin: float, end: float) -> List[Outcome]:
        return [o for o in self.measured.outcomes if begin <= o.started < end]

    def primary_share(self, begin: float, end: float) -> float:
        return self.measured.share(lambda o: o.server == "primary", self.window(begin, end))

    def per_second(self, k: int) -> Tuple[int, int]:
        """(requests the primary answered, requests made) in second ``k`` after its first answer."""
        made = self.window(self.first + k, self.first + k + 1)
        return sum(1 for o in made if o.server == "primary"), len(made)


def _failback_run(ctx: Context, kind: str) -> Failback:
    after = 8.0 if ctx.quick else 32.0
    at = after - 2.0 if ctx.quick else 30.0
    b, moments = ctx.backends, []

    def recover() -> None:
        time.sleep(OUTAGE)
        b.set("primary", "up")
        moments.append(time.perf_counter())

    measured = measure(b, kind, {"mode": "refuse"}, OUTAGE + after, during=recover)
    return Failback(measured, moments[0], at)


def failback(ctx: Context) -> List[Row]:
    runs = {kind: _failback_run(ctx, kind) for kind in CLIENTS}
    f = runs["failover"]
    late = (f.recovered + f.at - 1, f.recovered + f.at + 1)

    def side(figure: Callable[[Failback], float], unit: str) -> str:
        return ", ".join(f"{kind} {fmt(figure(runs[kind]), unit)}" for kind in ("plain", "loop"))

    rows = [
        Row(
            "failback (primary refused 6 s, then back): first primary answer after recovery",
            f.first - f.recovered,
            "s",
            None,
            side(lambda r: r.first - r.recovered, "s"),
        ),
        Row(
            "failback: primary's share in the first second after its first answer",
            f.primary_share(f.first, f.first + 1),
            "%",
            at_most(50),
            side(lambda r: r.primary_share(r.first, r.first + 1), "%"),
        ),
        Row(
            f"failback: primary's share {f.at:.0f} s after recovery" + (" (--quick: not judged)" if ctx.quick else ""),
            f.primary_share(*late),
            "%",
            None if ctx.quick else at_least(90),  # the goal is for ~30 s after recovery, past the ramp
            side(lambda r: r.primary_share(r.recovered + r.at - 1, r.recovered + r.at + 1), "%"),
        ),
        Row(
            "failback: failed requests",
            f.measured.failed,
            "",
            exactly(0),
            side(lambda r: r.measured.failed, "") + f" (of {f.measured.made})",
        ),
    ]
    for k in range(RAMP_SECONDS):
        answered, made = f.per_second(k)
        rows.append(
            Row(
                f"  second {k + 1} after the primary's first answer: primary req/s",
                answered,
                "req/s",
                None,
                f"{answered} of {made} requests" + (f" ({answered / made * 100:.0f} %)" if made else ""),
            )
        )
    return rows


# -- close() with a probe in flight (issue 24) -------------------------------------------------------


def _syn_sent_to(port: int) -> bool:
    """Whether some socket of this machine is connecting (SYN_SENT) to 127.0.0.1:``port``."""
    with open("/proc/net/tcp") as table:
        for line in itertools.islice(table, 1, None):
            fields = line.split()
            if fields[3] == "02" and int(fields[2].split(":")[1], 16) == port:
                return True
    return False


def _sockets() -> int:
    """Sockets this process holds open."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:  # closed meanwhile (the listing's own fd)
            pass
    return count


def close_with_probe_in_flight(ctx: Context) -> List[Row]:
    """close() while a failback probe is connecting to a black-holed primary: how long, and sockets left.

    The primary refuses (the session fails over and schedules failback probes),
    then drops SYNs; once a probe is seen connecting (``/proc/net/tcp``), the
    session is closed. Counted: this process's sockets before the session and
    after ``close()`` returned.
    """
    if not os.path.exists("/proc/net/tcp"):
        return []
    b = ctx.backends
    port = int(b.primary.rsplit(":", 1)[1])
    times, left, rounds = [], [], 2 if ctx.quick else 5
    for _ in range(rounds):
        b.heal()
        before = _sockets()
        session = FailoverSession([b.primary, b.secondary], state_file=False)
        session.get(b.primary + "/warm")
        b.set("primary", "refuse")
        session.get(b.primary + "/fails-over")
        b.set("primary", "blackhole")
        deadline = time.monotonic() + 60
        while not _syn_sent_to(port) and time.monotonic() < deadline:
            session.get(b.primary + "/meanwhile")  # served by the secondary; lets a due probe start
            time.sleep(0.002)
        in_flight = _syn_sent_to(port)
        started = time.perf_counter()
        session.close()
        seconds = time.perf_counter() - started
        if not in_flight:
            raise RuntimeError("no probe to the black-holed primary was seen within 60 s")
        times.append(seconds)
        left.append(_sockets() - before)
    b.heal()
    return [
        Row(
            "close() with a probe in flight to a black hole: slowest",
            max(times) * 1000,
            "ms",
            below(50),
            f"{rounds} rounds, " + ", ".join(f"{t * 1000:.0f}" for t in times) + " ms",
        ),
        Row(
            "  sockets left after close()",
            max(left),
            "",
            exactly(0),
            "per round: " + ", ".join(str(n) for n in left),
        ),
    ]
