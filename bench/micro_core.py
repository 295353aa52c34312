"""Micro-benchmarks of the per-request hot path: parse, route, header rewrite (pytest-benchmark).

Run: .venv/bin/python -m pytest bench/micro_core.py --benchmark-only -q
Each measures one request's worth of work, no sockets, so a regression shows up here before
it shows up in the wrk numbers.
"""

from __future__ import annotations

from edge.http.forwarding import forwarding_lines
from edge.http.h1 import RequestReader, ResponseReader
from edge.route import Router, normalize_host

REQUEST = (
    b"GET /apps/files/?dir=/Photos HTTP/1.1\r\nHost: cloud.example.com\r\nUser-Agent: Mozilla/5.0 (X11; Linux)\r\n"
    b"Accept: text/html,application/xhtml+xml\r\nAccept-Encoding: gzip, br\r\nAccept-Language: en\r\n"
    b"Cookie: oc_sessionPassphrase=abc; nc_session_id=def\r\nX-Forwarded-For: 6.6.6.6\r\n\r\n"
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Sun, 22 Nov 2026 06:00:00 GMT\r\nContent-Type: text/html\r\n"
    b'Content-Length: 100\r\nConnection: keep-alive\r\nETag: "abc"\r\n\r\n' + b"x" * 100
)


class _Sink:
    __slots__ = ("head",)

    def __init__(self) -> None:
        self.head = None

    def request_head(self, head) -> None:
        self.head = head

    def request_body(self, data) -> None:
        pass

    def request_end(self) -> None:
        pass

    response_head = request_head
    response_body = request_body
    response_end = request_end


def test_parse_request(benchmark):
    sink = _Sink()
    reader = RequestReader(sink)
    benchmark(reader.feed, REQUEST)
    assert sink.head.host == b"cloud.example.com"


def test_parse_response(benchmark):
    sink = _Sink()
    reader = ResponseReader(sink)
    benchmark(reader.feed, RESPONSE)
    assert sink.head.status == 200


def test_route(benchmark):
    router = Router(
        [
            ("cloud.example.com", "/", "cloud"),
            ("cloud.example.com", "/api", "api"),
            ("*.example.com", "/", "wild"),
            (None, "/", "any"),
        ]
    )
    result = benchmark(lambda: router.match(normalize_host(b"Cloud.Example.com:443"), "/apps/files/"))
    assert result == "cloud"


def test_header_rewrite(benchmark):
    sink = _Sink()
    RequestReader(sink).feed(REQUEST)
    head = sink.head

    def rewrite() -> bytes:
        return b"".join(
            (
                head.method,
                b" ",
                head.target,
                b" HTTP/1.1\r\nHost: ",
                head.host,
                b"\r\n",
                *head.lines,
                forwarding_lines(head, "203.0.113.7", False, b"https"),
                b"\r\n",
            )
        )

    out = benchmark(rewrite)
    assert b"X-Forwarded-For: 203.0.113.7\r\n" in out
