"""A tiny demo upstream (aiohttp) so the demo and the tests have a real origin to proxy to.

``python -m edge.demo --listen 127.0.0.1:8081 [--listen ...] [--name NAME]``:
``/`` a page showing what edge forwarded, ``/echo`` returns the request body,
``/bytes/N`` N bytes, ``/html/N`` N bytes of HTML, ``/count`` a counter (for caches),
``/status/N`` that status, ``/slow/SECONDS`` a late answer,
``/ws`` a WebSocket echo.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import html
import json

from aiohttp import WSMsgType, web


def make_app(name: str = "demo") -> web.Application:
    async def index(request: web.Request) -> web.Response:
        rows = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in request.headers.items()
        )
        page = (
            f"<!doctype html><meta charset=utf-8><title>edge demo</title><h1>Hello from the {html.escape(name)} "
            f"upstream</h1><p>{html.escape(request.method)} {html.escape(request.path_qs)}</p>"
            f"<p>What edge forwarded:</p><table>{rows}</table>"
        )
        return web.Response(text=page, content_type="text/html", headers={"X-Upstream": name})

    async def headers(request: web.Request) -> web.Response:
        return web.json_response({"upstream": name, "method": request.method, "path": request.path_qs,
                                  "headers": [[k, v] for k, v in request.headers.items()]})

    async def echo(request: web.Request) -> web.StreamResponse:
        digest = hashlib.sha256()
        size = 0
        async for chunk in request.content.iter_any():
            digest.update(chunk)
            size += len(chunk)
        return web.json_response({"upstream": name, "size": size, "sha256": digest.hexdigest()})

    async def stream_bytes(request: web.Request) -> web.StreamResponse:
        size = int(request.match_info["size"])
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream", "X-Upstream": name})
        if request.query.get("chunked") is None:
            response.content_length = size
        await response.prepare(request)
        if request.method == "HEAD":  # aiohttp would send the body anyway
            return response
        block = bytes(range(256)) * 256
        sent = 0
        while sent < size:
            piece = block[: min(len(block), size - sent)]
            await response.write(piece)
            sent += len(piece)
        await response.write_eof()
        return response

    async def html_page(request: web.Request) -> web.Response:
        size = int(request.match_info["size"])
        unit = "<p>edge demo text, compressible and repetitive.</p>\n"
        body = ("<!doctype html>" + unit * (size // len(unit) + 1))[:size]
        return web.Response(text=body, content_type="text/html", headers={"X-Upstream": name})

    counter = {"n": 0}

    async def count(request: web.Request) -> web.Response:
        """A counter: proves whether a response came from the upstream or a cache.

        ?cc=VALUE sets Cache-Control; ?etag=1 adds a fixed ETag (and answers If-None-Match with 304).
        """
        headers = {"X-Upstream": name}
        if "cc" in request.query:
            headers["Cache-Control"] = request.query["cc"]
        if request.query.get("etag"):
            headers["ETag"] = '"v1"'
            if request.headers.get("If-None-Match") == '"v1"':
                counter["n"] += 1
                return web.Response(status=304, headers={**headers, "X-Count": str(counter["n"])})
        if "vary" in request.query:
            headers["Vary"] = request.query["vary"]
        counter["n"] += 1
        lang = request.headers.get("Accept-Language", "")
        return web.Response(text=f"count {counter['n']} {lang}\n", headers=headers)

    async def status(request: web.Request) -> web.Response:
        code = int(request.match_info["code"])
        return web.Response(status=code, text=f"status {code}\n" if code not in (204, 304) else None)

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.match_info["seconds"]))
        return web.Response(text="late\n")

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            if msg.type == WSMsgType.TEXT:
                await sock.send_str(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await sock.send_bytes(msg.data)
        return sock

    app = web.Application(client_max_size=1 << 40)
    app.router.add_get("/", index)
    app.router.add_get("/headers", headers)
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/bytes/{size:\\d+}", stream_bytes)
    app.router.add_route("*", "/status/{code:\\d+}", status)
    app.router.add_get("/html/{size:\\d+}", html_page)
    app.router.add_route("*", "/count", count)
    app.router.add_get("/slow/{seconds}", slow)
    app.router.add_get("/ws", ws)
    return app


async def serve(listens: list[str], name: str) -> None:
    runner = web.AppRunner(make_app(name), access_log=None)
    await runner.setup()
    for listen in listens:
        host, _, port = listen.rpartition(":")
        await web.TCPSite(runner, host.strip("[]"), int(port)).start()
    print(json.dumps({"demo_upstream": name, "listen": listens}), flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", action="append", default=[], help="HOST:PORT (repeatable)")
    parser.add_argument("--name", default="demo")
    args = parser.parse_args()
    try:
        asyncio.run(serve(args.listen or ["127.0.0.1:8081"], args.name))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
