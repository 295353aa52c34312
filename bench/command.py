"""``edge bench`` / ``python -m bench``: the command line of the benchmark harness.

Maps options onto ``harness.Options`` and nothing more; ``add_commands`` registers the
``bench`` command with edge's CLI (imported lazily by ``edge/cli.py``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from bench import harness, peers, report
from bench.wrk import parse_duration_text

EXIT_BAD_INPUT = 2

QUICK_DURATION_S = 2

DESCRIPTION = (
    "Benchmark edge against nginx, HAProxy and Caddy as reverse proxies in front of one nginx origin "
    "(proxy pinned to CPU 1, origin and load generator to CPU 0) and print one table; --https: over TLS "
    "(keep-alive HTTPS, HTTP/2, full handshakes). See bench/README.md."
)


def _names(known: Sequence[str], what: str):
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(n.strip() for n in text.split(",") if n.strip())
        unknown = [n for n in names if n not in known]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {', '.join(unknown) or '(none)'}; choose from {','.join(known)}"
            )
        return tuple(dict.fromkeys(names))

    return parse


def _duration(text: str, minimum: int = 1) -> int:
    try:
        return parse_duration_text(text, minimum)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _rounds(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"--repeat {text!r}: expected a whole number >= 1")
    return int(text)


def _warmup(text: str) -> int:
    return _duration(text, minimum=0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``bench``, shared by ``edge bench`` and ``python -m bench``."""
    parser.add_argument(
        "--duration",
        type=_duration,
        default=10,
        metavar="SECONDS",
        help="length of each wrk test, whole seconds (default: 10)",
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_DURATION_S}s per test and no warm-up: a CI smoke run"
    )
    parser.add_argument(
        "--only",
        type=_names(peers.PROXIES, "proxy"),
        default=peers.PROXIES,
        metavar="LIST",
        help=f"comma-separated proxies to run (default: {','.join(peers.PROXIES)})",
    )
    parser.add_argument(
        "--tests",
        type=_names(tuple(report.TESTS), "test"),
        default=None,
        metavar="LIST",
        help=f"comma-separated tests (default: {','.join(report.PLAIN_TESTS)}; "
        f"with --https: {','.join(report.HTTPS_TESTS)}, and the plain ones may be added)",
    )
    parser.add_argument(
        "--repeat",
        type=_rounds,
        default=1,
        metavar="N",
        help="run every test N rounds (interleaved) and report medians (default: 1)",
    )
    parser.add_argument(
        "--edge-policy",
        type=Path,
        default=None,
        metavar="FILE",
        help="edge policy template instead of bench/configs/edge.yaml (placeholders: see README)",
    )
    parser.add_argument(
        "--warmup",
        type=_warmup,
        default=1,
        metavar="SECONDS",
        help="wrk warm-up per proxy before the tests (default: 1)",
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=harness.RESULTS_DIR,
        metavar="DIR",
        help="where the JSON (and PNG) go (default: bench/results/)",
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs with taskset")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (configs, logs)")
    parser.add_argument(
        "--https",
        action="store_true",
        help="give every proxy a TLS listener and run the TLS tests "
        f"({','.join(report.HTTPS_TESTS)}; same certificate and client TLS settings for all)",
    )


def selected_tests(args: argparse.Namespace) -> tuple[str, ...]:
    """``--tests`` as given, else the plain tests, or the TLS tests with ``--https``."""
    if args.tests is not None:
        return tuple(args.tests)
    return report.HTTPS_TESTS if args.https else report.PLAIN_TESTS


def options_from(args: argparse.Namespace) -> harness.Options:
    """Parsed arguments -> harness options."""
    return harness.Options(
        duration_s=QUICK_DURATION_S if args.quick else args.duration,
        warmup_s=0 if args.quick else args.warmup,
        repeat=args.repeat,
        proxies=args.only,
        tests=selected_tests(args),
        https=bool(args.https),
        edge_policy=args.edge_policy,
        results_dir=args.results_dir,
        keep=args.keep,
        pin=not args.no_pin,
        extra_meta={"quick": bool(args.quick), "argv": sys.argv[1:]},
    )


def run_bench(args: argparse.Namespace) -> int:
    """Handler of ``bench``: exit 0 when every selected proxy ran, 1 otherwise, 2 on bad input."""
    tls_tests = [t for t in selected_tests(args) if t in report.HTTPS_TESTS]
    if tls_tests and not args.https:
        print(f"bench: --tests {','.join(tls_tests)} run over TLS: add --https", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.edge_policy is not None and not args.edge_policy.is_file():
        print(f"bench: --edge-policy {args.edge_policy}: no such file", file=sys.stderr)
        return EXIT_BAD_INPUT
    return harness.run(options_from(args))


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register ``bench`` with edge's command line."""
    parser = sub.add_parser(
        "bench",
        help="benchmark edge against nginx, HAProxy and Caddy",
        description=DESCRIPTION,
    )
    add_arguments(parser)
    parser.set_defaults(handler=run_bench)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench``."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=DESCRIPTION)
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_bench(args)
    except KeyboardInterrupt:
        print("bench: interrupted; every started process was stopped", file=sys.stderr)
        return 130
