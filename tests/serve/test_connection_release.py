"""A closed client connection is freed by refcounting, at once: nothing of it (its protocol,
reader, parser, TLS object and buffers) is left for the cyclic collector. Left to it, every
connection's objects were freed in bulk and late, and malloc paid for the fragmentation."""

from __future__ import annotations

import asyncio
import gc
import ssl

import uvloop

from edge.ca import init_ca, issue_leaf
from edge.policy.load import parse_policy
from edge.serve.server import Server
from tests.support.procs import free_port

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class _Upstream(asyncio.Protocol):
    def connection_made(self, transport):  # type: ignore[override]
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(RESPONSE * data.count(b"\r\n\r\n"))


async def _get(port: int, tls: ssl.SSLContext | None) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
    writer.write(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    data = await reader.read()  # until the proxy closes
    writer.close()
    return data


def test_closed_connections_leave_nothing_for_the_cyclic_collector(tmp_path):
    ca = init_ca(tmp_path / "ca")
    leaf = issue_leaf(ca, ["127.0.0.1"], cert_path=tmp_path / "a.pem", key_path=tmp_path / "a.key")
    plain, secure = free_port(), free_port()

    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        upstream = await loop.create_server(_Upstream, "127.0.0.1", 0)
        up_port = upstream.sockets[0].getsockname()[1]
        policy = parse_policy(
            f"version: 1\nlisteners:\n  web: {{listen: ['127.0.0.1:{plain}']}}\n"
            f"  tls: {{listen: ['127.0.0.1:{secure}'], tls: {{certificates: [{{cert: '{leaf.cert_path}', "
            f"key: '{leaf.key_path}'}}], alpn: [http/1.1]}}}}\n"
            f"services: {{s: {{upstreams: [{{url: 'http://127.0.0.1:{up_port}'}}]}}}}\n"
            "routes: [{service: s}]\n"
        )
        server = Server(policy, loop)
        await server.start()
        client_tls = ssl.create_default_context(cafile=str(ca.root_path))
        try:
            await _get(plain, None)  # first use: whatever is made once per process
            await _get(secure, client_tls)
            gc.collect()
            gc.disable()
            for _ in range(5):
                assert (await _get(plain, None)).count(b" 200 OK") == 2
                assert (await _get(secure, client_tls)).count(b" 200 OK") == 2
            while server.connections:  # each closes once its last answer is out
                await asyncio.sleep(0.01)
            await asyncio.sleep(0)  # connection_lost runs in the loop's next pass
            gc.set_debug(gc.DEBUG_SAVEALL)
            gc.collect()
            return sorted({type(o).__name__ for o in gc.garbage})
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
            await server.stop(1)
            upstream.close()

    left = uvloop.run(asyncio.wait_for(main(), 30))
    assert "ClientConnection" not in left and "RequestReader" not in left and "_SSLSocket" not in left, left
