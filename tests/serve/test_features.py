"""Quality tiers, compression, pacing, the response cache and fallbacks through a real edge."""

from __future__ import annotations

import gzip
import json
import re
import socket
import subprocess
import time

import pytest

from tests.support.procs import DemoUpstream, Edge, RawUpstream, free_port, raw_exchange, read_head, wait_until


def get(port: int, path: str, *headers: str, host: str = "t") -> tuple[int, dict[str, str], bytes]:
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n" + "".join(h + "\r\n" for h in headers)
    raw = raw_exchange(port, (request + "\r\n").encode())
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    if fields.get("transfer-encoding") == "chunked":
        body = _dechunk(body)
    return int(lines[0].split()[1]), fields, body


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return out


def metric(admin: int, pattern: str) -> float | None:
    text = subprocess.run(["curl", "-s", f"http://127.0.0.1:{admin}/metrics"], capture_output=True).stdout.decode()
    match = re.search(pattern + r" ([0-9.e+-]+)$", text, re.M)
    return float(match.group(1)) if match else None


PROFILE = """
quality_profiles:
  adaptive:
    tiers:
      - {name: low, when: {save_data: true}, max_rate: 8mbps, compress: true}
      - {name: medium, when: {downlink_below: 10mbps}, compress: true}
      - {name: high}
"""


@pytest.fixture(scope="module")
def stack():
    up = DemoUpstream("feat")
    port, admin = free_port(), free_port()
    edge = Edge(
        f"version: 1\nadmin: {{listen: '127.0.0.1:{admin}'}}\n"
        f"listeners: {{web: {{listen: ['127.0.0.1:{port}']}}}}\n"
        f"services: {{s: {{upstreams: [{{url: '{up.url}'}}]}}}}\n"
        "routes:\n"
        "  - {name: cached, host: cache.test, service: s, cache: {ttl: 60s}}\n"
        "  - {name: q, service: s, quality: adaptive}\n" + PROFILE,
        port, admin,
    )
    yield {"edge": edge, "port": port, "admin": admin, "up": up}
    edge.stop()
    up.stop()


def upstream_saw(port: int, *headers: str) -> dict[str, str]:
    _, _, body = get(port, "/headers", *headers)
    return {k.lower(): v for k, v in json.loads(body)["headers"]}


def test_save_data_gets_the_low_tier_upstream_and_in_the_response(stack):
    port = stack["port"]
    seen = upstream_saw(port, "Save-Data: on", "X-Edge-Quality: high")  # a client-sent value is overwritten
    assert seen["x-edge-quality"] == "low"
    status, headers, _ = get(port, "/headers", "Save-Data: on")
    assert status == 200 and headers["x-edge-quality"] == "low"
    assert "save-data" in headers["vary"].lower()
    assert upstream_saw(port)["x-edge-quality"] == "high"  # loopback, no hints: the default tier
    assert upstream_saw(port, "Downlink: 1.5")["x-edge-quality"] == "medium"


def test_html_advertises_client_hints_and_compresses_for_the_tier(stack):
    port = stack["port"]
    status, headers, body = get(port, "/html/20000", "Downlink: 1.5", "Accept-Encoding: gzip")
    assert status == 200
    assert headers["content-encoding"] == "gzip" and "content-length" not in headers
    page = gzip.decompress(body)
    assert len(page) == 20000 and page.startswith(b"<!doctype html>")
    assert len(body) < 2000
    assert "Save-Data" in headers["accept-ch"]
    # the high tier does not compress; nor does any tier without Accept-Encoding: gzip
    assert "content-encoding" not in get(port, "/html/20000", "Accept-Encoding: gzip")[1]
    assert "content-encoding" not in get(port, "/html/20000", "Downlink: 1.5")[1]
    # never compress what is already compressed (octet-stream is not compressible either)
    assert "content-encoding" not in get(port, "/bytes/20000", "Downlink: 1.5", "Accept-Encoding: gzip")[1]


def test_max_rate_paces_a_4mib_download_to_about_4s(stack):
    started = time.monotonic()
    status, _, body = get(stack["port"], "/bytes/4194304", "Save-Data: on")
    elapsed = time.monotonic() - started
    assert status == 200 and len(body) == 4194304
    assert 3.3 <= elapsed <= 6.0, elapsed


def test_cache_hit_never_touches_the_upstream_and_says_its_age(stack):
    port, edge = stack["port"], stack["edge"]
    first = get(port, "/count?a=1", host="cache.test")
    second = get(port, "/count?a=1", host="cache.test")
    assert first[2] == second[2]  # the same count: the second came from the cache
    assert "age" in second[1]
    other = get(port, "/count?a=2", host="cache.test")
    assert other[2] != first[2]
    wait_until(lambda: any(r.get("cache") == "hit" for r in edge.access_log()), what="a logged cache hit")


def test_cache_honours_no_store_private_and_authorization(stack):
    port = stack["port"]
    cases = (("/count?cc=no-store", ()), ("/count?cc=private", ()), ("/count?p=auth", ("Authorization: x",)))
    for path, extra in cases:
        a = get(port, path, *extra, host="cache.test")[2]
        b = get(port, path, *extra, host="cache.test")[2]
        assert a != b, path


def test_no_cache_revalidates_with_the_etag(stack):
    port = stack["port"]
    a = get(port, "/count?etag=1&cc=no-cache", host="cache.test")
    b = get(port, "/count?etag=1&cc=no-cache", host="cache.test")
    assert a[0] == b[0] == 200
    assert a[2] == b[2]  # the upstream answered 304 and edge served its copy
    assert b[1]["etag"] == '"v1"'
    c = get(port, "/count?etag=1&cc=no-cache", 'If-None-Match: "v1"', host="cache.test")
    assert c[0] == 304


def test_vary_keeps_variants_apart(stack):
    port = stack["port"]
    en = get(port, "/count?vary=Accept-Language", "Accept-Language: en", host="cache.test")[2]
    de = get(port, "/count?vary=Accept-Language", "Accept-Language: de", host="cache.test")[2]
    assert en.endswith(b" en\n") and de.endswith(b" de\n")
    assert get(port, "/count?vary=Accept-Language", "Accept-Language: en", host="cache.test")[2] == en


def test_stale_fallback_while_the_upstream_is_down_and_fallback_service():
    main, spare = DemoUpstream("main"), DemoUpstream("spare")
    port, admin = free_port(), free_port()
    edge = Edge(
        f"version: 1\nadmin: {{listen: '127.0.0.1:{admin}'}}\n"
        f"listeners: {{web: {{listen: ['127.0.0.1:{port}']}}}}\n"
        "services:\n"
        f"  s:\n    upstreams: [{{url: '{main.url}'}}]\n    fallback: stale\n"
        "    health_check: {path: /status/200, interval: 100ms, timeout: 300ms, healthy: 1, unhealthy: 1}\n"
        f"  t:\n    upstreams: [{{url: '{main.url}'}}]\n    fallback: spare\n"
        "    health_check: {path: /status/200, interval: 100ms, timeout: 300ms, healthy: 1, unhealthy: 1}\n"
        f"  spare: {{upstreams: [{{url: '{spare.url}'}}]}}\n"
        "routes:\n  - {host: stale.test, service: s, cache: {ttl: 1s}}\n  - {host: degraded.test, service: t}\n",
        port, admin,
    )
    try:
        status, _, body = get(port, "/count", host="stale.test")
        assert status == 200
        main.stop()
        wait_until(lambda: metric(admin, r'edge_upstream_up\{service="s",upstream="[^"]+"\}') == 0, what="down")
        # fresh for 1 s it is a plain hit; once expired, the fallback serves it stale
        wait_until(lambda: "warning" in get(port, "/count", host="stale.test")[1], timeout=5, interval=0.1,
                   what="the copy served stale")
        status, headers, stale = get(port, "/count", host="stale.test")
        assert status == 200 and stale == body
        assert headers["warning"].startswith("110") and int(headers["age"]) >= 1
        assert get(port, "/count?never-cached", host="stale.test")[0] == 503
        status, headers, body = get(port, "/headers", host="degraded.test")
        assert status == 200 and json.loads(body)["upstream"] == "spare"
    finally:
        edge.stop()
        spare.stop()


def test_a_close_delimited_upstream_body_is_gzipped_whole():
    """An upstream without Content-Length or chunking ends its body by closing: a tier that
    gzips re-frames it, and the close must still end the response, not truncate it."""
    page = b"<!doctype html><title>t</title>" + b"<p>hello</p>" * 2000

    def answer(conn) -> None:
        conn.settimeout(5)
        if read_head(conn) is None:
            return
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nConnection: close\r\n\r\n" + page)

    upstream = RawUpstream(answer)
    port = free_port()
    edge = Edge(
        f"version: 1\nlisteners: {{web: {{listen: ['127.0.0.1:{port}']}}}}\n"
        f"services: {{s: {{upstreams: [{{url: '{upstream.url}'}}]}}}}\n"
        "routes: [{service: s, quality: adaptive}]\n" + PROFILE,
        port,
    )
    try:
        for version in ("1.1", "1.0"):
            raw = raw_exchange(port, f"GET / HTTP/{version}\r\nHost: t\r\nDownlink: 1.5\r\n"
                                     "Accept-Encoding: gzip\r\nConnection: close\r\n\r\n".encode())
            head, _, body = raw.partition(b"\r\n\r\n")
            assert b"Content-Encoding: gzip" in head, head
            if version == "1.1":
                assert b"Transfer-Encoding: chunked" in head
                body = _dechunk(body)
            assert gzip.decompress(body) == page
    finally:
        edge.stop()
        upstream.close()


def _small_cache_edge(upstream_url: str, port: int) -> Edge:
    """edge with a 64 KiB cache and one cached route (host cache.test) to ``upstream_url``."""
    return Edge(
        f"version: 1\ncache: {{max_size: 64KiB}}\nlisteners: {{web: {{listen: ['127.0.0.1:{port}']}}}}\n"
        f"services: {{s: {{upstreams: [{{url: '{upstream_url}'}}]}}}}\n"
        "routes: [{host: cache.test, service: s, cache: {ttl: 60s}}]\n",
        port,
    )


def test_204s_on_a_cached_route_never_use_up_the_cache():
    """A 204 has no body, so nothing calls the cache glue's ``end``: its copy is committed at the
    head. Before, each one held ~665 bytes of ``cache.max_size`` for ever, and after about
    max_size / 665 of them nothing could be stored any more."""
    up = DemoUpstream("nocontent")
    port = free_port()
    edge = _small_cache_edge(up.url, port)
    try:
        for n in range(300):  # ~200 KB of leaked reservations before the fix: three times max_size
            status, headers, body = get(port, f"/status/204?n={n}", host="cache.test")
            assert status == 204 and body == b"" and "content-length" not in headers
        first = get(port, "/count?after-204s", host="cache.test")[2]
        assert get(port, "/count?after-204s", host="cache.test")[2] == first  # the cache still stores
        status, headers, body = get(port, "/status/204?n=299", host="cache.test")  # stored whole: a hit
        assert status == 204 and "age" in headers and "content-length" not in headers
    finally:
        edge.stop()
        up.stop()


def _half_body_upstream():
    """An origin whose ``/part`` answers send 1000 of 4000 announced bytes, then hold; ``/count``
    answers a cacheable 2000-byte body with a count."""
    import itertools

    counter = itertools.count(1)

    def answer(conn) -> None:
        conn.settimeout(10)
        buf = read_head(conn)
        if buf is None:
            return
        if b" /count" in buf.split(b"\r\n")[0]:
            body = (b"count %d\n" % next(counter)).ljust(2000, b".")
            conn.sendall(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 2000\r\n"
                         b"Connection: close\r\n\r\n" + body)
            return
        conn.sendall(b"HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\nContent-Length: 4000\r\n"
                     b"Connection: close\r\n\r\n" + b"x" * 1000)
        while conn.recv(65536):  # the rest never comes; edge closes when its client left
            pass

    return RawUpstream(answer)


def test_a_client_leaving_mid_body_gives_the_copy_s_bytes_back():
    import socket
    import struct

    from tests.support.procs import connect

    up = _half_body_upstream()
    port = free_port()
    edge = _small_cache_edge(up.url, port)
    try:
        for n in range(100):  # ~160 KB of partial copies, were they never given back
            with connect("127.0.0.1", port, timeout=5) as sock:
                sock.sendall(f"GET /part?n={n} HTTP/1.1\r\nHost: cache.test\r\n\r\n".encode())
                got = b""
                while b"x" * 1000 not in got:
                    got += sock.recv(65536)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # leave with a RST
        first = get(port, "/count", host="cache.test")[2]
        assert get(port, "/count", host="cache.test")[2] == first  # the cache still stores
    finally:
        edge.stop()
        up.close()


def test_pipelined_cache_hits_wait_while_the_client_reads_nothing():
    """Answers from the cache have no upstream to hold back: once the client stops reading,
    the next pipelined request is not started (each would pile another MiB into edge's write
    buffer, a fresh copy per hit with the Redis backend) until it reads again."""
    up = DemoUpstream("pipelined")
    port = free_port()
    edge = Edge(
        f"version: 1\nlisteners: {{web: {{listen: ['127.0.0.1:{port}']}}}}\n"
        f"services: {{s: {{upstreams: [{{url: '{up.url}'}}]}}}}\n"
        "routes: [{service: s, cache: {ttl: 60s}}]\n",
        port,
    )
    size, count = 1048573, 24
    request = f"GET /bytes/{size} HTTP/1.1\r\nHost: t\r\n\r\n".encode()
    try:
        assert len(raw_exchange(port, request.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))) > size

        def hits() -> int:
            return sum(1 for r in edge.access_log() if r.get("cache") == "hit")

        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            sock.sendall(request * count)
            wait_until(lambda: hits() >= 1, what="the first hit logged")
            time.sleep(1.0)  # an observation window: without backpressure all 24 go out in well under it
            assert hits() <= 8  # what the kernel's socket buffers took, then it waits
            sock.settimeout(10)
            received = 0
            while received < count * size:
                chunk = sock.recv(1 << 20)
                assert chunk, "connection closed early"
                received += len(chunk)
        wait_until(lambda: hits() == count, what="every pipelined request answered once read")
    finally:
        edge.stop()
        up.stop()


def test_the_upstream_vary_and_the_tier_vary_both_reach_the_client(stack):
    request = b"GET /count?vary=Accept-Language HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    raw = raw_exchange(stack["port"], request)
    head = raw.partition(b"\r\n\r\n")[0].decode("latin-1").lower()
    tokens = {t.strip() for line in head.split("\r\n") if line.startswith("vary:")
              for t in line[5:].split(",")}
    assert {"accept-language", "save-data", "downlink"} <= tokens


def test_a_large_body_read_with_its_head_is_cached_and_gzipped_whole():
    """The upstream sends head and a 56 KiB body in one write, so edge usually reads them
    together and hands the body on as a view of that read (ResponseReader.views): the cache
    must keep bytes of its own, gzip must take the view, and a client must get every byte."""
    page = b"<!doctype html><title>t</title>" + bytes(range(256)) * 224

    def answer(conn) -> None:
        conn.settimeout(5)
        while read_head(conn) is not None:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nCache-Control: max-age=60\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(page) + page)

    upstream = RawUpstream(answer)
    port = free_port()
    edge = Edge(
        f"version: 1\nlisteners: {{web: {{listen: ['127.0.0.1:{port}']}}}}\n"
        f"services: {{s: {{upstreams: [{{url: '{upstream.url}'}}]}}}}\n"
        "routes:\n"
        "  - {name: cached, host: cache.test, service: s, cache: {ttl: 60s}}\n"
        "  - {name: q, service: s, quality: adaptive}\n" + PROFILE,
        port,
    )
    try:
        miss = get(port, "/page", host="cache.test")
        hit = get(port, "/page", host="cache.test")
        assert miss[0] == hit[0] == 200 and miss[2] == hit[2] == page
        assert "age" in hit[1]  # served from the stored copy
        status, headers, body = get(port, "/page", "Downlink: 1.5", "Accept-Encoding: gzip")
        assert status == 200 and headers["content-encoding"] == "gzip" and gzip.decompress(body) == page
        assert get(port, "/page")[2] == page  # the high tier: passed on as it came
    finally:
        edge.stop()
        upstream.close()
