"""The plan: what ``apply`` would change to turn the live state into the desired one.

Pure: takes ``DesiredNet``, ``LiveNet``, the desired WireGuard device configs (keys
already read by the shell) and the record of what edge created before, and returns a
``Plan``. ``apply`` executes exactly these changes, so ``plan`` never lies about
``apply``. Drift is a non-empty plan. Addresses and links edge did not create are never
removed; a missing plain interface is reported but does not stop an apply (nft matches
interfaces by name, so rules start working when the interface appears).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Literal

from edge.net import render
from edge.net.desired import DesiredNet
from edge.net.live import LiveNet
from edge.wg.device import DeviceConfig

Area = Literal["ruleset", "link", "address", "wireguard"]
Action = Literal["create", "remove", "up", "add", "delete", "configure", "replace", "missing"]


@dataclass(frozen=True, slots=True)
class Change:
    area: Area
    action: Action
    subject: str  # link or interface name, address, "inet edge"
    detail: str = ""
    data: tuple = ()  # what apply needs: (parent, vlan_id) for a VLAN, (interface, address) ...

    def __str__(self) -> str:
        text = f"{self.area}: {self.action} {self.subject}"
        return f"{text} ({self.detail})" if self.detail else text


@dataclass(frozen=True, slots=True)
class Managed:
    """What edge created in this namespace (so it may remove it when no longer desired)."""

    links: frozenset[str] = frozenset()
    addresses: frozenset[tuple[str, str]] = frozenset()

    def to_json(self) -> dict:
        return {"links": sorted(self.links), "addresses": sorted(list(a) for a in self.addresses)}

    @classmethod
    def from_json(cls, data: dict | None) -> Managed:
        data = data or {}
        return cls(frozenset(data.get("links", ())), frozenset(tuple(a) for a in data.get("addresses", ())))


@dataclass(frozen=True, slots=True)
class Plan:
    changes: tuple[Change, ...]
    ruleset_diff: tuple[str, ...] = ()  # unified diff lines, live -> desired
    notes: tuple[str, ...] = field(default=())  # reported, never acted on

    @property
    def empty(self) -> bool:
        return not self.changes

    def render(self) -> str:
        if self.empty:
            lines = ["no changes: the kernel matches the policy"]
        else:
            lines = [str(c) for c in self.changes if c.area != "ruleset"]
            if self.ruleset_diff:
                lines.append("ruleset: replace table inet edge:")
                lines.extend("  " + line.rstrip("\n") for line in self.ruleset_diff)
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines) + "\n"


def ruleset_diff(desired_text: str, live_text: str | None) -> tuple[str, ...]:
    want = render.normalize_listing(desired_text)
    have = render.normalize_listing(live_text) if live_text else ""
    if want == have:
        return ()
    return tuple(
        difflib.unified_diff(have.splitlines(keepends=True), want.splitlines(keepends=True), "live", "policy", n=1)
    )


def make_plan(
    desired: DesiredNet,
    live: LiveNet,
    wireguard: dict[str, DeviceConfig] | None = None,
    managed: Managed = Managed(),
) -> Plan:
    changes: list[Change] = []
    notes: list[str] = list(desired.warnings)
    desired_links = {link.name for link in desired.links}
    for link in desired.links:
        have = live.links.get(link.name)
        if link.kind == "existing":
            if have is None:
                notes.append(f"interface {link.name} does not exist (yet); its rules match once it appears")
            continue
        if have is None:
            if link.kind == "vlan":
                detail = f"VLAN {link.vlan_id} on {link.parent}"
                changes.append(Change("link", "create", link.name, detail, ("vlan", link.parent, link.vlan_id)))
            else:
                changes.append(Change("link", "create", link.name, "WireGuard", ("wireguard",)))
            changes.append(Change("link", "up", link.name))
            continue
        if link.kind == "vlan" and (have.kind != "vlan" or have.vlan_id != link.vlan_id or have.parent != link.parent):
            notes.append(
                f"link {link.name} exists but is not VLAN {link.vlan_id} on {link.parent} "
                f"(kind={have.kind}, id={have.vlan_id}, parent={have.parent}); edge leaves it as it is"
            )
        if not have.up:
            changes.append(Change("link", "up", link.name))
    for name in sorted(managed.links - desired_links):
        if name in live.links:
            changes.append(Change("link", "remove", name, "created by edge, no longer in the policy"))
    live_addresses = {(a.interface, a.address) for a in live.addresses}
    for spec in desired.addresses:
        key = (spec.interface, spec.address)
        if key not in live_addresses:
            if spec.interface not in live.links and spec.interface not in desired_links - _existing(desired):
                notes.append(f"address {spec.address} needs interface {spec.interface}, which does not exist")
            changes.append(Change("address", "add", spec.address, f"on {spec.interface}", key))
    wanted_addresses = {(a.interface, a.address) for a in desired.addresses}
    for key in sorted(managed.addresses - wanted_addresses):
        if key in live_addresses and key[0] not in {c.subject for c in changes if c.action == "remove"}:
            changes.append(Change("address", "delete", key[1], f"on {key[0]}, no longer in the policy", key))
    for name, want in sorted((wireguard or {}).items()):
        changes.extend(_wireguard_changes(name, want, live))
    diff = ruleset_diff(render.render_text(desired.ruleset), live.table_text)
    if diff:
        action = "replace" if live.table_text else "create"
        changes.append(Change("ruleset", action, "table inet edge", f"{_count(diff)} lines differ"))
    return Plan(tuple(changes), diff, tuple(notes))


def _existing(desired: DesiredNet) -> set[str]:
    return {link.name for link in desired.links if link.kind == "existing"}


def _count(diff: tuple[str, ...]) -> int:
    return sum(1 for line in diff if line[:1] in "+-" and line[:3] not in ("+++", "---"))


def _wireguard_changes(name: str, want: DeviceConfig, live: LiveNet) -> list[Change]:
    have_dev = live.wireguard.get(name)
    have = have_dev.config if have_dev is not None else None
    if have is None:
        peers = ", ".join(p.public_key[:8] + "..." for p in want.peers) or "no peers"
        return [Change("wireguard", "configure", name, f"key, port {want.listen_port}, peers: {peers}")]
    reasons = []
    if have.private_key != want.private_key:
        reasons.append("private key")
    if want.listen_port and have.listen_port != want.listen_port:
        reasons.append(f"listen port {have.listen_port} -> {want.listen_port}")
    have_peers = {p.public_key: p for p in have.peers}
    want_peers = {p.public_key: p for p in want.peers}
    for key in sorted(want_peers.keys() - have_peers.keys()):
        reasons.append(f"add peer {key[:8]}...")
    for key in sorted(have_peers.keys() - want_peers.keys()):
        reasons.append(f"remove peer {key[:8]}...")
    for key in sorted(want_peers.keys() & have_peers.keys()):
        a, b = want_peers[key], have_peers[key]
        endpoint_differs = a.endpoint is not None and a.endpoint != b.endpoint
        if (
            a.allowed_ips != b.allowed_ips
            or a.keepalive != b.keepalive
            or a.preshared_key != b.preshared_key
            or (endpoint_differs)
        ):
            reasons.append(f"update peer {key[:8]}...")
    if not reasons:
        return []
    return [Change("wireguard", "configure", name, "; ".join(reasons))]
