"""requests' per-request environment answers, cached for backend URLs, stay exactly requests'.

Each input changes between two requests and the second request sees it:
proxy variables, NO_PROXY, REQUEST_METHOD, the CA bundle variables, a netrc
file created, edited, removed, and NETRC. Explicit arguments still win. The
tables compare with a plain requests.Session given the same inputs.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any, Dict

import pytest
import requests

from requests_failover import FailoverSession
from requests_failover.testing import LoopbackBackend, served_by


@pytest.fixture
def proxy():
    with LoopbackBackend("proxy") as backend:
        yield backend


def test_proxy_variables_take_effect_on_the_next_request(primary, secondary, proxy, monkeypatch):
    with FailoverSession([primary.url, secondary.url], state_file=False) as session:
        assert served_by(session.get(primary.url + "/a")) == "primary"
        monkeypatch.setenv("http_proxy", proxy.url)
        assert served_by(session.get(primary.url + "/b")) == "proxy"
        assert proxy.requests[-1].path == primary.url + "/b", "sent through the proxy, absolute URI"
        monkeypatch.setenv("no_proxy", "127.0.0.1")
        assert served_by(session.get(primary.url + "/c")) == "primary"
        monkeypatch.delenv("no_proxy")
        monkeypatch.delenv("http_proxy")
        assert served_by(session.get(primary.url + "/d")) == "primary"
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        assert served_by(session.get(primary.url + "/e")) == "proxy"
        monkeypatch.setenv("REQUEST_METHOD", "GET")  # CGI: requests ignores HTTP_PROXY
        assert served_by(session.get(primary.url + "/f")) == "primary"
        monkeypatch.delenv("REQUEST_METHOD")
        monkeypatch.setenv("ALL_PROXY", proxy.url)
        monkeypatch.delenv("HTTP_PROXY")
        assert served_by(session.get(primary.url + "/g")) == "proxy"


def test_explicit_proxies_and_trust_env_still_win(primary, secondary, proxy, monkeypatch):
    monkeypatch.setenv("http_proxy", proxy.url)
    with FailoverSession([primary.url, secondary.url], state_file=False) as session:
        assert served_by(session.get(primary.url + "/a", proxies={"http": ""})) == "primary"
        session.trust_env = False
        assert served_by(session.get(primary.url + "/b")) == "primary"
        session.trust_env = True
        assert served_by(session.get(primary.url + "/c")) == "proxy"


ENVIRONMENTS = [
    {},
    {"http_proxy": "http://proxy.invalid:3128"},
    {"HTTPS_PROXY": "http://proxy.invalid:3128", "NO_PROXY": "example.com"},
    {"http_proxy": "http://proxy.invalid:3128", "no_proxy": "127.0.0.1,localhost"},
    {"HTTP_PROXY": "http://p.invalid:1", "REQUEST_METHOD": "POST"},
    {"all_proxy": "socks5://p.invalid:1080", "ftp_proxy": "http://f.invalid:21"},
    {"REQUESTS_CA_BUNDLE": "/etc/ssl/a.pem"},
    {"CURL_CA_BUNDLE": "/etc/ssl/b.pem"},
    {"REQUESTS_CA_BUNDLE": "/etc/ssl/a.pem", "CURL_CA_BUNDLE": "/etc/ssl/b.pem"},
]
ARGUMENTS = [
    ({}, None, None),
    ({"http": "http://explicit.invalid:1"}, None, None),
    ({"no_proxy": "127.0.0.1"}, False, None),
    ({}, "/explicit.pem", ("c.pem", "k.pem")),
    ({}, True, None),
]


@pytest.mark.parametrize("env", ENVIRONMENTS, ids=lambda e: ",".join(e) or "empty")
@pytest.mark.parametrize("arguments", ARGUMENTS, ids=lambda a: repr(a)[:40])
def test_merged_settings_equal_plain_requests(env: Dict[str, str], arguments: Any, monkeypatch):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    backends = ["http://127.0.0.1:8001", "https://api.example.com"]
    failover = FailoverSession(backends, state_file=False)
    plain = requests.Session()
    for session in (failover, plain):
        session.verify = "/session.pem"
        session.proxies = {"https": "http://session-proxy.invalid:1"}
    proxies, verify, cert = arguments
    for url in ("http://127.0.0.1:8001/x?y=1", "https://api.example.com/v1", "http://other.example/"):
        for _ in range(2):  # the second time from the cache
            got = failover.merge_environment_settings(url, dict(proxies), None, verify, cert)
            want = plain.merge_environment_settings(url, dict(proxies), None, verify, cert)
            assert got == want, url
    failover.close()
    plain.close()


def test_a_new_proxy_variable_is_seen_on_the_next_request(monkeypatch):
    session = FailoverSession(["http://127.0.0.1:8001"], state_file=False)
    url = "http://127.0.0.1:8001/x"
    assert "ftp" not in session.merge_environment_settings(url, {}, None, None, None)["proxies"]
    monkeypatch.setenv("ftp_proxy", "http://f.invalid:21")
    assert session.merge_environment_settings(url, {}, None, None, None)["proxies"]["ftp"] == "http://f.invalid:21"
    monkeypatch.setenv("ftp_proxy", "http://g.invalid:21")
    assert session.merge_environment_settings(url, {}, None, None, None)["proxies"]["ftp"] == "http://g.invalid:21"
    session.close()


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_netrc_created_edited_removed_and_netrc_variable(primary, secondary, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("NETRC", raising=False)
    netrc = tmp_path / ".netrc"
    with FailoverSession([primary.url, secondary.url], state_file=False) as session:

        def sent_auth() -> Any:
            session.get(primary.url + "/x")
            return primary.requests[-1].headers.get("Authorization")

        assert sent_auth() is None
        netrc.write_text("machine 127.0.0.1 login alice password one\n")
        netrc.chmod(0o600)
        assert sent_auth() == _basic("alice", "one")
        netrc.write_text("machine 127.0.0.1 login alice password second\n")  # another size
        assert sent_auth() == _basic("alice", "second")
        other = tmp_path / "other-netrc"
        other.write_text("machine 127.0.0.1 login bob password three\n")
        other.chmod(0o600)
        monkeypatch.setenv("NETRC", str(other))
        assert sent_auth() == _basic("bob", "three")
        monkeypatch.delenv("NETRC")
        netrc.unlink()
        assert sent_auth() is None
        netrc.write_text("machine 127.0.0.1 login carol password four\n")
        netrc.chmod(0o600)
        assert session.get(primary.url + "/y", auth=("explicit", "wins")).ok
        assert primary.requests[-1].headers["Authorization"] == _basic("explicit", "wins")
        session.auth = ("session", "auth")
        session.get(primary.url + "/z")
        assert primary.requests[-1].headers["Authorization"] == _basic("session", "auth")


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"params": {"q": "1", "r": ["a", "b"]}},
        {"json": {"a": 1}},
        {"data": {"a": "1"}},
        {"files": {"f": ("f.txt", b"data")}},
        {"cookies": {"c": "1"}, "headers": {"X-A": "b"}},
        {"hooks": {"response": [lambda r, *a, **k: r]}},
    ],
    ids=lambda k: ",".join(k) or "plain",
)
def test_prepared_requests_equal_plain_requests(kwargs: Dict[str, Any], tmp_path: Path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".netrc").write_text("machine 127.0.0.1 login alice password one\n")
    os.chmod(tmp_path / ".netrc", 0o600)
    failover = FailoverSession(["http://127.0.0.1:8001"], state_file=False)
    plain = requests.Session()
    for session in (failover, plain):
        session.headers["X-Session"] = "yes"
        session.cookies.set("s", "1")
        session.params = {"p": "1"}
    got = failover.prepare_request(requests.Request("POST", "http://127.0.0.1:8001/x", **kwargs))
    want = plain.prepare_request(requests.Request("POST", "http://127.0.0.1:8001/x", **kwargs))
    got_headers, want_headers = dict(got.headers), dict(want.headers)
    if "files" in kwargs:  # multipart boundaries are random
        got_headers.pop("Content-Type"), want_headers.pop("Content-Type")
    else:
        assert got.body == want.body
    assert (got.method, got.url, got_headers) == (want.method, want.url, want_headers)
    assert got.hooks == want.hooks  # no hook of ours: requests' own suite compares them
    failover.close()
    plain.close()


def test_a_replaced_requests_helper_is_used_as_requests_would(primary, secondary, monkeypatch):
    with FailoverSession([primary.url, secondary.url], state_file=False) as session:
        session.get(primary.url + "/warm")
        monkeypatch.setattr(requests.sessions, "get_netrc_auth", lambda url: ("mocked", "netrc"))
        session.get(primary.url + "/x")
        assert primary.requests[-1].headers["Authorization"] == _basic("mocked", "netrc")
        monkeypatch.setattr(requests.sessions, "get_environ_proxies", lambda url, no_proxy=None: {"ftp": "x"})
        assert session.merge_environment_settings(primary.url + "/y", {}, None, None, None)["proxies"] == {"ftp": "x"}
