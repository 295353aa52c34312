"""``edge ca init`` / ``edge ca issue``: the internal CA on the command line.

Thin shell over ``edge.ca.authority``: parses arguments, maps BadName to exit 2 and CaError or
an OS error to exit 1, prints what was written. Imports ``cryptography`` only when run.
"""

from __future__ import annotations

import argparse
import sys

from edge.cli import EXIT_BAD_INPUT, EXIT_OK, EXIT_RUNTIME


def add_commands(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "ca",
        help="internal CA for LAN names",
        description="An internal CA for LAN names: a root your devices trust once (docs/tls.md), "
        "and short-lived leaf certificates it signs.",
    )
    ca_sub = parser.add_subparsers(dest="ca_command", metavar="COMMAND", required=True)

    init = ca_sub.add_parser(
        "init",
        help="create the root (ECDSA P-256) in DIR",
        description="Create an ECDSA P-256 root in DIR: root.pem / root.crt (import these into devices) "
        "and root.key (mode 0600, keep it secret). Refuses to overwrite an existing root.",
    )
    init.add_argument("--dir", required=True, metavar="DIR", help="CA directory (created 0700 if missing)")
    init.add_argument(
        "--permit",
        action="append",
        default=[],
        metavar="DOMAIN",
        help="constrain the root to DOMAIN and its subdomains (repeatable); limits damage if the key leaks",
    )
    init.set_defaults(handler=run_init)

    issue = ca_sub.add_parser(
        "issue",
        help="issue leaf certificates signed by the root in DIR",
        description="Issue one leaf per NAME. A NAME may list several comma-separated names and IP "
        "addresses (nas.home.lan,192.168.1.10) for one certificate; the first names the files "
        "NAME.pem (leaf + root) and NAME.key (0600).",
    )
    issue.add_argument("--dir", required=True, metavar="DIR", help="CA directory (from `edge ca init`)")
    issue.add_argument("--days", type=int, default=30, help="validity in days (default 30, at most 825)")
    issue.add_argument("--client", action="store_true", help="also allow the certificate as an mTLS client")
    issue.add_argument("--out", metavar="OUTDIR", default=None, help="write the files here instead of DIR")
    issue.add_argument("names", nargs="+", metavar="NAME", help="DNS name, *.wildcard or IP (comma-separated)")
    issue.set_defaults(handler=run_issue)


def run_init(args: argparse.Namespace) -> int:
    from edge.ca.authority import BadName, CaError, init_ca

    try:
        ca = init_ca(args.dir, permitted=args.permit)
    except BadName as exc:
        print(f"edge ca init: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (CaError, OSError) as exc:
        print(f"edge ca init: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    subject = ca.certificate.subject.rfc4514_string()
    print(f"created {ca.root_path} ({subject}); import it (or root.crt) into your devices, see docs/tls.md")
    return EXIT_OK


def run_issue(args: argparse.Namespace) -> int:
    from pathlib import Path

    from edge.ca.authority import BadName, CaError, file_stem, issue_leaf, load_ca, locked, normalize_name

    groups = [[n for n in arg.split(",") if n.strip()] for arg in args.names]
    try:
        if any(not g for g in groups):
            raise BadName("empty NAME")
        for group in groups:  # validate everything before writing anything
            for name in group:
                normalize_name(name)
        ca = load_ca(args.dir)
        out = Path(args.out) if args.out else ca.directory
        with locked(ca.directory):
            for group in groups:
                stem = file_stem(normalize_name(group[0]))
                leaf = issue_leaf(
                    ca,
                    group,
                    cert_path=out / f"{stem}.pem",
                    key_path=out / f"{stem}.key",
                    days=args.days,
                    client=args.client,
                )
                print(f"{leaf.cert_path} {leaf.key_path} ({', '.join(leaf.names)}; until {leaf.not_after:%Y-%m-%d})")
    except BadName as exc:
        print(f"edge ca issue: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (CaError, OSError) as exc:
        print(f"edge ca issue: {exc}", file=sys.stderr)
        return EXIT_RUNTIME
    return EXIT_OK
