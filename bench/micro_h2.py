"""Micro benchmark of edge's HTTP/2 per-request work without sockets: what the bench's h2 test pays.

Run: .venv/bin/python -m bench.micro_h2            (prints µs per request, best of several rounds)
     .venv/bin/python -m bench.micro_h2 --profile  (cProfile of one round, top functions)
     .venv/bin/python -m pytest bench/micro_h2.py --benchmark-only -q

One round is one connection of ``h2load -m10``: batches of 10 GET requests (the header set
h2load sends, HPACK-encoded by a real client encoder, so its dynamic table is used as in the
bench) go into the server-side state machine made exactly as ``H2Connection`` makes it; each
request is checked and translated (``request_head``), answered with the response head of the
bench origin's ``/small`` and 100 bytes of DATA with END_STREAM as H2Stream sends them
(``edge.serve.h2send``: the one-pass ``response_block``, frames queued into h2's buffer), and the
bytes to send are taken once per batch. Event loop, TLS, upstream and access log are left out.
"""

from __future__ import annotations

import sys
import time

from h2.config import H2Configuration
from h2.connection import H2Connection as H2Client
from h2.events import RequestReceived

from edge.http.h1 import ResponseReader
from edge.serve.h2conn import state_machine
from edge.serve.h2head import checked_request_head
from edge.serve.h2send import queue_data, queue_headers

BATCHES = 100
STREAMS = 10  # h2load -m10
REQUEST = [
    (b":method", b"GET"),
    (b":path", b"/small"),
    (b":scheme", b"https"),
    (b":authority", b"127.0.0.1:40713"),
    (b"accept", b"*/*"),
    (b"accept-encoding", b"gzip, deflate"),
    (b"user-agent", b"h2load nghttp2/1.52.0"),
]
ORIGIN_RESPONSE = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 22 Nov 2026 06:00:00 GMT\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Length: 100\r\n"
    b'Last-Modified: Sun, 22 Nov 2026 05:00:00 GMT\r\nConnection: keep-alive\r\nETag: "6740c2a0-64"\r\n'
    b"Accept-Ranges: bytes\r\n\r\n" + b"x" * 100
)
BODY = b"x" * 100


class _Sink:
    def __init__(self) -> None:
        self.head = None

    def response_head(self, head) -> None:
        self.head = head

    def response_body(self, data) -> None:
        pass

    def response_end(self) -> None:
        pass


def _response_head():
    sink = _Sink()
    ResponseReader(sink).feed(ORIGIN_RESPONSE)
    return sink.head


def client_bytes() -> tuple[bytes, list[bytes]]:
    """The client's preface and SETTINGS, then one chunk of HEADERS frames per batch."""
    client = H2Client(H2Configuration(client_side=True, header_encoding=None))
    # h2load's windows (-w30 -W30): the server never waits for a WINDOW_UPDATE
    client.local_settings.initial_window_size = 2**30 - 1
    client.initiate_connection()
    client.increment_flow_control_window(2**30 - 1 - 65535)
    preface = client.data_to_send()
    batches = []
    sid = 1
    for _ in range(BATCHES):
        for _ in range(STREAMS):
            client.send_headers(sid, REQUEST, end_stream=True)
            sid += 2
        batches.append(client.data_to_send())
    return preface, batches


def one_connection(preface: bytes, batches: list[bytes], rh) -> int:
    """Serve every batch on a fresh state machine; returns the bytes it would have written."""
    h2c = state_machine(8192)
    h2c.receive_data(preface)
    written = len(h2c.data_to_send())
    for batch in batches:
        for event in h2c.receive_data(batch):
            if event.__class__ is RequestReceived:
                sid = event.stream_id
                checked_request_head(event.headers, True, 8192)
                queue_headers(h2c, sid, False, h2c.encoder.response_block, rh, [])
                queue_data(h2c, sid, BODY, True)
        written += len(h2c.data_to_send())
    return written


def test_h2_connection(benchmark) -> None:
    preface, batches = client_bytes()
    rh = _response_head()
    assert benchmark(one_connection, preface, batches, rh) > BATCHES * STREAMS * len(BODY)


def main(argv: list[str]) -> int:
    preface, batches = client_bytes()
    rh = _response_head()
    if "--profile" in argv:
        import cProfile
        import pstats

        profile = cProfile.Profile()
        profile.runcall(one_connection, preface, batches, rh)
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
        return 0
    requests = BATCHES * STREAMS
    best = float("inf")
    for _ in range(15):
        start = time.perf_counter()
        written = one_connection(preface, batches, rh)
        best = min(best, time.perf_counter() - start)
    print(f"{best / requests * 1e6:.1f} µs per request ({requests} requests, {written / requests:.0f} bytes out each)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
