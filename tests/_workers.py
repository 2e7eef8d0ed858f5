"""Code that runs in child processes of the shared-state tests.

Module-level functions only, so the ``spawn`` start method can import them.
"""

from __future__ import annotations

import os
import threading
from multiprocessing.connection import Connection
from typing import Any, Dict, List, NamedTuple, Optional


class Answer(NamedTuple):
    """A child's answer to one GET: "ok" with the status and the backend that answered, or "error" and why."""

    outcome: str
    status: Optional[int] = None
    server: Optional[str] = None
    error: Optional[str] = None


def serve(conn: Connection, backends: List[str], options: Dict[str, Any], name: str) -> None:
    """Hold one FailoverSession and run the parent's commands on it, one by one."""
    from requests_failover import FailoverSession

    session = FailoverSession(backends, **options)
    conn.send(("ready", os.getpid()))
    while True:
        command, *args = conn.recv()
        if command == "exit":
            break
        if command == "get":
            try:
                response = session.get(backends[0] + args[0], headers={"X-Worker": name}, timeout=(2, 5))
                conn.send(Answer("ok", response.status_code, response.json().get("server")))
            except Exception as exc:  # reported to the parent, which asserts on it
                conn.send(Answer("error", error=repr(exc)))
        elif command == "status":
            conn.send(session.status())
    session.close()


def hammer(backends: List[str], options: Dict[str, Any], requests_per_thread: int, done: Any, failures: Any) -> None:
    """Four threads sending GETs through one session; count answers, report failures."""
    from requests_failover import FailoverSession

    session = FailoverSession(backends, **options)

    def run() -> None:
        for i in range(requests_per_thread):
            try:
                response = session.get(backends[0] + f"/stress/{i}", timeout=(2, 5))
                if response.status_code != 200:
                    failures.put(f"status {response.status_code} from {response.json().get('server')}")
            except Exception as exc:  # reported to the parent, which asserts on it
                failures.put(repr(exc))
            with done.get_lock():
                done.value += 1

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    session.close()


def hold_lock_forever(lock_path: str, ready: Any) -> None:
    """Take the state file's lock and never let go (the parent kills us with SIGKILL)."""
    import time

    from filelock import FileLock

    lock = FileLock(lock_path)
    lock.acquire()
    ready.set()
    while True:
        time.sleep(60)


def die_mid_write(backends: List[str], state_file: str, ready: Any) -> None:
    """Start publishing the state file, and stop between temp write and replace."""
    import time

    from requests_failover import _state

    def stuck(src: str, dst: str) -> None:
        ready.set()
        while True:
            time.sleep(60)

    _state.os.replace = stuck  # type: ignore[assignment]
    from requests_failover import FailoverSession

    session = FailoverSession(backends, state_file=state_file)
    session.clear_cache()
