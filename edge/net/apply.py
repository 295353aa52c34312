"""Apply a plan: ensure-steps for links, addresses and WireGuard, then one nft transaction.

Owns changing the kernel. Each step is idempotent, checked by reading back, and leaves
an undo record (plain JSON, so another process can undo it later: ``edge net rollback``
and the commit-confirmed timer use the same records). When a step fails, the finished
steps are undone in reverse and ``ApplyError`` is raised: a failed apply leaves the
previous state. Order: links, addresses, WireGuard, the ruleset (the one nftables
batch for ``inet edge``), then removal of links edge no longer needs.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass

from edge.net import nft, render
from edge.net.desired import DesiredNet
from edge.net.diff import Change, Managed, Plan, make_plan
from edge.net.live import read_links, read_live
from edge.net.state import StateDir
from edge.wg import device, keys

Log = Callable[[str], None]


class ApplyError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class ApplyResult:
    plan: Plan
    undo: tuple[dict, ...]
    managed: Managed
    messages: tuple[str, ...]


# -- desired WireGuard configs (reads key files) -------------------------------------------
def desired_devices(desired: DesiredNet) -> dict[str, device.DeviceConfig]:
    out = {}
    for wg in desired.wireguard:
        try:
            private_key = keys.read_key_file(wg.private_key_file)
        except OSError as exc:
            raise ApplyError(f"{wg.name}: cannot read private_key_file {wg.private_key_file}: {exc.strerror}") from None
        except ValueError as exc:
            raise ApplyError(str(exc)) from None
        peers = []
        for peer in wg.peers:
            psk = None
            if peer.preshared_key_file:
                try:
                    psk = keys.read_key_file(peer.preshared_key_file)
                except (OSError, ValueError) as exc:
                    raise ApplyError(f"{wg.name}.{peer.name}: preshared_key_file: {exc}") from None
            endpoint = None
            if peer.endpoint:
                try:
                    endpoint = device.resolve_endpoint(peer.endpoint)
                except OSError as exc:
                    raise ApplyError(f"{wg.name}.{peer.name}: cannot resolve endpoint {peer.endpoint}: {exc}") from None
            peers.append(device.PeerState(peer.public_key, peer.allowed_ips, endpoint, peer.keepalive, psk))
        ordered = tuple(sorted(peers, key=lambda p: p.public_key))
        out[wg.name] = device.DeviceConfig(private_key, wg.listen_port, ordered)
    return out


def config_to_json(config: device.DeviceConfig | None) -> dict | None:
    if config is None:
        return None
    return {
        "private_key": config.private_key,
        "listen_port": config.listen_port,
        "peers": [
            {
                "public_key": p.public_key,
                "allowed_ips": list(p.allowed_ips),
                "endpoint": p.endpoint,
                "keepalive": p.keepalive,
                "preshared_key": p.preshared_key,
            }
            for p in config.peers
        ],
    }


def config_from_json(data: dict) -> device.DeviceConfig:
    peers = tuple(
        device.PeerState(
            p["public_key"], tuple(p["allowed_ips"]), p.get("endpoint"), p.get("keepalive"), p.get("preshared_key")
        )
        for p in data["peers"]
    )
    return device.DeviceConfig(data["private_key"], data["listen_port"], peers)


# -- links ---------------------------------------------------------------------------------
def _ipr():
    from pyroute2 import IPRoute

    return IPRoute()


def _index(ipr, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise ApplyError(f"interface {name} does not exist")
    return found[0]


def _not_supported(exc: Exception) -> bool:
    return getattr(exc, "code", None) in (errno.EOPNOTSUPP, errno.ENOTSUP)


def create_vlan(name: str, parent: str, vlan_id: int) -> None:
    with _ipr() as ipr:
        parent_index = _index(ipr, parent)
        try:
            ipr.link("add", ifname=name, kind="vlan", link=parent_index, vlan_id=vlan_id)
        except Exception as exc:
            if _not_supported(exc):
                raise ApplyError(
                    f"cannot create VLAN {name} (id {vlan_id} on {parent}): this kernel has no 802.1Q VLAN "
                    "support; it needs CONFIG_VLAN_8021Q (module 8021q: try `modprobe 8021q`)"
                ) from None
            raise ApplyError(f"cannot create VLAN {name}: {exc}") from None
        _index(ipr, name)  # read back


def create_wireguard(name: str, state: StateDir, log: Log) -> list[dict]:
    """Kernel WireGuard when the module exists, else wireguard-go. Returns undo records."""
    with _ipr() as ipr:
        try:
            ipr.link("add", ifname=name, kind="wireguard")
            _index(ipr, name)
            log(f"{name}: created a kernel WireGuard interface")
            return [{"op": "delete_link", "name": name}]
        except Exception as exc:
            if not _not_supported(exc):
                raise ApplyError(f"cannot create WireGuard interface {name}: {exc}") from None
    if shutil.which("wireguard-go") is None:
        raise ApplyError(f"{name}: the kernel has no WireGuard module and wireguard-go is not installed")
    pid = device.start_userspace(name, state.ensure().path)
    log(f"{name}: no WireGuard kernel module; started wireguard-go (userspace, pid {pid})")
    return [{"op": "kill", "pid": pid}, {"op": "delete_link", "name": name}]


def set_link(name: str, up: bool) -> None:
    with _ipr() as ipr:
        ipr.link("set", index=_index(ipr, name), state="up" if up else "down")


def delete_link(name: str) -> None:
    with _ipr() as ipr:
        found = ipr.link_lookup(ifname=name)
        if found:
            ipr.link("del", index=found[0])


def change_address(verb: str, interface: str, address: str) -> None:
    import ipaddress

    iface = ipaddress.ip_interface(address)
    with _ipr() as ipr:
        index = _index(ipr, interface)
        try:
            ipr.addr(verb, index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
        except Exception as exc:
            code = getattr(exc, "code", None)
            if (verb == "add" and code == errno.EEXIST) or (verb == "del" and code == errno.EADDRNOTAVAIL):
                return
            raise ApplyError(f"cannot {verb} address {address} on {interface}: {exc}") from None


# -- undo ----------------------------------------------------------------------------------
def undo(records: list[dict], log: Log) -> list[str]:
    """Run undo records in reverse; returns the errors (it keeps going past them)."""
    errors = []
    for record in reversed(records):
        try:
            _undo_one(record)
        except Exception as exc:
            errors.append(f"undo {record.get('op')}: {exc}")
            log(f"rollback: could not undo {record.get('op')} {record.get('name', '')}: {exc}")
    return errors


def _undo_one(record: dict) -> None:
    op = record["op"]
    if op == "delete_link":
        delete_link(record["name"])
    elif op == "kill":
        try:
            os.kill(record["pid"], signal.SIGTERM)
        except ProcessLookupError:
            pass
    elif op == "set_down":
        set_link(record["name"], False)
    elif op == "del_address":
        change_address("del", record["interface"], record["address"])
    elif op == "add_address":
        change_address("add", record["interface"], record["address"])
    elif op == "wg_restore":
        links, _ = read_links()
        link = links.get(record["name"])
        if link is not None:
            device.write(record["name"], link.kind, config_from_json(record["config"]))
    elif op == "nft_restore":
        current = nft.blocklist_elements(nft.list_table_json())
        listing = record["listing"]
        if listing is None:
            nft.run_batch(render.render_delete_batch())
        else:
            nft.run_batch(render.restore_batch(listing, current))
    else:
        raise ApplyError(f"unknown undo record {op!r}")


# -- apply ---------------------------------------------------------------------------------
def apply(desired: DesiredNet, state: StateDir, log: Log = lambda _m: None) -> ApplyResult:
    """Make the kernel match ``desired``. Raises ApplyError after undoing its own steps."""
    live = read_live(desired)
    devices = desired_devices(desired)
    managed = Managed.from_json(state.read("applied.json"))
    plan = make_plan(desired, live, devices, managed)
    records: list[dict] = []
    messages: list[str] = []

    def say(message: str) -> None:
        messages.append(message)
        log(message)

    links = set(managed.links)
    addresses = set(managed.addresses)
    try:
        for change in _ordered(plan.changes):
            _execute(change, desired, live, devices, state, records, say, links, addresses)
    except Exception as exc:
        say(f"apply failed: {exc}; undoing {len(records)} finished step(s)")
        undo(records, say)
        if isinstance(exc, ApplyError | nft.NftError):
            raise ApplyError(str(exc)) from None
        raise ApplyError(f"{type(exc).__name__}: {exc}") from exc
    wanted_links = {link.name for link in desired.links}
    wanted_addresses = {(a.interface, a.address) for a in desired.addresses}
    new_managed = Managed(frozenset(links & wanted_links), frozenset(addresses & wanted_addresses))
    state.write("applied.json", new_managed.to_json())
    return ApplyResult(plan, tuple(records), new_managed, tuple(messages))


_ORDER = {
    ("link", "create"): 0,
    ("link", "up"): 1,
    ("address", "add"): 2,
    ("address", "delete"): 3,
    ("wireguard", "configure"): 4,
    ("ruleset", "create"): 5,
    ("ruleset", "replace"): 5,
    ("link", "remove"): 6,
}


def _ordered(changes: tuple[Change, ...]) -> list[Change]:
    return sorted(changes, key=lambda c: _ORDER.get((c.area, c.action), 9))


def _execute(change, desired, live, devices, state, records, say, links, addresses) -> None:
    area, action, name = change.area, change.action, change.subject
    if area == "link" and action == "create":
        if change.data[0] == "vlan":
            create_vlan(name, change.data[1], change.data[2])
            records.append({"op": "delete_link", "name": name})
            say(f"{name}: created VLAN {change.data[2]} on {change.data[1]}")
        else:
            records.extend(create_wireguard(name, state, say))
        links.add(name)
    elif area == "link" and action == "up":
        set_link(name, True)
        records.append({"op": "set_down", "name": name})
    elif area == "link" and action == "remove":
        delete_link(name)
        links.discard(name)
        say(f"{name}: removed (created by edge, no longer in the policy)")
    elif area == "address":
        interface, address = change.data
        if action == "add":
            change_address("add", interface, address)
            records.append({"op": "del_address", "interface": interface, "address": address})
            addresses.add((interface, address))
        else:
            change_address("del", interface, address)
            records.append({"op": "add_address", "interface": interface, "address": address})
            addresses.discard((interface, address))
    elif area == "wireguard":
        current_links, _ = read_links()
        link = current_links.get(name)
        if link is None:
            raise ApplyError(f"{name}: WireGuard interface missing")
        previous = live.wireguard.get(name)
        if previous is not None and previous.config is not None:
            records.append({"op": "wg_restore", "name": name, "config": config_to_json(previous.config)})
        want = devices[name]
        device.write(name, link.kind, want)
        have = device.read(name, link.kind)
        if have.private_key != want.private_key or [p.config_key() for p in have.peers] != [
            p.config_key() for p in want.peers
        ]:
            raise ApplyError(f"{name}: WireGuard read-back differs from what was written")
        say(f"{name}: WireGuard configured ({device.backend(name, link.kind)}, {len(want.peers)} peer(s))")
    elif area == "ruleset":
        elements = nft.blocklist_elements(live.table_json)
        nft.run_batch(render.render_batch(desired.ruleset, elements))
        records.append({"op": "nft_restore", "listing": live.table_json})
        say(
            f"table inet edge: {'replaced' if live.table_json is not None else 'created'} in one transaction"
            + (f" ({len(elements)} block-list entries kept)" if elements else "")
        )
    else:  # pragma: no cover - make_plan only makes the changes above
        raise ApplyError(f"cannot execute {change}")
