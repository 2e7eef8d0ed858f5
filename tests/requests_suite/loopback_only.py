"""pytest plugin: no connection and no name lookup leaves this machine.

Loaded into both runs of requests' suite (plain and failover), so their
outcomes stay comparable. A few of requests' tests reach for the network
(a non-routable "tarpit" address, a public host name); here they fail at
once, in both runs, instead of sending anything off the machine.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from typing import Any

_LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")
_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_getaddrinfo = socket.getaddrinfo


def _is_local(host: Any) -> bool:
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return True  # AF_UNIX paths and the like
    host = host.strip("[]").split("%")[0].lower()
    if host in _LOCAL_NAMES or host.endswith(".localhost") or host == "":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check(sock: socket.socket, address: Any) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_local(address[0]):
        raise OSError(errno.ENETUNREACH, f"blocked by loopback_only: {address[0]} is not on this machine")


def _connect(self: socket.socket, address: Any) -> None:
    _check(self, address)
    return _real_connect(self, address)


def _connect_ex(self: socket.socket, address: Any) -> int:
    _check(self, address)
    return _real_connect_ex(self, address)


def _getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
    if host is not None and not _is_local(host):
        raise socket.gaierror(socket.EAI_NONAME, f"blocked by loopback_only: no lookup of {host}")
    return _real_getaddrinfo(host, *args, **kwargs)


def pytest_configure(config: Any) -> None:
    socket.socket.connect = _connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = _getaddrinfo
