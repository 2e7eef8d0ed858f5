"""What belongs to one backend stays there, and nothing secret is ever printed (issue 22).

Every test drives real loopback servers, a real Valkey, real files and the
real command line; each states the rule it holds.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Iterator, List
from urllib.parse import quote, unquote

import pytest
import redis

from requests_failover import FailoverSession, RedisStore

from ._valkey import ValkeyServer, free_port
from .conftest import cli

# -- secrets never printed ----------------------------------------------------------------------------------------

#: Hostile passwords: each holds "Zx9" (a marker no other text of these tests holds) and
#: characters that end an authority, split userinfo, end a quoted URL, or escape (/ ? # @ : % ' " < >,
#: non-ASCII).
HOSTILE_PASSWORDS = [
    "Zx9/k2+Q",
    "Zx9?qq",
    "Zx9#frag",
    "Zx9@at@",
    "Zx9:colon:",
    "Zx9%zz",
    "Zx9%2Fenc",
    "Zx9pässwörd",
    "Zx9 x/y?z#w@v",
    "Zx9'q\"<x>",  # where a message quoting the URL would end it
]


def spellings(password: str) -> List[str]:
    """Every form of ``password`` (and its long pieces) a parser or client library could print."""
    pieces = [p for p in re.split(r"[/?#@:% ]", password) if len(p) >= 3]
    forms = [password, quote(password, safe=""), unquote(password), quote(password), *pieces]
    return [f for f in dict.fromkeys(forms) if f]


def assert_absent(password: str, text: str) -> None:
    for form in spellings(password):
        assert form not in text, f"{form!r} printed in {text!r}"
    assert "Zx9" not in text


@pytest.mark.parametrize("password", HOSTILE_PASSWORDS)
def test_construction_errors_never_quote_a_password(password):
    """A bad port (urllib3's parse message quotes the whole URL) or an unencoded / ? #:
    the ValueError names the argument and masks the userinfo, whatever it holds."""
    for url in (f"https://user:{password}@primary.example:99999", f"https://user:{password}@primary.example:80x"):
        with pytest.raises(ValueError, match=r"^backends: ") as caught:
            FailoverSession([url, "https://secondary.example"], state_file=False)
        assert_absent(password, str(caught.value))
    for url in (f"redis://:{password}@127.0.0.1:99999/0", f"redis://user:{password}@127.0.0.1:6379/x"):
        with pytest.raises(ValueError, match=r"^url: ") as caught:
            RedisStore.from_url(url)
        assert_absent(password, str(caught.value))
        with pytest.raises(ValueError, match=r"^state_store: ") as caught:
            FailoverSession(["https://primary.example"], state_file=False, state_store=url)
        assert_absent(password, str(caught.value))


@pytest.mark.parametrize("password", HOSTILE_PASSWORDS)
def test_the_cli_never_prints_a_password(password, tmp_path):
    """The CLI prints what the exception says: a clean message makes a clean CLI."""
    result = cli("status", "--state-file", str(tmp_path / "s.json"), f"https://user:{password}@127.0.0.1:99999")
    assert result.returncode == 2, result
    assert result.stderr.startswith("error: backends: "), result.stderr
    assert_absent(password, result.stdout + result.stderr)
    store = f"redis://:{password}@127.0.0.1:99999/0"
    result = cli("status", "--state-url", store, "https://primary.example")
    assert result.returncode == 2, result
    assert_absent(password, result.stdout + result.stderr)


#: Passwords a URL can carry once percent-encoded (the user writes them so, as RFC 3986 asks).
ENCODED = [quote(p, safe="") for p in HOSTILE_PASSWORDS]


@pytest.mark.parametrize("password", ENCODED)
def test_a_working_session_never_shows_its_passwords(password, primary, secondary, caplog):
    """repr() of the options, status(), the log of a store that cannot be reached, and
    AllBackendsFailed: the backend's and the store's passwords and the probe header
    values appear nowhere; the backend's credential still reaches the backend."""
    caplog.set_level(logging.DEBUG, logger="requests_failover")
    store = f"redis://default:{password}@127.0.0.1:{free_port()}/0"  # nothing listens there
    backend = primary.url.replace("http://", f"http://user:{password}@")
    with FailoverSession(
        [backend, secondary.url],
        state_file=False,
        state_store=store,
        health_headers={"X-Api-Key": f"key-{password}"},
        max_retries=1,
    ) as session:
        response = session.get(primary.url + "/a")
        assert response.json()["server"] == "primary"
        sent = primary.requests[-1].headers["Authorization"]
        assert sent.startswith("Basic "), "the credential is used, only never shown"
        session.force_refresh()
        shown = [repr(session), repr(session.failover_adapter._options), json.dumps(session.status())]
        primary.set("refuse")
        secondary.set("refuse")
        with pytest.raises(Exception) as caught:
            session.get(primary.url + "/b")
        shown += [str(caught.value), repr(caught.value), caplog.text]
    for text in shown:
        assert_absent(unquote(password), text)
        assert password not in text
    assert "X-Api-Key" in shown[1], "the header name stays: it says what is configured"


# -- Redis: a missing password says where it goes -----------------------------------------------------------------


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[ValkeyServer]:
    directory = tmp_path / "valkey-secured"
    directory.mkdir()
    server = ValkeyServer(str(directory), password="Zx9-server-pass")
    server.start()
    yield server
    server.stop()


#: redis-py reads the ``protocol`` URL option from version 5 on (the oldest supported is 4.5).
REDIS_PY_5 = int(redis.__version__.split(".")[0]) >= 5


def test_the_protocol_option_is_checked_against_the_installed_redis_py():
    if REDIS_PY_5:
        RedisStore.from_url("redis://127.0.0.1:6379/0?protocol=2").close()  # accepted (no connect yet)
    else:
        with pytest.raises(ValueError, match=r"^url: .*protocol.*needs redis-py 5"):
            RedisStore.from_url("redis://127.0.0.1:6379/0?protocol=2")


def test_a_missing_store_password_says_where_to_put_it(primary, secondary, secured, tmp_path, caplog):
    """Without a password Valkey answers "HELLO must be called with the client already
    authenticated" (RESP3) or "NOAUTH Authentication required" (RESP2): the warning and
    status() say to set REQUESTS_FAILOVER_STATE_PASSWORD or put the password in the URL."""
    caplog.set_level(logging.WARNING, logger="requests_failover")
    for query in ("", "?protocol=2") if REDIS_PY_5 else ("",):
        caplog.clear()
        url = f"redis://127.0.0.1:{secured.port}/0{query}"
        store = RedisStore.from_url(url)
        try:
            with FailoverSession(
                [primary.url, secondary.url], state_file=str(tmp_path / f"s{query[1:]}.json"), state_store=store
            ) as session:
                assert session.get(primary.url + "/").json()["server"] == "primary"
                session.force_refresh()
                error = session.status()["state_store"]["last_error"]  # type: ignore[index]
        finally:
            store.close()
        assert error is not None and "REQUESTS_FAILOVER_STATE_PASSWORD" in error, error
        assert "HELLO" not in error and "NOAUTH" not in error
        warnings = [r.getMessage() for r in caplog.records if "is not usable" in r.getMessage()]
        assert len(warnings) == 1 and "set REQUESTS_FAILOVER_STATE_PASSWORD or put it in the URL" in warnings[0]


# -- bad input rejected at construction, naming the argument -----------------------------------------------------


@pytest.mark.parametrize(
    ("backend", "says"),
    [
        ("https://a.example;https://b.example", "one URL per backend"),
        ("https://a.example,b.example", "one URL per backend"),
        ("https://a.example https://b.example", "white space"),
        ("https://[fe80::1%25eth0]:8443", "IPv6 zone id"),
        ("https://[fe80::zz]:8443", "invalid URL"),
        ("https://a.example//b.example", "cannot start with '//'"),
    ],
)
def test_backend_urls_that_cannot_work_are_rejected(backend, says):
    with pytest.raises(ValueError) as caught:
        FailoverSession([backend], state_file=False)
    message = str(caught.value)
    assert message.startswith("backends: ") and says in message and "\n" not in message


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis://127.0.0.1/0?protocol=9", "option protocol='9': expected a whole number from 2 to 3"),
        ("redis://127.0.0.1/0?colour=blue", "unknown option 'colour'"),
        ("redis://127.0.0.1/0?socket_timeout=-1", "option socket_timeout='-1': expected seconds > 0"),
        ("redis://127.0.0.1/0?socket_timeout=nan", "option socket_timeout='nan': expected seconds > 0"),
        ("rediss://127.0.0.1/0?ssl_check_hostname=maybe", "expected a boolean"),
        ("redis://127.0.0.1/0?ssl_ca_certs=/ca.pem", "option 'ssl_ca_certs' needs a rediss:// URL"),
        ("rediss://127.0.0.1/0?ssl_cert_reqs=sometimes", "expected none, optional or required"),
        ("redis://127.0.0.1/0#x", "cannot carry a fragment"),
    ],
)
def test_store_urls_with_options_that_cannot_work_are_rejected(url, says):
    with pytest.raises(ValueError) as caught:
        FailoverSession(["https://a.example"], state_file=False, state_store=url)
    assert str(caught.value).startswith("state_store: ") and says in str(caught.value)


def test_store_url_options_redis_accepts_are_accepted(tmp_path):
    protocol = "protocol=2&" if REDIS_PY_5 else ""  # (redis-py 4.x: refused, see the test above)
    store = RedisStore.from_url(f"redis://127.0.0.1:1/0?{protocol}socket_timeout=0.5&health_check_interval=5")
    store.close()
    store = RedisStore.from_url("rediss://127.0.0.1:1/0?ssl_ca_certs=/ca.pem&ssl_cert_reqs=required")
    store.close()


# -- proxies: each backend's own, for requests and probes --------------------------------------------------------


class RecordingProxy:
    """A real forward HTTP proxy on loopback: records each absolute-form request line, forwards it."""

    def __init__(self) -> None:
        import http.client
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import urlsplit

        self.lines: List[str] = []
        self.headers: List[dict] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _forward(self) -> None:
                proxy.lines.append(f"{self.command} {self.path}")
                proxy.headers.append(dict(self.headers))
                target = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("proxy-connection", "connection")}
                try:
                    upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                    path = target.path + (f"?{target.query}" if target.query else "")
                    upstream.request(self.command, path or "/", body=body, headers=headers)
                    answer = upstream.getresponse()
                    data = answer.read()
                    status, answer_headers = answer.status, answer.getheaders()
                    upstream.close()
                except OSError:
                    status, answer_headers, data = 502, [], b"bad gateway"
                self.send_response(status)
                for name, value in answer_headers:
                    if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_HEAD = do_POST = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recording_proxy() -> Iterator[RecordingProxy]:
    proxy = RecordingProxy()
    yield proxy
    proxy.close()


@pytest.mark.parametrize("excluded", ["primary", "secondary"])
def test_each_backend_is_probed_and_requested_with_its_own_proxy_settings(
    excluded, primary, secondary, recording_proxy, monkeypatch
):
    """NO_PROXY names one backend's host ("localhost"), the other (127.0.0.1) goes through
    HTTP_PROXY. Probes of each backend and requests failed over to it use the settings requests
    would pick for that backend's own URL, whichever backend the triggering request was for:
    never a probe with its API key through a proxy the backend is excluded from, never a
    direct probe bypassing the proxy of a backend that needs it."""
    by_name = {
        "primary": f"http://localhost:{primary.port}" if excluded == "primary" else primary.url,
        "secondary": f"http://localhost:{secondary.port}" if excluded == "secondary" else secondary.url,
    }
    proxied = "secondary" if excluded == "primary" else "primary"
    monkeypatch.setenv("HTTP_PROXY", recording_proxy.url)
    monkeypatch.setenv("NO_PROXY", "localhost")
    backends = [by_name["primary"], by_name["secondary"]]
    with FailoverSession(backends, state_file=False, health_headers={"X-Probe-Key": "k"}) as session:
        assert session.get(by_name["primary"] + "/first").json()["server"] == "primary"
        session.force_refresh()
        primary.set("refuse")
        assert session.get(by_name["primary"] + "/moved").json()["server"] == "secondary"
    through_proxy = list(recording_proxy.lines)
    assert through_proxy, "the proxied backend was reached through the proxy"
    assert all(line.split()[1].startswith(by_name[proxied] + "/") for line in through_proxy), through_proxy
    assert not any("localhost" in line for line in through_proxy), "the excluded host never went through the proxy"
    proxied_server = primary if proxied == "primary" else secondary
    direct_server = secondary if proxied == "primary" else primary
    probe_lines = [line for line in through_proxy if line.endswith("/health")]
    assert probe_lines, "the proxied backend's probes went through the proxy"
    assert len(probe_lines) == len(proxied_server.probes), "every probe of the proxied backend went through it"
    assert direct_server.probes, "the excluded backend was probed"
    assert all(not h.path.startswith("http") for h in direct_server.hits()), "directly (origin-form request lines)"


# -- .netrc, cookies, redirects: decided again for the backend actually used ---------------------------------------

#: These rules need one line in _sending.rewrite (owned by the helper rewriting send): after
#: ``outgoing.url = target.url + rest``, ``auth = readdress(request, outgoing, target, auth)``
#: (``from ._environment import readdress``). Until it is merged, they fail as expected.
NEEDS_REWRITE_LINE = pytest.mark.xfail(
    not hasattr(__import__("requests_failover._sending")._sending, "readdress"),
    reason="needs the one line in _sending.rewrite that calls _environment.readdress",
    strict=True,
)


def basic(user: str, password: str) -> str:
    import base64

    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def netrc_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "netrc"
    monkeypatch.setenv("NETRC", str(path))
    return path


def write_netrc(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o600)


@NEEDS_REWRITE_LINE
def test_netrc_credentials_stay_with_their_host(primary, secondary, netrc_file):
    """The primary is "localhost", the secondary 127.0.0.1 (netrc matches host names, not ports).
    The primary's .netrc credential never reaches the secondary: it gets its own entry, else
    its URL's userinfo, else nothing; the caller's auth= keeps winning everywhere."""
    first = f"http://localhost:{primary.port}"
    write_netrc(netrc_file, "machine localhost login alice password primary-only\n")
    with FailoverSession([first, secondary.url], state_file=False) as session:
        session.get(first + "/a")
        assert primary.requests[-1].headers["Authorization"] == basic("alice", "primary-only")
        primary.set("refuse")
        assert session.get(first + "/b").json()["server"] == "secondary"
        assert "Authorization" not in secondary.requests[-1].headers, "no entry, no userinfo: nothing"
        write_netrc(
            netrc_file,
            "machine localhost login alice password primary-only\nmachine 127.0.0.1 login bob password own\n",
        )
        session.get(first + "/c")
        assert secondary.requests[-1].headers["Authorization"] == basic("bob", "own")
        session.get(first + "/d", auth=("carol", "explicit"))
        assert secondary.requests[-1].headers["Authorization"] == basic("carol", "explicit")
        session.get(first + "/e", headers={"Authorization": "Bearer caller"})
        assert secondary.requests[-1].headers["Authorization"] == basic("bob", "own"), "requests: .netrc wins"
        write_netrc(netrc_file, "machine localhost login alice password primary-only\n")
        session.get(first + "/g", headers={"Authorization": "Bearer caller"})
        assert secondary.requests[-1].headers["Authorization"] == "Bearer caller", "no entry: the caller's"
        write_netrc(netrc_file, "machine example.invalid login x password y\n")
        session.get(first + "/h", headers={"Authorization": "Bearer caller"})
        assert secondary.requests[-1].headers["Authorization"] == "Bearer caller", "no entry for either host"
    write_netrc(netrc_file, "machine localhost login alice password primary-only\n")
    userinfo = secondary.url.replace("http://", "http://dave:configured@")
    with FailoverSession([first, userinfo], state_file=False) as session:
        assert session.get(first + "/f").json()["server"] == "secondary"
        assert secondary.requests[-1].headers["Authorization"] == basic("dave", "configured")
    assert all("primary-only" not in h.headers.get("Authorization", "") for h in secondary.requests)


@NEEDS_REWRITE_LINE
def test_a_secure_cookie_never_goes_to_a_plain_http_backend(secondary):
    """An https primary (nothing listens: refused) fails over to a plain http secondary:
    the jar's Secure cookie, sent to the https URL asked for, is left out there."""
    first = f"https://127.0.0.1:{free_port()}"
    with FailoverSession([first, secondary.url], state_file=False, hedge_delay=None) as session:
        session.cookies.set("token", "secure-value", secure=True)
        session.cookies.set("plain", "1")
        assert session.get(first + "/x").json()["server"] == "secondary"
        assert secondary.requests[-1].headers.get("Cookie") == "plain=1"
        session.cookies.clear()
        session.cookies.set("token", "secure-value", secure=True)
        session.get(first + "/y")
        assert "Cookie" not in secondary.requests[-1].headers


def test_cookies_set_during_failover_are_kept_for_the_url_asked_for(primary, secondary):
    """The primary is "localhost" (refused), the secondary 127.0.0.1 answers. A cookie it sets
    host-only, or scoped with Domain= to its own host, is kept (requests would drop the
    latter: it does not domain-match the host asked for) and sent with the next request; a
    cookie the primary set before is sent to the secondary after failover (one service)."""
    first = f"http://localhost:{primary.port}"
    primary.set(routes={"/login": (200, {"Set-Cookie": "from_primary=p; Path=/"})})
    secondary.set(
        routes={
            "/host": (200, {"Set-Cookie": "host_only=h; Path=/"}),
            "/domain": (200, {"Set-Cookie": "scoped=d; Domain=127.0.0.1; Path=/"}),
            "/foreign": (200, {"Set-Cookie": "foreign=f; Domain=example.com; Path=/"}),
        }
    )
    with FailoverSession([first, secondary.url], state_file=False) as session:
        session.get(first + "/login")
        primary.set("refuse")
        for path in ("/host", "/domain", "/foreign"):
            assert session.get(first + path).json()["server"] == "secondary"
        session.get(first + "/next")
        sent = secondary.requests[-1].headers.get("Cookie", "")
        assert sorted(sent.split("; ")) == ["from_primary=p", "host_only=h", "scoped=d"]
        assert "foreign" not in {c.name for c in session.cookies}, "a Domain= the backend does not match: refused"


def test_a_redirect_to_a_configured_backend_keeps_authorization(primary, secondary, tertiary):
    """The primary is down; the secondary redirects to a URL of the primary: followed on the
    secondary with the caller's Authorization (the configured backends are one origin). A
    redirect to any other host strips it, as requests does."""
    primary.set("refuse")
    secondary.set(
        routes={
            "/start": (302, {"Location": primary.url + "/next"}),
            "/away": (302, {"Location": tertiary.url + "/elsewhere"}),
        }
    )
    with FailoverSession([primary.url, secondary.url], state_file=False) as session:
        answer = session.get(primary.url + "/start", headers={"Authorization": "Bearer t0ken"})
        assert answer.json() == {"server": "secondary", "method": "GET", "path": "/next", "body": ""}
        assert secondary.requests[-1].headers.get("Authorization") == "Bearer t0ken"
        answer = session.get(primary.url + "/away", headers={"Authorization": "Bearer t0ken"})
        assert answer.json()["server"] == "tertiary"
    assert tertiary.requests[-1].path == "/elsewhere"
    assert "Authorization" not in tertiary.requests[-1].headers


class _FailingStore:
    """A store of the user's whose location carries a password, and that never answers."""

    location = "redis://user:Zx9-user-store@127.0.0.1:6379/0"

    def get(self, namespace: str) -> None:
        raise ConnectionError(f"cannot reach {self.location}")

    compare_and_set = lease = release = watch = get  # type: ignore[assignment]

    def close(self) -> None:
        pass


def test_a_users_store_location_is_shown_without_its_password(primary, secondary, tmp_path, caplog):
    """status(), the warning and the error text show the location and error with the password masked."""
    caplog.set_level(logging.DEBUG, logger="requests_failover")
    store = _FailingStore()
    with FailoverSession([primary.url, secondary.url], state_file=str(tmp_path / "s.json"), state_store=store) as s:
        assert s.get(primary.url + "/").json()["server"] == "primary"
        s.force_refresh()
        status = s.status()["state_store"]  # type: ignore[index]
    assert status["location"] == "redis://user@127.0.0.1:6379/0"
    assert status["reachable"] is False and "redis://user@127.0.0.1:6379/0" in (status["last_error"] or "")
    assert_absent("Zx9-user-store", json.dumps(status) + caplog.text)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:Zx9/k2+Q@host:6379/0", "redis://***@host:6379/0"),
        ("redis://default:Zx9/k2+Q@host:6379/0", "redis://default@host:6379/0"),
        ("https://user:Zx9@at@primary.example/x", "https://user@primary.example/x"),
        ("https://user:Zx9?q#f@primary.example", "https://user@primary.example"),
        ("https://Zx9token@primary.example", "https://***@primary.example"),
        ("https://user:Zx9pässwörd@primary.example:8443", "https://user@primary.example:8443"),
        ("https://primary.example/path", "https://primary.example/path"),
        ("not a url Zx9", "not a url Zx9"),
    ],
)
def test_the_redaction_rule(url, shown):
    """Everything between scheme:// and the last @ is userinfo; the user name stays when a
    password follows it (a lone name may be a token). In free text, every URL is masked."""
    from requests_failover import _redact

    assert _redact.url(url) == shown
    assert _redact.text(f"failed for '{url}' twice") == f"failed for '{shown}' twice"
