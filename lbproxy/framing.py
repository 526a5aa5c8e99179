"""HTTP/1.1 message framing and header rewriting, in one place for both parser engines.

Theory of operation: a parser engine turns bytes into a ``RequestHead`` or ``ResponseHead`` with
the headers exactly as received. ``analyze_request`` / ``analyze_response`` then decide, once, how
the message is framed (RFC 9112 section 6), whether the connection persists, and which headers are
end-to-end. The relay never looks at framing headers itself: it serializes what is decided here,
so what goes upstream is always re-framed canonically (one Content-Length, or chunked, never both).
"""

from __future__ import annotations

import re
from typing import Final

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
CLOSE_DELIMITED: Final = -1


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


# What a header is to lbproxy. Zero: end-to-end, forwarded as is; the rest are read here.
# _LOOKALIKE: a request header that becomes one of the special ones when "_" is read as "-", as
# CGI-style backends do (HTTP_CONTENT_LENGTH, HTTP_X_FORWARDED_FOR): refused, since it could
# pass for the header lbproxy framed or added (nginx drops such names by default).
_E2E, _HOST, _LENGTH, _TE, _CONNECTION, _EXPECT, _XFF, _VIA, _REQUEST_ID, _UPGRADE = range(10)
_DROP, _LOOKALIKE = 10, 11
_SPECIAL_KINDS = {
    b"host": _HOST,
    b"content-length": _LENGTH,
    b"transfer-encoding": _TE,
    b"connection": _CONNECTION,
    b"expect": _EXPECT,
    b"x-forwarded-for": _XFF,
    b"via": _VIA,
    b"x-request-id": _REQUEST_ID,
    b"upgrade": _UPGRADE,
}
_REQUEST_KINDS = {name: _SPECIAL_KINDS.get(name, _DROP) for name in _REQUEST_SPECIAL}
_RESPONSE_KINDS = {name: _SPECIAL_KINDS.get(name, _DROP) for name in HOP_BY_HOP}
_RESPONSE_KINDS[b"upgrade"] = _DROP  # never forwarded, and nothing was asked to switch


class _KindCache(dict[bytes, int]):
    """Header kinds by name as spelled on the wire. Names repeat from message to message, so
    one dict hit replaces a ``lower()`` and a lookup per header; bounded, since names come
    from clients and upstreams."""

    def __init__(self, kinds: dict[bytes, int], lookalikes: bool) -> None:
        super().__init__()
        self._kinds = kinds
        self._lookalikes = lookalikes

    def __missing__(self, name: bytes) -> int:
        lower = name.lower()
        kind = self._kinds.get(lower, _E2E)
        if self._lookalikes and not kind and lower.replace(b"_", b"-") in self._kinds:
            kind = _LOOKALIKE
        if len(self) < 4096:
            self[name] = kind
        return kind


_request_kinds = _KindCache(_REQUEST_KINDS, lookalikes=True)
_response_kinds = _KindCache(_RESPONSE_KINDS, lookalikes=False)

# RFC 9112 3.2: Host = uri-host [ ":" port ], where uri-host is an IP literal or a reg-name
# (unreserved, pct-encoded, sub-delims). Anything else ("a b", "a/b", "a@b", "a:80:90") is
# a value a backend might split differently, so the request is refused.
_HOST_SYNTAX = re.compile(
    rb"(?:\[[0-9A-Za-z:._~!$&'()*+,;=%-]+\]|[0-9A-Za-z._~!$&'()*+,;=%-]*)(?::[0-9]*)?"
)
# Hosts seen valid: they repeat from request to request, so one set lookup replaces a match.
_valid_hosts: set[bytes] = set()


def _check_host(value: bytes) -> None:
    if _HOST_SYNTAX.fullmatch(value) is None:
        raise BadRequest(f"invalid Host {value[:60]!r}")
    if len(_valid_hosts) < 4096:  # bounded: hosts come from clients
        _valid_hosts.add(value)


class _Connection:
    """The tokens of the Connection header fields of one message."""

    __slots__ = ("close", "keep_alive", "named")

    def __init__(self) -> None:
        self.close = False
        self.keep_alive = False
        self.named: set[bytes] | None = None  # other tokens: headers to drop

    def add(self, value: bytes) -> None:
        for item in value.split(b","):
            token = item.strip().lower()
            if token == b"close":
                self.close = True
            elif token == b"keep-alive":
                self.keep_alive = True
            elif token:
                if self.named is None:
                    self.named = set()
                self.named.add(token)

    def copy(self) -> _Connection:
        other = _Connection()
        other.close, other.keep_alive = self.close, self.keep_alive
        return other

    def persists(self, http11: bool) -> bool:
        return not self.close if http11 else self.keep_alive and not self.close

    def drop_named(self, kept: list[Header]) -> list[Header]:
        named = self.named or ()
        return [h for h in kept if h[0].lower() not in named]


_KEEP_ALIVE = _Connection()
_KEEP_ALIVE.keep_alive = True
_CLOSE = _Connection()
_CLOSE.close = True
_COMMON_CONNECTION = {b"keep-alive": _KEEP_ALIVE, b"Keep-Alive": _KEEP_ALIVE, b"close": _CLOSE}


def _connection(seen: _Connection | None, value: bytes) -> _Connection:
    """``seen`` with the tokens of one more Connection field. The usual lone ``keep-alive`` or
    ``close`` of a first field is a shared, never modified instance."""
    if seen is None:
        common = _COMMON_CONNECTION.get(value)
        if common is not None:
            return common
        seen = _Connection()
    elif seen is _KEEP_ALIVE or seen is _CLOSE:
        seen = seen.copy()
    seen.add(value)
    return seen


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


def analyze_request(head: RequestHead) -> None:  # noqa: PLR0915 -- one pass, inline: hot path
    """Decide framing and persistence, split special headers from end-to-end ones.

    Raises ``BadRequest`` (400) or ``NotImplementedByGateway`` (501) on anything ambiguous.
    """
    kept = head.kept
    kinds = _request_kinds
    upgrade = False
    length: int | None = None
    te: bytes | None = None
    connection: _Connection | None = None
    for header in head.headers:
        kind = kinds[header[0]]
        if not kind:
            kept.append(header)
            continue
        value = header[1]
        if kind == _HOST:
            if head.host is not None:
                raise BadRequest("more than one Host header")
            if value not in _valid_hosts:
                _check_host(value)
            head.host = value
        elif kind == _LENGTH:
            length = _parse_content_length(value, length, BadRequest)
        elif kind == _TE:
            if te is not None:
                raise BadRequest("more than one Transfer-Encoding header")
            te = value
        elif kind == _CONNECTION:
            connection = _connection(connection, value)
        elif kind == _EXPECT:
            if value.lower() != b"100-continue":
                raise BadRequest(f"unsupported Expect {value[:40]!r}")  # RFC 9110 10.1.1: 417
            head.expect_continue = head.http11
        elif kind == _XFF:
            xff = head.forwarded_for
            head.forwarded_for = value if xff is None else xff + b", " + value
        elif kind == _VIA:
            head.via = value if head.via is None else head.via + b", " + value
        elif kind == _REQUEST_ID:
            head.request_id = value
        elif kind == _UPGRADE:
            upgrade = True  # refused last: h11 reads the rest of the head first
        elif kind == _LOOKALIKE:
            raise BadRequest(f"header name {header[0][:40]!r} passes for a framing or gateway one")
    if te is not None or length is not None or head.method == b"CONNECT":
        _decide_request_framing(head, te, length)
    if head.http11 and head.host is None:
        raise BadRequest("HTTP/1.1 request without Host")
    if upgrade:
        raise NotImplementedByGateway("protocol upgrades are not supported")
    if connection is not None:
        head.keep_alive = connection.persists(head.http11)
        if connection.named is not None:
            head.kept = connection.drop_named(kept)


def _decide_request_framing(head: RequestHead, te: bytes | None, length: int | None) -> None:
    if head.method == b"CONNECT":
        if head.http11 and head.host is None:  # h11 reads this first: one verdict for both
            raise BadRequest("HTTP/1.1 request without Host")
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
    kinds = _response_kinds
    length: int | None = None
    te: bytes | None = None
    connection: _Connection | None = None
    for header in head.headers:
        kind = kinds[header[0]]
        if not kind:
            kept.append(header)
        elif kind == _LENGTH:
            value = header[1]
            if length is None and value.isdigit() and len(value) <= 18:
                length = int(value)  # the usual case, without a call
            else:
                length = _parse_content_length(value, length, UpstreamProtocolError)
        elif kind == _CONNECTION:  # before _TE: the usual second special header
            connection = _connection(connection, header[1])
        elif kind == _TE:
            if te is not None:
                raise UpstreamProtocolError("more than one Transfer-Encoding header")
            te = header[1]
    if te is not None:
        if length is not None:
            raise UpstreamProtocolError("both Content-Length and Transfer-Encoding")
        if not head.http11:
            # RFC 9112 6.1: an HTTP/1.0 message with Transfer-Encoding has faulty framing.
            raise UpstreamProtocolError("Transfer-Encoding in an HTTP/1.0 response")
        # Judged for every status, a 1xx, 204, 304 or HEAD answer's too (as h11 does): a
        # server must not send one there anyway (RFC 9110 6.4.1).
        if te.strip().lower() != b"chunked":
            raise UpstreamProtocolError(f"unsupported response Transfer-Encoding {te[:40]!r}")
    status = head.status
    if status < 200 and not head.http11:
        # HTTP/1.0 has no 1xx (RFC 9110 15.2), and readings differ on what may follow one.
        raise UpstreamProtocolError(f"{status} response in HTTP/1.0")
    if status == 101:
        # lbproxy never forwards Upgrade, so nothing was asked to switch.
        raise UpstreamProtocolError("101 Switching Protocols without an upgrade request")
    if request_method == b"HEAD" or status < 200 or status in {204, 304}:
        _frame_bodiless(head, length, request_method)
    elif te is not None:
        head.chunked = True
    elif length is not None:
        head.content_length = length
    if connection is _KEEP_ALIVE:  # the usual lone token persists in either version
        head.keep_alive = True
    elif connection is not None:
        head.keep_alive = connection.persists(head.http11)
        if connection.named is not None:
            head.kept = connection.drop_named(head.kept)
    if head.content_length == CLOSE_DELIMITED and not head.chunked:
        head.keep_alive = False  # the body runs until the upstream closes


def _frame_bodiless(head: ResponseHead, length: int | None, request_method: bytes) -> None:
    head.content_length = 0
    head.bodiless = True
    # A HEAD answer's Content-Length describes the GET body: pass it on unchanged.
    if length is not None and request_method == b"HEAD" and head.status >= 200:
        head.kept.append((b"Content-Length", str(length).encode()))


def encode_chunk(data: bytes) -> bytes:
    # An empty chunk would be the last-chunk marker and end the body early.
    return b"%x\r\n%b\r\n" % (len(data), data) if data else b""


LAST_CHUNK: Final = b"0\r\n\r\n"

# How a body is written on the outgoing side.
BODY_NONE: Final = 0
BODY_LENGTH: Final = 1  # Content-Length: bytes pass through unchanged
BODY_CHUNKED: Final = 2  # re-chunked by lbproxy
BODY_UNTIL_CLOSE: Final = 3  # HTTP/1.0 client: bytes pass through, then the connection closes

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
        414: b"URI Too Long",
        417: b"Expectation Failed",
        429: b"Too Many Requests",
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


_field_line = b": ".join  # (name, value) -> b"name: value", in C for every header


def _header_lines(headers: list[Header]) -> bytes:
    """Header lines, each ending in CRLF (none for no headers)."""
    if not headers:
        return b""
    return b"\r\n".join(map(_field_line, headers)) + b"\r\n"


_BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})  # a set: the method's hash is cached
# Content-Length lines by length: lengths repeat, and a dict hit costs a third of a format.
# Bounded, since lengths come from clients and upstreams.
_length_lines: dict[int, bytes] = {}


def _length_line(length: int) -> bytes:
    line = _length_lines[length] = b"Content-Length: %d\r\n" % length
    if len(_length_lines) > 4096:
        del _length_lines[length]
    return line


def request_head_bytes(head: RequestHead, host: bytes | None, added: bytes) -> bytes:
    """The upstream request head: canonical framing, end-to-end headers, then ``added`` lines."""
    if head.chunked:
        framing = b"Transfer-Encoding: chunked\r\n"
    elif head.content_length or head.method in _BODY_METHODS:
        framing = _length_lines.get(head.content_length) or _length_line(head.content_length)
    else:
        framing = b""
    kept = head.kept
    return b"%b %b HTTP/1.1\r\nHost: %b\r\n%b%b%b\r\n" % (
        head.method,
        head.target,
        host if host is not None else (head.host or b""),
        # _header_lines(), inline: most requests keep no header at all
        b"\r\n".join(map(_field_line, kept)) + b"\r\n" if kept else b"",
        added,
        framing,
    )


def response_head_bytes(
    head: ResponseHead, client_http11: bool, keep_alive: bool, added: bytes = b""
) -> tuple[bytes, int]:
    """The client response head and the body mode the relay must use for its body."""
    status = head.status
    length = head.content_length
    if length == 0 and not head.chunked:
        mode = BODY_NONE
        # A bodiless answer (HEAD, 1xx, 204, 304) states no length of its own: for HEAD the
        # upstream's Content-Length, if any, passed through with the end-to-end headers.
        framing = b"" if head.bodiless else b"Content-Length: 0\r\n"
    elif length > 0 and not head.chunked:
        mode, framing = BODY_LENGTH, _length_lines.get(length) or _length_line(length)
    elif client_http11:
        mode, framing = BODY_CHUNKED, b"Transfer-Encoding: chunked\r\n"
    else:
        mode, framing, keep_alive = BODY_UNTIL_CLOSE, b"", False
    if not keep_alive:
        framing += b"Connection: close\r\n"
    elif not client_http11:
        framing += b"Connection: keep-alive\r\n"
    line = _STATUS_LINES.get(status) if not head.reason else None
    if line is None:
        line = status_line(status, head.reason)
    kept = head.kept
    if kept:  # _header_lines(), inline: a call less per response
        return b"%b%b\r\n%b%b\r\n" % (
            line,
            b"\r\n".join(map(_field_line, kept)),
            added,
            framing,
        ), mode
    return b"%b%b%b\r\n" % (line, added, framing), mode


def interim_head_bytes(head: ResponseHead) -> bytes:
    return status_line(head.status, head.reason) + _header_lines(head.kept) + b"\r\n"
