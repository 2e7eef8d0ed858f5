"""``FailoverSession``: a ``requests.Session`` that survives a dead backend."""

from __future__ import annotations

from typing import Any, Dict, Sequence

import requests

from .adapter import FailoverAdapter

__all__ = ["FailoverSession"]


class FailoverSession(requests.Session):
    """A drop-in ``requests.Session`` whose requests to ``backends`` fail over.

    ``requests.Session()`` becomes ``FailoverSession([primary, secondary])``.
    Every request whose URL starts with one of the backends' base URLs is
    sent to the backend selected now, with the rest of the URL unchanged;
    requests to any other host are sent exactly as ``requests.Session``
    sends them. Keyword options are those of :class:`FailoverAdapter`.
    """

    __attrs__ = [*requests.Session.__attrs__, "failover_adapter"]

    def __init__(self, backends: Sequence[str], **options: Any) -> None:
        super().__init__()
        #: The adapter mounted for every backend prefix.
        self.failover_adapter = FailoverAdapter(backends, **options)
        for prefix in self.failover_adapter.prefixes:
            self.mount(prefix, self.failover_adapter)

    @property
    def active_backend(self) -> str:
        """The base URL requests go to now."""
        return self.failover_adapter.active_backend

    def status(self) -> Dict[str, Any]:
        """A JSON-serialisable snapshot: the selection and each backend's health."""
        return self.failover_adapter.status()

    def force_refresh(self) -> str:
        """Probe every backend now, ignoring the cache; return the new active base URL.

        Probes use this session's ``verify``, ``cert`` and proxy settings.
        """
        first = self.failover_adapter.backends[0]
        settings = self.merge_environment_settings(first, {}, None, self.verify, self.cert)
        return self.failover_adapter.force_refresh(
            verify=settings["verify"], cert=settings["cert"], proxies=settings["proxies"]
        )

    def clear_cache(self) -> None:
        """Forget the selection in memory and in the shared file."""
        self.failover_adapter.clear_cache()

    def __repr__(self) -> str:
        return f"<FailoverSession {list(self.failover_adapter.backends)!r} active={self.active_backend!r}>"
