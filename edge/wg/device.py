"""WireGuard devices: one shape (``DeviceConfig``) read from and written to either backend.

Owns talking to WireGuard: the userspace UAPI (a unix socket per interface at
``/var/run/wireguard/NAME.sock``, spoken by wireguard-go and boringtun) and kernel
netlink (pyroute2's ``WireGuard``). Raw UAPI lines and netlink dicts stop here; the rest
of edge sees ``DeviceConfig`` and ``PeerState``. Writes replace the whole peer list, so
a write is idempotent and a read-back equals what was written.

The UAPI socket directory is shared by all network namespaces (it is a file path), so
two namespaces cannot both run a userspace ``wg0``; name interfaces uniquely when you
run several (the tests do).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import time
from dataclasses import dataclass

from edge.wg import keys

UAPI_DIR = "/var/run/wireguard"


class WireGuardError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class PeerState:
    public_key: str
    allowed_ips: tuple[str, ...]  # sorted canonical networks
    endpoint: str | None = None
    keepalive: int | None = None
    preshared_key: str | None = None
    last_handshake: float = 0.0  # unix time, 0 = never
    rx_bytes: int = 0
    tx_bytes: int = 0

    def config_key(self) -> tuple:
        """What a write sets; the counters and the handshake are the kernel's."""
        return (self.public_key, self.allowed_ips, self.endpoint, self.keepalive, self.preshared_key)


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    private_key: str | None
    listen_port: int | None
    peers: tuple[PeerState, ...]  # sorted by public key

    @property
    def public_key(self) -> str | None:
        return keys.public_key(self.private_key) if self.private_key else None


def uapi_path(name: str) -> str:
    return os.path.join(UAPI_DIR, f"{name}.sock")


def has_uapi(name: str) -> bool:
    return os.path.exists(uapi_path(name))


# -- userspace (UAPI) ---------------------------------------------------------------------
def _uapi(name: str, request: str, timeout: float = 3.0) -> list[tuple[str, str]]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(uapi_path(name))
        except OSError as exc:
            raise WireGuardError(f"{name}: cannot reach the userspace UAPI socket {uapi_path(name)}: {exc}") from None
        sock.sendall(request.encode())
        data = b""
        while not data.endswith(b"\n\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    pairs = [tuple(line.split("=", 1)) for line in data.decode().splitlines() if "=" in line]
    errno = dict(pairs).get("errno", "0")
    if errno != "0":
        raise WireGuardError(f"{name}: wireguard UAPI refused the request (errno={errno})")
    return pairs  # type: ignore[return-value]


def uapi_get(name: str) -> DeviceConfig:
    private_key = None
    listen_port = None
    peers: list[dict] = []
    for key, value in _uapi(name, "get=1\n\n"):
        if key == "private_key":
            private_key = keys.from_hex(value) if value.strip("0") else None
        elif key == "listen_port":
            listen_port = int(value) or None
        elif key == "public_key":
            peers.append({"public_key": keys.from_hex(value), "allowed_ips": []})
        elif peers:
            peer = peers[-1]
            if key == "allowed_ip":
                peer["allowed_ips"].append(str(ipaddress.ip_network(value, strict=False)))
            elif key == "endpoint":
                peer["endpoint"] = value
            elif key == "persistent_keepalive_interval":
                peer["keepalive"] = int(value) or None
            elif key == "preshared_key" and value.strip("0"):
                peer["preshared_key"] = keys.from_hex(value)
            elif key == "last_handshake_time_sec":
                peer["last_handshake"] = float(value)
            elif key == "last_handshake_time_nsec":
                peer["last_handshake"] = peer.get("last_handshake", 0.0) + int(value) / 1e9
            elif key in ("rx_bytes", "tx_bytes"):
                peer[key] = int(value)
    states = [
        PeerState(
            public_key=p["public_key"],
            allowed_ips=tuple(sorted(p["allowed_ips"])),
            endpoint=p.get("endpoint"),
            keepalive=p.get("keepalive"),
            preshared_key=p.get("preshared_key"),
            last_handshake=p.get("last_handshake", 0.0),
            rx_bytes=p.get("rx_bytes", 0),
            tx_bytes=p.get("tx_bytes", 0),
        )
        for p in peers
    ]
    return DeviceConfig(private_key, listen_port, tuple(sorted(states, key=lambda s: s.public_key)))


def uapi_set(name: str, config: DeviceConfig) -> None:
    lines = ["set=1"]
    lines.append(f"private_key={keys.to_hex(config.private_key) if config.private_key else '0' * 64}")
    lines.append(f"listen_port={config.listen_port or 0}")
    lines.append("replace_peers=true")
    for peer in config.peers:
        lines.append(f"public_key={keys.to_hex(peer.public_key)}")
        lines.append(f"preshared_key={keys.to_hex(peer.preshared_key) if peer.preshared_key else '0' * 64}")
        if peer.endpoint:
            lines.append(f"endpoint={resolve_endpoint(peer.endpoint)}")
        lines.append(f"persistent_keepalive_interval={peer.keepalive or 0}")
        lines.append("replace_allowed_ips=true")
        lines.extend(f"allowed_ip={ip}" for ip in peer.allowed_ips)
    _uapi(name, "\n".join(lines) + "\n\n")


def resolve_endpoint(endpoint: str) -> str:
    """``host:port`` -> ``ip:port`` (``[v6]:port``), as the UAPI and netlink need."""
    host, _, port = endpoint.rpartition(":")
    host = host.strip("[]")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        info = socket.getaddrinfo(host, int(port), type=socket.SOCK_DGRAM)
        address = ipaddress.ip_address(info[0][4][0])
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def start_userspace(name: str, state_dir: str, wait: float = 5.0) -> int:
    """Start ``wireguard-go -f NAME`` detached (its daemon mode does not work everywhere)
    and wait for its UAPI socket. Returns the pid, also kept in ``state_dir``."""
    log = open(os.path.join(state_dir, f"wireguard-go.{name}.log"), "ab")  # noqa: SIM115 - handed to the child
    try:
        process = subprocess.Popen(
            ["wireguard-go", "-f", name],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
        )
    except FileNotFoundError:
        raise WireGuardError(f"{name}: the kernel has no WireGuard module and wireguard-go is not installed") from None
    finally:
        log.close()
    with open(os.path.join(state_dir, f"wireguard-go.{name}.pid"), "w") as handle:
        handle.write(f"{process.pid}\n")
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise WireGuardError(f"{name}: wireguard-go exited with {process.returncode} (see {state_dir})")
        if has_uapi(name):
            try:
                uapi_get(name)
                return process.pid
            except WireGuardError:
                pass
        time.sleep(0.02)
    process.kill()
    raise WireGuardError(f"{name}: wireguard-go did not open {uapi_path(name)} within {wait}s")


# -- kernel (netlink) ---------------------------------------------------------------------
# Written against pyroute2 0.9's WireGuard; not exercised on the test machine (no module).
def kernel_get(name: str) -> DeviceConfig:
    from pyroute2 import WireGuard

    with WireGuard() as wg:
        messages = wg.info(name)
    private_key = None
    listen_port = None
    peers = []
    for msg in messages:
        if msg.get_attr("WGDEVICE_A_PRIVATE_KEY"):
            private_key = _b64(msg.get_attr("WGDEVICE_A_PRIVATE_KEY"))
        listen_port = msg.get_attr("WGDEVICE_A_LISTEN_PORT") or listen_port
        for peer in msg.get_attr("WGDEVICE_A_PEERS") or ():
            allowed = []
            for ip in peer.get_attr("WGPEER_A_ALLOWEDIPS") or ():
                if ip.get("addr"):
                    allowed.append(str(ipaddress.ip_network(ip["addr"], strict=False)))
            endpoint = peer.get_attr("WGPEER_A_ENDPOINT")
            handshake = peer.get_attr("WGPEER_A_LAST_HANDSHAKE_TIME") or {}
            psk = _b64(peer.get_attr("WGPEER_A_PRESHARED_KEY"))
            peers.append(
                PeerState(
                    public_key=_b64(peer.get_attr("WGPEER_A_PUBLIC_KEY")) or "",
                    allowed_ips=tuple(sorted(allowed)),
                    endpoint=f"{endpoint['addr']}:{endpoint['port']}" if isinstance(endpoint, dict) else None,
                    keepalive=peer.get_attr("WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL") or None,
                    preshared_key=psk if psk and keys.decode(psk).strip(b"\0") else None,
                    last_handshake=float(handshake.get("tv_sec", 0)) if isinstance(handshake, dict) else 0.0,
                    rx_bytes=peer.get_attr("WGPEER_A_RX_BYTES") or 0,
                    tx_bytes=peer.get_attr("WGPEER_A_TX_BYTES") or 0,
                )
            )
    return DeviceConfig(private_key, listen_port, tuple(sorted(peers, key=lambda s: s.public_key)))


def _b64(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        if len(value) == 32:  # raw key
            import base64

            return base64.b64encode(value).decode()
        return value.decode("ascii")  # pyroute2 hands keys over already in base64
    return str(value)


def kernel_set(name: str, config: DeviceConfig) -> None:
    from pyroute2 import WireGuard

    current = kernel_get(name)
    with WireGuard() as wg:
        wg.set(name, private_key=config.private_key, listen_port=config.listen_port or 0)
        wanted = {p.public_key for p in config.peers}
        for peer in current.peers:
            if peer.public_key not in wanted:
                wg.set(name, peer={"public_key": peer.public_key, "remove": True})
        for peer in config.peers:
            spec: dict = {
                "public_key": peer.public_key,
                "allowed_ips": list(peer.allowed_ips),
                "replace_allowed_ips": True,
            }
            if peer.endpoint:
                address, _, port = resolve_endpoint(peer.endpoint).rpartition(":")
                spec["endpoint_addr"] = address.strip("[]")
                spec["endpoint_port"] = int(port)
            if peer.keepalive:
                spec["persistent_keepalive"] = peer.keepalive
            if peer.preshared_key:
                spec["preshared_key"] = peer.preshared_key
            wg.set(name, peer=spec)


# -- either --------------------------------------------------------------------------------
def backend(name: str, kind: str | None) -> str:
    """``kernel`` for a wireguard link, ``userspace`` when a UAPI socket answers for it."""
    return "kernel" if kind == "wireguard" else "userspace"


def read(name: str, kind: str | None) -> DeviceConfig:
    return kernel_get(name) if backend(name, kind) == "kernel" else uapi_get(name)


def write(name: str, kind: str | None, config: DeviceConfig) -> None:
    if backend(name, kind) == "kernel":
        kernel_set(name, config)
    else:
        uapi_set(name, config)
