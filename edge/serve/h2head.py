"""HTTP/2 heads to and from HTTP/1.1: checked request translation and response header lists.

Pure functions, no I/O, no h2 objects: header lists in (``[(name, value), ...]`` as bytes,
exactly as the HPACK decoder produced them), an ``edge.http.h1.RequestHead`` or bytes out.

We turn the h2 library's own inbound header validation off (it makes every malformed header
block a connection error, so one bad request would kill every stream sharing the connection)
and check here instead, per stream, with the strictness the HTTP/1.1 side has:

- RFC 9113 8.2.1: lower-case token names, values without NUL/CR/LF or other controls and
  without leading or trailing whitespace (so nothing can be smuggled into HTTP/1.1 bytes);
- 8.2.2: connection-specific headers are malformed; ``te`` only as ``trailers``;
- 8.3: exactly the request pseudo-headers, each once, before the regular ones;
- 8.3.1: ``:authority`` without userinfo; a Host header must agree with it (else 400);
- 8.2.3: several ``cookie`` fields become one, joined with ``"; "``.

``H2RequestError.reset`` says how to refuse: malformed framing of the head is answered with
RST_STREAM(PROTOCOL_ERROR) as the RFC requires; well-formed but unacceptable requests get a
response (400, 405, 413, 417, 431) like their HTTP/1.1 twins.

Invariant (tests/h2/test_h2head.py, hypothesis): whatever header list comes in, either
``H2RequestError`` is raised or the bytes of ``upstream_request`` parse as exactly one
HTTP/1.1 request head with the same method, target and host.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from hpack import Decoder
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.struct import HeaderTuple, NeverIndexedHeaderTuple
from hpack.table import HeaderTable

from edge.http.h1 import FORWARDING, HOP_BY_HOP, RequestHead, ResponseHead, has_dot_segment

__all__ = [
    "H2RequestError",
    "checked_request_head",
    "MemoDecoder",
    "ResponseEncoder",
    "header_pairs",
    "local_response",
    "request_head",
    "extra_pairs",
    "response_headers",
    "upstream_request",
]

# RFC 9113 8.2.2: these make a message malformed in HTTP/2
CONNECTION_SPECIFIC = frozenset({b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade"})
# RFC 7541 4.1: every field counts 32 octets on top of name and value (what SETTINGS_MAX_HEADER_LIST_SIZE means)
FIELD_OVERHEAD = 32
# methods whose body-less request still gets "Content-Length: 0" (some origins want a length for them)
_BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})

# fullmatch everywhere: "$" would also match before a final "\n" (a header injection)
_NAME = re.compile(rb"[!#$%&'*+.^_`|~0-9a-z-]+")
_VALUE = re.compile(rb"(?:[\x21-\x7e\x80-\xff](?:[\t\x20-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)?")
_METHOD = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_PATH = re.compile(rb"/[\x21-\x7e]*")
# reg-name / IPv4 / [IPv6], optional :port; no userinfo (RFC 9113 8.3.1)
_AUTHORITY = re.compile(rb"(?:[A-Za-z0-9._~!$&'()*+,;=%-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
_STATUS_LINES = {s: b"%d" % s for s in range(100, 600)}


class H2RequestError(Exception):
    """A request we refuse: ``reset`` True means RST_STREAM(PROTOCOL_ERROR), else a ``status`` response."""

    def __init__(self, status: int, reason: str, reset: bool = False) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason
        self.reset = reset


def _malformed(reason: str) -> H2RequestError:
    return H2RequestError(400, reason, reset=True)


def request_head(headers: list[tuple[bytes, bytes]], end_stream: bool, max_header_size: int) -> RequestHead:
    """Check an HTTP/2 request header list and turn it into the head of its HTTP/1.1 twin.

    ``head.chunked`` is set when a body of unknown length follows (the upstream request is
    then chunked); ``head.content_length`` is the client's announced length, if any.
    """
    head = RequestHead()
    head.rare = True  # h2 heads are not sorted into common and rare headers: look at every one
    method = scheme = path = authority = None
    host: bytes | None = None
    cookies: list[bytes] | None = None
    lines = head.lines
    names = head.names
    size = 0
    regular = False
    name_ok = _NAME.fullmatch
    value_ok = _VALUE.fullmatch
    for name, value in headers:
        size += len(name) + len(value) + FIELD_OVERHEAD
        if not value_ok(value):
            raise _malformed("invalid characters in a header value")
        if name[:1] == b":":
            if regular:
                raise _malformed("pseudo-header after a regular header")
            if name == b":method":
                if method is not None:
                    raise _malformed("repeated :method")
                method = value
            elif name == b":path":
                if path is not None:
                    raise _malformed("repeated :path")
                path = value
            elif name == b":scheme":
                if scheme is not None:
                    raise _malformed("repeated :scheme")
                scheme = value
            elif name == b":authority":
                if authority is not None:
                    raise _malformed("repeated :authority")
                authority = value
            else:
                raise _malformed("unknown or response pseudo-header in a request")
            continue
        regular = True
        if not name_ok(name):
            raise _malformed("invalid header name")
        if name in CONNECTION_SPECIFIC:
            raise _malformed("connection-specific header in an HTTP/2 request")
        if name == b"te":
            if value.lower() != b"trailers":
                raise _malformed("te other than trailers")
        elif name == b"host":
            if host is not None:
                raise H2RequestError(400, "more than one Host header")
            host = value
        elif name == b"cookie":
            if cookies is None:
                cookies = [value]
            else:
                cookies.append(value)
        elif name == b"content-length":
            if not value.isdigit() or len(value) > 18:
                raise _malformed("invalid content-length")
            length = int(value)
            if head.content_length is not None and head.content_length != length:
                raise _malformed("conflicting content-length values")
            head.content_length = length
        elif name in FORWARDING:
            if name == b"x-forwarded-for":
                head.x_forwarded_for = value if head.x_forwarded_for is None else head.x_forwarded_for + b", " + value
            elif name == b"forwarded":
                head.forwarded = value if head.forwarded is None else head.forwarded + b", " + value
            elif name == b"x-forwarded-proto":
                head.x_forwarded_proto = value
            else:
                head.x_forwarded_host = value
        elif name == b"expect":
            if value.lower() != b"100-continue":
                raise H2RequestError(417, "unsupported expectation")
            head.expect_continue = True
        elif name in HOP_BY_HOP:
            pass  # trailer, proxy-authenticate, proxy-authorization: never forwarded
        else:
            lines.append(b"%s: %s\r\n" % (name, value))
            names.append(name)
    if size > max_header_size:
        raise H2RequestError(431, "request header fields too large")
    if method is None:
        raise _malformed("missing :method")
    if not _METHOD.fullmatch(method):
        raise _malformed("invalid :method")
    if method == b"CONNECT":
        raise H2RequestError(405, "CONNECT is not supported")
    if scheme is None or path is None:
        raise _malformed("missing :scheme or :path")
    if scheme not in (b"https", b"http"):
        raise H2RequestError(400, "unsupported :scheme")
    if not (_PATH.fullmatch(path) or (path == b"*" and method == b"OPTIONS")):
        raise H2RequestError(400, "invalid :path")
    if has_dot_segment(path):
        raise H2RequestError(400, "dot-segments in the request path")
    if authority is not None:
        if not _AUTHORITY.fullmatch(authority):
            raise H2RequestError(400, "invalid :authority")
        if host is not None and host.lower() != authority.lower():
            raise H2RequestError(400, "Host header and :authority differ")
        host = authority
    elif host is None:
        raise H2RequestError(400, "missing :authority and Host")
    elif not _AUTHORITY.fullmatch(host):
        raise H2RequestError(400, "invalid Host header")
    if cookies is not None:
        lines.append(b"cookie: %s\r\n" % b"; ".join(cookies))
        names.append(b"cookie")
    if end_stream and head.content_length:
        raise H2RequestError(400, "content-length announces a body the request does not have")
    head.method = method
    head.target = path
    head.host = host
    if not end_stream and head.content_length is None:
        head.chunked = True
    return head


# request heads remembered (per process): an h2 client repeating a request sends the very same
# header list, which then costs a copy instead of ~13 regex checks (bench/micro_h2.py)
_CHECKED_HEADS = 256
_CHECKED_FIELDS = 32
_checked: dict[tuple[object, ...], RequestHead] = {}


def checked_request_head(headers: list[tuple[bytes, bytes]], end_stream: bool, max_header_size: int) -> RequestHead:
    """``request_head``, remembered for header lists seen before; always a head of the caller's own."""
    if len(headers) > _CHECKED_FIELDS:
        return request_head(headers, end_stream, max_header_size)
    key = (tuple(headers), end_stream, max_header_size)
    checked = _checked.get(key)
    if checked is None:
        checked = request_head(headers, end_stream, max_header_size)  # a refusal is not remembered
        if len(_checked) >= _CHECKED_HEADS:
            _checked.clear()
        _checked[key] = checked
    return checked.copy()  # features add and replace lines in place


def upstream_request(head: RequestHead, forwarding: bytes, add_request: bytes) -> bytes:
    """The HTTP/1.1 request head sent upstream for a checked HTTP/2 request head."""
    if head.content_length is not None:
        framing = b"Content-Length: %d\r\n" % head.content_length
    elif head.chunked:
        framing = b"Transfer-Encoding: chunked\r\n"
    elif head.method in _BODY_METHODS:
        framing = b"Content-Length: 0\r\n"
    else:
        framing = b""
    return b"".join(
        (
            head.method,
            b" ",
            head.target,
            b" HTTP/1.1\r\nHost: ",
            head.host or b"",
            b"\r\n",
            *head.lines,
            forwarding,
            add_request,
            framing,
            b"\r\n",
        )
    )


def header_pairs(lines: bytes) -> list[tuple[bytes, bytes]]:
    """``b"Name: value\\r\\n..."`` (a route's add_response) as lower-case HTTP/2 pairs."""
    pairs = []
    for line in lines.split(b"\r\n"):
        if line:
            name, _, value = line.partition(b":")
            pairs.append((name.strip().lower(), value.strip()))
    return pairs


def response_headers(rh: ResponseHead, no_body: bool, extra: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The HTTP/2 header list for an upstream's HTTP/1.1 response head: the reference that
    ``ResponseEncoder.response_block`` (what streams send) is tested against.

    ResponseReader already took out hop-by-hop headers (and those named in Connection);
    names become lower case, ``content-length`` stays when the upstream sent one (except
    on 204), the route's ``add_response`` headers go last.
    """
    status = rh.status
    out = [(b":status", _STATUS_LINES.get(status) or b"%d" % status)]
    append = out.append
    for name, line in zip(rh.names, rh.lines):
        # line is b"Original-Case-Name: value\r\n"
        append((name, line[len(name) + 1 : -2].strip()))
    if rh.content_length is not None and status != 204:
        append((b"content-length", b"%d" % rh.content_length))
    if extra:
        out.extend(extra)
    return out


_EXTRA_CACHE: dict[bytes, list[tuple[bytes, bytes]]] = {}


def extra_pairs(lines: bytes) -> list[tuple[bytes, bytes]]:
    """A route's add_response lines as HTTP/2 pairs, parsed once per distinct value."""
    if not lines:
        return []
    pairs = _EXTRA_CACHE.get(lines)
    if pairs is None:
        if len(_EXTRA_CACHE) > 256:
            _EXTRA_CACHE.clear()
        pairs = _EXTRA_CACHE[lines] = header_pairs(lines)
    return pairs


def local_response(
    status: int, detail: str, reason: str, extra: list[tuple[bytes, bytes]] = ()
) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Headers and body of a response edge makes itself (same text as the HTTP/1.1 side)."""
    body = f"{status} {reason}: {detail}\n".encode("utf-8", "replace")
    headers = [
        (b":status", b"%d" % status),
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", b"%d" % len(body)),
        *extra,
    ]
    return headers, body


# -- header blocks -------------------------------------------------------------------------------
# HPACK (RFC 7541) in pure Python costs about as much per request as all the rest of the h2
# library together; both directions are made cheap for the common case here.

# fields whose encoding is kept; values above this length (cookies, long URLs) are encoded each time
_CACHED_VALUE = 128
# bound on distinct fields kept (the Date header alone adds one a second): then start over
_CACHE_FIELDS = 4096
_STATIC_FIELD = {field: index for index, field in enumerate(HeaderTable.STATIC_TABLE, 1)}
_STATIC_NAME: dict[bytes, int] = {}
for _index, (_name, _value) in enumerate(HeaderTable.STATIC_TABLE, 1):
    _STATIC_NAME.setdefault(_name, _index)
_huffman = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH).encode
_encoded_fields: dict[tuple[bytes, bytes], bytes] = {}


def _integer(value: int, prefix_bits: int, flags: int) -> bytes:
    """RFC 7541 5.1: ``value`` with an N-bit prefix, ``flags`` in the bits above it."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((flags | value,))
    out = bytearray((flags | limit,))
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(value: bytes) -> bytes:
    """RFC 7541 5.2: Huffman-coded when that is shorter."""
    coded = _huffman(value)
    if len(coded) < len(value):
        return _integer(len(coded), 7, 0x80) + coded
    return _integer(len(value), 7, 0) + value


def encode_field(name: bytes, value: bytes, never_indexed: bool = False) -> bytes:
    """One field without touching any dynamic table: static index, else a literal not indexed."""
    if not never_indexed:
        index = _STATIC_FIELD.get((name, value))
        if index is not None:
            return bytes((0x80 | index,))  # 6.1 indexed (the static table has 61 entries)
    flags = 0x10 if never_indexed else 0x00  # 6.2.3 never indexed, 6.2.2 without indexing
    index = _STATIC_NAME.get(name)
    if index is not None:
        return _integer(index, 4, flags) + _string(value)
    return bytes((flags,)) + _string(name) + _string(value)


_STATUS_FIELDS = {status: encode_field(b":status", b"%d" % status) for status in range(200, 600)}
# encoded fields per upstream header line, and per content-length value; bounded like _encoded_fields
_encoded_lines: dict[bytes, bytes] = {}
_length_fields: dict[int, bytes] = {}


def _line_field(line: bytes) -> bytes:
    """A forwarded HTTP/1.1 header line as an encoded HTTP/2 field (lower-case name), kept when short."""
    colon = line.index(b":")
    piece = encode_field(line[:colon].lower(), line[colon + 1 : -2].strip())
    if len(line) <= _CACHED_VALUE:
        if len(_encoded_lines) >= _CACHE_FIELDS:
            _encoded_lines.clear()
        _encoded_lines[line] = piece
    return piece


def _length_field(length: int) -> bytes:
    piece = encode_field(b"content-length", b"%d" % length)
    if len(_length_fields) >= _CACHE_FIELDS:
        _length_fields.clear()
    _length_fields[length] = piece
    return piece


class ResponseEncoder:
    """A stateless HPACK encoder for our responses, in place of ``hpack.Encoder`` on h2's state machine.

    It never inserts into the dynamic table (nginx's HTTP/2 encoder does the same): every field
    is a static-table index or a literal "without indexing", so a field always encodes to the
    same bytes and those are kept per process (``_encoded_fields``) instead of being worked out
    per response (hpack's encoder: table search, integer and Huffman coding for every field).
    The price is size: a repeated response head is about 100 bytes longer than with the
    dynamic table (the values travel in every response). The first block, and the first after
    the client changed SETTINGS_HEADER_TABLE_SIZE, starts with a table size update to 0 (6.3),
    which every decoder limit allows.

    h2 uses ``encode`` and sets ``header_table_size``; nothing else.
    """

    __slots__ = ("_resize",)

    def __init__(self) -> None:
        self._resize = True

    @property
    def header_table_size(self) -> int:
        return 0

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        self._resize = True  # 4.2: say again that our table is empty, in the next block

    def response_block(self, rh: ResponseHead, extra: list[tuple[bytes, bytes]]) -> bytes:
        """``encode(response_headers(rh, ..., extra))`` in one pass over the upstream's lines.

        Each forwarded line (``b"Name: value\\r\\n"``, hop-by-hop already gone) maps to its
        encoded field through ``_encoded_lines``: no name/value pairs are built per response.
        """
        status = rh.status
        parts = [_STATUS_FIELDS.get(status) or encode_field(b":status", b"%d" % status)]
        if self._resize:
            self._resize = False
            parts.insert(0, b"\x20")
        append = parts.append
        lines = _encoded_lines
        for line in rh.lines:
            piece = lines.get(line)
            append(piece if piece is not None else _line_field(line))
        length = rh.content_length
        if length is not None and status != 204:
            piece = _length_fields.get(length)
            append(piece if piece is not None else _length_field(length))
        if extra:
            append(self.encode(extra))
        return b"".join(parts)

    def encode(self, headers: Iterable[tuple[bytes, bytes]], huffman: bool = True) -> bytes:
        cache = _encoded_fields
        parts = []
        if self._resize:
            self._resize = False
            parts.append(b"\x20")
        for field in headers:
            piece = cache.get(field) if field.__class__ is tuple else None
            if piece is None:
                name, value = field
                piece = encode_field(name, value, field.__class__ is NeverIndexedHeaderTuple)
                if field.__class__ is tuple and len(value) <= _CACHED_VALUE:
                    if len(cache) >= _CACHE_FIELDS:
                        cache.clear()
                    cache[field] = piece
            parts.append(piece)
        return b"".join(parts)


# distinct request header blocks remembered per connection, each of at most _MEMO_FIELDS fields:
# a 2 KB block of one-byte indexed references decodes to ~2000 fields, and 64 of those kept
# ~10 MB per connection; capped like _CHECKED_FIELDS (a real request has ~7 to 20), a
# connection holds at most 64 x 32 field tuples, whatever its blocks (refused ones included)
_MEMO_BLOCKS = 64
_MEMO_BLOCK_SIZE = 2048
_MEMO_FIELDS = _CHECKED_FIELDS


class MemoDecoder(Decoder):
    """``hpack.Decoder`` that remembers blocks which left its dynamic table as it found them.

    A client repeating a request (h2load; an API polled; the same asset on every page) sends
    the same bytes, all fields indexed once its table holds them: decoding those again in the
    same table state gives the same list, so it is looked up, not decoded (a ~7-field block:
    about 40 µs of pure Python). The state a block was decoded in is the identity of the
    newest table entry (entries are only ever added at the front, as new tuples, and we keep
    a reference, so an object id cannot come back), the number of entries and every limit
    the decoder checks; a block that inserts, evicts or resizes changes that state and is
    never remembered, nor is one of more than ``_MEMO_FIELDS`` fields (what a connection can
    make us keep is bounded by fields, not by its blocks' bytes). Everything else (errors
    included) is hpack's own decode.
    """

    def __init__(self, max_header_list_size: int) -> None:
        super().__init__(max_header_list_size)
        self._memo: dict[bytes, tuple[object, tuple[int, ...], list[HeaderTuple]]] = {}

    def _limits(self) -> tuple[int, ...]:
        table = self.header_table
        return len(table.dynamic_entries), table.maxsize, self.max_allowed_table_size, self.max_header_list_size

    def decode(self, data: bytes, raw: bool = False) -> list[HeaderTuple]:  # type: ignore[override]
        if not raw or len(data) > _MEMO_BLOCK_SIZE:
            return super().decode(data, raw)  # type: ignore[return-value]
        entries = self.header_table.dynamic_entries
        newest = entries[0] if entries else None
        limits = self._limits()
        memo = self._memo
        hit = memo.get(data)
        if hit is not None and hit[0] is newest and hit[1] == limits:
            return list(hit[2])
        headers: list[HeaderTuple] = super().decode(data, raw)  # type: ignore[assignment]
        entries = self.header_table.dynamic_entries
        if len(headers) <= _MEMO_FIELDS and (entries[0] if entries else None) is newest \
                and self._limits() == limits:
            if len(memo) >= _MEMO_BLOCKS:
                memo.clear()
            memo[data] = (newest, limits, list(headers))
        return headers
