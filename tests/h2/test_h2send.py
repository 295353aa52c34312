"""The response frames edge queues itself (edge.serve.h2send) against h2's own send path.

Twin server state machines get the same request; one answers with h2's ``send_headers`` /
``send_data`` / ``end_stream``, the other with ``queue_headers`` / ``queue_data``: the bytes on
the wire, the windows and the stream states must be the same, and h2's client side must read
the answer back. Pure: no sockets.
"""

from __future__ import annotations

import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import DataReceived, ResponseReceived, StreamEnded
from h2.exceptions import FlowControlError, FrameTooLargeError, H2Error, StreamClosedError
from h2.settings import SettingCodes
from hpack import Decoder
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.http.h1 import ResponseHead
from edge.serve.h2conn import state_machine
from edge.serve.h2head import ResponseEncoder, header_pairs, response_headers
from edge.serve.h2send import queue_data, queue_headers, send_window

REQUEST = [(b":method", b"GET"), (b":scheme", b"https"), (b":authority", b"a.test"), (b":path", b"/x")]
RESPONSE = [(b":status", b"200"), (b"content-type", b"text/plain"), (b"content-length", b"5")]


def connected(end_request: bool = True) -> tuple[H2Connection, H2Connection]:
    """(client, server) after the prefaces and one request on stream 1."""
    client = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    server = state_machine(64 * 1024)
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send())
    server.receive_data(client.data_to_send())
    client.send_headers(1, REQUEST, end_stream=end_request)
    server.receive_data(client.data_to_send())
    server.data_to_send()
    return client, server


def twins(end_request: bool = True) -> tuple[H2Connection, H2Connection, H2Connection]:
    client, ours = connected(end_request)
    _, theirs = connected(end_request)
    return client, ours, theirs


def test_a_response_is_byte_for_byte_what_h2_sends() -> None:
    _, ours, theirs = twins()
    theirs.send_headers(1, RESPONSE)
    theirs.send_data(1, b"hel")
    theirs.send_data(1, b"lo", end_stream=True)
    queue_headers(ours, 1, False, ours.encoder.encode, RESPONSE)
    queue_data(ours, 1, b"hel", False)
    queue_data(ours, 1, b"lo", True)
    assert ours.data_to_send() == theirs.data_to_send()
    assert ours.outbound_flow_control_window == theirs.outbound_flow_control_window
    assert ours.streams[1].state_machine.state == theirs.streams[1].state_machine.state
    assert ours.streams[1].closed and ours.open_inbound_streams == 0  # the slot is free again


def test_head_only_and_empty_end_are_what_h2_sends() -> None:
    _, ours, theirs = twins()
    theirs.send_headers(1, RESPONSE, end_stream=True)
    queue_headers(ours, 1, True, ours.encoder.encode, RESPONSE)
    assert ours.data_to_send() == theirs.data_to_send()
    _, ours, theirs = twins()
    theirs.send_headers(1, RESPONSE)
    theirs.end_stream(1)
    queue_headers(ours, 1, False, ours.encoder.encode, RESPONSE)
    queue_data(ours, 1, b"", True)
    assert ours.data_to_send() == theirs.data_to_send()
    assert ours.streams[1].state_machine.state == theirs.streams[1].state_machine.state


def test_the_client_reads_the_answer_back() -> None:
    client, server = connected()
    queue_headers(server, 1, False, server.encoder.encode, RESPONSE)
    queue_data(server, 1, b"hello", True)
    events = client.receive_data(server.data_to_send())
    kinds = [type(e) for e in events]
    assert kinds == [ResponseReceived, DataReceived, StreamEnded]
    assert events[0].headers == RESPONSE and events[1].data == b"hello"


def test_a_block_larger_than_a_frame_continues_in_continuation_frames() -> None:
    client, server = connected()
    big = [(b":status", b"200")] + [(b"x-h%d" % i, b"v" * 900) for i in range(60)]  # ~55 KB > 16 KiB
    _, theirs = connected()
    theirs.send_headers(1, big, end_stream=True)
    queue_headers(server, 1, True, server.encoder.encode, big)
    wire = server.data_to_send()
    assert wire == theirs.data_to_send()
    events = client.receive_data(wire)
    assert events[0].headers == big and isinstance(events[-1], StreamEnded)


def test_windows_and_frame_size_are_enforced_as_h2_does() -> None:
    _, server = connected()
    queue_headers(server, 1, False, server.encoder.encode, RESPONSE)
    window = send_window(server, 1)
    assert window == server.local_flow_control_window(1)
    frame = server.max_outbound_frame_size
    with pytest.raises(FrameTooLargeError):
        queue_data(server, 1, b"x" * (frame + 1), False)
    sent = 0
    while sent + frame <= window:
        queue_data(server, 1, b"x" * frame, False)
        sent += frame
    rest = window - sent
    with pytest.raises(FlowControlError):
        queue_data(server, 1, b"x" * (rest + 1), False)
    queue_data(server, 1, b"x" * rest, False)
    assert send_window(server, 1) == 0 == server.local_flow_control_window(1)


def test_a_stream_that_cannot_send_raises_an_h2_error() -> None:
    _, server = connected()
    with pytest.raises(StreamClosedError):
        queue_headers(server, 3, False, bytes, b"\x88")  # never opened
    with pytest.raises(StreamClosedError):
        send_window(server, 3)
    queue_headers(server, 1, True, server.encoder.encode, RESPONSE)
    with pytest.raises(H2Error):
        queue_data(server, 1, b"late", True)  # the stream is closed: h2's state machine refuses


def test_a_reset_stream_refuses_frames() -> None:
    _, server = connected(end_request=False)
    server.reset_stream(1)
    with pytest.raises(H2Error):
        queue_headers(server, 1, False, server.encoder.encode, RESPONSE)


def test_a_refused_head_leaves_the_table_size_update_for_the_next_block_sent() -> None:
    """After the client's SETTINGS_HEADER_TABLE_SIZE the next block sent starts with a size
    update; a head the state machine refuses must not use it up (h2 encodes only once allowed)."""
    client, server = connected(end_request=False)
    client.update_settings({SettingCodes.HEADER_TABLE_SIZE: 0})
    server.receive_data(client.data_to_send())
    server.reset_stream(1)  # stream 1 can no longer send
    client.send_headers(3, REQUEST, end_stream=True)
    server.receive_data(client.data_to_send())
    server.data_to_send()
    with pytest.raises(H2Error):
        queue_headers(server, 1, False, server.encoder.encode, RESPONSE)
    queue_headers(server, 3, False, server.encoder.encode, RESPONSE)
    assert server.data_to_send()[9:10] == b"\x20"  # right after the frame header: size update to 0


header_names = st.sampled_from([b"Content-Type", b"ETag", b"X-Thing", b"set-cookie", b"Date", b"Server"])
header_values = st.binary(max_size=150).map(lambda v: v.replace(b"\r", b"").replace(b"\n", b"").strip())


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from([200, 204, 206, 301, 404, 599]),
    st.lists(st.tuples(header_names, header_values), max_size=8),
    st.one_of(st.none(), st.integers(0, 10**12)),
    st.sampled_from([b"", b"X-Served-By: edge\r\nStrict-Transport-Security: max-age=1\r\n"]),
)
def test_response_block_is_the_encoding_of_response_headers(status, fields, length, add) -> None:
    rh = ResponseHead()
    rh.status = status
    rh.lines = [name + b": " + value + b"\r\n" for name, value in fields]
    rh.content_length = length
    extra = header_pairs(add)
    fused = ResponseEncoder().response_block(rh, extra)
    reference = ResponseEncoder().encode(response_headers(rh, False, extra))
    assert fused == reference
    assert Decoder().decode(fused, raw=True) == response_headers(rh, False, extra)
