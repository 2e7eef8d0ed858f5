"""The guard that keeps requests' own suite (tox env dropin) on this machine."""

from __future__ import annotations

import errno
import socket

import pytest

from .requests_suite import loopback_only


def test_connections_off_the_machine_are_refused_before_any_packet():
    with socket.socket() as sock, pytest.raises(OSError) as info:
        loopback_only._connect(sock, ("10.255.255.1", 80))
    assert info.value.errno == errno.ENETUNREACH


@pytest.mark.parametrize("host", ["example.com", "10.255.255.1", "doesnotexist.google.com", b"example.org"])
def test_lookups_of_other_hosts_are_refused(host):
    with pytest.raises(socket.gaierror):
        loopback_only._getaddrinfo(host, 80)


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "127.9.9.9", "::1", "[::1]", "api.localhost"])
def test_loopback_stays_reachable(host):
    assert loopback_only._is_local(host)


def test_a_loopback_connection_goes_through(primary):
    with socket.socket() as sock:
        loopback_only._connect(sock, ("127.0.0.1", primary.port))
