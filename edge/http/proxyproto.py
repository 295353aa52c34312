"""The PROXY protocol (HAProxy's spec, v1 text and v2 binary): who the client really is.

Between two edges (VPS -> WireGuard -> NAS) the second one sees the first one's address;
the first prepends a PROXY header carrying the client's. ``parse`` reads one header from
the start of a connection (v1 or v2), ``build_v2`` writes one. Pure; bad input raises
``ProtocolError(400, ...)`` so the caller closes the connection.
"""

from __future__ import annotations

import ipaddress
import struct

from edge.http.h1 import ProtocolError

__all__ = ["SIGNATURE_V2", "ProxyHeader", "build_v2", "parse"]

SIGNATURE_V2 = b"\r\n\r\n\x00\r\nQUIT\n"
_V1_MAX = 107  # the spec's longest v1 line, CRLF included
_V2_MAX_BODY = 4096  # addresses plus TLVs; far more than any real sender needs


class ProxyHeader:
    """What a PROXY header said. ``source`` is None for LOCAL / UNKNOWN (use the peer)."""

    __slots__ = ("destination", "source")

    def __init__(self, source: tuple[str, int] | None, destination: tuple[str, int] | None) -> None:
        self.source = source
        self.destination = destination


def parse(data: bytes) -> tuple[int, ProxyHeader] | None:
    """(bytes consumed, header) once a whole header is in ``data``; None while incomplete."""
    if data[:1] == b"P":
        return _parse_v1(data)
    if data[:1] == b"\r":
        return _parse_v2(data)
    raise ProtocolError(400, "expected a PROXY protocol header")


def _parse_v1(data: bytes) -> tuple[int, ProxyHeader] | None:
    end = data.find(b"\r\n", 0, _V1_MAX)
    if end < 0:
        if len(data) >= _V1_MAX or not b"PROXY "[: len(data)].startswith(data[:6]):
            raise ProtocolError(400, "invalid PROXY v1 header")
        return None
    parts = data[:end].split(b" ")
    if parts[0] != b"PROXY" or len(parts) < 2:
        raise ProtocolError(400, "invalid PROXY v1 header")
    if parts[1] == b"UNKNOWN":
        return end + 2, ProxyHeader(None, None)
    if len(parts) != 6 or parts[1] not in (b"TCP4", b"TCP6"):
        raise ProtocolError(400, "invalid PROXY v1 header")
    try:
        src = ipaddress.ip_address(parts[2].decode("ascii"))
        dst = ipaddress.ip_address(parts[3].decode("ascii"))
        sport, dport = int(parts[4]), int(parts[5])
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError(400, "invalid PROXY v1 addresses") from None
    if src.version != (4 if parts[1] == b"TCP4" else 6) or not (0 <= sport < 65536 and 0 <= dport < 65536):
        raise ProtocolError(400, "invalid PROXY v1 addresses")
    return end + 2, ProxyHeader((str(src), sport), (str(dst), dport))


def _parse_v2(data: bytes) -> tuple[int, ProxyHeader] | None:
    if len(data) < 16:
        if not SIGNATURE_V2.startswith(data[:12]):
            raise ProtocolError(400, "invalid PROXY v2 signature")
        return None
    if data[:12] != SIGNATURE_V2:
        raise ProtocolError(400, "invalid PROXY v2 signature")
    ver_cmd, family, length = data[12], data[13], struct.unpack("!H", data[14:16])[0]
    if ver_cmd >> 4 != 2 or ver_cmd & 0x0F > 1 or length > _V2_MAX_BODY:
        raise ProtocolError(400, "invalid PROXY v2 header")
    if len(data) < 16 + length:
        return None
    body = data[16 : 16 + length]
    consumed = 16 + length
    if ver_cmd & 0x0F == 0:  # LOCAL: a health check from the proxy itself
        return consumed, ProxyHeader(None, None)
    if family == 0x11 and length >= 12:  # TCP over IPv4
        src, dst = str(ipaddress.IPv4Address(body[0:4])), str(ipaddress.IPv4Address(body[4:8]))
        sport, dport = struct.unpack("!HH", body[8:12])
    elif family == 0x21 and length >= 36:  # TCP over IPv6
        src, dst = str(ipaddress.IPv6Address(body[0:16])), str(ipaddress.IPv6Address(body[16:32]))
        sport, dport = struct.unpack("!HH", body[32:36])
    elif family >> 4 == 0:  # AF_UNSPEC
        return consumed, ProxyHeader(None, None)
    else:
        raise ProtocolError(400, "unsupported PROXY v2 address family")
    return consumed, ProxyHeader((src, sport), (dst, dport))


def build_v2(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    """A PROXY v2 header for a TCP connection from ``source`` to ``destination``."""
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    if src.version != dst.version:  # v4 client on a v6 socket: map to v6
        src = ipaddress.IPv6Address(f"::ffff:{src}") if src.version == 4 else src
        dst = ipaddress.IPv6Address(f"::ffff:{dst}") if dst.version == 4 else dst
    if src.version == 4:
        body = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
        return SIGNATURE_V2 + b"\x21\x11" + struct.pack("!H", len(body)) + body
    body = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
    return SIGNATURE_V2 + b"\x21\x21" + struct.pack("!H", len(body)) + body
