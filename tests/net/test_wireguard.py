"""A WireGuard tunnel between two namespaces, set up by ``edge net apply`` with wireguard-go."""

from __future__ import annotations

import os
import subprocess

import pytest

from edge.wg import device, keys
from tests.net.netns import await_condition, unique, veth
from tests.support.privileged import require_tool

pytestmark = pytest.mark.privileged


def _policy(
    tmp_path,
    side: str,
    underlay: str,
    under_ip: str,
    wg: str,
    wg_ip: str,
    key: str,
    peer_key: str,
    peer_ip: str,
    peer_under: str | None,
) -> str:
    """One side's policy; ``peer_under`` None: the peer's endpoint is learnt from its handshake
    (the VPS side of a NAS tunnel), else this side initiates and keeps the tunnel alive."""
    key_file = tmp_path / f"{side}.key"
    key_file.write_text(key + "\n")
    path = tmp_path / f"{side}.yaml"
    path.write_text(
        "version: 1\n"
        "network:\n"
        "  zones:\n"
        f"    under: {{interfaces: [{underlay}], address: {under_ip}/24}}\n"
        f"    tunnel: {{interfaces: [{wg}]}}\n"
        "  input:\n"
        "    - {from: under, ports: [51820/udp], action: accept}\n"
        "    - {from: tunnel, ports: [8080/tcp], action: accept}\n"
        "  wireguard:\n"
        f"    {wg}:\n"
        "      listen_port: 51820\n"
        f"      address: {wg_ip}/24\n"
        f"      endpoint: {under_ip}:51820\n"
        f"      private_key_file: {key_file}\n"
        "      peers:\n"
        f'        other: {{public_key: "{peer_key}", allowed_ips: [{peer_ip}/32]'
        + (f', keepalive: 1s, endpoint: "{peer_under}:51820"' if peer_under else "")
        + "}\n"
    )
    return str(path)


def _remove_socket(name: str) -> None:
    """A wireguard-go killed hard leaves its UAPI socket; the names are ours (unique)."""
    try:
        os.unlink(device.uapi_path(name))
    except FileNotFoundError:
        pass


def _diagnose(a, b, wg_a: str, wg_b: str) -> str:
    """Both ends' WireGuard state, addresses and processes, for a tunnel that did not come up."""
    out = []
    for ns, wg in ((a, wg_a), (b, wg_b)):
        for cmd in (("wg", "show", wg), ("ip", "-br", "addr"), ("nft", "list", "ruleset")):
            result = ns.exec(*cmd, check=False)
            out.append(f"[{ns.name}] {' '.join(cmd)} -> {result.returncode}\n{result.stdout}{result.stderr}")
    out.append(subprocess.run(["pgrep", "-a", "wireguard-go"], capture_output=True, text=True).stdout)
    return "\n".join(out)


def test_tunnel_carries_tcp_after_apply(netns, tmp_path, request) -> None:
    require_tool("wireguard-go")
    a, b = netns("edgwa"), netns("edgwb")
    veth(a, "ua", b, "ub")
    wg_a, wg_b = unique("wga"), unique("wgb")  # the UAPI socket path is shared by all namespaces
    key_a, key_b = keys.generate_private_key(), keys.generate_private_key()
    pub_a, pub_b = keys.public_key(key_a), keys.public_key(key_b)
    under_a, under_b = "192.168.77.1", "192.168.77.2"
    policy_a = _policy(tmp_path, "a", "ua", under_a, wg_a, "10.99.0.1", key_a, pub_b, "10.99.0.2", under_b)
    # Only a initiates (the NAS side, behind NAT in real life); b learns a's endpoint from the
    # handshake. With both sides initiating at once (each with the other's endpoint and a 1 s
    # keepalive), wireguard-go sometimes kept a session the other side had dropped: in two
    # full-suite runs a's packets (4.2 KiB sent) never reached b's device (240 B received) while
    # b's reached a, nothing was dropped by the rulesets, and no new handshake came within 45 s
    # (WireGuard rekeys after 120 s).
    policy_b = _policy(tmp_path, "b", "ub", under_b, wg_b, "10.99.0.2", key_b, pub_a, "10.99.0.1", None)

    request.addfinalizer(lambda: [_remove_socket(n) for n in (wg_a, wg_b)])
    plan = a.edge("net", "plan", "-c", policy_a)
    assert f"link: create {wg_a} (WireGuard)" in plan.stdout, plan.stdout + plan.stderr
    for ns, policy in ((a, policy_a), (b, policy_b)):
        result = ns.edge("net", "apply", "-c", policy)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "started wireguard-go (userspace" in result.stdout or "kernel WireGuard" in result.stdout

    b.listen("b", 8080)  # a lost first WireGuard handshake is retried after 5 s: wait up to 45 s
    target = "10.99.0.2:8080"
    try:
        await_condition(lambda: a.probe([target], timeout=1.0) == {target: "pong b"}, timeout=45, what="the tunnel")
    except AssertionError as exc:  # seen twice in full-suite runs, never alone: say what the tunnel looked like
        raise AssertionError(f"{exc}\n{_diagnose(a, b, wg_a, wg_b)}") from None

    again = a.edge("net", "plan", "-c", policy_a)
    assert "no changes" in again.stdout, again.stdout + again.stderr
    status = a.edge("net", "status", "-c", policy_a)
    assert f"wireguard {wg_a}: userspace" in status.stdout or f"wireguard {wg_a}: kernel" in status.stdout
    assert "handshake never" not in status.stdout, status.stdout
    metrics = a.edge("net", "status", "-c", policy_a, "--metrics").stdout
    assert f'edge_wg_peer_last_handshake_age_seconds{{interface="{wg_a}",peer="other"}}' in metrics
    assert f'edge_wg_peer_receive_bytes_total{{interface="{wg_a}",peer="other"}}' in metrics

    # the client config for the peer names this host's public key and endpoint
    config = a.edge("wg", "peer-config", "-c", policy_a, "other", "--qr")
    assert config.returncode == 0, config.stderr
    assert f"PublicKey = {pub_a}" in config.stdout and "Endpoint = 192.168.77.1:51820" in config.stdout
    assert "Address = 10.99.0.2/24" in config.stdout and "AllowedIPs = 10.99.0.0/24" in config.stdout

    # rolling back the first apply removes the userspace interface again
    assert a.edge("net", "rollback").returncode == 0
    await_condition(lambda: wg_a not in a.exec("ip", "-o", "link").stdout, timeout=5, what="wireguard-go to go")
