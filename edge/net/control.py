"""The control socket: how ``edge serve`` hands block-list entries to ``edge net run``.

Protocol (version 1), on the unix stream socket ``network.control_socket``:
each message is a 4-byte big-endian length followed by that many bytes of msgpack
encoding one map; a connection may carry any number of request/reply pairs, in order.

    request  {"op": "block",   "address": "192.0.2.7", "timeout": 3600}   # timeout: seconds, optional
             {"op": "unblock", "address": "2001:db8::7"}
             {"op": "ping"}
    reply    {"ok": true}  |  {"ok": true, "version": 1}  |  {"ok": false, "error": "..."}

IPv4 addresses (and IPv4-mapped IPv6) go to set ``blocklist``, IPv6 to ``blocklist6``;
a missing timeout means the set's own (``network.blocklist.timeout``). Messages above
``MAX_MESSAGE`` bytes close the connection. ``handle`` is the pure dispatcher (the
element change is passed in); ``serve`` is its asyncio shell; ``block`` is the tiny
synchronous client ``edge serve`` calls.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import struct
from collections.abc import Callable
from concurrent.futures import Executor

import msgpack

from edge.net.desired import BLOCKLIST, BLOCKLIST6
from edge.net.render import Element

VERSION = 1
MAX_MESSAGE = 64 * 1024  # a request is a few dozen bytes; anything large is not ours
MAX_TIMEOUT = 365 * 86400  # nft element timeouts beyond a year are a typo, not a ban
_HEADER = struct.Struct("!I")

ElementChange = Callable[[str, list[Element]], None]  # ("add" | "delete", elements)


class ControlError(RuntimeError):
    pass


def encode(message: dict) -> bytes:
    body = msgpack.packb(message, use_bin_type=True)
    return _HEADER.pack(len(body)) + body


def element_for(address: object, timeout: object = None) -> Element:
    if not isinstance(address, str):
        raise ValueError("address must be a string")
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    seconds = None
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= MAX_TIMEOUT:
            raise ValueError(f"timeout must be seconds in (0, {MAX_TIMEOUT}]")
        seconds = max(1, round(timeout))
    return Element(BLOCKLIST if ip.version == 4 else BLOCKLIST6, str(ip), seconds)


def handle(request: object, change: ElementChange) -> dict:
    """One request -> one reply. Never raises."""
    if not isinstance(request, dict):
        return {"ok": False, "error": "a request is a map"}
    op = request.get("op")
    try:
        if op == "ping":
            return {"ok": True, "version": VERSION}
        if op == "block":
            change("add", [element_for(request.get("address"), request.get("timeout"))])
            return {"ok": True}
        if op == "unblock":
            element = element_for(request.get("address"))
            change("delete", [element])
            return {"ok": True}
    except ValueError as exc:
        return {"ok": False, "error": str(exc)}
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return {"ok": False, "error": f"unknown op {op!r}"}


# -- server (asyncio) ------------------------------------------------------------------------
async def serve(path: str, change: ElementChange, executor: Executor | None = None):
    """Listen on ``path`` (replacing a stale socket); returns the asyncio server.

    ``change`` runs on ``executor`` when given (the daemon's one kernel thread, which
    serializes block-list changes with applies), else on the loop.
    """
    loop = asyncio.get_running_loop()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                header = await reader.readexactly(_HEADER.size)
                (length,) = _HEADER.unpack(header)
                if length > MAX_MESSAGE:
                    break
                body = await reader.readexactly(length)
                try:
                    request = msgpack.unpackb(body, raw=False)
                except Exception:
                    writer.write(encode({"ok": False, "error": "not msgpack"}))
                    break
                if executor is None:
                    reply = handle(request, change)
                else:
                    reply = await loop.run_in_executor(executor, handle, request, change)
                writer.write(encode(reply))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    old = os.umask(0o117)  # socket mode 0660: root and the group (run edge serve in it)
    try:
        server = await asyncio.start_unix_server(client, path=path)
    finally:
        os.umask(old)
    return server


# -- client (blocking; for edge serve) -------------------------------------------------------
def request(socket_path: str, message: dict, io_timeout: float = 1.0) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(io_timeout)
        try:
            sock.connect(socket_path)
            sock.sendall(encode(message))
            header = _recv_exactly(sock, _HEADER.size)
            (length,) = _HEADER.unpack(header)
            if length > MAX_MESSAGE:
                raise ControlError("reply too large")
            reply = msgpack.unpackb(_recv_exactly(sock, length), raw=False)
        except OSError as exc:
            raise ControlError(f"control socket {socket_path}: {exc}") from None
    if not isinstance(reply, dict):
        raise ControlError("malformed reply")
    return reply


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("connection closed by the controller")
        data += chunk
    return data


def block(socket_path: str, address: str, timeout: float | None = None, io_timeout: float = 1.0) -> None:
    """Ask ``edge net run`` to put ``address`` on the block list for ``timeout`` seconds.

    Raises ControlError when the controller is not reachable or refuses.
    """
    message: dict = {"op": "block", "address": address}
    if timeout is not None:
        message["timeout"] = timeout
    reply = request(socket_path, message, io_timeout)
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error", "refused")))


def unblock(socket_path: str, address: str, io_timeout: float = 1.0) -> None:
    reply = request(socket_path, {"op": "unblock", "address": address}, io_timeout)
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error", "refused")))
