"""``edge net run``: the controller daemon.

Apply at start; every ``network.reconcile_interval`` read the kernel, log what drifted
and repair it; SIGHUP reloads the policy file (an invalid one is logged and the old
one kept); SIGTERM/SIGINT stop it (the firewall stays as it is). Serves the control
socket (``control.py``) and, with ``--metrics-listen``, ``GET /metrics``. The kernel work
is synchronous (libnftables, pyroute2's own event loop) and runs on one dedicated
kernel thread: one writer, so a reconcile and a block-list add never interleave.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from edge.net import apply as apply_mod
from edge.net import control, metrics, nft
from edge.net.desired import DesiredNet, desired_from_policy
from edge.net.diff import Managed, make_plan
from edge.net.live import read_live
from edge.net.state import StateDir
from edge.policy import PolicyErrors, load_policy

log = logging.getLogger("edge.net")


class Controller:
    def __init__(self, policy_path: str, state: StateDir, metrics_listen: tuple[str, int] | None = None) -> None:
        self.policy_path = policy_path
        self.state = state
        self.metrics_listen = metrics_listen
        self.desired: DesiredNet | None = None
        self.peer_names: dict[tuple[str, str], str] = {}
        self.reconciles: Counter[str] = Counter()
        self.blocks: Counter[str] = Counter()
        self.kernel = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edge-net-kernel")
        self._wake = asyncio.Event()
        self._reload = False
        self._stop = False

    # -- policy ---------------------------------------------------------------------------
    def load(self) -> DesiredNet:
        policy = load_policy(self.policy_path)
        desired = desired_from_policy(policy)
        assert policy.network is not None
        self.peer_names = {
            (name, peer.public_key): peer_name
            for name, wg in policy.network.wireguard.items()
            for peer_name, peer in wg.peers.items()
        }
        return desired

    def apply(self, desired: DesiredNet) -> None:
        result = apply_mod.apply(desired, self.state, log.info)
        if result.plan.empty:
            log.info("kernel already matches the policy")

    def reconcile(self) -> None:
        desired = self.desired
        assert desired is not None
        live = read_live(desired)
        managed = Managed.from_json(self.state.read("applied.json"))
        plan = make_plan(desired, live, apply_mod.desired_devices(desired), managed)
        if plan.empty:
            self.reconciles["ok"] += 1
            return
        for change in plan.changes:
            log.warning("drift: %s", change)
        for line in plan.ruleset_diff:
            log.warning("drift: %s", line.rstrip("\n"))
        try:
            self.apply(desired)
            self.reconciles["repaired"] += 1
            log.warning("drift repaired")
        except apply_mod.ApplyError as exc:
            self.reconciles["error"] += 1
            log.error("could not repair drift: %s", exc)

    # -- block list -------------------------------------------------------------------------
    def change_elements(self, verb: str, elements) -> None:
        nft.update_elements(verb, elements)
        self.blocks[verb] += 1

    # -- metrics ----------------------------------------------------------------------------
    def metrics_text(self) -> str:
        desired = self.desired
        live = read_live(desired)
        drift = None
        if desired is not None:
            managed = Managed.from_json(self.state.read("applied.json"))
            try:
                drift = not make_plan(desired, live, apply_mod.desired_devices(desired), managed).empty
            except apply_mod.ApplyError:
                drift = None
        extra = {
            "edge_net_reconciles_total": (
                "counter",
                "Reconcile rounds by result",
                {(("result", r),): float(n) for r, n in self.reconciles.items()},
            ),
            "edge_net_blocklist_requests_total": (
                "counter",
                "Block-list changes through the control socket",
                {(("op", "block" if v == "add" else "unblock"),): float(n) for v, n in self.blocks.items()},
            ),
        }
        return metrics.render_metrics(live, time.time(), self.peer_names, drift, extra)

    async def _serve_metrics(self):
        async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                if head.split(b" ", 2)[:2] == [b"GET", b"/metrics"]:
                    text = await asyncio.get_running_loop().run_in_executor(self.kernel, self.metrics_text)
                    body = text.encode()
                    status = b"200 OK"
                else:
                    body, status = b"not found\n", b"404 Not Found"
                writer.write(
                    b"HTTP/1.1 "
                    + status
                    + b"\r\nContent-Type: text/plain; version=0.0.4\r\n"
                    + b"Content-Length: "
                    + str(len(body)).encode()
                    + b"\r\nConnection: close\r\n\r\n"
                    + body
                )
                await writer.drain()
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
                pass
            finally:
                writer.close()

        assert self.metrics_listen is not None
        return await asyncio.start_server(client, *self.metrics_listen)

    # -- the loop ---------------------------------------------------------------------------
    def _signal(self, reload: bool) -> None:
        if reload:
            self._reload = True
        else:
            self._stop = True
        self._wake.set()

    async def _k(self, fn, *args):
        """Run kernel work on the kernel thread."""
        return await asyncio.get_running_loop().run_in_executor(self.kernel, fn, *args)

    async def run(self) -> int:
        try:
            return await self._run()
        finally:
            self.kernel.shutdown(wait=True)

    async def _run(self) -> int:
        loop = asyncio.get_running_loop()
        try:
            self.desired = self.load()
        except (PolicyErrors, ValueError) as exc:
            log.error("%s", exc)
            return 2
        try:
            await self._k(self.apply, self.desired)
        except apply_mod.ApplyError as exc:
            log.error("apply failed: %s", exc)
            return 1
        socket_path = self.desired.control_socket
        server = await control.serve(socket_path, self.change_elements, self.kernel)
        metrics_server = await self._serve_metrics() if self.metrics_listen else None
        loop.add_signal_handler(signal.SIGHUP, self._signal, True)
        loop.add_signal_handler(signal.SIGTERM, self._signal, False)
        loop.add_signal_handler(signal.SIGINT, self._signal, False)
        log.info(
            "controller running: control socket %s, reconcile every %ss", socket_path, self.desired.reconcile_interval
        )
        try:
            while not self._stop:
                try:
                    await asyncio.wait_for(self._wake.wait(), self.desired.reconcile_interval)
                except TimeoutError:
                    pass
                self._wake.clear()
                if self._stop:
                    break
                if self._reload:
                    self._reload = False
                    await self._k(self._do_reload)
                    if self.desired.control_socket != socket_path:
                        server.close()
                        socket_path = self.desired.control_socket
                        server = await control.serve(socket_path, self.change_elements, self.kernel)
                    continue
                try:
                    await self._k(self.reconcile)
                except Exception as exc:
                    self.reconciles["error"] += 1
                    log.error("reconcile failed: %s", exc)
        finally:
            server.close()
            if metrics_server is not None:
                metrics_server.close()
            try:
                os.unlink(socket_path)
            except OSError:
                pass
        log.info("controller stopped")
        return 0

    def _do_reload(self) -> None:
        try:
            desired = self.load()
        except (PolicyErrors, ValueError) as exc:
            log.error("reload rejected, keeping the old policy: %s", exc)
            return
        try:
            self.apply(desired)
        except apply_mod.ApplyError as exc:
            log.error("reload: apply failed, previous state kept: %s", exc)
            return
        self.desired = desired
        log.info("reloaded %s", self.policy_path)


def run(policy_path: str, metrics_listen: tuple[str, int] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s edge net: %(levelname)s %(message)s")
    controller = Controller(policy_path, StateDir(), metrics_listen)
    return asyncio.run(controller.run())
