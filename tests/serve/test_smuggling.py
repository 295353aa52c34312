"""Desync and smuggling attempts found in review, each replayed against a real edge.

Routing allows only ``/pub``; a recording upstream proves no byte of ``/admin`` ever
reaches it, however the request is wrapped (upgrade, pipelining, trailers, bodies).
"""

from __future__ import annotations

import socket

import pytest

from tests.serve.test_pool import ScriptedUpstream
from tests.support.guard import connect
from tests.support.procs import Edge, RawUpstream, RecordingUpstream, free_port, raw_exchange


@pytest.fixture(scope="module")
def guarded():
    rec = RecordingUpstream()
    port = free_port()
    edge = Edge(
        f"version: 1\nlisteners: {{web: {{listen: ['127.0.0.1:{port}']}}}}\n"
        f"services: {{s: {{upstreams: [{{url: '{rec.url}'}}], retries: 0}}}}\n"
        "routes: [{host: public.example, path_prefix: /pub, service: s}]\n",
        port,
    )
    yield port, rec
    edge.stop()
    rec.close()


UPGRADE = b"GET /pub/ws HTTP/1.1\r\nHost: public.example\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
ADMIN = b"GET /admin/secret HTTP/1.1\r\nHost: internal\r\nX-Forwarded-For: 10.0.1.5\r\n\r\n"


@pytest.mark.parametrize(
    "attack",
    [
        UPGRADE + ADMIN,  # bytes after a refused upgrade
        b"GET /pub/a HTTP/1.1\r\nHost: public.example\r\n\r\n" + UPGRADE + ADMIN,  # pipelined before it
        b"GET /nothing HTTP/1.1\r\nHost: public.example\r\nConnection: upgrade\r\nUpgrade: x\r\n\r\n" + ADMIN
        + b"GET /pub/b HTTP/1.1\r\nHost: public.example\r\n\r\n",  # upgrade answered locally (404)
    ],
)
def test_bytes_after_an_upgrade_head_never_reach_the_upstream_as_requests(guarded, attack):
    port, rec = guarded
    raw_exchange(port, attack, timeout=3)
    assert b"/admin" not in rec.received


def test_an_upgrade_request_keeps_its_body_framing(guarded):
    port, rec = guarded
    body = b"GET /admin/x HTTP/1.1\r\nHost: internal\r\n\r\n"
    request = (b"POST /pub/ws HTTP/1.1\r\nHost: public.example\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
               b"Content-Length: %d\r\n\r\n" % len(body)) + body
    raw_exchange(port, request, timeout=3)
    received = bytes(rec.received)
    head_at = received.rfind(b"POST /pub/ws HTTP/1.1")
    assert head_at >= 0
    head = received[head_at:].split(b"\r\n\r\n", 1)[0]
    assert b"Content-Length: %d" % len(body) in head  # the upstream reads the body as a body


def test_a_trailer_cannot_turn_a_request_into_an_upgrade(guarded):
    port, rec = guarded
    with connect("127.0.0.1", port) as sock:
        sock.settimeout(3)
        sock.sendall(b"POST /pub/t HTTP/1.1\r\nHost: public.example\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n")
        sock.sendall(b"0\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n")
        sock.sendall(ADMIN.replace(b"Host: internal", b"Host: public.example"))
        try:
            while sock.recv(65536):
                pass
        except (TimeoutError, ConnectionResetError):
            pass
    assert b"/admin" not in rec.received
    forwarded = bytes(rec.received)[bytes(rec.received).rfind(b"POST /pub/t") :]
    assert forwarded and b"Upgrade" not in forwarded and forwarded.endswith(b"1\r\nx\r\n0\r\n\r\n")


def test_a_post_is_not_replayed_on_a_fresh_connection():
    upstream = ScriptedUpstream("close")
    port = free_port()
    edge = Edge(
        f"version: 1\nlisteners: {{web: {{listen: ['127.0.0.1:{port}']}}}}\n"
        f"services: {{s: {{upstreams: [{{url: 'http://127.0.0.1:{upstream.port}'}}]}}}}\nroutes: [{{service: s}}]\n",
        port,
    )
    try:
        assert raw_exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").startswith(b"HTTP/1.1 200")
        before = upstream.requests
        raw = raw_exchange(port, b"POST /pay HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\nConnection: close\r\n\r\n"
                                 b"amount=10")
        assert raw.startswith(b"HTTP/1.1 502")
        assert upstream.requests - before == 1  # seen once, on the stale connection, never again
    finally:
        edge.stop()
        upstream.close()


def test_extra_bytes_after_an_upstream_response_never_reach_the_next_client():
    def answer(conn: socket.socket) -> None:
        conn.settimeout(5)
        buf = b""
        while data := conn.recv(65536):
            buf += data
            while b"\r\n\r\n" in buf:
                _, _, buf = buf.partition(b"\r\n\r\n")
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                             b"HTTP/1.1 200 OK\r\nX-Injected: yes\r\nContent-Length: 7\r\n\r\nINJECT!")

    upstream = RawUpstream(answer)
    port = free_port()
    edge = Edge(
        f"version: 1\nlisteners: {{web: {{listen: ['127.0.0.1:{port}']}}}}\n"
        f"services: {{s: {{upstreams: [{{url: '{upstream.url}'}}], max_connections: 1}}}}\n"
        "routes: [{service: s}]\n",
        port,
    )
    try:
        for _ in range(4):
            raw = raw_exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert raw.startswith(b"HTTP/1.1 200") and raw.endswith(b"ok") and b"INJECT" not in raw
    finally:
        edge.stop()
        upstream.close()


def test_a_pipelining_flood_is_bounded(guarded):
    port, _ = guarded
    flood = b"GET /pub/f HTTP/1.1\r\nHost: public.example\r\n\r\n" * 5000
    with connect("127.0.0.1", port) as sock:
        sock.settimeout(5)
        try:
            sock.sendall(flood)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    answered = data.count(b"HTTP/1.1 200")
    assert answered < 5000  # cut off, not queued without end
    assert b"HTTP/1.1 503" in data  # with a reason, after the requests before the cut were answered
