"""Property tests for URL matching and rewriting (hypothesis)."""

from __future__ import annotations

import string
from urllib.parse import urlsplit

import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from requests_failover import FailoverAdapter
from requests_failover._sending import Route as _Route
from requests_failover._sending import rewrite as _rewrite

#: A path segment; "." and ".." are left out: requests removes dot segments before any adapter sees
#: the URL ("/api/.." is "/", outside the base path: not a backend's URL any more).
SEGMENT = st.text(alphabet=string.ascii_letters + string.digits + "-._~%!$&'()*+,;=:@ é", max_size=8).filter(
    lambda segment: segment not in (".", "..")
)
PATHS = st.lists(SEGMENT, max_size=4).map(lambda parts: "/" + "/".join(parts))
QUERIES = st.one_of(st.none(), st.text(alphabet=string.ascii_letters + string.digits + "=&%+/?é[]", max_size=16))
BASES = st.sampled_from(["", "/api", "/api/v2", "/Mixed_Case"])


def adapter_for(base: str) -> FailoverAdapter:
    return FailoverAdapter(
        [f"https://primary.example{base}", "https://secondary.example:8443/mirror"], state_file=False
    )


@settings(max_examples=200, deadline=None)
@given(base=BASES, path=PATHS, query=QUERIES, explicit_port=st.booleans(), upper_host=st.booleans())
def test_rewriting_keeps_everything_after_the_base_url(base, path, query, explicit_port, upper_host):
    adapter = adapter_for(base)
    host = "PRIMARY.example" if upper_host else "primary.example"
    url = f"https://{host}{':443' if explicit_port else ''}{base}{path}" + ("" if query is None else f"?{query}")
    prepared = requests.Request("GET", url).prepare()
    matched = adapter.match(prepared.url)
    assert matched is not None, prepared.url
    source, rest = matched
    assert source.url == f"https://primary.example{base}"
    assert prepared.url.endswith(rest)
    assert rest == "" or rest[0] in "/?"

    target = adapter._options.targets[1]
    rewritten = _rewrite(prepared, source, rest, target)
    assert rewritten.url == "https://secondary.example:8443/mirror" + rest
    assert prepared.url.endswith(rest), "the caller's request is unchanged"
    assert rewritten.method == prepared.method and rewritten.body == prepared.body
    # and back: the rewritten URL is recognised as the secondary's, with the same rest
    assert adapter.match(rewritten.url) == (target, rest)


@settings(max_examples=100, deadline=None)
@given(base=st.sampled_from(["/api", "/api/v2"]), suffix=st.text(alphabet=string.ascii_letters + "-_", min_size=1))
def test_a_path_that_only_starts_like_the_base_path_is_not_a_backend(base, suffix):
    adapter = adapter_for(base)
    assert adapter.match(f"https://primary.example{base}{suffix}/x") is None


@settings(max_examples=100, deadline=None)
@given(
    host=st.sampled_from(["primary.example.com", "xprimary.example", "primary.exampl", "secondary.example"]),
    port=st.sampled_from(["", ":80", ":444", ":8443"]),
)
def test_other_hosts_and_ports_are_not_backends(host, port):
    adapter = adapter_for("")
    # (secondary.example:8443 is a backend, but only under its base path /mirror)
    assert adapter.match(f"https://{host}{port}/") is None


HOSTS = st.sampled_from([("primary.example", "primary.example"), ("[2001:db8::1]", "[2001:db8::1]")])
USERINFO = st.one_of(st.just(""), st.sampled_from(["user@", "user:pw@", "us%40er:p%3Aw@"]))
PORTS = st.sampled_from(["", ":443"])  # the backend's default port, implicit or explicit
ENCODED = st.text(alphabet=string.ascii_letters + "%20%2F%3F", max_size=12).map(lambda s: "/" + s)


@settings(max_examples=300, deadline=None)
@given(host=HOSTS, userinfo=USERINFO, port=PORTS, base=BASES, path=st.one_of(PATHS, ENCODED), query=QUERIES)
def test_every_backend_receives_the_same_path_and_query(host, userinfo, port, base, path, query):
    """Every URL sent to a backend (attempt, race rival, hedge) comes from one rewrite: the rest of
    the request URL after the base URL, whatever userinfo, port spelling, host form or encoding."""
    spelled, canonical = host
    adapter = FailoverAdapter(
        [f"https://{canonical}{base}", "https://secondary.example:8443/mirror", "https://tertiary.example"],
        state_file=False,
    )
    url = f"https://{userinfo}{spelled}{port}{base}{path}" + ("" if query is None else f"?{query}")
    prepared = requests.Request("GET", url).prepare()
    matched = adapter.match(prepared.url)
    assert matched is not None, prepared.url
    source, rest = matched
    asked = urlsplit(prepared.url)
    route = _Route(prepared, source, rest, None)
    for target in adapter._options.targets:
        sent = urlsplit(route.to(target).url)
        if target is not source:  # (to the backend the URL names it goes as asked, as requests sends it)
            assert (sent.scheme, sent.netloc) == (target.scheme, target.netloc), "its own origin, no userinfo"
        assert sent.path == target.base_path + asked.path[len(source.base_path) :] or (
            sent.path == target.base_path and asked.path == source.base_path
        )
        assert sent.query == asked.query
    assert urlsplit(route.to(source).url).path == asked.path, "to the backend the URL names: as asked"
