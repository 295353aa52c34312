"""The admin endpoint: /metrics (Prometheus text), /status (JSON), / (a small dashboard).

aiohttp, not the hand-rolled data path: it is not on the hot path and is a
well-kept server. Bound to loopback by default; with ``admin.token_file`` every
request needs ``Authorization: Bearer <token>`` (the policy loader refuses a
non-loopback admin address without a token).
"""

from __future__ import annotations

import hmac
import html
import time
from typing import TYPE_CHECKING

from aiohttp import web

from edge import __version__
from edge.policy.model import Admin

if TYPE_CHECKING:
    from edge.serve.server import Server

__all__ = ["AdminServer"]


class AdminServer:
    def __init__(self, server: Server) -> None:
        self.server = server
        self.started = time.time()
        self._runner: web.AppRunner | None = None
        self._token: bytes | None = None

    async def start(self, admin: Admin) -> None:
        if admin.token_file:
            with open(admin.token_file, "rb") as handle:
                self._token = handle.read().strip()
            if not self._token:
                raise OSError(f"admin token file {admin.token_file} is empty")
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/status", self.status)
        app.router.add_get("/", self.dashboard)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, admin.listen.host, admin.listen.port, reuse_address=True)
        await site.start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _auth(self, request: web.Request, handler):
        if self._token is not None:
            given = request.headers.get("Authorization", "")
            if not (given.startswith("Bearer ") and hmac.compare_digest(given[7:].strip().encode(), self._token)):
                return web.Response(status=401, text="401 Unauthorized: bearer token required\n",
                                    headers={"WWW-Authenticate": "Bearer"})
        return await handler(request)

    async def metrics(self, _request: web.Request) -> web.Response:
        self.server.access_log.flush()
        return web.Response(text=self.server.metrics.render(), content_type="text/plain", charset="utf-8",
                            headers={"X-Content-Type-Options": "nosniff"})

    def _status(self) -> dict:
        server = self.server
        runtime = server.runtime
        return {
            "version": __version__,
            "uptime_seconds": round(time.time() - self.started, 3),
            "policy": server.policy.source,
            "draining": server.draining,
            "connections_active": server.metrics.connections_active,
            "reloads": server.metrics.reloads,
            "routes": [
                {"route": r.label, "host": r.policy.host, "path_prefix": r.policy.path_prefix,
                 "service": r.service.name}
                for r in runtime.routes
            ],
            "services": {
                name: {
                    "balancer": s.policy.balancer,
                    "upstreams": [
                        {"upstream": u.label, "healthy": u.healthy, "inflight": u.inflight,
                         "idle_connections": len(s.pools[u.index].idle), "connections": s.pools[u.index].count}
                        for u in s.upstreams
                    ],
                }
                for name, s in runtime.services.items()
            },
        }

    async def status(self, _request: web.Request) -> web.Response:
        return web.json_response(self._status())

    async def dashboard(self, _request: web.Request) -> web.Response:
        status = self._status()
        rows = "".join(
            f"<tr><td>{html.escape(name)}</td><td>{html.escape(u['upstream'])}</td>"
            f"<td>{'up' if u['healthy'] else 'DOWN'}</td><td>{u['inflight']}</td><td>{u['connections']}</td></tr>"
            for name, s in status["services"].items()
            for u in s["upstreams"]
        )
        body = (
            "<!doctype html><meta charset=utf-8><title>edge</title>"
            "<style>body{font:14px system-ui;margin:2em}td,th{padding:4px 10px;text-align:left}</style>"
            f"<h1>edge {html.escape(status['version'])}</h1>"
            f"<p>up {status['uptime_seconds']:.0f}s, {status['connections_active']} connections, "
            f"reloads ok {status['reloads']['ok']} / error {status['reloads']['error']}</p>"
            "<table><tr><th>service</th><th>upstream</th><th>state</th><th>in flight</th><th>connections</th></tr>"
            f"{rows}</table><p><a href=/metrics>metrics</a> &middot; <a href=/status>status JSON</a></p>"
        )
        return web.Response(text=body, content_type="text/html")
