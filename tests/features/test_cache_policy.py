"""RFC 9111 rules of the shared cache: what may be looked up, stored, for how long, and revalidated."""

from __future__ import annotations

import email.utils

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.cache.policy import (
    BYPASS,
    PLAIN_GET,
    PLAIN_HEAD,
    CacheControl,
    cache_key,
    conditional_lines,
    merge_304,
    not_modified,
    parse_http_date,
    request_plan,
    request_plan_from_head,
    response_plan,
    strip_conditionals,
    vary_names,
    vary_values,
)
from tests.features.heads import header_value, request, response

WALL = 1_700_000_000.0


def http_date(epoch: float) -> str:
    return email.utils.formatdate(epoch, usegmt=True)


def plan_for(status: int = 200, *headers: str, req=PLAIN_GET, ttl: float = 60.0, wall: float = WALL, delay=0.0):
    head = response(status, *headers)
    return response_plan(req, head.status, head.lines, head.names, ttl, wall, delay)


# -- Cache-Control ---------------------------------------------------------------------------
def test_cache_control_parsing() -> None:
    cc = CacheControl.parse('public, max-age=60, s-maxage="120", no-cache="Set-Cookie, X", stale-if-error=30')
    assert cc.public and cc.no_cache and cc.max_age == 60 and cc.s_maxage == 120 and cc.stale_if_error == 30
    bad = CacheControl.parse("max-age=abc, MAX-STALE")
    assert bad.max_age == 0  # invalid reads as the stricter 0
    assert bad.max_stale is not None
    assert CacheControl.parse("max-age=99999999999999999").max_age == 365 * 86400


@given(st.text(max_size=80))
def test_cache_control_never_raises(value: str) -> None:
    CacheControl.parse(value)


def test_http_dates() -> None:
    assert parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT") == 784111777
    assert parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT") == 784111777
    assert parse_http_date("Sun Nov  6 08:49:37 1994") == 784111777
    assert parse_http_date("0") is None and parse_http_date("") is None and parse_http_date(None) is None


# -- requests ---------------------------------------------------------------------------------
def test_plain_get_and_head_share_constants() -> None:
    assert request_plan_from_head(request("/")) is PLAIN_GET
    assert request_plan_from_head(request("/", method="HEAD")) is PLAIN_HEAD
    assert PLAIN_HEAD.lookup and not PLAIN_HEAD.store


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"])
def test_unsafe_methods_bypass(method: str) -> None:
    assert request_plan(method.encode()) is BYPASS


def test_range_and_preconditions_bypass() -> None:
    assert request_plan_from_head(request("/", "Range: bytes=0-99")) is BYPASS
    assert request_plan_from_head(request("/", 'If-Match: "a"')) is BYPASS
    assert request_plan_from_head(request("/", 'If-None-Match: "a"')) is PLAIN_GET


def test_request_directives() -> None:
    plan = request_plan_from_head(request("/", "Cache-Control: no-cache"))
    assert plan.lookup and plan.revalidate and plan.store
    assert request_plan_from_head(request("/", "Cache-Control: max-age=0")).revalidate
    assert request_plan_from_head(request("/", "Pragma: no-cache")).revalidate
    assert not request_plan_from_head(request("/", "Pragma: no-cache", "Cache-Control: max-age=5")).revalidate
    nostore = request_plan_from_head(request("/", "Cache-Control: no-store"))
    assert nostore.lookup and not nostore.store
    assert request_plan_from_head(request("/", "Cache-Control: only-if-cached")).only_if_cached


def test_cookie_and_authorization_need_explicit_responses() -> None:
    for header in ("Cookie: session=1", "Authorization: Bearer x"):
        plan = request_plan_from_head(request("/", header))
        assert plan.explicit_only and plan.lookup and plan.store
        assert plan_for(200, "Content-Type: text/html", req=plan) is None  # route ttl does not apply
        assert plan_for(200, "Cache-Control: max-age=60", req=plan) is None
        assert plan_for(200, "Cache-Control: public, max-age=60", req=plan).explicit
        assert plan_for(200, "Cache-Control: s-maxage=60", req=plan) is not None
    auth = request_plan(b"GET", authorization=True)
    assert plan_for(200, "Cache-Control: must-revalidate, max-age=5", req=auth) is None


# -- responses ----------------------------------------------------------------------------------
def test_route_ttl_is_the_default_lifetime() -> None:
    plan = plan_for(200, "Content-Type: text/html")
    assert plan.lifetime == 60 and plan.initial_age == 0 and plan.stale_ok


def test_lifetime_precedence() -> None:
    assert plan_for(200, "Cache-Control: max-age=10, s-maxage=20").lifetime == 20
    assert plan_for(200, "Cache-Control: max-age=10", f"Expires: {http_date(WALL + 500)}").lifetime == 10
    assert plan_for(200, f"Date: {http_date(WALL - 100)}", f"Expires: {http_date(WALL + 500)}").lifetime == 600
    assert plan_for(200, f"Expires: {http_date(WALL + 500)}").lifetime == 500  # no Date: our clock
    assert plan_for(200, "Expires: 0", 'ETag: "x"').lifetime == 0  # invalid = already expired


def test_not_stored() -> None:
    assert plan_for(200, "Cache-Control: no-store") is None
    assert plan_for(200, "Cache-Control: private, max-age=60") is None
    assert plan_for(200, "Set-Cookie: a=b", "Cache-Control: public, max-age=60") is None
    assert plan_for(200, "Vary: *") is None
    assert plan_for(206, "Content-Range: bytes 0-1/2", "Cache-Control: max-age=60") is None
    assert plan_for(304) is None
    assert plan_for(302) is None  # not heuristically cacheable, no explicit freshness
    assert plan_for(500) is None
    assert plan_for(200, "Cache-Control: max-age=0") is None  # born stale, no validator
    assert plan_for(200, "Pragma: no-cache") is None
    nostore = request_plan(b"GET", cache_control="no-store")
    assert plan_for(200, req=nostore) is None


def test_stored_with_explicit_freshness_even_if_status_is_not_default() -> None:
    assert plan_for(302, "Cache-Control: max-age=30").lifetime == 30
    assert plan_for(404).lifetime == 60


def test_no_cache_response_is_stored_for_revalidation_only() -> None:
    plan = plan_for(200, "Cache-Control: no-cache", 'ETag: "v1"')
    assert plan.lifetime == 0 and plan.etag == '"v1"' and not plan.stale_ok
    assert plan_for(200, "Cache-Control: no-cache") is None  # nothing to revalidate with


def test_must_revalidate_is_never_served_stale() -> None:
    assert not plan_for(200, "Cache-Control: max-age=60, must-revalidate").stale_ok
    assert not plan_for(200, "Cache-Control: max-age=60, proxy-revalidate").stale_ok
    assert plan_for(200, "Cache-Control: max-age=60, stale-if-error=300").stale_if_error == 300


def test_age_and_date_give_the_initial_age() -> None:
    assert plan_for(200, "Age: 30").initial_age == 30
    assert plan_for(200, "Age: 30", delay=2.0).initial_age == 32
    assert plan_for(200, f"Date: {http_date(WALL - 45)}").initial_age == 45
    assert plan_for(200, f"Date: {http_date(WALL - 45)}", "Age: 100").initial_age == 100
    assert plan_for(200, f"Date: {http_date(WALL + 45)}").initial_age == 0  # a clock ahead of ours


def test_vary() -> None:
    assert vary_names("Accept-Encoding, accept-language,ACCEPT-ENCODING") == (b"accept-encoding", b"accept-language")
    assert vary_names(None) == () and vary_names("*") is None
    assert plan_for(200, "Vary: Accept-Encoding").vary == (b"accept-encoding",)
    head = request("/", "Accept-Encoding: gzip,  br")
    assert vary_values((b"accept-encoding", b"accept-language"), head.header) == ("gzip,br", None)


def test_cache_key() -> None:
    assert cache_key(b"Cloud.Example.com", b"/a?b=1") == cache_key(b"cloud.example.com", b"/a?b=1")
    assert cache_key(b"h", b"/a", "low") != cache_key(b"h", b"/a", "high")
    assert cache_key(b"h", b"/a") != cache_key(b"h", b"/A")
    assert cache_key(b"h", b"/a", scheme=b"http") != cache_key(b"h", b"/a", scheme=b"https")


# -- revalidation --------------------------------------------------------------------------------
def test_conditional_lines_and_stripping_the_clients() -> None:
    lm = "Sun, 06 Nov 1994 08:49:37 GMT"
    assert conditional_lines('"v1"', lm) == [b'If-None-Match: "v1"\r\n', f"If-Modified-Since: {lm}\r\n".encode()]
    assert conditional_lines(None, None) == []
    head = request("/", 'If-None-Match: "client"', "Accept: */*", f"If-Modified-Since: {lm}")
    lines, names = strip_conditionals(head.lines, head.names)
    assert names == [b"accept"] and len(lines) == 1


def test_merge_304_updates_headers_but_not_the_body_fields() -> None:
    stored = response(200, "Cache-Control: max-age=10", 'ETag: "v1"', "Content-Type: text/html", "X-A: 1",
                      body=b"hello")
    fresh = response(304, "Cache-Control: max-age=99", 'ETag: "v1"', "Content-Encoding: gzip", "X-B: 2", "Age: 3")
    lines, names = merge_304(stored.lines, stored.names, fresh.lines, fresh.names)
    assert header_value(lines, "cache-control") == ["max-age=99"]
    assert header_value(lines, "x-a") == ["1"] and header_value(lines, "x-b") == ["2"]
    assert header_value(lines, "content-encoding") == [] and header_value(lines, "age") == []
    assert header_value(lines, "etag") == ['"v1"'] and len(lines) == len(names)


@pytest.mark.parametrize(
    ("inm", "ims", "expected"),
    [
        ('"v1"', None, True),
        ('W/"v1"', None, True),  # weak comparison
        ('"v0", "v1"', None, True),
        ('"a,b", "v1"', None, True),  # commas inside entity-tags
        ('"v2"', None, False),
        ("*", None, True),
        ('"v2"', "Sun, 06 Nov 2094 08:49:37 GMT", False),  # If-None-Match wins
        (None, "Sun, 06 Nov 2094 08:49:37 GMT", True),
        (None, "Sun, 06 Nov 1984 08:49:37 GMT", False),
        (None, "garbage", False),
        (None, None, False),
    ],
)
def test_client_conditionals_against_a_stored_response(inm, ims, expected) -> None:
    assert not_modified('"v1"', "Sun, 06 Nov 1994 08:49:37 GMT", inm, ims) is expected


def test_not_modified_without_validators() -> None:
    assert not not_modified(None, None, '"v1"', None)
    assert not not_modified(None, None, None, "Sun, 06 Nov 2094 08:49:37 GMT")
