"""Controller benchmarks, inside a throwaway network namespace (never the root one).

    python bench/net_bench.py [--rounds N]

Measures: applying a 5-zone policy (the SPEC example's zones on veths), applying a
policy with 1,000 block-list entries (one transaction), and adding one block-list entry
through the control socket of a running ``edge net run``. Prints the figures; needs
root, ``ip`` and nft. Targets (issue 5): < 1 s, one transaction, < 10 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

ZONES = {"wan": "10.9.0", "mgmt": "10.0.1", "prod": "10.0.10", "iot": "10.0.20", "guest": "10.0.30"}

# Runs inside the namespace: times apply() in-process (no interpreter start-up in the figure).
_INSIDE = textwrap.dedent(
    """
    import json, sys, time
    from edge.net import apply, nft, render
    from edge.net.desired import desired_from_policy
    from edge.net.state import StateDir
    from edge.policy import load_policy
    path, rounds = sys.argv[1], int(sys.argv[2])
    desired = desired_from_policy(load_policy(path))
    state = StateDir()
    out = {}
    t = time.perf_counter(); apply.apply(desired, state); out["first_apply_s"] = time.perf_counter() - t
    times = []
    for _ in range(rounds):
        nft.run_batch(render.render_delete_batch())      # force a full re-apply each round
        t = time.perf_counter(); apply.apply(desired, state); times.append(time.perf_counter() - t)
    out["apply_s"] = times
    elements = [render.Element("blocklist", f"198.18.{i // 250}.{i % 250 + 1}", 3600) for i in range(1000)]
    t = time.perf_counter()
    nft.run_batch(render.render_batch(desired.ruleset, elements))
    out["apply_1000_blocklist_s"] = time.perf_counter() - t
    live = nft.list_table_json()
    out["blocklist_entries_after"] = len(nft.blocklist_elements(live))
    print(json.dumps(out))
    """
)


def sh(*cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("net_bench: needs root (it creates a network namespace)", file=sys.stderr)
        return 1
    ns = f"edgebench{os.getpid()}"
    sh("ip", "netns", "add", ns)
    tmp = tempfile.mkdtemp(prefix="edge-net-bench-")
    daemon = None
    try:
        inside = ["ip", "netns", "exec", ns]
        sh(*inside, "ip", "link", "set", "lo", "up")
        for zone in ZONES:
            sh(*inside, "ip", "link", "add", f"b{zone}", "type", "veth", "peer", "name", f"p{zone}")
        zones = "\n".join(f"    {z}: {{interfaces: [b{z}], address: {s}.1/24}}" for z, s in ZONES.items())
        sock = os.path.join(tmp, "net.sock")
        policy = os.path.join(tmp, "bench.yaml")
        with open(policy, "w") as handle:
            handle.write(
                "version: 1\nnetwork:\n  reconcile_interval: 1h\n"
                f"  control_socket: {sock}\n  zones:\n{zones}\n"
                "  forward:\n"
                "    - {from: mgmt,  to: any,        action: accept}\n"
                "    - {from: prod,  to: [iot, wan], action: accept}\n"
                "    - {from: guest, to: wan,        action: accept}\n"
                "    - {from: iot,   to: wan,        action: drop}\n"
                "  input:\n"
                '    - {from: mgmt, ports: ["22/tcp", "9901/tcp"], action: accept}\n'
                '    - {from: any,  ports: ["80/tcp", "443/tcp", "51820/udp"], action: accept}\n'
                "  masquerade: [{from: [prod, iot, guest], to: wan}]\n"
                "  blocklist: {timeout: 1h}\n"
            )
        env = dict(os.environ, EDGE_NET_STATE_DIR=os.path.join(tmp, "state"))
        result = sh(*inside, sys.executable, "-c", _INSIDE, policy, str(args.rounds), cwd=ROOT, env=env)
        figures = json.loads(result.stdout)

        # control socket latency against a running daemon
        daemon = subprocess.Popen(
            [*inside, sys.executable, "-m", "edge", "net", "run", "-c", policy],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        from edge.net import control

        deadline = time.monotonic() + 20
        while True:
            try:
                control.request(sock, {"op": "ping"}, 0.5)
                break
            except control.ControlError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        latencies = []
        for i in range(200):
            t = time.perf_counter()
            control.block(sock, f"198.19.{i // 250}.{i % 250 + 1}", 600)
            latencies.append((time.perf_counter() - t) * 1000)
        latencies.sort()

        apply_ms = [s * 1000 for s in figures["apply_s"]]
        print("edge net benchmarks (in a fresh network namespace)")
        print(f"  5-zone policy, first apply (links+addresses+table): {figures['first_apply_s'] * 1000:8.1f} ms")
        print(
            f"  5-zone policy, table re-apply (median of {len(apply_ms)}):      "
            f"{statistics.median(apply_ms):8.1f} ms  (max {max(apply_ms):.1f})"
        )
        print(
            f"  1,000 block-list entries, one transaction:          "
            f"{figures['apply_1000_blocklist_s'] * 1000:8.1f} ms  ({figures['blocklist_entries_after']} listed)"
        )
        print(
            f"  control socket block (n={len(latencies)}): median {statistics.median(latencies):.2f} ms, "
            f"p99 {latencies[int(len(latencies) * 0.99) - 1]:.2f} ms, max {latencies[-1]:.2f} ms"
        )
        return 0
    finally:
        if daemon is not None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(timeout=10)
            except subprocess.TimeoutExpired:
                daemon.kill()
        for pid in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


if __name__ == "__main__":
    sys.exit(main())
