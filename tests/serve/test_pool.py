"""Upstream connection pool behaviour against scripted raw-socket upstreams, and IPv6/demo listeners."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import threading

import pytest

from tests.support.guard import connect
from tests.support.procs import ROOT, DemoUpstream, Edge, Proc, free_port, port_open, raw_exchange, wait_until

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")


class ScriptedUpstream:
    """Answers the first request on each connection; what happens to the second is the script."""

    def __init__(self, second: str) -> None:
        self.second = second  # "close": close without answering; "answer": keep serving
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.requests = 0
        self.eofs = 0  # connections the proxy closed
        self._stop = False
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        served = 0
        buf = b""
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    self.eofs += 1
                    return
                buf += data
                while b"\r\n\r\n" in buf:
                    _, _, buf = buf.partition(b"\r\n\r\n")
                    self.requests += 1
                    if served >= 1 and self.second == "close":
                        return  # the keep-alive race: closed just as the proxy reused it
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok")
                    served += 1
        except OSError:
            return
        finally:
            conn.close()

    def close(self) -> None:
        self._stop = True
        self.sock.close()


def _edge_for(port: int, upstream_port: int, extra: str = "") -> Edge:
    return Edge(
        f"version: 1\nlisteners: {{web: {{listen: ['127.0.0.1:{port}']}}}}\n"
        f"services: {{s: {{upstreams: [{{url: 'http://127.0.0.1:{upstream_port}'}}]{extra}}}}}\n"
        "routes: [{service: s}]\n",
        port,
    )


def get_ok(port: int) -> bytes:
    return raw_exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")


def test_reused_connection_closed_before_answer_is_retried_once_on_a_fresh_one():
    upstream = ScriptedUpstream("close")
    port = free_port()
    edge = _edge_for(port, upstream.port)
    try:
        for _ in range(4):
            raw = get_ok(port)
            assert raw.startswith(b"HTTP/1.1 200"), raw
        # each retry needed a fresh connection: the first request on each is answered
        assert upstream.accepted >= 4
    finally:
        edge.stop()
        upstream.close()


def test_keep_alive_connections_are_reused():
    upstream = ScriptedUpstream("answer")
    port = free_port()
    edge = _edge_for(port, upstream.port)
    try:
        for _ in range(10):
            assert get_ok(port).startswith(b"HTTP/1.1 200")
        assert upstream.accepted == 1 and upstream.requests == 10
    finally:
        edge.stop()
        upstream.close()


def test_idle_upstream_connections_expire():
    upstream = ScriptedUpstream("answer")
    port = free_port()
    edge = _edge_for(port, upstream.port, ", timeouts: {idle: 300ms}")
    try:
        assert get_ok(port).startswith(b"HTTP/1.1 200")
        # the pool closes the idle connection after 300 ms: the upstream sees EOF, the next
        # request needs a new connection
        wait_until(lambda: upstream.eofs == 1, timeout=5, what="idle connection expired")
        assert get_ok(port).startswith(b"HTTP/1.1 200")
        assert upstream.accepted == 2
    finally:
        edge.stop()
        upstream.close()


def test_dead_idle_connection_is_dropped_not_reused():
    upstream = DemoUpstream("dead")
    port = free_port()
    edge = _edge_for(port, upstream.port)
    try:
        assert get_ok(port).startswith(b"HTTP/1.1 200")
        upstream.stop()  # the idle pooled connection dies with it
        revived = DemoUpstream("dead", port=upstream.port)
        try:
            raw = get_ok(port)
            assert raw.startswith(b"HTTP/1.1 200"), raw
        finally:
            revived.stop()
    finally:
        edge.stop()


def test_ipv6_listener():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    upstream = DemoUpstream("v6")
    port = free_port()
    edge = Edge(
        f"version: 1\nlisteners: {{web: {{listen: ['127.0.0.1:{port}', '[::1]:{port}']}}}}\n"
        f"services: {{s: {{upstreams: [{{url: '{upstream.url}'}}]}}}}\nroutes: [{{service: s}}]\n",
        port,
    )
    try:
        out = subprocess.run(["curl", "-sS", "-g", f"http://[::1]:{port}/headers"], capture_output=True, check=True)
        assert b'"X-Forwarded-For", "::1"' in out.stdout
        assert b'for=\\"[::1]\\"' in out.stdout
    finally:
        edge.stop()
        upstream.stop()


def test_demo_policy_serves_http_https_and_metrics():
    """The README's demo: edge serve on policies/demo.yaml with the built-in demo upstreams."""
    for fixed in (8080, 8443, 9901, 8081, 8082):
        if port_open(fixed):
            pytest.skip(f"port {fixed} is busy (a demo already running?)")
    ups = [DemoUpstream("demo-a", port=8081), DemoUpstream("demo-b", port=8082)]
    edge = Proc([sys.executable, "-m", "edge", "serve", "-c", "policies/demo.yaml"], "demo")
    try:
        wait_until(lambda: port_open(8443) and port_open(9901), what="demo listeners")
        out = subprocess.run(["curl", "-sS", "-i", "http://127.0.0.1:8080/"], capture_output=True, check=True).stdout
        assert out.startswith(b"HTTP/1.1 200") and b"X-Served-By: edge" in out
        ca = ROOT / ".demo" / "ca" / "root.pem"
        out = subprocess.run(["curl", "-sS", "--cacert", str(ca), "https://localhost:8443/"], capture_output=True,
                             check=True).stdout
        assert b"Hello from the demo-" in out
        metrics = subprocess.run(["curl", "-sS", "http://127.0.0.1:9901/metrics"], capture_output=True).stdout
        assert b'edge_requests_total{route="demo",service="demo",code="200"} 2' in metrics
        with connect("127.0.0.1", 8080):
            pass
    finally:
        assert edge.stop() == 0
        for up in ups:
            up.stop()


def test_proxy_protocol_chain_edge_to_edge():
    """client -> edge A (PROXY in, PROXY out) -> edge B (PROXY in) -> upstream sees the client."""
    import json

    upstream = DemoUpstream("pp")
    port_a, port_b = free_port(), free_port()
    edge_b = Edge(
        "version: 1\ntrusted_proxies: [127.0.0.1/32]\n"
        f"listeners: {{web: {{listen: ['127.0.0.1:{port_b}'], proxy_protocol: true}}}}\n"
        f"services: {{s: {{upstreams: [{{url: '{upstream.url}'}}]}}}}\nroutes: [{{service: s}}]\n",
        port_b,
    )
    edge_a = Edge(
        "version: 1\ntrusted_proxies: [127.0.0.1/32]\n"
        f"listeners: {{web: {{listen: ['127.0.0.1:{port_a}'], proxy_protocol: true}}}}\n"
        f"services: {{s: {{upstreams: [{{url: 'http://127.0.0.1:{port_b}'}}], send_proxy_protocol: true}}}}\n"
        "routes: [{service: s}]\n",
        port_a,
    )
    try:
        for _ in range(2):  # the second request must not reuse the first client's PROXY connection
            raw = raw_exchange(port_a, b"PROXY TCP4 198.51.100.7 127.0.0.1 40000 80\r\n"
                                       b"GET /headers HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            headers = dict((k.lower(), v) for k, v in json.loads(raw.partition(b"\r\n\r\n")[2])["headers"])
            assert headers["x-forwarded-for"] == "198.51.100.7"
        # a bad PROXY header is a 400 and close
        assert raw_exchange(port_b, b"PROXY TCP4 nonsense\r\n\r\n").startswith(b"HTTP/1.1 400")
    finally:
        edge_a.stop()
        edge_b.stop()
        upstream.stop()
