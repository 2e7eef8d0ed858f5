"""Exceptions of requests-failover.

Every exception raised here is also a requests exception, so ``except``
clauses written for plain requests keep working::

    requests.exceptions.RequestException
    └── requests.exceptions.ConnectionError
        └── AllBackendsFailed
              (raised as a subclass of *both* AllBackendsFailed and the
               exception requests raised for the last attempt, e.g.
               ReadTimeout, ConnectTimeout, SSLError, ProxyError)

Bad arguments raise the built-in ``TypeError`` / ``ValueError``.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple, Type

import requests

__all__ = ["AllBackendsFailed"]


class AllBackendsFailed(requests.exceptions.ConnectionError):
    """Every attempt of a request failed; no backend answered.

    ``failures`` is a tuple of ``(backend_url, error)`` pairs in the order the
    attempts were made, with ``error`` a short description (never userinfo).
    ``last`` is the exception of the last attempt (not kept across pickling).
    """

    failures: Tuple[Tuple[str, str], ...]
    last: Optional[BaseException]
    _wraps: Optional[Type[BaseException]] = None  # set on the per-type subclasses

    def __init__(
        self,
        failures: Sequence[Tuple[str, str]] = (),
        *args: Any,
        last: Optional[BaseException] = None,
        **kwargs: Any,
    ) -> None:
        self.failures = tuple((str(url), str(error)) for url, error in failures)
        self.last = last
        detail = "; ".join(f"{url}: {error}" for url, error in self.failures) or "no attempt made"
        super().__init__(f"all backends failed ({detail})", *args, **kwargs)

    def __reduce__(self) -> Any:
        return (_rebuild, (self._wraps, self.failures))


_cache: Dict[Type[BaseException], Type[AllBackendsFailed]] = {}


def _rebuild(base: Optional[Type[BaseException]], failures: Sequence[Tuple[str, str]]) -> AllBackendsFailed:
    cls = AllBackendsFailed if base is None else all_failed_type(base)
    return cls(failures)


def all_failed_type(last: Type[BaseException]) -> Type[AllBackendsFailed]:
    """The ``AllBackendsFailed`` subclass that is also an instance of ``last``.

    ``except requests.exceptions.ReadTimeout`` then still catches a request
    that timed out on every backend.
    """
    if issubclass(last, AllBackendsFailed) or not issubclass(last, requests.exceptions.RequestException):
        return AllBackendsFailed
    cls = _cache.get(last)
    if cls is None:
        cls = type(
            f"AllBackendsFailed[{last.__name__}]", (AllBackendsFailed, last), {"__module__": __name__, "_wraps": last}
        )
        _cache[last] = cls
    return cls
