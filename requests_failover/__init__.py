"""requests-failover: a ``requests.Session`` that survives a dead backend.

Change one line, ``requests.Session()`` becomes
``FailoverSession(["https://primary.example", "https://secondary.example"])``,
and requests to the primary go to the first healthy backend.
"""

from __future__ import annotations

from ._selection import SwitchEvent
from .adapter import FailoverAdapter
from .exceptions import AllBackendsFailed
from .session import FailoverSession

__version__ = "0.1.0"

__all__ = ["AllBackendsFailed", "FailoverAdapter", "FailoverSession", "SwitchEvent", "__version__"]
