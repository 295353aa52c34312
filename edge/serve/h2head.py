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

from edge.http.h1 import FORWARDING, HOP_BY_HOP, RequestHead, ResponseHead, has_dot_segment

__all__ = [
    "H2RequestError",
    "header_pairs",
    "local_response",
    "request_head",
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
    """The HTTP/2 header list for an upstream's HTTP/1.1 response head.

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
