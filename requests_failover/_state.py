"""Persistence of the selection: memory, or one JSON file shared by processes.

The file (format below) is published with ``os.replace`` of a fsync'ed temp
file in the same directory, so a reader sees the old file or the new one,
never half of one, and never needs the lock to read. Writers serialise on
``<file>.lock`` (a :class:`filelock.FileLock`, flock on POSIX) held only for
read-modify-write, never during a probe. flock does not exclude across NFS
clients: keep the file on a local disk.

Noticing another process's change costs one ``os.stat`` per request: the
file is re-read only when its (inode, mtime, size) differ from the last seen.

A file that is missing, unreadable, not JSON, of another version, for
another backend set, or naming a backend that is not configured is ignored
(logged once) and rewritten on the next update; it never reaches a request.

Format, version 1::

    {"version": 1, "backends": ["https://a.example", ...],
     "active": "https://a.example" | null, "checked_at": 1700000000.0 | null,
     "probing_until": 0.0,
     "health": {"https://a.example": {"healthy": true, "consecutive_failures": 0,
                "down_until": 0.0, "hold_until": 0.0, "last_latency_ms": 1.2,
                "last_error": null}}}
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

from filelock import FileLock, Timeout

from . import _runtime
from ._pool import DOWN_CAP, RETRY_AFTER_CAP, Health, State

log = logging.getLogger("requests_failover")

FORMAT_VERSION = 1
#: Seconds a writer waits for the lock before keeping that one update in memory.
LOCK_TIMEOUT = 2.0
_MAX_FILE_BYTES = 1 << 20

Update = Callable[[State], State]


def default_path(backends: Sequence[str]) -> str:
    """The per-backend-set file in the user cache directory."""
    digest = hashlib.sha256("\n".join(backends).encode("utf-8")).hexdigest()[:16]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return os.path.join(cache, "requests-failover", f"{digest}.json")


def encode(state: State) -> bytes:
    document = {
        "version": FORMAT_VERSION,
        "backends": list(state.backends),
        "active": state.active,
        "checked_at": state.checked_at,
        "probing_until": state.probing_until,
        "health": {url: dataclasses.asdict(h) for url, h in state.health.items()},
    }
    return json.dumps(document, indent=1, sort_keys=True).encode("utf-8")


def _finite(value: Any, *, optional: bool = False) -> Optional[float]:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError("not a finite number")
    return float(value)


def decode(data: bytes, backends: Tuple[str, ...], now: float) -> State:
    """Parse and validate a file's bytes; raise ``ValueError`` on anything off.

    Times in the future beyond what this library would ever write are
    clamped, so a hostile file cannot keep a backend down for a year.
    """
    document = json.loads(data.decode("utf-8"))
    if not isinstance(document, dict) or document.get("version") != FORMAT_VERSION:
        raise ValueError("unknown format version")
    if document.get("backends") != list(backends):
        raise ValueError("written for another backend set")
    active = document.get("active")
    if active is not None and active not in backends:
        raise ValueError("names a backend that is not configured")
    horizon = now + max(DOWN_CAP, RETRY_AFTER_CAP)
    health: Dict[str, Health] = {}
    table = document.get("health", {})
    if not isinstance(table, dict):
        raise ValueError("health is not an object")
    for url, record in table.items():
        if url not in backends or not isinstance(record, dict):
            raise ValueError("health names a backend that is not configured")
        healthy = record.get("healthy")
        failures = record.get("consecutive_failures", 0)
        error = record.get("last_error")
        if healthy not in (True, False, None):
            raise ValueError("healthy is not a bool")
        if isinstance(failures, bool) or not isinstance(failures, int) or not 0 <= failures < 1 << 20:
            raise ValueError("bad consecutive_failures")
        if error is not None and not isinstance(error, str):
            raise ValueError("bad last_error")
        health[url] = Health(
            healthy=healthy,
            consecutive_failures=failures,
            down_until=min(_finite(record.get("down_until", 0.0)) or 0.0, horizon),
            hold_until=min(_finite(record.get("hold_until", 0.0)) or 0.0, horizon),
            last_latency_ms=_finite(record.get("last_latency_ms"), optional=True),
            last_error=None if error is None else error[:300],
        )
    return State(
        backends=backends,
        active=active,
        checked_at=_finite(document.get("checked_at"), optional=True),
        health=health,
        probing_until=min(_finite(document.get("probing_until", 0.0)) or 0.0, horizon),
    )


class MemoryStore:
    """No persistence: the selection lives in this process only."""

    location: Optional[str] = None

    def load(self, backends: Tuple[str, ...], now: float) -> Optional[State]:
        return None

    def poll(self, backends: Tuple[str, ...], now: float) -> Optional[State]:
        return None

    def update(self, fn: Update, current: State, now: float) -> State:
        return fn(current)


class FileStore:
    """The selection in a JSON file shared by every process on this machine."""

    def __init__(self, path: str) -> None:
        self.location: Optional[str] = os.path.abspath(path)
        self._path: Optional[str] = self.location
        self._seen: Optional[Tuple[int, int, int]] = None
        self._complained = False
        self._thread_lock = threading.Lock()
        self._file_lock: Optional[FileLock] = None
        _runtime.reset_after_fork(self)

    def _after_fork(self) -> None:
        # A lock inherited through fork() may be held by a thread that does not
        # exist in the child (older filelock releases do not handle fork).
        self._thread_lock = threading.Lock()
        self._file_lock = None

    # -- reading: lock-free -------------------------------------------------
    def _read(self, backends: Tuple[str, ...], now: float) -> Optional[State]:
        if self._path is None:
            return None
        try:
            with open(self._path, "rb") as handle:
                stat = os.fstat(handle.fileno())
                data = handle.read(_MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            self._seen = None
            return None
        except OSError as exc:
            self._complain(f"cannot read {self._path}: {exc}")
            return None
        self._seen = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        try:
            if len(data) > _MAX_FILE_BYTES:
                raise ValueError("too large")
            return decode(data, backends, now)
        except (ValueError, TypeError, KeyError, RecursionError, UnicodeDecodeError) as exc:
            self._complain(f"ignoring state file {self._path}: {exc}")
            return None

    def load(self, backends: Tuple[str, ...], now: float) -> Optional[State]:
        return self._read(backends, now)

    def poll(self, backends: Tuple[str, ...], now: float) -> Optional[State]:
        """The file's state if another process changed it since we last looked."""
        if self._path is None:
            return None
        try:
            stat = os.stat(self._path)
        except OSError:
            return None
        if (stat.st_ino, stat.st_mtime_ns, stat.st_size) == self._seen:
            return None
        return self._read(backends, now)

    # -- writing: under the lock -------------------------------------------
    def _lock(self) -> Tuple[threading.Lock, FileLock]:
        if self._file_lock is None:
            assert self._path is not None
            self._file_lock = FileLock(self._path + ".lock", timeout=LOCK_TIMEOUT, mode=0o600)
        return self._thread_lock, self._file_lock

    def update(self, fn: Update, current: State, now: float) -> State:
        """Apply ``fn`` to the freshest state (the file's, else ``current``) and publish.

        If the lock cannot be had in ``LOCK_TIMEOUT`` the update is kept in
        memory only; if the location is unwritable the store degrades to
        memory for good, with one warning.
        """
        if self._path is None:
            return fn(current)
        thread_lock, file_lock = self._lock()
        with thread_lock:
            try:
                self._prepare_directory()
                with file_lock:
                    base = self._read(current.backends, now) or current
                    new = fn(base)
                    if new is not base:
                        self._write(new)
                    return new
            except Timeout:
                log.warning("state file %s is locked by another process; keeping this update in memory", self._path)
                return fn(current)
            except OSError as exc:
                log.warning("state file %s is not writable (%s); keeping the selection in memory only", self._path, exc)
                self._path = None
                return fn(current)

    def _prepare_directory(self) -> None:
        assert self._path is not None
        directory = os.path.dirname(self._path)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        lock_path = self._path + ".lock"
        if not os.path.exists(lock_path):
            os.close(os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600))

    def _write(self, state: State) -> None:
        assert self._path is not None
        directory, name = os.path.split(self._path)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)  # mode 0600
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(encode(state))
                handle.flush()
                os.fsync(handle.fileno())
                stat = os.fstat(handle.fileno())
            os.replace(tmp, self._path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        self._seen = (stat.st_ino, stat.st_mtime_ns, stat.st_size)

    def _complain(self, message: str) -> None:
        if not self._complained:
            self._complained = True
            log.warning(message)
        else:
            log.debug(message)


Store = Union[MemoryStore, FileStore]


def open_store(state_file: object, backends: Sequence[str]) -> Store:
    if state_file is False:
        return MemoryStore()
    if state_file is None:
        try:
            return FileStore(default_path(backends))
        except (RuntimeError, KeyError, OSError) as exc:  # no home directory to be found
            log.warning("no cache directory for the state file (%s); keeping the selection in memory only", exc)
            return MemoryStore()
    return FileStore(str(state_file))
