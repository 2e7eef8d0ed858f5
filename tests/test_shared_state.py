"""One selection file shared by real processes (contract section 6)."""

from __future__ import annotations

import json
import os
import signal
import stat
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Dict, List

import pytest

from requests_failover import FailoverSession
from requests_failover._state import FORMAT_VERSION, default_path
from requests_failover.testing import LoopbackBackend, settle

from . import _workers
from .conftest import BOUND, SPAWN, Worker, root, wait_for_child, wait_until


@pytest.fixture
def state_file(tmp_path: Path) -> str:
    return str(tmp_path / "state" / "selection.json")


def hits_from(server: LoopbackBackend, worker: str) -> int:
    return len([h for h in server.hits() if h.headers.get("X-Worker") == worker])


def read(path: str) -> Dict[str, Any]:
    with open(path, "rb") as handle:
        return dict(json.load(handle))


def wait_for_file(path: str, predicate: Any, what: str) -> Dict[str, Any]:
    """The file once ``predicate(document)`` holds; writes are write-behind (milliseconds)."""
    found: List[Dict[str, Any]] = []

    def shows() -> bool:
        try:
            document = read(path)
        except (OSError, ValueError):  # not written yet, or caught between two writes
            return False
        if predicate(document):
            found.append(document)
        return bool(found)

    wait_until(shows, f"the state file showing {what}")
    return found[0]


def make_stale(path: str) -> None:
    document = read(path)
    document["checked_at"] -= 10_000
    tmp = path + ".test-tmp"
    with open(tmp, "w") as handle:
        json.dump(document, handle)
    os.replace(tmp, path)


# -- propagation ---------------------------------------------------------------------------------------------


def test_switch_in_one_process_is_used_by_the_next_request_of_another(primary, secondary, state_file, workers):
    backends = [primary.url, secondary.url]
    a = Worker(backends, "A", state_file=state_file)
    b = Worker(backends, "B", state_file=state_file)
    workers += [a, b]
    assert a.get("/warmup").server == "primary"
    assert b.get("/warmup").server == "primary"
    primary.set("refuse")
    assert a.get("/after").server == "secondary", "A meets the dead primary and switches"
    wait_for_file(state_file, lambda d: d["active"] == secondary.url, "A's switch")  # written behind A's request
    primary.set("up")  # were B to try the primary, the primary would now count it
    primary.reset_hits()
    assert b.get("/after").server == "secondary", "B uses A's switch"
    assert hits_from(primary, "B") == 0 and primary.hits(health=True) == [], "B never touched the primary"
    assert b.status()["active_backend"] == secondary.url


def test_fresh_process_with_fresh_selection_on_disk_sends_no_probe(primary, secondary, state_file, workers):
    backends = [primary.url, secondary.url]
    with FailoverSession(backends, state_file=state_file) as session:
        session.get(primary.url + "/")
    probes = len(primary.hits(health=True)) + len(secondary.hits(health=True))
    worker = Worker(backends, "fresh", state_file=state_file)
    workers.append(worker)
    assert worker.get("/x").server == "primary"
    assert len(primary.hits(health=True)) + len(secondary.hits(health=True)) == probes


def test_stale_selection_is_probed_once_by_six_processes(primary, secondary, state_file, workers):
    """Always: one probe round for all processes sharing a stale file, each serving from it meanwhile."""
    backends = [primary.url, secondary.url]
    with FailoverSession(backends, state_file=state_file) as session:
        session.get(primary.url + "/")
    six = [Worker(backends, f"w{i}", state_file=state_file) for i in range(6)]
    workers += six
    for worker in six:
        assert worker.get("/fresh").outcome == "ok"
    make_stale(state_file)
    primary.reset_hits()
    secondary.reset_hits()
    for worker in six:
        worker.send_get("/stale")
    assert [w.result().server for w in six] == ["primary"] * 6, "served at once by the stale selection"
    wait_for_file(state_file, lambda d: d["checked_at"] > time.time() - 600, "a new probe round")
    wait_until(  # the secondary's probe may come late
        lambda: bool(primary.hits(health=True) and secondary.hits(health=True)),
        "the probe round reaching both backends",
    )
    for worker in six:  # each process looks at the file again: still no second round
        assert worker.get("/after").server == "primary"
    assert [h.path for h in primary.hits(health=True)] == ["/health"], "one probe round, not six"
    assert [h.path for h in secondary.hits(health=True)] == ["/health"]


def test_state_survives_restarts_and_is_shared_by_sessions_in_one_process(primary, secondary, state_file):
    backends = [primary.url, secondary.url]
    primary.set("refuse")
    with FailoverSession(backends, state_file=state_file) as first:
        first.get(primary.url + "/")
    with FailoverSession(backends, state_file=state_file) as second:
        assert second.active_backend == secondary.url
        assert second.status()["cache_valid"] is True
        assert second.status()["state_file"] == os.path.abspath(state_file)


# -- the file itself ---------------------------------------------------------------------------------------


def test_file_format_and_owner_only_permissions(primary, secondary, state_file):
    with FailoverSession([primary.url, secondary.url], state_file=state_file) as session:
        session.get(primary.url + "/")
    document = read(state_file)
    assert document["version"] == FORMAT_VERSION
    assert document["backends"] == [primary.url, secondary.url]
    assert document["active"] == primary.url
    assert document["health"][primary.url]["healthy"] is True
    assert stat.S_IMODE(os.stat(state_file).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(state_file + ".lock").st_mode) == 0o600
    assert os.path.exists(state_file + ".lock")


def test_default_location_is_per_backend_set_in_the_cache_dir(primary, secondary, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    with FailoverSession([primary.url, secondary.url]) as one, FailoverSession([secondary.url, primary.url]) as two:
        one.get(primary.url + "/")
        two.get(primary.url + "/")
        path_one, path_two = one.status()["state_file"], two.status()["state_file"]
    assert path_one != path_two, "another order is another backend set"
    assert path_one == default_path([primary.url, secondary.url])
    assert path_one.startswith(str(tmp_path / "xdg" / "requests-failover"))
    assert stat.S_IMODE(os.stat(os.path.dirname(path_one)).st_mode) == 0o700
    assert os.path.exists(path_one) and os.path.exists(path_two)


HOSTILE = {
    "empty": b"",
    "truncated": b'{"version": 1, "backends": [',
    "garbage": bytes(range(256)),
    "not an object": b"[1, 2, 3]",
    "other version": b'{"version": 99}',
    "deeply nested": b"[" * 100_000 + b"]" * 100_000,
}


def hostile_documents(configured: List[str], stranger: str) -> Dict[str, bytes]:
    def doc(**changes: Any) -> bytes:
        base: Dict[str, Any] = {
            "version": 1,
            "backends": configured,
            "active": configured[0],
            "checked_at": time.time(),
            "probing_until": 0.0,
            "health": {},
        }
        base.update(changes)
        return json.dumps(base).encode()

    return {
        **HOSTILE,
        "other backend set": doc(backends=[stranger, *configured], active=stranger),
        "unconfigured active": doc(active=stranger),
        "evil active": doc(active="https://evil.example"),
        "unconfigured health": doc(health={stranger: {"healthy": True}}),
        "bad numbers": doc(health={configured[0]: {"healthy": True, "down_until": "soon"}}),
        "nan": doc(checked_at=float("nan")),
    }


@pytest.mark.parametrize(
    "case",
    [*HOSTILE, "other backend set", "unconfigured active", "evil active", "unconfigured health", "bad numbers", "nan"],
)
def test_broken_or_hostile_file_is_ignored_and_rewritten(primary, secondary, tertiary, state_file, case, caplog):
    configured = [primary.url, secondary.url]
    os.makedirs(os.path.dirname(state_file), exist_ok=True)
    with open(state_file, "wb") as handle:
        handle.write(hostile_documents(configured, tertiary.url)[case])
    with FailoverSession(configured, state_file=state_file) as session:
        assert session.get(primary.url + "/x").json()["server"] == "primary"
        assert session.active_backend == primary.url
    assert tertiary.hits() == [], "never a request to an unconfigured host"
    document = read(state_file)
    assert document["version"] == FORMAT_VERSION and document["active"] == primary.url
    warnings_logged = [r for r in caplog.records if r.name == "requests_failover" and r.levelname == "WARNING"]
    assert len(warnings_logged) <= 1, "logged once"


def test_a_hostile_file_written_while_running_is_ignored(primary, secondary, tertiary, state_file):
    configured = [primary.url, secondary.url]
    with FailoverSession(configured, state_file=state_file) as session:
        session.get(primary.url + "/")
        with open(state_file + ".evil", "wb") as handle:
            handle.write(hostile_documents(configured, tertiary.url)["unconfigured active"])
        os.replace(state_file + ".evil", state_file)
        for _ in range(3):
            assert session.get(primary.url + "/x").json()["server"] == "primary"
    assert tertiary.hits() == []


def test_unusable_location_degrades_to_memory_with_one_warning(primary, secondary, tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with FailoverSession([primary.url, secondary.url], state_file=str(blocker / "state.json")) as session:
        primary.set("refuse")
        for _ in range(3):
            assert session.get(primary.url + "/").json()["server"] == "secondary"
        assert session.active_backend == secondary.url
    warned = [r for r in caplog.records if r.name == "requests_failover" and "not usable" in r.getMessage()]
    assert len(warned) == 1


@pytest.mark.skipif(root(), reason="root ignores directory permissions; the not-a-directory case covers root")
def test_read_only_directory_degrades_to_memory(primary, secondary, tmp_path, caplog):
    directory = tmp_path / "ro"
    directory.mkdir(mode=0o500)
    try:
        with FailoverSession([primary.url, secondary.url], state_file=str(directory / "s.json")) as session:
            primary.set("refuse")
            assert session.get(primary.url + "/").json()["server"] == "secondary"
    finally:
        directory.chmod(0o700)
    assert any("not usable" in r.getMessage() for r in caplog.records)


# -- crashes, locks, fork ----------------------------------------------------------------------------------


def test_lock_of_a_killed_process_does_not_block_others(primary, secondary, state_file):
    os.makedirs(os.path.dirname(state_file), exist_ok=True)
    ready = SPAWN.Event()
    holder = SPAWN.Process(target=_workers.hold_lock_forever, args=(state_file + ".lock", ready), daemon=True)
    holder.start()
    assert ready.wait(BOUND)
    os.kill(holder.pid, signal.SIGKILL)
    holder.join(BOUND)
    with FailoverSession([primary.url, secondary.url], state_file=state_file) as session:
        primary.set("refuse")
        assert session.get(primary.url + "/").json()["server"] == "secondary"
    assert read(state_file)["active"] == secondary.url, "the update reached the file: the lock was free"


def test_lock_held_by_a_live_process_degrades_the_update_to_memory(primary, secondary, state_file, caplog):
    backends = [primary.url, secondary.url]
    with FailoverSession(backends, state_file=state_file) as session:
        session.get(primary.url + "/")
        ready = SPAWN.Event()
        holder = SPAWN.Process(target=_workers.hold_lock_forever, args=(state_file + ".lock", ready), daemon=True)
        holder.start()
        try:
            assert ready.wait(BOUND)
            primary.set("refuse")
            assert session.get(primary.url + "/").json()["server"] == "secondary", "the request is not blocked"
            assert session.active_backend == secondary.url, "the switch is kept in memory"
            settle(session)  # the write behind was tried, and gave up on the lock
        finally:
            os.kill(holder.pid, signal.SIGKILL)
            holder.join(BOUND)
    assert read(state_file)["active"] == primary.url, "the file was not written without the lock"
    assert any("locked by another process" in r.getMessage() for r in caplog.records)


def test_our_writer_lock_excludes_filelock_and_the_other_way_round(state_file):
    """Our uncontended lock is a bare flock: it and a FileLock (another version of us) exclude each other."""
    from filelock import FileLock, Timeout

    from requests_failover._state import _WriterLock

    os.makedirs(os.path.dirname(state_file), exist_ok=True)
    Path(state_file + ".lock").touch()
    ours, theirs = _WriterLock(state_file + ".lock"), FileLock(state_file + ".lock")
    with ours, pytest.raises(Timeout):
        theirs.acquire(timeout=0)
    theirs.acquire(timeout=0)  # ours let go
    try:
        second = _WriterLock(state_file + ".lock")
        assert second._try_flock() is None, "the fast path sees the FileLock"
    finally:
        theirs.release()
    with second:  # free again: taken at once
        assert second._fd is not None, "by the fast path"


def test_a_file_read_again_unchanged_is_not_decoded_again(state_file, monkeypatch):
    """The publish of an outage re-reads the file under the lock: the same bytes reuse the state decoded."""
    from requests_failover import _state

    backends = ("http://127.0.0.1:1", "http://127.0.0.1:2")
    store = _state.FileStore(state_file)
    first = _state.State(backends=backends, active=backends[1], checked_at=time.time())
    store.update(lambda s: first, _state.State(backends=backends), time.time())
    decoded: List[bytes] = []
    monkeypatch.setattr(_state, "decode", lambda data, *a: decoded.append(data) or _state.State(backends=backends))
    assert store.load(backends, time.time()) is first, "what we wrote, not decoded"
    assert decoded == []
    text = Path(state_file).read_text().replace(backends[1], backends[0])
    Path(state_file).write_text(text)  # the same size, other bytes: decoded
    store.load(backends, time.time())
    assert decoded == [text.encode()]


def test_process_killed_mid_write_leaves_a_valid_file(primary, secondary, state_file):
    backends = [primary.url, secondary.url]
    with FailoverSession(backends, state_file=state_file) as session:
        session.get(primary.url + "/")
    ready = SPAWN.Event()
    writer = SPAWN.Process(target=_workers.die_mid_write, args=(backends, state_file, ready), daemon=True)
    writer.start()
    assert ready.wait(BOUND), "the writer reached the point between temp write and replace"
    os.kill(writer.pid, signal.SIGKILL)
    writer.join(BOUND)
    document = read(state_file)  # the writer was clearing the selection: none of that shows
    assert document["active"] == primary.url and document["checked_at"] is not None, "the last complete file"
    with FailoverSession(backends, state_file=state_file) as session:
        assert session.get(primary.url + "/").json()["server"] == "primary"
        primary.set("refuse")
        assert session.get(primary.url + "/").json()["server"] == "secondary"
    assert read(state_file)["active"] == secondary.url


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_session_created_before_fork_works_in_the_child_even_with_locks_held(primary, secondary, state_file):
    """Always: a session copied by fork() works in the child whatever lock a thread held, and the parent learns."""
    session = FailoverSession([primary.url, secondary.url], state_file=state_file)
    session.get(primary.url + "/")
    primary.set("refuse")
    selection = session.failover_adapter._selection
    selection._books._lock.acquire()  # as if another thread were mid-update at fork time
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads: that is the point
        pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            answer = session.get(primary.url + "/in-child").json()["server"]
            settle(session)  # os._exit skips every exit hook: write the switch first
            os.write(write_end, answer.encode())
            code = 0
        finally:
            os._exit(code)
    selection._books._lock.release()
    os.close(write_end)
    code = wait_for_child(pid, "deadlocked")
    assert code == 0, "the child exited cleanly"
    assert os.read(read_end, 100) == b"secondary"
    os.close(read_end)
    assert read(state_file)["active"] == secondary.url, "the child's switch reached the shared file"
    assert session.get(primary.url + "/").json()["server"] == "secondary", "and the parent uses it"
    session.close()


# -- stress ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_stress_six_processes_four_threads_through_two_outages(primary, secondary, tertiary, state_file):
    """Always: no request fails and the shared file never reads torn or foreign, through every outage."""
    backends = [primary.url, secondary.url]
    per_thread = 60
    total = 6 * 4 * per_thread
    done = SPAWN.Value("i", 0)
    failures = SPAWN.Queue()
    options = {"state_file": state_file, "cache_ttl": 0.5, "retry_delay": 0.01}
    procs = [
        SPAWN.Process(target=_workers.hammer, args=(backends, options, per_thread, done, failures), daemon=True)
        for _ in range(6)
    ]
    bad_reads: List[str] = []
    stop = threading.Event()

    def watch_file() -> None:
        while not stop.is_set():
            try:
                document = read(state_file)
                if document["active"] not in (*backends, None):
                    bad_reads.append(f"active {document['active']}")
            except FileNotFoundError:
                pass
            except ValueError as exc:
                bad_reads.append(repr(exc))

    watcher = threading.Thread(target=watch_file)
    watcher.start()
    for p in procs:
        p.start()

    def wait_for(count: int) -> None:
        wait_until(lambda: done.value >= count, f"{count} of {total} requests answered", bound=2 * BOUND)

    for fraction, mode in ((0.15, "refuse"), (0.35, "up"), (0.55, "refuse"), (0.75, "up")):
        wait_for(int(total * fraction))
        primary.set(mode)
    for p in procs:
        p.join(2 * BOUND)
    stop.set()
    watcher.join()
    reported = []
    while not failures.empty():
        reported.append(failures.get())
    assert [p.exitcode for p in procs] == [0] * 6, "no process raised"
    assert done.value == total
    assert reported == [], reported[:5]
    assert bad_reads == [], bad_reads[:5]
    assert tertiary.hits() == []
    assert len(secondary.hits(health=False)) > 0, "the outages really moved traffic"


def test_no_home_directory_degrades_to_memory(primary, secondary, monkeypatch, caplog):
    from pathlib import Path

    def no_home() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    with FailoverSession([primary.url, secondary.url]) as session:
        assert session.get(primary.url + "/").json()["server"] == "primary"
        assert session.status()["state_file"] is None
    assert any("memory only" in r.getMessage() for r in caplog.records)
