"""Property tests for URL matching and rewriting (hypothesis)."""

from __future__ import annotations

import string

import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from requests_failover import FailoverAdapter
from requests_failover.adapter import _rewrite

SEGMENT = st.text(alphabet=string.ascii_letters + string.digits + "-._~%!$&'()*+,;=:@ é", max_size=8)
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
