"""The benchmark's plumbing: rows as data, targets that are evaluated, backends in their own process.

A scenario is a function ``(Context) -> List[Row]``. A :class:`Row` is one
figure with its unit and, when there is a goal, a :class:`Target` (a bound the
figure must meet). :func:`report` prints the table, evaluates every target and
returns the exit status: 0 when every target is met, 1 when one is missed (or
a scenario failed, which counts as a missed target).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import platform
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, TextIO, Tuple

import requests

CTX = multiprocessing.get_context("spawn")

_OPS: Dict[str, Callable[[float, float], bool]] = {
    "<": lambda value, bound: value < bound,
    "<=": lambda value, bound: value <= bound,
    ">": lambda value, bound: value > bound,
    ">=": lambda value, bound: value >= bound,
    "==": lambda value, bound: value == bound,
}


@dataclass(frozen=True)
class Target:
    """A goal for one figure: ``value <op> bound`` (``op`` one of ``<``, ``<=``, ``>``, ``>=``, ``==``)."""

    op: str
    bound: float

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise ValueError(f"op: one of {sorted(_OPS)}, got {self.op!r}")

    def met(self, value: float) -> bool:
        """Whether ``value`` meets the goal; a figure that could not be measured (NaN) never does."""
        return not math.isnan(value) and _OPS[self.op](value, self.bound)


def below(bound: float) -> Target:
    return Target("<", bound)


def at_most(bound: float) -> Target:
    return Target("<=", bound)


def at_least(bound: float) -> Target:
    return Target(">=", bound)


def exactly(bound: float) -> Target:
    return Target("==", bound)


@dataclass(frozen=True)
class Row:
    """One figure of the table.

    :param name: what is measured, read as a sentence with ``detail``.
    :param value: the figure the target judges, in ``unit``.
    :param unit: ``"ms"``, ``"s"``, ``"%"``, ``"x"`` (a ratio), ``"req/s"``,
        ``"KiB"`` or ``""`` (a count).
    :param target: the goal, or None for a figure shown for information.
    :param detail: the figures behind ``value``, side by side (for example
        ``"1031 vs 1030 req/s"``).
    """

    name: str
    value: float
    unit: str
    target: Optional[Target] = None
    detail: str = ""

    @property
    def verdict(self) -> str:
        """``"ok"``, ``"MISSED"``, or ``""`` for a row without a target."""
        if self.target is None:
            return ""
        return "ok" if self.target.met(self.value) else "MISSED"


def fmt(value: float, unit: str) -> str:
    """A figure with its unit, to the precision that unit deserves."""
    if math.isnan(value):
        return "n/a"
    digits = {"x": 3, "ms": 2, "s": 2, "%": 1, "req/s": 0, "KiB": 1, "": 0}.get(unit, 2)
    if unit == "" and value != int(value):
        digits = 3
    text = f"{value:.{digits}f}"
    return f"{text} {unit}".rstrip() if unit not in ("%", "x") else text + unit


def target_text(row: Row) -> str:
    if row.target is None:
        return ""
    return f"{row.target.op} {fmt(row.target.bound, row.unit)}"


@dataclass
class Context:
    """What every scenario gets: the backends and how long to measure."""

    backends: Backends
    quick: bool
    rounds: int
    count: int
    extras: Dict[str, Any] = field(default_factory=dict)  # e.g. the profile text


Scenario = Callable[[Context], List[Row]]


def failed(name: str, error: BaseException) -> Row:
    """The row of a scenario that raised: a missed target, so the run exits non-zero."""
    return Row(f"{name}: failed", float("nan"), "", exactly(0), f"{type(error).__name__}: {error}"[:100])


def run_all(ctx: Context, scenarios: Sequence[Tuple[str, Scenario]], progress: Optional[TextIO] = None) -> List[Row]:
    """Run each scenario in turn; a scenario that raises gives a missed row, the others still run."""
    rows: List[Row] = []
    for name, scenario in scenarios:
        started = time.monotonic()
        try:
            rows += scenario(ctx)
        except Exception as error:  # one broken scenario must not hide the others' figures
            rows.append(failed(name, error))
        if progress is not None:
            print(f"{name}: {time.monotonic() - started:.0f} s", file=progress, flush=True)
    return rows


def report(rows: Sequence[Row], out: TextIO) -> int:
    """Print the table and evaluate every target: 0 when all are met, 1 otherwise."""
    import requests_failover

    table = [(r.name, fmt(r.value, r.unit), target_text(r), r.verdict, r.detail) for r in rows]
    header = ("figure", "value", "target", "", "detail")
    width = [max(len(cells[i]) for cells in [header, *table]) for i in range(len(header))]
    line = "  ".join("=" * w for w in width)
    print(
        f"requests-failover {requests_failover.__version__}, requests {requests.__version__}, "
        f"Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} cores",
        file=out,
    )
    print(line, file=out)
    print("  ".join(h.ljust(w) for h, w in zip(header, width)).rstrip(), file=out)
    print(line, file=out)
    for cells in table:
        print("  ".join(c.ljust(w) for c, w in zip(cells, width)).rstrip(), file=out)
    print(line, file=out)
    missed = [r for r in rows if r.verdict == "MISSED"]
    judged = sum(1 for r in rows if r.target is not None)
    print(f"{judged - len(missed)} of {judged} targets met" + (", missed:" if missed else ""), file=out)
    for r in missed:
        print(f"  {r.name}: {fmt(r.value, r.unit)}, target {target_text(r)}", file=out)
    return 1 if missed else 0


# -- backends in their own process ---------------------------------------------------------------


def _serve(conn: Any) -> None:
    from requests_failover.testing import LoopbackBackend

    servers = {"primary": LoopbackBackend("primary"), "secondary": LoopbackBackend("secondary")}
    conn.send({name: s.url for name, s in servers.items()})
    while True:
        command, name, *args = conn.recv()
        if command == "exit":
            return
        server = servers[name]
        if command == "set":
            server.set(args[0], **args[1])
            conn.send("ok")
        elif command == "hits":  # API requests (not probes), of one X-Worker or all
            worker = args[0]
            conn.send(len([h for h in server.requests if worker is None or h.headers.get("X-Worker") == worker]))
        elif command == "probes":
            conn.send(len(server.probes))
        elif command == "seqs":  # the X-Seq header of every API request received
            conn.send([int(h.headers["X-Seq"]) for h in server.requests if "X-Seq" in h.headers])
        elif command == "reset":
            server.reset_hits()
            conn.send("ok")


class Backends:
    """``primary`` and ``secondary`` LoopbackBackends served by a child process, driven through a pipe."""

    def __init__(self) -> None:
        self.conn, child = CTX.Pipe()
        self.process = CTX.Process(target=_serve, args=(child,), daemon=True)
        self.process.start()
        urls = self.conn.recv()
        self.primary, self.secondary = urls["primary"], urls["secondary"]
        self._lock = threading.Lock()

    def _call(self, *message: Any) -> Any:
        with self._lock:
            self.conn.send(message)
            return self.conn.recv()

    def set(self, name: str, mode: str = "up", **kwargs: Any) -> None:
        self._call("set", name, mode, kwargs)

    def heal(self) -> None:
        """Both backends up, every gray failure cleared."""
        for name in ("primary", "secondary"):
            self.set(name, "up", status=200, delay=0, api_delay=0, tail=(0, 0), errors=(0, 500))

    def hits(self, name: str, worker: Optional[str] = None) -> int:
        return int(self._call("hits", name, worker))

    def probes(self, name: str) -> int:
        return int(self._call("probes", name))

    def seqs(self, name: str) -> List[int]:
        return list(self._call("seqs", name))

    def reset(self, name: str) -> None:
        self._call("reset", name)

    def close(self) -> None:
        self.conn.send(("exit", ""))
        self.process.join(10)


# -- measuring -------------------------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def burst(session: requests.Session, url: str, count: int, threads: int, **kwargs: Any) -> Tuple[float, float]:
    """Send ``count`` GETs over ``threads`` threads; return (wall seconds, client CPU seconds)."""
    per = count // threads

    def run() -> None:
        for _ in range(per):
            session.get(url, **kwargs).content  # noqa: B018

    cpu = time.process_time()
    started = time.perf_counter()
    if threads == 1:
        run()
    else:
        pool = [threading.Thread(target=run) for _ in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
    return time.perf_counter() - started, time.process_time() - cpu


def percentile(values: Sequence[float], share: float) -> float:
    """The nearest-rank percentile (``share`` 0 to 1); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")
