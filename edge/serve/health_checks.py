"""Active health checks: probe each upstream's ``health_check.path`` every ``interval``.

One task per service that asks for checks, keyed by the ServiceRuntime object so a
reload that keeps a service keeps its task (and its thresholds' progress). Results go
to the pure ``ServiceHealth`` state machine, which flips ``UpstreamState.healthy``.
aiohttp's client is fine here: this is not the request path.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import aiohttp

from edge.health import check_passed

if TYPE_CHECKING:
    from edge.balance import UpstreamState
    from edge.serve.runtime import Runtime, ServiceRuntime

__all__ = ["ActiveHealthChecks"]

log = logging.getLogger("edge.health")


class ActiveHealthChecks:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._tasks: dict[int, tuple[ServiceRuntime, asyncio.Task]] = {}
        self._session: aiohttp.ClientSession | None = None

    def sync(self, runtime: Runtime) -> None:
        """Run checks for the services of ``runtime`` that have a health_check; stop the others."""
        wanted = {id(s): s for s in runtime.services.values() if s.policy.health_check is not None}
        for key in [k for k in self._tasks if k not in wanted]:
            self._tasks.pop(key)[1].cancel()
        for key, service in wanted.items():
            if key not in self._tasks:
                self._tasks[key] = (service, self.loop.create_task(self._run(service)))

    async def stop(self) -> None:
        for _, task in self._tasks.values():
            task.cancel()
        self._tasks.clear()
        if self._session is not None:
            await self._session.close()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=64, force_close=True),
                headers={"User-Agent": "edge-health-check"},
            )
        return self._session

    async def _run(self, service: ServiceRuntime) -> None:
        check = service.policy.health_check
        assert check is not None
        while True:
            await asyncio.gather(*(self._probe(service, state) for state in service.upstreams))
            await asyncio.sleep(check.interval)

    async def _probe(self, service: ServiceRuntime, state: UpstreamState) -> None:
        check = service.policy.health_check
        assert check is not None
        url = state.upstream.url.rstrip("/") + check.path
        try:
            async with self._client().get(
                url, timeout=aiohttp.ClientTimeout(total=check.timeout), allow_redirects=False
            ) as response:
                ok = check_passed(response.status)
        except (TimeoutError, aiohttp.ClientError, OSError):
            ok = False
        changed = service.health.record_check(state.index, ok, self.loop.time())
        if changed is not None:
            log.warning("service %s upstream %s is now %s (active check %s)", service.name, state.label,
                        changed.name.lower(), url)
