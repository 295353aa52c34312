"""Prometheus text for the controller: nft counters per zone pair, drops, block list, WireGuard.

Pure: takes the live table JSON (rules carry edge's comments, ``forward prod->wan``),
the live WireGuard devices, peer names and ``now``; returns exposition text. The
daemon adds its own counters through ``extra``.
"""

from __future__ import annotations

from collections import defaultdict

from edge.net.live import LiveNet

_VERDICTS = ("accept", "drop", "reject", "masquerade")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: dict[str, str]) -> str:
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}" if labels else ""


class _Out:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.seen: set[str] = set()

    def sample(self, name: str, kind: str, help_text: str, labels: dict[str, str], value: float) -> None:
        if name not in self.seen:
            self.seen.add(name)
            self.lines.append(f"# HELP {name} {help_text}")
            self.lines.append(f"# TYPE {name} {kind}")
        text = repr(float(value)) if isinstance(value, float) and not value.is_integer() else str(int(value))
        self.lines.append(f"{name}{_labels(labels)} {text}")


def rule_counters(table_json: list[dict] | None) -> dict[tuple[str, str, str], tuple[int, int]]:
    """(chain, comment, verdict) -> (packets, bytes), summed over rules with one label."""
    out: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    for obj in table_json or ():
        rule = obj.get("rule")
        if not rule or "comment" not in rule:
            continue
        packets = size = 0
        verdict = "count"
        for expr in rule.get("expr", ()):
            if "counter" in expr and isinstance(expr["counter"], dict):
                packets, size = expr["counter"].get("packets", 0), expr["counter"].get("bytes", 0)
            for v in _VERDICTS:
                if v in expr:
                    verdict = v
        slot = out[(rule["chain"], rule["comment"], verdict)]
        slot[0] += packets
        slot[1] += size
    return {k: (v[0], v[1]) for k, v in out.items()}


def render_metrics(
    live: LiveNet,
    now: float,
    peer_names: dict[tuple[str, str], str] | None = None,
    drift: bool | None = None,
    extra: dict[str, tuple[str, str, dict[tuple[tuple[str, str], ...], float]]] | None = None,
) -> str:
    out = _Out()
    out.sample("edge_net_table_present", "gauge", "1 when table inet edge exists", {}, live.table_text is not None)
    for (chain, comment, verdict), (packets, size) in sorted(rule_counters(live.table_json).items()):
        if comment.startswith("forward ") and "->" in comment[8:] and verdict != "count":
            src, dst = comment[8:].split("->", 1)
            labels = {"from": src, "to": dst, "action": verdict}
            out.sample(
                "edge_net_forward_packets_total",
                "counter",
                "Forwarded packets per zone pair and rule action",
                labels,
                packets,
            )
            out.sample(
                "edge_net_forward_bytes_total", "counter", "Forwarded bytes per zone pair and rule action", labels, size
            )
        elif comment.startswith("input ") and verdict != "count":
            labels = {"from": comment[6:], "action": verdict}
            out.sample(
                "edge_net_input_packets_total",
                "counter",
                "Packets to this host per zone and rule action",
                labels,
                packets,
            )
        elif comment.endswith("default drop") or comment in ("blocklist", "blocklist6"):
            reason = "default" if comment.endswith("default drop") else comment
            out.sample(
                "edge_net_dropped_packets_total",
                "counter",
                "Dropped packets by chain and reason",
                {"chain": chain, "reason": reason},
                packets,
            )
            out.sample(
                "edge_net_dropped_bytes_total",
                "counter",
                "Dropped bytes by chain and reason",
                {"chain": chain, "reason": reason},
                size,
            )
        elif comment.startswith("masquerade "):
            out.sample(
                "edge_net_masquerade_packets_total",
                "counter",
                "Connections masqueraded (first packets)",
                {"rule": comment[11:]},
                packets,
            )
    for obj in live.table_json or ():
        body = obj.get("set")
        if body and body.get("name") in ("blocklist", "blocklist6"):
            out.sample(
                "edge_net_blocklist_entries",
                "gauge",
                "Addresses on the block list",
                {"set": body["name"]},
                len(body.get("elem", ())),
            )
    if drift is not None:
        out.sample("edge_net_drift", "gauge", "1 when the kernel differs from the policy", {}, drift)
    for name, wg in sorted(live.wireguard.items()):
        out.sample(
            "edge_wg_userspace",
            "gauge",
            "1 when the interface is a userspace implementation",
            {"interface": name},
            wg.backend == "userspace",
        )
        if wg.config is None:
            continue
        for peer in wg.config.peers:
            label = (peer_names or {}).get((name, peer.public_key), peer.public_key)
            labels = {"interface": name, "peer": label}
            if peer.last_handshake:
                out.sample(
                    "edge_wg_peer_last_handshake_age_seconds",
                    "gauge",
                    "Seconds since the last handshake",
                    labels,
                    round(max(0.0, now - peer.last_handshake), 3),
                )
            out.sample(
                "edge_wg_peer_receive_bytes_total", "counter", "Bytes received from the peer", labels, peer.rx_bytes
            )
            out.sample("edge_wg_peer_transmit_bytes_total", "counter", "Bytes sent to the peer", labels, peer.tx_bytes)
    for name, (kind, help_text, samples) in sorted((extra or {}).items()):
        for labels, value in sorted(samples.items()):
            out.sample(name, kind, help_text, dict(labels), value)
    return "\n".join(out.lines) + "\n"
