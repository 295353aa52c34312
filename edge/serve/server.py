"""The serving shell: listeners, the deadline sweeper, reload on SIGHUP, drain on SIGTERM.

Owns every socket the proxy listens on and the set of client connections. The
policy lives in one ``Runtime`` reference: a reload compiles the new policy off
the hot path and swaps it; requests in flight keep the runtime they started with.
Listeners whose (name, address) stay keep their sockets, new ones open, removed
ones stop accepting while their connections finish.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import ssl
import time

from edge.acme import AcmeManager
from edge.ca import ensure_internal
from edge.cache.store import CacheStore, MemoryStore
from edge.geoip import GeoIPDatabase
from edge.policy import Policy, PolicyErrors, load_policy
from edge.quality import ClientMeasurements
from edge.serve.accesslog import AccessLog
from edge.serve.health_checks import ActiveHealthChecks
from edge.serve.metrics import Metrics, RouteMetrics
from edge.serve.proxy import ClientConnection, UpstreamConnection
from edge.serve.runtime import Runtime, changed_route_labels, compile_runtime, retired_services
from edge.serve.shared_limits import SharedLimits
from edge.serve.state import load_state, save_state
from edge.tls import HANDSHAKE_TIMEOUT, TlsError, TlsTerminator

__all__ = ["Server"]

log = logging.getLogger("edge.serve")

DRAIN_TIMEOUT = 15.0  # seconds in-flight requests get on SIGTERM before the rest are cut
CERT_CHECK_INTERVAL = 12 * 3600.0  # internal leaves live 30 days; renewal starts well before
VERIFY_MIN_REQUESTS = 10  # a reload is judged on at least this many requests to changed routes


class Server:
    def __init__(self, policy: Policy, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.policy = policy
        self.metrics = Metrics()
        self.unrouted: RouteMetrics = self.metrics.route("")
        self.access_log = AccessLog(policy.access_log.path, policy.access_log.enabled)
        self.connections: set[ClientConnection] = set()
        # ACME http-01: token -> key authorization, answered on plain listeners (edge.acme fills it)
        self.acme_http01: dict[str, bytes] = {}
        self.draining = False
        self.wall_offset = time.time() - time.perf_counter()  # access-log wall clock from perf_counter
        self.runtime: Runtime = compile_runtime(policy, loop, self.metrics, UpstreamConnection)
        self._listeners: dict[tuple[str, str, bytes], asyncio.AbstractServer] = {}
        self.terminators: dict[str, TlsTerminator] = {}
        self.acme: dict[str, AcmeManager] = {}  # per TLS listener with tls.acme
        self.manage_acme = True  # tests that drive an AcmeManager themselves turn this off
        self._sweeper: asyncio.Task | None = None
        self._next_cert_check = loop.time() + CERT_CHECK_INTERVAL
        self._verify: tuple[float, Policy, dict[str, tuple[int, int]], float] | None = None
        self._admin = None
        self._stopped = asyncio.Event()
        self.metrics.collectors.append(self._upstream_metrics)
        self.health_checks = ActiveHealthChecks(loop)
        # kept across reloads: what edge learnt about clients, and the response cache
        self.clients = ClientMeasurements()
        self.cache_store: CacheStore = self._open_cache(policy)
        self.shared_limits: SharedLimits | None = None
        self.geoip: GeoIPDatabase | None = None
        self._sync_geoip(policy)
        self._next_limiter_sweep = 0.0

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        self.access_log.start(self.loop)
        if self.policy.state.file and load_state(self.runtime, self.policy.state.file, self.loop.time(), self.clients):
            log.info("state restored from %s", self.policy.state.file)
        await self._sync_listeners(self.policy)
        if self.policy.admin is not None:
            from edge.serve.admin import AdminServer

            self._admin = AdminServer(self)
            await self._admin.start(self.policy.admin)
        self._sweeper = self.loop.create_task(self._sweep())
        self._sync_shared_limits(self.policy)
        self.health_checks.sync(self.runtime)
        for sig, handler in ((signal.SIGHUP, self.request_reload), (signal.SIGTERM, self.request_stop),
                             (signal.SIGINT, self.request_stop)):
            try:
                self.loop.add_signal_handler(sig, handler)
            except (NotImplementedError, RuntimeError, ValueError):
                pass  # not the main thread (tests): reload/stop are called directly

    async def serve_until_stopped(self) -> None:
        await self._stopped.wait()

    def request_stop(self) -> None:
        if not self.draining:
            self.loop.create_task(self.stop())

    def request_reload(self) -> None:
        self.loop.create_task(self.reload())

    async def stop(self, timeout: float = DRAIN_TIMEOUT) -> None:
        """Stop accepting, let in-flight requests finish (bounded), close everything."""
        if self.draining:
            await self._stopped.wait()
            return
        self.draining = True
        log.info("draining %d connections", len(self.connections))
        for server in self._listeners.values():
            server.close()
        for conn in list(self.connections):
            conn.drain()
        deadline = self.loop.time() + timeout
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            conn.transport.abort()
        if self.policy.state.file:
            try:
                save_state(self.runtime, self.policy.state.file, self.loop.time(), self.clients)
            except OSError as exc:
                log.error("state not saved to %s: %s", self.policy.state.file, exc)
        for service in self.runtime.services.values():
            service.close()
        await self.health_checks.stop()
        for manager in self.acme.values():
            await manager.stop()
        if self._admin is not None:
            await self._admin.stop()
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.cache_store.remote:
            await self.cache_store.close()  # type: ignore[attr-defined]
        if self.shared_limits is not None:
            await self.shared_limits.close()
        self.access_log.close()
        self._stopped.set()

    # -- reload ---------------------------------------------------------------------------
    async def reload(self, path: str | None = None) -> bool:
        """Load the policy file again; keep the running policy if it is broken."""
        path = path or self.policy.source
        try:
            policy = load_policy(path)
            self._sync_geoip(policy)
            new = compile_runtime(policy, self.loop, self.metrics, UpstreamConnection, previous=self.runtime)
            await self._sync_listeners(policy)
        except PolicyErrors as exc:
            self.metrics.reloads["error"] += 1
            for error in exc.errors:
                log.error("reload rejected, keeping the running policy: %s", error)
            return False
        except (OSError, ValueError, TlsError) as exc:
            self.metrics.reloads["error"] += 1
            log.error("reload rejected, keeping the running policy: %s", exc)
            return False
        old = self.runtime
        previous_policy = self.policy
        self.runtime = new
        self.policy = policy
        self._watch_reload(previous_policy, policy)
        self._sync_cache(previous_policy, policy)
        self._sync_shared_limits(policy)
        self.access_log.configure(policy.access_log.path, policy.access_log.enabled)
        self.access_log.reopen()
        for service in retired_services(old, new):
            service.close()
        self.health_checks.sync(new)
        self.metrics.reloads["ok"] += 1
        log.info("policy reloaded from %s", path)
        return True

    # -- what instances share ------------------------------------------------------------
    def _sync_shared_limits(self, policy: Policy) -> None:
        """Start, stop or re-point the rate-limit reports to ``state.redis_url``."""
        url = policy.state.redis_url
        current = self.shared_limits
        if current is not None and current.url == url:
            return
        if current is not None:
            self.loop.create_task(current.close())
            self.shared_limits = None
        if url is not None:
            self.shared_limits = SharedLimits(url, self.loop, lambda: self.runtime)
            self.shared_limits.start()
            log.info("rate limits: buckets shared through redis at %s", url.rpartition("@")[2])

    # -- the response cache ---------------------------------------------------------------
    def _open_cache(self, policy: Policy) -> CacheStore:
        cache = policy.cache
        if cache.backend == "redis":
            from edge.cache.redis_store import RedisStore

            url = cache.redis_url or policy.state.redis_url
            assert url is not None  # the loader requires one
            log.info("cache: shared, in redis at %s", url.rpartition("@")[2])
            return RedisStore(url, cache.max_size, self.loop)
        return MemoryStore(cache.max_size)

    def _sync_cache(self, previous: Policy, policy: Policy) -> None:
        """A reload that changes the backend or its URL opens a new store (the old Redis
        client closes once its writes are out); a new max_size applies to the memory store
        in place, evicting what no longer fits."""
        old, new = previous.cache, policy.cache
        if (old.backend, old.redis_url or previous.state.redis_url) != (
                new.backend, new.redis_url or policy.state.redis_url):
            current = self.cache_store
            self.cache_store = self._open_cache(policy)
            if current.remote:
                self.loop.create_task(current.close())  # type: ignore[attr-defined]
        elif old.max_size != new.max_size:
            self.cache_store.resize(new.max_size)

    def _sync_tls(self, policy: Policy) -> dict[str, TlsTerminator]:
        """The TLS terminator of every TLS listener: internal leaves issued or renewed, certs (re)read.

        A listener keeps its terminator (and so its SSL context) across reloads; a broken
        certificate file keeps the certificate it replaces. Raises TlsError (naming the
        file) only for a new listener whose certificates cannot load.
        """
        terminators: dict[str, TlsTerminator] = {}
        for name, listener in policy.listeners.items():
            tls = listener.tls
            if tls is None:
                continue
            leaves, errors = ensure_internal(tls, create_ca=True)
            for leaf in leaves:
                if getattr(leaf, "issued", False):
                    log.info("tls: issued %s from edge's internal CA", leaf.cert_path)
            for error in errors:
                log.error("tls: %s", error)
            current = self.terminators.get(name)
            if current is not None:
                manager = self.acme.get(name)
                # with ACME unchanged the manager's view includes the certificates it issued
                wanted = manager.serving_tls() if manager is not None and manager.acme == tls.acme else tls
                current.update(wanted)  # logs what it could not load; old certificates stay
                terminators[name] = current
            else:
                terminators[name] = TlsTerminator(tls)
        return terminators

    # -- reload verification (policy `reload:`) ----------------------------------------------
    def _sync_geoip(self, policy: Policy) -> None:
        """Open, reopen (a changed file or path) or close the GeoIP database; OSError/ValueError on a bad file."""
        wanted = policy.geoip.database if policy.geoip is not None else None
        current = self.geoip
        if wanted is None:
            if current is not None:
                current.close()
            self.geoip = None
            return
        try:
            if current is None:
                self.geoip = GeoIPDatabase(wanted)
            elif current.path != wanted or current.changed():
                current.reload(wanted)  # a file that does not open leaves the old one serving
                log.info("geoip: %s (re)loaded", wanted)
        except (OSError, ValueError, RuntimeError) as exc:
            raise OSError(f"geoip database {wanted}: {exc}") from None

    def _watch_reload(self, old: Policy, new: Policy) -> None:
        """Start watching the routes a reload changed, if the policy asks for it."""
        self._verify = None
        guard = new.reload
        if guard is None or not old.source:
            return
        changed = changed_route_labels(old, new)
        if not changed:
            return
        baseline = {label: self._route_counts(label) for label in changed}
        self._verify = (self.loop.time() + guard.verify_for, old, baseline, guard.max_error_ratio)

    def _route_counts(self, label: str) -> tuple[int, int]:
        route = self.metrics.routes.get(label)
        if route is None:
            return 0, 0
        total = sum(route.codes.values())
        errors = sum(n for (_, code), n in route.codes.items() if code >= 500)
        return total, errors

    def _check_reload(self, now: float) -> None:
        verify = self._verify
        if verify is None:
            return
        deadline, old_policy, baseline, max_ratio = verify
        total = errors = 0
        for label, (base_total, base_errors) in baseline.items():
            current_total, current_errors = self._route_counts(label)
            total += current_total - base_total
            errors += current_errors - base_errors
        if total >= VERIFY_MIN_REQUESTS and errors / total > max_ratio:
            self._verify = None
            log.error("policy reload rolled back: %d of %d requests on changed routes (%s) failed with 5xx",
                      errors, total, ", ".join(sorted(baseline)))
            self.metrics.rollbacks += 1
            self.loop.create_task(self._roll_back(old_policy))
        elif now >= deadline:
            self._verify = None

    async def _roll_back(self, policy: Policy) -> None:
        try:
            new = compile_runtime(policy, self.loop, self.metrics, UpstreamConnection, previous=self.runtime)
            await self._sync_listeners(policy)
        except (OSError, TlsError) as exc:
            log.error("rollback failed, keeping the current policy: %s", exc)
            return
        old = self.runtime
        self.runtime = new
        self._sync_cache(self.policy, policy)
        self._sync_shared_limits(policy)
        self.policy = policy
        for service in retired_services(old, new):
            service.close()
        self.health_checks.sync(new)

    async def _sync_listeners(self, policy: Policy) -> None:
        """Open missing listener sockets, close removed ones; all or nothing for new ones."""
        terminators = self._sync_tls(policy)
        wanted: dict[tuple[str, str, bytes], tuple[str, int]] = {}
        for name, listener in policy.listeners.items():
            proto = b"https" if listener.tls is not None else b"http"
            for address in listener.listen:
                wanted[(name, str(address), proto)] = (address.host, address.port)
        opened: dict[tuple[str, str, bytes], asyncio.AbstractServer] = {}
        try:
            for key, (host, port) in wanted.items():
                if key in self._listeners:
                    continue
                terminator = terminators.get(key[0])
                context = terminator.context if terminator is not None else None
                opened[key] = await self._open_listener(key[0], host, port, key[2], context)
        except OSError:
            for server in opened.values():
                server.close()
            raise
        self._listeners.update(opened)
        self.terminators = terminators
        for key in [k for k in self._listeners if k not in wanted]:
            self._listeners.pop(key).close()
        gone = set(self.policy.listeners) - set(policy.listeners)  # self.policy is still the old one here
        if gone:
            for conn in list(self.connections):
                if conn.listener in gone:
                    conn.drain()  # its listener is gone: finish what is in flight (HTTP/2: GOAWAY), then close
        await self._sync_acme(policy)

    async def _sync_acme(self, policy: Policy) -> None:
        """One ACME manager per TLS listener with ``tls.acme``: started, updated, stopped with the policy."""
        if not self.manage_acme:
            return
        for name in list(self.acme):
            listener = policy.listeners.get(name)
            tls = listener.tls if listener is not None else None
            if tls is None or tls.acme != self.acme[name].acme:
                await self.acme.pop(name).stop()
        for name, listener in policy.listeners.items():
            tls = listener.tls
            if tls is None or tls.acme is None:
                continue
            if name in self.acme:
                self.acme[name].update_policy(policy)
                continue
            terminator = self.terminators[name]
            manager = AcmeManager.for_listener(
                policy, name, self.acme_http01, terminator,
                on_certificate=lambda *_, t=terminator, n=name: t.update(self.acme[n].serving_tls()),
            )
            self.acme[name] = manager
            await manager.start()

    async def _open_listener(
        self, name: str, host: str, port: int, proto: bytes, context: ssl.SSLContext | None
    ) -> asyncio.AbstractServer:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise OSError(exc.errno, f"cannot listen on {host}:{port} for listener {name!r}: {exc.strerror}") from None
        sock.listen(1024)
        sock.setblocking(False)
        if context is None:
            return await self.loop.create_server(lambda: ClientConnection(self, name, proto), sock=sock)
        return await self.loop.create_server(
            lambda: ClientConnection(self, name, proto), sock=sock, ssl=context, ssl_handshake_timeout=HANDSHAKE_TIMEOUT
        )

    def listening_ports(self, name: str) -> list[int]:
        """The bound ports of a listener (tests listen on port 0... never: they pick free ports)."""
        out = []
        for (listener, _), server in self._listeners.items():
            if listener == name:
                out.extend(s.getsockname()[1] for s in server.sockets)
        return out

    # -- connections and deadlines ----------------------------------------------------------
    def connection_opened(self, conn: ClientConnection) -> None:
        self.connections.add(conn)
        self.metrics.connections_active += 1
        self.metrics.connections_total += 1

    def connection_closed(self, conn: ClientConnection) -> None:
        if conn in self.connections:
            self.connections.discard(conn)
            self.metrics.connections_active -= 1

    def _sweep_interval(self) -> float:
        limits = self.runtime.limits
        shortest = min(limits.header_timeout, limits.idle_timeout)
        for service in self.runtime.services.values():
            timeouts = service.policy.timeouts
            shortest = min(shortest, timeouts.connect, timeouts.response_header)
        return max(0.02, min(0.5, shortest / 5))

    async def _sweep(self) -> None:
        """Check every connection's deadline a few times a second (no timer per request)."""
        loop = self.loop
        while True:
            await asyncio.sleep(self._sweep_interval())
            now = loop.time()
            self.wall_offset = time.time() - time.perf_counter()
            for conn in [c for c in self.connections if c.deadline <= now]:
                try:
                    conn.on_timeout(now)
                except Exception:  # pragma: no cover - a bug must not stop the sweeper
                    log.exception("timeout handling failed")
            for service in self.runtime.services.values():
                for pool in service.pools:
                    if pool.idle:
                        pool.expire(now)
                for state, health_state in service.health.tick(now):
                    log.info("service %s upstream %s is %s again", service.name, state.label, health_state.name.lower())
            self._check_reload(now)
            if now >= self._next_limiter_sweep:
                self._next_limiter_sweep = now + 10.0
                for limiter in self.runtime.limiters.values():
                    limiter.sweep(now)
                self.clients.sweep(now)
                self.cache_store.sweep(now)
            if now >= self._next_cert_check:
                self._next_cert_check = now + CERT_CHECK_INTERVAL
                self._renew_internal_certificates()

    def ban(self, address: str, seconds: float) -> None:
        """Hand a persistent rate-limit offender to ``edge net run``'s block list (off the loop)."""
        network = self.policy.network
        if network is None:
            log.warning("rate limit ban for %s not sent: no network.control_socket in the policy", address)
            return
        from edge.net.control import block

        def send() -> None:
            try:
                block(network.control_socket, address, seconds)
                log.info("banned %s for %.0fs via %s", address, seconds, network.control_socket)
            except Exception as exc:  # the controller may not run; the 429s go on regardless
                log.warning("ban for %s not sent to %s: %s", address, network.control_socket, exc)

        self.loop.run_in_executor(None, send)

    def _renew_internal_certificates(self) -> None:
        """Twice a day: renew expiring internal-CA leaves and re-read changed certificate files."""
        for name, listener in self.policy.listeners.items():
            terminator = self.terminators.get(name)
            if listener.tls is None or terminator is None:
                continue
            _, errors = ensure_internal(listener.tls)
            for error in errors:
                log.error("tls: %s", error)
            terminator.reload()

    def _upstream_metrics(self):
        up = []
        for name, service in self.runtime.services.items():
            for state in service.upstreams:
                up.append(({"service": name, "upstream": state.label}, 1.0 if state.healthy else 0.0))
        yield ("edge_upstream_up", "gauge", "1 if the upstream takes traffic, 0 if it is out.", up)
        circuits = [
            ({"service": name}, float(service.breaker.metric_value if service.breaker is not None else 0))
            for name, service in self.runtime.services.items()
        ]
        yield ("edge_circuit_state", "gauge", "Circuit breaker: 0 closed, 1 open, 2 half-open.", circuits)
