"""What failover costs next to plain ``requests``: steady state, outages, processes, cold start, memory, fleet.

Each scenario takes a :class:`~_harness.Context` and returns its rows
(see ``docs/performance.rst`` for what each one measures and why).
"""

from __future__ import annotations

import cProfile
import gc
import io
import os
import pstats
import statistics
import tempfile
import time
import tracemalloc
from typing import Any, Callable, Dict, List

import requests
from _harness import CTX, Backends, Context, Row, at_least, at_most, below, burst, exactly, timed

from requests_failover import FailoverSession
from requests_failover._config import DEFAULT_HEDGE_DELAY, DEFAULT_TIMEOUT
from requests_failover.testing import settle

SLOW_MARGIN = 0.1  # seconds past the hedge delay that count as "waited"


# -- 1. steady state -----------------------------------------------------------------------------


def _steady(ctx: Context, threads: int, label: str, failed_over: bool = False) -> List[Row]:
    """Legacy calls (no timeout): plain, plain with our default timeout, failover.

    With ``failed_over`` the primary is dead: the failover session keeps asking
    for the primary's URL and is served by the secondary, the plain session
    asks the secondary directly.
    """
    b, rounds, count = ctx.backends, ctx.rounds, ctx.count
    plain = requests.Session()
    failover = FailoverSession([b.primary, b.secondary], state_file=False)
    if failed_over:
        b.set("primary", "refuse")
    plain_url, failover_url = (b.secondary if failed_over else b.primary) + "/bench", b.primary + "/bench"
    variants = {
        "plain": (plain, plain_url, {}),
        "plain_timeout": (plain, plain_url, {"timeout": DEFAULT_TIMEOUT}),  # what failover adds by default
        "failover": (failover, failover_url, {}),
    }
    for session, url, kwargs in variants.values():
        burst(session, url, 50, threads, **kwargs)  # warm: connections, selection
    wall: Dict[str, List[float]] = {k: [] for k in variants}
    cpu: Dict[str, List[float]] = {k: [] for k in variants}
    ratio: Dict[str, List[float]] = {"plain": [], "plain_timeout": []}
    names = list(variants)
    for i in range(rounds):
        order = names[i % 3 :] + names[: i % 3]  # rotate, so no variant always runs first
        for name in order:
            session, url, kwargs = variants[name]
            seconds, cpu_seconds = burst(session, url, count, threads, **kwargs)
            wall[name].append(seconds)
            cpu[name].append(cpu_seconds / count * 1e6)
        for base in ratio:
            ratio[base].append(wall[base][-1] / wall["failover"][-1])  # throughput ratio
    plain.close()
    failover.close()
    b.set("primary", "up")
    rps = {k: count / statistics.median(v) for k, v in wall.items()}
    us = {k: statistics.median(v) for k, v in cpu.items()}
    return [
        Row(
            f"steady state, {label}: throughput vs plain",
            statistics.median(ratio["plain"]),
            "x",
            at_least(0.97),
            f"{rps['failover']:.0f} vs {rps['plain']:.0f} req/s",
        ),
        Row(
            "  vs plain given our default timeout",
            statistics.median(ratio["plain_timeout"]),
            "x",
            at_least(0.97),
            f"{rps['failover']:.0f} vs {rps['plain_timeout']:.0f} req/s",
        ),
        Row(
            f"  client CPU per request, {label}: plain / failover",
            us["plain"] / us["failover"],
            "x",
            None,
            f"{us['failover']:.0f} vs {us['plain']:.0f} us (with timeout {us['plain_timeout']:.0f})",
        ),
    ]


def steady_1_thread(ctx: Context) -> List[Row]:
    return _steady(ctx, 1, "1 thread")


def steady_8_threads(ctx: Context) -> List[Row]:
    return _steady(ctx, 8, "8 threads")


def steady_failed_over(ctx: Context) -> List[Row]:
    return _steady(ctx, 1, "primary dead, 1 thread", failed_over=True)


def observed(ctx: Context) -> List[Row]:
    """Steady state with no observer vs the Prometheus observer attached (1 thread)."""
    import prometheus_client

    from requests_failover.metrics import PrometheusObserver

    b = ctx.backends
    registry = prometheus_client.CollectorRegistry()
    bare = FailoverSession([b.primary, b.secondary], state_file=False)
    watched = FailoverSession([b.primary, b.secondary], state_file=False, observers=[PrometheusObserver(registry)])
    url = b.primary + "/bench"
    for session in (bare, watched):
        burst(session, url, 50, 1)
    wall: Dict[str, List[float]] = {"bare": [], "watched": []}
    for i in range(ctx.rounds):
        for name in ("bare", "watched") if i % 2 else ("watched", "bare"):
            wall[name].append(burst(bare if name == "bare" else watched, url, ctx.count, 1)[0])
    bare.close()
    watched.close()
    ratio = statistics.median(wall["bare"]) / statistics.median(wall["watched"])
    return [Row("steady state with the Prometheus observer", ratio, "x", at_least(0.95), "vs no observer")]


# -- 2. refused primary ----------------------------------------------------------------------------


def _refused_added_ms(b: Backends, rounds: int, state_file: bool) -> List[float]:
    """The first request after the primary starts refusing: its cost over a plain request, per round."""
    added = []
    plain = requests.Session()
    plain.get(b.secondary + "/warm")
    directory = tempfile.mkdtemp(prefix="rf-bench-")
    for i in range(rounds):
        b.set("primary", "up")
        state: Any = os.path.join(directory, f"s{i}.json") if state_file else False
        session = FailoverSession([b.primary, b.secondary], state_file=state)
        session.get(b.primary + "/warm")
        settle(session)  # the warm-up's writes are done
        b.set("primary", "refuse")
        first = timed(lambda s=session: s.get(b.primary + "/first"))
        baseline = statistics.median(timed(lambda: plain.get(b.secondary + "/base")) for _ in range(5))
        added.append((first - baseline) * 1000)
        session.close()
    b.set("primary", "up")
    plain.close()
    return added


def refused(ctx: Context) -> List[Row]:
    """Issue 21's cost row: with read-your-writes the state file is written before the request returns."""
    memory = _refused_added_ms(ctx.backends, ctx.rounds, state_file=False)
    on_file = _refused_added_ms(ctx.backends, ctx.rounds, state_file=True)
    return [
        Row(
            "refused primary: first request, added",
            statistics.median(memory),
            "ms",
            below(10),
            f"worst {max(memory):.2f} ms",
        ),
        Row(
            "  same, with a state file: added over memory",
            statistics.median(on_file) - statistics.median(memory),
            "ms",
            at_most(1),
            f"{statistics.median(on_file):.2f} ms (worst {max(on_file):.2f})",
        ),
    ]


# -- 2b. outages that cost nothing visible -------------------------------------------------------------


def _reprobe_stall_ms(b: Backends, state_file: bool) -> float:
    """Max latency over three cache periods while the primary is black-holed and the selection goes stale.

    The session serves from the secondary; every ``cache_ttl`` (1 s here) the
    selection goes stale and is re-probed, the primary's probe waiting its
    whole health timeout (3 s). 0.1 made one request per period wait for it.
    """
    state: Any = os.path.join(tempfile.mkdtemp(prefix="rf-bench-"), "s.json") if state_file else False
    session = FailoverSession([b.primary, b.secondary], state_file=state, cache_ttl=1.0)
    session.get(b.primary + "/warm")
    b.set("primary", "refuse")
    session.get(b.primary + "/fail")
    b.set("primary", "blackhole")
    worst = 0.0
    end = time.perf_counter() + 3.2
    while time.perf_counter() < end:
        worst = max(worst, timed(lambda: session.get(b.primary + "/x")))
        time.sleep(0.01)
    b.set("primary", "refuse")  # ends the probes' pending connects
    session.close()
    b.set("primary", "up")
    return worst * 1000


def reprobe_stall(ctx: Context) -> List[Row]:
    memory, on_file = _reprobe_stall_ms(ctx.backends, False), _reprobe_stall_ms(ctx.backends, True)
    return [
        Row(
            "re-probe stall, primary black-holed, 3 cache periods: slowest request",
            max(memory, on_file),
            "ms",
            below(3000),
            f"{memory:.1f} ms (memory), {on_file:.1f} ms (file)",
        )
    ]


def _failback(b: Backends, outage: float) -> Dict[str, float]:
    """Seconds from the primary's recovery until a request is served by it again (default settings)."""
    session = FailoverSession([b.primary, b.secondary], state_file=False)
    session.get(b.primary + "/warm")
    b.set("primary", "refuse")
    end = time.perf_counter() + outage
    while time.perf_counter() < end:
        session.get(b.primary + "/during")
        time.sleep(0.05)
    b.set("primary", "up")
    recovered = time.perf_counter()
    served = ""
    while served != "primary" and time.perf_counter() - recovered < 120:
        served = session.get(b.primary + "/after").json()["server"]
        time.sleep(0.02)
    seconds = time.perf_counter() - recovered
    then = [session.get(b.primary + "/then").json()["server"] for _ in range(50)]
    session.close()
    return {"seconds": seconds, "share": then.count("primary") / len(then) * 100}


def failback(ctx: Context) -> List[Row]:
    """After a 3 s and a longer outage. The share of the next 50 requests is shown, not judged:
    with slow start it ramps (the failback rows of the gray-failure scenarios judge it)."""
    short = _failback(ctx.backends, 3.0)
    long = _failback(ctx.backends, 10.0 if ctx.quick else 40.0)
    return [
        Row(
            "failback after recovery, defaults: first request on the primary, 3 s outage",
            short["seconds"],
            "s",
            at_most(35),
            f"then {short['share']:.0f} % of the next 50 on it",
        ),
        Row(
            f"  same, {10 if ctx.quick else 40} s outage",
            long["seconds"],
            "s",
            at_most(35),
            f"then {long['share']:.0f} % of the next 50 on it",
        ),
    ]


# -- 3 and 4. several processes sharing the file ----------------------------------------------------


def _worker(backends: List[str], state: str, name: str, go: Any, done: Any, count: int, slow: float, out: Any) -> None:
    session = FailoverSession(backends, state_file=state, default_timeout=(1.0, 5.0))
    session.get(backends[0] + "/warm", headers={"X-Worker": "warm"})
    done.put(("ready", name, 0))
    go.wait()
    paid = 0
    for _ in range(count):
        if timed(lambda: session.get(backends[0] + "/work", headers={"X-Worker": name})) > slow:
            paid += 1
    out.put(("done", name, paid))
    session.close()


def shared(b: Backends, processes: int, mode: str, count: int = 20, later: int = 20) -> Dict[str, Any]:
    """``processes`` workers warm up on the primary; the primary dies (``mode``);
    this process meets the outage first and sends ``later`` more requests; then
    the workers send ``count`` requests each."""
    with tempfile.TemporaryDirectory() as tmp:
        state = os.path.join(tmp, "state.json")
        backends = [b.primary, b.secondary]
        go, queue = CTX.Event(), CTX.Queue()
        workers = [
            CTX.Process(target=_worker, args=(backends, state, f"w{i}", go, queue, count, 0.5, queue), daemon=True)
            for i in range(processes)
        ]
        for w in workers:
            w.start()
        for _ in workers:
            queue.get(timeout=120)
        b.set("primary", mode, status=503) if mode == "up" else b.set("primary", mode)
        b.reset("primary")
        session = FailoverSession(backends, state_file=state, default_timeout=(1.0, 5.0))
        first = timed(lambda: session.get(b.primary + "/first", headers={"X-Worker": "discoverer"}))
        after = [
            timed(lambda: session.get(b.primary + "/later", headers={"X-Worker": "discoverer"})) for _ in range(later)
        ]
        go.set()
        paid = 0
        for _ in workers:
            _, _, worker_paid = queue.get(timeout=120)
            paid += worker_paid
        for w in workers:
            w.join(60)
        reached = sum(b.hits("primary", f"w{i}") for i in range(processes)) if mode == "up" else None
        session.close()
        b.set("primary", "up", status=200)
        return {
            "first_ms": first * 1000,
            "later_paid": sum(1 for t in after if t > 0.5),
            "others_paid": paid,
            "others_reached_dead_primary": reached,
            "others_requests": processes * count,
        }


def blackholed(ctx: Context) -> List[Row]:
    holed = shared(ctx.backends, 3, "blackhole")
    return [
        Row(
            "black-holed primary: first request",
            holed["first_ms"],
            "ms",
            at_most((DEFAULT_HEDGE_DELAY + SLOW_MARGIN) * 1000),
            f"connect timeout 1 s, hedge {DEFAULT_HEDGE_DELAY:g} s",
        ),
        Row(
            "black-holed: later requests that paid a timeout",
            holed["later_paid"] + holed["others_paid"],
            "",
            exactly(0),
            f"{holed['later_paid']} of 20 here, {holed['others_paid']} of {holed['others_requests']} in 3 others",
        ),
    ]


def simultaneous_blackhole(ctx: Context, processes: int = 4, count: int = 200) -> List[Row]:
    """``processes`` workers hit the primary at the moment it is black-holed (connect timeout 1 s).

    Counts the requests that waited longer than the hedge delay + 100 ms. Without
    the connect race each process pays the whole connect timeout once.
    """
    b = ctx.backends
    slow = DEFAULT_HEDGE_DELAY + SLOW_MARGIN
    with tempfile.TemporaryDirectory() as tmp:
        state = os.path.join(tmp, "state.json")
        backends = [b.primary, b.secondary]
        go, queue = CTX.Event(), CTX.Queue()
        workers = [
            CTX.Process(target=_worker, args=(backends, state, f"h{i}", go, queue, count, slow, queue), daemon=True)
            for i in range(processes)
        ]
        for w in workers:
            w.start()
        for _ in workers:
            queue.get(timeout=120)
        b.set("primary", "blackhole")  # the workers' keep-alive connections die with it
        go.set()
        waited = sum(queue.get(timeout=120)[2] for _ in workers)
        for w in workers:
            w.join(60)
        b.set("primary", "up")
    return [
        Row(
            f"black-holed at once, {processes} processes: waited > hedge + {SLOW_MARGIN * 1000:.0f} ms",
            waited,
            "",
            exactly(0),
            f"of {processes * count}",
        )
    ]


def propagation(ctx: Context) -> List[Row]:
    rows = []
    for n in (2, 4, 8):
        p = shared(ctx.backends, n, "up")
        rows.append(
            Row(
                f"propagation, {n} processes: requests reaching the dead primary",
                p["others_reached_dead_primary"],
                "",
                exactly(0),
                f"of {p['others_requests']}",
            )
        )
    return rows


def read_your_writes(ctx: Context) -> List[Row]:
    """Issue 21: another process asks right after the discovering request returned (no grace period).

    One worker process per round shares the state file; the primary starts
    answering 503; this process's request fails over and returns; only then the
    worker sends 20 requests. Counted: those that reached the dead primary.
    """
    rounds = 3 if ctx.quick else 10
    reached = total = 0
    for _ in range(rounds):
        p = shared(ctx.backends, 1, "up", later=0)
        reached += p["others_reached_dead_primary"]
        total += p["others_requests"]
    return [
        Row(
            "read-your-writes: another process's requests to the dead primary after the discovery returned",
            reached,
            "",
            exactly(0),
            f"of {total} ({rounds} rounds, state file)",
        )
    ]


# -- 5. cold start ---------------------------------------------------------------------------------


def cold_start(ctx: Context) -> List[Row]:
    b = ctx.backends
    with tempfile.TemporaryDirectory() as tmp:
        state = os.path.join(tmp, "state.json")
        with FailoverSession([b.primary, b.secondary], state_file=state) as s:
            s.get(b.primary + "/")
            settle(s)
        plain_t, disk_t, probe_t = [], [], []
        disk_probes = 0
        for _ in range(ctx.rounds):
            with requests.Session() as p:
                plain_t.append(timed(lambda p=p: p.get(b.primary + "/cold")))
            before = b.probes("primary") + b.probes("secondary")
            with FailoverSession([b.primary, b.secondary], state_file=state) as f:
                disk_t.append(timed(lambda f=f: f.get(b.primary + "/cold")))
            disk_probes += b.probes("primary") + b.probes("secondary") - before
            with FailoverSession([b.primary, b.secondary], state_file=False) as f:
                probe_t.append(timed(lambda f=f: f.get(b.primary + "/cold")))
    plain, disk, probe = (statistics.median(t) * 1000 for t in (plain_t, disk_t, probe_t))
    return [
        Row(
            "cold start, fresh selection on disk: probes sent",
            disk_probes,
            "",
            exactly(0),
            f"{disk:.1f} vs {plain:.1f} ms plain ({disk / plain:.2f}x)",
        ),
        Row(
            "cold start, no selection (concurrent probes)",
            probe / plain,
            "x",
            None,
            f"{probe:.1f} vs {plain:.1f} ms plain",
        ),
    ]


# -- 6. memory -----------------------------------------------------------------------------------


def memory(ctx: Context) -> List[Row]:
    b = ctx.backends

    def allocated(make: Callable[[], requests.Session]) -> float:
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.take_snapshot()
        sessions = [make() for _ in range(50)]
        for s in sessions:
            s.get(b.primary + "/m")
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
        size = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
        for s in sessions:
            s.close()
        return size / len(sessions) / 1024

    plain = allocated(requests.Session)
    failover = allocated(lambda: FailoverSession([b.primary, b.secondary], state_file=False))
    return [Row("memory per session, added", failover - plain, "KiB", None, f"{failover:.1f} vs {plain:.1f} KiB")]


def profile(ctx: Context, count: int = 2000) -> str:
    """The hot path under cProfile: requests_failover's functions by own time (text, not rows)."""
    b = ctx.backends
    session = FailoverSession([b.primary, b.secondary], state_file=False)
    session.get(b.primary + "/")
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(count):
        session.get(b.primary + "/p")
    profiler.disable()
    session.close()
    stream = io.StringIO()
    stats = pstats.Stats(profiler, stream=stream).sort_stats("tottime")
    stats.print_stats("requests_failover", 12)
    return stream.getvalue()


# -- 7. the fleet store (Redis/Valkey) ---------------------------------------------------------------


def _valkey() -> Any:
    from tests._valkey import ValkeyServer

    server = ValkeyServer(tempfile.mkdtemp(prefix="rf-bench-valkey-"))
    server.start()
    return server


def fleet_steady(ctx: Context) -> List[Row]:
    """Steady state, 1 thread: state file alone vs state file under the Redis store (and Redis down)."""
    b, rounds, count = ctx.backends, ctx.rounds, ctx.count
    server = _valkey()
    directory = tempfile.mkdtemp(prefix="rf-bench-")
    backends = [b.primary, b.secondary]
    file_only = FailoverSession(backends, state_file=os.path.join(directory, "f.json"))
    fleet = FailoverSession(backends, state_file=os.path.join(directory, "r.json"), state_store=server.url)
    variants = {"file": file_only, "redis": fleet}
    for session in variants.values():
        burst(session, b.primary + "/bench", 50, 1)
    wall: Dict[str, List[float]] = {k: [] for k in variants}

    def measure(into: Dict[str, List[float]]) -> List[float]:
        ratios = []
        for i in range(rounds):
            for name in list(variants) if i % 2 == 0 else list(variants)[::-1]:
                into[name].append(burst(variants[name], b.primary + "/bench", count, 1)[0])
            ratios.append(into["file"][-1] / into["redis"][-1])
        return ratios

    up = measure(wall)
    server.kill()  # Redis gone: the first failure is noticed by the background thread
    deadline = time.monotonic() + 30
    while fleet.status()["state_store"]["reachable"] is not False and time.monotonic() < deadline:  # type: ignore[index]
        fleet.get(b.primary + "/notice")
        time.sleep(0.05)
    down = measure({k: [] for k in variants})
    worst = max(timed(lambda: fleet.get(b.primary + "/down")) for _ in range(200))
    file_only.close()
    fleet.close()
    redis_rps, file_rps = count / statistics.median(wall["redis"]), count / statistics.median(wall["file"])
    return [
        Row(
            "steady state, Redis store vs state file alone",
            statistics.median(up),
            "x",
            at_least(0.98),
            f"{redis_rps:.0f} vs {file_rps:.0f} req/s",
        ),
        Row(
            "  Redis down (killed), after the first detection",
            statistics.median(down),
            "x",
            at_least(0.98),
            f"worst request {worst * 1000:.1f} ms of 200",
        ),
    ]


def _watcher(backends: List[str], state: str, url: str, out: Any, stop: Any) -> None:
    session = FailoverSession(backends, state_file=state, state_store=url, cache_ttl=3600, healthy_threshold=100)
    session.get(backends[0] + "/warm")
    last = session.status()["active_backend"]
    out.send(("ready", last, time.monotonic()))
    while not stop.is_set():
        current = session.status()["active_backend"]  # what the next request of this machine would use
        if current != last:
            last = current
            out.send(("changed", current, time.monotonic()))
        time.sleep(0.0002)
    session.close()


def fleet_propagation(ctx: Context) -> List[Row]:
    """From one machine's failover (its request returned) to another machine's next request using it."""
    b, samples = ctx.backends, 40 if ctx.quick else 200
    server = _valkey()
    directory = tempfile.mkdtemp(prefix="rf-bench-")
    backends = [b.primary, b.secondary]
    conn, child = CTX.Pipe()
    stop = CTX.Event()
    watcher = CTX.Process(
        target=_watcher, args=(backends, os.path.join(directory, "w.json"), server.url, child, stop), daemon=True
    )
    watcher.start()
    assert conn.recv()[0] == "ready"
    session = FailoverSession(
        backends,
        state_file=os.path.join(directory, "d.json"),
        state_store=server.url,
        cache_ttl=3600,
        healthy_threshold=100,
    )
    session.get(b.primary + "/warm")
    times: List[float] = []
    names = ["primary", "secondary"]
    for i in range(samples):
        dying, alive = names[i % 2], names[(i + 1) % 2]
        b.set(alive, "up")
        b.set(dying, "refuse")
        session.get(b.primary + "/switch")
        discovered = time.monotonic()
        if not conn.poll(10):
            break
        _, _, seen = conn.recv()
        times.append(max(0.0, seen - discovered))
    b.set("primary", "up")
    b.set("secondary", "up")
    stop.set()
    watcher.join(30)
    session.close()
    server.stop()
    times.sort()
    p50 = statistics.median(times) * 1000
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))] * 1000
    return [
        Row(
            "propagation to another machine through Redis: p99",
            p99,
            "ms",
            below(100),
            f"p50 {p50:.1f} ms ({len(times)} switches)",
        )
    ]
