"""Process-wide runtime: the clock, the backoff sleep, and what a forked child resets.

Everything time-related in the library reads :func:`now` and :func:`sleep`
here, so that one public switch (:func:`requests_failover.testing.set_testing`)
can make a test suite's backoff waits instant and its clock controllable,
without a test knob in any constructor.

Fork handling lives here too, registered once with ``os.register_at_fork``
(as filelock does): every object that a child must not inherit as is (locks,
pooled connections) registers itself with :func:`reset_after_fork` and is
called in the child right after ``fork()``.
"""

from __future__ import annotations

import os
import time
import weakref
from typing import Callable, Optional, Protocol, Tuple

_clock: Callable[[], float] = time.time
_sleep: Callable[[float], None] = time.sleep
_testing = False


def now() -> float:
    """Unix time, seconds (the test clock when one is set)."""
    return _clock()


def sleep(seconds: float) -> None:
    """Wait a backoff delay (returns at once in testing mode)."""
    _sleep(seconds)


def testing() -> bool:
    return _testing


def custom_clock() -> bool:
    """Whether a test replaced the clock (background work then polls it)."""
    return _clock is not time.time


def interval(seconds: float) -> float:
    """A background probe interval: as given, or a hundredth of it in testing mode with the real clock."""
    return seconds / 100.0 if _testing and _clock is time.time else seconds


def configure(
    testing: bool, clock: Optional[Callable[[], float]] = None, sleep: Optional[Callable[[float], None]] = None
) -> None:
    """Set the runtime; see :func:`requests_failover.testing.set_testing`."""
    global _clock, _sleep, _testing
    _testing = testing
    _clock = clock if clock is not None else time.time
    _sleep = sleep if sleep is not None else _no_sleep if testing else time.sleep


def snapshot() -> Tuple[bool, Callable[[], float], Callable[[float], None]]:
    return _testing, _clock, _sleep


def restore(saved: Tuple[bool, Callable[[], float], Callable[[float], None]]) -> None:
    global _clock, _sleep, _testing
    _testing, _clock, _sleep = saved


def _no_sleep(seconds: float) -> None:
    """Testing mode: backoff waits are instant."""


class ForkAware(Protocol):
    def _after_fork(self) -> None: ...


_forkable: weakref.WeakSet[ForkAware] = weakref.WeakSet()


def reset_after_fork(obj: ForkAware) -> None:
    """Call ``obj._after_fork()`` in every child forked while ``obj`` is alive."""
    _forkable.add(obj)


def _in_child() -> None:
    for obj in list(_forkable):
        obj._after_fork()


if hasattr(os, "register_at_fork"):  # pragma: no branch - POSIX
    os.register_at_fork(after_in_child=_in_child)
