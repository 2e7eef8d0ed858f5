"""FailoverSession next to the libraries users combine with a requests.Session.

Each test uses the real library and real loopback servers: requests-mock's
Mocker, requests-cache (wrap and mixin), CacheControl, requests-toolbelt's
streaming upload, copy.copy, and fork after the parent used the session.
"""

from __future__ import annotations

import copy
import gc
import multiprocessing
import os

import pytest
import requests
import requests_mock
from requests.adapters import HTTPAdapter

from requests_failover import FailoverSession

from .conftest import BOUND, wait_for_child


def _warm(session: FailoverSession, primary) -> None:
    assert session.get(primary.url + "/warm-up").json()["server"] == "primary"


def test_failover_survives_a_requests_mock_block(primary, secondary):
    # Mocker restores get_adapter as an instance attribute when it ends: the
    # failover adapter must be found by requests' own lookup, i.e. mounted.
    with FailoverSession([primary.url, secondary.url], state_file=False) as session:
        with requests_mock.Mocker() as mocker:
            mocker.get(primary.url + "/x", text="mocked")
            assert session.get(primary.url + "/x").text == "mocked"
        assert "get_adapter" in vars(session), "the Mocker left its instance attribute behind"
        _warm(session, primary)
        primary.set("refuse")
        assert session.get(primary.url + "/x").json()["server"] == "secondary"


def test_requests_cache_wrap_keeps_failover(primary, secondary):
    requests_cache = pytest.importorskip("requests_cache")
    original = FailoverSession([primary.url, secondary.url], state_file=False)
    with requests_cache.CachedSession.wrap(original, backend="memory") as session:
        assert session.get(primary.url + "/a").json()["server"] == "primary"
        primary.set("refuse")
        assert session.get(primary.url + "/b").json()["server"] == "secondary"
        assert session.get(primary.url + "/a").json()["server"] == "primary", "the cache still answers /a"
        assert [h.path for h in secondary.hits(health=False)] == ["/b"]
    original.close()


def test_requests_cache_mixin_subclass_keeps_every_option(primary, secondary, tmp_path):
    requests_cache = pytest.importorskip("requests_cache")

    class CachedFailoverSession(requests_cache.CacheMixin, FailoverSession):
        pass

    state_file = tmp_path / "state.json"
    switches = []
    session = CachedFailoverSession(
        backends=[primary.url, secondary.url],
        backend="memory",
        state_file=state_file,
        health_paths=("/status",),
        on_switch=switches.append,
    )
    with session:
        assert session.status()["state_file"] == str(state_file)
        session.force_refresh()
        assert [h.path for h in primary.hits(health=True)] == ["/status"], "health_paths reached the adapter"
        primary.set("refuse")
        assert session.get(primary.url + "/x").json()["server"] == "secondary"
        assert [(e.previous, e.current) for e in switches] == [(primary.url, secondary.url)]
        assert state_file.exists()


def test_cachecontrol_never_answers_a_health_probe(primary, secondary):
    cachecontrol = pytest.importorskip("cachecontrol")
    from cachecontrol.heuristics import ExpiresAfter

    session = cachecontrol.CacheControl(
        FailoverSession([primary.url, secondary.url], state_file=False), heuristic=ExpiresAfter(days=1)
    )
    with session:
        assert session.force_refresh() == primary.url
        assert session.get(primary.url + "/data").json()["server"] == "primary"
        assert session.get(primary.url + "/data").json()["server"] == "primary"
        assert [h.path for h in primary.hits(health=False)] == ["/data"], "the user's cache answered the repeat"
        primary.set("refuse")
        assert session.force_refresh() == secondary.url, "a cached probe answer would keep the dead primary"
        first = session.status()["backends"][0]
        assert first["healthy"] is False
        assert all(h.headers.get("Cache-Control") == "no-cache" for h in secondary.hits(health=True))


def test_copy_of_a_session_leaves_the_original_intact(primary, secondary):
    class Recording(HTTPAdapter):
        def __init__(self) -> None:
            super().__init__()
            self.urls = []

        def send(self, request, **kwargs):
            self.urls.append(request.url)
            return super().send(request, **kwargs)

    with FailoverSession([primary.url, secondary.url], state_file=False) as session:
        mine = Recording()
        session.mount("http://", mine)
        clone = copy.copy(session)
        assert clone.get(primary.url + "/from-clone").json()["server"] == "primary"
        del clone
        gc.collect()
        assert session.get(primary.url + "/from-original").json()["server"] == "primary"
        assert mine.urls[-1] == primary.url + "/from-original", "the original still sends through its adapter"
        primary.set("refuse")
        assert session.get(primary.url + "/after").json()["server"] == "secondary"
        assert mine.urls[-1] == secondary.url + "/after"


def test_a_generator_body_fails_over_when_the_primary_refuses(primary, secondary):
    with FailoverSession([primary.url, secondary.url], state_file=False) as session:
        _warm(session, primary)
        primary.set("refuse")

        def chunks():
            yield b"part one, "
            yield b"part two"

        response = session.post(primary.url + "/upload", data=chunks())
        assert response.json() == {
            "server": "secondary",
            "method": "POST",
            "path": "/upload",
            "body": "part one, part two",
        }
        assert [h.body for h in secondary.hits(health=False)] == [b"part one, part two"]


def test_a_streaming_multipart_upload_fails_over_when_the_primary_refuses(primary, secondary):
    toolbelt = pytest.importorskip("requests_toolbelt")
    with FailoverSession([primary.url, secondary.url], state_file=False) as session:
        _warm(session, primary)
        primary.set("refuse")
        encoder = toolbelt.MultipartEncoder(fields={"name": "report", "file": ("r.txt", b"line 1\nline 2\n")})
        response = session.post(primary.url + "/files", data=encoder, headers={"Content-Type": encoder.content_type})
        assert response.json()["server"] == "secondary"
        (hit,) = secondary.hits(health=False)
        assert b"line 1\nline 2\n" in hit.body and b'name="name"' in hit.body


def test_a_consumed_generator_body_is_not_sent_twice(primary, secondary):
    # The primary reads the whole body and resets: it may have acted on it.
    with FailoverSession([primary.url, secondary.url], state_file=False) as session:
        _warm(session, primary)
        primary.set("reset")
        with pytest.raises(requests.exceptions.ConnectionError):
            session.put(primary.url + "/once", data=(c for c in [b"a", b"b"]))
        assert [h.body for h in primary.hits(health=False) if h.path == "/once"] == [b"ab"]
        assert secondary.hits(health=False) == []


# -- fork after use ----------------------------------------------------------------------------------

_forked_session = None


def _child(primary_url: str, results) -> None:
    session = _forked_session
    assert session is not None
    wrong = []
    for i in range(10):
        tag = f"{os.getpid()}-{i}"
        answer = session.get(primary_url + f"/req/{tag}", timeout=(2, 10)).json()
        if answer["path"] != f"/req/{tag}" or answer["server"] != "primary":
            wrong.append((tag, answer))
    backends = session.status()["backends"]
    results.put((os.getpid(), wrong, [b["consecutive_failures"] for b in backends], session.active_backend))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")  # the point
def test_forked_children_never_share_the_parents_connections(primary, secondary, tmp_path):
    global _forked_session
    ctx = multiprocessing.get_context("fork")
    with FailoverSession([primary.url, secondary.url], state_file=tmp_path / "state.json") as session:
        _warm(session, primary)  # the parent now holds a pooled keep-alive connection
        (warm,) = primary.hits(health=False)
        _forked_session = session
        results = ctx.Queue()
        children = [ctx.Process(target=_child, args=(primary.url, results)) for _ in range(3)]
        for child in children:
            child.start()
        reports = [results.get(timeout=BOUND) for _ in children]
        for child in children:
            child.join(timeout=BOUND)
            assert child.exitcode == 0
        _forked_session = None
        for pid, wrong, failures, active in reports:
            assert wrong == [], f"child {pid} got another request's answer"
            assert failures == [0, 0] and active == primary.url, "no backend was marked down"
        child_hits = [h for h in primary.hits(health=False) if h.path.startswith("/req/")]
        assert len(child_hits) == 30
        assert warm.client_port not in {h.client_port for h in child_hits}, "a child used the parent's socket"
        assert session.get(primary.url + "/parent-again").json()["path"] == "/parent-again"


def test_an_adapter_mounted_at_a_backends_own_prefix_sends_for_it(primary, secondary):
    class Tagging(HTTPAdapter):
        def send(self, request, **kwargs):
            request = request.copy()
            request.headers["X-Sent-By"] = "mine"
            return super().send(request, **kwargs)

    with FailoverSession([primary.url, secondary.url], state_file=False) as session:
        session.mount(primary.url, Tagging())
        assert session.get_adapter(primary.url + "/x") is session.failover_adapter
        assert session.get(primary.url + "/x").json()["server"] == "primary"
        assert primary.hits(health=False)[-1].headers.get("X-Sent-By") == "mine"
        primary.set("refuse")
        assert session.get(primary.url + "/y").json()["server"] == "secondary"
        assert "X-Sent-By" not in secondary.hits(health=False)[-1].headers, "it covers the primary only"


def test_session_close_closes_the_failover_adapter_once(primary, secondary):
    session = FailoverSession([primary.url, secondary.url], state_file=False)
    closed = []
    original = session.failover_adapter.close
    session.failover_adapter.close = lambda: (closed.append(1), original())  # type: ignore[method-assign]
    session.close()
    assert closed == [1]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")  # the point
def test_a_child_forked_while_the_parents_locks_are_held_still_fails_over(primary, secondary):
    """Always: a lock that a thread of the parent held at fork() never blocks the child.

    The retry budget's lock (taken by every failed attempt) and the connect times' lock
    (taken by every new connection) are held across the fork, as a thread of the parent
    in the middle of a request would hold them."""
    with FailoverSession([primary.url, secondary.url], state_file=False) as session:
        session.get(primary.url + "/warm")
        primary.set("refuse")  # the child's request fails over: a failed attempt, a new connection
        dispatcher = session.failover_adapter._dispatcher
        held = [dispatcher._budget._lock, dispatcher._racer._connect_times._lock, session._environment._scan_lock]
        for lock in held:
            lock.acquire()
        try:
            pid = os.fork()
            if pid == 0:  # the child: exit 0 only if the request failed over
                status = 1
                try:
                    answer = session.get(primary.url + "/child", timeout=(2, 5)).json()
                    status = 0 if answer["server"] == "secondary" else 1
                finally:
                    os._exit(status)
        finally:
            for lock in held:
                lock.release()
        code = wait_for_child(pid, "hung on a lock it inherited")
        assert code == 0, "the child's request failed over to the secondary"
