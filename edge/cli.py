"""The ``edge`` command line: argparse, and exit codes 0 ok / 1 runtime failure / 2 bad input.

Each command group lives in its own module and is imported only when used, so
``edge check`` never pays for uvloop and ``edge serve`` never imports pyroute2.
A group module exposes ``add_commands(subparsers)``; each command's handler takes
the parsed ``argparse.Namespace`` and returns the exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from edge import __version__

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_BAD_INPUT = 2

# group name -> module that registers it (see add_commands in each)
_GROUPS = {
    "serve": "edge.serve.command",
    "check": "edge.policy.command",
    "net": "edge.net.command",
    "wg": "edge.wg.command",
    "ca": "edge.ca.command",
    "bench": "bench.command",
}


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on bad usage already; keep that, it matches 'bad input'."""


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="edge", description="A self-hoster's edge: reverse proxy and network controller.")
    parser.add_argument("--version", action="version", version=f"edge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in dict.fromkeys(_GROUPS.values()):
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:  # a group whose dependencies are missing stays usable as a message
            name = next(k for k, v in _GROUPS.items() if v == module_name)
            stub = sub.add_parser(name, help=f"(unavailable: {exc})")
            stub.set_defaults(handler=_unavailable(name, exc))
            continue
        module.add_commands(sub)
    return parser


def _unavailable(name: str, exc: Exception):
    def handler(_args: argparse.Namespace) -> int:
        print(f"edge {name}: unavailable: {exc}", file=sys.stderr)
        return EXIT_RUNTIME

    return handler


def add_policy_argument(parser: argparse.ArgumentParser) -> None:
    from edge.policy import default_policy_path

    parser.add_argument(
        "-c",
        "--config",
        dest="config",
        default=None,
        metavar="FILE",
        help=f"policy file (default: $EDGE_POLICY, then {default_policy_path()!r})",
    )


def policy_path(args: argparse.Namespace) -> str:
    from edge.policy import default_policy_path

    return args.config or default_policy_path()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        return EXIT_RUNTIME


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
