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
        # The adapters requests mounts by itself; any other adapter found in
        # self.adapters was mounted by the user and is honoured (_mounted_for).
        self._stock_adapters = tuple(self.adapters.values())
        #: The adapter mounted for every backend prefix.
        self.failover_adapter = FailoverAdapter(backends, **options)
        for prefix in self.failover_adapter.prefixes:
            self.mount(prefix, self.failover_adapter)
        self.failover_adapter._attach(self)

    def __setstate__(self, state: Dict[str, Any]) -> None:
        super().__setstate__(state)  # type: ignore[misc]  # types-requests does not declare it
        self.failover_adapter._attach(self)

    def _mounted_for(self, url: Optional[str]) -> Optional[BaseAdapter]:
        """The adapter the user mounted for ``url``, if any (longest prefix first, as requests).

        Precedence for sending to a backend: ``transport=``, then an adapter
        the user mounted on this session covering the backend's URL (say
        ``s.mount("https://", HTTPAdapter(max_retries=Retry(...)))``), then the
        failover adapter's own ``HTTPAdapter`` machinery.
        """
        lowered = (url or "").lower()
        for prefix, adapter in self.adapters.items():
            if adapter is self.failover_adapter or any(adapter is stock for stock in self._stock_adapters):
                continue
            if lowered.startswith(prefix.lower()):
                return adapter
        return None

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
