"""HTTP/2 heads to HTTP/1.1 and back (edge.serve.h2head): rules, and the no-smuggling invariant."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.http.h1 import ProtocolError, RequestHead, RequestReader, ResponseHead
from edge.serve.h2head import (
    H2RequestError,
    checked_request_head,
    header_pairs,
    request_head,
    response_headers,
    upstream_request,
)

LIMIT = 32 * 1024


def base(path: bytes = b"/p?q=1", authority: bytes = b"example.com", method: bytes = b"GET") -> list:
    return [(b":method", method), (b":scheme", b"https"), (b":authority", authority), (b":path", path)]


class _Sink:
    def __init__(self) -> None:
        self.heads: list[RequestHead] = []

    def request_head(self, head: RequestHead) -> None:
        self.heads.append(head)

    def request_body(self, data: bytes) -> None:
        pass

    def request_end(self) -> None:
        pass


def reparse(data: bytes) -> list[RequestHead]:
    """What a strict HTTP/1.1 server (our own reader) makes of the upstream request bytes."""
    sink = _Sink()
    RequestReader(sink, 1024 * 1024).feed(data)
    return sink.heads


def test_a_plain_get_becomes_an_http11_request() -> None:
    headers = [*base(), (b"user-agent", b"t"), (b"cookie", b"a=1"), (b"cookie", b"b=2"), (b"te", b"trailers")]
    head = request_head(headers, True, LIMIT)
    data = upstream_request(head, b"X-Forwarded-For: 1.2.3.4\r\n", b"")
    assert data.startswith(b"GET /p?q=1 HTTP/1.1\r\nHost: example.com\r\n")
    assert b"cookie: a=1; b=2\r\n" in data
    assert b"te:" not in data.lower() and b"transfer-encoding" not in data.lower()
    [again] = reparse(data)
    assert again.method == b"GET" and again.target == b"/p?q=1" and again.host == b"example.com"


def test_body_framing() -> None:
    head = request_head([*base(method=b"POST"), (b"content-length", b"5")], False, LIMIT)
    assert b"Content-Length: 5\r\n" in upstream_request(head, b"", b"")
    head = request_head(base(method=b"POST"), False, LIMIT)
    assert head.chunked and b"Transfer-Encoding: chunked\r\n" in upstream_request(head, b"", b"")
    head = request_head(base(method=b"POST"), True, LIMIT)
    assert b"Content-Length: 0\r\n" in upstream_request(head, b"", b"")
    head = request_head(base(), True, LIMIT)
    assert b"Content-Length" not in upstream_request(head, b"", b"")
    with pytest.raises(H2RequestError) as err:
        request_head([*base(method=b"POST"), (b"content-length", b"5")], True, LIMIT)
    assert err.value.status == 400 and not err.value.reset


@pytest.mark.parametrize(
    "extra",
    [
        [(b"connection", b"close")],
        [(b"keep-alive", b"5")],
        [(b"proxy-connection", b"x")],
        [(b"transfer-encoding", b"chunked")],
        [(b"upgrade", b"websocket")],
        [(b"te", b"gzip")],
        [(b"Upper", b"x")],
        [(b"bad name", b"x")],
        [(b"x", b"a\r\nInjected: yes")],
        [(b"x", b"a\x00b")],
        [(b"x", b"a\n")],  # found by the invariant below: "$" matches before a final newline
        [(b"x\n", b"a")],
        [(b"x", b" padded")],
        [(b"x", b"padded ")],
        [(b":status", b"200")],
        [(b":protocol", b"websocket")],
        [(b"content-length", b"1"), (b"content-length", b"2")],
        [(b"content-length", b"-1")],
    ],
)
def test_malformed_heads_reset_the_stream(extra: list) -> None:
    with pytest.raises(H2RequestError) as err:
        request_head([*base(), *extra], True, LIMIT)
    assert err.value.reset


def test_pseudo_header_rules() -> None:
    for headers in (
        [(b":method", b"GET"), (b":method", b"GET"), *base()[1:]],
        [*base()[:2], (b"x", b"1"), *base()[2:]],  # pseudo after regular
        [(b":scheme", b"https"), (b":path", b"/")],  # no method
        [(b":method", b"GET"), (b":authority", b"a")],  # no scheme, path
        [(b":method", b"G ET"), (b":scheme", b"https"), (b":path", b"/")],
    ):
        with pytest.raises(H2RequestError) as err:
            request_head(headers, True, LIMIT)
        assert err.value.reset, headers


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ([*base(), (b"host", b"other.example")], 400),  # RFC 9113 8.3.1: Host and :authority differ
        ([*base(), (b"host", b"a"), (b"host", b"a")], 400),
        (base(authority=b"user@example.com"), 400),  # no userinfo in :authority
        (base(path=b"relative"), 400),
        (base(path=b"/caf\xc3\xa9"), 400),
        (base(method=b"CONNECT"), 405),
        ([*base(), (b"expect", b"magic")], 417),
        ([*base(), (b"x-big", b"a" * LIMIT)], 431),
        ([(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/")], 400),  # no authority, no Host
    ],
)
def test_refused_with_a_response(headers: list, status: int) -> None:
    with pytest.raises(H2RequestError) as err:
        request_head(headers, True, LIMIT)
    assert err.value.status == status and not err.value.reset


def test_host_without_authority_and_matching_host() -> None:
    head = request_head(
        [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b"host", b"h.test")], True, 8000
    )
    assert head.host == b"h.test"
    head = request_head([*base(authority=b"Example.com"), (b"host", b"example.COM")], True, LIMIT)
    assert head.host == b"Example.com"


def test_forwarding_headers_are_held_apart() -> None:
    head = request_head([*base(), (b"x-forwarded-for", b"9.9.9.9"), (b"forwarded", b"for=x")], True, LIMIT)
    assert head.x_forwarded_for == b"9.9.9.9" and head.forwarded == b"for=x"
    assert b"forwarded" not in b"".join(head.lines).lower()


def test_response_headers() -> None:
    rh = ResponseHead()
    rh.status = 200
    rh.lines = [b"Content-Type: text/plain\r\n", b"X-Thing:  v \r\n"]
    rh.names = [b"content-type", b"x-thing"]
    rh.content_length = 12
    out = response_headers(rh, False, header_pairs(b"X-Served-By: edge\r\n"))
    assert out == [
        (b":status", b"200"),
        (b"content-type", b"text/plain"),
        (b"x-thing", b"v"),
        (b"content-length", b"12"),
        (b"x-served-by", b"edge"),
    ]
    rh.status = 204
    assert (b"content-length", b"12") not in response_headers(rh, True, [])


_nasty = st.sampled_from(
    [b"", b" ", b"\r", b"\n", b"\r\n", b"\x00", b":", b"@", b"/", b"?", b"\t", b"a", b"\xff", b"%"]
)
_bytes = st.lists(st.one_of(_nasty, st.binary(max_size=4)), max_size=5).map(b"".join)
_names = st.one_of(
    st.sampled_from(
        [
            b":method",
            b":path",
            b":scheme",
            b":authority",
            b"host",
            b"content-length",
            b"cookie",
            b"te",
            b"x-a",
            b"transfer-encoding",
            b"connection",
            b"Upper",
            b"x forwarded",
        ]
    ),
    _bytes,
)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.tuples(_names, _bytes), max_size=6),
    st.sampled_from([b"GET", b"POST", b"G T", b"CONNECT"]),
    st.one_of(st.sampled_from([b"/", b"/a?b", b"*"]), _bytes),
    st.one_of(st.sampled_from([b"h.test", b"h.test:8443", b"[::1]"]), _bytes),
    st.booleans(),
)
def test_either_refused_or_one_unambiguous_http11_request(extra, method, path, authority, end) -> None:
    headers = [(b":method", method), (b":scheme", b"https"), (b":authority", authority), (b":path", path), *extra]
    try:
        head = request_head(headers, end, LIMIT)
    except H2RequestError:
        return
    data = upstream_request(head, b"", b"")
    try:
        heads = reparse(data)
    except ProtocolError as exc:  # pragma: no cover - the invariant failing
        raise AssertionError(f"{headers!r} -> {data!r}: {exc.reason}") from None
    assert len(heads) == 1
    again = heads[0]
    assert (again.method, again.target, again.host) == (head.method, head.target, head.host)
    assert again.chunked == head.chunked
    assert again.content_length == head.content_length or (head.content_length is None and again.content_length == 0)
    assert again.names == head.names


def _fields(head: RequestHead) -> dict:
    return {name: getattr(head, name) for name in RequestHead.__slots__}


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(_names, _bytes), max_size=6),
    st.sampled_from([b"GET", b"POST", b"G T"]),
    st.sampled_from([b"/", b"/a?b", b"/x\n"]),
    st.booleans(),
)
def test_a_remembered_head_is_the_checked_head(extra, method, path, end) -> None:
    """checked_request_head: same answer or same refusal as request_head, first time and again."""
    headers = [(b":method", method), (b":scheme", b"https"), (b":authority", b"h.test"), (b":path", path), *extra]
    try:
        want = request_head(headers, end, LIMIT)
    except H2RequestError as exc:
        for _ in range(2):
            with pytest.raises(H2RequestError) as again:
                checked_request_head(headers, end, LIMIT)
            assert (again.value.status, again.value.reset) == (exc.status, exc.reset)
        return
    for _ in range(2):
        assert _fields(checked_request_head(headers, end, LIMIT)) == _fields(want)


def test_remembered_heads_are_not_shared() -> None:
    headers = [*base(), (b"accept", b"*/*")]
    first = checked_request_head(headers, True, LIMIT)
    first.lines.append(b"x-tier: gold\r\n")  # what a feature does to its request's head
    first.names.append(b"x-tier")
    first.host = b"other.test"
    second = checked_request_head(headers, True, LIMIT)
    assert second.lines == [b"accept: */*\r\n"] and second.names == [b"accept"]
    assert second.host == b"example.com"
    # a different limit is a different check
    with pytest.raises(H2RequestError) as exc:
        checked_request_head(headers, True, 10)
    assert exc.value.status == 431
