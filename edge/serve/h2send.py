"""HEADERS and DATA frames of our responses, queued without h2's generic send path.

``h2``'s ``send_headers`` and ``send_data`` cost about 1,300 Python bytecodes per response
(``bench/tools/fixed_work.sh`` ops mode, ``h2load -m10``): the header list re-encoded to bytes
and scanned three times (informational status, request method, validation flags), frame
objects with flag sets, serialisation. That was a fifth of all the work of an HTTP/2 request.

Our responses need none of it: their header block is already HPACK-encoded by
``ResponseEncoder`` (edge.serve.h2head), they are never informational (a 100 Continue still
goes through h2), never padded or prioritised, and no DATA frame exceeds the windows or the
peer's frame size (checked here as h2 checks them). So only h2's *state* has to move, and it
moves exactly as h2 would move it: the connection and stream state machines get the same
inputs (which run the same callbacks: ``_ResponseSent``, ``stream_closed_by``), both
flow-control windows are charged the same, and the frames are appended to the very buffer h2
queues its own frames in, so the order of everything on the wire is kept.

This leans on four ``h2`` 4.x attributes (``streams``, ``state_machine``,
``outbound_flow_control_window``, ``_data_to_send``); pyproject pins h2 below 5 and
tests/h2/test_h2send.py decodes what we queue with h2's own client side.
"""

from __future__ import annotations

from collections.abc import Callable
from struct import Struct

from h2.connection import ConnectionInputs
from h2.connection import H2Connection as StateMachine
from h2.exceptions import FlowControlError, FrameTooLargeError, StreamClosedError
from h2.stream import StreamInputs

__all__ = ["queue_data", "queue_headers", "send_window"]

_FRAME_HEADER = Struct(">HBBBL").pack  # RFC 9113 4.1: 24-bit length, type, flags, stream id
_DATA, _HEADERS, _CONTINUATION = 0x0, 0x1, 0x9
_END_STREAM, _END_HEADERS = 0x1, 0x4
_C_SEND_HEADERS = ConnectionInputs.SEND_HEADERS
_C_SEND_DATA = ConnectionInputs.SEND_DATA
_S_SEND_HEADERS = StreamInputs.SEND_HEADERS
_S_SEND_DATA = StreamInputs.SEND_DATA
_S_SEND_END_STREAM = StreamInputs.SEND_END_STREAM


def _frame(length: int, kind: int, flags: int, sid: int) -> bytes:
    return _FRAME_HEADER(length >> 8, length & 0xFF, kind, flags, sid)


def queue_headers(h2c: StateMachine, sid: int, end_stream: bool, encode: Callable[..., bytes], *fields: object) -> None:
    """A response's HEADERS (and CONTINUATION) frames carrying ``encode(*fields)``.

    The block is encoded only once the state machines accepted the head, as h2 does: an
    encoder's pending table size update (after the client's SETTINGS_HEADER_TABLE_SIZE) must
    go in the next block that is sent, not in one refused here. Raises what h2 raises for a
    stream or connection that cannot send (StreamClosedError, ProtocolError: both H2Error),
    having encoded nothing and written nothing.
    """
    stream = h2c.streams.get(sid)
    if stream is None:
        raise StreamClosedError(sid)
    h2c.state_machine.process_input(_C_SEND_HEADERS)
    machine = stream.state_machine
    machine.process_input(_S_SEND_HEADERS)
    if end_stream:
        machine.process_input(_S_SEND_END_STREAM)
    block = encode(*fields)
    out = h2c._data_to_send
    frame_limit = h2c.max_outbound_frame_size
    size = len(block)
    flags = _END_STREAM if end_stream else 0
    if size <= frame_limit:
        out += _frame(size, _HEADERS, flags | _END_HEADERS, sid)
        out += block
        return
    # 4.3: a block larger than a frame continues in CONTINUATION frames, nothing in between
    view = memoryview(block)
    out += _frame(frame_limit, _HEADERS, flags, sid)
    out += view[:frame_limit]
    offset = frame_limit
    while offset < size:
        piece = view[offset : offset + frame_limit]
        offset += len(piece)
        out += _frame(len(piece), _CONTINUATION, _END_HEADERS if offset >= size else 0, sid)
        out += piece


def queue_data(h2c: StateMachine, sid: int, data: bytes, end_stream: bool) -> None:
    """One DATA frame (END_STREAM when ``end_stream``); ``data`` must fit the windows and a frame.

    An empty ``data`` with ``end_stream`` is h2's ``end_stream``: the stream's state machine
    sees only SEND_END_STREAM, as there.
    """
    stream = h2c.streams.get(sid)
    if stream is None:
        raise StreamClosedError(sid)
    size = len(data)
    if size:
        if size > h2c.outbound_flow_control_window or size > stream.outbound_flow_control_window:
            raise FlowControlError(f"Cannot send {size} bytes on stream {sid}: flow control window")
        if size > h2c.max_outbound_frame_size:
            raise FrameTooLargeError(f"Cannot send frame size {size}, max frame size is {h2c.max_outbound_frame_size}")
    h2c.state_machine.process_input(_C_SEND_DATA)
    machine = stream.state_machine
    if size or not end_stream:
        machine.process_input(_S_SEND_DATA)
    if end_stream:
        machine.process_input(_S_SEND_END_STREAM)
    stream.outbound_flow_control_window -= size
    h2c.outbound_flow_control_window -= size
    out = h2c._data_to_send
    out += _frame(size, _DATA, _END_STREAM if end_stream else 0, sid)
    if size:
        out += data


def send_window(h2c: StateMachine, sid: int) -> int:
    """What h2's ``local_flow_control_window`` says, without its lookups."""
    stream = h2c.streams.get(sid)
    if stream is None:
        raise StreamClosedError(sid)
    window = h2c.outbound_flow_control_window
    own = stream.outbound_flow_control_window
    return own if own < window else window
