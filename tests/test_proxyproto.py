"""PROXY protocol v1/v2: parse and build (pure), fed whole and in pieces."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.http.h1 import ProtocolError
from edge.http.proxyproto import SIGNATURE_V2, build_v2, parse


def test_v1_tcp4():
    consumed, header = parse(b"PROXY TCP4 203.0.113.9 10.0.0.1 51234 443\r\nGET / HTTP/1.1\r\n")
    assert consumed == len(b"PROXY TCP4 203.0.113.9 10.0.0.1 51234 443\r\n")
    assert header.source == ("203.0.113.9", 51234) and header.destination == ("10.0.0.1", 443)


def test_v1_tcp6_and_unknown():
    assert parse(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n")[1].source == ("2001:db8::1", 1)
    assert parse(b"PROXY UNKNOWN\r\n")[1].source is None


@pytest.mark.parametrize(
    "bad",
    [b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", b"PROXY TCP4 ::1 ::2 1 2\r\n", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n",
     b"GET / HTTP/1.1\r\n", b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", b"PROXY " + b"x" * 200,
     SIGNATURE_V2[:-1] + b"X" + b"\x21\x11\x00\x0c" + b"\x00" * 12, SIGNATURE_V2 + b"\x31\x11\x00\x00"],
)
def test_bad_headers(bad):
    with pytest.raises(ProtocolError):
        parse(bad)


@given(
    st.ip_addresses(v=4), st.ip_addresses(v=4), st.integers(0, 65535), st.integers(0, 65535), st.binary(max_size=20)
)
def test_v2_round_trip_whole_and_in_pieces(src, dst, sport, dport, rest):
    data = build_v2((str(src), sport), (str(dst), dport)) + rest
    consumed, header = parse(data)
    assert header.source == (str(src), sport) and header.destination == (str(dst), dport)
    assert data[consumed:] == rest
    for cut in range(1, 28):
        assert parse(data[:cut]) is None


@given(st.ip_addresses(v=6), st.integers(0, 65535))
def test_v2_ipv6(src, sport):
    consumed, header = parse(build_v2((str(src), sport), ("::1", 443)))
    assert header.source == (str(src), sport) and consumed == 16 + 36


def test_v2_local_is_no_source():
    assert parse(SIGNATURE_V2 + b"\x20\x00\x00\x00")[1].source is None
