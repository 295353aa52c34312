"""The controller's pure parts, without root: plan, control protocol, metrics, keys, configs."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.net import control, metrics, render
from edge.net.desired import AddressSpec, desired_from_policy
from edge.net.diff import Managed, make_plan
from edge.net.live import LiveLink, LiveNet, LiveWireGuard
from edge.policy import load_policy, parse_policy
from edge.wg import config as wg_config
from edge.wg import keys
from edge.wg.device import DeviceConfig, PeerState

GOLDEN = Path(__file__).parent / "golden"


def _desired(name: str = "small"):
    return desired_from_policy(load_policy(str(GOLDEN / f"{name}.yaml")))


def _live(table: str | None, links=("eth0", "eth1", "eth2"), addresses=()) -> LiveNet:
    return LiveNet(
        links={n: LiveLink(n, i + 2, "veth", up=True) for i, n in enumerate(links)},
        addresses=tuple(AddressSpec(i, a) for i, a in addresses),
        table_text=table,
    )


def test_plan_on_a_bare_machine_adds_address_and_table() -> None:
    plan = make_plan(_desired(), _live(None))
    assert [str(c) for c in plan.changes] == [
        "address: add 192.168.1.1/24 (on eth1)",
        "ruleset: create table inet edge (41 lines differ)",
    ]
    assert plan.ruleset_diff[0].startswith("--- live")


def test_plan_is_empty_when_live_matches() -> None:
    desired = _desired()
    text = render.render_text(desired.ruleset).replace('{ "eth1", "eth2" }', '{ "eth2", "eth1" }')  # nft's order
    plan = make_plan(desired, _live(text, addresses=[("eth1", "192.168.1.1/24")]))
    assert plan.empty and "no changes" in plan.render()


def test_plan_shows_a_deleted_rule_as_drift() -> None:
    desired = _desired()
    text = render.render_text(desired.ruleset)
    drifted = "\n".join(line for line in text.splitlines() if "forward lan->wan" not in line) + "\n"
    plan = make_plan(desired, _live(drifted, addresses=[("eth1", "192.168.1.1/24")]))
    assert [c.action for c in plan.changes] == ["replace"]
    assert any(line.startswith("+") and "forward lan->wan" in line for line in plan.ruleset_diff)


def test_plan_removes_only_what_edge_created() -> None:
    desired = _desired()
    text = render.render_text(desired.ruleset)
    live = _live(text, addresses=[("eth1", "192.168.1.1/24"), ("eth1", "10.1.1.1/24"), ("eth2", "10.2.2.2/24")])
    plan = make_plan(desired, live, managed=Managed(addresses=frozenset({("eth1", "10.1.1.1/24")})))
    assert [str(c) for c in plan.changes] == ["address: delete 10.1.1.1/24 (on eth1, no longer in the policy)"]


def test_plan_creates_vlans_and_notes_missing_interfaces() -> None:
    plan = make_plan(_desired("spec"), _live(None, links=("eth1",)))
    creates = [c.subject for c in plan.changes if c.action == "create" and c.area == "link"]
    assert creates == ["eth1.1", "eth1.10", "eth1.20", "eth1.30", "wg0"]
    assert any("eth0 does not exist" in n for n in plan.notes)


def _device(key: str, peers: tuple[PeerState, ...], port: int = 51820) -> DeviceConfig:
    return DeviceConfig(key, port, peers)


def test_plan_wireguard_peer_changes() -> None:
    desired = _desired()
    key = keys.generate_private_key()
    peer = PeerState(keys.public_key(keys.generate_private_key()), ("10.99.0.2/32",), None, 25)
    live = _live(
        render.render_text(desired.ruleset),
        links=("eth0", "eth1", "eth2", "wg0"),
        addresses=[("eth1", "192.168.1.1/24")],
    )
    live = LiveNet(
        live.links,
        live.addresses,
        live.table_text,
        wireguard={"wg0": LiveWireGuard("wg0", "userspace", _device(key, ()))},
    )
    plan = make_plan(desired, live, {"wg0": _device(key, (peer,))})
    assert len(plan.changes) == 1 and "add peer" in plan.changes[0].detail
    same = LiveNet(
        live.links,
        live.addresses,
        live.table_text,
        wireguard={"wg0": LiveWireGuard("wg0", "userspace", _device(key, (peer,)))},
    )
    assert make_plan(desired, same, {"wg0": _device(key, (peer,))}).empty


def test_restore_batch_keeps_current_bans_and_drops_handles() -> None:
    listing = [
        {"table": {"family": "inet", "name": "edge", "handle": 3}},
        {
            "set": {
                "family": "inet",
                "table": "edge",
                "name": "blocklist",
                "type": "ipv4_addr",
                "handle": 4,
                "flags": ["timeout"],
                "timeout": 60,
                "elem": [{"elem": {"val": "192.0.2.1", "timeout": 60, "expires": 10}}],
            }
        },
        {
            "rule": {
                "family": "inet",
                "table": "edge",
                "chain": "input",
                "handle": 9,
                "expr": [{"counter": {"packets": 5, "bytes": 300}}, {"accept": None}],
            }
        },
    ]
    old = render.restore_batch(listing)["nftables"]
    assert old[4]["add"]["set"]["elem"] == [{"elem": {"val": "192.0.2.1", "timeout": 10}}]
    assert all("handle" not in next(iter(c["add"].values())) for c in old[3:])
    assert old[5]["add"]["rule"]["expr"][0] == {"counter": None}
    new = render.restore_batch(listing, [render.Element("blocklist", "192.0.2.2", 30)])["nftables"]
    assert "elem" not in new[4]["add"]["set"]
    assert new[-1]["add"]["element"]["elem"] == [{"elem": {"val": "192.0.2.2", "timeout": 30}}]


# -- control protocol ------------------------------------------------------------------------
def test_handle_validates_and_routes_to_the_right_set() -> None:
    calls = []

    def change(verb, elements):
        calls.append((verb, elements))

    assert control.handle({"op": "block", "address": "192.0.2.7", "timeout": 30}, change) == {"ok": True}
    assert control.handle({"op": "block", "address": "::ffff:192.0.2.8"}, change) == {"ok": True}
    assert control.handle({"op": "unblock", "address": "2001:db8::1"}, change) == {"ok": True}
    assert calls == [
        ("add", [render.Element("blocklist", "192.0.2.7", 30)]),
        ("add", [render.Element("blocklist", "192.0.2.8", None)]),
        ("delete", [render.Element("blocklist6", "2001:db8::1", None)]),
    ]
    assert not control.handle({"op": "block", "address": "x"}, change)["ok"]
    assert not control.handle({"op": "block", "address": "192.0.2.1", "timeout": -1}, change)["ok"]
    assert not control.handle({"op": "explode"}, change)["ok"]
    assert not control.handle([1, 2], change)["ok"]
    assert control.handle({"op": "ping"}, change) == {"ok": True, "version": 1}


@given(
    st.one_of(
        st.none(),
        st.integers(),
        st.text(),
        st.lists(st.integers()),
        st.dictionaries(st.text(max_size=8), st.one_of(st.text(max_size=20), st.integers(), st.floats())),
    )
)
def test_handle_never_raises(request) -> None:
    reply = control.handle(request, lambda _v, _e: None)
    assert isinstance(reply, dict) and "ok" in reply


def test_client_and_server_over_a_real_unix_socket(tmp_path) -> None:
    path = str(tmp_path / "c.sock")
    seen = []

    async def main():
        server = await control.serve(path, lambda verb, elements: seen.append((verb, elements)))
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, control.block, path, "198.51.100.4", 120)
        with pytest.raises(control.ControlError, match="timeout"):
            await loop.run_in_executor(None, control.block, path, "198.51.100.4", 0)
        reply = await loop.run_in_executor(None, control.request, path, {"op": "ping"})
        # a frame above the limit closes the connection
        reader, writer = await asyncio.open_unix_connection(path)
        writer.write((control.MAX_MESSAGE + 1).to_bytes(4, "big"))
        await writer.drain()
        assert await reader.read() == b""
        writer.close()
        server.close()
        return reply

    assert asyncio.run(main()) == {"ok": True, "version": 1}
    assert seen == [("add", [render.Element("blocklist", "198.51.100.4", 120)])]
    with pytest.raises(control.ControlError):
        control.block(str(tmp_path / "absent.sock"), "192.0.2.1", 1)


def test_frame_format() -> None:
    frame = control.encode({"op": "ping"})
    assert int.from_bytes(frame[:4], "big") == len(frame) - 4
    assert msgpack.unpackb(frame[4:]) == {"op": "ping"}


# -- metrics ------------------------------------------------------------------------------------
def test_metrics_per_zone_pair_and_peer() -> None:
    table = [
        {"set": {"name": "blocklist", "elem": ["192.0.2.1", "192.0.2.2"]}},
        {
            "rule": {
                "chain": "forward",
                "comment": "forward prod->wan",
                "expr": [{"counter": {"packets": 7, "bytes": 700}}, {"accept": None}],
            }
        },
        {
            "rule": {
                "chain": "forward",
                "comment": "forward default drop",
                "expr": [{"counter": {"packets": 3, "bytes": 120}}],
            }
        },
        {
            "rule": {
                "chain": "input",
                "comment": "input any",
                "expr": [{"counter": {"packets": 1, "bytes": 60}}, {"accept": None}],
            }
        },
        {
            "rule": {
                "chain": "input",
                "comment": "input any",
                "expr": [{"counter": {"packets": 2, "bytes": 60}}, {"accept": None}],
            }
        },
    ]
    peer = PeerState("PK", ("10.99.0.2/32",), last_handshake=1000.0, rx_bytes=10, tx_bytes=20)
    live = LiveNet({}, (), "table", table, {"wg0": LiveWireGuard("wg0", "userspace", DeviceConfig(None, 1, (peer,)))})
    text = metrics.render_metrics(live, 1030.0, {("wg0", "PK"): "nas"}, drift=False)
    assert 'edge_net_forward_packets_total{from="prod",to="wan",action="accept"} 7' in text
    assert 'edge_net_dropped_packets_total{chain="forward",reason="default"} 3' in text
    assert 'edge_net_input_packets_total{from="any",action="accept"} 3' in text
    assert 'edge_net_blocklist_entries{set="blocklist"} 2' in text
    assert 'edge_wg_peer_last_handshake_age_seconds{interface="wg0",peer="nas"} 30' in text
    assert 'edge_wg_userspace{interface="wg0"} 1' in text
    assert "edge_net_drift 0" in text
    assert text.count("# TYPE edge_net_input_packets_total counter") == 1


# -- WireGuard keys and configs -----------------------------------------------------------------
def test_keys_round_trip() -> None:
    private = keys.generate_private_key()
    public = keys.public_key(private)
    assert len(private) == 44 and len(public) == 44 and private != public
    assert keys.from_hex(keys.to_hex(public)) == public
    with pytest.raises(ValueError):
        keys.decode("c2hvcnQ=")


def test_peer_config_for_the_spec_phone(tmp_path) -> None:
    policy = parse_policy((GOLDEN / "spec.yaml").read_text())
    wg = policy.network.wireguard["wg0"]
    host_public = keys.public_key(keys.generate_private_key())
    text = wg_config.peer_config("wg0", wg, "phone", host_public)
    assert "Address = 10.99.0.10/24" in text
    assert f"PublicKey = {host_public}" in text and "Endpoint = vps.example.com:51820" in text
    assert "AllowedIPs = 10.99.0.0/24" in text and wg_config.PRIVATE_KEY_PLACEHOLDER in text
    nas = wg_config.peer_config("wg0", wg, "nas", host_public, extra_allowed_ips=("10.0.1.0/24",))
    assert "PersistentKeepalive = 25" in nas and "AllowedIPs = 10.99.0.0/24, 10.0.1.0/24" in nas


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, **(env or {})),
    )


def test_wg_keygen_and_peer_config_cli(tmp_path) -> None:
    result = _cli("wg", "keygen")
    private = result.stdout.strip()
    assert result.returncode == 0 and keys.public_key(private) in result.stderr
    key_file = tmp_path / "wg0.key"
    key_file.write_text(private + "\n")
    policy = tmp_path / "p.yaml"
    policy.write_text((GOLDEN / "spec.yaml").read_text().replace("/etc/edge/wg0.key", str(key_file)))
    out = _cli("wg", "peer-config", "-c", str(policy), "phone", "--qr")
    assert out.returncode == 0, out.stderr
    assert f"PublicKey = {keys.public_key(private)}" in out.stdout and "█" in out.stdout
    assert _cli("wg", "peer-config", "-c", str(policy), "nobody").returncode == 2


def test_net_commands_reject_bad_input(tmp_path) -> None:
    no_net = tmp_path / "p.yaml"
    no_net.write_text("version: 1\nlisteners:\n  web: {listen: ['127.0.0.1:8080']}\n")
    assert _cli("net", "plan", "-c", str(no_net)).returncode == 2
    # (never a policy with network: here: this test runs in the root namespace)
    assert _cli("net", "apply", "-c", str(no_net), "--confirm-within", "-5s").returncode == 2
    assert _cli("net", "apply", "-c", str(no_net)).returncode == 2
