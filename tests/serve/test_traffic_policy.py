"""Rate limits, balancing, health, circuit breakers and hitless reloads, against real upstream processes."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import threading

import pytest
import websockets

from tests.support.procs import DemoUpstream, Edge, free_port, port_open, raw_exchange, wait_until

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")


def get(port: int, path: str = "/headers", *headers: str, host: str = "t") -> tuple[int, dict[str, str], bytes]:
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n"
    request += "".join(h + "\r\n" for h in headers) + "\r\n"
    raw = raw_exchange(port, request.encode())
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), fields, body


def metric(admin: int, pattern: str) -> float | None:
    text = subprocess.run(["curl", "-s", f"http://127.0.0.1:{admin}/metrics"], capture_output=True).stdout.decode()
    match = re.search(pattern + r" ([0-9.e+-]+)$", text, re.M)
    return float(match.group(1)) if match else None


def policy(port: int, admin: int, services: str, routes: str, extra: str = "") -> str:
    return (
        f"version: 1\nadmin: {{listen: '127.0.0.1:{admin}'}}\n"
        f"listeners: {{web: {{listen: ['127.0.0.1:{port}']}}}}\n"
        f"services:\n{services}\nroutes:\n{routes}\n{extra}"
    )


@pytest.fixture
def two():
    a, b = DemoUpstream("a"), DemoUpstream("b")
    yield a, b
    a.stop()
    b.stop()


def test_rate_limit_429_with_headers_and_metric(two):
    a, _ = two
    port, admin = free_port(), free_port()
    edge = Edge(
        policy(port, admin, f"  app: {{upstreams: [{{url: '{a.url}'}}]}}",
               "  - {name: app, service: app, rate_limit: tight}",
               "rate_limits: {tight: {rate: 1/m, burst: 3}}\n"),
        port, admin,
    )
    try:
        codes = [get(port)[0] for _ in range(3)]
        assert codes == [200, 200, 200]
        status, headers, body = get(port)
        assert status == 429 and body.startswith(b"429 Too Many Requests")
        assert int(headers["retry-after"]) >= 1
        assert headers["ratelimit-policy"] == '"tight";q=3;w=180'
        assert headers["ratelimit"].startswith('"tight";r=0;t=')
        # a different key (header-based limits are per header value; this one is per client ip)
        assert metric(admin, r'edge_ratelimit_rejected_total\{route="app"\}') == 1
        # reload keeps the drained bucket: still limited afterwards (HAProxy would forget)
        edge.rewrite(edge_policy_text(edge).replace("name: app,", "name: app, headers: {add_response: {X-R: '1'}},"))
        edge.reload()
        wait_until(lambda: metric(admin, r'edge_policy_reloads_total\{result="ok"\}') == 1, what="reload")
        assert get(port)[0] == 429
    finally:
        edge.stop()


def edge_policy_text(edge: Edge) -> str:
    with open(edge.policy_path) as handle:
        return handle.read()


def test_weighted_balancing_3_to_1_over_real_upstreams(two):
    a, b = two
    port, admin = free_port(), free_port()
    edge = Edge(
        policy(port, admin,
               f"  app: {{balancer: weighted, upstreams: [{{url: '{a.url}', weight: 3}}, {{url: '{b.url}'}}]}}",
               "  - {service: app}"),
        port, admin,
    )
    try:
        seen = []
        for _ in range(200):
            body = get(port)[2]
            seen.append(b'"upstream": "a"' in body)
        share = sum(seen) / len(seen)
        assert 0.70 <= share <= 0.80
    finally:
        edge.stop()


def test_passive_health_retry_and_ejection_of_a_stopped_upstream(two):
    a, b = two
    port, admin = free_port(), free_port()
    edge = Edge(
        policy(port, admin, f"  app: {{upstreams: [{{url: '{a.url}'}}, {{url: '{b.url}'}}], retries: 1}}",
               "  - {service: app}"),
        port, admin,
    )
    try:
        b.stop()
        codes = [get(port)[0] for _ in range(10)]
        assert codes == [200] * 10  # connect failures retried on the other upstream
        assert metric(admin, f'edge_upstream_up\\{{service="app",upstream="127.0.0.1:{b.port}"\\}}') == 0
        assert metric(admin, f'edge_upstream_up\\{{service="app",upstream="127.0.0.1:{a.port}"\\}}') == 1
    finally:
        edge.stop()


def test_active_health_checks_take_out_and_bring_back(two):
    a, b = two
    port, admin = free_port(), free_port()
    edge = Edge(
        policy(port, admin,
               f"  app:\n    upstreams: [{{url: '{a.url}'}}, {{url: '{b.url}'}}]\n"
               "    health_check: {path: /status/200, interval: 100ms, timeout: 500ms, healthy: 2, unhealthy: 2}",
               "  - {service: app}"),
        port, admin,
    )
    up_b = f'edge_upstream_up\\{{service="app",upstream="127.0.0.1:{b.port}"\\}}'
    try:
        wait_until(lambda: metric(admin, up_b) == 1, what="b healthy")
        b.stop()
        wait_until(lambda: metric(admin, up_b) == 0, timeout=5, what="b taken out by active checks")
        assert all(b'"upstream": "a"' in get(port)[2] for _ in range(6))
        revived = DemoUpstream("b", port=b.port)
        try:
            wait_until(lambda: metric(admin, up_b) == 1, timeout=5, what="b back")
            assert any(b'"upstream": "b"' in get(port)[2] for _ in range(6))
        finally:
            revived.stop()
    finally:
        edge.stop()


def test_no_healthy_upstream_is_503_with_retry_after():
    dead = free_port()
    port, admin = free_port(), free_port()
    edge = Edge(
        policy(port, admin,
               f"  app:\n    upstreams: [{{url: 'http://127.0.0.1:{dead}'}}]\n"
               "    health_check: {path: /, interval: 100ms, timeout: 200ms, healthy: 1, unhealthy: 1}",
               "  - {service: app}"),
        port, admin,
    )
    try:
        wait_until(lambda: metric(admin, r'edge_upstream_up\{service="app",upstream="127.0.0.1:\d+"\}') == 0,
                   what="upstream down")
        status, headers, _ = get(port)
        assert status == 503 and int(headers["retry-after"]) >= 1
    finally:
        edge.stop()


def test_circuit_breaker_opens_rejects_without_upstream_then_recovers(two):
    a, _ = two
    port, admin = free_port(), free_port()
    edge = Edge(
        policy(port, admin,
               f"  app:\n    upstreams: [{{url: '{a.url}'}}]\n"
               "    circuit_breaker: {error_ratio: 0.5, min_requests: 4, window: 10s, open_for: 1s, "
               "half_open_requests: 1}",
               "  - {name: app, service: app}"),
        port, admin,
    )
    try:
        for _ in range(4):
            assert get(port, "/status/500")[0] == 500
        assert metric(admin, r'edge_circuit_state\{service="app"\}') == 1
        status, headers, body = get(port, "/status/200")
        assert status == 503 and int(headers["retry-after"]) >= 1 and b"circuit open" in body
        served = metric(admin, r'edge_requests_total\{route="app",service="app",code="200"\}')
        assert served is None  # nothing reached the upstream with a 200 while open
        wait_until(lambda: get(port, "/status/200")[0] == 200, timeout=5, interval=0.1, what="half-open trial")
        assert metric(admin, r'edge_circuit_state\{service="app"\}') == 0
    finally:
        edge.stop()


def test_max_connections_queues_then_503(two):
    a, _ = two
    port, admin = free_port(), free_port()
    edge = Edge(
        policy(port, admin,
               f"  app: {{upstreams: [{{url: '{a.url}'}}], max_connections: 1, timeouts: {{connect: 300ms}}}}",
               "  - {service: app}"),
        port, admin,
    )
    try:
        results: list[int] = []
        slow = threading.Thread(target=lambda: results.append(get(port, "/slow/1.5")[0]))
        slow.start()
        wait_until(lambda: _inflight(admin) == 1, what="slow request in flight")
        status, headers, _ = get(port, "/status/200")
        assert status == 503 and "retry-after" in headers
        slow.join()
        assert results == [200]
        assert get(port, "/status/200")[0] == 200
    finally:
        edge.stop()


def _inflight(admin: int) -> int:
    import json

    out = subprocess.run(["curl", "-s", f"http://127.0.0.1:{admin}/status"], capture_output=True).stdout
    return sum(u["inflight"] for s in json.loads(out)["services"].values() for u in s["upstreams"])


@pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk")
def test_twenty_reloads_under_wrk_load_lose_nothing_and_websockets_survive(two):
    a, b = two
    port, admin = free_port(), free_port()
    base = policy(port, admin, f"  app: {{upstreams: [{{url: '{a.url}'}}, {{url: '{b.url}'}}]}}",
                  "  - {name: app, service: app, headers: {add_response: {X-Gen: '0'}}}")
    edge = Edge(base, port, admin)
    try:
        async def websocket_across_reloads() -> list[str]:
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws", open_timeout=5) as ws:
                echoes = []
                for generation in range(1, 21):
                    edge.rewrite(base.replace("X-Gen: '0'", f"X-Gen: '{generation}'"))
                    edge.reload()
                    await _wait_async(lambda g=generation: get(port)[1].get("x-gen") == str(g))
                    await ws.send(f"msg{generation}")
                    echoes.append(await asyncio.wait_for(ws.recv(), 5))
                return echoes

        wrk = subprocess.Popen(["wrk", "-t1", "-c10", "-d10s", f"http://127.0.0.1:{port}/status/200"],
                               stdout=subprocess.PIPE, text=True)
        try:
            echoes = asyncio.run(websocket_across_reloads())
            assert wrk.poll() is None, "the reloads must happen while wrk runs"
        finally:
            out = wrk.communicate(timeout=30)[0]
        assert echoes == [f"msg{g}" for g in range(1, 21)]
        assert metric(admin, r'edge_policy_reloads_total\{result="ok"\}') == 20
        assert metric(admin, r'edge_policy_reloads_total\{result="error"\}') == 0
        assert "Non-2xx" not in out and "Socket errors" not in out, out
        codes = subprocess.run(["curl", "-s", f"http://127.0.0.1:{admin}/metrics"], capture_output=True).stdout
        assert not re.search(rb'edge_requests_total\{[^}]*code="[45]\d\d"\}', codes)
        assert port_open(port)
    finally:
        edge.stop()


async def _wait_async(predicate, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await loop.run_in_executor(None, predicate):
            return
        await asyncio.sleep(0.02)
    raise TimeoutError("condition not met")


def test_state_file_keeps_buckets_and_breakers_across_restarts(two, tmp_path):
    import os

    a, _ = two
    state = tmp_path / "state" / "edge.msgpack"
    port, admin = free_port(), free_port()
    text = policy(
        port, admin,
        f"  app:\n    upstreams: [{{url: '{a.url}'}}]\n"
        "    circuit_breaker: {error_ratio: 0.5, min_requests: 2, window: 10s, open_for: 1h}",
        "  - {name: app, service: app, rate_limit: tight}\n  - {name: other, host: other.test, service: app}",
        f"rate_limits: {{tight: {{rate: 1/h, burst: 2}}}}\nstate: {{file: '{state}'}}\n",
    )
    edge = Edge(text, port, admin)
    try:
        assert [get(port)[0] for _ in range(2)] == [200, 200]
        assert get(port)[0] == 429
        assert [get(port, "/status/500", host="other.test")[0] for _ in range(2)] == [500, 500]
    finally:
        assert edge.stop() == 0
    assert oct(os.stat(state).st_mode & 0o777) == "0o600"
    edge = Edge(text, port, admin)
    try:
        assert get(port)[0] == 429  # the drained bucket came back
        status, _, body = get(port, "/status/200", host="other.test")
        assert status == 503 and b"circuit open" in body  # and so did the open breaker
    finally:
        edge.stop()


def test_reload_guard_rolls_back_a_policy_whose_changed_routes_fail(two):
    a, _ = two
    port, admin = free_port(), free_port()
    dead = free_port()
    good = policy(port, admin, f"  app: {{upstreams: [{{url: '{a.url}'}}], retries: 0}}",
                  "  - {name: app, service: app}", "reload: {verify_for: 30s, max_error_ratio: 0.2}\n")
    edge = Edge(good, port, admin)
    try:
        assert get(port)[0] == 200
        edge.rewrite(good.replace(a.url, f"http://127.0.0.1:{dead}"))  # valid, but harmful
        edge.reload()
        wait_until(lambda: metric(admin, r'edge_policy_reloads_total\{result="ok"\}') == 1, what="reload")
        codes = [get(port)[0] for _ in range(12)]
        assert 502 in codes
        wait_until(lambda: metric(admin, r"edge_policy_rollbacks_total") == 1, timeout=5, what="rollback")
        wait_until(lambda: get(port)[0] == 200, timeout=5, what="the previous policy serving again")
        assert "policy reload rolled back" in edge.stderr()
    finally:
        edge.stop()
