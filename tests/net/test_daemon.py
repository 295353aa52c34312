"""``edge net run``: drift repair, the control socket's block list, SIGHUP, SIGTERM."""

from __future__ import annotations

import re
import signal
import subprocess
import time

import pytest

from edge.net import control, render
from edge.net.desired import desired_from_policy
from edge.policy import load_policy
from tests.net.conftest import spec_policy
from tests.net.netns import await_condition

pytestmark = pytest.mark.privileged

STRICT_FORWARD = "    - {from: mgmt, to: wan, action: accept}\n"


def _ping(path: str) -> bool:
    try:
        return control.request(path, {"op": "ping"}, 0.5).get("ok") is True
    except control.ControlError:
        return False


def _desired_text(policy: str) -> str:
    return render.normalize_listing(render.render_text(desired_from_policy(load_policy(policy)).ruleset))


def _listing(ns) -> str:
    return render.normalize_listing(ns.edge_table() or "")


def test_run_repairs_drift_blocks_and_reloads(lab, tmp_path) -> None:
    router = lab.router
    sock = str(tmp_path / "net.sock")
    policy = spec_policy(lab, tmp_path, reconcile="300ms", blocklist="2s", socket=sock)
    lab.router.listen("router", 80)
    lab.hosts["prod"].listen("prod", 8080)
    daemon = router.spawn_edge(
        "net",
        "run",
        "-c",
        policy,
        "--metrics-listen",
        "127.0.0.1:19902",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        await_condition(lambda: _ping(sock), timeout=15, what="the control socket")
        assert _listing(router) == _desired_text(policy)

        # a block-list entry blocks its address and expires with its timeout
        mgmt, web = lab.hosts["mgmt"], f"{lab.router_ip('mgmt')}:80"
        assert mgmt.probe([web]) == {web: "pong router"}
        started = time.monotonic()
        control.block(sock, lab.host_ip("mgmt"), 2)
        added_ms = (time.monotonic() - started) * 1000
        assert lab.host_ip("mgmt") in router.nft("list", "set", "inet", "edge", "blocklist").stdout
        assert mgmt.probe([web], timeout=0.5) == {web: None}
        await_condition(
            lambda: mgmt.probe([web], timeout=0.5) == {web: "pong router"}, timeout=10, what="the block to expire"
        )
        assert added_ms < 1000  # a sanity bound, not a benchmark (bench/net_bench.py measures it)
        with pytest.raises(control.ControlError, match="does not appear to be an IPv4 or IPv6 address"):
            control.block(sock, "not-an-ip", 10)

        # a long ban survives a re-apply of the table (drift repair)
        control.block(sock, "192.0.2.99", 600)
        control.block(sock, "2001:db8::99", 600)
        handles = router.nft("-a", "list", "chain", "inet", "edge", "forward").stdout
        handle = re.search(r'comment "forward prod->iot" # handle (\d+)', handles).group(1)
        router.nft("delete", "rule", "inet", "edge", "forward", "handle", handle)
        assert "forward prod->iot" not in (router.edge_table() or "")
        await_condition(lambda: _listing(router) == _desired_text(policy), timeout=10, what="drift repair")
        assert "192.0.2.99" in router.nft("list", "set", "inet", "edge", "blocklist").stdout
        assert "2001:db8::99" in router.nft("list", "set", "inet", "edge", "blocklist6").stdout

        # metrics over HTTP (inside the router namespace's own loopback)
        scrape = router.python(
            "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:19902/metrics', timeout=5)"
            ".read().decode())"
        ).stdout
        assert 'edge_net_reconciles_total{result="repaired"}' in scrape
        assert 'edge_net_blocklist_requests_total{op="block"}' in scrape
        assert 'edge_net_blocklist_entries{set="blocklist6"} 1' in scrape

        # SIGHUP reloads the policy file
        strict = spec_policy(lab, tmp_path, reconcile="300ms", blocklist="2s", socket=sock, forward=STRICT_FORWARD)
        with open(policy, "w") as handle_out, open(strict) as handle_in:
            handle_out.write(handle_in.read())
        daemon.send_signal(signal.SIGHUP)
        prod = f"{lab.host_ip('prod')}:8080"
        await_condition(lambda: _listing(router) == _desired_text(strict), timeout=10, what="reload")
        assert mgmt.probe([prod], timeout=0.5) == {prod: None}
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            code = daemon.wait(timeout=10)
        except subprocess.TimeoutExpired:
            daemon.kill()
            code = None
    log = daemon.stderr.read() if daemon.stderr else ""
    assert code == 0, log
    assert "drift" in log and "repaired" in log, log
    assert router.edge_table() is not None  # stopping leaves the firewall in place
