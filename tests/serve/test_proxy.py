"""edge serve end to end: real edge process, real upstreams, real clients (curl, wrk, websockets, raw sockets)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import time

import pytest
import websockets

from tests.support.guard import connect
from tests.support.procs import (
    DemoUpstream,
    Edge,
    RawUpstream,
    RecordingUpstream,
    free_port,
    raw_exchange,
    wait_until,
)

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")


@pytest.fixture(scope="module")
def stack():
    up_a, up_b = DemoUpstream("a"), DemoUpstream("b")
    rec = RecordingUpstream()
    port, admin = free_port(), free_port()
    dead = free_port()  # nothing listens here
    policy = f"""
version: 1
admin: {{listen: "127.0.0.1:{admin}"}}
limits: {{max_body_size: 64MiB}}
listeners:
  web: {{listen: ["127.0.0.1:{port}"]}}
services:
  app:
    upstreams: [{{url: "{up_a.url}"}}, {{url: "{up_b.url}"}}]
  rec:
    upstreams: [{{url: "{rec.url}"}}]
  dead:
    upstreams: [{{url: "http://127.0.0.1:{dead}"}}]
    retries: 0
  slow:
    upstreams: [{{url: "{up_a.url}"}}]
    timeouts: {{response_header: 500ms}}
routes:
  - {{name: app, host: 127.0.0.1, service: app, headers: {{add_response: {{X-Served-By: edge}}}}}}
  - {{name: wild, host: "*.test", service: app}}
  - {{name: rec, host: rec.test, service: rec}}
  - {{name: dead, host: dead.test, service: dead}}
  - {{name: slow, host: slow.test, service: slow}}
  - {{name: only, host: localhost, path_prefix: /headers, service: app}}
"""
    edge = Edge(policy, port, admin)
    yield {"edge": edge, "port": port, "admin": admin, "rec": rec, "a": up_a, "b": up_b}
    edge.stop()
    rec.close()
    up_a.stop()
    up_b.stop()


def curl(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--max-time", "20", *args], capture_output=True, check=check)


def get_json(port: int, path: str, *headers: str) -> dict:
    extra = [a for h in headers for a in ("-H", h)]
    return json.loads(curl(*extra, f"http://127.0.0.1:{port}{path}").stdout)


def upstream_headers(port: int, *headers: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for name, value in get_json(port, "/headers", *headers)["headers"]:
        found.setdefault(name.lower(), []).append(value)
    return found


def split_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def test_get_through_curl(stack):
    result = curl("-i", f"http://127.0.0.1:{stack['port']}/")
    status, headers, body = split_response(result.stdout)
    assert status == 200
    assert headers["x-served-by"] == "edge"
    assert b"Hello from the" in body


def test_round_robin_over_both_upstreams(stack):
    seen = [get_json(stack["port"], "/headers")["upstream"] for _ in range(6)]
    assert set(seen) == {"a", "b"}
    assert all(seen[i] != seen[i + 1] for i in range(5))


def test_forwarding_headers_replace_untrusted_values_and_keep_host(stack):
    headers = upstream_headers(
        stack["port"], "X-Forwarded-For: 6.6.6.6", "X-Forwarded-Host: evil", "Forwarded: for=6.6.6.6",
        "X-Forwarded-Proto: https",
    )
    assert headers["x-forwarded-for"] == ["127.0.0.1"]
    assert headers["x-forwarded-proto"] == ["http"]
    assert headers["x-forwarded-host"] == [f"127.0.0.1:{stack['port']}"]
    assert headers["forwarded"] == [f'for=127.0.0.1;host="127.0.0.1:{stack["port"]}";proto=http']
    assert headers["host"] == [f"127.0.0.1:{stack['port']}"]


def test_hop_by_hop_headers_are_removed(stack):
    headers = upstream_headers(
        stack["port"], "Connection: keep-alive, X-Secret", "X-Secret: 1", "Keep-Alive: timeout=5", "TE: trailers",
        "Proxy-Authorization: Basic eDp5", "Trailer: X-T", "X-Kept: yes",
    )
    for name in ("x-secret", "keep-alive", "te", "proxy-authorization", "trailer"):
        assert name not in headers
    assert headers["x-kept"] == ["yes"]


def test_no_route_is_404(stack):
    result = curl("-i", "-H", "Host: nothing.example", f"http://127.0.0.1:{stack['port']}/")
    status, _, body = split_response(result.stdout)
    assert status == 404 and body.startswith(b"404 Not Found")
    result = curl("-i", "-H", "Host: localhost", f"http://127.0.0.1:{stack['port']}/elsewhere")
    assert split_response(result.stdout)[0] == 404
    result = curl("-i", "-H", "Host: LOCALHOST:1234", f"http://127.0.0.1:{stack['port']}/headers")
    assert split_response(result.stdout)[0] == 200


def test_pipelined_requests_are_answered_in_order(stack):
    requests = b"".join(
        b"GET /status/%d HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" % code for code in (201, 202, 203, 206, 200)
    )
    requests += b"GET /status/200 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    raw = raw_exchange(stack["port"], requests)
    codes = [int(m) for m in re.findall(rb"HTTP/1\.1 (\d{3}) ", raw)]
    assert codes == [201, 202, 203, 206, 200, 200]


def test_keep_alive_serves_many_requests_on_one_connection(stack):
    with connect("127.0.0.1", stack["port"]) as sock:
        for _ in range(5):
            sock.sendall(b"GET /status/200 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            data = b""
            while not data.endswith(b"status 200\n"):
                data += sock.recv(65536)
            assert data.startswith(b"HTTP/1.1 200")


def test_http10_closes_and_keep_alive_is_honoured(stack):
    raw = raw_exchange(stack["port"], b"GET /status/200 HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
    status, headers, body = split_response(raw)
    assert status == 200 and headers["connection"] == "close" and body == b"status 200\n"
    with connect("127.0.0.1", stack["port"]) as sock:
        sock.sendall(b"GET /status/200 HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n")
        data = b""
        while not data.endswith(b"status 200\n"):
            data += sock.recv(65536)
        assert b"Connection: keep-alive" in data


def test_head_204_304_have_no_body_and_the_connection_stays_usable(stack):
    with connect("127.0.0.1", stack["port"]) as sock:
        sock.sendall(b"HEAD /bytes/1000 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                     b"GET /status/204 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                     b"GET /status/304 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                     b"GET /bytes/3 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    parts = data.split(b"HTTP/1.1 ")[1:]
    assert [p[:3] for p in parts] == [b"200", b"204", b"304", b"200"], data
    assert b"Content-Length: 1000" in parts[0] and parts[0].endswith(b"\r\n\r\n")
    assert parts[1].endswith(b"\r\n\r\n") and parts[2].endswith(b"\r\n\r\n")
    assert parts[3].endswith(b"\r\n\r\n\x00\x01\x02")


def test_expect_100_continue(stack):
    with connect("127.0.0.1", stack["port"]) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        interim = sock.recv(100)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"hello")
        data = b""
        while b"sha256" not in data:
            data += sock.recv(65536)
    body = json.loads(data.partition(b"\r\n\r\n")[2])
    assert body["sha256"] == hashlib.sha256(b"hello").hexdigest()


def test_chunked_upload_and_download(stack, tmp_path):
    payload = os.urandom(300_000)
    source = tmp_path / "in.bin"
    source.write_bytes(payload)
    result = curl("-H", "Transfer-Encoding: chunked", "--data-binary", f"@{source}",
                  f"http://127.0.0.1:{stack['port']}/echo")
    assert json.loads(result.stdout)["sha256"] == hashlib.sha256(payload).hexdigest()
    result = curl("-i", f"http://127.0.0.1:{stack['port']}/bytes/100000?chunked=1")
    _, headers, body = split_response(result.stdout)
    assert headers.get("transfer-encoding") == "chunked"
    assert body == (bytes(range(256)) * 256 * 2)[:100000]


def test_20mib_bodies_both_ways_by_sha256(stack, tmp_path):
    payload = os.urandom(20 * 1024 * 1024)
    source = tmp_path / "big.bin"
    source.write_bytes(payload)
    result = curl("--data-binary", f"@{source}", "-H", "Content-Type: application/octet-stream",
                  f"http://127.0.0.1:{stack['port']}/echo")
    assert json.loads(result.stdout) == {
        "upstream": json.loads(result.stdout)["upstream"], "size": len(payload),
        "sha256": hashlib.sha256(payload).hexdigest(),
    }
    size = 20 * 1024 * 1024
    result = curl(f"http://127.0.0.1:{stack['port']}/bytes/{size}")
    expected = hashlib.sha256((bytes(range(256)) * 256 * (size // 65536 + 1))[:size]).hexdigest()
    assert hashlib.sha256(result.stdout).hexdigest() == expected


def test_websocket_through_the_proxy(stack):
    async def talk() -> list:
        async with websockets.connect(f"ws://127.0.0.1:{stack['port']}/ws", open_timeout=5, max_size=None) as ws:
            await ws.send("hello")
            first = await asyncio.wait_for(ws.recv(), 5)
            await ws.send(b"\x00\x01binary")
            second = await asyncio.wait_for(ws.recv(), 5)
            big = os.urandom(1 << 20)
            await ws.send(big)
            third = await asyncio.wait_for(ws.recv(), 10)
            return [first, second, third == big]

    assert asyncio.run(talk()) == ["hello", b"\x00\x01binary", True]


BAD_REQUESTS = {
    "cl-and-te": b"POST / HTTP/1.1\r\nHost: rec.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"0\r\n\r\n",
    "te-and-cl": b"POST / HTTP/1.1\r\nHost: rec.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n"
                 b"0\r\n\r\n",
    "differing-cl": b"POST / HTTP/1.1\r\nHost: rec.test\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
    "cl-list": b"POST / HTTP/1.1\r\nHost: rec.test\r\nContent-Length: 3, 3\r\n\r\nabc",
    "te-identity": b"POST / HTTP/1.1\r\nHost: rec.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "te-space-before-colon": b"POST / HTTP/1.1\r\nHost: rec.test\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "te-xchunked": b"POST / HTTP/1.1\r\nHost: rec.test\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "te-vtab": b"POST / HTTP/1.1\r\nHost: rec.test\r\nTransfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n",
    "te-twice": b"POST / HTTP/1.1\r\nHost: rec.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"0\r\n\r\n",
    "te-http10": b"POST / HTTP/1.0\r\nHost: rec.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "bare-lf": b"GET / HTTP/1.1\nHost: rec.test\n\n",
    "bare-lf-header": b"GET / HTTP/1.1\r\nHost: rec.test\nX: y\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: rec.test\r\nX-A: b\r\n c\r\n\r\n",
    "bad-chunk-size": b"POST / HTTP/1.1\r\nHost: rec.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "chunk-size-overflow": b"POST / HTTP/1.1\r\nHost: rec.test\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"fffffffffffffffffff\r\n",
    "missing-host": b"GET / HTTP/1.1\r\nX: y\r\n\r\n",
    "duplicate-host": b"GET / HTTP/1.1\r\nHost: rec.test\r\nHost: rec.test\r\n\r\n",
    "absolute-form": b"GET http://rec.test/ HTTP/1.1\r\nHost: rec.test\r\n\r\n",
    "nul-in-header": b"GET / HTTP/1.1\r\nHost: rec.test\r\nX: a\x00b\r\n\r\n",
    "http2-version": b"GET / HTTP/2.0\r\nHost: rec.test\r\n\r\n",
}


def test_bad_requests_get_4xx_close_and_never_reach_the_upstream(stack):
    rec = stack["rec"]
    before = (bytes(rec.received), rec.connections)
    for name, data in BAD_REQUESTS.items():
        raw = raw_exchange(stack["port"], data)
        status, headers, body = split_response(raw)
        assert status in (400, 405, 501, 505), (name, raw[:80])
        assert headers.get("connection") == "close", name
        assert headers.get("content-type", "").startswith("text/plain"), name
        assert body.startswith(str(status).encode()), name
    # a smuggling attempt after a good request on the same connection is cut off too
    raw = raw_exchange(stack["port"], b"GET /ok HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" + BAD_REQUESTS["cl-and-te"])
    assert raw.count(b"HTTP/1.1 ") == 2 and b"HTTP/1.1 400" in raw
    assert (bytes(rec.received), rec.connections) == before
    # the control: a good request does reach the recording upstream
    raw = raw_exchange(stack["port"], b"GET /good HTTP/1.1\r\nHost: rec.test\r\nConnection: close\r\n\r\n")
    assert split_response(raw)[0] == 200
    wait_until(lambda: b"GET /good HTTP/1.1" in rec.received, what="recording upstream")


def test_upstream_refused_is_502(stack):
    result = curl("-i", "-H", "Host: dead.test", f"http://127.0.0.1:{stack['port']}/")
    status, _, body = split_response(result.stdout)
    assert status == 502 and body.startswith(b"502 Bad Gateway")


def test_upstream_too_slow_is_504(stack):
    result = curl("-i", "-H", "Host: slow.test", f"http://127.0.0.1:{stack['port']}/slow/3")
    status, _, body = split_response(result.stdout)
    assert status == 504 and body.startswith(b"504 Gateway Timeout")


def test_upstream_reset_is_502():
    def reset(conn: socket.socket) -> None:
        conn.recv(1024)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # close = RST

    upstream = RawUpstream(reset)
    port = free_port()
    edge = Edge(
        f"version: 1\nlisteners: {{web: {{listen: ['127.0.0.1:{port}']}}}}\n"
        f"services: {{r: {{upstreams: [{{url: '{upstream.url}'}}], retries: 0}}}}\n"
        "routes: [{service: r}]\n",
        port,
    )
    try:
        result = curl("-i", f"http://127.0.0.1:{port}/")
        assert split_response(result.stdout)[0] == 502
    finally:
        edge.stop()
        upstream.close()


def test_metrics_and_access_log(stack):
    curl(f"http://127.0.0.1:{stack['port']}/status/200")
    text = curl(f"http://127.0.0.1:{stack['admin']}/metrics").stdout.decode()
    assert re.search(r'edge_requests_total\{route="app",service="app",code="200"\} \d+', text)
    assert re.search(r'edge_request_duration_seconds_bucket\{route="app",le="\+Inf"\} \d+', text)
    assert f'edge_upstream_up{{service="app",upstream="127.0.0.1:{stack["a"].port}"}} 1' in text
    assert "edge_connections_active " in text
    assert 'edge_policy_reloads_total{result="ok"}' in text
    status = json.loads(curl(f"http://127.0.0.1:{stack['admin']}/status").stdout)
    assert status["services"]["app"]["balancer"] == "round_robin"
    edge = stack["edge"]
    wait_until(lambda: any(r["path"] == "/status/200" for r in edge.access_log()), what="access log line")
    record = next(r for r in edge.access_log() if r["path"] == "/status/200")
    assert set(record) >= {"time", "client", "host", "method", "path", "status", "bytes", "duration", "upstream",
                           "route"}
    assert record["client"] == "127.0.0.1" and record["route"] == "app" and record["status"] == 200


@pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk")
def test_short_wrk_run_has_no_errors(stack):
    result = subprocess.run(
        ["wrk", "-t1", "-c20", "-d2s", f"http://127.0.0.1:{stack['port']}/status/200"],
        capture_output=True, text=True, timeout=30,
    )
    out = result.stdout
    assert "Requests/sec" in out, out
    assert "Non-2xx" not in out and "Socket errors" not in out, out
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    assert requests > 100


def test_many_connections_then_metrics_settle(stack):
    socks = [connect("127.0.0.1", stack["port"]) for _ in range(20)]
    for sock in socks:
        sock.close()
    time.sleep(0)  # the proxy sees the closes asynchronously; the gauge is checked with a deadline

    def settled() -> bool:
        text = curl(f"http://127.0.0.1:{stack['admin']}/metrics").stdout.decode()
        match = re.search(r"^edge_connections_active (\d+)$", text, re.M)
        return match is not None and int(match.group(1)) <= 1

    wait_until(settled, what="connections gauge back to idle")
