"""HTTP/2 end to end: a real ``edge serve`` with a TLS listener, real upstreams, curl, h2load and a raw h2 client."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess

import pytest
from h2.errors import ErrorCodes

from tests.h2.client import H2Client
from tests.h2.conftest import Stack
from tests.support.procs import DemoUpstream, Edge, free_port, wait_until

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")

BIG = 20 * 1024 * 1024  # well beyond every window and buffer on the way


def curl(
    stack: Stack, path: str, *args: str, http: str = "--http2", timeout: float = 20
) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["curl", "-sS", http, "--cacert", str(stack.pki.root), *args, stack.base + path],
        capture_output=True,
        timeout=timeout,
        check=False,
    )


def test_curl_http2_get_forwards_like_http1(stack: Stack) -> None:
    out = curl(stack, "/headers", "-D", "-", "-o", "/dev/null")
    assert out.returncode == 0, out.stderr
    head = out.stdout.decode()
    assert head.startswith("HTTP/2 200"), head
    assert "x-served-by: edge" in head
    body = json.loads(curl(stack, "/headers").stdout)
    seen = {k.lower(): v for k, v in body["headers"]}
    assert seen["host"] == f"localhost:{stack.port}"
    assert seen["x-forwarded-proto"] == "https"
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert "proto=https" in seen["forwarded"]
    # the same TLS listener still speaks HTTP/1.1 to clients that ask for it
    h1 = curl(stack, "/headers", "-D", "-", "-o", "/dev/null", http="--http1.1")
    assert h1.stdout.decode().startswith("HTTP/1.1 200"), h1.stdout


def test_bodies_both_ways_by_sha256(stack: Stack, tmp_path) -> None:
    data = os.urandom(6 * 1024 * 1024 + 123)
    path = tmp_path / "up.bin"
    path.write_bytes(data)
    up = json.loads(curl(stack, "/echo", "--data-binary", f"@{path}").stdout)
    assert up["size"] == len(data) and up["sha256"] == hashlib.sha256(data).hexdigest()
    # no content-length from the client: edge sends the upstream a chunked body
    up = json.loads(curl(stack, "/echo", "-T", str(path), "-H", "Content-Length:").stdout)
    assert up["size"] == len(data) and up["sha256"] == hashlib.sha256(data).hexdigest()
    expected = hashlib.sha256((bytes(range(256)) * (BIG // 256 + 1))[:BIG]).hexdigest()
    for query in ("", "?chunked=1"):
        down = curl(stack, f"/bytes/{BIG}{query}")
        assert down.returncode == 0, down.stderr
        assert hashlib.sha256(down.stdout).hexdigest() == expected


@pytest.mark.skipif(shutil.which("h2load") is None, reason="needs h2load")
def test_h2load_multiplexing_without_errors(stack: Stack) -> None:
    out = subprocess.run(
        ["h2load", "-n", "2000", "-c", "10", "-m", "10", f"https://127.0.0.1:{stack.port}/headers"],
        capture_output=True,
        timeout=60,
        check=False,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(
        r"requests: 2000 total, 2000 started, 2000 done, 2000 succeeded, 0 failed, 0 errored", out.stdout
    ), out.stdout
    assert "status codes: 2000 2xx" in out.stdout


def test_slow_stream_does_not_stall_others_and_resumes(stack: Stack) -> None:
    client = H2Client(stack.port, str(stack.pki.root))
    try:
        slow = client.request(f"/bytes/{BIG}", auto_ack=False)
        client.wait(lambda: len(client.responses[slow].body) > 0, what="first bytes of the big body")
        # while the big stream sits on a full window, other streams on the same connection complete
        for _ in range(20):
            response = client.get("/headers")
            assert response.status == 200 and json.loads(response.body)["upstream"] == "h2demo"
        got = len(client.responses[slow].body)
        assert got <= 256 * 1024, f"the server sent {got} bytes beyond the stream window"
        assert not client.responses[slow].ended
        client.ack(slow)  # WINDOW_UPDATE: the stream resumes and completes intact
        client.wait(lambda: client.finished(slow), timeout=30, what="the big body")
        body = client.responses[slow].body
        assert len(body) == BIG and client.responses[slow].reset is None
        expected = (bytes(range(256)) * (BIG // 256 + 1))[:BIG]
        assert hashlib.sha256(body).digest() == hashlib.sha256(expected).digest()
    finally:
        client.close()


def test_upload_is_acknowledged_only_as_the_upstream_takes_it(stack: Stack) -> None:
    """A client uploading to an upstream that does not read gets no window beyond what edge can hand on."""
    client = H2Client(stack.port, str(stack.pki.root))
    try:
        hdrs = client.headers("/upload", "POST", authority="hold.localhost")
        sid = client.request("/upload", headers=hdrs, end=False)
        assert stack.hold.requests.acquire(timeout=10)
        sent = 0
        chunk = b"x" * 16384
        # keep sending while windows allow; edge must stop granting well before BIG
        while sent < BIG:
            window = min(client.conn.local_flow_control_window(sid), len(chunk))
            if window <= 0:
                try:
                    client.sock.settimeout(1.0)
                    client.read_once()
                except TimeoutError:
                    break  # no WINDOW_UPDATE came: the flow is held back
                continue
            client.conn.send_data(sid, chunk[:window])
            client._send()
            sent += window
        assert sent < 8 * 1024 * 1024, f"edge acknowledged {sent} bytes an upstream never read"
        # the other streams of this connection are unaffected
        assert client.get("/headers").status == 200
        client.reset(sid)
        assert stack.hold.closed.acquire(timeout=10), "the upstream exchange was not cut"
    finally:
        client.close()


def test_rst_stream_cancels_the_upstream_exchange(stack: Stack) -> None:
    client = H2Client(stack.port, str(stack.pki.root))
    try:
        sid = client.request("/wait", headers=client.headers("/wait", authority="hold.localhost"))
        assert stack.hold.requests.acquire(timeout=10), "request never reached the upstream"
        client.reset(sid)
        assert stack.hold.closed.acquire(timeout=10), "edge kept the upstream connection of a reset stream"
        assert client.get("/headers").status == 200  # the connection lives on
    finally:
        client.close()


def test_shared_upstream_pool_between_http1_and_http2(stack: Stack) -> None:
    before = stack.rec.connections
    for http in ("--http2", "--http1.1", "--http2", "--http1.1"):
        out = curl(stack, "/", "-H", "Host: rec.localhost", http=http)
        assert out.stdout == b"ok", out
    client = H2Client(stack.port, str(stack.pki.root))
    try:
        for _ in range(3):
            assert client.get("/", headers=client.headers("/", authority="rec.localhost")).body == b"ok"
    finally:
        client.close()
    # max_connections 1: all seven exchanges went over one kept-alive upstream connection
    assert stack.rec.connections - before <= 1


def test_edge_made_responses(stack: Stack) -> None:
    client = H2Client(stack.port, str(stack.pki.root))
    try:
        assert client.get("/", headers=client.headers("/", authority="nowhere.example")).status == 404
        dead = client.get("/", headers=client.headers("/", authority="dead.localhost"))
        assert dead.status == 502 and b"502 Bad Gateway" in dead.body
        late = client.get("/slow/5", headers=client.headers("/slow/5", authority="slow.localhost"))
        assert late.status == 504
        assert client.get("/headers").status == 200
    finally:
        client.close()


def test_host_and_authority_must_agree(stack: Stack) -> None:
    client = H2Client(stack.port, str(stack.pki.root))
    try:
        same = client.get(
            "/headers", headers=client.headers("/headers", extra=[(b"host", f"localhost:{stack.port}".encode())])
        )
        assert same.status == 200
        differ = client.get("/headers", headers=client.headers("/headers", extra=[(b"host", b"evil.example")]))
        assert differ.status == 400 and b"differ" in differ.body
    finally:
        client.close()


def test_malformed_head_resets_only_its_stream(stack: Stack) -> None:
    client = H2Client(stack.port, str(stack.pki.root))
    try:
        for bad in (
            [(b"connection", b"keep-alive")],
            [(b"transfer-encoding", b"chunked")],
            [(b"te", b"gzip")],
            [(b"x-bad", b"a\r\nInjected: 1")],
            [(b"Upper", b"x")],
        ):
            response = client.get("/headers", headers=client.headers("/headers", extra=bad))
            assert response.reset == ErrorCodes.PROTOCOL_ERROR, bad
        assert client.get("/headers", headers=client.headers("/headers", extra=[(b"te", b"trailers")])).status == 200
    finally:
        client.close()


def test_header_size_limit(stack: Stack) -> None:
    fine = curl(stack, "/headers", "-H", "X-Pad: " + "a" * 2000, "-o", "/dev/null", "-w", "%{http_code}")
    assert fine.stdout == b"200"
    big = curl(stack, "/headers", "-H", "X-Pad: " + "a" * 6000, "-o", "/dev/null", "-w", "%{http_code}")
    assert big.stdout == b"431", big


def test_access_log_and_metrics_count_http2(stack: Stack) -> None:
    curl(stack, "/headers?from=h2-log-test")
    wait_until(
        lambda: any(e.get("path", "").endswith("h2-log-test") for e in stack.edge.access_log()), what="access log line"
    )
    line = next(e for e in stack.edge.access_log() if e.get("path", "").endswith("h2-log-test"))
    assert line["status"] == 200 and line["method"] == "GET" and line["route"] == "app"


@pytest.mark.skipif(shutil.which("nghttp") is None, reason="needs nghttp")
def test_graceful_goaway_on_sigterm(pki) -> None:
    demo = DemoUpstream("drain")
    port = free_port()
    policy = f"""
version: 1
listeners:
  websecure:
    listen: ["127.0.0.1:{port}"]
    tls: {{certificates: [{{cert: "{pki.cert}", key: "{pki.key}"}}]}}
services:
  app: {{upstreams: [{{url: "{demo.url}"}}]}}
routes:
  - {{service: app}}
"""
    edge = Edge(policy, port)
    try:
        client = subprocess.Popen(
            ["nghttp", "-v", f"https://127.0.0.1:{port}/slow/1.5"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        # SIGTERM once the request is in flight at the upstream (edge's access log has nothing yet)
        wait_until(lambda: _upstream_busy(edge), what="request in flight")
        edge.signal(signal.SIGTERM)
        out, _ = client.communicate(timeout=20)
        assert "recv GOAWAY" in out and "NO_ERROR" in out, out
        # first GOAWAY: "no new streams soon"; after a PING round trip the final one keeps the in-flight stream
        last = [int(x) for x in re.findall(r"recv GOAWAY frame.*\n\s*\(last_stream_id=(\d+)", out)]
        sent = [int(x) for x in re.findall(r"send HEADERS frame <[^>]*stream_id=(\d+)>", out)]
        assert last == [2**31 - 1, sent[-1]], out
        assert "late" in out and ":status: 200" in out, out  # and the stream completed
        assert edge.proc.wait(15) == 0
    finally:
        edge.stop()
        demo.stop()


def _upstream_busy(edge: Edge) -> bool:
    out = subprocess.run(
        ["ss", "-tnH", "state", "established", f"( sport = :{edge.port} )"], capture_output=True, text=True, check=False
    )
    return bool(out.stdout.strip())


def test_idle_connection_gets_goaway_and_close(pki) -> None:
    demo = DemoUpstream("idle")
    port = free_port()
    policy = f"""
version: 1
limits: {{idle_timeout: 300ms}}
listeners:
  websecure:
    listen: ["127.0.0.1:{port}"]
    tls: {{certificates: [{{cert: "{pki.cert}", key: "{pki.key}"}}]}}
services:
  app: {{upstreams: [{{url: "{demo.url}"}}]}}
routes:
  - {{service: app}}
"""
    edge = Edge(policy, port)
    client = H2Client(port, str(pki.root))
    try:
        assert client.get("/headers").status == 200
        with pytest.raises(ConnectionError):
            client.wait(lambda: False, timeout=10, what="the server closing an idle connection")
        assert client.goaway is not None and client.goaway.error_code == ErrorCodes.NO_ERROR
    finally:
        client.close()
        edge.stop()
        demo.stop()
