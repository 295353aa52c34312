"""``edge wg peer-config``: the client config a peer imports (wg-quick format), pure.

[Interface] carries the peer's own address (its allowed IPs that lie inside this host's
tunnel network, else its first allowed IP) and its private key (a placeholder unless
given: edge only knows the peer's public key); [Peer] is this host: its public key,
``endpoint``, and the networks the peer should route here (the tunnel network, plus
``extra_allowed_ips``).
"""

from __future__ import annotations

import ipaddress

from edge.policy.model import WireGuardInterface

PRIVATE_KEY_PLACEHOLDER = "<the peer's private key: `edge wg keygen` on the peer>"


def peer_config(
    interface_name: str,
    interface: WireGuardInterface,
    peer_name: str,
    host_public_key: str,
    peer_private_key: str | None = None,
    extra_allowed_ips: tuple[str, ...] = (),
    preshared_key: str | None = None,
) -> str:
    peer = interface.peers[peer_name]
    tunnel_nets = [a.network for a in interface.address]
    inside = [n for n in peer.allowed_ips if any(n.version == t.version and n.subnet_of(t) for t in tunnel_nets)]
    own = inside or list(peer.allowed_ips[:1])
    addresses = []
    for net in own:
        prefix = next((t.prefixlen for t in tunnel_nets if t.version == net.version and net.subnet_of(t)), None)
        if net.num_addresses == 1 and prefix is not None:
            addresses.append(str(ipaddress.ip_interface(f"{net.network_address}/{prefix}")))
        else:
            addresses.append(str(net))
    allowed = [str(t) for t in tunnel_nets] + [a for a in extra_allowed_ips if a not in {str(t) for t in tunnel_nets}]
    lines = [
        f"# edge: peer {peer_name} of {interface_name}",
        "[Interface]",
        f"PrivateKey = {peer_private_key or PRIVATE_KEY_PLACEHOLDER}",
        f"Address = {', '.join(addresses)}",
        "",
        "[Peer]",
        f"PublicKey = {host_public_key}",
    ]
    if preshared_key:
        lines.append(f"PresharedKey = {preshared_key}")
    if interface.endpoint:
        lines.append(f"Endpoint = {interface.endpoint}")
    lines.append(f"AllowedIPs = {', '.join(allowed)}")
    if peer.keepalive:
        lines.append(f"PersistentKeepalive = {int(peer.keepalive)}")
    return "\n".join(lines) + "\n"
