"""What failover costs, measured side by side with plain ``requests.Session``.

Usage::

    python benchmarks/run.py            # the full table (about a minute)
    python benchmarks/run.py --quick    # fewer rounds
    python benchmarks/run.py --profile  # also profile the hot path

The backends run in a separate process (loopback, ephemeral ports), so the
client's own costs are what the figures show. Each throughput figure is the
median of interleaved rounds (plain, failover, plain, ...) and is given as a
ratio to the plain session measured in the same run: absolute numbers on a
shared machine drift, ratios much less. Not part of the test run.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import multiprocessing
import os
import platform
import pstats
import statistics
import sys
import tempfile
import threading
import time
import tracemalloc
from typing import Any, Callable, Dict, List, Tuple

import requests

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import requests_failover
from requests_failover import FailoverSession

CTX = multiprocessing.get_context("spawn")


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
        elif command == "hits":
            worker = args[0]
            conn.send(len([h for h in server.hits(health=False) if h.headers.get("X-Worker") == worker]))
        elif command == "reset":
            server.reset_hits()
            conn.send("ok")


class Backends:
    def __init__(self) -> None:
        self.conn, child = CTX.Pipe()
        self.process = CTX.Process(target=_serve, args=(child,), daemon=True)
        self.process.start()
        urls = self.conn.recv()
        self.primary, self.secondary = urls["primary"], urls["secondary"]

    def set(self, name: str, mode: str = "up", **kwargs: Any) -> None:
        self.conn.send(("set", name, mode, kwargs))
        self.conn.recv()

    def hits(self, name: str, worker: str) -> int:
        self.conn.send(("hits", name, worker))
        return int(self.conn.recv())

    def reset(self, name: str) -> None:
        self.conn.send(("reset", name))
        self.conn.recv()

    def close(self) -> None:
        self.conn.send(("exit", ""))
        self.process.join(10)


# -- helpers ----------------------------------------------------------------------------------------


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


# -- 1. steady state -----------------------------------------------------------------------------------


def observed(b: Backends, rounds: int, count: int) -> Dict[str, Any]:
    """Steady state with no observer vs the Prometheus observer attached (1 thread)."""
    import prometheus_client

    from requests_failover.metrics import PrometheusObserver

    registry = prometheus_client.CollectorRegistry()
    bare = FailoverSession([b.primary, b.secondary], state_file=False)
    watched = FailoverSession([b.primary, b.secondary], state_file=False, observers=[PrometheusObserver(registry)])
    url = b.primary + "/bench"
    for session in (bare, watched):
        burst(session, url, 50, 1)
    wall: Dict[str, List[float]] = {"bare": [], "watched": []}
    for i in range(rounds):
        for name in ("bare", "watched") if i % 2 else ("watched", "bare"):
            wall[name].append(burst(bare if name == "bare" else watched, url, count, 1)[0])
    bare.close()
    watched.close()
    return {"ratio": statistics.median(wall["bare"]) / statistics.median(wall["watched"])}


def steady_state(b: Backends, rounds: int, count: int, threads: int, failed_over: bool = False) -> Dict[str, Any]:
    """Legacy calls (no timeout): plain, plain with our default timeout, failover.

    With ``failed_over`` the primary is dead: the failover session keeps asking
    for the primary's URL and is served by the secondary, the plain session
    asks the secondary directly.
    """
    plain = requests.Session()
    failover = FailoverSession([b.primary, b.secondary], state_file=False)
    if failed_over:
        b.set("primary", "refuse")
    plain_url, failover_url = (b.secondary if failed_over else b.primary) + "/bench", b.primary + "/bench"
    variants = {
        "plain": (plain, plain_url, {}),
        "plain_timeout": (plain, plain_url, {"timeout": (3.0, 30.0)}),  # what failover adds by default
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
    return {
        **{f"{k}_rps": count / statistics.median(v) for k, v in wall.items()},
        **{f"{k}_cpu_us": statistics.median(v) for k, v in cpu.items()},
        "ratio": statistics.median(ratio["plain"]),
        "ratio_same_timeout": statistics.median(ratio["plain_timeout"]),
    }


# -- 2. refused primary ------------------------------------------------------------------------------------


def refused_failover(b: Backends, rounds: int, state_file: bool = False) -> Dict[str, Any]:
    """The first request after the primary starts refusing: its cost over a plain request."""
    added = []
    plain = requests.Session()
    plain.get(b.secondary + "/warm")
    directory = tempfile.mkdtemp(prefix="rf-bench-")
    for i in range(rounds):
        b.set("primary", "up")
        state: Any = os.path.join(directory, f"s{i}.json") if state_file else False
        session = FailoverSession([b.primary, b.secondary], state_file=state)
        session.get(b.primary + "/warm")
        session.failover_adapter._selection._flush()  # the warm-up's writes are done
        b.set("primary", "refuse")
        first = timed(lambda s=session: s.get(b.primary + "/first"))
        baseline = statistics.median(timed(lambda: plain.get(b.secondary + "/base")) for _ in range(5))
        added.append((first - baseline) * 1000)
        session.close()
    b.set("primary", "up")
    plain.close()
    return {"added_ms": statistics.median(added), "worst_added_ms": max(added)}


# -- 2b. outages that cost nothing visible ---------------------------------------------------------------------


def reprobe_stall(b: Backends, state_file: bool) -> Dict[str, Any]:
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
    worst, count = 0.0, 0
    end = time.perf_counter() + 3.2
    while time.perf_counter() < end:
        worst = max(worst, timed(lambda: session.get(b.primary + "/x")))
        count += 1
        time.sleep(0.01)
    b.set("primary", "refuse")  # ends the probes' pending connects
    session.close()
    b.set("primary", "up")
    return {"max_ms": worst * 1000, "requests": count}


def failback(b: Backends, outage: float) -> Dict[str, Any]:
    """Seconds from the primary's recovery until every request goes to it again (default settings)."""
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
    stays = all(session.get(b.primary + "/then").json()["server"] == "primary" for _ in range(50))
    session.close()
    return {"seconds": seconds, "stays": stays}


# -- 3 and 4. several processes sharing the file ----------------------------------------------------------------


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


def shared(b: Backends, processes: int, mode: str, count: int = 20) -> Dict[str, Any]:
    """``processes`` workers warm up on the primary; the primary dies (``mode``);
    this process meets the outage first; then the workers send ``count`` requests."""
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
        later = [
            timed(lambda: session.get(b.primary + "/later", headers={"X-Worker": "discoverer"})) for _ in range(20)
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
            "later_paid": sum(1 for t in later if t > 0.5),
            "others_paid": paid,
            "others_reached_dead_primary": reached,
            "others_requests": processes * count,
        }


def simultaneous_blackhole(b: Backends, processes: int = 4, count: int = 200) -> Dict[str, Any]:
    """``processes`` workers hit the primary at the moment it is black-holed (connect timeout 1 s).

    Counts the requests that waited longer than the hedge delay + 100 ms. Without
    the connect race each process pays the whole connect timeout once.
    """
    slow = 0.25 + 0.1
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
        return {"waited": waited, "requests": processes * count}


# -- 5. cold start -------------------------------------------------------------------------------------------


def cold_start(b: Backends, rounds: int) -> Dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        state = os.path.join(tmp, "state.json")
        with FailoverSession([b.primary, b.secondary], state_file=state) as s:
            s.get(b.primary + "/")
        plain_t, disk_t, probe_t = [], [], []
        for _ in range(rounds):
            with requests.Session() as p:
                plain_t.append(timed(lambda p=p: p.get(b.primary + "/cold")))
            with FailoverSession([b.primary, b.secondary], state_file=state) as f:
                disk_t.append(timed(lambda f=f: f.get(b.primary + "/cold")))
            with FailoverSession([b.primary, b.secondary], state_file=False) as f:
                probe_t.append(timed(lambda f=f: f.get(b.primary + "/cold")))
    return {
        "plain_ms": statistics.median(plain_t) * 1000,
        "fresh_on_disk_ms": statistics.median(disk_t) * 1000,
        "no_selection_ms": statistics.median(probe_t) * 1000,
    }


# -- 6. memory -------------------------------------------------------------------------------------------------


def memory(b: Backends) -> Dict[str, Any]:
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
        return size / len(sessions)

    plain = allocated(requests.Session)
    failover = allocated(lambda: FailoverSession([b.primary, b.secondary], state_file=False))
    return {"plain_bytes": plain, "failover_bytes": failover, "added_bytes": failover - plain}


def profile(b: Backends, count: int) -> str:
    session = FailoverSession([b.primary, b.secondary], state_file=False)
    session.get(b.primary + "/")
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(count):
        session.get(b.primary + "/p")
    profiler.disable()
    session.close()
    stream = __import__("io").StringIO()
    stats = pstats.Stats(profiler, stream=stream).sort_stats("tottime")
    stats.print_stats("requests_failover", 12)
    return stream.getvalue()


# -- main ----------------------------------------------------------------------------------------------------------


# -- 5. the fleet store (Redis/Valkey) ---------------------------------------------------------------------------


def _valkey() -> Any:
    from tests._valkey import ValkeyServer

    server = ValkeyServer(tempfile.mkdtemp(prefix="rf-bench-valkey-"))
    server.start()
    return server


def fleet_steady(b: Backends, rounds: int, count: int) -> Dict[str, Any]:
    """Steady state, 1 thread: state file alone vs state file under the Redis store (and Redis down)."""
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
    down_wall: Dict[str, List[float]] = {k: [] for k in variants}
    down = measure(down_wall)
    worst = max(timed(lambda: fleet.get(b.primary + "/down")) for _ in range(200))
    file_only.close()
    fleet.close()
    return {
        "ratio": statistics.median(up),
        "down_ratio": statistics.median(down),
        "file_rps": count / statistics.median(wall["file"]),
        "redis_rps": count / statistics.median(wall["redis"]),
        "down_worst_ms": worst * 1000,
    }


def _watcher(backends: List[str], state: str, url: str, out: Any, stop: Any) -> None:
    session = FailoverSession(backends, state_file=state, state_store=url, cache_ttl=3600, healthy_threshold=100)
    session.get(backends[0] + "/warm")
    selection = session.failover_adapter._selection
    last = selection.sync().current()
    out.send(("ready", last, time.monotonic()))
    while not stop.is_set():
        current = selection.sync().current()  # what the next request of this machine would use
        if current != last:
            last = current
            out.send(("changed", current, time.monotonic()))
        time.sleep(0.0002)
    session.close()


def fleet_propagation(b: Backends, samples: int) -> Dict[str, Any]:
    """From one machine's failover (its request returned) to another machine's next request using it."""
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
    return {
        "p50_ms": statistics.median(times) * 1000,
        "p99_ms": times[min(len(times) - 1, int(len(times) * 0.99))] * 1000,
        "samples": len(times),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--profile", action="store_true", help="profile the hot path too")
    parser.add_argument("--json", action="store_true", help="print the raw figures as JSON")
    args = parser.parse_args()
    rounds, count = (3, 200) if args.quick else (9, 800)

    b = Backends()
    results: Dict[str, Any] = {}
    try:
        results["steady_1_thread"] = steady_state(b, rounds, count, 1)
        results["steady_8_threads"] = steady_state(b, rounds, count, 8)
        results["steady_failed_over"] = steady_state(b, rounds, count, 1, failed_over=True)
        results["observed"] = observed(b, rounds, count)
        results["refused"] = refused_failover(b, rounds)
        results["refused_file"] = refused_failover(b, rounds, state_file=True)
        results["stall_memory"] = reprobe_stall(b, state_file=False)
        results["stall_file"] = reprobe_stall(b, state_file=True)
        results["failback_short"] = failback(b, outage=3.0)
        results["failback_long"] = failback(b, outage=40.0 if not args.quick else 10.0)
        results["blackholed"] = shared(b, 3, "blackhole")
        results["hedged"] = simultaneous_blackhole(b)
        for n in (2, 4, 8):
            results[f"propagation_{n}"] = shared(b, n, "up")
        results["cold"] = cold_start(b, rounds)
        results["memory"] = memory(b)
        results["fleet"] = fleet_steady(b, rounds, count)
        results["fleet_propagation"] = fleet_propagation(b, 40 if args.quick else 200)
        hot = profile(b, 2000) if args.profile else ""
    finally:
        b.close()

    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    r = results
    rows: List[Tuple[str, str, str, str]] = []
    for label, key in (
        ("1 thread", "steady_1_thread"),
        ("8 threads", "steady_8_threads"),
        ("primary dead, 1 thread", "steady_failed_over"),
    ):
        s = r[key]
        fo, plain, timed_plain = s["failover_rps"], s["plain_rps"], s["plain_timeout_rps"]
        cpu = f"{s['failover_cpu_us']:.0f} vs {s['plain_cpu_us']:.0f} us (with timeout {s['plain_timeout_cpu_us']:.0f})"
        rows += [
            (f"steady state, {label}", f"{fo:.0f} vs {plain:.0f} req/s", f"{s['ratio']:.3f}", ">= 0.97"),
            (
                "  plain given our default timeout",
                f"{fo:.0f} vs {timed_plain:.0f} req/s",
                f"{s['ratio_same_timeout']:.3f}",
                ">= 0.97",
            ),
            (f"  client CPU per request, {label}", cpu, f"{s['plain_cpu_us'] / s['failover_cpu_us']:.3f}", ""),
        ]
    refused, holed, refused_file = r["refused"], r["blackholed"], r["refused_file"]
    rows += [
        ("steady state with the Prometheus observer", "vs no observer", f"{r['observed']['ratio']:.3f}", ">= 0.95"),
        (
            "refused primary: first request, added",
            f"{refused['added_ms']:.2f} ms (worst {refused['worst_added_ms']:.2f})",
            "",
            "< 10 ms",
        ),
        (
            "  same, with a state file",
            f"{refused_file['added_ms']:.2f} ms (worst {refused_file['worst_added_ms']:.2f})",
            f"{refused_file['added_ms'] - refused['added_ms']:+.2f} ms",
            "<= +1 ms",
        ),
        (
            "re-probe stall, primary black-holed, 3 cache periods",
            f"max {r['stall_memory']['max_ms']:.1f} ms (memory), {r['stall_file']['max_ms']:.1f} ms (file)",
            "",
            "no request waits 3 s",
        ),
        (
            "failback after recovery, defaults",
            f"{r['failback_short']['seconds']:.1f} s after a 3 s outage, "
            f"{r['failback_long']['seconds']:.1f} s after a longer one"
            + ("" if r["failback_short"]["stays"] and r["failback_long"]["stays"] else " (NOT all back)"),
            "",
            "<= 35 s, 100 % back",
        ),
        (
            "black-holed primary: first request",
            f"{holed['first_ms']:.0f} ms (connect timeout 1 s, hedge 0.25 s)",
            "",
            "a hedge delay",
        ),
        (
            "black-holed at once, 4 processes: waited > hedge + 100 ms",
            f"{r['hedged']['waited']} of {r['hedged']['requests']}",
            "",
            "0",
        ),
        (
            "black-holed: later requests that paid a timeout",
            f"{holed['later_paid']} of 20 here, {holed['others_paid']} of {holed['others_requests']} in 3 others",
            "",
            "0",
        ),
    ]
    for n in (2, 4, 8):
        p = r[f"propagation_{n}"]
        rows.append(
            (
                f"propagation, {n} processes: requests reaching the dead primary",
                f"{p['others_reached_dead_primary']} of {p['others_requests']}",
                "",
                "0",
            )
        )
    c, m = r["cold"], r["memory"]
    rows += [
        (
            "cold start, fresh selection on disk",
            f"{c['fresh_on_disk_ms']:.1f} vs {c['plain_ms']:.1f} ms plain",
            f"{c['fresh_on_disk_ms'] / c['plain_ms']:.2f}",
            "no probe",
        ),
        (
            "cold start, no selection (concurrent probes)",
            f"{c['no_selection_ms']:.1f} vs {c['plain_ms']:.1f} ms plain",
            f"{c['no_selection_ms'] / c['plain_ms']:.2f}",
            "",
        ),
        (
            "memory per session, added",
            f"{m['added_bytes'] / 1024:.1f} KiB ({m['failover_bytes'] / 1024:.1f} vs {m['plain_bytes'] / 1024:.1f})",
            "",
            "",
        ),
    ]
    f, fp = r["fleet"], r["fleet_propagation"]
    rows += [
        (
            "steady state, Redis store vs state file alone",
            f"{f['redis_rps']:.0f} vs {f['file_rps']:.0f} req/s",
            f"{f['ratio']:.3f}",
            ">= 0.98",
        ),
        (
            "  Redis down (killed), after the first detection",
            f"worst request {f['down_worst_ms']:.1f} ms of 200",
            f"{f['down_ratio']:.3f}",
            "0 added",
        ),
        (
            "propagation to another machine through Redis",
            f"p50 {fp['p50_ms']:.1f} ms, p99 {fp['p99_ms']:.1f} ms ({fp['samples']} switches)",
            "",
            "p99 < 100 ms",
        ),
    ]
    width = [max(len(row[i]) for row in rows) for i in range(4)]
    header = ("figure", "failover vs plain", "ratio", "target")
    width = [max(w, len(h)) for w, h in zip(width, header)]
    line = "  ".join("=" * w for w in width)
    print(
        f"requests-failover {requests_failover.__version__}, requests {requests.__version__}, "
        f"Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} cores"
    )
    print(line)
    print("  ".join(h.ljust(w) for h, w in zip(header, width)))
    print(line)
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, width)))
    print(line)
    if hot:
        print("\nhot path (cProfile, 2000 GETs, requests_failover functions by own time):\n")
        print(hot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
