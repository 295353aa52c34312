"""Which network zone a client address belongs to, for route ``zones:`` (403 otherwise).

Owns the map from client IP to zone name, built from ``network.zones``: a zone's subnets
are the networks of its ``address`` entries (``10.0.1.1/24`` -> ``10.0.1.0/24``), plus the
networks of the ``network.wireguard`` addresses of interfaces the zone lists (so
``tunnel: {interfaces: [wg0]}`` covers wg0's ``10.99.0.0/24``). Peers' ``allowed_ips`` are
not used: a peer routing ``0.0.0.0/0`` would put the whole internet in the tunnel zone.

Invariants: the most specific subnet wins (a /32 inside a /24 of another zone); on an
exact tie the zone listed first wins. IPv4-mapped IPv6 clients (``::ffff:10.0.1.5`` from a
dual-stack socket) count as their IPv4 address. A zone with no known subnet (``wan``:
interfaces only) matches no client. Lookups are cached per address string, bounded.

Must not know: sockets, the kernel, nftables. ``edge net`` enforces zones in the firewall;
this is the proxy's own check on top ("even if the firewall is open").
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from edge.policy.model import Network

__all__ = ["ZoneMatcher", "parse_client_ip"]

# Distinct client addresses remembered; a flood of new ones recycles the cache wholesale
# (clearing is O(1) amortised and keeps the hit path a single dict lookup).
DEFAULT_CACHE_SIZE = 65_536

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_client_ip(ip: str) -> IPAddress | None:
    """A client address as the socket gave it (maybe ``fe80::1%eth0`` or IPv4-mapped); None
    when it is not an IP at all (a Unix socket peer)."""
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class ZoneMatcher:
    """``zone_of(ip)`` and ``allowed(route_zones, ip)`` over the policy's zones."""

    __slots__ = ("_cache", "_subnets", "cache_size", "zones")

    def __init__(self, network: Network | None, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        subnets: list[tuple[int, int, ipaddress.IPv4Network | ipaddress.IPv6Network, str]] = []
        if network is not None:
            order = 0
            for name, zone in network.zones.items():
                for net in _zone_networks(network, zone.address, zone.interfaces):
                    subnets.append((-net.prefixlen, order, net, name))
                    order += 1
        # Most specific first, then policy order: the first containing subnet is the answer.
        subnets.sort(key=lambda item: (item[0], item[1]))
        self._subnets = tuple((net, name) for _, _, net, name in subnets)
        self.zones = tuple(network.zones) if network is not None else ()
        self.cache_size = max(1, cache_size)
        self._cache: dict[str, str | None] = {}

    def zone_of(self, ip: str) -> str | None:
        """The zone of client ``ip``, or None when it lies in no zone's subnet."""
        cache = self._cache
        try:
            return cache[ip]
        except KeyError:
            pass
        zone = self._lookup(ip)
        if len(cache) >= self.cache_size:
            cache.clear()
        cache[ip] = zone
        return zone

    def _lookup(self, ip: str) -> str | None:
        address = parse_client_ip(ip)
        if address is None:
            return None
        for net, name in self._subnets:
            if address.version == net.version and address in net:
                return name
        return None

    def allowed(self, route_zones: Iterable[str] | None, ip: str) -> bool:
        """Whether a client may use a route with ``zones: route_zones`` (None: no rule)."""
        if route_zones is None:
            return True
        zone = self.zone_of(ip)
        return zone is not None and zone in route_zones

    def subnets(self, zone: str) -> list[str]:
        """The subnets of ``zone`` as text, for status pages and error messages."""
        return [str(net) for net, name in self._subnets if name == zone]


def _zone_networks(network: Network, addresses: tuple, interfaces: tuple[str, ...]) -> list:
    nets = [iface.network for iface in addresses]
    for interface in interfaces:
        wg = network.wireguard.get(interface)
        if wg is not None:
            nets.extend(iface.network for iface in wg.address)
    unique: list = []
    for net in nets:
        if net not in unique:
            unique.append(net)
    return unique
