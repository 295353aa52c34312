"""Header blocks (edge.serve.h2head): the stateless response encoder and the remembering decoder.

Both are checked against hpack's own codec: whatever the encoder writes, a stock decoder (with
whatever table size the client asked for) reads back as the same fields, and never gets a
dynamic table entry; whatever a stock encoder writes, the remembering decoder returns exactly
what a fresh stock decoder returns, block after block, however the table changes in between.
"""

from __future__ import annotations

import pytest
from hpack import Decoder, Encoder, HPACKDecodingError, InvalidTableSizeError, OversizedHeaderListError
from hpack.struct import NeverIndexedHeaderTuple
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.serve.h2head import MemoDecoder, ResponseEncoder, encode_field

names = st.sampled_from([b":status", b"content-type", b"date", b"etag", b"server", b"x-custom", b"set-cookie"])
values = st.binary(max_size=200).map(lambda v: v.replace(b"\r", b"").replace(b"\n", b"").replace(b"\0", b""))
fields = st.lists(st.tuples(names, values), max_size=12)


@settings(max_examples=200, deadline=None)
@given(st.lists(fields, min_size=1, max_size=6))
def test_any_response_head_reads_back_and_leaves_no_table_entries(blocks) -> None:
    encoder = ResponseEncoder()
    decoder = Decoder()
    for block in blocks:
        assert decoder.decode(encoder.encode(block), raw=True) == block
        assert len(decoder.header_table.dynamic_entries) == 0


def test_the_first_block_sets_the_table_to_zero_then_only_after_a_settings_change() -> None:
    encoder = ResponseEncoder()
    head = [(b":status", b"200"), (b"content-length", b"5")]
    first = encoder.encode(head)
    assert first[:1] == b"\x20"  # dynamic table size update: 0
    assert encoder.encode(head)[:1] != b"\x20"
    encoder.header_table_size = 0  # what h2 does when the client's SETTINGS_HEADER_TABLE_SIZE changes
    assert encoder.encode(head) == first
    # a client that lowered its table to 0 accepts the blocks (its decoder insists on the update)
    decoder = Decoder()
    decoder.max_allowed_table_size = 0
    with pytest.raises(InvalidTableSizeError):
        decoder.decode(b"\x88", raw=True)
    decoder = Decoder()
    decoder.max_allowed_table_size = 0
    assert decoder.decode(first, raw=True) == head


def test_static_fields_are_one_byte_and_sensitive_fields_never_indexed() -> None:
    assert ResponseEncoder().encode([(b":status", b"200")]) == b"\x20\x88"
    assert encode_field(b":status", b"200") == b"\x88"
    never = encode_field(b"set-cookie", b"secret=1", never_indexed=True)
    assert never[0] & 0xF0 == 0x10
    decoded = Decoder().decode(never, raw=True)
    assert decoded == [(b"set-cookie", b"secret=1")] and isinstance(decoded[0], NeverIndexedHeaderTuple)
    block = ResponseEncoder().encode([NeverIndexedHeaderTuple(b"x-a", b"b")])
    assert Decoder().decode(block, raw=True)[0].indexable is False


def test_long_values_are_encoded_each_time_not_kept() -> None:
    from edge.serve import h2head

    value = b"v" * 1000
    ResponseEncoder().encode([(b"x-long", value)])
    assert (b"x-long", value) not in h2head._encoded_fields
    assert Decoder().decode(ResponseEncoder().encode([(b"x-long", value)]), raw=True) == [(b"x-long", value)]


request = st.lists(
    st.tuples(
        st.sampled_from([b":method", b":path", b"accept", b"user-agent", b"cookie", b"x-n"]),
        st.sampled_from([b"GET", b"/a", b"/b", b"*/*", b"curl", b"a=1", b"x" * 300, b""]),
    ),
    max_size=8,
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(request, st.sampled_from([None, 0, 64, 256, 4096]), st.booleans()), max_size=30))
def test_the_remembering_decoder_decodes_like_hpack(steps) -> None:
    """Repeated blocks, inserts, evictions and size updates in any order: same answers as hpack."""
    encoder = Encoder()
    plain = Decoder()
    memo = MemoDecoder(64 * 1024)
    sent: list[bytes] = []
    for headers, resize, repeat in steps:
        if resize is not None:
            encoder.header_table_size = resize
        # the same bytes again (a hit only while the table is unchanged), or a new block
        block = sent[-1] if repeat and sent else encoder.encode(headers)
        sent.append(block)
        try:
            want = plain.decode(block, raw=True)
        except HPACKDecodingError:
            with pytest.raises(HPACKDecodingError):
                memo.decode(block, raw=True)
            return
        assert memo.decode(block, raw=True) == want
        assert list(memo.header_table.dynamic_entries) == list(plain.header_table.dynamic_entries)


def test_a_repeated_block_is_remembered_only_while_the_table_is_unchanged() -> None:
    encoder = Encoder()
    memo = MemoDecoder(64 * 1024)
    plain = Decoder()
    headers = [(b":method", b"GET"), (b":path", b"/small"), (b"user-agent", b"h2load")]
    first = encoder.encode(headers)
    memo.decode(first, raw=True)  # inserts: not remembered
    plain.decode(first, raw=True)
    assert not memo._memo
    block = encoder.encode(headers)  # all indexed now
    assert memo.decode(block, raw=True) == headers
    assert memo.decode(block, raw=True) == headers
    assert len(memo._memo) == 1
    # an insert shifts every dynamic index: the same bytes now mean other fields
    insert = encoder.encode([(b"x-new", b"1")])
    memo.decode(insert, raw=True)
    plain.decode(insert, raw=True)
    shifted = plain.decode(block, raw=True)
    assert shifted != headers
    assert memo.decode(block, raw=True) == shifted


def test_limits_still_apply_to_remembered_blocks() -> None:
    encoder = Encoder()
    memo = MemoDecoder(64 * 1024)
    headers = [(b"x-big", b"v" * 500)]
    memo.decode(encoder.encode(headers), raw=True)
    block = encoder.encode(headers)
    assert memo.decode(block, raw=True) == headers
    memo.max_header_list_size = 100
    with pytest.raises(OversizedHeaderListError):
        memo.decode(block, raw=True)


def test_blocks_of_many_fields_are_never_remembered() -> None:
    """A 2 KB block of one-byte indexed references decodes to ~1500 fields: 64 such blocks
    remembered were ~10 MB per connection. Only blocks of at most 32 fields are kept."""
    memo = MemoDecoder(64 * 1024)
    for n in range(1400, 1400 + 80):  # distinct blocks, all static references (the table never changes)
        block = b"\x82" * n  # :method GET, n times
        for _ in range(2):
            assert len(memo.decode(block, raw=True)) == n
    assert not memo._memo
    small = b"\x82\x84\x87" + b"\x82" * 29  # 32 fields: a (large) real request
    assert memo.decode(small, raw=True) == memo.decode(small, raw=True)
    assert list(memo._memo) == [small]
    assert len(memo.decode(small + b"\x82", raw=True)) == 33
    assert list(memo._memo) == [small]
    held = sum(len(fields) for _, _, fields in memo._memo.values())
    assert held <= 32
