"""Testing helpers: make failover instant and deterministic in a test suite.

:func:`set_testing` is the one switch (as ``stamina.set_testing``): backoff
waits return at once, and the library's clock can be replaced by one the
test moves by hand::

    from requests_failover.testing import set_testing

    set_testing(True)            # no backoff sleeps
    ...
    set_testing(False)           # back to real time

or, scoped, ``with set_testing(True, clock=my_clock): ...``.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

from . import _runtime

__all__ = ["is_testing", "set_testing"]


class _Restore:
    """Returned by :func:`set_testing`: as a context manager, restores the mode before it."""

    def __init__(self, previous: Tuple[bool, Callable[[], float], Callable[[float], None]]) -> None:
        self._previous = previous

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        _runtime.restore(self._previous)


def set_testing(
    testing: bool,
    *,
    clock: Optional[Callable[[], float]] = None,
    sleep: Optional[Callable[[float], None]] = None,
) -> _Restore:
    """Turn testing mode on or off for this process.

    :param testing: True: backoff waits are instant (``sleep`` replaces them);
        False: real waits and the real clock again.
    :param clock: unix-time source the library reads instead of ``time.time``
        (for example a fake clock a test advances to make a selection stale).
    :param sleep: called with each backoff delay in seconds instead of
        sleeping (for example ``list.append`` to assert the delays); default in
        testing mode: return at once.

    Used as a context manager (``with set_testing(True): ...``), the mode
    before the call comes back at the end of the block.
    """
    if not isinstance(testing, bool):
        raise TypeError(f"testing: expected a bool, got {type(testing).__name__}")
    for name, fn in (("clock", clock), ("sleep", sleep)):
        if fn is not None and not callable(fn):
            raise TypeError(f"{name}: expected a callable, got {type(fn).__name__}")
    if not testing and (clock is not None or sleep is not None):
        raise ValueError("clock/sleep: only with set_testing(True, ...)")
    previous = _runtime.snapshot()
    _runtime.configure(testing, clock, sleep)
    return _Restore(previous)


def is_testing() -> bool:
    """Whether testing mode is on."""
    return _runtime.testing()
