"""Route zones and GeoIP rules through a real edge: 403 for the wrong network zone or country."""

from __future__ import annotations

import socket

import pytest
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from tests.support.procs import DemoUpstream, Edge, free_port, wait_until


def request_from(source: str, port: int, path: str = "/status/200", xff: str | None = None) -> int:
    """One request from a chosen loopback source address; returns the status code."""
    with socket.socket() as sock:
        sock.bind((source, 0))
        sock.settimeout(5)
        sock.connect(("127.0.0.1", port))
        extra = f"X-Forwarded-For: {xff}\r\n" if xff else ""
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{extra}\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])


@pytest.fixture(scope="module")
def upstream():
    up = DemoUpstream("rules")
    yield up
    up.stop()


def test_route_zones_admit_only_their_subnets(upstream):
    port = free_port()
    edge = Edge(
        f"version: 1\nlisteners: {{web: {{listen: ['127.0.0.1:{port}']}}}}\n"
        f"services: {{s: {{upstreams: [{{url: '{upstream.url}'}}]}}}}\n"
        "routes:\n  - {service: s, path_prefix: /status, zones: [mgmt]}\n  - {service: s}\n"
        "network:\n  zones:\n    mgmt: {interfaces: [lo], address: 127.0.1.1/24}\n"
        "    iot: {interfaces: [lo], address: 127.0.20.1/24}\n",
        port,
    )
    try:
        assert request_from("127.0.1.5", port) == 200  # mgmt
        assert request_from("127.0.20.7", port) == 403  # iot never reaches the admin route
        assert request_from("127.0.0.1", port) == 403  # in no zone
        assert request_from("127.0.20.7", port, "/headers") == 200  # other routes stay open
    finally:
        edge.stop()


def test_geoip_allow_and_deny_with_a_built_database(upstream, tmp_path):
    database = tmp_path / "country.mmdb"
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-Country")
    for cidr, code in {"81.0.0.0/8": "DE", "145.0.0.0/8": "NL", "1.0.0.0/8": "AU"}.items():
        writer.insert_network(IPSet([cidr]), {"country": {"iso_code": code}})
    writer.to_db_file(str(database))
    port = free_port()
    edge = Edge(
        f"version: 1\ntrusted_proxies: [127.0.0.1/32]\ngeoip: {{database: '{database}'}}\n"
        f"listeners: {{web: {{listen: ['127.0.0.1:{port}']}}}}\n"
        f"services: {{s: {{upstreams: [{{url: '{upstream.url}'}}]}}}}\n"
        "routes:\n"
        "  - {service: s, path_prefix: /status, geoip: {allow: [DE, NL]}}\n"
        "  - {service: s, path_prefix: /headers, geoip: {deny: [AU], unknown: deny}}\n",
        port,
    )
    try:
        wait_until(lambda: request_from("127.0.0.1", port, xff="81.2.3.4") == 200, what="edge up")
        assert request_from("127.0.0.1", port, xff="145.1.1.1") == 200  # NL allowed
        assert request_from("127.0.0.1", port, xff="1.2.3.4") == 403  # AU not in the allow list
        assert request_from("127.0.0.1", port, xff="9.9.9.9") == 200  # unknown: allow (default)
        assert request_from("127.0.0.1", port, "/headers", xff="1.2.3.4") == 403  # denied
        assert request_from("127.0.0.1", port, "/headers", xff="81.2.3.4") == 200
        assert request_from("127.0.0.1", port, "/headers", xff="9.9.9.9") == 403  # unknown: deny
        # a client that is not a trusted proxy cannot claim a country with X-Forwarded-For
        assert request_from("127.0.0.2", port, xff="81.2.3.4") == 200  # 127.0.0.2 is unknown: allowed
        assert request_from("127.0.0.2", port, "/headers", xff="81.2.3.4") == 403  # unknown: denied
    finally:
        edge.stop()


def test_access_rules_and_tiers_hold_over_http2(upstream, tmp_path):
    """The same zone rule and tier header over HTTP/2: no protocol is a way around them."""
    import json
    import subprocess

    port = free_port()
    ca = tmp_path / "ca"
    edge = Edge(
        f"version: 1\nlisteners:\n  websecure:\n    listen: ['127.0.0.1:{port}']\n"
        f"    tls: {{certificates: [{{cert: '{ca}/localhost.pem', key: '{ca}/localhost.key'}}]}}\n"
        f"services: {{s: {{upstreams: [{{url: '{upstream.url}'}}]}}}}\n"
        "routes:\n  - {service: s, path_prefix: /status, zones: [mgmt]}\n  - {service: s, quality: q}\n"
        "quality_profiles: {q: {tiers: [{name: low, when: {save_data: true}}, {name: high}]}}\n"
        "network:\n  zones:\n    mgmt: {interfaces: [lo], address: 127.0.1.1/24}\n",
        port,
    )

    def curl(source: str, path: str, *headers: str) -> subprocess.CompletedProcess:
        extra = [a for h in headers for a in ("-H", h)]
        return subprocess.run(
            ["curl", "-sS", "--http2", "--cacert", str(ca / "root.pem"), "--interface", source, "-o", "-",
             "-w", "\\n%{http_code} %{http_version}", *extra, f"https://localhost:{port}{path}"],
            capture_output=True, text=True, timeout=20,
        )

    try:
        assert curl("127.0.1.5", "/status/200").stdout.endswith("200 2")
        assert curl("127.0.0.1", "/status/200").stdout.endswith("403 2")
        out = curl("127.0.0.1", "/headers", "Save-Data: on", "X-Edge-Quality: high").stdout
        body, _, status = out.rpartition("\n")
        assert status == "200 2"
        seen = {k.lower(): v for k, v in json.loads(body)["headers"]}
        assert seen["x-edge-quality"] == "low"
    finally:
        edge.stop()
