"""Known response heads (``edge.http.h1._KNOWN_HEADS``): a head parsed once skips the parser
the next time, and nothing a sink or a client sees may differ from the parser's answer."""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from edge.http import h1
from edge.http.h1 import ProtocolError, RequestReader, ResponseReader


class Sink:
    """Records what a client would get, then changes the head as features do (tier line, gzip)."""

    def __init__(self, gzip: bool = False) -> None:
        self.events: list[tuple] = []
        self.gzip = gzip

    def response_head(self, head) -> None:
        self.events.append(("head", head.status, head.reason, tuple(head.lines), head.content_length,
                            head.chunked, head.keep_alive, head.upgrade))
        head.lines.append(b"X-Edge-Tier: low\r\n")
        if self.gzip:
            head.content_length = None
            head.chunked = True

    def response_body(self, data) -> None:
        data = bytes(data)
        if self.events and self.events[-1][0] == "body":
            self.events[-1] = ("body", self.events[-1][1] + data)
        else:
            self.events.append(("body", data))

    def response_end(self) -> None:
        self.events.append(("end",))


def run(pieces: list[bytes], views: bool = False, head_request: bool = False, gzip: bool = False,
        max_header_size: int = 64 * 1024, known: bool = True):
    """Feed ``pieces`` to a new reader (``known``: as edge runs it; else the parser alone):
    its events, each feed's offset and flags, or the error."""
    sink = Sink(gzip)
    reader = ResponseReader(sink, max_header_size)
    if not known:
        reader._known_limit = 0  # no head is ever found within 0 bytes: none is learned or looked up
    reader.views = views
    reader.expect_no_body = head_request
    trace: list = []
    try:
        for piece in pieces:
            trace.append((reader.feed(piece), reader.ended, reader.trailing, reader.clean))
    except ProtocolError as exc:
        trace.append(("error", exc.status))
    return sink.events, trace


def cut_up(stream: bytes, cuts: list[int]) -> list[bytes]:
    """``stream`` as reads of the sizes ``cuts``, then the rest."""
    pieces, position = [], 0
    for cut in cuts:
        pieces.append(stream[position : position + cut])
        position += cut
    pieces.append(stream[position:])
    return [p for p in pieces if p]


_HEADS = [
    b"HTTP/1.1 200 OK\r\nServer: o\r\nContent-Length: %d\r\n\r\n",
    b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: keep-alive\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: %d\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nConnection: X-Gone\r\nX-Gone: 1\r\nX-Kept: 2\r\nContent-Length: %d\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\nContent-Length: %d\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: %d\r\n\r\n",
    b"HTTP/1.1 103 Early Hints\r\nLink: </a>; rel=preload\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Length: 7\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: %d\nX: bare-lf\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
]


def _message(kind: int, body: bytes) -> bytes:
    head = _HEADS[kind]
    if b"chunked" in head:
        return head + (b"%x\r\n%s\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
    if b"%d" not in head:
        return head
    return head % len(body) + body


@settings(max_examples=600, deadline=None)
@given(
    messages=st.lists(st.tuples(st.integers(0, len(_HEADS) - 1),
                                st.sampled_from([b"", b"ok", b"HTTP/1.1 200 OK\r\nServer: o\r\n\r\n", b"z" * 300])),
                      min_size=1, max_size=4),
    cuts=st.lists(st.integers(min_value=1, max_value=200), max_size=6),
    one_read_each=st.booleans(),
    views=st.booleans(),
    head_request=st.booleans(),
    gzip=st.booleans(),
)
@example(messages=[(0, b""), (2, b""), (0, b"")], cuts=[], one_read_each=True, views=False, head_request=False,
         gzip=False)  # a known head after a last response (found by review)
def test_a_known_head_gives_what_the_parser_gave(messages, cuts, one_read_each, views, head_request, gzip):
    """Any stream of responses, cut anywhere or one read each: a reader that learns heads and
    finds them known (the first run learns as it goes, the second starts warm) gives the same
    events, offsets and flags as the parser alone."""
    wire = [_message(kind, body) for kind, body in messages]
    pieces = wire if one_read_each else cut_up(b"".join(wire), cuts)
    h1._KNOWN_HEADS.clear()
    alone = run(pieces, views, head_request, gzip, known=False)
    assert run(pieces, views, head_request, gzip) == alone
    assert run(pieces, views, head_request, gzip) == alone


def test_a_head_seen_before_skips_the_parser(monkeypatch):
    h1._KNOWN_HEADS.clear()
    response = b"HTTP/1.1 200 OK\r\nServer: o\r\nContent-Length: 2\r\n\r\nok"
    cold = run([response])
    assert list(h1._KNOWN_HEADS) == [response[:-6]]

    def no_parser(self, data):
        raise AssertionError("parsed a known head")

    monkeypatch.setattr(ResponseReader, "_parse", no_parser)
    assert run([response]) == cold
    events, trace = run([response[:-1], response[-1:]])  # its body ends in the next read
    assert events == cold[0] and trace == [(-1, False, False, True), (-1, True, False, True)]
    assert h1._KNOWN_HEADS[response[:-6]][0].lines == [b"Server: o\r\n"]  # the sink's lines stayed its own


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 204 No Content\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\nclose-delimited",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    ],
)
def test_heads_whose_body_is_not_exactly_their_content_length_are_never_known(response):
    h1._KNOWN_HEADS.clear()
    run([response])
    assert not h1._KNOWN_HEADS


def test_the_answer_to_a_head_request_is_never_learned_nor_looked_up():
    h1._KNOWN_HEADS.clear()
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n"
    run([response], head_request=True)
    assert not h1._KNOWN_HEADS
    run([response + b"ok"])  # learned from a GET
    assert run([response], head_request=True)[0] == [("head", 200, b"OK", (), 2, False, True, None), ("end",)]


def test_a_head_known_to_a_reader_with_a_larger_limit_is_refused_by_a_smaller_one():
    h1._KNOWN_HEADS.clear()
    response = b"HTTP/1.1 200 OK\r\nX-Big: " + b"b" * 2000 + b"\r\nContent-Length: 2\r\n\r\nok"
    run([response], max_header_size=64 * 1024)
    assert h1._KNOWN_HEADS
    assert run([response], max_header_size=1024)[1] == [("error", 502)]


def test_a_limit_counts_as_the_parser_counts_whichever_reader_learned_the_head():
    """The parser counts a field as name + value + 4 bytes, one more than ``Name:value`` takes
    on the wire: a head that fits a limit on the wire may not fit it as the parser counts."""
    h1._KNOWN_HEADS.clear()
    response = b"HTTP/1.1 200 OK\r\n" + b"".join(b"X%d:v\r\n" % n for n in range(31)) + b"Content-Length: 2\r\n\r\nok"
    limit = len(response) - 2
    assert run([response], max_header_size=limit, known=False)[1] == [("error", 502)]
    run([response])  # learned by a reader with the default limit
    assert h1._KNOWN_HEADS
    assert run([response], max_header_size=limit)[1] == [("error", 502)]


def test_bytes_of_a_known_head_inside_a_body_are_body():
    """Only a reader waiting for a message looks heads up: mid-body, a known head is data."""
    h1._KNOWN_HEADS.clear()
    known = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    run([known])
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n" % len(known)
    events, _ = run([chunked, known, b"\r\n0\r\n\r\n"])
    assert events[1:] == [("body", known), ("end",)]
    delimited = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (len(known) + 5)
    events, _ = run([delimited + b"12345", known])
    assert events[1:] == [("body", b"12345" + known), ("end",)]


def test_the_table_of_known_heads_is_bounded():
    h1._KNOWN_HEADS.clear()
    for n in range(h1._KNOWN_HEADS_MAX * 2 + 5):
        run([b"HTTP/1.1 200 OK\r\nETag: \"%d\"\r\nContent-Length: 0\r\n\r\n" % n])
    assert 0 < len(h1._KNOWN_HEADS) <= h1._KNOWN_HEADS_MAX


def test_a_large_head_is_parsed_each_time_never_kept():
    h1._KNOWN_HEADS.clear()
    run([b"HTTP/1.1 200 OK\r\nX-Big: " + b"b" * h1._KNOWN_HEAD_SIZE + b"\r\nContent-Length: 2\r\n\r\nok"])
    assert not h1._KNOWN_HEADS


# -- requests: a keep-alive client's repeated head -----------------------------------------
class RequestSink:
    """Records the heads as the proxy would use them, then changes the head as the proxy does."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def request_head(self, head) -> None:
        self.events.append(("head", head.method, head.target, head.version, head.host, tuple(head.lines), head.rare,
                            head.content_length, head.chunked, head.keep_alive, head.upgrade, head.expect_continue,
                            head.connection_tokens, head.x_forwarded_for, head.x_forwarded_proto,
                            head.x_forwarded_host, head.forwarded))
        head.lines.append(b"X-Added: 1\r\n")
        head.names.append(b"x-added")

    def request_body(self, data) -> None:
        self.events.append(("body", bytes(data)))

    def request_end(self) -> None:
        self.events.append(("end",))


def feed_requests(pieces: list[bytes], known: bool):
    """Feed to a reader (``known``: as edge runs it; else the parser alone): events, offsets."""
    sink = RequestSink()
    reader = RequestReader(sink, 32 * 1024)
    if not known:
        reader._known_limit = 0  # no head is ever found within 0 bytes: none becomes known
    trace: list = []
    try:
        for piece in pieces:
            trace.append(reader.feed(piece))
    except ProtocolError as exc:
        trace.append(("error", exc.status))
    return sink.events, trace


_REQUESTS = [
    b"GET /a HTTP/1.1\r\nHost: h\r\nUser-Agent: u\r\nCookie: c=1\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 1.2.3.4\r\nSave-Data: on\r\n\r\n",
    b"GET /b HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    b"GET /b HTTP/1.0\r\nHost: h\r\n\r\n",
    b"GET /b HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"POST /p HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
    b"GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: h\r\nHost: h\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: h\r\nX: bare\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: h\r\nConnection: X-Gone\r\nX-Gone: 1\r\nAccept: */*\r\n\r\n",
]
_POST_OF_A_HEAD = b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % len(_REQUESTS[0])
_REQUESTS.append(_POST_OF_A_HEAD + _REQUESTS[0])  # a body that is a known head's bytes
_REQUESTS += [b"\r\n" + _REQUESTS[0], b"\n\r\n\r\n", b"\r\n"]  # CR and LF llhttp skips before a message


@settings(max_examples=500, deadline=None)
@given(
    requests=st.lists(st.integers(0, len(_REQUESTS) - 1), min_size=1, max_size=6),
    cuts=st.lists(st.integers(min_value=1, max_value=150), max_size=8),
    one_read_each=st.booleans(),
)
@example(requests=[0, 2, 0], cuts=[], one_read_each=True)  # a known head after a last request
@example(requests=[0, 14], cuts=[len(_REQUESTS[0]) + len(_POST_OF_A_HEAD)], one_read_each=False)  # ... in a body
@example(requests=[16, 0, 16], cuts=[], one_read_each=True)  # skipped CRLFCRLF before a head (found by review)
@example(requests=[16, 0, 16], cuts=[len(_REQUESTS[16]) + 10], one_read_each=False)  # ... the head in two reads
@example(requests=[16, 0, 16], cuts=[len(_REQUESTS[16]) + len(_REQUESTS[0])], one_read_each=False)  # ... in one
def test_a_repeated_request_head_gives_what_the_parser_gave(requests, cuts, one_read_each):
    """Any sequence of requests (repeats, bodies, upgrades, closes, bad heads), cut anywhere or
    one read each: the reader that knows its client's last head sees what the parser alone sees."""
    if one_read_each:
        pieces = [_REQUESTS[i] for i in requests]
    else:
        pieces = cut_up(b"".join(_REQUESTS[i] for i in requests), cuts)
    assert feed_requests(pieces, known=True) == feed_requests(pieces, known=False)


def test_a_repeated_request_head_skips_the_parser(monkeypatch):
    head = _REQUESTS[0]
    sink = RequestSink()
    reader = RequestReader(sink, 32 * 1024)
    reader.feed(head)
    monkeypatch.setattr(RequestReader, "_feed", lambda self, data: pytest.fail("parsed a known head"))
    assert reader.feed(head * 3) == -1  # pipelined repeats too
    assert len(sink.events) == 8 and sink.events[0] == sink.events[2] == sink.events[6]
    assert reader._known_head.lines == [b"User-Agent: u\r\n", b"Cookie: c=1\r\n"]  # the sink's lines stayed its own


@pytest.mark.parametrize("index", [2, 3, 5, 7, 8, 9])
def test_requests_with_a_body_an_upgrade_or_a_close_are_never_known(index):
    reader = RequestReader(RequestSink(), 32 * 1024)
    reader.feed(_REQUESTS[index])
    assert reader._known is None
