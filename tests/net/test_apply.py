"""Apply, commit-confirmed rollback, foreign tables, failed applies, VLANs: in namespaces."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from edge.net import render
from tests.net.conftest import spec_policy
from tests.net.netns import await_condition, veth

pytestmark = pytest.mark.privileged
GOLDEN = Path(__file__).parent / "golden"

FOREIGN = """table ip foreign {
	chain keep {
		type filter hook input priority -10; policy accept;
		tcp dport 4242 counter accept
	}
}
"""
STRICT_FORWARD = "    - {from: mgmt, to: wan, action: accept}\n"


@pytest.mark.parametrize("name", sorted(p.stem for p in GOLDEN.glob("*.yaml")))
def test_kernel_lists_exactly_the_golden_text(netns, name) -> None:
    """The JSON batch, applied, lists as the golden text: the two renderers agree."""
    ns = netns()
    code = (
        "import sys\n"
        "from edge.net import nft, render\n"
        "from edge.net.desired import desired_from_policy\n"
        "from edge.policy import load_policy\n"
        "d = desired_from_policy(load_policy(sys.argv[1]))\n"
        "nft.run_batch(render.render_batch(d.ruleset))\n"
        "sys.stdout.write(nft.list_table_text())\n"
    )
    listed = ns.python(code, str(GOLDEN / f"{name}.yaml")).stdout
    assert render.normalize_listing(listed) == render.normalize_listing((GOLDEN / f"{name}.nft").read_text())


def watchers(ns) -> list[str]:
    """Confirm watchers alive in the namespace."""
    out = []
    for pid in ns.exec("ip", "netns", "pids", ns.name).stdout.split():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                if b"edge.net.confirm" in handle.read():
                    out.append(pid)
        except OSError:
            pass
    return out


def test_unconfirmed_apply_rolls_back_and_foreign_table_survives(lab, tmp_path) -> None:
    router = lab.router
    router.exec("nft", "-f", "-", input=FOREIGN)
    lab.hosts["wan"].listen("wan", 8080)
    lab.hosts["prod"].listen("prod", 8080)
    wan, prod = f"{lab.host_ip('wan')}:8080", f"{lab.host_ip('prod')}:8080"
    mgmt = lab.hosts["mgmt"]

    assert router.edge("net", "apply", "-c", spec_policy(lab, tmp_path)).returncode == 0
    loose_table = router.edge_table()
    assert mgmt.probe([prod, wan]) == {prod: "pong prod", wan: "pong wan"}
    foreign = router.nft("list", "table", "ip", "foreign").stdout
    assert "tcp dport 4242" in foreign

    strict = spec_policy(lab, tmp_path, forward=STRICT_FORWARD)
    result = router.edge("net", "apply", "-c", strict, "--confirm-within", "2s")
    assert result.returncode == 0, result.stderr
    assert "rolls back at" in result.stdout
    assert mgmt.probe([prod, wan]) == {prod: None, wan: "pong wan"}  # the strict policy is live
    assert router.nft("list", "table", "ip", "foreign").stdout == foreign

    # nobody confirms: the detached watcher restores the previous table by itself
    assert watchers(router)
    await_condition(lambda: router.edge_table() == loose_table, timeout=10, what="rollback")
    await_condition(lambda: not watchers(router), timeout=5, what="the confirm watcher to exit")
    assert mgmt.probe([prod, wan]) == {prod: "pong prod", wan: "pong wan"}
    assert router.nft("list", "table", "ip", "foreign").stdout == foreign
    status = router.edge("net", "status", "-c", spec_policy(lab, tmp_path)).stdout
    assert "no drift" in status and "pending" not in status

    # confirmed in time: it stays
    result = router.edge("net", "apply", "-c", strict, "--confirm-within", "1s")
    assert result.returncode == 0, result.stderr
    assert "confirmed" in router.edge("net", "confirm").stdout
    strict_table = router.edge_table()
    assert strict_table != loose_table
    await_condition(lambda: not watchers(router), timeout=5, what="the confirm watcher to exit")
    assert router.edge_table() == strict_table

    # manual rollback undoes the last apply; the foreign table is still untouched
    result = router.edge("net", "rollback")
    assert result.returncode == 0 and "rolled back" in result.stdout, result.stdout + result.stderr
    assert router.edge_table() == loose_table
    assert router.nft("list", "table", "ip", "foreign").stdout == foreign


def test_first_apply_rolled_back_removes_table_and_addresses(netns, tmp_path) -> None:
    router, host = netns("edgr"), netns("edgh")
    veth(router, "lan0", host, "eth0")
    router.exec("nft", "-f", "-", input=FOREIGN)
    policy = tmp_path / "p.yaml"
    policy.write_text(
        "version: 1\nnetwork:\n  zones:\n    lan: {interfaces: [lan0], address: 10.5.0.1/24}\n"
        "  input: [{from: lan, ports: [22/tcp], action: accept}]\n"
    )
    assert router.edge("net", "apply", "-c", str(policy), "--confirm-within", "30s").returncode == 0
    assert "10.5.0.1/24" in router.exec("ip", "-o", "addr", "show", "lan0").stdout
    assert router.edge_table() is not None
    result = router.edge("net", "rollback")
    assert result.returncode == 0, result.stderr
    assert router.edge_table() is None
    assert "10.5.0.1/24" not in router.exec("ip", "-o", "addr", "show", "lan0").stdout
    assert "tcp dport 4242" in router.nft("list", "table", "ip", "foreign").stdout
    assert "nothing to roll back" in router.edge("net", "rollback").stdout


def test_failed_apply_undoes_finished_steps_and_keeps_previous_table(netns, tmp_path) -> None:
    router, host = netns("edgr"), netns("edgh")
    veth(router, "aa0", host, "eth0")
    good = tmp_path / "good.yaml"
    good.write_text("version: 1\nnetwork:\n  zones:\n    lan: {interfaces: [aa0]}\n")
    assert router.edge("net", "apply", "-c", str(good)).returncode == 0
    before = router.edge_table()
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "version: 1\nnetwork:\n  zones:\n"
        "    lan: {interfaces: [aa0], address: 10.6.0.1/24}\n"
        "    gone: {interfaces: [zz9], address: 10.7.0.1/24}\n"
        "  forward: [{from: lan, to: gone, action: accept}]\n"
    )
    result = router.edge("net", "apply", "-c", str(bad))
    assert result.returncode == 1
    assert "zz9" in result.stderr
    assert "10.6.0.1" not in router.exec("ip", "-o", "addr", "show", "aa0").stdout  # compensated
    assert router.edge_table() == before


def test_vlan_without_8021q_fails_naming_the_kernel_option(netns, tmp_path) -> None:
    router, host = netns("edgr"), netns("edgh")
    veth(router, "trunk0", host, "eth0")
    policy = tmp_path / "vlan.yaml"
    policy.write_text(
        "version: 1\nnetwork:\n  zones:\n    lan: {interfaces: [trunk0]}\n"
        "    iot: {vlan: {parent: trunk0, id: 20}, address: 10.0.20.1/24}\n"
    )
    plan = router.edge("net", "plan", "-c", str(policy))
    assert "link: create trunk0.20 (VLAN 20 on trunk0)" in plan.stdout
    result = router.edge("net", "apply", "-c", str(policy))
    if result.returncode == 0:  # a kernel with 802.1Q: the link must be there
        assert "vlan id 20" in router.exec("ip", "-d", "link", "show", "trunk0.20").stdout
        return
    assert result.returncode == 1
    assert "CONFIG_VLAN_8021Q" in result.stderr
    assert router.edge_table() is None  # nothing applied


def test_bad_input_exits_2(netns, tmp_path) -> None:
    ns = netns()
    policy = tmp_path / "bad.yaml"
    policy.write_text(
        "version: 1\nnetwork:\n  zones:\n    lan: {interfaces: [x0]}\n"
        "  forward: [{from: lan, to: nope, action: accept}]\n"
    )
    result = ns.edge("net", "apply", "-c", str(policy))
    assert result.returncode == 2 and "nope" in result.stderr
    good = tmp_path / "good.yaml"
    good.write_text("version: 1\nnetwork:\n  zones:\n    lan: {interfaces: [x0]}\n")
    assert ns.edge("net", "apply", "-c", str(good), "--confirm-within", "soon").returncode == 2
    assert os.path.exists("/run/netns/" + ns.name)
