"""The state file against hostile file system objects, dead writers and races.

Each case uses a real file system object and, where it matters, real
processes. A test that could hang if the library blocked runs the blocking
part in a daemon thread with a generous bound, so it fails instead.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pwd
import random
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, List

import pytest

from requests_failover import FailoverSession, _state
from requests_failover._state import FileStore
from requests_failover.testing import settle

from .conftest import BOUND, root


def bounded(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a daemon thread; fail (not hang) if it does not return in BOUND."""
    result: List[Any] = []
    errors: List[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(BOUND)
    assert not thread.is_alive(), "the library blocked on the state path"
    if errors:
        raise errors[0]
    return result[0]


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _socket(path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))  # left bound: the file stays a socket for the test's life
    _keep.append(sock)


def _directory(path: Path) -> None:
    path.mkdir()


def _dev_zero(path: Path) -> None:
    os.symlink("/dev/zero", path)


def _huge(path: Path) -> None:
    with open(path, "wb") as handle:
        handle.truncate(50 * 1024 * 1024)  # 50 MB of zeros (sparse)


_keep: List[socket.socket] = []
HOSTILE = {"fifo": _fifo, "socket": _socket, "directory": _directory, "dev-zero-symlink": _dev_zero, "50MB": _huge}


@pytest.fixture(autouse=True)
def _close_sockets() -> Iterator[None]:
    yield
    while _keep:
        _keep.pop().close()


@pytest.fixture
def state_dir() -> Iterator[Path]:
    # short path: a unix socket's path is limited to about 100 bytes
    path = Path(tempfile.mkdtemp(prefix="rf-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


# a directory there is refused when the session is built (tests/test_first_hour.py)
@pytest.mark.parametrize("kind", [kind for kind in HOSTILE if kind != "directory"])
def test_hostile_object_at_the_state_path_before_the_session(primary, secondary, state_dir, kind, caplog):
    path = state_dir / "state.json"
    HOSTILE[kind](path)

    def use() -> List[str]:
        with FailoverSession([primary.url, secondary.url], state_file=path) as session:
            served = [session.get(primary.url + "/a").json()["server"]]
            primary.set("refuse")
            served.append(session.get(primary.url + "/b").json()["server"])
            served.append(session.active_backend)
            return served

    assert bounded(use) == ["primary", "secondary", secondary.url]
    assert any("state" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_hostile_object_replacing_the_state_file_while_running(primary, secondary, state_dir, kind):
    path = state_dir / "state.json"
    with FailoverSession([primary.url, secondary.url], state_file=path) as session:
        assert session.get(primary.url + "/a").json()["server"] == "primary"
        session.force_refresh()
        settle(session)  # the late probe's result is written behind: let it land first
        assert path.is_file()
        path.unlink()
        HOSTILE[kind](path)

        def use() -> List[str]:
            served = [session.get(primary.url + "/b").json()["server"]]
            primary.set("refuse")
            served.append(session.get(primary.url + "/c").json()["server"])
            return served

        assert bounded(use) == ["primary", "secondary"]
        assert bounded(lambda: session.active_backend) == secondary.url


def _tmp_files(directory: Path) -> List[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_a_killed_writers_temp_file_is_swept_by_the_next_writer(primary, secondary, state_dir):
    path = state_dir / "state.json"
    code = (
        "import sys, time, requests_failover._state as st\n"
        "def stuck(src, dst):\n"
        "    print('stuck', flush=True)\n"
        "    time.sleep(600)\n"
        "st.os.replace = stuck\n"
        "from requests_failover import FailoverSession\n"
        f"FailoverSession({[primary.url, secondary.url]!r}, state_file={str(path)!r}).clear_cache()\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "stuck"
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(BOUND)
        child.stdout.close()  # type: ignore[union-attr]
    assert len(_tmp_files(state_dir)) == 1, "the killed writer left its temp file"
    with FailoverSession([primary.url, secondary.url], state_file=path) as session:
        session.clear_cache()
    assert _tmp_files(state_dir) == []
    assert json.loads(path.read_text())["version"] == 1


@pytest.mark.slow
def test_clean_exits_with_a_late_probe_in_flight_leave_no_temp_file(primary, secondary, state_dir):
    # The primary answers its probe at once, so the first request goes ahead;
    # the secondary's probe is still in flight (black hole, short timeout) and
    # its late result is written from a daemon thread around interpreter exit.
    secondary.set("hang")
    path = state_dir / "state.json"
    code = (
        "import random, time\n"
        "from requests_failover import FailoverSession\n"
        f"s = FailoverSession({[primary.url, secondary.url]!r}, state_file={str(path)!r}, health_timeout=0.05)\n"
        "s.force_refresh()\n"
        "s.clear_cache()\n"
        f"s.get({primary.url + '/x'!r})\n"
        "time.sleep(random.uniform(0.0, 0.08))\n"
    )
    for _batch in range(10):
        children = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(10)]
        assert [child.wait(BOUND) for child in children] == [0] * 10
    assert _tmp_files(state_dir) == []


def test_threads_never_keep_an_older_selection_than_the_file(primary, secondary, state_dir, monkeypatch):
    # Readers sync while another "process" (a second store on the same file)
    # rewrites it; once the writes stop, the selection held must be the last
    # one written, not one a slow reader read earlier and stored late. A
    # jittery decode widens the window between a reader's read and its store.
    real_decode = _state.decode

    def slow_decode(*args: Any) -> Any:
        time.sleep(random.uniform(0, 0.002))
        return real_decode(*args)

    monkeypatch.setattr(_state, "decode", slow_decode)
    path = state_dir / "state.json"
    backends = [primary.url, secondary.url]
    writer = FileStore(str(path))
    with FailoverSession(backends, state_file=path) as session:
        session.clear_cache()
        selection = session.failover_adapter._selection
        old_interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)
        try:
            for round_ in range(100):
                writing = threading.Event()
                writing.set()

                def read(writing: threading.Event = writing) -> None:
                    while writing.is_set():
                        selection.sync()

                threads = [threading.Thread(target=read) for _ in range(4)]
                for t in threads:
                    t.start()
                for i in range(6):
                    active = backends[(round_ + i) % 2]
                    writer.update(
                        lambda s, a=active: dataclasses.replace(s, active=a, checked_at=1.0),
                        selection._books.state,
                        0.0,
                    )
                writing.clear()
                for t in threads:
                    t.join()
                assert selection.sync().active == active, f"round {round_}: an older selection was kept"
        finally:
            sys.setswitchinterval(old_interval)


def test_a_killed_probers_claim_is_void_at_once(primary, secondary, state_dir):
    path = state_dir / "state.json"
    backends = [primary.url, secondary.url]
    with FailoverSession(backends, state_file=path) as session:
        session.force_refresh()
        checked = session.status()["last_health_check"]
    # stale for everybody; a locked read-modify-write, as a late probe result of
    # the session above may be written at any moment too
    store = FileStore(str(path))
    store.update(lambda s: dataclasses.replace(s, checked_at=1.0), store.load(tuple(backends), 0.0), 0.0)
    primary.set("hang")  # the child's probe hangs until we kill it
    code = (
        "from requests_failover import FailoverSession\n"
        f"s = FailoverSession({backends!r}, state_file={str(path)!r}, health_timeout=300)\n"
        f"s.get({primary.url + '/x'!r})\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline_checks = 0
        while json.loads(path.read_text()).get("probing_by") is None:
            assert child.poll() is None, f"the child ended before claiming the probe: {path.read_text()}"
            deadline_checks += 1
            assert deadline_checks < BOUND * 100, "the child never claimed the probe"
            threading.Event().wait(0.01)
        claim = json.loads(path.read_text())
        assert claim["probing_until"] > 100 and str(child.pid) in claim["probing_by"]
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(BOUND)
    primary.set("up")
    with FailoverSession(backends, state_file=path) as session:
        assert session.get(primary.url + "/y").json()["server"] == "primary"
        settle(session)  # the re-probe runs in the background
        status = session.status()
        assert status["last_health_check"] is not None and status["last_health_check"] > checked
        assert not status["health_checking"]


def test_a_symlink_at_the_lock_path_is_never_followed(primary, secondary, state_dir, caplog):
    target = state_dir / "precious"
    target.write_text("keep me")
    target.chmod(0o644)
    os.symlink(target, state_dir / "state.json.lock")
    with FailoverSession([primary.url, secondary.url], state_file=state_dir / "state.json") as session:
        primary.set("refuse")
        assert session.get(primary.url + "/").json()["server"] == "secondary"
    assert target.read_text() == "keep me" and stat.S_IMODE(target.stat().st_mode) == 0o644
    assert not (state_dir / "state.json").exists()
    assert any("not a regular file" in r.getMessage() for r in caplog.records)


def test_a_directory_other_users_can_write_is_refused_unless_sticky(primary, secondary, state_dir, caplog):
    shared = state_dir / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with FailoverSession([primary.url, secondary.url], state_file=shared / "state.json") as session:
        primary.set("refuse")
        assert session.get(primary.url + "/").json()["server"] == "secondary"
    assert list(shared.iterdir()) == []
    assert any("writable by other users" in r.getMessage() for r in caplog.records)
    primary.set("up")
    shared.chmod(0o1777)
    with FailoverSession([primary.url, secondary.url], state_file=shared / "state.json") as session:
        session.force_refresh()
    assert (shared / "state.json").is_file(), "a sticky directory such as /tmp is fine"


def _nobody() -> Any:
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        return None


@pytest.mark.skipif(not root() or _nobody() is None, reason="needs root and a 'nobody' user to plant as another uid")
def test_symlinks_planted_by_another_user_in_a_sticky_directory(primary, secondary, caplog):
    import filelock

    shared = Path(tempfile.mkdtemp(prefix="rf-sticky-", dir="/tmp"))
    try:
        shared.chmod(0o1777)
        targets = {name: shared / f"{name}-target" for name in ("state", "lock")}
        for target in targets.values():
            target.write_text("root's data")
            target.chmod(0o644)
        state = shared / "state.json"
        plant = 'ln -s "$1" "$3" && ln -s "$2" "$3.lock"'  # /bin/sh: nobody cannot run root's interpreters
        args = ["/bin/sh", "-c", plant, "sh", str(targets["state"]), str(targets["lock"]), str(state)]
        subprocess.run(args, check=True, user=_nobody().pw_uid, cwd="/", timeout=BOUND)
        assert state.is_symlink() and os.lstat(state).st_uid == _nobody().pw_uid
        with FailoverSession([primary.url, secondary.url], state_file=state) as session:
            primary.set("refuse")
            assert session.get(primary.url + "/").json()["server"] == "secondary"
            session.clear_cache()
        for target in targets.values():
            assert target.read_text() == "root's data", f"filelock {filelock.__version__} wrote through a symlink"
            assert stat.S_IMODE(target.stat().st_mode) == 0o644
        assert any("not usable" in r.getMessage() for r in caplog.records)
    finally:
        shutil.rmtree(shared, ignore_errors=True)


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="start times come from /proc")
def test_claim_of_a_dead_unreaped_or_reused_pid_is_void():
    child = subprocess.Popen(["sleep", "600"])
    try:
        token = f"{socket.gethostname()} {child.pid} {_state._start_time(child.pid)}"
        assert not _state.claim_is_void(token), "a live owner's claim holds"
        assert not _state.claim_is_void(f"other-host {child.pid} 1"), "another machine's claim holds until it expires"
        assert _state.claim_is_void(f"{socket.gethostname()} {child.pid} 1"), "same pid, other start time: reused"
        child.kill()
        for _ in range(int(BOUND * 100)):
            if _state._start_time(child.pid) == "Z":
                break
            threading.Event().wait(0.01)
        assert _state.claim_is_void(token), "a zombie holds no claim"
    finally:
        child.wait(BOUND)
    assert _state.claim_is_void(token), "a reaped process holds no claim"


# -- stored state is data: every field validated at decode ------------------------------------------------------------


def _document(backends: List[str], **fields: Any) -> bytes:
    document = {"version": _state.FORMAT_VERSION, "backends": backends, "active": None, "health": {}}
    document.update(fields)
    return json.dumps(document).encode()


def _cli_status(path: Path, backends: List[str]) -> Any:
    from requests_failover import _cli

    return _cli.main(["status", "--json", "--state-file", str(path), *backends])


def test_a_claim_naming_an_impossible_pid_never_raises(primary, secondary, state_dir, caplog, capsys):
    """``"probing_by": "<this host> 99999999999999999999 1"`` made os.kill raise OverflowError on
    every request, in status() and the CLI: the document is now ignored (logged once) and
    claim_is_void answers without raising for any string."""
    host = socket.gethostname()
    huge = f"{host} 99999999999999999999 1"
    assert _state.claim_is_void(huge) is True
    assert _state.claim_is_void(f"{host} 2147483648 1") is True
    assert _state.claim_is_void(f"{host} 0 1") is True
    assert _state.claim_is_void("another-host 99999999999999999999 1") is False
    backends = [primary.url, secondary.url]
    path = state_dir / "s.json"
    path.write_bytes(_document(backends, probing_until=time.time() + 100, probing_by=huge, active=primary.url))
    caplog.set_level("WARNING", logger="requests_failover")
    with FailoverSession(backends, state_file=str(path)) as session:
        for i in range(3):
            assert session.get(f"{primary.url}/r{i}").json()["server"] == "primary"
        assert session.status()["active_backend"] == primary.url
    assert _cli_status(path, backends) == 0
    ignored = [r for r in caplog.records if "ignoring state file" in r.getMessage()]
    assert len(ignored) == 1 and "bad probing_by" in ignored[0].getMessage()


def test_a_time_of_1e300_is_clamped_and_the_cli_prints_it(primary, secondary, state_dir, capsys):
    """``checked_at: 1e300`` crashed ``requests-failover status`` (a date out of range):
    every stored time is clamped to what the library could have written."""
    backends = [primary.url, secondary.url]
    path = state_dir / "s.json"
    health = {primary.url: {"healthy": True, "down_until": 1e300, "probed_at": -1e300, "last_latency_ms": 1e300}}
    path.write_bytes(_document(backends, checked_at=1e300, active=primary.url, health=health))
    now = time.time()
    state = _state.decode(path.read_bytes(), tuple(backends), now)
    horizon = now + max(_state.DOWN_CAP, _state.RETRY_AFTER_CAP)
    assert state.checked_at == horizon and state.health[primary.url].down_until == horizon
    assert state.health[primary.url].probed_at == 0.0 and state.health[primary.url].last_latency_ms == 86_400_000.0
    capsys.readouterr()
    assert _cli_status(path, backends) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["last_health_check"] <= horizon + 1


def _values() -> Any:
    """A JSON value of any kind, extremes included (json writes NaN and Infinity, and reads them back)."""
    from hypothesis import strategies as st

    leaves = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.sampled_from([10**400, -(10**400), 2**31, 2**63, 0, -1]),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([1e300, -1e300, 1e-300]),
        st.text(max_size=12),
    )
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
        max_leaves=6,
    )


def test_random_documents_never_raise_anywhere(primary, secondary, state_dir):
    """Property: whatever a stored document holds, decode() returns a state or raises ValueError,
    and status(), a request and the CLI's status never raise."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from requests_failover import _cli

    backends = [primary.url, secondary.url]
    path = state_dir / "s.json"
    host = socket.gethostname()
    owners = st.one_of(
        _values(),
        st.builds(lambda pid, rest: f"{host} {pid} {rest}", st.integers(-(2**80), 2**80), st.text(max_size=6)),
    )
    records = st.fixed_dictionaries({}, optional={name: _values() for name in _state.HEALTH_FIELDS})
    documents = st.fixed_dictionaries(
        {"version": st.just(_state.FORMAT_VERSION), "backends": st.just(backends)},
        optional={
            "active": st.one_of(st.sampled_from([*backends, None]), _values()),
            "checked_at": _values(),
            "probing_until": _values(),
            "probing_by": owners,
            "health": st.one_of(st.dictionaries(st.sampled_from(backends), records, max_size=2), _values()),
        },
    )
    session = FailoverSession(backends, state_file=str(path), cache_ttl=0.0)
    served = set()

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(documents)
    def check(document: Any) -> None:
        data = json.dumps(document).encode()
        try:
            _state.decode(data, tuple(backends), time.time())
        except ValueError:
            pass
        path.write_bytes(data)
        session.status()
        served.add(session.get(primary.url + "/").json()["server"])
        assert _cli.main(["status", "--json", "--state-file", str(path), *backends]) == 0
        assert _cli.main(["status", "--state-file", str(path), *backends]) == 0

    try:
        check()
    finally:
        session.close()
    assert served <= {"primary", "secondary"} and served


def test_the_directory_is_checked_once_per_process_and_again_after_an_error(tmp_path, monkeypatch):
    # Checking on every write cost a request that publishes an outage seven system calls.
    from requests_failover._policy import State, mark_failed

    checks: List[str] = []
    original = FileStore._prepare_directory

    def counted(self: FileStore) -> None:
        checks.append(str(self.location))
        original(self)

    monkeypatch.setattr(FileStore, "_prepare_directory", counted)
    path = tmp_path / "sub" / "state.json"
    store = FileStore(str(path))
    state = State(("http://a", "http://b"))
    for n in range(3):
        state = store.update(lambda s, n=n: mark_failed(s, "http://a", f"refused {n}", 100.0 + n), state, 100.0 + n)
    assert checks == [str(path)]
    shutil.rmtree(path.parent)  # removed behind our back: the next write prepares it again
    store.update(lambda s: mark_failed(s, "http://a", "refused again", 200.0), state, 200.0)
    assert checks == [str(path), str(path)]
    assert store.persistent
    assert json.loads(path.read_bytes())["health"]["http://a"]["last_error"] == "refused again"


def test_a_stored_string_with_control_characters_is_kept_escaped():
    """A last_error holding a terminal escape or a line feed reaches status() escaped, never as is."""
    backends = ("http://127.0.0.1:1", "http://127.0.0.1:2")
    document = {
        "version": _state.FORMAT_VERSION,
        "backends": list(backends),
        "active": backends[1],
        "checked_at": 1000.0,
        "health": {backends[0]: {"healthy": False, "last_error": "refused\x1b[2J\r\nfake", "demotion_reason": "\x07"}},
    }
    health = _state.decode(json.dumps(document).encode(), backends, 1000.0).record(backends[0])
    assert (health.last_error, health.demotion_reason) == ("refused\\x1b[2J\\r\\nfake", "\\x07")
