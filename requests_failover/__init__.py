"""requests-failover: a ``requests.Session`` that survives a dead backend.

Change one line, ``requests.Session()`` becomes
``FailoverSession(["https://primary.example", "https://secondary.example"])``,
and requests to the primary go to the first healthy backend.
"""

from __future__ import annotations

from ._fleet import StoreStatus
from ._selection import BackendStatus, Status
from .adapter import FailoverAdapter
from .events import AttemptEvent, DemotionEvent, ProbeEvent, SwitchEvent
from .exceptions import AllBackendsFailed
from .session import FailoverSession
from .store import RedisStore, StateStore

__version__ = "0.3.0.dev0"

__all__ = [
    "AllBackendsFailed",
    "AttemptEvent",
    "BackendStatus",
    "DemotionEvent",
    "FailoverAdapter",
    "FailoverSession",
    "ProbeEvent",
    "RedisStore",
    "StateStore",
    "Status",
    "StoreStatus",
    "SwitchEvent",
    "__version__",
]
