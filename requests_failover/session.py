"""``FailoverSession``: a ``requests.Session`` that survives a dead backend."""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import requests
from requests.adapters import BaseAdapter

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

    __attrs__ = [*requests.Session.__attrs__, "failover_adapter", "_stock_adapters"]

    def __init__(self, backends: Sequence[str], **options: Any) -> None:
        super().__init__()
        # The adapters requests mounts by itself. For backend URLs they give way
        # to the failover adapter's own pools (and its pool_* options); any
        # other adapter found for a backend URL was mounted by the user.
        self._stock_adapters = tuple(self.adapters.values())
        #: The adapter that handles every request to a backend.
        self.failover_adapter = FailoverAdapter(backends, **options)
        self.failover_adapter._attach(self)

    def __setstate__(self, state: Dict[str, Any]) -> None:
        super().__setstate__(state)  # type: ignore[misc]  # types-requests does not declare it
        self.failover_adapter._attach(self)

    def get_adapter(self, url: str) -> BaseAdapter:
        """The failover adapter for a backend URL; otherwise what requests would choose.

        ``self.adapters`` is left as requests built it (and as the user mounts
        it): the failover adapter is consulted first instead of being mounted.
        """
        if self.failover_adapter.match(url) is not None:
            return self.failover_adapter
        return super().get_adapter(url)

    def _mounted_for(self, url: Optional[str]) -> Optional[BaseAdapter]:
        """The adapter the user mounted for ``url``, if any (as requests would choose it).

        So an adapter the user mounts (``s.mount("https://", HTTPAdapter(
        max_retries=Retry(...)))``, custom pools or TLS) sends to the backends
        it covers, under the failover loop. Precedence: ``transport=``, then
        this, then the failover adapter's own ``HTTPAdapter`` machinery.
        """
        try:
            adapter = super().get_adapter(url or "")
        except requests.exceptions.InvalidSchema:
            return None
        return None if any(adapter is stock for stock in self._stock_adapters) else adapter

    def close(self) -> None:
        """Close every adapter, the failover adapter and its transport included."""
        super().close()
        self.failover_adapter.close()

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
