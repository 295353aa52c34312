"""Limits (431, 413, slowloris, idle), SIGHUP reload, SIGTERM drain, TLS listeners: each against a real edge."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from tests.support.guard import connect
from tests.support.procs import DemoUpstream, Edge, free_port, port_open, raw_exchange, simple_policy, wait_until

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")


@pytest.fixture(scope="module")
def upstream():
    up = DemoUpstream("lim")
    yield up
    up.stop()


@pytest.fixture(scope="module")
def strict(upstream):
    port = free_port()
    edge = Edge(
        simple_policy(port, [upstream.url],
                      extra="limits: {header_timeout: 1s, idle_timeout: 1s, max_header_size: 4KiB, "
                            "max_body_size: 1MiB}\n"),
        port,
    )
    yield edge
    edge.stop()


def status_of(raw: bytes) -> int:
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", raw)
    assert match, raw[:100]
    return int(match.group(1))


def test_header_over_limit_is_431(strict):
    raw = raw_exchange(strict.port, b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"x" * 5000 + b"\r\n\r\n")
    assert status_of(raw) == 431 and b"Connection: close" in raw


def test_body_over_limit_is_413_by_length_and_by_chunks(strict):
    raw = raw_exchange(strict.port, b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 2000000\r\n\r\n")
    assert status_of(raw) == 413
    chunk = b"%x\r\n%s\r\n" % (300_000, b"a" * 300_000)
    with connect("127.0.0.1", strict.port) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        data = b""
        try:
            for _ in range(5):
                sock.sendall(chunk)
            while True:
                piece = sock.recv(65536)
                if not piece:
                    break
                data += piece
        except (BrokenPipeError, ConnectionResetError):
            pass
    assert data.startswith(b"HTTP/1.1 413") or data == b""  # a reset may win the race against the answer


def test_slowloris_is_cut_while_others_are_served(strict):
    slow = connect("127.0.0.1", strict.port)
    slow.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n")
    started = time.monotonic()
    # others are served normally in the meantime
    for _ in range(5):
        raw = raw_exchange(strict.port, b"GET /status/200 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert status_of(raw) == 200
    slow.settimeout(5)
    data = b""
    while chunk := slow.recv(1024):
        data += chunk
    elapsed = time.monotonic() - started
    slow.close()
    assert data.startswith(b"HTTP/1.1 408")
    assert elapsed < 3.5


def test_trickling_head_does_not_extend_the_deadline(strict):
    with connect("127.0.0.1", strict.port) as sock:
        sock.settimeout(5)
        sock.sendall(b"GET / HTTP/1.1\r\n")
        started = time.monotonic()
        try:
            for _ in range(40):
                sock.sendall(b"X: y\r\n")
                time.sleep(0.1)  # trickle a byte group every 100 ms: a slowloris, not a test wait
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert time.monotonic() - started < 3.5


def test_idle_keep_alive_connection_is_closed(strict):
    with connect("127.0.0.1", strict.port) as sock:
        sock.sendall(b"GET /status/200 HTTP/1.1\r\nHost: a\r\n\r\n")
        sock.settimeout(5)
        data = b""
        while not data.endswith(b"status 200\n"):
            data += sock.recv(4096)
        started = time.monotonic()
        assert sock.recv(4096) == b""  # closed by the server after limits.idle_timeout
        assert time.monotonic() - started < 3


def test_reload_applies_new_policy_and_rejects_broken_one(upstream):
    port, admin = free_port(), free_port()
    first = simple_policy(port, [upstream.url], admin_port=admin, route_extra=", headers: {add_response: {X-V: one}}")
    edge = Edge(first, port, admin)
    try:
        def header() -> str | None:
            out = subprocess.run(["curl", "-sSi", f"http://127.0.0.1:{port}/status/200"], capture_output=True).stdout
            match = re.search(rb"X-V: (\w+)", out)
            return match.group(1).decode() if match else None

        assert header() == "one"
        edge.rewrite(first.replace("X-V: one", "X-V: two"))
        edge.reload()
        wait_until(lambda: header() == "two", timeout=5, what="new policy in effect")
        edge.rewrite(first.replace("service: app", "service: nosuch"))
        edge.reload()

        def metric(result: str) -> int:
            text = subprocess.run(["curl", "-s", f"http://127.0.0.1:{admin}/metrics"], capture_output=True).stdout
            match = re.search(rb'edge_policy_reloads_total\{result="%s"\} (\d+)' % result.encode(), text)
            return int(match.group(1)) if match else -1

        wait_until(lambda: metric("error") == 1, timeout=5, what="reload error counted")
        assert metric("ok") == 1
        assert header() == "two"  # the running policy stayed
        assert "unknown service 'nosuch'" in edge.stderr()
        assert re.search(r"edge-policy-\w+\.yaml:\d+: routes\[0\]\.service", edge.stderr())
    finally:
        edge.stop()


def test_reload_adds_and_removes_listeners_without_dropping_requests(upstream):
    port, port2 = free_port(), free_port()
    base = simple_policy(port, [upstream.url])
    edge = Edge(base, port)
    stop = threading.Event()
    failures: list[str] = []
    count = [0]

    def hammer() -> None:
        while not stop.is_set():
            try:
                raw = raw_exchange(port, b"GET /status/200 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                if not raw.startswith(b"HTTP/1.1 200"):
                    failures.append(raw[:60].decode("latin-1"))
                count[0] += 1
            except OSError as exc:
                failures.append(repr(exc))

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        both = f"listen: ['127.0.0.1:{port}', '127.0.0.1:{port2}']"
        with_second = base.replace(f"listen: ['127.0.0.1:{port}']", both)
        for _ in range(5):
            edge.rewrite(with_second)
            edge.reload()
            wait_until(lambda: port_open(port2), timeout=5, what="second listener")
            edge.rewrite(base)
            edge.reload()
            wait_until(lambda: not port_open(port2), timeout=5, what="second listener gone")
    finally:
        stop.set()
        thread.join()
        edge.stop()
    assert failures == []
    assert count[0] > 10


def test_sigterm_finishes_in_flight_requests_then_exits_0(upstream):
    port, admin = free_port(), free_port()
    edge = Edge(simple_policy(port, [upstream.url], admin_port=admin), port, admin)
    result: dict = {}

    def inflight() -> int:
        out = subprocess.run(["curl", "-s", f"http://127.0.0.1:{admin}/status"], capture_output=True).stdout
        return sum(u["inflight"] for u in json.loads(out)["services"]["app"]["upstreams"])

    def slow_request() -> None:
        result["out"] = subprocess.run(["curl", "-sS", f"http://127.0.0.1:{port}/slow/1"], capture_output=True)

    thread = threading.Thread(target=slow_request)
    thread.start()
    wait_until(lambda: inflight() == 1, timeout=5, what="request in flight")
    edge.signal(signal.SIGTERM)
    thread.join(10)
    assert edge.proc.wait(10) == 0
    assert result["out"].stdout == b"late\n"
    assert not port_open(port)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_tls_listener_with_internal_ca_and_redirect(upstream, tmp_path):
    https, http = free_port(), free_port()
    cert_dir = tmp_path / "ca"
    policy = f"""
version: 1
listeners:
  web: {{listen: ["127.0.0.1:{http}"], redirect_https: true}}
  websecure:
    listen: ["127.0.0.1:{https}"]
    tls: {{certificates: [{{cert: "{cert_dir}/localhost.pem", key: "{cert_dir}/localhost.key"}}], alpn: [http/1.1]}}
services: {{app: {{upstreams: [{{url: "{upstream.url}"}}]}}}}
routes: [{{service: app}}]
"""
    edge = Edge(policy, https)
    try:
        out = subprocess.run(
            ["curl", "-sS", "--cacert", str(cert_dir / "root.pem"), f"https://localhost:{https}/headers"],
            capture_output=True, check=True,
        ).stdout
        headers = {k.lower(): v for k, v in json.loads(out)["headers"]}
        assert headers["x-forwarded-proto"] == "https"
        raw = raw_exchange(http, b"GET /a?b=c HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 308")
        assert f"Location: https://localhost:{https}/a?b=c\r\n".encode() in raw
        # TLS 1.1 is refused
        old = subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{https}", "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0"],
            input=b"", capture_output=True, timeout=10,
        )
        assert old.returncode != 0
        # a client that never finishes the handshake costs only its own connection
        idle = socket.create_connection(("127.0.0.1", https))
        out = subprocess.run(
            ["curl", "-sS", "--cacert", str(cert_dir / "root.pem"), f"https://localhost:{https}/status/200"],
            capture_output=True, check=True,
        ).stdout
        assert out == b"status 200\n"
        idle.close()
    finally:
        edge.stop()


def test_websocket_over_tls(upstream, tmp_path):
    """wss:// through a TLS listener (the client speaks HTTP/1.1 Upgrade inside TLS)."""
    import asyncio
    import ssl

    import websockets

    port = free_port()
    ca = tmp_path / "ca"
    edge = Edge(
        f"version: 1\nlisteners:\n  websecure:\n    listen: ['127.0.0.1:{port}']\n"
        f"    tls: {{certificates: [{{cert: '{ca}/localhost.pem', key: '{ca}/localhost.key'}}]}}\n"
        f"services: {{s: {{upstreams: [{{url: '{upstream.url}'}}]}}}}\nroutes: [{{service: s}}]\n",
        port,
    )

    async def talk() -> list:
        context = ssl.create_default_context(cafile=str(ca / "root.pem"))
        async with websockets.connect(f"wss://localhost:{port}/ws", ssl=context, open_timeout=5) as ws:
            await ws.send("over tls")
            first = await asyncio.wait_for(ws.recv(), 5)
            await ws.send(b"\x01\x02")
            return [first, await asyncio.wait_for(ws.recv(), 5)]

    try:
        assert asyncio.run(talk()) == ["over tls", b"\x01\x02"]
    finally:
        edge.stop()


def test_client_certificates_required_with_client_ca(upstream, tmp_path):
    """listeners.*.tls.client_ca: no certificate, no connection; an edge-issued client cert works."""
    import sys

    ca = tmp_path / "ca"
    subprocess.run([sys.executable, "-m", "edge", "ca", "init", "--dir", str(ca)], check=True, capture_output=True)
    for extra in ([], ["--client"]):
        name = "phone" if extra else "localhost"
        subprocess.run([sys.executable, "-m", "edge", "ca", "issue", "--dir", str(ca), *extra, name], check=True,
                       capture_output=True)
    port = free_port()
    edge = Edge(
        f"version: 1\nlisteners:\n  websecure:\n    listen: ['127.0.0.1:{port}']\n"
        f"    tls: {{certificates: [{{cert: '{ca}/localhost.pem', key: '{ca}/localhost.key'}}], "
        f"client_ca: '{ca}/root.pem'}}\n"
        f"services: {{s: {{upstreams: [{{url: '{upstream.url}'}}]}}}}\nroutes: [{{service: s}}]\n",
        port,
    )
    try:
        base = ["curl", "-sS", "--http1.1", "--cacert", str(ca / "root.pem"), f"https://localhost:{port}/status/200"]
        assert subprocess.run(base, capture_output=True).returncode != 0
        ok = subprocess.run([*base, "--cert", str(ca / "phone.pem"), "--key", str(ca / "phone.key")],
                            capture_output=True)
        assert ok.stdout == b"status 200\n", ok.stderr
    finally:
        edge.stop()


def test_connections_of_a_removed_listener_are_drained(upstream):
    port, port2 = free_port(), free_port()
    base = simple_policy(port, [upstream.url])
    with_second = base.replace("listeners:\n", f"listeners:\n  extra: {{listen: ['127.0.0.1:{port2}']}}\n")
    edge = Edge(with_second, port)
    try:
        wait_until(lambda: port_open(port2), what="second listener")
        with connect("127.0.0.1", port2) as sock:
            sock.settimeout(5)
            sock.sendall(b"GET /status/200 HTTP/1.1\r\nHost: a\r\n\r\n")
            data = b""
            while not data.endswith(b"status 200\n"):
                data += sock.recv(4096)
            edge.rewrite(base)
            edge.reload()
            assert sock.recv(4096) == b""  # the idle keep-alive connection is closed by the reload
        assert raw_exchange(port, b"GET /status/200 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").startswith(
            b"HTTP/1.1 200")
    finally:
        edge.stop()
