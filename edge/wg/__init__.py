"""edge wg: WireGuard keys, the userspace UAPI and kernel netlink clients, peer configs."""
