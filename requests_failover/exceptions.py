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

from typing import Any, Dict, List, Optional, Sequence, Tuple, Type

import requests

from . import _redact as redact

__all__ = ["AllBackendsFailed"]


class AllBackendsFailed(requests.exceptions.ConnectionError):
    """Every attempt of a request failed; no backend answered.

    ``failures`` is a tuple of ``(backend_url, error)`` pairs in the order the
    attempts were made, with ``error`` a short description (never userinfo).
    ``str()`` names them all. ``args`` are those of the exception plain
    requests would have raised (so code that digs into ``e.args[0]`` keeps
    working), and ``last`` is the last attempt's exception (neither survives
    pickling).
    """

    failures: Tuple[Tuple[str, str], ...]
    last: Optional[BaseException]
    _wraps: Tuple[Type[BaseException], ...] = ()  # set on the per-types subclasses

    def __init__(
        self,
        failures: Sequence[Tuple[str, str]] = (),
        *args: Any,
        last: Optional[BaseException] = None,
        **kwargs: Any,
    ) -> None:
        # A URL the caller wrote (userinfo and all) may be quoted in an error text: masked here, once.
        self.failures = tuple((redact.url(str(url)), redact.text(str(error))) for url, error in failures)
        self.last = last
        super().__init__(*(args or (self._summary(),)), **kwargs)

    def _summary(self) -> str:
        detail = "; ".join(f"{url}: {error}" for url, error in self.failures) or "no attempt made"
        return f"all backends failed ({detail})"

    def __str__(self) -> str:
        return self._summary()

    def __reduce__(self) -> Any:
        return (_rebuild, (self._wraps, self.failures))


_cache: Dict[Tuple[Type[BaseException], ...], Type[AllBackendsFailed]] = {}


def _rebuild(bases: Tuple[Type[BaseException], ...], failures: Sequence[Tuple[str, str]]) -> AllBackendsFailed:
    return all_failed_type(*bases)(failures)


def all_failed_type(*errors: Type[BaseException]) -> Type[AllBackendsFailed]:
    """The ``AllBackendsFailed`` subclass that is also an instance of each of ``errors``.

    ``except requests.exceptions.ReadTimeout`` then still catches a request
    that timed out on one backend and was refused by the other. Types that are
    not requests exceptions, or that are implied by another, are left out;
    if no consistent class hierarchy exists, later types are dropped.
    """
    wanted: List[Type[BaseException]] = []
    for error in errors:
        if not issubclass(error, requests.exceptions.RequestException) or issubclass(AllBackendsFailed, error):
            continue
        if error not in wanted:
            wanted.append(error)
    wanted = [c for c in wanted if not any(o is not c and issubclass(o, c) for o in wanted)]
    key = tuple(wanted)
    cached = _cache.get(key)
    if cached is not None:
        return cached
    result: Type[AllBackendsFailed] = AllBackendsFailed
    while wanted:
        name = "AllBackendsFailed[" + ", ".join(c.__name__ for c in wanted) + "]"
        try:
            result = type(name, (AllBackendsFailed, *wanted), {"__module__": __name__, "_wraps": tuple(wanted)})
            break
        except TypeError:  # no consistent method resolution order: drop the least recent type
            wanted.pop()
    _cache[key] = result
    return result
