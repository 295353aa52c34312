"""The SPEC example's zone matrix, proven with real TCP connects between namespaces."""

from __future__ import annotations

import itertools

import pytest

from tests.net.conftest import ZONES, spec_policy

pytestmark = pytest.mark.privileged

ALLOWED = {("mgmt", z) for z in ZONES if z != "mgmt"} | {("prod", "iot"), ("prod", "wan"), ("guest", "wan")}
HOST_PORT = 8080


def matrix(lab) -> dict[tuple[str, str], bool]:
    """(from, to) -> did a TCP connect + request/response work."""
    out = {}
    for src in ZONES:
        targets = [f"{lab.host_ip(dst)}:{HOST_PORT}" for dst in ZONES if dst != src]
        replies = lab.hosts[src].probe(targets)
        for dst in ZONES:
            if dst != src:
                reply = replies[f"{lab.host_ip(dst)}:{HOST_PORT}"]
                out[(src, dst)] = reply == f"pong {dst}"
    return out


def start_listeners(lab) -> None:
    for zone, host in lab.hosts.items():
        host.listen(zone, HOST_PORT)
    lab.router.listen("router", 22, 80, 9901, 8081)


def test_zone_matrix_input_ports_and_masquerade(lab, tmp_path) -> None:
    start_listeners(lab)
    policy = spec_policy(lab, tmp_path)
    result = lab.router.edge("net", "apply", "-c", policy)
    assert result.returncode == 0, result.stderr
    got = matrix(lab)
    expected = {pair: pair in ALLOWED for pair in itertools.permutations(ZONES, 2)}
    assert got == expected  # each allowed pair connects (so return traffic works), each denied one fails

    # input: 22 and 9901 only from mgmt; 80 from anyone; 8081 from no one
    for zone in ZONES:
        host = lab.hosts[zone]
        router = lab.router_ip(zone)
        replies = host.probe([f"{router}:22", f"{router}:9901", f"{router}:80", f"{router}:8081"])
        assert replies[f"{router}:80"] == "pong router", zone
        assert (replies[f"{router}:22"] == "pong router") == (zone == "mgmt"), zone
        assert (replies[f"{router}:9901"] == "pong router") == (zone == "mgmt"), zone
        assert replies[f"{router}:8081"] is None, zone

    # masquerade: prod -> wan arrives from the router's wan address
    lab.hosts["wan"].listen("wan-src", 8082)
    source = lab.hosts["prod"].python(
        "import socket,sys; s=socket.create_connection((sys.argv[1], 8082), 2); s.sendall(b'x');"
        "print(s.recv(64).decode())",
        lab.host_ip("wan"),
    )
    assert source.stdout.strip() == "pong wan-src"
    conntrack = lab.router.exec("cat", "/proc/net/nf_conntrack", check=False)
    if conntrack.returncode == 0:
        assert f"dst={lab.router_ip('wan')}" in conntrack.stdout

    # plan after apply: nothing to do; status shows no drift
    plan = lab.router.edge("net", "plan", "-c", policy)
    assert plan.returncode == 0 and "no changes" in plan.stdout, plan.stdout + plan.stderr
    status = lab.router.edge("net", "status", "-c", policy)
    assert "no drift" in status.stdout, status.stdout + status.stderr
    metrics = lab.router.edge("net", "status", "-c", policy, "--metrics").stdout
    assert 'edge_net_forward_packets_total{from="mgmt",to="any",action="accept"}' in metrics
    assert "edge_net_drift 0" in metrics
