"""Background work: stale-while-revalidate, failback in seconds, write-behind, lifecycle.

Time-dependent behaviour runs on the test clock (``set_testing(True,
clock=...)`` through ``make_session``) and waits for the background thread
with ``settle()``: no test waits for real time to pass.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import threading
import time
from typing import Any, Callable, List

import pytest

from requests_failover import FailoverSession, _state
from requests_failover.testing import served_by, set_testing, settle

from .conftest import BOUND, Clock, wait_until

Make = Callable[..., FailoverSession]


def fail_primary(session: FailoverSession, primary, secondary) -> None:
    assert served_by(session.get(primary.url + "/warm")) == "primary"
    primary.set("refuse")
    assert served_by(session.get(primary.url + "/fail")) == "secondary"
    settle(session)


def test_no_request_waits_for_a_probe_of_a_black_holed_primary(make_session: Make, primary, secondary, clock: Clock):
    session = make_session([primary.url, secondary.url], cache_ttl=60, health_timeout=30)
    fail_primary(session, primary, secondary)
    primary.set("blackhole")  # a probe's connect now hangs for its whole timeout
    clock.advance(61)  # stale, and the primary's down time is over: probes are due
    session.get(primary.url + "/nudge")
    wait_until(lambda: session.status()["health_checking"], "a background probe in flight")
    for i in range(5):
        assert served_by(session.get(primary.url + f"/during/{i}")) == "secondary"
    assert session.status()["health_checking"], "the requests completed while the probe was still open"
    primary.set("refuse")  # the pending connects fail at once: close() need not wait 30 s


def test_failback_needs_healthy_threshold_consecutive_probes(make_session: Make, primary, secondary, clock, events):
    session = make_session([primary.url, secondary.url], slow_start=0)  # a step failback (test_gray ramps)
    fail_primary(session, primary, secondary)
    primary.set("up")
    probes = len(primary.probes)
    clock.advance(1)  # the primary's down time (1 s) is over: a failback probe is due
    settle(session)
    assert len(primary.probes) == probes + 1
    assert session.active_backend == secondary.url, "no failback on a single healthy probe"
    clock.advance(1)  # the confirmation probe
    settle(session)
    assert len(primary.probes) == probes + 2
    assert session.active_backend == primary.url
    assert (events[-1].previous, events[-1].current) == (secondary.url, primary.url)
    assert "healthy again" in events[-1].reason
    assert served_by(session.get(primary.url + "/back")) == "primary"


def test_healthy_threshold_is_an_option(make_session: Make, primary, secondary, clock):
    session = make_session([primary.url, secondary.url], healthy_threshold=3)
    fail_primary(session, primary, secondary)
    primary.set("up")
    for _ in range(2):
        clock.advance(1)
        settle(session)
        assert session.active_backend == secondary.url
    clock.advance(1)
    settle(session)
    assert session.active_backend == primary.url


def test_a_flapping_primary_waits_longer_each_time(make_session: Make, primary, secondary, clock):
    # a step failback: every request goes to the primary, so each flap is met at once (test_gray ramps)
    session = make_session([primary.url, secondary.url], slow_start=0)
    session.get(primary.url + "/warm")
    waits: List[int] = []
    for _ in range(4):
        primary.set("refuse")
        assert served_by(session.get(primary.url + "/flap")) == "secondary"
        primary.set("up")
        seconds = 0
        while session.active_backend != primary.url:
            clock.advance(1)
            seconds += 1
            settle(session)
            assert seconds < 200, "never failed back"
        waits.append(seconds)
    assert waits == sorted(waits) and waits[-1] >= 2 * waits[0], f"failback waits {waits}: no growing backoff"


def test_failback_is_fast_in_testing_mode_with_the_real_clock(primary, secondary):
    with set_testing(True), FailoverSession([primary.url, secondary.url], state_file=False) as session:
        fail_primary(session, primary, secondary)
        primary.set("up")
        wait_until(lambda: session.active_backend == primary.url, "failback (intervals are 1/100 in testing mode)")


def test_a_failure_is_written_before_the_request_returns_and_bookkeeping_behind(
    primary, secondary, tmp_path, monkeypatch
):
    """Always: a failure is in the file before its request returns; a success never writes on the request's thread."""
    writers: List[str] = []
    real_write = _state.FileStore._write

    def write(self: Any, state: Any) -> None:
        writers.append(threading.current_thread().name)
        real_write(self, state)

    monkeypatch.setattr(_state.FileStore, "_write", write)
    path = tmp_path / "s.json"
    with FailoverSession([primary.url, secondary.url], state_file=path) as session:
        session.get(primary.url + "/warm")
        settle(session)
        writers.clear()
        primary.set("refuse")
        me = threading.current_thread().name
        assert served_by(session.get(primary.url + "/x")) == "secondary"
        assert writers == [me], "the discovery was written on the request's thread, once"
        assert '"active": "' + secondary.url + '"' in path.read_text(), "in the file before the request returned"
        settle(session)
        writers.clear()
        for i in range(5):
            assert served_by(session.get(primary.url + f"/more/{i}")) == "secondary"
        settle(session)
        assert me not in writers, "successes never write on the request's thread"


CLOSE_SCRIPT = """
import gc, time
from requests_failover import FailoverSession
from requests_failover.testing import LoopbackBackend, set_testing

set_testing(True)  # failback probe intervals are 1/100: the next probe comes in ~10 ms
with LoopbackBackend("p") as p, LoopbackBackend("s") as s:
    session = FailoverSession([p.url, s.url], state_file=False, health_timeout=2.0)
    session.get(p.url + "/warm")
    p.set("refuse")
    session.get(p.url + "/fail")
    probes = len(p.probes)
    p.set("hang")  # the next probe is read and never answered: in flight at close
    deadline = time.monotonic() + 60
    while len(p.probes) == probes:
        assert time.monotonic() < deadline, "no failback probe"
        time.sleep(0.002)
    assert p.open_connections() == 1
    session.close()
    assert not session.failover_adapter._selection.probes_in_flight(), "close() returned with a probe in flight"
    del session
    gc.collect()
print("closed")
"""


def test_close_with_a_probe_in_flight_leaves_no_socket():
    env = {k: v for k, v in os.environ.items() if not k.startswith("REQUESTS_FAILOVER")}
    args = [sys.executable, "-X", "dev", "-W", "error::ResourceWarning", "-c", CLOSE_SCRIPT]
    result = subprocess.run(args, capture_output=True, text=True, timeout=BOUND, env=env)
    assert result.returncode == 0 and "closed" in result.stdout, result.stderr
    assert "ResourceWarning" not in result.stderr and "unclosed" not in result.stderr, result.stderr


def test_the_background_thread_never_keeps_the_interpreter_alive(primary, secondary):
    script = (
        "from requests_failover import FailoverSession\n"
        f"s = FailoverSession({[primary.url, secondary.url]!r}, state_file=False)\n"
        f"s.get({primary.url + '/x'!r})\n"
        "import threading\n"
        "assert any(t.name == 'requests-failover' and t.daemon for t in threading.enumerate())\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=BOUND)
    assert result.returncode == 0, result.stderr


def _child_after_fork(session: FailoverSession, primary_url: str, results: Any) -> None:
    before = [t.ident for t in threading.enumerate() if t.name == "requests-failover"]
    answer = served_by(session.get(primary_url + "/in-child"))
    settle(session)
    after = [t.ident for t in threading.enumerate() if t.name == "requests-failover"]
    results.put((before, after, answer, session.active_backend))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")  # the point
def test_fork_while_the_background_thread_runs(primary, secondary, tmp_path):
    ctx = multiprocessing.get_context("fork")
    with FailoverSession([primary.url, secondary.url], state_file=tmp_path / "s.json") as session:
        fail_primary(session, primary, secondary)  # the parent's thread now runs failback probes
        parent_threads = [t.ident for t in threading.enumerate() if t.name == "requests-failover"]
        assert parent_threads
        results = ctx.Queue()
        child = ctx.Process(target=_child_after_fork, args=(session, primary.url, results))
        child.start()
        before, after, answer, active = results.get(timeout=BOUND)
        child.join(BOUND)
        assert child.exitcode == 0
    assert before == [], "the child inherited no running background thread"
    assert len(after) == 1, "the child started its own"
    assert answer == "secondary" and active == secondary.url


SOCKETS_SCRIPT = """
import os, sys, time
from requests_failover import FailoverSession
from requests_failover.testing import LoopbackBackend


def client_sockets(ports):
    # sockets of this process connected (or connecting) to one of ``ports``
    inodes = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink("/proc/self/fd/" + name)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with open(table) as handle:
            for line in handle.read().splitlines()[1:]:
                fields = line.split()
                if fields[9] in inodes and int(fields[2].rsplit(":", 1)[1], 16) in ports:
                    found += 1
    return found


for run in range(3):
    for first, second in ((("blackhole",), {}), ((), {"delay": 20.0})):
        with LoopbackBackend("p") as p, LoopbackBackend("s") as s:
            p.set(*first)
            s.set(**second)
            ports = {p.port, s.port}
            before = client_sockets(ports)  # the black hole's own filler connection, if any
            session = FailoverSession([p.url, s.url], state_file=False, health_timeout=30)
            session.get(p.url + "/first", timeout=(30, 30))
            deadline = time.monotonic() + 60
            while len(s.probes) == 0 or client_sockets(ports) == before:
                assert time.monotonic() < deadline, "no probe in flight"
                time.sleep(0.002)
            assert session.status()["health_checking"] or session.failover_adapter._selection.probes_in_flight()
            started = time.monotonic()
            session.close()
            took = time.monotonic() - started
            left = client_sockets(ports) - before
            print(run, first or second, round(took, 3), left)
            assert left == 0, f"{left} socket(s) outlived close()"
            assert took < 5.0, f"close() took {took:.1f} s"
print("closed")
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/net/tcp"), reason="counts sockets through /proc")
def test_close_ends_the_probes_in_flight_promptly_and_no_socket_outlives_it():
    env = {k: v for k, v in os.environ.items() if not k.startswith("REQUESTS_FAILOVER")}
    result = subprocess.run(
        [sys.executable, "-c", SOCKETS_SCRIPT], capture_output=True, text=True, timeout=5 * BOUND, env=env
    )
    assert result.returncode == 0 and "closed" in result.stdout, result.stdout + result.stderr


def test_the_session_fixture_tears_down_a_black_holed_backend_at_once(failover_session, failover_primary):
    failover_primary.set("blackhole")
    session = failover_session(health_timeout=20)
    assert served_by(session.get(failover_primary.url + "/first")) == "secondary"
    assert session.failover_adapter._selection.probes_in_flight(), "the primary's probe is still in flight"
    started = time.monotonic()
    session.close()  # what the fixture's teardown does
    took = time.monotonic() - started
    assert took < 5.0, f"close() waited {took:.1f} s for a probe of a black hole"
    assert not session.failover_adapter._selection.probes_in_flight()


def test_cache_ttl_zero_probes_once_a_second_at_most(primary, secondary):
    floor = 1.0  # seconds: the documented floor of the background probe interval
    started = time.monotonic()
    with FailoverSession([primary.url, secondary.url], state_file=False, cache_ttl=0) as session:
        session.get(primary.url + "/one")  # then idle: only the background thread probes
        wait_until(lambda: len(primary.probes) >= 3, "background rounds go on")
        rounds = len(primary.probes)
        elapsed = time.monotonic() - started
    assert rounds <= elapsed / floor + 2, f"{rounds} probe rounds in {elapsed:.2f} s"


def test_a_clock_stepping_back_pins_no_backend_longer_than_the_clamp(make_session: Make, primary, secondary, clock):
    session = make_session([primary.url, secondary.url], state_file=False)
    assert served_by(session.get(primary.url + "/warm")) == "primary"
    primary.set(status=503, retry_after=60)
    assert served_by(session.get(primary.url + "/busy")) == "secondary"
    primary.set(status=200, headers={})
    clock.advance(-3600)  # the wall clock steps back an hour (NTP, a VM resumed)
    settle(session)
    seconds = 0
    while session.active_backend != primary.url:
        clock.advance(1)
        seconds += 1
        settle(session)
        assert seconds <= 200, "the primary is still pinned down after 200 s"
    assert seconds <= 60 + 5, f"failback after {seconds} s: the clamp is the Retry-After cap, 60 s"
