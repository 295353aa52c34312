"""HTTP/2 to clients: one protocol object per TLS connection that negotiated ``h2`` by ALPN.

The shell around the ``h2`` state machine: bytes from the socket go to ``h2.receive_data``, its
events are dispatched here to the stream objects (``edge.serve.h2stream.H2Stream``, one per
request, each leasing HTTP/1.1 connections from the same upstream pools as HTTP/1.1 clients),
and whatever the streams queued on the state machine is written out once per read (``flush``).

Invariants:
- only this class touches the client's transport; streams call ``h2`` methods and ``flush``;
- connection-level backpressure: while the client's socket is full every stream stops reading
  its upstream (``write_paused``); stream-level flow control lives in the stream;
- every wait has a deadline that the server's sweeper checks: ``deadline`` is the earliest of
  the streams' deadlines (lowered eagerly, recomputed in ``on_timeout``) or, with no stream
  open, the idle deadline (``limits.idle_timeout``: then a GOAWAY and close);
- graceful shutdown (``drain``): GOAWAY with the largest stream id plus a PING, and once the
  PING comes back the real GOAWAY with the last stream id we accept (RFC 9113 6.8); streams
  up to it finish, later ones are refused (REFUSED_STREAM, safe to retry), and the connection
  closes when the last stream is done. The h2 library moves to CLOSED on any GOAWAY it sends
  and would refuse to finish the streams, so these GOAWAY frames are written by hand.

Malformed frames are connection errors handled by h2 (GOAWAY, then close); malformed request
heads are stream errors (``edge.serve.h2head``). Knows nothing of routing or upstreams.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from h2.config import H2Configuration
from h2.connection import H2Connection as _H2StateMachine
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingAckReceived,
    RemoteSettingsChanged,
    RequestReceived,
    SettingsAcknowledged,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import H2Error, ProtocolError
from h2.settings import SettingCodes, Settings
from hyperframe.frame import GoAwayFrame

from edge.serve.h2head import MemoDecoder, ResponseEncoder
from edge.serve.h2stream import H2Stream

if TYPE_CHECKING:
    from edge.serve.server import Server

__all__ = ["CONNECTION_WINDOW", "MAX_STREAMS", "STREAM_WINDOW", "H2Connection", "state_machine"]

log = logging.getLogger("edge.serve.h2")

MAX_STREAMS = 128  # concurrent streams per connection (SETTINGS_MAX_CONCURRENT_STREAMS)
STREAM_WINDOW = 256 * 1024  # request body bytes a stream may have in flight, unacknowledged
CONNECTION_WINDOW = 8 * 1024 * 1024  # and all streams together: bounds what one client makes us hold
_DEFAULT_WINDOW = 65535
_LAST_STREAM = 2**31 - 1
_DRAIN_PING = b"edgedrn0"
_INF = float("inf")
_CONFIG = H2Configuration(
    client_side=False,
    header_encoding=None,
    # edge.serve.h2head checks request heads per stream (h2 would make any bad head a connection error)
    validate_inbound_headers=False,
    normalize_inbound_headers=False,
    # response headers come lower-cased and hop-by-hop-free from h2head
    validate_outbound_headers=False,
    normalize_outbound_headers=False,
)


def state_machine(max_header: int) -> _H2StateMachine:
    """A server-side h2 state machine with our settings, its preface and window increase queued."""
    h2c = _H2StateMachine(config=_CONFIG)
    h2c.local_settings = Settings(
        client=False,
        initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
            SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            SettingCodes.MAX_HEADER_LIST_SIZE: max_header,
        },
    )
    # The advertised size is a hint; a head above it gets a 431 on its stream (h2head). Only a
    # head above this hard limit is an attack (HPACK bomb): h2 makes that a connection error.
    h2c.decoder = MemoDecoder(max(4 * max_header, 64 * 1024))
    h2c.encoder = ResponseEncoder()  # type: ignore[assignment]
    h2c.initiate_connection()
    h2c.increment_flow_control_window(CONNECTION_WINDOW - _DEFAULT_WINDOW)
    return h2c


class H2Connection(asyncio.Protocol):
    __slots__ = (
        "_closed",
        "_drain_state",
        "_flush_soon",
        "_idle_at",
        "_in_events",
        "_last_stream",
        "deadline",
        "h2",
        "listener",
        "peer",
        "proto",
        "rtt_seen",
        "server",
        "streams",
        "transport",
        "trusted",
        "write_paused",
    )

    def __init__(self, server: Server, listener: str, proto: bytes) -> None:
        self.server = server
        self.listener = listener
        self.proto = proto
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self.peer = ""
        self.trusted = False
        self.rtt_seen = False  # the kernel's RTT was given to the tier chooser (quality routes, once)
        self.h2: _H2StateMachine = None  # type: ignore[assignment]  # made in connection_made
        self.streams: dict[int, H2Stream] = {}
        self.deadline = _INF
        self.write_paused = False
        self._closed = False
        self._in_events = False
        self._flush_soon = False
        self._idle_at = _INF
        self._drain_state = 0  # 0 serving, 1 first GOAWAY + PING sent, 2 final GOAWAY sent
        self._last_stream = _LAST_STREAM  # streams above this are refused (after the final GOAWAY)

    # -- transport events -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else "unix"
        server = self.server
        self.trusted = self.peer in server.runtime.trusted
        self.h2 = state_machine(server.runtime.limits.max_header_size)
        server.connection_opened(self)  # type: ignore[arg-type]
        self._idle()
        self.flush()
        if server.draining:
            self.drain()

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        self._in_events = True
        try:
            events = self.h2.receive_data(data)
        except ProtocolError as exc:
            # h2 queued a GOAWAY with the error code; the connection is over
            self._in_events = False
            self.server.metrics.bad_requests += 1
            log.debug("h2 connection error from %s: %s", self.peer, exc)
            self._terminate()
            return
        try:
            for event in events:
                handler = _HANDLERS.get(event.__class__)
                if handler is not None:
                    handler(self, event)
        finally:
            self._in_events = False
        data = self.h2.data_to_send()
        if data:
            self.transport.write(data)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self.server.connection_closed(self)  # type: ignore[arg-type]
        streams = list(self.streams.values())
        self.streams.clear()
        for stream in streams:
            stream.cancel()

    def pause_writing(self) -> None:
        self.write_paused = True
        for stream in self.streams.values():
            stream.update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        for stream in list(self.streams.values()):
            stream.update_reading()

    def flush(self) -> None:
        """Write what the state machine queued, once per loop iteration: streams call this freely.

        Upstream responses of many streams arrive in one loop iteration (one callback per
        upstream connection); writing once after all of them makes one TLS record and one
        send instead of one per stream (h2load -c50 -m10: about a third fewer syscalls).
        """
        if self._in_events or self._closed or self._flush_soon:
            return
        self._flush_soon = True
        self.server.loop.call_soon(self._write_out)

    def _write_out(self) -> None:
        self._flush_soon = False
        if not self._closed:
            data = self.h2.data_to_send()
            if data:
                self.transport.write(data)

    # -- h2 events --------------------------------------------------------------------------
    def _on_request(self, event: RequestReceived) -> None:
        sid = event.stream_id
        if sid > self._last_stream:
            self._refuse(sid)
            return
        stream = H2Stream(self, sid)
        self.streams[sid] = stream
        self._idle_at = _INF
        stream.start(event.headers, event.stream_ended is not None)  # type: ignore[arg-type]

    def _on_data(self, event: DataReceived) -> None:
        stream = self.streams.get(event.stream_id)  # type: ignore[arg-type]
        if stream is None:
            self.ack(event.stream_id, event.flow_controlled_length)  # type: ignore[arg-type]
        else:
            stream.request_body(event.data, event.flow_controlled_length)  # type: ignore[arg-type]

    def _on_end(self, event: StreamEnded) -> None:
        stream = self.streams.get(event.stream_id)  # type: ignore[arg-type]
        if stream is not None:
            stream.request_end()

    def _on_reset(self, event: StreamReset) -> None:
        stream = self.streams.pop(event.stream_id, None)  # type: ignore[arg-type]
        if stream is not None:
            stream.cancel()
            self._after_stream()

    def _on_window(self, event: WindowUpdated) -> None:
        sid = event.stream_id
        if sid:
            stream = self.streams.get(sid)
            if stream is not None and stream.out:
                stream.send_pending()
        else:
            self._send_blocked()

    def _on_remote_settings(self, event: RemoteSettingsChanged) -> None:
        if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
            self._send_blocked()

    def _on_settings_ack(self, event: SettingsAcknowledged) -> None:
        # h2 sets the decoder's limit to the advertised size on ack; keep the hard limit instead
        max_header = self.server.runtime.limits.max_header_size
        self.h2.decoder.max_header_list_size = max(4 * max_header, 64 * 1024)

    def _on_goaway(self, event: ConnectionTerminated) -> None:
        # The client is leaving; h2 will not send anything more on any stream.
        self._terminate()

    def _on_ping_ack(self, event: PingAckReceived) -> None:
        if self._drain_state == 1 and event.ping_data == _DRAIN_PING:
            self._final_goaway()

    def _send_blocked(self) -> None:
        for stream in list(self.streams.values()):
            if stream.out:
                stream.send_pending()

    # -- helpers for streams ------------------------------------------------------------------
    def ack(self, sid: int, size: int) -> None:
        """Give ``size`` bytes of window back to the client (stream and connection level)."""
        if size and not self._closed:
            try:
                self.h2.acknowledge_received_data(size, sid)
            except H2Error:
                pass

    def stream_done(self, stream: H2Stream) -> None:
        if self.streams.get(stream.sid) is stream:
            del self.streams[stream.sid]
            self._after_stream()

    def _after_stream(self) -> None:
        if self.streams:
            return
        if self._drain_state == 1:
            self._final_goaway()  # closes: nothing left to finish
        elif self._drain_state == 2:
            self._close()
        else:
            self._idle()

    def _idle(self) -> None:
        self._idle_at = self.server.loop.time() + self.server.runtime.limits.idle_timeout
        self.deadline = self._idle_at

    def _refuse(self, sid: int) -> None:
        try:
            self.h2.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
        except H2Error:
            pass

    # -- shutdown -----------------------------------------------------------------------------
    def drain(self) -> None:
        """Graceful GOAWAY (shutdown, or a listener going away): finish the streams, then close."""
        if self._closed or self._drain_state:
            return
        if not self.streams:
            self._final_goaway()  # nothing in flight: the last GOAWAY at once, then close
            return
        self._drain_state = 1
        self._write_goaway(_LAST_STREAM)
        try:
            self.h2.ping(_DRAIN_PING)
        except H2Error:
            self._final_goaway()
            return
        self.flush()

    def _final_goaway(self) -> None:
        self._drain_state = 2
        self._last_stream = self.h2.highest_inbound_stream_id
        self._write_goaway(self._last_stream)
        if not self.streams:
            self._close()

    def _write_goaway(self, last_stream: int) -> None:
        if self._closed:
            return
        self._write_out()  # frames h2 queued go first
        frame = GoAwayFrame(0)
        frame.last_stream_id = last_stream
        frame.error_code = ErrorCodes.NO_ERROR
        self.transport.write(frame.serialize())

    def _terminate(self) -> None:
        """A connection error or the client's GOAWAY: send what h2 queued, drop every stream, close."""
        streams = list(self.streams.values())
        self.streams.clear()
        for stream in streams:
            stream.cancel()
        self._close()

    def _close(self) -> None:
        """Write what is queued, then close (the transport still sends its buffer first)."""
        if not self._closed:
            self._write_out()
            self._closed = True
            self.transport.close()

    # -- deadlines (the server's sweeper calls this) ------------------------------------------
    def on_timeout(self, now: float) -> None:
        self.deadline = _INF
        if not self.streams:
            if self._idle_at <= now:
                if not self._closed:
                    try:
                        self.h2.close_connection(ErrorCodes.NO_ERROR)
                    except H2Error:
                        pass
                self._close()
            else:
                self.deadline = self._idle_at
            return
        for stream in list(self.streams.values()):
            if stream.deadline <= now:
                stream.on_timeout(now)
        earliest = min((s.deadline for s in self.streams.values()), default=self._idle_at)
        if earliest < self.deadline:
            self.deadline = earliest
        self.flush()


_HANDLERS = {
    RequestReceived: H2Connection._on_request,
    DataReceived: H2Connection._on_data,
    StreamEnded: H2Connection._on_end,
    StreamReset: H2Connection._on_reset,
    WindowUpdated: H2Connection._on_window,
    RemoteSettingsChanged: H2Connection._on_remote_settings,
    SettingsAcknowledged: H2Connection._on_settings_ack,
    ConnectionTerminated: H2Connection._on_goaway,
    PingAckReceived: H2Connection._on_ping_ack,
}
