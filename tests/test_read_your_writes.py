"""Read-your-writes: a failure a request discovered is in the shared store before that request returns.

Successes and other bookkeeping stay write-behind; a failure does not: the
next process or session to ask follows it instead of meeting the outage
itself. Each test here fails on 0.2, where everything was written behind.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List

import pytest
import requests

from requests_failover import FailoverSession
from requests_failover.testing import served_by

from ._valkey import free_port
from .conftest import BOUND, background_paused, wait_until


def other_session(kind: str, first: FailoverSession, backends: List[str], state_file: str) -> FailoverSession:
    if kind == "pickled clone":
        return pickle.loads(pickle.dumps(first))  # type: ignore[no-any-return]
    return FailoverSession(backends, state_file=state_file)


@pytest.mark.parametrize("kind", ["second session", "pickled clone"])
def test_a_discovery_is_followed_at_once_by_another_session_on_the_file(primary, secondary, tmp_path, kind):
    backends = [primary.url, secondary.url]
    state_file = str(tmp_path / "s.json")
    with FailoverSession(backends, state_file=state_file) as first:
        assert served_by(first.get(primary.url + "/warm")) == "primary"
        with other_session(kind, first, backends, state_file) as second:
            assert served_by(second.get(primary.url + "/warm")) == "primary"
            primary.set(status=503)  # a dead primary that still counts what it receives
            primary.reset_hits()
            with background_paused():  # nothing is written behind: only what the request itself wrote counts
                assert served_by(first.get(primary.url + "/discover")) == "secondary"
                assert len(primary.requests) == 1, "the first session met the dead primary once"
                assert json.loads(Path(state_file).read_text())["active"] == secondary.url
                for i in range(5):
                    assert served_by(second.get(primary.url + f"/follow/{i}")) == "secondary"
            assert len(primary.requests) == 1, "the other session sent nothing to the dead primary"


def test_a_session_used_after_close_reopens_and_writes_what_it_learns(primary, secondary, tmp_path):
    backends = [primary.url, secondary.url]
    state_file = tmp_path / "s.json"
    session = FailoverSession(backends, state_file=state_file)
    assert served_by(session.get(primary.url + "/warm")) == "primary"
    session.close()
    primary.set(status=503)
    secondary.set(status=503)
    for i in range(20):  # every request meets two failures
        assert session.get(primary.url + f"/after-close/{i}").status_code == 503
    selection = session.failover_adapter._selection
    assert selection._books.unwritten() == 0, "nothing piles up unwritten"
    health = json.loads(state_file.read_text())["health"]
    counts = [health[url]["consecutive_failures"] for url in backends]
    assert min(counts) >= 20, f"the failures after close() reached the file: {counts}"  # (probes may add some)
    primary.set(status=200)
    secondary.set(status=200)
    session.close()
    assert selection._books.unwritten() == 0 and not selection.probes_in_flight()


# -- a real gunicorn ----------------------------------------------------------------------------------------

APP = """
import os
import threading

from requests_failover import FailoverSession
from requests_failover._background import WORKER

BACKENDS = os.environ["TEST_BACKENDS"].split(",")
session = FailoverSession(BACKENDS, state_file=os.environ["TEST_STATE_FILE"])  # at import: --preload
paused_in = []


class Pause:
    # holds this worker's background thread: only what a request writes itself is shared
    def _tick(self):
        threading.Event().wait()

    def _flush(self):
        pass

    def _stop(self, deadline):
        pass


PAUSE = Pause()


def app(environ, start_response):
    if os.getpid() not in paused_in:
        paused_in.append(os.getpid())
        WORKER.add(PAUSE)
    answer = session.get(BACKENDS[0] + environ["PATH_INFO"], timeout=(2, 5))
    body = ("%s %s %d" % (answer.json()["server"], os.getpid(), answer.status_code)).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""


@pytest.fixture
def gunicorn_app(tmp_path: Path, primary, secondary) -> Iterator[Callable[[str], str]]:
    """A gunicorn server (--preload, 3 sync workers) whose app sends every request through one FailoverSession."""
    pytest.importorskip("gunicorn")
    (tmp_path / "failover_app.py").write_text(APP)
    port = free_port()
    env = dict(os.environ)
    env.update(
        TEST_BACKENDS=f"{primary.url},{secondary.url}",
        TEST_STATE_FILE=str(tmp_path / "state.json"),
        PYTHONPATH=os.pathsep.join([str(tmp_path), os.getcwd(), env.get("PYTHONPATH", "")]),
    )
    args = ["--preload", "--workers", "3", "--bind", f"127.0.0.1:{port}", "--log-level", "warning"]
    with open(tmp_path / "gunicorn.log", "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", *args, "failover_app:app"], cwd=tmp_path, env=env, stdout=log, stderr=log
        )
    http = requests.Session()

    def get(path: str) -> str:
        response = http.get(f"http://127.0.0.1:{port}{path}", timeout=BOUND, headers={"Connection": "close"})
        assert response.status_code == 200, response.text
        return response.text

    try:

        def answers() -> bool:
            try:
                get("/ready")
            except requests.ConnectionError:
                assert server.poll() is None, (tmp_path / "gunicorn.log").read_text()
                return False
            return True

        wait_until(answers, "gunicorn answering")
        yield get
    finally:
        http.close()
        server.terminate()
        try:
            server.wait(BOUND)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(BOUND)


def test_one_gunicorn_worker_discovers_an_outage_and_the_others_follow(gunicorn_app, primary, secondary):
    """Always: once one worker has met the outage, no other worker sends a request to the dead primary.

    The workers' background threads are held (see APP): how soon a write behind would have
    landed does not decide the outcome; the discovering request itself published the outage."""
    get = gunicorn_app
    pids = set()

    def every_worker_served() -> bool:  # then each holds the selection (primary)
        server, pid, _ = get("/warm").split()
        assert server == "primary"
        pids.add(pid)
        return len(pids) == 3

    wait_until(every_worker_served, "all three workers answering")
    primary.set(status=503)  # dead, and it counts every request it still receives
    primary.reset_hits()
    secondary.reset_hits()
    assert get("/discover").split()[0] == "secondary"
    burst: Dict[str, int] = {}
    for i in range(30):
        server, pid, _ = get(f"/burst/{i}").split()
        assert server == "secondary"
        burst[pid] = burst.get(pid, 0) + 1
    assert len(burst) >= 2, "the burst reached more than one worker"
    assert [h.path for h in primary.requests] == ["/discover"], "one worker discovered; the others followed the file"
    assert len(secondary.requests) == 31


# -- the caller's timeout bounds the first probe round ------------------------------------------------------


@pytest.mark.parametrize("mode", ["blackhole", "hang"])
def test_the_first_request_ever_waits_no_longer_than_its_timeout_allows(primary, secondary, tmp_path, mode):
    backends = [primary.url, secondary.url]
    primary.set(mode)
    secondary.set(mode)
    session = FailoverSession(backends, state_file=str(tmp_path / "s.json"), health_timeout=20)
    try:
        started = time.monotonic()
        with pytest.raises(requests.exceptions.RequestException):
            session.get(primary.url + "/first", timeout=0.5)
        took = time.monotonic() - started
    finally:
        closing = time.monotonic()
        session.close()
        closed = time.monotonic() - closing
    # one plain request with timeout=0.5 takes at most connect + read = 1 s; a probe takes up to 20 s
    assert took < 5.0, f"the first request took {took:.1f} s with timeout=0.5"
    assert closed < 5.0, f"close() took {closed:.1f} s with probes in flight"
