"""A shared store (Redis, Valkey, or a user's) layered over the machine's state file.

The selection talks to :class:`SharedStore` as to any store. Under it:

- the *remote* store (:class:`~requests_failover.store.StateStore`) holds the
  fleet's document; updates are compare-and-set, retried on a newer document;
- the *local* layer (the state file, or memory) is written with every document
  the process adopts or publishes, so a cold start with the remote store down
  starts from the last known selection, and the processes of one machine keep
  sharing through the file while the remote store is away;
- one *feed* thread per (remote store, backend set) and process subscribes to
  the store's announcements, reconciles with a read every few seconds (for
  announcements lost across reconnects), and rebuilds a document that vanished
  (``FLUSHALL``, expiry) from what the process knows;
- one *breaker* per remote store and process: after a failure nothing talks to
  the store until a growing backoff ends (one warning per outage), so an
  unreachable store costs a request nothing after the first detection.

A request's path never calls the remote store once anything is known: it
reads an attribute that the feed thread sets (and the state file's ``lstat``).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from typing import Callable, Dict, Optional, Tuple, TypedDict

from . import _redact as redact
from . import _runtime
from ._background import EXIT_WAIT, WORKER
from ._policy import State
from ._state import FileStore, Lease, MemoryStore, Update, complain_once, decode, encode, namespace
from .store import ENV_STATE_PASSWORD as ENV_STATE_PASSWORD  # re-exported: the CLI reads it here
from .store import StateStore

log = logging.getLogger("requests_failover")

#: Seconds between reads that reconcile with the store (announcements can be lost).
RECONCILE = 5.0
#: Backoff between attempts to reach a failing store: first, cap (seconds).
BACKOFF_FIRST = 0.5
BACKOFF_CAP = 30.0
#: Longest single wait for an announcement (also how soon a feed notices it is no longer needed).
WATCH_WAIT = 0.5
#: Compare-and-set attempts before an update stays on this machine.
CAS_TRIES = 100


class StoreStatus(TypedDict):
    """The shared store in :class:`~requests_failover.Status`."""

    location: str  # never a password
    reachable: Optional[bool]  # None: not tried yet
    last_error: Optional[str]


class _Breaker:
    """Whether a remote store may be tried now; one warning per outage."""

    def __init__(self, location: str, describe: Optional[Callable[[BaseException], str]] = None) -> None:
        self.location = redact.url(location, names=True)  # a store of the user's may put a password in it
        self._describe = describe
        self.reachable: Optional[bool] = None
        self.error: Optional[str] = None
        self._delay = 0.0
        self._retry_at = 0.0  # monotonic
        self._lock = threading.Lock()
        _runtime.reset_after_fork(self)

    def _after_fork(self) -> None:
        self._lock = threading.Lock()

    def wait(self) -> float:
        """Seconds until the store may be tried again (0: now)."""
        return max(0.0, self._retry_at - time.monotonic())

    def failed(self, exc: BaseException) -> None:
        with self._lock:  # the feed and the background thread may fail at once: one warning
            first = self.reachable is not False
            self.reachable = False
            self.error = self._explain(exc)
            self._delay = min(BACKOFF_CAP, max(BACKOFF_FIRST, self._delay * 2))
            self._retry_at = time.monotonic() + _runtime.interval(self._delay)
        if first:
            log.warning(
                "state store %s is not usable (%s); keeping the selection on this machine until it answers",
                self.location,
                self.error,
            )
        else:
            log.debug("state store %s still not usable: %s", self.location, self.error)

    def _explain(self, exc: BaseException) -> str:
        """The store's own description of ``exc`` if it has one; never a password of its URL."""
        text = f"{type(exc).__name__}: {exc}"
        if self._describe is not None:
            try:
                text = self._describe(exc)
            except Exception:  # a user's store: its describe() must not break the breaker
                pass
        return redact.text(text)[:300]

    def succeeded(self) -> None:
        if self.reachable is True:
            return  # the common case, without the lock
        with self._lock:
            again = self.reachable is False
            self.reachable, self.error, self._delay, self._retry_at = True, None, 0.0, 0.0
        if again:
            log.warning("state store %s answers again; selection re-synced", self.location)


_registry_lock = threading.RLock()
_breakers: Dict[int, Tuple[StateStore, _Breaker]] = {}
_url_stores: Dict[Tuple[str, Optional[str]], StateStore] = {}


def _breaker(remote: StateStore) -> _Breaker:
    with _registry_lock:
        entry = _breakers.get(id(remote))
        if entry is None or entry[0] is not remote:
            entry = _breakers[id(remote)] = (remote, _Breaker(remote.location, getattr(remote, "describe", None)))
        return entry[1]


def resolve(spec: object) -> StateStore:
    """The store for a ``state_store`` value: a URL (one store per URL and process) or a store object."""
    if not isinstance(spec, str):
        return spec  # type: ignore[return-value]  # validated by build_options
    password = os.environ.get(ENV_STATE_PASSWORD) or None
    with _registry_lock:
        store = _url_stores.get((spec, password))
        if store is None:
            from .store import RedisStore

            store = _url_stores[(spec, password)] = RedisStore.from_url(spec, password=password)
        return store


class _Feed:
    """One thread per (remote store, backend set) and process: announcements and reconciliation."""

    def __init__(self, remote: StateStore, name: str) -> None:
        self.remote = remote
        self.name = name
        self.breaker = _breaker(remote)
        self.layers: weakref.WeakSet[SharedStore] = weakref.WeakSet()
        self.last: Optional[bytes] = None
        self.thread = threading.Thread(target=self._run, name="requests-failover-feed", daemon=True)

    def _run(self) -> None:
        while self._needed():
            wait = self.breaker.wait()
            if wait > 0:
                time.sleep(min(wait, WATCH_WAIT))
                continue
            try:
                self._deliver(self.remote.watch(self.name, 0))  # subscribed before reading: no change slips by
                self._deliver(self.remote.get(self.name), read=True)
                self.breaker.succeeded()
                until = time.monotonic() + _runtime.interval(RECONCILE)
                while self.layers and time.monotonic() < until:
                    wait = min(WATCH_WAIT, max(0.001, until - time.monotonic()))
                    self._deliver(self.remote.watch(self.name, wait))
            except Exception as exc:  # the store failed: back off, then subscribe and read anew
                self.breaker.failed(exc)
        unwatch = getattr(self.remote, "unwatch", None)
        if unwatch is not None:
            unwatch(self.name)

    def _needed(self) -> bool:
        """Whether a session still listens; if none does, leave the registry (under its lock, so
        that a session subscribing now starts a new feed rather than join this ending one)."""
        with _registry_lock:
            if self.layers:
                return True
            if _feeds.get((id(self.remote), self.name)) is self:
                del _feeds[(id(self.remote), self.name)]
            return False

    def _deliver(self, raw: Optional[bytes], read: bool = False) -> None:
        if raw is None and not read:
            return  # no announcement
        if raw is None:  # the document is gone (flushed, expired): rebuild it from what we know
            for layer in list(self.layers):
                if layer.rebuild():
                    return
            self.last = None
            return
        if raw == self.last:
            return
        self.last = raw
        for layer in list(self.layers):
            layer.receive(raw)
        WORKER.wake()


_feeds: Dict[Tuple[int, str], _Feed] = {}


def _subscribe(layer: SharedStore) -> None:
    key = (id(layer.remote), layer.name)
    with _registry_lock:
        feed = _feeds.get(key)
        if feed is None or feed.remote is not layer.remote or not feed.thread.is_alive():
            feed = _feeds[key] = _Feed(layer.remote, layer.name)
            feed.layers.add(layer)
            feed.thread.start()
        else:
            feed.layers.add(layer)


def _unsubscribe(layer: SharedStore) -> None:
    with _registry_lock:
        feed = _feeds.get((id(layer.remote), layer.name))
        if feed is not None:
            feed.layers.discard(layer)


def _after_fork() -> None:
    """The parent's feed threads do not exist in a child."""
    global _registry_lock
    _registry_lock = threading.RLock()
    _feeds.clear()


class _ForkHook:
    def _after_fork(self) -> None:
        _after_fork()


_FORK_HOOK = _ForkHook()
_runtime.reset_after_fork(_FORK_HOOK)


def _at_exit() -> None:
    """Stop the feed threads before the interpreter finalizes (each ends within ``WATCH_WAIT``)."""
    with _registry_lock:
        feeds = list(_feeds.values())
    for feed in feeds:
        feed.layers.clear()
    deadline = time.monotonic() + EXIT_WAIT
    for feed in feeds:
        if feed.thread.is_alive():
            feed.thread.join(max(0.0, deadline - time.monotonic()))


atexit.register(_at_exit)


class SharedStore:
    """The selection in a remote store, with the machine's state file (or memory) as the local layer."""

    persistent = True
    lease_based = True

    def __init__(self, remote: StateStore, local: FileStore | MemoryStore, backends: Tuple[str, ...]) -> None:
        self.remote = remote
        self.name = namespace(backends)
        self._local = local
        self._backends = backends
        self._breaker = _breaker(remote)
        self._raw: Optional[bytes] = None  # the document we last saw in the store
        self._known: Optional[State] = None  # the last valid state, ours or the store's
        self._pushed: Optional[State] = None
        self._pushed_seq = 0
        self._taken_seq = 0
        self._subscribed = False
        self._complained = False
        self._closed = False
        _runtime.reset_after_fork(self)

    def _after_fork(self) -> None:
        self._subscribed = False  # the child starts its own feed on its first request

    @property
    def location(self) -> Optional[str]:
        return self._local.location

    def status(self) -> StoreStatus:
        breaker = self._breaker
        return {"location": breaker.location, "reachable": breaker.reachable, "last_error": breaker.error}

    # -- reading ---------------------------------------------------------------------------------------
    def load(self, backends: Tuple[str, ...], now: float) -> Optional[State]:
        """The local layer's state; the store's only when the machine knows nothing (a cold start)."""
        state = self._local.load(backends, now)
        if state is None and self._breaker.wait() == 0:
            try:
                raw = self.remote.get(self.name)
                self._breaker.succeeded()
            except Exception as exc:
                self._breaker.failed(exc)
            else:
                self._raw = raw
                state = self._decode(raw, now)
        self._known = state
        return state

    def changed(self) -> bool:
        """Whether a newer state may be waiting (no I/O but the state file's ``lstat``)."""
        if not self._subscribed and not self._closed:
            self._subscribed = True
            _subscribe(self)
        return self._pushed_seq != self._taken_seq or self._local.changed()

    def poll(self, backends: Tuple[str, ...], now: float) -> Optional[State]:
        seq = self._pushed_seq
        if seq != self._taken_seq:
            self._taken_seq = seq
            return self._pushed
        return self._local.poll(backends, now)

    def receive(self, raw: bytes) -> None:
        """An announced or read document (on the feed thread)."""
        if raw == self._raw and self._known is not None:
            return  # our own write, announced back to us
        self._raw = raw
        state = self._decode(raw, _runtime.now())
        if state is None:
            return
        self._known = state
        self._pushed = state
        self._pushed_seq += 1  # the next request adopts it; the local layer follows (an fsync)
        self._mirror(state)

    def rebuild(self) -> bool:
        """Write what we know into a store that lost the document; False if we know nothing.

        True also when another machine rebuilt it first (the compare-and-set then fails).
        """
        known = self._known
        if known is None or self._closed:
            return False
        data = encode(known)
        if self.remote.compare_and_set(self.name, None, data):
            self._raw = data
            log.warning(
                "state store %s had no selection for this backend set; rebuilt it",
                self._breaker.location,
            )
        return True

    def _decode(self, raw: Optional[bytes], now: float) -> Optional[State]:
        if raw is None:
            return None
        try:
            return decode(raw, self._backends, now)
        except ValueError as exc:
            message = f"ignoring the selection in state store {self._breaker.location}: {exc}"
            self._complained = complain_once(self._complained, message)
            return None

    # -- writing ---------------------------------------------------------------------------------------
    def update(self, fn: Update, current: State, now: float) -> State:
        """Apply ``fn`` to the store's freshest state and publish it (compare-and-set, retried)."""
        if self._breaker.wait() == 0 and not self._closed:
            raw = self._raw
            try:
                for _ in range(CAS_TRIES):
                    base = self._decode(raw, now)
                    new = fn(base if base is not None else current)
                    if new is base:
                        self._breaker.succeeded()
                        return new
                    data = encode(new)
                    if self.remote.compare_and_set(self.name, raw, data):
                        self._breaker.succeeded()
                        self._raw, self._known = data, new
                        self._mirror(new)
                        return new
                    raw = self.remote.get(self.name)
                log.warning(
                    "state store %s: too many concurrent updates; this one stays here",
                    self._breaker.location,
                )
            except Exception as exc:
                self._breaker.failed(exc)
        new = self._local.update(fn, current, now)
        self._known = new
        return new

    def _mirror(self, state: State) -> None:
        # ``current`` must not be ``state``: an update that returns its base writes nothing
        self._local.update(lambda _: state, State(self._backends), _runtime.now())

    # -- leases ------------------------------------------------------------------------------------------
    def lease(self, name: str, owner: str, seconds: float) -> Lease:
        """Take a lease in the store; ``Lease.LOCAL`` when the store is away (the local claim decides then)."""
        if self._breaker.wait() > 0 or self._closed:
            return Lease.LOCAL
        try:
            taken = self.remote.lease(self.name, name, owner, seconds)
        except Exception as exc:
            self._breaker.failed(exc)
            return Lease.LOCAL
        self._breaker.succeeded()
        return Lease.TAKEN if taken else Lease.HELD

    def release(self, name: str, owner: str) -> None:
        if self._breaker.wait() > 0:
            return
        try:
            self.remote.release(self.name, name, owner)
        except Exception as exc:
            self._breaker.failed(exc)

    def close(self) -> None:
        self._closed = True
        _unsubscribe(self)
