"""``edge net plan|apply|confirm|rollback|status|run``: the controller's command line.

Thin: loads the policy, calls the modules that decide and act, prints, returns the
exit code (0 ok, 1 runtime failure, 2 bad input).
"""

from __future__ import annotations

import argparse
import sys
import time

from edge.cli import EXIT_BAD_INPUT, EXIT_OK, EXIT_RUNTIME, add_policy_argument, policy_path


def add_commands(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "net",
        help="the network controller (nftables, links, WireGuard)",
        description="Program table inet edge, links, addresses and WireGuard from network:.",
    )
    net = parser.add_subparsers(dest="net_command", metavar="SUBCOMMAND", required=True)

    p = net.add_parser("plan", help="print what apply would change; change nothing")
    add_policy_argument(p)
    p.set_defaults(handler=cmd_plan)

    p = net.add_parser("apply", help="apply the network: section atomically")
    add_policy_argument(p)
    p.add_argument(
        "--confirm-within",
        metavar="DURATION",
        default=None,
        help="roll back by itself unless `edge net confirm` runs within DURATION (e.g. 60s)",
    )
    p.set_defaults(handler=cmd_apply)

    p = net.add_parser("confirm", help="keep the last apply (stops a --confirm-within timer)")
    p.set_defaults(handler=cmd_confirm)

    p = net.add_parser("rollback", help="undo the last apply")
    p.set_defaults(handler=cmd_rollback)

    p = net.add_parser("status", help="show live state and drift from the policy")
    add_policy_argument(p)
    p.add_argument("--metrics", action="store_true", help="print as Prometheus text")
    p.set_defaults(handler=cmd_status)

    p = net.add_parser("run", help="the controller daemon: apply, reconcile, control socket, metrics")
    add_policy_argument(p)
    p.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        default=None,
        help="also serve GET /metrics over HTTP (e.g. 127.0.0.1:9902)",
    )
    p.set_defaults(handler=cmd_run)


def _err(message: str) -> None:
    print(f"edge net: {message}", file=sys.stderr)


def _desired(args: argparse.Namespace):
    """(policy, desired) or an exit code."""
    from edge.net.desired import desired_from_policy
    from edge.policy import PolicyErrors, load_policy

    try:
        policy = load_policy(policy_path(args))
    except PolicyErrors as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        return EXIT_BAD_INPUT
    if policy.network is None:
        _err(f"{policy_path(args)}: the policy has no 'network:' section")
        return EXIT_BAD_INPUT
    return policy, desired_from_policy(policy)


def _plan(desired):
    from edge.net.apply import desired_devices
    from edge.net.diff import Managed, make_plan
    from edge.net.live import read_live
    from edge.net.state import StateDir

    live = read_live(desired)
    managed = Managed.from_json(StateDir().read("applied.json"))
    return live, make_plan(desired, live, desired_devices(desired), managed)


def _runtime_errors():
    from edge.net.apply import ApplyError
    from edge.net.confirm import PendingError
    from edge.net.nft import NftError
    from edge.wg.device import WireGuardError

    return (ApplyError, NftError, WireGuardError, PendingError, PermissionError, OSError)


def cmd_plan(args: argparse.Namespace) -> int:
    loaded = _desired(args)
    if isinstance(loaded, int):
        return loaded
    try:
        _live, plan = _plan(loaded[1])
    except _runtime_errors() as exc:
        _err(str(exc))
        return EXIT_RUNTIME
    sys.stdout.write(plan.render())
    return EXIT_OK


def cmd_apply(args: argparse.Namespace) -> int:
    from edge.net.confirm import apply_recorded
    from edge.net.state import StateDir
    from edge.units import UnitError, parse_duration

    within = None
    if args.confirm_within is not None:
        try:
            within = parse_duration(args.confirm_within)
        except UnitError as exc:
            _err(f"--confirm-within: {exc}")
            return EXIT_BAD_INPUT
        if within <= 0:
            _err("--confirm-within must be above zero")
            return EXIT_BAD_INPUT
    loaded = _desired(args)
    if isinstance(loaded, int):
        return loaded
    desired = loaded[1]
    try:
        result = apply_recorded(desired, StateDir(), within, lambda m: print(m))
    except _runtime_errors() as exc:
        _err(str(exc))
        return EXIT_RUNTIME
    for note in result.plan.notes:
        print(f"note: {note}")
    if result.plan.empty:
        print("no changes: the kernel matches the policy")
    if within:
        deadline = time.strftime("%H:%M:%S", time.localtime(time.time() + within))
        print(f"applied; rolls back at {deadline} unless `edge net confirm` runs before")
    return EXIT_OK


def cmd_confirm(_args: argparse.Namespace) -> int:
    from edge.net.confirm import confirm
    from edge.net.state import StateDir

    try:
        print(confirm(StateDir()))
    except OSError as exc:
        _err(str(exc))
        return EXIT_RUNTIME
    return EXIT_OK


def cmd_rollback(_args: argparse.Namespace) -> int:
    from edge.net.confirm import rollback
    from edge.net.state import StateDir

    try:
        print(rollback(StateDir(), lambda m: print(m)))
    except _runtime_errors() as exc:
        _err(str(exc))
        return EXIT_RUNTIME
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from edge.net import metrics
    from edge.net.confirm import pending
    from edge.net.state import StateDir

    loaded = _desired(args)
    if isinstance(loaded, int):
        return loaded
    policy, desired = loaded
    try:
        live, plan = _plan(desired)
    except _runtime_errors() as exc:
        _err(str(exc))
        return EXIT_RUNTIME
    if args.metrics:
        names = {
            (name, peer.public_key): peer_name
            for name, wg in policy.network.wireguard.items()
            for peer_name, peer in wg.peers.items()
        }
        sys.stdout.write(metrics.render_metrics(live, time.time(), names, not plan.empty))
        return EXIT_OK
    now = time.time()
    print(f"table inet edge: {'present' if live.table_text else 'absent'}")
    counts = {}
    for obj in live.table_json or ():
        body = obj.get("set")
        if body and body.get("name") in ("blocklist", "blocklist6"):
            counts[body["name"]] = len(body.get("elem", ()))
    if counts:
        print("block list: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    for zone in desired.zones:
        parts = []
        for name in zone.interfaces:
            link = live.links.get(name)
            state = "missing" if link is None else ("up" if link.up else "down")
            addrs = [a.address for a in live.addresses if a.interface == name]
            parts.append(f"{name} {state}" + (f" {' '.join(addrs)}" if addrs else ""))
        print(f"zone {zone.name}: {'; '.join(parts)}")
    for name, wg in sorted(live.wireguard.items()):
        print(f"wireguard {name}: {wg.backend}" + (f" (unreadable: {wg.error})" if wg.error else ""))
        for peer in wg.config.peers if wg.config else ():
            age = f"{now - peer.last_handshake:.0f}s ago" if peer.last_handshake else "never"
            print(f"  peer {peer.public_key[:8]}...: handshake {age}, rx {peer.rx_bytes} B, tx {peer.tx_bytes} B")
    waiting = pending(StateDir())
    if waiting:
        left = max(0, waiting["deadline"] - now)
        print(f"pending: the last apply rolls back in {left:.0f}s unless confirmed")
    print("drift:" if not plan.empty else "no drift")
    if not plan.empty:
        sys.stdout.write("".join("  " + line + "\n" for line in plan.render().splitlines()))
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from edge.net.run import run

    listen = None
    if args.metrics_listen:
        host, _, port = args.metrics_listen.rpartition(":")
        if not host or not port.isdigit():
            _err("--metrics-listen needs HOST:PORT")
            return EXIT_BAD_INPUT
        listen = (host.strip("[]"), int(port))
    return run(policy_path(args), listen)
