"""The urllib3 private names the connect race uses (requests_failover._urllib3), on the installed urllib3.

tox runs this file on urllib3 1.26 (the ``oldest`` environment) and on 2.x
(every other one): an upgrade that renames or changes one of them fails here,
by name, instead of somewhere in the race.
"""

from __future__ import annotations

import urllib3
from urllib3 import PoolManager

from requests_failover import _urllib3

from .conftest import wait_until

MAJOR = int(urllib3.__version__.split(".")[0])


def test_the_installed_urllib3_is_a_supported_major_version():
    assert MAJOR in (1, 2), urllib3.__version__
    if MAJOR == 1:
        assert tuple(int(p) for p in urllib3.__version__.split(".")[:2]) >= (1, 26)


def test_a_slot_taken_connected_and_given_back_is_an_idle_connection(primary):
    manager = PoolManager(maxsize=2)
    pool = manager.connection_from_url(primary.url)
    assert _urllib3.idle_slots(pool) == [None, None], "a new pool: two empty slots (the queue is pre-filled)"
    assert not _urllib3.has_idle_connection(pool)
    assert not _urllib3.next_slot_alive(pool)
    conn = _urllib3.take_conn(pool)
    assert getattr(conn, "sock", None) is None, "a fresh connection, not connected yet"
    conn.connect()
    _urllib3.put_conn(pool, conn)
    assert _urllib3.idle_slots(pool)[-1] is conn, "LIFO: the next request takes it"
    assert _urllib3.has_idle_connection(pool)
    assert _urllib3.next_slot_alive(pool)
    response = pool.urlopen("GET", "/via-slot", retries=False)
    assert response.status == 200
    assert [h.path for h in primary.requests] == ["/via-slot"]
    assert len({h.client_port for h in primary.requests}) == 1
    manager.clear()


def test_a_failed_connect_gives_its_slot_back_as_none(primary):
    manager = PoolManager(maxsize=1)
    pool = manager.connection_from_url(primary.url)
    _urllib3.take_conn(pool)
    assert _urllib3.idle_slots(pool) == [], "the only slot is taken"
    _urllib3.put_conn(pool, None)
    assert _urllib3.idle_slots(pool) == [None], "freed, as urllib3 frees it after a failed connect"
    manager.clear()


def test_a_pool_is_known_to_its_manager_until_cleared(primary):
    manager = PoolManager()
    pool = manager.connection_from_url(primary.url)
    assert _urllib3.is_managed(manager, pool)
    assert not _urllib3.is_managed(PoolManager(), pool), "another manager's"
    manager.clear()
    assert not _urllib3.is_managed(manager, pool), "evicted (and closed)"


def test_the_next_slot_of_a_pool_whose_backend_closed_it_is_not_alive(primary):
    manager = PoolManager(maxsize=1)
    pool = manager.connection_from_url(primary.url)
    assert pool.urlopen("GET", "/kept", retries=False).status == 200
    assert _urllib3.next_slot_alive(pool), "the keep-alive connection waits in the slot"
    primary.set("refuse")  # closes its connections
    wait_until(lambda: not _urllib3.next_slot_alive(pool), "the dropped connection seen without taking the slot")
    assert not _urllib3.has_idle_connection(pool)
    manager.clear()
    assert not _urllib3.next_slot_alive(pool), "a closed pool has no slots"
