"""Each part behind Selection on its own: the books, the prober, the reporter, probe configuration.

No background thread and no server: the books are driven by direct calls,
the prober sends through a recording stand-in, so what each part does is
seen without the others.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Dict, List, Tuple

import requests

from requests_failover import _policy
from requests_failover._books import CHANGED_ELSEWHERE, Books
from requests_failover._config import build_options
from requests_failover._health import PROBE_RACE_FACTOR, ProbeConfig, ProbeSettings
from requests_failover._policy import State
from requests_failover._prober import Prober
from requests_failover._report import Reporter
from requests_failover._state import FileStore, Lease, MemoryStore
from requests_failover.events import SwitchEvent

A, B = "http://127.0.0.1:1", "http://127.0.0.1:2"
Changes = List[Tuple[str, str, str]]


def books_on(path: Any, changes: Changes) -> Books:
    options = build_options([A, B], state_file=str(path))
    return Books(options, lambda p, c, why: changes.append((p.current(), c.current(), why)), clock=lambda: 1000.0)


def test_an_update_is_applied_in_memory_at_once_and_written_by_the_next_flush(tmp_path):
    changes: Changes = []
    books = books_on(tmp_path / "s.json", changes)
    books.update(lambda s: _policy.mark_failed(s, A, "refused", 1000.0), "refused", wake=False)
    assert books.state.current() == B
    assert changes == [(A, B, "refused")]
    assert books.unwritten() == 1 and not (tmp_path / "s.json").exists()  # written behind, not yet
    books.flush()
    assert books.unwritten() == 0
    assert json.loads((tmp_path / "s.json").read_bytes())["active"] == B


def test_another_processs_change_is_adopted_with_our_unwritten_updates_on_top(tmp_path):
    changes: Changes = []
    books = books_on(tmp_path / "s.json", changes)
    books.update(lambda s: _policy.mark_failed(s, B, "refused", 1000.0), "B refused", wake=False)
    other = FileStore(str(tmp_path / "s.json"))  # another process's writer
    other.update(lambda s: _policy.mark_failed(s, A, "A refused elsewhere", 1000.0), State((A, B)), 1000.0)
    state = books.sync()
    assert (state.record(A).last_error, state.record(B).last_error) == ("A refused elsewhere", "refused")
    assert books.unwritten() == 1  # ours still to be written, over the file's
    books.flush()
    stored = json.loads((tmp_path / "s.json").read_bytes())["health"]
    assert (stored[A]["last_error"], stored[B]["last_error"]) == ("A refused elsewhere", "refused")
    assert changes[-1][2] == CHANGED_ELSEWHERE or changes[-1][2] == "B refused"


def test_after_close_updates_stay_in_memory_and_nothing_piles_up(tmp_path):
    books = books_on(tmp_path / "s.json", [])
    books.close()
    books.update(lambda s: _policy.mark_failed(s, A, "refused", 1000.0), "refused", wake=False)
    assert books.unwritten() == 0 and books.state.current() == B
    assert books.reopen() is True and books.reopen() is False


class Recorder:
    """A stand-in sender: answers 200 to every probe and records the keyword arguments it was given."""

    def __init__(self) -> None:
        self.calls: List[Dict[str, Any]] = []
        self.lock = threading.Lock()

    def __call__(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        with self.lock:
            self.calls.append(kwargs)
        response = requests.Response()
        response.status_code = 200
        response.raw = None
        response._content = b"ok"
        response.request = request
        return response


def test_the_first_requests_settings_are_every_background_probes_settings():
    options = build_options([A, B], state_file=False, health_paths=("/health",))
    books = Books(options, lambda p, c, why: None)
    sender = Recorder()
    prober = Prober(options, sender, books, lambda result: None)
    first = {"verify": "/first/ca.pem", "cert": None, "proxies": {"http": "http://proxy:3128"}}

    class Client:
        def _tick(self) -> None:
            return None

        def _flush(self) -> None:
            pass

        def _stop(self, deadline: float) -> None:
            pass

    client = Client()
    prober.register(client, first)
    prober.register(client, {"verify": False, "cert": None, "proxies": {}})  # a later request: no change
    try:
        assert prober.settings == ProbeSettings(first)
        prober._background_round()  # a background round, on this thread
        prober.stop(float("inf"))
        assert sender.calls and all(call["verify"] == "/first/ca.pem" for call in sender.calls)
        assert {call["proxies"]["http"] for call in sender.calls} == {"http://proxy:3128"}
        assert books.state.checked_at is not None
    finally:
        prober.unregister(client)


def test_the_reporter_announces_a_switch_once_and_never_a_non_change():
    events: List[Any] = []
    options = build_options([A, B], state_file=False, observers=[events.append])
    reporter = Reporter(options, lambda: 5.0)
    before = State((A, B))
    after = _policy.mark_failed(before, A, "refused", 1.0)
    reporter.announce(before, before, "nothing")
    reporter.announce(before, after, "refused")
    assert events == [SwitchEvent(A, B, "refused", 5.0)]


def test_the_probe_configuration_is_derived_once_from_the_options():
    options = build_options([A, B], health_paths=("/a", "/b"), health_timeout=3.0, hedge_delay=0.25)
    config = ProbeConfig.of(options)
    assert (config.paths, config.timeout, config.race_after) == (("/a", "/b"), 3.0, PROBE_RACE_FACTOR * 0.25)
    assert ProbeConfig.of(build_options([A, B], hedge_delay=None)).race_after is None


def test_a_local_store_has_no_leases_the_claim_in_the_state_decides():
    assert MemoryStore().lease("round", "me", 1.0) is Lease.LOCAL
