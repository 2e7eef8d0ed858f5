"""Bad input is rejected with a clear error naming the argument; development mode."""

from __future__ import annotations

import inspect
import math
from typing import Any, Dict, List

import pytest

from requests_failover import FailoverAdapter, FailoverSession
from requests_failover._config import OPTION_DEFAULTS, build_options, parse_backend

OK = ["https://a.example", "https://b.example"]

BAD: List[Any] = [
    # (keyword arguments, exception, text the message must contain)
    ({"backends": []}, ValueError, "backends"),
    ({"backends": "https://a.example"}, TypeError, "backends"),
    ({"backends": [1]}, TypeError, "backends"),
    ({"backends": ["a.example"]}, ValueError, "backends"),
    ({"backends": ["ftp://a.example"]}, ValueError, "backends"),
    ({"backends": ["https://"]}, ValueError, "backends"),
    ({"backends": ["https://a.example/x?q=1"]}, ValueError, "backends"),
    ({"backends": ["https://a.example/x#f"]}, ValueError, "backends"),
    ({"backends": ["https://a.example", "https://A.example/"]}, ValueError, "twice"),
    ({"backends": ["https://a.example", "https://a.example:443"]}, ValueError, "twice"),
    ({"backends": ["http://a.example"]}, ValueError, "allow_insecure"),
    ({"health_paths": "/health"}, TypeError, "health_paths"),
    ({"health_paths": []}, ValueError, "health_paths"),
    ({"health_paths": ["health"]}, ValueError, "health_paths"),
    ({"health_paths": [b"/health"]}, TypeError, "health_paths"),
    ({"health_timeout": 0}, ValueError, "health_timeout"),
    ({"health_timeout": -1}, ValueError, "health_timeout"),
    ({"health_timeout": math.nan}, ValueError, "health_timeout"),
    ({"health_timeout": math.inf}, ValueError, "health_timeout"),
    ({"health_timeout": "3"}, TypeError, "health_timeout"),
    ({"cache_ttl": -1}, ValueError, "cache_ttl"),
    ({"cache_ttl": True}, TypeError, "cache_ttl"),
    ({"max_retries": -1}, ValueError, "max_retries"),
    ({"max_retries": 1.5}, TypeError, "max_retries"),
    ({"max_retries": True}, TypeError, "max_retries"),
    ({"retry_delay": -0.1}, ValueError, "retry_delay"),
    ({"default_timeout": (1, 2, 3)}, ValueError, "default_timeout"),
    ({"default_timeout": 0}, ValueError, "default_timeout"),
    ({"default_timeout": (1, -2)}, ValueError, "default_timeout"),
    ({"state_file": True}, ValueError, "state_file"),
    ({"state_file": 3}, TypeError, "state_file"),
    ({"state_file": ""}, ValueError, "state_file"),
    ({"transport": object()}, TypeError, "transport"),
    ({"on_switch": 3}, TypeError, "on_switch"),
    ({"allow_insecure": "yes"}, TypeError, "allow_insecure"),
    ({"pool_connections": 0}, ValueError, "pool_connections"),
    ({"pool_maxsize": "10"}, TypeError, "pool_maxsize"),
    ({"pool_block": 1}, TypeError, "pool_block"),
]


def _id(kwargs: Dict[str, Any]) -> str:
    ((name, value),) = kwargs.items()
    return f"{name}={value!r}"


@pytest.mark.parametrize(("kwargs", "error", "text"), BAD, ids=[_id(k) for k, _, _ in BAD])
@pytest.mark.parametrize("factory", [FailoverSession, FailoverAdapter])
def test_bad_arguments_are_rejected_naming_the_argument(factory, kwargs: Dict[str, Any], error, text: str):
    kwargs = dict(kwargs)
    backends = kwargs.pop("backends", OK)
    with pytest.raises(error) as info:
        factory(backends, state_file=kwargs.pop("state_file", False), **kwargs)
    assert text in str(info.value)


def test_unknown_option_is_a_type_error():
    with pytest.raises(TypeError):
        FailoverSession(OK, health_timout=3)


def test_messages_never_echo_userinfo():
    with pytest.raises(ValueError) as info:
        FailoverSession(["https://alice:s3cret@a.example/x?q=1"], state_file=False)
    assert "s3cret" not in str(info.value)


def test_defaults_are_the_documented_ones():
    options = build_options(OK, environ={})
    assert options.health_paths == ("/health", "/api/health", "/status")
    assert options.health_timeout == 3.0 and options.cache_ttl == 300.0
    assert options.max_retries == 2 and options.retry_delay == 1.0
    assert options.default_timeout == (3.0, 30.0)


@pytest.mark.parametrize(
    ("url", "canonical"),
    [
        ("HTTPS://A.Example/", "https://a.example"),
        ("https://a.example:443/api/", "https://a.example/api"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("http://[::1]:80/", "http://[::1]"),
        ("https://bücher.example", "https://xn--bcher-kva.example"),
        ("https://u:p@a.example", "https://a.example"),
    ],
)
def test_backends_are_normalised(url: str, canonical: str):
    assert parse_backend(url).url == canonical


@pytest.mark.parametrize("host", ["127.0.0.1", "127.5.0.1", "localhost", "[::1]", "api.localhost"])
def test_plain_http_is_accepted_on_loopback(host: str):
    assert FailoverAdapter([f"http://{host}:5000"], state_file=False).backends


def test_allow_insecure_accepts_plain_http_elsewhere():
    adapter = FailoverAdapter(["http://a.example"], allow_insecure=True, state_file=False)
    assert adapter.backends == ("http://a.example",)


# -- development mode -------------------------------------------------------------------------


def test_development_mode_replaces_the_backends(monkeypatch, primary, secondary):
    monkeypatch.setenv("REQUESTS_FAILOVER_BACKENDS", f" {secondary.url} ,")
    with FailoverSession([primary.url], state_file=False) as session:
        response = session.get(primary.url + "/orders?id=1")
        assert response.json()["server"] == "secondary"
        assert secondary.hits(health=False)[-1].path == "/orders?id=1"
        assert primary.hits() == [], "configured backends are never contacted in development mode"
        assert session.status()["development_mode"] is True
        assert session.active_backend == secondary.url


def test_development_mode_rejects_insecure_urls(monkeypatch):
    monkeypatch.setenv("REQUESTS_FAILOVER_BACKENDS", "http://dev.example:5000")
    with pytest.raises(ValueError) as info:
        FailoverSession(OK, state_file=False)
    assert "REQUESTS_FAILOVER_BACKENDS" in str(info.value)


def test_empty_development_variable_is_ignored(monkeypatch):
    monkeypatch.setenv("REQUESTS_FAILOVER_BACKENDS", " ")
    assert FailoverAdapter(OK, state_file=False).backends == tuple(OK)


@pytest.mark.parametrize("cls", [FailoverAdapter, FailoverSession])
def test_both_signatures_declare_every_option_with_its_default(cls):
    """The options are declared once (OPTION_DEFAULTS); the two explicit signatures repeat
    them for inspect.signature users (requests-cache) and must say exactly the same."""
    parameters = inspect.signature(cls.__init__).parameters
    declared = {name: p.default for name, p in parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert declared == dict(OPTION_DEFAULTS)
    assert list(declared) == list(OPTION_DEFAULTS)  # the same order, so the docs read alike


def test_every_option_reaches_the_adapter_from_the_session():
    given = {
        "health_paths": ("/ping",),
        "health_timeout": 1.5,
        "cache_ttl": 7.0,
        "max_retries": 4,
        "retry_delay": 0.5,
        "healthy_threshold": 3,
        "hedge_delay": 0.1,
        "default_timeout": (1.0, 2.0),
        "state_file": False,
        "allow_insecure": True,
        "health_headers": {"X-Key": "k"},
        "pool_connections": 3,
        "pool_maxsize": 4,
        "pool_block": True,
        "slow_start": 5.0,
        "demote_slow": False,
        "hedge_requests": False,
    }
    assert set(given) | {"transport", "on_switch", "health_check", "observers", "state_store"} == set(OPTION_DEFAULTS)
    with FailoverSession(["http://127.0.0.1:9"], **given) as session:
        options = session.failover_adapter._options
        for name, value in given.items():
            expected = tuple(value.items()) if name == "health_headers" else value
            assert getattr(options, name) == expected, name


def test_an_unknown_option_is_a_type_error_naming_it():
    with pytest.raises(TypeError, match=r"^retries: not an option"):
        build_options(OK, retries=3, environ={})
