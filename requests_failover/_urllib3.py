"""The private parts of urllib3 the connect race needs, in one place.

The race (:mod:`._hedge`) opens a connection into a pool's own slot before
the request is written, so that the request, sent the ordinary way, finds it
there. urllib3 has no public API for that; these are the only private names
the library touches, each wrapped here so that an upgrade breaks one module
loudly (``tests/test_urllib3_private.py`` checks each on the installed
urllib3; tox runs it on 1.26 in the ``oldest`` environment and on 2.x
elsewhere):

- ``HTTPConnectionPool._get_conn(timeout)`` / ``_put_conn(conn)``: take a
  slot of the pool (a connection, or None for a new one) and give it back;
- ``HTTPConnectionPool.pool``: the ``queue.LifoQueue`` of idle slots, read
  (never changed) to see whether a keep-alive connection is waiting;
- ``PoolManager.pools._container``: the ``RecentlyUsedContainer``'s mapping,
  read to see whether a pool is still the manager's (not evicted, not closed).
"""

from __future__ import annotations

from typing import Any, List

from urllib3.util.connection import is_connection_dropped

__all__ = ["has_idle_connection", "idle_slots", "is_managed", "next_slot_alive", "put_conn", "take_conn"]


def take_conn(pool: Any) -> Any:
    """Take a slot of ``pool``: an idle connection or a fresh, unconnected one (blocks if ``block``)."""
    return pool._get_conn()


def put_conn(pool: Any, conn: Any) -> None:
    """Give a slot back: a connection to keep, or None for a failed connect (the slot is freed)."""
    pool._put_conn(conn)


def idle_slots(pool: Any) -> List[Any]:
    """The idle slots of ``pool`` (connections, or None placeholders); empty if unknown."""
    queue = getattr(getattr(pool, "pool", None), "queue", None)
    return list(queue) if queue is not None else []


def has_idle_connection(pool: Any) -> bool:
    """Whether ``pool`` holds a pooled connection that is still open (advisory)."""
    for conn in idle_slots(pool):
        if conn is not None and getattr(conn, "sock", None) is not None:
            try:
                if not is_connection_dropped(conn):
                    return True
            except Exception:  # an unusual connection class: assume it is usable
                return True
    return False


def next_slot_alive(pool: Any) -> bool:
    """Whether the slot ``pool`` gives the next request (LIFO: the last) holds an open connection.

    The common case of a keep-alive pool, answered without copying the queue:
    one index and one ``poll()`` (advisory, as :func:`has_idle_connection`).
    """
    queue = getattr(getattr(pool, "pool", None), "queue", None)
    try:
        conn = queue[-1] if queue else None
    except IndexError:  # taken by another thread meanwhile
        return False
    if conn is None or getattr(conn, "sock", None) is None:
        return False
    try:
        return not is_connection_dropped(conn)
    except Exception:  # an unusual connection class: assume it is usable
        return True


def is_managed(manager: Any, pool: Any) -> bool:
    """Whether ``pool`` is still one of ``manager``'s pools (not evicted, not closed)."""
    container = getattr(getattr(manager, "pools", None), "_container", None)
    if container is None or getattr(pool, "pool", None) is None:
        return False
    return any(value is pool for value in list(container.values()))
