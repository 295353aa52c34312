"""The desired network state: ``Policy.network`` -> ``DesiredNet``, pure.

Owns the translation of the user's words (zones, forward and input rules, masquerade,
block list, WireGuard) into what the kernel should hold: links (VLANs, WireGuard),
addresses, and the firewall as a small rule vocabulary (``Ruleset``) that ``render``
turns into libnftables JSON or ``nft`` text. Invariants: everything is frozen and
ordered deterministically (policy order for rules, sorted names elsewhere), so the
same policy always gives the same ruleset. Knows nothing about the kernel, files or
sockets; the WireGuard private key is referred to by its file, never read here.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal

from edge.policy.model import Network, Policy, PortSpec

TABLE_FAMILY = "inet"
TABLE_NAME = "edge"
BLOCKLIST = "blocklist"
BLOCKLIST6 = "blocklist6"
DEFAULT_BLOCK_TIMEOUT = 3600
ANY = "any"

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
Value = str | int | tuple[int, int]  # a name, a number, or an inclusive port range


# -- the firewall vocabulary ---------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Match:
    """``KEY VALUE`` or ``KEY { V1, V2 }``. ``key`` is an nft selector in text form:
    ``iifname``, ``oifname``, ``meta l4proto``, ``ct state``, ``ip saddr``, ``ip6 saddr``,
    ``tcp dport``, ``udp dport``. A value ``@name`` refers to a named set."""

    key: str
    values: tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class Rule:
    matches: tuple[Match, ...]
    verdict: Literal["accept", "drop", "reject", "masquerade"] | None
    counter: bool = False
    comment: str | None = None


@dataclass(frozen=True, slots=True)
class Chain:
    name: str
    type: Literal["filter", "nat"]
    hook: str
    priority: Literal["filter", "srcnat"]
    policy: Literal["accept", "drop"]
    rules: tuple[Rule, ...]


@dataclass(frozen=True, slots=True)
class SetDef:
    name: str
    type: Literal["ipv4_addr", "ipv6_addr"]
    timeout: int  # default element timeout, seconds


@dataclass(frozen=True, slots=True)
class Ruleset:
    """The whole table ``inet edge``."""

    sets: tuple[SetDef, ...]
    chains: tuple[Chain, ...]


# -- links, addresses, WireGuard -----------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ZoneSpec:
    name: str
    interfaces: tuple[str, ...]
    addresses: tuple[IPInterface, ...]


@dataclass(frozen=True, slots=True)
class LinkSpec:
    """A link edge needs: ``existing`` ones must be there already; ``vlan`` and
    ``wireguard`` ones are created when missing."""

    name: str
    kind: Literal["existing", "vlan", "wireguard"]
    parent: str | None = None
    vlan_id: int | None = None


@dataclass(frozen=True, slots=True, order=True)
class AddressSpec:
    interface: str
    address: str  # "10.0.1.1/24", ipaddress' canonical text

    @property
    def interface_address(self) -> IPInterface:
        return ipaddress.ip_interface(self.address)


@dataclass(frozen=True, slots=True)
class PeerSpec:
    name: str
    public_key: str
    allowed_ips: tuple[str, ...]  # sorted canonical networks
    keepalive: int | None = None
    endpoint: str | None = None
    preshared_key_file: str | None = None


@dataclass(frozen=True, slots=True)
class WireGuardSpec:
    name: str
    private_key_file: str
    listen_port: int | None
    peers: tuple[PeerSpec, ...]


@dataclass(frozen=True, slots=True)
class DesiredNet:
    zones: tuple[ZoneSpec, ...]
    links: tuple[LinkSpec, ...]
    addresses: tuple[AddressSpec, ...]
    wireguard: tuple[WireGuardSpec, ...]
    ruleset: Ruleset
    blocklist_timeout: int = DEFAULT_BLOCK_TIMEOUT
    reconcile_interval: float = 30.0
    control_socket: str = "/run/edge/net.sock"
    warnings: tuple[str, ...] = field(default=())


# -- Policy -> DesiredNet -------------------------------------------------------------------
def desired_from_policy(policy: Policy) -> DesiredNet:
    network = policy.network
    if network is None:
        raise ValueError("the policy has no 'network:' section")
    return desired_from_network(network)


def desired_from_network(network: Network) -> DesiredNet:
    zones = _zones(network)
    by_name = {z.name: z for z in zones}
    links = _links(network)
    addresses, warnings = _addresses(network, zones)
    timeout = int(network.blocklist.timeout) if network.blocklist else DEFAULT_BLOCK_TIMEOUT
    ruleset = Ruleset(
        sets=(SetDef(BLOCKLIST, "ipv4_addr", timeout), SetDef(BLOCKLIST6, "ipv6_addr", timeout)),
        chains=(_input_chain(network, by_name), _forward_chain(network, by_name), _nat_chain(network, by_name)),
    )
    return DesiredNet(
        zones=zones,
        links=links,
        addresses=addresses,
        wireguard=_wireguard(network),
        ruleset=ruleset,
        blocklist_timeout=timeout,
        reconcile_interval=network.reconcile_interval,
        control_socket=network.control_socket,
        warnings=tuple(warnings),
    )


def _zones(network: Network) -> tuple[ZoneSpec, ...]:
    out = []
    for name, zone in network.zones.items():
        interfaces = list(zone.interfaces)
        if zone.vlan is not None and zone.vlan.link_name not in interfaces:
            interfaces.append(zone.vlan.link_name)
        out.append(ZoneSpec(name, tuple(interfaces), tuple(zone.address)))
    return tuple(out)


def _links(network: Network) -> tuple[LinkSpec, ...]:
    links: dict[str, LinkSpec] = {}
    for zone in network.zones.values():
        for name in zone.interfaces:
            links.setdefault(name, LinkSpec(name, "existing"))
    for zone in network.zones.values():
        if zone.vlan is not None:
            name = zone.vlan.link_name
            links[name] = LinkSpec(name, "vlan", parent=zone.vlan.parent, vlan_id=zone.vlan.id)
            if zone.vlan.parent not in links:
                links[zone.vlan.parent] = LinkSpec(zone.vlan.parent, "existing")
    for name in network.wireguard:
        links[name] = LinkSpec(name, "wireguard")
    # parents first (existing), then VLANs, then WireGuard: creation order
    rank = {"existing": 0, "vlan": 1, "wireguard": 2}
    return tuple(sorted(links.values(), key=lambda link: (rank[link.kind], link.name)))


def _addresses(network: Network, zones: tuple[ZoneSpec, ...]) -> tuple[tuple[AddressSpec, ...], list[str]]:
    """A zone's address goes on its VLAN link, else on its first interface."""
    out: set[AddressSpec] = set()
    warnings = []
    for name, zone in network.zones.items():
        if not zone.address:
            continue
        target = zone.vlan.link_name if zone.vlan is not None else zone.interfaces[0]
        if zone.vlan is None and len(zone.interfaces) > 1:
            warnings.append(f"zone {name}: address goes on its first interface {target}")
        out.update(AddressSpec(target, str(a)) for a in zone.address)
    for name, wg in network.wireguard.items():
        out.update(AddressSpec(name, str(a)) for a in wg.address)
    return tuple(sorted(out)), warnings


def _wireguard(network: Network) -> tuple[WireGuardSpec, ...]:
    out = []
    for name in sorted(network.wireguard):
        wg = network.wireguard[name]
        peers = tuple(
            PeerSpec(
                name=peer_name,
                public_key=peer.public_key,
                allowed_ips=tuple(sorted(str(n) for n in peer.allowed_ips)),
                keepalive=int(peer.keepalive) if peer.keepalive else None,
                endpoint=peer.endpoint,
                preshared_key_file=peer.preshared_key_file,
            )
            for peer_name, peer in sorted(wg.peers.items())
        )
        out.append(WireGuardSpec(name, wg.private_key_file, wg.listen_port, peers))
    return tuple(out)


# -- chains -------------------------------------------------------------------------------
def _interfaces(refs: tuple[str, ...], zones: dict[str, ZoneSpec]) -> tuple[str, ...] | None:
    """The interfaces of the zones named, or None for ``any``."""
    if ANY in refs:
        return None
    out: list[str] = []
    for ref in refs:
        out.extend(i for i in zones[ref].interfaces if i not in out)
    return tuple(out)


def _expand(refs: tuple[str, ...], zones: dict[str, ZoneSpec]) -> list[tuple[str, tuple[str, ...] | None]]:
    """``any`` stays one entry (no interface match); zone lists become one entry per zone."""
    if ANY in refs:
        return [(ANY, None)]
    return [(ref, zones[ref].interfaces) for ref in refs]


def _blocklist_rules() -> tuple[Rule, ...]:
    return (
        Rule((Match("ip saddr", ("@" + BLOCKLIST,)),), "drop", counter=True, comment=BLOCKLIST),
        Rule((Match("ip6 saddr", ("@" + BLOCKLIST6,)),), "drop", counter=True, comment=BLOCKLIST6),
    )


_ESTABLISHED = Rule((Match("ct state", ("established", "related")),), "accept")
_INVALID = Rule((Match("ct state", ("invalid",)),), "drop")


def _port_matches(ports: tuple[PortSpec, ...]) -> list[Match]:
    """One match per protocol, in first-seen order: ``tcp dport { 80, 443 }``."""
    by_proto: dict[str, list[Value]] = {}
    for spec in ports:
        value: Value = spec.first if spec.first == spec.last else (spec.first, spec.last)
        values = by_proto.setdefault(spec.protocol, [])
        if value not in values:
            values.append(value)
    return [Match(f"{proto} dport", tuple(values)) for proto, values in by_proto.items()]


def _input_chain(network: Network, zones: dict[str, ZoneSpec]) -> Chain:
    rules = [
        *_blocklist_rules(),
        Rule((Match("iifname", ("lo",)),), "accept"),
        _ESTABLISHED,
        _INVALID,
        # ICMP and ICMPv6 (neighbour discovery, path MTU) to this host: without them IPv6 breaks
        Rule((Match("meta l4proto", ("icmp", "ipv6-icmp")),), "accept"),
    ]
    for rule in network.input:
        for zone_name, interfaces in _expand(rule.from_, zones):
            base = [Match("iifname", interfaces)] if interfaces is not None else []
            if interfaces == ():
                continue  # a zone without interfaces matches nothing
            port_matches = _port_matches(rule.ports) or [None]
            for port_match in port_matches:
                matches = base + ([port_match] if port_match is not None else [])
                label = f"input {zone_name}"
                rules.append(Rule(tuple(matches), rule.action, counter=True, comment=label))
    rules.append(Rule((), None, counter=True, comment="input default drop"))
    return Chain("input", "filter", "input", "filter", "drop", tuple(rules))


def _forward_chain(network: Network, zones: dict[str, ZoneSpec]) -> Chain:
    rules = [*_blocklist_rules(), _ESTABLISHED, _INVALID]
    for rule in network.forward:
        for src, src_ifaces in _expand(rule.from_, zones):
            for dst, dst_ifaces in _expand(rule.to, zones):
                if src_ifaces == () or dst_ifaces == ():
                    continue
                matches = []
                if src_ifaces is not None:
                    matches.append(Match("iifname", src_ifaces))
                if dst_ifaces is not None:
                    matches.append(Match("oifname", dst_ifaces))
                rules.append(Rule(tuple(matches), rule.action, counter=True, comment=f"forward {src}->{dst}"))
    rules.append(Rule((), None, counter=True, comment="forward default drop"))
    return Chain("forward", "filter", "forward", "filter", "drop", tuple(rules))


def _nat_chain(network: Network, zones: dict[str, ZoneSpec]) -> Chain:
    rules = []
    for rule in network.masquerade:
        src = _interfaces(rule.from_, zones)
        dst = _interfaces(rule.to, zones)
        if src == () or dst == ():
            continue
        matches = []
        if src is not None:
            matches.append(Match("iifname", src))
        if dst is not None:
            matches.append(Match("oifname", dst))
        label = f"masquerade {','.join(rule.from_)}->{','.join(rule.to)}"
        rules.append(Rule(tuple(matches), "masquerade", counter=True, comment=label))
    return Chain("postrouting", "nat", "postrouting", "srcnat", "accept", tuple(rules))
