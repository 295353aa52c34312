"""edge net: the network controller (nftables table inet edge, links, addresses, WireGuard)."""
