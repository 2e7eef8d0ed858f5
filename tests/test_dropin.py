"""The "change one line" promise: session behaviour, mounting, pickling, testing story."""

from __future__ import annotations

import pickle
import subprocess
import sys
from collections import OrderedDict

import pytest
import requests
import requests_mock
from hypothesis import given, settings
from hypothesis import strategies as st
from requests.structures import CaseInsensitiveDict

from requests_failover import AllBackendsFailed, FailoverAdapter, FailoverSession
from requests_failover.testing import set_testing

from .conftest import wait_until

P, S = "https://primary.example", "https://secondary.example"


# -- the testing story for users: requests-mock -----------------------------------------------------


def test_requests_mock_transport_makes_failover_testable_without_servers():
    transport = requests_mock.Adapter()
    transport.register_uri("GET", P + "/health", exc=requests.exceptions.ConnectTimeout)
    transport.register_uri("GET", S + "/health", text="ok")
    transport.register_uri("POST", S + "/orders", json={"id": 7}, status_code=201)
    with FailoverSession([P, S], transport=transport, state_file=False) as session:
        response = session.post(P + "/orders", json={"item": "x"})
        assert response.status_code == 201 and response.json() == {"id": 7}
        assert session.active_backend == S
    assert transport.last_request.url == S + "/orders"


def test_requests_mock_transport_simulates_an_outage_mid_stream():
    transport = requests_mock.Adapter()
    transport.register_uri("GET", P + "/health", text="ok")
    transport.register_uri("GET", S + "/health", text="ok")
    transport.register_uri("GET", P + "/x", [{"text": "from primary"}, {"exc": requests.exceptions.ConnectTimeout}])
    transport.register_uri("GET", S + "/x", text="from secondary")
    with set_testing(True), FailoverSession([P, S], transport=transport, state_file=False) as session:
        assert session.get(P + "/x").text == "from primary"
        assert session.get(P + "/x").text == "from secondary"


def test_under_a_mocker_the_mocks_of_the_requested_url_answer():
    with requests_mock.Mocker() as mocker:
        mocker.get(P + "/orders", json=[1, 2])
        with FailoverSession([P, S], state_file=False) as session:
            assert session.get(P + "/orders").json() == [1, 2]
        assert [r.url for r in mocker.request_history] == [P + "/orders"]


# -- mounting on an existing session ---------------------------------------------------------------------


def test_adapter_mounted_on_a_plain_session(primary, secondary):
    with requests.Session() as session:
        adapter = FailoverAdapter([primary.url, secondary.url], state_file=False)
        for prefix in adapter.prefixes:
            session.mount(prefix, adapter)
        primary.set("refuse")
        assert session.get(primary.url + "/x").json()["server"] == "secondary"


# -- session behaviour ------------------------------------------------------------------------------------


def test_session_settings_apply_to_rewritten_requests(make_session, primary, secondary):
    session = make_session([primary.url, secondary.url])
    session.headers["X-App"] = "legacy"
    session.auth = ("user", "pw")
    session.cookies.set("sid", "abc")
    primary.set("refuse")
    session.get(primary.url + "/me")
    hit = secondary.hits(health=False)[-1]
    assert hit.headers["X-App"] == "legacy"
    assert hit.headers["Authorization"].startswith("Basic ")
    assert "sid=abc" in hit.headers["Cookie"]


def test_prepared_requests_fail_over_through_session_send(make_session, primary, secondary):
    session = make_session([primary.url, secondary.url])
    primary.set("refuse")
    prepared = requests.Request("PUT", primary.url + "/doc", data=b"v2").prepare()
    response = session.send(prepared)
    assert response.json() == {"server": "secondary", "method": "PUT", "path": "/doc", "body": "v2"}
    assert prepared.url == primary.url + "/doc", "the caller's request is never modified"
    assert response.request.url == secondary.url + "/doc"


def test_streaming_responses(make_session, primary, secondary):
    session = make_session([primary.url, secondary.url])
    primary.set("refuse")
    with session.get(primary.url + "/big", stream=True) as response:
        body = b"".join(response.iter_content(4))
    assert b'"server": "secondary"' in body


def test_close_releases_every_socket(primary, secondary):
    session = FailoverSession([primary.url, secondary.url], state_file=False)
    for _ in range(3):
        session.get(primary.url + "/")
    secondary.set(status=503)
    session.get(primary.url + "/")  # pools to both backends are open now
    assert primary.open_connections() >= 1
    session.close()
    wait_until(
        lambda: primary.open_connections() == 0 and secondary.open_connections() == 0, "every socket closed", bound=30.0
    )


def test_no_resource_warning_when_closed(primary, secondary):
    code = f"""
import gc, warnings
warnings.simplefilter("error", ResourceWarning)
from requests_failover import FailoverSession
from requests_failover.testing import set_testing
with FailoverSession([{primary.url!r}, {secondary.url!r}], state_file=False) as s:
    s.get({primary.url!r} + "/")
gc.collect()
print("clean")
"""
    result = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error::ResourceWarning", "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and "clean" in result.stdout, result.stderr
    assert "ResourceWarning" not in result.stderr


def test_pickling_round_trips_configuration_and_cookies(primary, secondary):
    session = FailoverSession([primary.url, secondary.url], state_file=False, cache_ttl=123)
    session.cookies.set("sid", "abc")
    clone = pickle.loads(pickle.dumps(session))
    assert clone.failover_adapter.backends == session.failover_adapter.backends
    assert clone.failover_adapter._options.cache_ttl == 123
    assert clone.cookies.get("sid") == "abc"
    primary.set("refuse")
    assert clone.get(primary.url + "/").json()["server"] == "secondary"
    assert clone.get_adapter(primary.url + "/") is clone.failover_adapter
    session.close()
    clone.close()


def test_all_backends_failed_keeps_legacy_except_clauses_working(make_session, primary, secondary):
    session = make_session([primary.url, secondary.url])
    session.get(primary.url + "/")
    primary.set("hang")
    secondary.set("hang")
    with pytest.raises(requests.exceptions.ReadTimeout) as info:
        session.get(primary.url + "/", timeout=(1, 0.2))
    assert isinstance(info.value, AllBackendsFailed)
    assert isinstance(info.value, requests.exceptions.RequestException)


# -- adapters the user mounts, proxies, settings -------------------------------------------------------


class Recording(requests.adapters.HTTPAdapter):
    """An HTTPAdapter that remembers what it sent."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.sent = []

    def send(self, request, **kwargs):
        self.sent.append((request.url, kwargs))
        return super().send(request, **kwargs)


def test_adapter_mounted_by_the_user_sends_under_the_failover_loop(make_session, primary, secondary):
    from urllib3.util.retry import Retry

    session = make_session([primary.url, secondary.url])
    mine = Recording(max_retries=Retry(total=0, read=False))
    session.mount("http://", mine)
    session.get(primary.url + "/")
    primary.set("refuse")
    assert session.get(primary.url + "/x").json()["server"] == "secondary"
    urls = [url for url, _ in mine.sent]
    assert not [u for u in urls if u.endswith("/health")], "probes never go through it (it could be a cache)"
    assert primary.hits(health=True)[0].headers["Cache-Control"] == "no-cache"
    assert urls[-2:] == [primary.url + "/x", secondary.url + "/x"], "both attempts go through it"


def test_explicit_transport_comes_before_a_mounted_adapter(make_session, primary, secondary):
    explicit = Recording()
    session = make_session([primary.url, secondary.url], transport=explicit)
    mounted = Recording()
    session.mount("http://", mounted)
    session.get(primary.url + "/x")
    assert mounted.sent == [] and explicit.sent


def test_other_hosts_still_use_the_users_adapter(make_session, primary, secondary, tertiary):
    session = make_session([primary.url, secondary.url])
    mine = Recording()
    session.mount("http://", mine)
    session.get(tertiary.url + "/elsewhere")
    assert [url for url, _ in mine.sent] == [tertiary.url + "/elsewhere"]


def test_verify_cert_and_stream_reach_every_attempt(make_session, primary, secondary, tmp_path):
    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_text("")
    transport = Recording()
    session = make_session([primary.url, secondary.url], transport=transport)
    session.get(primary.url + "/")
    primary.set("refuse")
    session.verify = str(tmp_path / "ca.pem")
    session.cert = (str(tmp_path / "client.pem"), str(tmp_path / "client.key"))
    session.get(primary.url + "/x", stream=True).close()
    attempts = [kw for url, kw in transport.sent if url.endswith("/x")]
    assert len(attempts) == 2
    for kwargs in attempts:
        assert kwargs["verify"] == str(tmp_path / "ca.pem")
        assert kwargs["cert"] == (str(tmp_path / "client.pem"), str(tmp_path / "client.key"))
        assert kwargs["stream"] is True


def test_proxy_environment_is_evaluated_for_the_backend_used(make_session, primary, secondary, tertiary, monkeypatch):
    proxy = tertiary  # answers in its own name, recording the absolute URL it was asked for
    local = primary.url.replace("127.0.0.1", "localhost")
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "localhost")
    session = make_session([local, secondary.url])
    assert session.get(local + "/direct").json()["server"] == "primary", "NO_PROXY: primary direct"
    primary.set("refuse")
    response = session.get(local + "/via-proxy")
    assert response.json()["server"] == "tertiary", "secondary is not in NO_PROXY: through the proxy"
    assert proxy.hits()[-1].path == secondary.url + "/via-proxy"
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")  # noticed at once, cache or not
    assert session.get(local + "/now-direct").json()["server"] == "secondary"
    monkeypatch.setenv("NO_PROXY", "localhost")
    assert session.get(local + "/via-proxy-again").json()["server"] == "tertiary"
    session.trust_env = False
    proxy.reset_hits()
    assert session.get(local + "/no-env").json()["server"] == "secondary"
    assert proxy.hits() == []


def test_session_proxies_setting_applies(make_session, primary, secondary, tertiary):
    session = make_session([primary.url, secondary.url])
    session.get(primary.url + "/")
    session.proxies = {"http": tertiary.url}
    primary.set("refuse")
    assert session.get(primary.url + "/p").json()["server"] == "tertiary"
    assert tertiary.hits()[-1].path in (primary.url + "/p", secondary.url + "/p")


def test_response_hooks_run_once_on_the_final_response(make_session, primary, secondary):
    seen = []
    session = make_session([primary.url, secondary.url])
    session.hooks["response"].append(lambda r, **kw: seen.append(r.json()["server"]))
    primary.set("refuse")
    session.get(primary.url + "/")
    assert seen == ["secondary"]


def test_max_redirects_is_honoured(make_session, primary, secondary):
    session = make_session([primary.url, secondary.url])
    session.max_redirects = 3
    primary.set(routes={"/loop": (302, {"Location": "/loop"})})
    with pytest.raises(requests.exceptions.TooManyRedirects):
        session.get(primary.url + "/loop")
    assert len(primary.hits(health=False)) == 4


def test_raw_stream_reads_from_the_backend_that_answered(make_session, primary, secondary):
    session = make_session([primary.url, secondary.url])
    primary.set("refuse")
    response = session.get(primary.url + "/raw", stream=True)
    assert b"secondary" in response.raw.read()
    response.close()


def test_a_streamed_5xx_that_was_failed_over_gives_its_connection_back(make_session, primary, secondary):
    class Keeping(requests.adapters.HTTPAdapter):
        def __init__(self):
            super().__init__()
            self.responses = []

        def send(self, request, **kwargs):
            self.responses.append(super().send(request, **kwargs))
            return self.responses[-1]

    transport = Keeping()
    session = make_session([primary.url, secondary.url], transport=transport)
    session.get(primary.url + "/")
    primary.set(status=503)
    with session.get(primary.url + "/s", stream=True) as response:
        assert response.json()["server"] == "secondary"
        failed = [r for r in transport.responses if r.status_code == 503]
        assert len(failed) == 1 and failed[0].raw.closed, "the 503 was closed, its connection released"


def test_pool_options_of_the_session_apply_to_backends(primary, secondary):
    with FailoverSession([primary.url, secondary.url], state_file=False, pool_maxsize=3) as session:
        session.get(primary.url + "/")
        assert session.adapters["http://"] is session.failover_adapter, "mounted in place of requests' own"
        assert len(session.failover_adapter.poolmanager.pools) >= 1, "the failover adapter's own pools sent it"
        assert session.failover_adapter._pool_maxsize == 3


def test_a_minimal_custom_transport_works_for_probes_and_requests():
    class Canned(requests.adapters.BaseAdapter):
        """Answers 200 to everything, with a body and no raw stream."""

        def send(self, request, **kwargs):
            response = requests.Response()
            response.status_code, response._content, response.url, response.request = 200, b"ok", request.url, request
            return response

        def close(self):
            pass

    with FailoverSession([P, S], transport=Canned(), state_file=False) as session:
        assert session.get(P + "/x").text == "ok"
        first = session.status()["backends"][0]
        assert first["healthy"] is True and first["last_error"] is None, first


# -- requests' merges, taken without its runtime Protocol checks: the same result ------------------------

_VALUES = st.one_of(st.none(), st.text(max_size=3), st.integers(), st.booleans())
_MAPPINGS = st.one_of(
    st.dictionaries(st.text(max_size=3), _VALUES, max_size=4),
    st.dictionaries(st.text(max_size=3), _VALUES, max_size=4).map(OrderedDict),
    st.dictionaries(st.text(max_size=3), _VALUES, max_size=4).map(CaseInsensitiveDict),
)
_SETTINGS = st.one_of(_MAPPINGS, _VALUES, st.lists(st.tuples(st.text(max_size=2), _VALUES), max_size=2))


@settings(max_examples=300, deadline=None)
@given(request=_SETTINGS, session=_SETTINGS, dict_class=st.sampled_from([OrderedDict, CaseInsensitiveDict, dict]))
def test_our_merge_of_settings_is_requests_merge(request, session, dict_class):
    from requests.sessions import merge_setting

    from requests_failover.session import _merge_setting

    def outcome(merge):
        try:
            merged = merge(request, session, dict_class)
        except ValueError as exc:
            return ("raised", str(exc))
        return (type(merged), list(merged.items()) if hasattr(merged, "items") else merged)

    assert outcome(_merge_setting) == outcome(merge_setting)


def test_a_new_pool_manager_takes_over_the_backends_pools(primary, secondary):
    """The adapter keeps a backend's pool between requests; a user's init_poolmanager() replaces them."""
    with FailoverSession([primary.url, secondary.url], state_file=False) as session:
        session.get(primary.url + "/")
        adapter = session.failover_adapter
        old = adapter.poolmanager
        adapter.init_poolmanager(adapter._pool_connections, adapter._pool_maxsize, block=adapter._pool_block)
        assert adapter.poolmanager is not old
        session.get(primary.url + "/")
        assert len(adapter.poolmanager.pools) == 1, "the request went through the new manager's pool"
        if hasattr(requests.adapters.HTTPAdapter, "get_connection_with_tls_context"):  # requests >= 2.32.2
            # the pool we kept is closed by us (older requests never asks us: the old manager's
            # sockets are then left to the garbage collector, as with plain requests)
            wait_until(lambda: primary.open_connections() == 1, "the old manager's pool closed, its socket with it")
