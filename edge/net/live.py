"""Live state: what the kernel holds now, read into our own frozen dataclasses.

Owns reading: table ``inet edge`` (as nft text for comparison and as JSON for
counters, block-list members and snapshots), links and addresses through pyroute2,
WireGuard devices through ``edge.wg.device``. Netlink messages do not leave this
module. Reads only; every change goes through ``apply``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from edge.net import nft
from edge.net.desired import AddressSpec, DesiredNet
from edge.wg import device


@dataclass(frozen=True, slots=True)
class LiveLink:
    name: str
    index: int
    kind: str | None  # "vlan", "wireguard", "tun", "veth", ... None for plain devices
    parent: str | None = None
    vlan_id: int | None = None
    up: bool = False


@dataclass(frozen=True, slots=True)
class LiveWireGuard:
    name: str
    backend: str  # "kernel" or "userspace"
    config: device.DeviceConfig | None  # None when it could not be read
    error: str | None = None


@dataclass(frozen=True, slots=True)
class LiveNet:
    links: dict[str, LiveLink]
    addresses: tuple[AddressSpec, ...]
    table_text: str | None  # nft --terse --stateless listing, None = no table
    table_json: list[dict] | None = None
    wireguard: dict[str, LiveWireGuard] = field(default_factory=dict)


def read_links() -> tuple[dict[str, LiveLink], tuple[AddressSpec, ...]]:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        raw_links = ipr.get_links()
        raw_addrs = ipr.get_addr()
    by_index: dict[int, str] = {m["index"]: m.get_attr("IFLA_IFNAME") for m in raw_links}
    links = {}
    for msg in raw_links:
        name = msg.get_attr("IFLA_IFNAME")
        info = msg.get_attr("IFLA_LINKINFO")
        kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
        vlan_id = None
        if kind == "vlan":
            data = info.get_attr("IFLA_INFO_DATA")
            vlan_id = data.get_attr("IFLA_VLAN_ID") if data is not None else None
        parent_index = msg.get_attr("IFLA_LINK")
        parent = by_index.get(parent_index) if parent_index and parent_index != msg["index"] else None
        links[name] = LiveLink(name, msg["index"], kind, parent, vlan_id, bool(msg["flags"] & 1))
    addresses = []
    for msg in raw_addrs:
        name = by_index.get(msg["index"])
        address = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
        if name is None or address is None:
            continue
        interface = ipaddress.ip_interface(f"{address}/{msg['prefixlen']}")
        addresses.append(AddressSpec(name, str(interface)))
    return links, tuple(sorted(set(addresses)))


def read_wireguard(names, links: dict[str, LiveLink]) -> dict[str, LiveWireGuard]:
    out = {}
    for name in names:
        link = links.get(name)
        if link is None:
            continue
        kind = link.kind
        backend = device.backend(name, kind)
        try:
            config = device.read(name, kind)
        except Exception as exc:
            out[name] = LiveWireGuard(name, backend, None, str(exc))
            continue
        out[name] = LiveWireGuard(name, backend, config)
    return out


def read_live(desired: DesiredNet | None = None, with_json: bool = True) -> LiveNet:
    links, addresses = read_links()
    wg_names = [w.name for w in desired.wireguard] if desired is not None else []
    return LiveNet(
        links=links,
        addresses=addresses,
        table_text=nft.list_table_text(),
        table_json=nft.list_table_json() if with_json else None,
        wireguard=read_wireguard(wg_names, links),
    )
