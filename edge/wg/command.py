"""``edge wg keygen`` and ``edge wg peer-config -c FILE PEER [--qr]``."""

from __future__ import annotations

import argparse
import sys

from edge.cli import EXIT_BAD_INPUT, EXIT_OK, EXIT_RUNTIME, add_policy_argument, policy_path


def add_commands(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("wg", help="WireGuard keys and peer configs", description=__doc__)
    wg = parser.add_subparsers(dest="wg_command", metavar="SUBCOMMAND", required=True)
    p = wg.add_parser("keygen", help="print a new private key (its public key on stderr)")
    p.set_defaults(handler=cmd_keygen)
    p = wg.add_parser("peer-config", help="print a ready-to-import client config for PEER")
    add_policy_argument(p)
    p.add_argument("peer", metavar="PEER", help="peer name (under network.wireguard.IFACE.peers)")
    p.add_argument("--interface", default=None, help="WireGuard interface, when PEER is in several")
    p.add_argument("--private-key-file", default=None, help="the peer's private key, to fill in PrivateKey")
    p.add_argument(
        "--allowed-ips",
        default="",
        help="extra networks the peer routes through the tunnel (comma separated, e.g. 10.0.10.0/24 or 0.0.0.0/0)",
    )
    p.add_argument("--qr", action="store_true", help="also print a terminal QR code (for the mobile apps)")
    p.set_defaults(handler=cmd_peer_config)


def cmd_keygen(_args: argparse.Namespace) -> int:
    from edge.wg.keys import generate_private_key, public_key

    private = generate_private_key()
    print(private)
    print(f"public key: {public_key(private)}", file=sys.stderr)
    return EXIT_OK


def cmd_peer_config(args: argparse.Namespace) -> int:
    from edge.policy import PolicyErrors, load_policy
    from edge.wg.config import peer_config
    from edge.wg.keys import public_key, read_key_file

    try:
        policy = load_policy(policy_path(args))
    except PolicyErrors as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        return EXIT_BAD_INPUT
    interfaces = policy.network.wireguard if policy.network else {}
    matches = [name for name, wg in interfaces.items() if args.peer in wg.peers and args.interface in (None, name)]
    if not matches:
        print(f"edge wg: no peer {args.peer!r} under network.wireguard", file=sys.stderr)
        return EXIT_BAD_INPUT
    if len(matches) > 1:
        print(f"edge wg: peer {args.peer!r} is in {', '.join(matches)}; pick one with --interface", file=sys.stderr)
        return EXIT_BAD_INPUT
    name = matches[0]
    interface = interfaces[name]
    try:
        host_public = public_key(read_key_file(interface.private_key_file))
        peer_private = read_key_file(args.private_key_file) if args.private_key_file else None
        peer = interface.peers[args.peer]
        psk = read_key_file(peer.preshared_key_file) if peer.preshared_key_file else None
    except (OSError, ValueError) as exc:
        print(f"edge wg: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    extra = tuple(a.strip() for a in args.allowed_ips.split(",") if a.strip())
    text = peer_config(name, interface, args.peer, host_public, peer_private, extra, psk)
    sys.stdout.write(text)
    if args.qr:
        import segno

        segno.make(text, error="l").terminal(out=sys.stdout, compact=True)
    return EXIT_OK
