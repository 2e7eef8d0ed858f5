"""The "change one line" promise: session behaviour, mounting, pickling, testing story."""

from __future__ import annotations

import pickle
import warnings

import pytest
import requests
import requests_mock

from requests_failover import AllBackendsFailed, FailoverAdapter, FailoverSession

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
    with FailoverSession([P, S], transport=transport, state_file=False, sleep=lambda s: None) as session:
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
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        session = FailoverSession([primary.url, secondary.url], state_file=False)
        session.get(primary.url + "/")
        primary.set("refuse")
        session.get(primary.url + "/")
        session.close()
        import gc

        gc.collect()


def test_pickling_round_trips_configuration_and_cookies(primary, secondary):
    session = FailoverSession([primary.url, secondary.url], state_file=False, cache_ttl=123)
    session.cookies.set("sid", "abc")
    clone = pickle.loads(pickle.dumps(session))
    assert clone.failover_adapter.backends == session.failover_adapter.backends
    assert clone.failover_adapter._options.cache_ttl == 123
    assert clone.cookies.get("sid") == "abc"
    primary.set("refuse")
    assert clone.get(primary.url + "/").json()["server"] == "secondary"
    assert clone.adapters[primary.url] is clone.failover_adapter
    session.close()
    clone.close()


def test_all_backends_failed_keeps_legacy_except_clauses_working(make_session, primary, secondary):
    session = make_session([primary.url, secondary.url])
    session.get(primary.url + "/")
    primary.set("blackhole")
    secondary.set("blackhole")
    with pytest.raises(requests.exceptions.ReadTimeout) as info:
        session.get(primary.url + "/", timeout=(1, 0.2))
    assert isinstance(info.value, AllBackendsFailed)
    assert isinstance(info.value, requests.exceptions.RequestException)
