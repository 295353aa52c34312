"""``edge serve -c FILE``: run the proxy until SIGTERM/SIGINT (drain, exit 0); SIGHUP reloads."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys

from edge.cli import EXIT_BAD_INPUT, EXIT_OK, EXIT_RUNTIME, add_policy_argument, policy_path


def add_commands(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("serve", help="run the reverse proxy", description=__doc__)
    add_policy_argument(parser)
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from edge.policy import PolicyErrors, load_policy

    logging.basicConfig(
        level=getattr(logging, args.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        policy = load_policy(policy_path(args))
    except PolicyErrors as exc:
        for error in exc.errors:
            print(error, file=sys.stderr)
        return EXIT_BAD_INPUT
    if not policy.listeners:
        print(f"{policy.source}: no listeners: nothing to serve (the network section is for 'edge net')",
              file=sys.stderr)
        return EXIT_BAD_INPUT
    import uvloop

    try:
        return uvloop.run(_serve(policy))
    except OSError as exc:
        print(f"edge serve: {exc}", file=sys.stderr)
        return EXIT_RUNTIME


async def _serve(policy) -> int:
    from edge.serve.server import Server

    server = Server(policy, asyncio.get_running_loop())
    await server.start()
    # Everything allocated so far lives as long as the process: keep it out of the cyclic
    # collector's full passes, which otherwise show up as tail latency under load.
    gc.collect()
    gc.freeze()
    # Requests allocate containers that refcounting frees; the default gen0 threshold (700)
    # ran a young collection every few HTTP/2 streams (2.8% of CPU under h2load, py-spy).
    # Cycles still get collected, 20,000 allocations apart.
    gc.set_threshold(20_000, 20, 20)
    logging.getLogger("edge.serve").info(
        "serving %s", ", ".join(f"{n}={[str(a) for a in lst.listen]}" for n, lst in policy.listeners.items())
    )
    await server.serve_until_stopped()
    return EXIT_OK
