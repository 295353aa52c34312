"""Refuse to connect from the root network namespace to anything but loopback.

The root namespace of a test machine has a route to a real network; a namespace set-up
bug must never send test traffic there. Every raw test connection goes through
``connect()`` here, which checks the destination before touching the network.
"""

from __future__ import annotations

import ipaddress
import os
import socket

_ROOT_NETNS = None


def _in_root_netns() -> bool:
    global _ROOT_NETNS
    if _ROOT_NETNS is None:
        try:
            _ROOT_NETNS = os.stat("/proc/self/ns/net").st_ino == os.stat("/proc/1/ns/net").st_ino
        except OSError:
            _ROOT_NETNS = True  # cannot tell: assume the worst
    return _ROOT_NETNS


def check_destination(host: str) -> None:
    """Raise unless ``host`` is a loopback address (or we are inside a test namespace)."""
    if not _in_root_netns():
        return
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        if host == "localhost":
            return
        raise PermissionError(f"test guard: refusing non-literal destination {host!r} (root namespace)") from None
    if not address.is_loopback:
        raise PermissionError(f"test guard: refusing {host} from the root namespace (loopback only)")


def connect(host: str, port: int, timeout: float = 5.0) -> socket.socket:
    check_destination(host)
    return socket.create_connection((host, port), timeout=timeout)
