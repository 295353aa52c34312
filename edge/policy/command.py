"""``edge check -c FILE``: validate a policy; ``ok`` and exit 0, or one line per error and exit 2."""

from __future__ import annotations

import argparse
import sys

from edge.cli import EXIT_BAD_INPUT, EXIT_OK, add_policy_argument, policy_path


def add_commands(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("check", help="validate a policy file", description=__doc__)
    add_policy_argument(parser)
    parser.set_defaults(handler=run_check)


def run_check(args: argparse.Namespace) -> int:
    from edge.policy import PolicyErrors, load_policy

    try:
        load_policy(policy_path(args))
    except PolicyErrors as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        return EXIT_BAD_INPUT
    print("ok")
    return EXIT_OK
