"""HTTP/1.1 message framing and header rewriting, in one place for both parser engines.

Theory of operation: a parser engine turns bytes into a ``RequestHead`` or ``ResponseHead`` with
the headers exactly as received. ``analyze_request`` / ``analyze_response`` then decide, once, how
the message is framed (RFC 9112 section 6), whether the connection persists, and which headers are
end-to-end. The relay never looks at framing headers itself: it serializes what is decided here,
so what goes upstream is always re-framed canonically (one Content-Length, or chunked, never both).
"""

from __future__ import annotations

from lbproxy.errors import BadRequest, NotImplementedByGateway, UpstreamProtocolError

# Hop-by-hop headers (RFC 9110 7.6.1), plus those whose values lbproxy recomputes.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"content-length",
    }
)
_REQUEST_SPECIAL = HOP_BY_HOP | {
    b"host",
    b"expect",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"via",
    b"x-request-id",
}
Header = tuple[bytes, bytes]
CLOSE_DELIMITED = -1


class RequestHead:
    """A request as parsed, then analysed: framing, persistence and the end-to-end headers."""

    __slots__ = (
        "chunked",
        "content_length",
        "expect_continue",
        "forwarded_for",
        "headers",
        "host",
        "http11",
        "keep_alive",
        "kept",
        "method",
        "request_id",
        "target",
        "via",
    )

    def __init__(self, method: bytes, target: bytes, http11: bool, headers: list[Header]) -> None:
        self.method = method
        self.target = target
        self.http11 = http11
        self.headers = headers
        self.kept: list[Header] = []
        self.content_length = 0
        self.chunked = False
        self.keep_alive = http11
        self.host: bytes | None = None
        self.expect_continue = False
        self.forwarded_for: bytes | None = None
        self.via: bytes | None = None
        self.request_id: bytes | None = None

    def has_body(self) -> bool:
        return self.chunked or self.content_length > 0


class ResponseHead:
    """A response as parsed, then analysed. lbproxy sends its own reason phrase for the status
    (as Envoy does): httptools then skips a callback per response, and both engines agree."""

    __slots__ = (
        "bodiless",
        "chunked",
        "content_length",
        "headers",
        "http11",
        "keep_alive",
        "kept",
        "reason",
        "status",
    )

    def __init__(self, status: int, reason: bytes, http11: bool, headers: list[Header]) -> None:
        self.status = status
        self.reason = reason
        self.http11 = http11
        self.headers = headers
        self.kept: list[Header] = []
        # CLOSE_DELIMITED: the body runs until the upstream closes the connection.
        self.content_length = CLOSE_DELIMITED
        self.chunked = False
        self.keep_alive = http11
        # HEAD, 1xx, 204, 304: no body whatever the headers say.
        self.bodiless = False


_COMMON_TOKENS = {
    b"keep-alive": frozenset({b"keep-alive"}),
    b"close": frozenset({b"close"}),
    b"Keep-Alive": frozenset({b"keep-alive"}),
    b"Close": frozenset({b"close"}),
}


def _connection_tokens(value: bytes) -> frozenset[bytes] | set[bytes]:
    common = _COMMON_TOKENS.get(value)
    if common is not None:
        return common
    return {t.strip().lower() for t in value.split(b",") if t.strip()}


def _parse_content_length(value: bytes, seen: int | None, error: type[Exception]) -> int:
    # Only 1*DIGIT: no sign, no spaces, no list (even of equal values): anything else is
    # a framing ambiguity that a sloppier parser downstream could read differently.
    if not value.isdigit() or len(value) > 18:
        raise error(f"invalid Content-Length {value[:40]!r}")
    length = int(value)
    if seen is not None:
        raise error("more than one Content-Length")
    return length


def parse_transfer_encoding(value: bytes, error: type[Exception]) -> None:
    codings = [c.strip().lower() for c in value.split(b",")]
    if codings[-1] != b"chunked" or codings.count(b"chunked") != 1:
        raise error(f"Transfer-Encoding {value[:40]!r} does not end in exactly one chunked")
    if len(codings) > 1:
        raise NotImplementedByGateway(f"transfer coding {codings[0][:40]!r} is not supported")


def analyze_request(head: RequestHead) -> None:
    """Decide framing and persistence, split special headers from end-to-end ones.

    Raises ``BadRequest`` (400) or ``NotImplementedByGateway`` (501) on anything ambiguous.
    """
    kept = head.kept
    length: int | None = None
    te: bytes | None = None
    connection: set[bytes] = set()
    for header in head.headers:
        name, value = header
        lname = name.lower()
        if lname not in _REQUEST_SPECIAL:
            kept.append(header)
        elif lname == b"host":
            if head.host is not None:
                raise BadRequest("more than one Host header")
            head.host = value
        elif lname == b"content-length":
            length = _parse_content_length(value, length, BadRequest)
        elif lname == b"transfer-encoding":
            if te is not None:
                raise BadRequest("more than one Transfer-Encoding header")
            te = value
        elif lname == b"connection":
            connection |= _connection_tokens(value)
        elif lname == b"expect":
            if value.lower() != b"100-continue":
                raise BadRequest(f"unsupported Expect {value[:40]!r}")  # RFC 9110 10.1.1: 417
            head.expect_continue = head.http11
        elif lname == b"x-forwarded-for":
            head.forwarded_for = (
                value if head.forwarded_for is None else (head.forwarded_for + b", " + value)
            )
        elif lname == b"via":
            head.via = value if head.via is None else head.via + b", " + value
        elif lname == b"x-request-id":
            head.request_id = value
        elif lname == b"upgrade":
            raise NotImplementedByGateway("protocol upgrades are not supported")
    _decide_request_framing(head, te, length)
    if head.http11:
        head.keep_alive = b"close" not in connection
        if head.host is None:
            raise BadRequest("HTTP/1.1 request without Host")
    else:
        head.keep_alive = b"keep-alive" in connection and b"close" not in connection
    if connection - {b"close", b"keep-alive"}:
        head.kept = [(n, v) for n, v in kept if n.lower() not in connection]


def _decide_request_framing(head: RequestHead, te: bytes | None, length: int | None) -> None:
    if head.method == b"CONNECT":
        raise NotImplementedByGateway("CONNECT is not supported")
    if te is not None:
        if length is not None:
            raise BadRequest("both Content-Length and Transfer-Encoding")
        if not head.http11:
            raise BadRequest("Transfer-Encoding in an HTTP/1.0 request")
        parse_transfer_encoding(te, BadRequest)
        head.chunked = True
    elif length is not None:
        head.content_length = length


def analyze_response(head: ResponseHead, request_method: bytes) -> None:
    """Decide the response's framing (RFC 9112 6.3) given the request it answers."""
    kept = head.kept
    length: int | None = None
    te: bytes | None = None
    connection: set[bytes] = set()
    for header in head.headers:
        name, value = header
        lname = name.lower()
        if lname not in HOP_BY_HOP:
            kept.append(header)
        elif lname == b"content-length":
            length = _parse_content_length(value, length, UpstreamProtocolError)
        elif lname == b"transfer-encoding":
            if te is not None:
                raise UpstreamProtocolError("more than one Transfer-Encoding header")
            te = value
        elif lname == b"connection":
            connection |= _connection_tokens(value)
    if te is not None and length is not None:
        raise UpstreamProtocolError("both Content-Length and Transfer-Encoding")
    status = head.status
    if status == 101:
        # lbproxy never forwards Upgrade, so nothing was asked to switch.
        raise UpstreamProtocolError("101 Switching Protocols without an upgrade request")
    if request_method == b"HEAD" or status < 200 or status in (204, 304):
        head.content_length = 0
        head.bodiless = True
        # A HEAD answer's Content-Length describes the GET body: pass it on unchanged.
        if length is not None and request_method == b"HEAD" and status >= 200:
            kept.append((b"Content-Length", str(length).encode()))
    elif te is not None:
        if te.strip().lower() != b"chunked":
            raise UpstreamProtocolError(f"unsupported response Transfer-Encoding {te[:40]!r}")
        head.chunked = True
    elif length is not None:
        head.content_length = length
    if head.http11:
        head.keep_alive = b"close" not in connection
    else:
        head.keep_alive = b"keep-alive" in connection and b"close" not in connection
    if head.content_length == CLOSE_DELIMITED and not head.chunked:
        head.keep_alive = False
    if connection - {b"close", b"keep-alive"}:
        head.kept = [(n, v) for n, v in kept if n.lower() not in connection]


def encode_chunk(data: bytes) -> bytes:
    # An empty chunk would be the last-chunk marker and end the body early.
    return b"%x\r\n%b\r\n" % (len(data), data) if data else b""


LAST_CHUNK = b"0\r\n\r\n"

# How a body is written on the outgoing side.
BODY_NONE = 0
BODY_LENGTH = 1  # Content-Length: bytes pass through unchanged
BODY_CHUNKED = 2  # re-chunked by lbproxy
BODY_UNTIL_CLOSE = 3  # HTTP/1.0 client: bytes pass through, then the connection closes

_STATUS_LINES = {
    code: b"HTTP/1.1 %d %b\r\n" % (code, reason)
    for code, reason in {
        100: b"Continue",
        200: b"OK",
        201: b"Created",
        204: b"No Content",
        301: b"Moved Permanently",
        302: b"Found",
        304: b"Not Modified",
        400: b"Bad Request",
        401: b"Unauthorized",
        403: b"Forbidden",
        404: b"Not Found",
        405: b"Method Not Allowed",
        408: b"Request Timeout",
        413: b"Content Too Large",
        417: b"Expectation Failed",
        431: b"Request Header Fields Too Large",
        500: b"Internal Server Error",
        501: b"Not Implemented",
        502: b"Bad Gateway",
        503: b"Service Unavailable",
        504: b"Gateway Timeout",
    }.items()
}


_RELAYED_STATUS_LINES: dict[tuple[int, bytes], bytes] = {}


def status_line(status: int, reason: bytes = b"") -> bytes:
    """Our status line for ``status``; an upstream's own reason phrase is kept."""
    if not reason:
        line = _STATUS_LINES.get(status)
        return line if line is not None else b"HTTP/1.1 %d \r\n" % status
    key = (status, reason)
    line = _RELAYED_STATUS_LINES.get(key)
    if line is None:
        line = b"HTTP/1.1 %d %b\r\n" % key
        if len(_RELAYED_STATUS_LINES) < 1024:  # bounded: reasons come from upstreams
            _RELAYED_STATUS_LINES[key] = line
    return line


def _header_lines(headers: list[Header]) -> bytes:
    return b"".join([b"%b: %b\r\n" % h for h in headers])


def request_head_bytes(head: RequestHead, host: bytes | None, added: bytes) -> bytes:
    """The upstream request head: canonical framing, end-to-end headers, then ``added`` lines."""
    if head.chunked:
        framing = b"Transfer-Encoding: chunked\r\n"
    elif head.content_length or head.method in (b"POST", b"PUT", b"PATCH"):
        framing = b"Content-Length: %d\r\n" % head.content_length
    else:
        framing = b""
    return b"%b %b HTTP/1.1\r\nHost: %b\r\n%b%b%b\r\n" % (
        head.method,
        head.target,
        host if host is not None else (head.host or b""),
        _header_lines(head.kept),
        added,
        framing,
    )


def response_head_bytes(
    head: ResponseHead, client_http11: bool, keep_alive: bool, added: bytes = b""
) -> tuple[bytes, int]:
    """The client response head and the body mode the relay must use for its body."""
    status = head.status
    if head.content_length == 0 and not head.chunked:
        mode = BODY_NONE
        # A bodiless answer (HEAD, 1xx, 204, 304) states no length of its own: for HEAD the
        # upstream's Content-Length, if any, passed through with the end-to-end headers.
        framing = b"" if head.bodiless else b"Content-Length: 0\r\n"
    elif head.content_length > 0 and not head.chunked:
        mode, framing = BODY_LENGTH, b"Content-Length: %d\r\n" % head.content_length
    elif client_http11:
        mode, framing = BODY_CHUNKED, b"Transfer-Encoding: chunked\r\n"
    else:
        mode, framing, keep_alive = BODY_UNTIL_CLOSE, b"", False
    if not keep_alive:
        framing += b"Connection: close\r\n"
    elif not client_http11:
        framing += b"Connection: keep-alive\r\n"
    line = status_line(status, head.reason)
    return b"%b%b%b%b\r\n" % (line, _header_lines(head.kept), added, framing), mode


def interim_head_bytes(head: ResponseHead) -> bytes:
    return status_line(head.status, head.reason) + _header_lines(head.kept) + b"\r\n"
