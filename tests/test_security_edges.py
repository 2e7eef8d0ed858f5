"""What belongs to one backend stays there, and nothing secret is ever printed (issue 22).

Every test drives real loopback servers, a real Valkey, real files and the
real command line; each states the rule it holds.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Iterator, List
from urllib.parse import quote, unquote

import pytest

from requests_failover import FailoverSession, RedisStore

from ._valkey import ValkeyServer, free_port

# -- secrets never printed ----------------------------------------------------------------------------------------

#: Hostile passwords: each holds "Zx9" (a marker no other text of these tests holds) and
#: characters that end an authority, split userinfo, or escape (/ ? # @ : %, non-ASCII).
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


def cli(*args: str, env: object = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "requests_failover", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},  # type: ignore[dict-item]
    )


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


def test_a_missing_store_password_says_where_to_put_it(primary, secondary, secured, tmp_path, caplog):
    """Without a password Valkey answers "HELLO must be called with the client already
    authenticated" (RESP3) or "NOAUTH Authentication required" (RESP2): the warning and
    status() say to set REQUESTS_FAILOVER_STATE_PASSWORD or put the password in the URL."""
    caplog.set_level(logging.WARNING, logger="requests_failover")
    for query in ("", "?protocol=2"):
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
        ("redis://127.0.0.1/0?ssl_check_hostname=maybe", "expected a boolean"),
        ("redis://127.0.0.1/0#x", "cannot carry a fragment"),
    ],
)
def test_store_urls_with_options_that_cannot_work_are_rejected(url, says):
    with pytest.raises(ValueError) as caught:
        FailoverSession(["https://a.example"], state_file=False, state_store=url)
    assert str(caught.value).startswith("state_store: ") and says in str(caught.value)


def test_store_url_options_redis_accepts_are_accepted(tmp_path):
    store = RedisStore.from_url("redis://127.0.0.1:1/0?protocol=2&socket_timeout=0.5&health_check_interval=5")
    store.close()
