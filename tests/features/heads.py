"""Test helpers: real request/response heads from bytes (through edge's own codec), a fake clock."""

from __future__ import annotations

from edge.http.h1 import RequestHead, RequestReader, ResponseHead, ResponseReader


class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


class _Sink:
    def __init__(self) -> None:
        self.head = None

    def request_head(self, head) -> None:
        self.head = head

    response_head = request_head

    def request_body(self, data) -> None:
        pass

    response_body = request_body

    def request_end(self) -> None:
        pass

    response_end = request_end


def request(target: str = "/", *headers: str, method: str = "GET", host: str = "cloud.example.com") -> RequestHead:
    raw = f"{method} {target} HTTP/1.1\r\nHost: {host}\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n"
    sink = _Sink()
    RequestReader(sink).feed(raw.encode("latin-1"))
    assert sink.head is not None
    return sink.head


def response(status: int = 200, *headers: str, body: bytes = b"") -> ResponseHead:
    raw = f"HTTP/1.1 {status} X\r\n" + "".join(h + "\r\n" for h in headers)
    if not any(h.lower().startswith(("content-length", "transfer-encoding")) for h in headers):
        raw += f"Content-Length: {len(body)}\r\n"
    sink = _Sink()
    ResponseReader(sink).feed(raw.encode("latin-1") + b"\r\n" + body)
    assert sink.head is not None
    return sink.head


def header_value(lines: list[bytes], name: str) -> list[str]:
    """Every value of header ``name`` among pre-encoded lines."""
    prefix = name.lower().encode() + b":"
    return [line[len(prefix) :].strip().decode() for line in lines if line.lower().startswith(prefix)]
