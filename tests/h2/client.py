"""A raw HTTP/2 client for tests (the h2 library over a TLS socket), with control of flow control.

``auto_ack`` decides, per stream, whether received DATA is acknowledged at the stream level;
the connection-level window is always given back (what a browser does with a stream whose
consumer is slow), so one unread stream cannot block the others by the connection window.
Every wait reads the socket until a condition holds or a deadline passes (no sleeps).
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
)

from tests.support.guard import check_destination


@dataclass
class Response:
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytearray = field(default_factory=bytearray)
    ended: bool = False
    reset: int | None = None  # RST_STREAM error code from the server

    @property
    def status(self) -> int:
        return int(self.headers.get(b":status", b"0"))


class H2Client:
    def __init__(self, port: int, cafile: str, host: str = "localhost", timeout: float = 10.0) -> None:
        check_destination("127.0.0.1")
        ctx = ssl.create_default_context(cafile=cafile)
        ctx.set_alpn_protocols(["h2"])
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock = ctx.wrap_socket(raw, server_hostname=host)
        assert self.sock.selected_alpn_protocol() == "h2"
        self.host = host
        self.port = port
        config = H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False, normalize_outbound_headers=False
        )
        self.conn = H2Connection(config=config)
        self.conn.initiate_connection()
        self._send()
        self.responses: dict[int, Response] = {}
        self.no_ack: set[int] = set()
        self.unacked: dict[int, int] = {}
        self.goaway: ConnectionTerminated | None = None
        self.closed = False

    def _send(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def headers(
        self, path: str, method: str = "GET", extra: list[tuple[bytes, bytes]] = (), authority: str | None = None
    ) -> list[tuple[bytes, bytes]]:
        return [
            (b":method", method.encode()),
            (b":scheme", b"https"),
            (b":authority", (authority or f"{self.host}:{self.port}").encode()),
            (b":path", path.encode()),
            *extra,
        ]

    def request(
        self,
        path: str,
        method: str = "GET",
        body: bytes | None = None,
        *,
        headers=None,
        auto_ack: bool = True,
        end: bool = True,
    ) -> int:
        sid = self.conn.get_next_available_stream_id()
        self.responses[sid] = Response()
        if not auto_ack:
            self.no_ack.add(sid)
        self.conn.send_headers(sid, headers or self.headers(path, method), end_stream=end and body is None)
        if body is not None:
            self.send_body(sid, body, end=end)
        self._send()
        return sid

    def send_body(self, sid: int, body: bytes, end: bool = True) -> None:
        """Send as much as the windows allow, reading (and acknowledging) while waiting for more."""
        view = memoryview(body)
        while view:
            window = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if window <= 0:
                self._send()
                self.read_once()
                continue
            self.conn.send_data(sid, bytes(view[:window]))
            view = view[window:]
        if end:
            self.conn.end_stream(sid)
        self._send()

    def ack(self, sid: int) -> None:
        """Acknowledge everything withheld on ``sid`` and acknowledge from now on."""
        self.no_ack.discard(sid)
        size = self.unacked.pop(sid, 0)
        if size:
            self.conn.acknowledge_received_data(size, sid)
            self._send()

    def reset(self, sid: int) -> None:
        self.conn.reset_stream(sid)
        self._send()

    def read_once(self) -> None:
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            data = b""
        if not data:
            self.closed = True
            raise ConnectionError("server closed the connection")
        for event in self.conn.receive_data(data):
            self._on(event)
        self._send()

    def _on(self, event) -> None:
        if isinstance(event, ResponseReceived):
            self.responses[event.stream_id].headers = dict(event.headers)
        elif isinstance(event, DataReceived):
            self.responses[event.stream_id].body += event.data
            size = event.flow_controlled_length
            if event.stream_id in self.no_ack:
                self.unacked[event.stream_id] = self.unacked.get(event.stream_id, 0) + size
                self.conn.increment_flow_control_window(size)  # connection level only
            elif size:
                self.conn.acknowledge_received_data(size, event.stream_id)
        elif isinstance(event, StreamEnded | TrailersReceived):
            if event.stream_id in self.responses:
                self.responses[event.stream_id].ended = True
        elif isinstance(event, StreamReset):
            if event.stream_id in self.responses:
                self.responses[event.stream_id].reset = event.error_code
        elif isinstance(event, ConnectionTerminated):
            self.goaway = event

    def wait(self, predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what or predicate}")
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            self.read_once()

    def finished(self, sid: int) -> bool:
        response = self.responses[sid]
        return response.ended or response.reset is not None

    def get(self, path: str, **kwargs) -> Response:
        sid = self.request(path, **kwargs)
        self.wait(lambda: self.finished(sid), what=f"response to {path}")
        return self.responses[sid]

    def close(self) -> None:
        try:
            self.conn.close_connection()
            self._send()
        except Exception:
            pass
        self.sock.close()
