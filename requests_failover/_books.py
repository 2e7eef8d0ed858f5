"""The books of one adapter's selection: its state in memory and in its store.

Requests read :attr:`Books.state` (a plain attribute load). An update is
applied in memory at once and written to the store behind the caller's back,
by the background thread (write-behind: no file lock on a request's path);
a request that discovered an outage publishes it before it returns
(read-your-writes, :meth:`Books.publish`). Another process's change is
adopted on the next :meth:`Books.sync` (one ``lstat`` of the state file).
What this machine learned while a remote store was away is replayed once it
answers (:meth:`Books.replay`).

Two locks: ``_lock`` guards the state in memory and the queue of pending
updates (never held during I/O); ``_flush_lock`` serialises the writes to the
store. Every change of the selection is handed to ``announce`` (the
reporting side), outside both.
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Iterable, List, Optional, Tuple, Union

from . import _runtime
from ._background import WORKER
from ._config import Options
from ._fleet import SharedStore, resolve
from ._policy import State
from ._state import FileStore, MemoryStore, Update, open_store

#: Longest wait (seconds) of a request for its discovery to reach a remote store (Redis):
#: the remote calls stay on the background thread, so a frozen store costs a request this, once.
PUBLISH_WAIT = 0.5
#: Updates kept for a remote store that is away, at most (the oldest are dropped first).
MAX_UNPUBLISHED = 64

#: ``announce(previous, current, reason)``: the selection may have changed.
Announce = Callable[[State, State, str], None]
#: Why a change read from the store is announced.
CHANGED_ELSEWHERE = "changed by another process"


class Books:
    """The state of one backend set, kept in memory and written behind to its store."""

    def __init__(self, options: Options, announce: Announce, clock: Callable[[], float] = _runtime.now) -> None:
        self._options = options
        self._announce = announce
        self._clock = clock
        self._backends = tuple(b.url for b in options.targets)
        self.store = self._open_store()
        self.closed = False
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._fresh_process()
        loaded = self.store.load(self._backends, self._clock())
        self.state: State = loaded or State(self._backends)
        self._persisted = self.state  # what the store holds, as far as we know
        _runtime.reset_after_fork(self)

    def _open_store(self) -> Union[MemoryStore, FileStore, SharedStore]:
        local = open_store(self._options.state_file, self._backends)
        if self._options.state_store is not None:
            return SharedStore(resolve(self._options.state_store), local, self._backends)
        return local

    def _fresh_process(self) -> None:
        self._pending: List[Update] = []  # write-behind: applied in memory, not yet in the store
        self._unpublished: List[Update] = []  # written while the remote store was away, for it
        self._taken = 0  # flushes that took pending updates (a generation count)
        self._written = 0  # the last of them that ended
        self._flushed = threading.Condition(threading.Lock())  # notified when a flush ends

    def _after_fork(self) -> None:
        # A lock inherited through fork() may be held by a thread that does not
        # exist in the child; the parent writes its own pending updates.
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._fresh_process()

    # -- reading ------------------------------------------------------------------------------------
    def sync(self) -> State:
        """The current state, adopting another process's change if there is one (one stat).

        The read and the adoption happen under one lock: a thread that read an
        older file can never store it after another thread stored a newer one.
        Updates of ours not yet written are applied on top.
        """
        if not self.store.changed():
            return self.state
        with self._lock:
            shared = self.store.poll(self._backends, self._clock())
            if shared is None:
                return self.state
            self._persisted = shared
            previous, self.state = self.state, _apply(self._pending, shared)
            current = self.state
        self._announce(previous, current, CHANGED_ELSEWHERE)
        return current

    def writing(self) -> bool:
        """Whether updates wait to be written, or a write is under way."""
        return bool(self._pending) or self._flush_lock.locked()

    def unwritten(self) -> int:
        """How many updates wait to be written (for tests)."""
        return len(self._pending)

    # -- writing -------------------------------------------------------------------------------------
    def update(self, fn: Update, reason: str, wake: bool = True) -> None:
        """Apply ``fn`` in memory now; the store follows on the background thread (write-behind).

        No file lock or write on the caller's path: the worker flushes within
        milliseconds, and other processes see the change then. A failure is
        published at once on top of this (:meth:`publish`).
        """
        with self._lock:
            previous = self.state
            self.state = current = fn(previous)
            if current is previous:
                return
            if self.store.persistent and not self.closed:
                self._pending.append(fn)
            else:  # memory is the store (or, once closed, all there is: nothing piles up unwritten)
                self._persisted = current
        self._announce(previous, current, reason)
        if wake:
            WORKER.wake()  # a write to flush, or a schedule (failback probes) to recompute

    def update_now(self, fn: Update, reason: str) -> None:
        """Apply ``fn`` to the store's freshest state and publish it before returning."""
        self.flush()
        with self._flush_lock:
            previous, current = self._stored(self.store.update(fn, self._persisted, self._clock()))
        self._announce(previous, current, reason)

    def flush(self) -> None:
        """Write pending updates: each applied to the store's freshest state, under its lock."""
        if not self._pending:
            return
        with self._flush_lock:
            with self._lock:
                updates, self._pending = self._pending, []
                if updates:
                    self._taken += 1
                    taken = self._taken
            if not updates:
                return
            try:
                previous, current = self._stored(
                    self.store.update(lambda s: _apply(updates, s), self._persisted, self._clock())
                )
                if self.store_unreachable():  # kept on this machine only: replayed once the store answers
                    self._unpublished = (self._unpublished + updates)[-MAX_UNPUBLISHED:]
            finally:
                with self._flushed:
                    self._written = taken
                    self._flushed.notify_all()
        self._announce(previous, current, CHANGED_ELSEWHERE)

    def store_unreachable(self) -> Optional[bool]:
        """Whether the remote store is known unreachable (None: not known, or no remote store)."""
        status = self.store.status()
        return None if status is None or status["reachable"] is None else not status["reachable"]

    def replay_due(self, now: float) -> float:
        """Replay what the remote store missed if it answers again; when to look again (inf: no need)."""
        if not self._unpublished:
            return float("inf")
        if self.store_unreachable() is False:
            self.replay()
            return float("inf")
        return now + _runtime.interval(1.0)  # look again soon: the feed notices the store answering first

    def replay(self) -> None:
        """Publish what this machine learned while the remote store was away, now that it answers.

        Without this the store's older document, read back when it answers
        again, would win over the outage this machine discovered meanwhile
        (and nothing else might write it: the switch is done here). The
        updates are applied to the store's current document, as any update.
        """
        with self._flush_lock:
            updates, self._unpublished = self._unpublished, []
            if not updates:
                return
            previous, current = self._stored(
                self.store.update(lambda s: _apply(updates, s), self._persisted, self._clock())
            )
        self._announce(previous, current, CHANGED_ELSEWHERE)

    def publish(self) -> None:
        """Return once the updates pending now are in the store (read-your-writes).

        The state file is written here, on the caller's thread (a temp file
        and a rename, no fsync: well under a millisecond). A remote store's
        calls stay on the background thread, as everywhere on a request's path:
        the caller waits for that flush at most ``PUBLISH_WAIT``, so a store that
        hangs costs a request that, once (its breaker then skips it).
        """
        with self._lock:
            # the next flush takes them, or the flush under way took them already
            target = self._taken + 1 if self._pending else self._taken
        if self.store.lease_based:
            WORKER.wake()  # its thread writes
            deadline = time.monotonic() + PUBLISH_WAIT
            with self._flushed:
                while self._written < target and not self.closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._flushed.wait(left)
            return
        self.flush()
        self.wait_for_writes()

    def wait_for_writes(self) -> None:
        """Return once a write another thread has under way (with our updates, maybe) ended."""
        with self._flush_lock:
            pass

    def _stored(self, result: State) -> Tuple[State, State]:
        """Keep what the store now holds, with our updates not yet written on top; (before, after)."""
        with self._lock:
            self._persisted = result
            previous, self.state = self.state, _apply(self._pending, result)
            return previous, self.state

    # -- closing ----------------------------------------------------------------------------------------
    def close(self) -> None:
        """Write what is pending, then close the store; a request waiting for a publish stops waiting."""
        self.closed = True
        self.flush()
        self.wait_for_writes()  # a flush the worker thread has under way ends first
        with self._flushed:
            self._flushed.notify_all()

    def close_store(self) -> None:
        self.store.close()

    def reopen(self) -> bool:
        """A request after :meth:`close`: open the store again; whether this call reopened it."""
        with self._flush_lock:
            if not self.closed:
                return False
            self.store = self._open_store()
            self.closed = False
            return True


def _apply(updates: Iterable[Update], state: State) -> State:
    for update in updates:
        state = update(state)
    return state
