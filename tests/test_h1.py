"""The HTTP/1 codec, sans IO: bytes in, heads and body events out; every bad shape is a ProtocolError.

Each case runs fed whole and fed byte by byte: the events must be the same.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.http.h1 import _VIEW_FROM, ProtocolError, RequestReader, ResponseReader, has_dot_segment


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple] = []

    def request_head(self, head):
        self.events.append(("head", head.method, head.target, head.version, head.host, b"".join(head.lines),
                            head.content_length, head.chunked, head.keep_alive, head.upgrade, head.expect_continue))

    def request_body(self, data):
        if self.events and self.events[-1][0] == "body":
            self.events[-1] = ("body", self.events[-1][1] + data)
        else:
            self.events.append(("body", data))

    def request_end(self):
        self.events.append(("end",))

    response_body = request_body
    response_end = request_end

    def response_head(self, head):
        self.events.append(("rhead", head.status, head.reason, b"".join(head.lines), head.content_length,
                            head.chunked, head.keep_alive))


def feed_whole(data: bytes, max_header_size: int = 32 * 1024):
    rec = Recorder()
    reader = RequestReader(rec, max_header_size)
    offset = reader.feed(data)
    return rec.events, offset


def feed_bytewise(data: bytes, max_header_size: int = 32 * 1024):
    rec = Recorder()
    reader = RequestReader(rec, max_header_size)
    offset = -1
    for i in range(len(data)):
        offset = reader.feed(data[i : i + 1])
        if offset >= 0:
            break
    return rec.events, offset


def both(data: bytes, **kw):
    whole = feed_whole(data, **kw)
    assert feed_bytewise(data, **kw)[0] == whole[0]
    return whole[0]


def rejected(data: bytes, **kw) -> int:
    statuses = set()
    for feed in (feed_whole, feed_bytewise):
        with pytest.raises(ProtocolError) as info:
            feed(data, **kw)
        statuses.add(info.value.status)
    assert len(statuses) == 1, statuses
    return statuses.pop()


def test_simple_get():
    events = both(b"GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\n\r\n")
    assert events == [
        ("head", b"GET", b"/a?b=1", b"1.1", b"example.com", b"User-Agent: t\r\n", None, False, True, None, False),
        ("end",),
    ]


def test_hop_by_hop_and_forwarding_headers_are_taken_out():
    events = both(
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret\r\nKeep-Alive: 5\r\nX-Secret: 1\r\n"
        b"TE: trailers\r\nProxy-Connection: x\r\nX-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\n"
        b"Proxy-Authorization: Basic x\r\nAccept: */*\r\n\r\n"
    )
    assert events[0][5] == b"Accept: */*\r\n"


def test_chunked_body_decoded():
    events = both(b"POST /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n")
    assert events[0][7] is True
    assert events[1:] == [("body", b"abcde"), ("end",)]


def test_pipelined_requests_in_order():
    events = both(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nPOST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi"
                  b"GET /3 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert [e[2] for e in events if e[0] == "head"] == [b"/1", b"/2", b"/3"]
    assert ("body", b"hi") in events


def test_http10_defaults_to_close():
    events = both(b"GET / HTTP/1.0\r\nHost: a\r\n\r\n")
    assert events[0][3] == b"1.0" and events[0][8] is False


def test_connection_close():
    assert both(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")[0][8] is False


def test_upgrade_returns_offset_of_tunnel_bytes():
    data = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nRAW"
    events, offset = feed_whole(data)
    assert events[0][9] == b"websocket"
    assert data[offset:] == b"RAW"


def test_expect_continue():
    events = both(b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\nx")
    assert events[0][10] is True


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 4\r\n\r\nabcd", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
         400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"GET / HTTP/1.1\nHost: a\n\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n  folded\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\nabc\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX0\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", 400),
        (b"GET http://evil/ HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
        (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 405),
        (b"GET / HTTP/1.1\r\nHost: a\r\nExpect: magic\r\n\r\n", 417),
        (b"G\x01T / HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nX Y: z\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc", 400),
    ],
)
def test_bad_input(data, status):
    assert rejected(data) == status


@pytest.mark.parametrize(
    "target", [b"/pub/../admin", b"/pub/%2e%2e/admin", b"/pub/%2E./x", b"/./x", b"/a/..", b"/a/.?x=1"]
)
def test_dot_segments_are_rejected(target):
    assert rejected(b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n") == 400


def test_dots_inside_names_are_fine():
    assert both(b"GET /a/.well-known/x..y/file.txt?q=.. HTTP/1.1\r\nHost: a\r\n\r\n")[0][2].startswith(b"/a/")


def test_trailers_never_become_headers():
    events = both(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"1\r\nx\r\n0\r\nUpgrade: websocket\r\nConnection: upgrade\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n")
    assert events[0][9] is None  # no upgrade
    assert events[1:] == [("body", b"x"), ("end",)]


def test_a_head_split_across_reads_followed_by_a_body_is_not_431():
    head = b"POST /u HTTP/1.1\r\nHost: a\r\nX-Big: " + b"b" * 3000 + b"\r\nContent-Length: 100000\r\n\r\n"
    rec = Recorder()
    reader = RequestReader(rec, 4096)
    reader.feed(head[:1000])
    reader.feed(head[1000:] + b"z" * 100000)
    assert rec.events[-1] == ("end",)


def test_header_section_too_large_is_431():
    big = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-Pad: " + b"a" * 5000 + b"\r\n\r\n"
    assert rejected(big, max_header_size=4096) == 431


def test_endless_header_is_431_before_it_ends():
    rec = Recorder()
    reader = RequestReader(rec, 4096)
    reader.feed(b"GET / HTTP/1.1\r\nHost: a\r\nX-Pad: ")
    with pytest.raises(ProtocolError) as info:
        for _ in range(10):
            reader.feed(b"a" * 1000)
    assert info.value.status == 431


_token = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12).filter(lambda t: t.lower() not in {
    "host", "content-length", "transfer-encoding", "connection", "upgrade", "expect", "te", "trailer", "keep-alive",
    "proxy-connection", "proxy-authorization", "proxy-authenticate", "x-forwarded-for", "x-forwarded-proto",
    "x-forwarded-host", "forwarded"})
_value = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJ0123456789 ;=,./", max_size=30).map(str.strip)


@settings(max_examples=150, deadline=None)
@given(
    path=st.text(alphabet="abcdefghij/._-~%0123456789", max_size=40).filter(
        lambda p: not has_dot_segment(b"/" + p.encode())
    ),
    headers=st.lists(st.tuples(_token, _value), max_size=8),
    body=st.binary(max_size=300),
    chunked=st.booleans(),
)
def test_valid_requests_round_trip_whole_and_bytewise(path, headers, body, chunked):
    lines = b"".join(b"%s: %s\r\n" % (n.encode(), v.encode()) for n, v in headers)
    if chunked:
        framed = (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
        data = b"POST /" + path.encode() + b" HTTP/1.1\r\nHost: h\r\n" + lines + b"Transfer-Encoding: chunked\r\n\r\n"
    else:
        framed = body
        length = b"Content-Length: %d\r\n\r\n" % len(body)
        data = b"POST /" + path.encode() + b" HTTP/1.1\r\nHost: h\r\n" + lines + length
    events = both(data + framed)
    assert events[0][5] == lines
    got = b"".join(e[1] for e in events if e[0] == "body")
    assert got == body
    assert events[-1] == ("end",)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_input_parses_or_raises_protocol_error(data):
    for feed in (feed_whole, feed_bytewise):
        try:
            feed(b"GET / HTTP/1.1\r\nHost: a\r\n" + data)
        except ProtocolError as exc:
            assert 400 <= exc.status < 600


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_request_line_parses_or_raises_protocol_error(data):
    try:
        feed_whole(data)
    except ProtocolError:
        pass


# -- responses ----------------------------------------------------------------------------
def read_response(data: bytes, head_request: bool = False, bytewise: bool = False):
    rec = Recorder()
    reader = ResponseReader(rec)
    reader.expect_no_body = head_request
    pieces = [data[i : i + 1] for i in range(len(data))] if bytewise else [data]
    for piece in pieces:
        reader.feed(piece)
    return rec.events, reader


@pytest.mark.parametrize("bytewise", [False, True])
def test_response_chunked_and_hop_by_hop(bytewise):
    events, _ = read_response(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: X-Gone\r\nX-Gone: 1\r\nX-Kept: 2\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n",
        bytewise=bytewise,
    )
    assert events[0] == ("rhead", 200, b"OK", b"X-Kept: 2\r\n", None, True, True)
    assert events[1:] == [("body", b"hello"), ("end",)]


def test_response_to_head_has_no_body_and_connection_is_reusable():
    events, reader = read_response(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", head_request=True)
    assert events == [("rhead", 200, b"OK", b"", 1234, False, True), ("end",)]
    assert reader.clean
    # the next response on the same connection parses with a fresh parser
    rec2 = reader._sink
    reader.expect_no_body = False
    reader.feed(b"HTTP/1.1 204 No Content\r\n\r\n")
    assert rec2.events[-2][1] == 204


def test_response_interim_then_final():
    events, _ = read_response(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
                              b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert [e[1] for e in events if e[0] == "rhead"] == [103, 200]


def test_malformed_response_is_502():
    with pytest.raises(ProtocolError) as info:
        read_response(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n")
    assert info.value.status == 502


@settings(max_examples=200, deadline=None)
@given(
    bodies=st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=4),
    cuts=st.lists(st.integers(min_value=1, max_value=400), max_size=12),
)
def test_keep_alive_responses_split_anywhere_keep_their_bodies(bodies, cuts):
    """Responses back to back on one connection, cut into reads anywhere: each body arrives
    whole (parsed, or passed through once its head's read is behind), then its end."""
    stream = b"".join(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(b), b) for b in bodies)
    rec = Recorder()
    reader = ResponseReader(rec)
    position, pieces = 0, []
    for cut in cuts:
        if position >= len(stream):
            break
        pieces.append(stream[position : position + cut])
        position += cut
    pieces.append(stream[position:])
    for piece in pieces:
        if piece:
            reader.feed(piece)
    got, current = [], b""
    for event in rec.events:
        if event[0] == "body":
            current += event[1]
        elif event[0] == "end":
            got.append(current)
            current = b""
    assert got == bodies


def test_a_body_passed_through_ends_exactly_and_flags_what_follows():
    rec = Recorder()
    reader = ResponseReader(rec)
    reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n1234")  # the head's read: parsed
    reader.feed(b"56")  # passed through
    assert rec.events[-1] == ("body", b"123456") and not reader.ended  # (the recorder joins body events)
    reader.feed(b"7890HTTP/1.1 200 OK\r\n")  # the end, and bytes of a message nobody asked for
    assert rec.events[-2:] == [("body", b"1234567890"), ("end",)]
    assert reader.ended and reader.trailing


class _Heads:
    def __init__(self) -> None:
        self.heads = []

    def request_head(self, head):
        self.heads.append(head)

    def request_body(self, data):
        pass

    def request_end(self):
        pass


@pytest.mark.parametrize(
    ("extra", "rare"),
    [
        (b"User-Agent: curl\r\nAccept: */*\r\nX-Forwarded-For: 1.2.3.4\r\nConnection: keep-alive\r\n", False),
        (b"Save-Data: on\r\n", True),
        (b"downlink: 1.5\r\n", True),
        (b"X-Edge-Quality: high\r\n", True),
    ],
)
def test_a_head_with_a_header_outside_the_common_set_is_marked_rare(extra, rare):
    sink = _Heads()
    RequestReader(sink, 32 * 1024).feed(b"GET / HTTP/1.1\r\nHost: h\r\n" + extra + b"\r\n")
    head = sink.heads[0]
    assert head.rare is rare
    # whatever the path, names stay parallel to the lines
    assert head.names == [line[: line.index(b":")].lower() for line in head.lines]


def test_common_request_headers_are_known_as_such():
    from edge.http.h1 import is_common_request_header

    for name in (b"accept", b"host", b"connection", b"x-forwarded-for", b"content-length", b"cookie"):
        assert is_common_request_header(name)
    for name in (b"x-edge-quality", b"save-data", b"downlink", b"ect", b"rtt"):
        assert not is_common_request_header(name)


class _Views:
    """A ``views`` sink: keeps each body chunk as it came (a memoryview stays one)."""

    def __init__(self) -> None:
        self.heads: list[int] = []
        self.chunks: list = []
        self.ends = 0

    def response_head(self, head):
        self.heads.append(head.status)

    def response_body(self, data):
        self.chunks.append(data)

    def response_end(self):
        self.ends += 1


def _views_reader():
    sink = _Views()
    reader = ResponseReader(sink)
    reader.views = True
    return sink, reader


@pytest.mark.parametrize("split", [None, 1, 30_000, 60_000, 70_000])
def test_a_large_body_in_the_head_s_read_reaches_a_views_sink_uncopied(split):
    """The body part of the read that carries the head goes as a view of that read; what
    follows (later reads, the next response on the connection) parses as before."""
    body = bytes(range(256)) * 256  # 64 KiB
    first = b"HTTP/1.1 200 OK\r\nContent-Type: a/b\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    sink, reader = _views_reader()
    if split is None:
        reader.feed(first)
    else:
        cut = len(first) - len(body) + split if split < len(body) else len(first)
        reader.feed(first[:cut])
        if first[cut:]:
            reader.feed(first[cut:])
    assert b"".join(sink.chunks) == body and sink.ends == 1 and reader.ended and not reader.trailing
    if split is None or split >= _VIEW_FROM:
        assert isinstance(sink.chunks[0], memoryview)  # that much body in the head's read
    else:
        assert all(isinstance(c, bytes) for c in sink.chunks)
    reader.feed(b"HTTP/1.1 204 No Content\r\n\r\n")  # the next response: a fresh parser reads it
    assert sink.heads == [200, 204] and sink.ends == 2


def test_views_keep_framing_rules_interim_heads_trailing_bytes_chunked_and_head():
    body = b"x" * 60_000
    sink, reader = _views_reader()
    reader.feed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    assert sink.heads == [100, 200] and b"".join(sink.chunks) == body and sink.ends == 2
    sink, reader = _views_reader()
    reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body + b"HTTP/1.1 200 OK\r\n")
    assert b"".join(sink.chunks) == body and reader.ended and reader.trailing  # never reused
    sink, reader = _views_reader()
    reader.feed(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
    assert b"".join(sink.chunks) == body and sink.ends == 1 and all(isinstance(c, bytes) for c in sink.chunks)
    sink, reader = _views_reader()
    reader.expect_no_body = True  # HEAD: the bytes after the head are not a body (and spoil the connection)
    reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    assert sink.chunks == [] and sink.ends == 1 and not reader.clean
    for views in (True, False):  # a 304 has no body: what follows must be another response, as ever
        sink, reader = _views_reader()
        reader.views = views
        with pytest.raises(ProtocolError) as info:
            reader.feed(b"HTTP/1.1 304 Not Modified\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        assert info.value.status == 502 and sink.chunks == []


@pytest.mark.parametrize("views", [False, True])
def test_tunnel_bytes_start_right_after_the_101_wherever_it_sits_in_the_read(views):
    """feed() returns an offset into the bytes it was given: behind a 1xx head (views path), and
    behind a Content-Length body that ran past earlier reads (pass-through), as in one parse."""
    tunnel = b"T" * 64 * 1024
    upgrade = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    sink, reader = _views_reader()
    reader.views = views
    data = b"HTTP/1.1 100 Continue\r\n\r\n" + upgrade + tunnel
    at = reader.feed(data)
    assert data[at:] == tunnel and sink.heads == [100, 101]
    sink, reader = _views_reader()
    reader.views = views
    reader.feed(b"HTTP/1.1 200 OK\r\nContent-Length: 70000\r\n\r\n" + b"a" * 1000)
    data = b"a" * 69_000 + upgrade + b"TUNNEL"
    at = reader.feed(data)
    assert data[at:] == b"TUNNEL" and sink.heads == [200, 101]


def test_a_sink_without_views_gets_bytes():
    body = b"y" * 60_000
    sink = _Views()
    ResponseReader(sink).feed(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    assert sink.chunks == [body] and type(sink.chunks[0]) is bytes


def test_connection_keep_alive_and_listed_names_add_up_in_any_order():
    """``Connection: keep-alive`` takes a short path: with a second Connection header, before or
    after it, the names listed are still removed and the tokens are all kept."""
    for first, second in ((b"keep-alive", b"X-Gone"), (b"X-Gone", b"keep-alive")):
        rec = Recorder()
        reader = ResponseReader(rec)
        reader.feed(b"HTTP/1.1 200 OK\r\nConnection: " + first + b"\r\nconnection: " + second +
                    b"\r\nX-Gone: 1\r\nX-Kept: 2\r\nContent-Length: 0\r\n\r\n")
        assert rec.events[0][3] == b"X-Kept: 2\r\n"
        assert sorted(reader._head.connection_tokens) == [b"keep-alive", b"x-gone"]


def test_host_in_either_case_is_the_host():
    events, _ = feed_whole(b"GET / HTTP/1.1\r\nhost: Example.org:8080\r\n\r\n")
    assert events[0][4] == b"Example.org:8080"
