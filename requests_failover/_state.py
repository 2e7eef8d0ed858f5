"""Persistence of the selection: memory, or one JSON file shared by processes.

The file (format below) is published with ``os.replace`` of a temp file in the
same directory (no fsync: see ``FileStore._write``), so a reader sees the old file or the new one,
never half of one, and never needs the lock to read. Writers serialise on
``<file>.lock`` (see :class:`_WriterLock`: flock on POSIX, as
:class:`filelock.FileLock` does) held only for read-modify-write, never
during a probe. flock does not exclude across NFS clients: keep the file on
a local disk.

Noticing another process's change costs one ``os.lstat`` per request: the
file is re-read only when its (inode, mtime, size) differ from the last seen.
The re-read and the adoption of what it read happen under the selection's
lock, so a thread never replaces a newer selection with an older one.

Hostile file system objects (see docs/security.rst): the state path is opened
with ``O_NOFOLLOW | O_NONBLOCK`` and read only if ``fstat`` says it is a
regular file, at most 1 MiB (a FIFO, socket, device, directory or symlink
never blocks or redirects a read); the lock file is created by us with
``O_NOFOLLOW | O_EXCL`` and used only while it is a regular file we own; a
directory writable by other users is used only if it is sticky (``/tmp``).
Temporary files of writers that died are swept by the next writer, and no
write starts once the interpreter is exiting.

A file that is missing, unreadable, not JSON, of another version, for
another backend set, or naming a backend that is not configured is ignored
(logged once) and rewritten on the next update; it never reaches a request.

Format, version 1::

    {"version": 1, "backends": ["https://a.example", ...],
     "active": "https://a.example" | null, "checked_at": 1700000000.0 | null,
     "probing_until": 0.0, "probing_by": "host pid start-time" | null,
     "health": {"https://a.example": {"healthy": true, "consecutive_failures": 0,
                "down_until": 0.0, "hold_until": 0.0, "last_latency_ms": 1.2,
                "last_error": null, "level": 0, "successes": 3, "failed_at": 0.0,
                "probed_at": 1700000000.0, "demoted_until": 0.0, "demotion_level": 0,
                "demotion_reason": null, "recovered_at": 0.0}}}
"""

from __future__ import annotations

import atexit
import dataclasses
import enum
import glob
import hashlib
import json
import logging
import math
import os
import socket
import stat as stat_module
import tempfile
import threading
import time
from errno import EACCES, EAGAIN, EWOULDBLOCK
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Set, Tuple, Union

from filelock import FileLock, Timeout

try:
    import fcntl
except ImportError:  # Windows: filelock's own lock
    fcntl = None  # type: ignore[assignment]

from . import _runtime
from ._policy import DEMOTE_CAP, DOWN_CAP, RETRY_AFTER_CAP, Health, State

log = logging.getLogger("requests_failover")

FORMAT_VERSION = 1
#: Seconds a writer waits for the lock before keeping that one update in memory.
LOCK_TIMEOUT = 2.0
MAX_FILE_BYTES = 1 << 20
#: Seconds between two sweeps of temp files left by writers that died (by one process).
SWEEP_EVERY = 60.0
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


class _Exit:
    """No write starts once the interpreter is exiting; one in progress ends first.

    A daemon thread (a late probe result) frozen by interpreter shutdown
    between temp write and replace would leave its temp file behind.
    """

    def __init__(self) -> None:
        self.exiting = False
        self.writing = threading.Lock()
        _runtime.reset_after_fork(self)
        atexit.register(self._at_exit)

    def _at_exit(self) -> None:
        self.exiting = True
        if self.writing.acquire(timeout=LOCK_TIMEOUT):  # wait for a write in flight
            self.writing.release()

    def _after_fork(self) -> None:
        self.writing = threading.Lock()


_EXIT = _Exit()


def owner_token() -> str:
    """Who holds a probe claim: host, pid and the process's start time."""
    return f"{socket.gethostname()} {os.getpid()} {_start_time(os.getpid())}"


def _start_time(pid: int) -> str:
    """The start time of ``pid`` (Linux: clock ticks since boot); "" if unknown, "Z" for a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        return "Z" if fields[0] == b"Z" else fields[19].decode("ascii")
    except (OSError, IndexError):
        return ""


def claim_is_void(owner: Optional[str]) -> bool:
    """Whether a probe claim's owner is known to be gone (a process of this host that died).

    ``owner`` is data read from a file or a store: a pid no process can have
    voids the claim; nothing here raises on any string.
    """
    if not owner or not isinstance(owner, str):
        return False
    host, _, rest = owner.partition(" ")
    pid_text, _, started = rest.partition(" ")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False  # another machine's claim: its time budget bounds it
    if len(pid_text) > 10 or not 0 < int(pid_text) <= MAX_PID:
        return True  # no such process can exist
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (OSError, OverflowError, ValueError):  # alive, but another user's (or a platform's odd limit)
        pass
    return bool(started) and _start_time(pid) not in ("", started)  # the pid was reused


Update = Callable[[State], State]


def namespace(backends: Sequence[str]) -> str:
    """The name of a backend set: its default state file's and its key's in a shared store."""
    return hashlib.sha256("\n".join(backends).encode("utf-8")).hexdigest()[:16]


def default_path(backends: Sequence[str]) -> str:
    """The per-backend-set file in the user cache directory."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
    return os.path.join(cache, "requests-failover", f"{namespace(backends)}.json")


def encode(state: State) -> bytes:
    document = {
        "version": FORMAT_VERSION,
        "backends": list(state.backends),
        "active": state.active,
        "checked_at": state.checked_at,
        "probing_until": state.probing_until,
        "probing_by": state.probing_by,
        "health": {url: {name: getattr(h, name) for name in _HEALTH_FIELDS} for url, h in state.health.items()},
    }
    # One line, no indent: json's C encoder (an indent means its pure-Python one, several
    # times slower on a request that publishes an outage).
    return json.dumps(document, sort_keys=True).encode("utf-8")


#: The fields of a backend's record, in the file (its values are numbers, strings and None: no copy needed).
_HEALTH_FIELDS = tuple(field.name for field in dataclasses.fields(Health))


# -- validation of a stored document: every field to its type and range ----------------------
# A validator takes the stored value and the reader's clock (unix time) and
# returns the value to use, clamped into range, or raises ValueError (the
# document is then ignored, logged once by the caller).


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError("not a number")
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        raise ValueError("out of range") from None
    if not math.isfinite(number):
        raise ValueError("not a finite number")
    return number


#: Seconds ahead of now the library ever writes a time (the longest down time or Retry-After).
HORIZON = max(DOWN_CAP, RETRY_AFTER_CAP)


def _until(ahead: float) -> Callable[[Any, float], float]:
    """A unix time clamped to [0, now + ``ahead``] (a hostile file cannot keep a backend down for a year)."""

    def check(value: Any, now: float) -> float:
        return min(max(_number(value), 0.0), now + ahead)

    return check


_time = _until(HORIZON)


def _optional_time(value: Any, now: float) -> Optional[float]:
    return None if value is None else _time(value, now)


def _latency(value: Any, now: float) -> Optional[float]:
    """Milliseconds, clamped to [0, one day]."""
    return None if value is None else min(max(_number(value), 0.0), 86_400_000.0)


def _count(limit: int) -> Callable[[Any, float], int]:
    """A whole number in [0, ``limit``] (a bigger one is clamped: a counter cannot go wrong by being large)."""

    def check(value: Any, now: float) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError("not a whole number >= 0")
        return min(value, limit)

    return check


def _tristate(value: Any, now: float) -> Optional[bool]:
    if value is not None and not isinstance(value, bool):
        raise ValueError("not a bool")
    return value


def _text(limit: int) -> Callable[[Any, float], Optional[str]]:
    def check(value: Any, now: float) -> Optional[str]:
        if value is None:
            return None
        if not isinstance(value, str):
            raise ValueError("not a string")
        text: str = value
        if not text.isprintable():  # a terminal escape, a line feed: shown escaped, never as is
            text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
        return text[:limit]

    return check


#: Every field of a stored :class:`Health` and its validator; a field absent
#: from a document takes the dataclass default. (A new field: one line here.)
HEALTH_FIELDS: Dict[str, Callable[[Any, float], Any]] = {
    "healthy": _tristate,
    "consecutive_failures": _count(1 << 20),
    "down_until": _time,
    "hold_until": _time,
    "last_latency_ms": _latency,
    "last_error": _text(300),
    "level": _count(64),
    "successes": _count(1 << 20),
    "failed_at": _time,
    "probed_at": _time,
    "demoted_until": _until(DEMOTE_CAP),
    "demotion_level": _count(64),
    "demotion_reason": _text(300),
    "recovered_at": _until(0.0),
}
#: Process ids above this do not exist anywhere (pid_t is a signed 32-bit int).
MAX_PID = (1 << 31) - 1


def _owner(value: Any, now: float) -> Optional[str]:
    """A probe claim's owner, ``"host pid start-time"`` (see :func:`owner_token`), or None."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > 300 or not value.isprintable():
        raise ValueError("bad probing_by")
    host, _, rest = value.partition(" ")
    pid, _, started = rest.partition(" ")
    if not host or not pid.isdigit() or not 0 < int(pid) <= MAX_PID or " " in started:
        raise ValueError("bad probing_by")
    return value


def decode(data: bytes, backends: Tuple[str, ...], now: float) -> State:
    """Parse and validate a stored document (the state file's, a shared store's); ``ValueError`` on anything off."""
    if len(data) > MAX_FILE_BYTES:
        raise ValueError("too large")
    try:
        return _decode_document(data, backends, now)
    except (TypeError, KeyError, RecursionError, UnicodeDecodeError, OverflowError) as exc:
        raise ValueError(str(exc) or type(exc).__name__) from None


def _decode_document(data: bytes, backends: Tuple[str, ...], now: float) -> State:
    """Parse and validate every field of the document (raises ``ValueError`` and, on odd input, others).

    Fields are checked to type and range before anything uses them: times in
    the future beyond what this library would ever write are clamped (so a
    hostile file cannot keep a backend down for a year, nor overflow a date
    conversion), counters are clamped, a probe claim must name a possible
    process; anything else off makes the whole document ignored.
    """
    document = json.loads(data.decode("utf-8"))
    if not isinstance(document, dict) or document.get("version") != FORMAT_VERSION:
        raise ValueError("unknown format version")
    if document.get("backends") != list(backends):
        raise ValueError("written for another backend set")
    active = document.get("active")
    if active is not None and active not in backends:
        raise ValueError("names a backend that is not configured")
    health: Dict[str, Health] = {}
    table = document.get("health", {})
    if not isinstance(table, dict):
        raise ValueError("health is not an object")
    for url, record in table.items():
        if url not in backends or not isinstance(record, dict):
            raise ValueError("health names a backend that is not configured")
        fields: Dict[str, Any] = {}
        for name, check in HEALTH_FIELDS.items():
            if name in record:
                try:
                    fields[name] = check(record[name], now)
                except ValueError:
                    raise ValueError(f"bad {name}") from None
        health[url] = Health(**fields)
    try:
        checked_at = _optional_time(document.get("checked_at"), now)
        probing_until = _time(document.get("probing_until", 0.0), now)
    except ValueError:
        raise ValueError("bad checked_at or probing_until") from None
    return State(
        backends=backends,
        active=active,
        checked_at=checked_at,
        health=health,
        probing_until=probing_until,
        probing_by=_owner(document.get("probing_by"), now),
    )


class Lease(enum.Enum):
    """The answer of a store to a lease request (a probe round's, a failback probe's)."""

    TAKEN = "taken"  # ours now: go ahead
    HELD = "held"  # another machine holds it: leave the work to it
    LOCAL = "local"  # no lease to be had (a local store, or a remote one away): the claim in the state decides


class _Local:
    """What the local stores share: no leases (the probe claim lives in the state), nothing to close."""

    lease_based = False

    def lease(self, name: str, owner: str, seconds: float) -> Lease:
        return Lease.LOCAL

    def release(self, name: str, owner: str) -> None:
        pass

    def status(self) -> None:
        return None

    def close(self) -> None:
        pass


class MemoryStore(_Local):
    """No persistence: the selection lives in this process only."""

    location: Optional[str] = None
    persistent = False

    def load(self, backends: Tuple[str, ...], now: float) -> Optional[State]:
        return None

    def changed(self) -> bool:
        return False

    def poll(self, backends: Tuple[str, ...], now: float) -> Optional[State]:
        return None

    def update(self, fn: Update, current: State, now: float) -> State:
        return fn(current)


class FileStore(_Local):
    """The selection in a JSON file shared by every process on this machine."""

    def __init__(self, path: str) -> None:
        self.location: Optional[str] = os.path.abspath(path)
        self._path: Optional[str] = self.location
        self._seen: Optional[Tuple[int, int, int]] = None
        #: the bytes last read or written and their state: the same bytes read again are not decoded again
        self._known: Tuple[bytes, Optional[State]] = (b"", None)
        self._complained = False
        self._thread_lock = threading.Lock()
        self._writer_lock: Optional[_WriterLock] = None
        _runtime.reset_after_fork(self)

    def _after_fork(self) -> None:
        # A lock inherited through fork() may be held by a thread that does not
        # exist in the child (older filelock releases do not handle fork).
        self._thread_lock = threading.Lock()
        self._writer_lock = None

    # -- reading: no file lock (the caller serialises adoption) ------------------
    def _read(self, backends: Tuple[str, ...], now: float) -> Optional[State]:
        if self._path is None:
            return None
        try:
            fd = os.open(self._path, _OPEN_FLAGS)
        except FileNotFoundError:
            self._seen = None
            return None
        except OSError as exc:  # a symlink (ELOOP), a socket (ENXIO), no permission
            self._seen = _stamp(self._path)
            self._complain(f"cannot read {self._path}: {exc}")
            return None
        try:
            stat = os.fstat(fd)
            self._seen = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
            if not stat_module.S_ISREG(stat.st_mode):
                self._complain(f"ignoring {self._path}: not a regular file")
                return None
            data = os.read(fd, MAX_FILE_BYTES + 1)
        except OSError as exc:
            self._complain(f"cannot read {self._path}: {exc}")
            return None
        finally:
            os.close(fd)
        known, state = self._known
        if state is not None and data == known and state.backends == backends:
            # Decoded before: the times in it were clamped against an earlier
            # clock, which only makes the clamps tighter now.
            return state
        try:
            state = decode(data, backends, now)
        except ValueError as exc:
            self._complain(f"ignoring state file {self._path}: {exc}")
            return None
        self._known = (data, state)
        return state

    def load(self, backends: Tuple[str, ...], now: float) -> Optional[State]:
        return self._read(backends, now)

    @property
    def persistent(self) -> bool:
        """False once the location proved unusable (the selection is then in memory only)."""
        return self._path is not None

    def changed(self) -> bool:
        """Whether the file may have changed since we last read it (one ``lstat``)."""
        return self._path is not None and _stamp(self._path) != self._seen

    def poll(self, backends: Tuple[str, ...], now: float) -> Optional[State]:
        """The file's state if another process changed it since we last looked.

        Callers that keep what it returns call it under their own lock, so that
        what is read last is what is kept.
        """
        if not self.changed():
            return None
        return self._read(backends, now)

    # -- writing: under the lock -------------------------------------------
    def _lock(self) -> _WriterLock:
        if self._writer_lock is None:
            assert self._path is not None
            self._writer_lock = _WriterLock(self._path + ".lock")
        return self._writer_lock

    def update(self, fn: Update, current: State, now: float) -> State:
        """Apply ``fn`` to the freshest state (the file's, else ``current``) and publish.

        If the lock cannot be had in ``LOCK_TIMEOUT`` the update is kept in
        memory only; if the location is unwritable the store degrades to
        memory for good, with one warning.
        """
        if self._path is None or _EXIT.exiting:
            return fn(current)
        with self._thread_lock:
            try:
                try:
                    return self._update_locked(fn, current, now)
                except OSError:
                    if not _PREPARED.forget(self._path):
                        raise
                    # prepared earlier in this process: the directory or the lock file may be
                    # gone since (removed by hand, a cache cleaner); prepare again, once
                    return self._update_locked(fn, current, now)
            except Timeout:
                log.warning("state file %s is locked by another process; keeping this update in memory", self._path)
                return fn(current)
            except (OSError, _Unsafe) as exc:
                log.warning("state file %s is not usable (%s); keeping the selection in memory only", self._path, exc)
                _PREPARED.forget(self._path)
                self._path = None
                return fn(current)

    def _update_locked(self, fn: Update, current: State, now: float) -> State:
        """Read-modify-write under the file lock, the directory prepared once per process and path.

        And again when the state file is missing (one ``lstat``): the directory
        may have been removed since, and filelock would create it with the
        umask's mode, not ours.
        """
        assert self._path is not None
        if _PREPARED.needed(self._path) or _stamp(self._path) is None:
            self._prepare_directory()
            _PREPARED.done(self._path)
        with self._lock():
            base = self._read(current.backends, now) or current
            new = fn(base)
            if new is not base:
                self._write(new)
            return new

    def _prepare_directory(self) -> None:
        """Create the directory and the lock file; refuse what another user could redirect.

        filelock opens the lock path following symlinks (3.12 even truncates
        what it points to), so the lock file is created here, never through a
        symlink, and used only while it is a regular file of ours. In a
        directory other users can write to, only the sticky bit keeps them from
        replacing our files with symlinks afterwards.
        """
        assert self._path is not None
        directory = os.path.dirname(self._path)
        os.makedirs(directory, mode=0o700, exist_ok=True)
        info = os.stat(directory)
        shared = info.st_mode & (stat_module.S_IWGRP | stat_module.S_IWOTH)
        if shared and not info.st_mode & stat_module.S_ISVTX:
            raise _Unsafe(f"{directory} is writable by other users and not sticky")
        lock_path = self._path + ".lock"
        try:
            os.close(os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600))
        except FileExistsError:
            pass
        uid = os.geteuid() if hasattr(os, "geteuid") else None
        for path in (lock_path, self._path):
            try:
                found = os.lstat(path)
            except FileNotFoundError:
                continue
            if path == lock_path and not stat_module.S_ISREG(found.st_mode):
                raise _Unsafe(f"{path} is not a regular file")
            if shared and uid is not None and found.st_uid != uid:
                raise _Unsafe(f"{path} belongs to another user")

    def _write(self, state: State) -> None:
        """Publish ``state``: temp file (O_EXCL, never through a symlink), replace.

        No fsync: the file is a cache that every process can rebuild by
        probing, and a request that discovered an outage writes it before it
        returns (an fsync would cost that request milliseconds). The rename is
        atomic for every running process; after a power loss or a kernel crash
        the file may be an older selection, or empty (then ignored and
        rewritten), never a mix of two.
        """
        assert self._path is not None
        directory, name = os.path.split(self._path)
        with _EXIT.writing:
            if _EXIT.exiting:
                return
            now = time.monotonic()
            if now >= getattr(self, "_next_sweep", 0.0):  # a directory listing: not on every write
                self._sweep(directory, name)
                self._next_sweep = now + SWEEP_EVERY
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)  # mode 0600
            try:
                data = encode(state)
                try:  # a plain write: a file object would cost an ioctl, a seek and an fstat more
                    _write_all(fd, data)
                    stat = os.fstat(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, self._path)
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
        self._seen = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        self._known = (data, state)

    @staticmethod
    def _sweep(directory: str, name: str) -> None:
        """Remove temp files of this state file left by writers that died mid-write.

        Called under the file lock, which every writer holds from its temp
        write to its replace: any temp file of this state file found now was
        left by a writer that is gone.
        """
        for path in glob.glob(os.path.join(glob.escape(directory), f".{glob.escape(name)}.*.tmp")):
            try:
                os.unlink(path)
            except OSError:
                pass

    def _complain(self, message: str) -> None:
        self._complained = complain_once(self._complained, message)


def complain_once(complained: bool, message: str) -> bool:
    """Log ``message`` as a warning the first time, then at debug level; return True."""
    log.log(logging.DEBUG if complained else logging.WARNING, message)
    return True


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _Prepared:
    """The state paths whose directory and lock file this process has checked (see ``_prepare_directory``).

    Checked once per process and path, not on every write (seven system calls
    on a request that publishes an outage): what the check guards against
    cannot come later, as a directory writable by others is used only if it
    is sticky, so nobody else can replace our lock file afterwards. After an
    error, or when the state file is gone, the path is checked again (the
    directory may have been removed).
    """

    def __init__(self) -> None:
        self._paths: Set[Tuple[int, str]] = set()
        self._lock = threading.Lock()

    def needed(self, path: str) -> bool:
        return (os.getpid(), path) not in self._paths

    def done(self, path: str) -> None:
        with self._lock:
            self._paths.add((os.getpid(), path))

    def forget(self, path: Optional[str]) -> bool:
        """Check ``path`` again next time; whether it had been checked."""
        with self._lock:
            key = (os.getpid(), path or "")
            known = key in self._paths
            self._paths.discard(key)
            return known


_PREPARED = _Prepared()


class _WriterLock:
    """The writers' lock on ``<file>.lock``: flock on POSIX, as :class:`filelock.FileLock` takes it there.

    An uncontended lock is one ``open``, one ``flock`` and one ``close``
    (FileLock's bookkeeping costs a request that publishes an outage a few
    hundred microseconds more). A contended one, or a platform or file system
    without flock, is left to FileLock: it waits, polling, for at most
    ``LOCK_TIMEOUT`` (then :class:`filelock.Timeout`). Both contend for the
    same flock of the same file, so processes of either kind exclude each other.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._filelock = FileLock(path, timeout=LOCK_TIMEOUT, mode=0o600)
        self._fast = fcntl is not None
        self._fd: Optional[int] = None

    def __enter__(self) -> None:
        if self._fast:
            self._fd = self._try_flock()
            if self._fd is not None:
                return
        self._filelock.acquire()

    def __exit__(self, *exc_info: object) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            self._filelock.release()
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _try_flock(self) -> Optional[int]:
        """The lock file's descriptor, locked; None: contended, or left to FileLock."""
        try:  # never through a symlink; a missing file: FileLock creates it (our caller prepared it)
            fd = os.open(self.path, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (EACCES, EAGAIN, EWOULDBLOCK):
                self._fast = False  # no flock on this file system: FileLock knows what to do
            return None


class _Unsafe(Exception):
    """The state location could be redirected by another user."""


def _stamp(path: str) -> Optional[Tuple[int, int, int]]:
    try:
        info = os.lstat(path)
    except OSError:
        return None
    return (info.st_ino, info.st_mtime_ns, info.st_size)


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
