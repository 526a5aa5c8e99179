"""The wire rules both parser engines hold to beyond framing: head limits, and llhttp's grammar
(request and status lines, field lines, chunk lines, trailer fields) for the h11 engine.

Theory of operation. httptools (llhttp) is the engine in production and h11 the pure-Python
reference, and the two differ where the RFC leaves room: llhttp ignores empty lines before a
message, accepts runs of spaces around the request target and the RTSP/ICE protocol names, and
is strict about chunk extensions and trailer fields where h11 takes anything. lbproxy writes its
own request line and re-frames every body, so none of llhttp's leniencies reaches a backend;
what matters is that both engines reach one verdict on every input (tests/test_http_engines.py,
tests/test_fuzz_parser.py). So the h11 engine (h11engine.py) checks each complete head here
before h11 reads it, and frames bodies itself with the readers below, a port of llhttp's chunk
and trailer states. Nothing here does I/O: bytes in, values or an ``HTTPError`` out.
"""

from __future__ import annotations

import re

from lbproxy.errors import (
    HeadersTooLarge,
    HTTPError,
    RequestLineTooLong,
    UpstreamProtocolError,
)

Header = tuple[bytes, bytes]


class HeadLimits:
    """What a head may take: ``size`` (max_header_size), ``line`` (max_request_line) and
    ``count`` (max_header_count). Every measure here is at most the bytes the head took on the
    wire, so a head carried by ``careful`` bytes or fewer is never measured: the usual request
    costs one comparison."""

    __slots__ = ("careful", "count", "line", "size")

    def __init__(self, size: int, line: int, count: int) -> None:
        self.size = size
        self.line = line
        self.count = count
        # A field line takes at least 4 bytes ("X:" CRLF).
        self.careful = min(size, line, 4 * count)

    def check_request(self, method: bytes, target: bytes, headers: list[Header], span: int) -> None:
        """Raise if a complete request head breaks a limit; ``span``: the bytes of the reads
        that carried it, a bound on its size from above."""
        if len(method) + len(target) + 10 > self.line:  # "M T HTTP/1.1", single spaces
            raise RequestLineTooLong(f"request line longer than {self.line} bytes")
        if len(headers) > self.count:
            raise HeadersTooLarge(f"more than {self.count} header fields")
        if span > self.size and head_size(target, headers) > self.size:
            raise HeadersTooLarge(f"request head larger than {self.size} bytes")


def head_size(target: bytes, headers: list[Header]) -> int:
    """A head's size as both engines count it: the target, and each field's name and value
    with 3 bytes for the colon and the line end."""
    return len(target) + sum(len(name) + len(value) + 3 for name, value in headers)


def trailer_size(name: bytes, value: bytes) -> int:
    """A trailer field's share of the head limit (its value without surrounding whitespace)."""
    return len(name) + len(value.strip(b" \t")) + 3


def check_trailers(fields: list[Header], limit: int, error: type[HTTPError]) -> None:
    if sum(trailer_size(name, value) for name, value in fields) > limit:
        raise error(f"trailer fields larger than {limit} bytes")


def check_idle_reads(idle: int, limit: int, error: type[HTTPError]) -> None:
    """``idle``: the bytes of consecutive reads that carried no body data while a message was
    still open (a response's head, chunk lines, trailer fields). A parser may hold a partial
    field in memory, so they are bounded: by a head and a trailer section, each at most
    ``limit``."""
    if idle > 2 * limit:
        raise error(f"framing without data larger than {2 * limit} bytes")


# -- llhttp's grammar ------------------------------------------------------------------------


def table(*ranges: tuple[int, int], chars: bytes = b"") -> bytes:
    """A 256-byte table: 1 where a byte is in one of ``ranges`` or ``chars``."""
    out = bytearray(256)
    for lo, hi in ranges:
        out[lo : hi + 1] = b"\x01" * (hi - lo + 1)
    for c in chars:
        out[c] = 1
    return bytes(out)


TOKEN = table((0x30, 0x39), (0x41, 0x5A), (0x61, 0x7A), chars=b"!#$%&'*+-.^_`|~")
_ALPHA = table((0x41, 0x5A), (0x61, 0x7A))
# URL characters of llhttp's strict build: visible ASCII but "#" and "?", which end a part.
_URL_CHAR = table((0x21, 0x22), (0x24, 0x3E), (0x40, 0x7E))
_USERINFO = table((0x30, 0x39), (0x41, 0x5A), (0x61, 0x7A), chars=b"-_.!~*'()%;:&=+$,[]")

# Methods llhttp knows, by protocol; any other is refused as it arrives.
HTTP_METHODS = frozenset(
    b"ACL BIND CHECKOUT CONNECT COPY DELETE GET HEAD LINK LOCK M-SEARCH MERGE MKACTIVITY "
    b"MKCALENDAR MKCOL MOVE NOTIFY OPTIONS PATCH POST PROPFIND PROPPATCH PURGE PUT REBIND "
    b"REPORT SEARCH SOURCE SUBSCRIBE TRACE UNBIND UNLINK UNLOCK UNSUBSCRIBE QUERY".split()
)
RTSP_METHODS = frozenset(
    b"GET OPTIONS POST DESCRIBE ANNOUNCE SETUP PLAY PAUSE TEARDOWN GET_PARAMETER "
    b"SET_PARAMETER REDIRECT RECORD FLUSH".split()
)
_PROTOCOL_METHODS = {b"HTTP": HTTP_METHODS, b"RTSP": RTSP_METHODS, b"ICE": frozenset({b"SOURCE"})}
_METHODS = HTTP_METHODS | RTSP_METHODS
# llhttp also reads PRI (HTTP/2's preface) and refuses it only further on: a partial line may
# begin with it.
_PARTIAL_METHODS = _METHODS | {b"PRI"}
_METHOD_PREFIXES = frozenset(m[:i] for m in _PARTIAL_METHODS for i in range(1, len(m) + 1))
# What llhttp wants after a PRI request line: the rest of HTTP/2's preface, then it stops.
PREFACE_REST = b"\r\nSM\r\n\r\n"
# The versions llhttp reads (others fail as their minor digit arrives); lbproxy serves two.
_LLHTTP_VERSIONS = frozenset({b"0.9", b"1.0", b"1.1", b"2.0"})

_REQUEST_LINE = re.compile(rb"([A-Z_-]+) +([\x21-\x7e]+) +(HTTP|RTSP|ICE)/([0-9]\.[0-9])")
# HTTP/0.9's "METHOD target" (no version): llhttp reads it, then lbproxy refuses version 0.9.
_REQUEST_LINE_09 = re.compile(rb"[A-Z_-]+ +[\x21-\x7e]+")
_STATUS_LINE = re.compile(rb"(HTTP|RTSP|ICE)/([0-9]\.[0-9]) ([0-9]{3})(?:[ ][^\r\n]*)?")
_STATUS_PREFIX = re.compile(rb"(?:[0-9](?:\.(?:[0-9](?: (?:[0-9]{0,2}|[0-9]{3}(?: .*)?))?)?)?)?")
_TCHAR = rb"!#$%&'*+\-.^_`|~0-9A-Za-z"
_FIELD_LINE = re.compile(rb"([%s]+):[ \t]*([\t\x20-\x7e\x80-\xff]*)" % _TCHAR)
_FIELD_PREFIX = re.compile(rb"[%s]*|[%s]+:[ \t]*[\t\x20-\x7e\x80-\xff]*" % (_TCHAR, _TCHAR))
# What no field line may hold, even before it is complete: control characters other than
# HTAB, CR and LF (llhttp refuses them as soon as they arrive).
_FIELD_CTL = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_CONTENT_LENGTH_PREFIX = re.compile(rb"[ \t]*[0-9]*[ \t]*")


def check_line_ends(raw: bytes, error: type[HTTPError]) -> None:
    """Every CR of ``raw`` (a head, whole or begun) is followed by LF and every LF follows a
    CR; a CR at the very end may still be followed by its LF."""
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    crlf = raw.count(b"\r\n")
    if raw.count(b"\r") != crlf:
        raise error("bare CR in the head")
    if raw.count(b"\n") != crlf:
        raise error("bare LF line ending")


def is_llhttp_url(target: bytes, connect: bool, complete: bool = True) -> bool:
    """Whether llhttp (its URL states, strict build) reads ``target``; with ``complete``
    false, whether it reads it so far. The router then serves origin-form targets only."""
    state = _SERVER if connect else _START
    for c in target:
        if state == _PATH:
            if not _URL_CHAR[c]:
                if c == 0x3F:  # "?"
                    state = _QUERY
                elif c == 0x23:  # "#"
                    state = _FRAGMENT
                else:
                    return False
        elif state in (_QUERY, _FRAGMENT):
            if c == 0x23:
                state = _FRAGMENT
            elif not _URL_CHAR[c] and c != 0x3F:
                return False
        else:
            state = _url_step(state, c)
            if state < 0:
                return False
    return not complete or state >= _SERVER


# llhttp's URL states: until _SERVER a target may not end.
_START, _SCHEMA, _SLASH1, _SLASH2, _SERVER, _SERVER_AT, _PATH, _QUERY, _FRAGMENT = range(9)


def _url_step(state: int, c: int) -> int:
    if state == _START:
        if c in (0x2F, 0x2A):  # "/" "*"
            return _PATH
        return _SCHEMA if _ALPHA[c] else -1
    if state == _SCHEMA:
        if _ALPHA[c]:
            return _SCHEMA
        return _SLASH1 if c == 0x3A else -1
    if state in (_SLASH1, _SLASH2):
        return state + 1 if c == 0x2F else -1
    # _SERVER, _SERVER_AT
    if c == 0x2F:
        return _PATH
    if c == 0x3F:
        return _QUERY
    if c == 0x40:  # "@"
        return _SERVER_AT if state == _SERVER else -1
    return _SERVER if _USERINFO[c] else -1  # so "a@b@c" passes, "a@@b" does not


def read_request_line(line: bytes, error: type[HTTPError]) -> tuple[bytes, bytes, bytes]:
    """``line`` (without CRLF) as llhttp reads it: method, target and version (b"1.1"). Runs of
    spaces and the RTSP/ICE names are accepted, as llhttp does; lbproxy writes its own line."""
    match = _REQUEST_LINE.fullmatch(line)
    if match is None:
        if _REQUEST_LINE_09.fullmatch(line):
            raise error("HTTP/0.9 is not supported")
        raise error(f"invalid request line {line[:60]!r}")
    method, target, protocol, version = match.groups()
    if method not in _PROTOCOL_METHODS[protocol]:
        raise error(f"invalid method {method[:20]!r} for {protocol.decode()}")
    if not is_llhttp_url(target, method == b"CONNECT"):
        raise error(f"invalid request target {target[:40]!r}")
    if version not in _LLHTTP_VERSIONS:
        raise error(f"invalid HTTP version {version!r}")
    return method, target, version


def read_status_line(line: bytes) -> tuple[int, bytes]:
    """``line`` (without CRLF): status and version. llhttp also takes the RTSP/ICE protocol
    names: read as HTTP, since lbproxy writes its own status line."""
    match = _STATUS_LINE.fullmatch(line)
    if match is None:
        raise UpstreamProtocolError(f"invalid status line {line[:60]!r}")
    _, version, status = match.groups()
    if version not in _LLHTTP_VERSIONS:
        raise UpstreamProtocolError(f"invalid HTTP version {version!r}")
    return int(status), version


def read_fields(lines: list[bytes], error: type[HTTPError]) -> list[Header]:
    """Field lines (each without CRLF) as (name, value), the value without surrounding
    whitespace. llhttp's rules: a token name, its colon right after it, no folding, no
    control character but HTAB in the value."""
    fields = []
    for line in lines:
        match = _FIELD_LINE.fullmatch(line)
        if match is None:
            raise error(_field_problem(line))
        fields.append((match[1], match[2].rstrip(b" \t")))
    return fields


def _field_problem(line: bytes) -> str:
    if line[:1] in (b" ", b"\t"):
        return "obsolete line folding"
    name, colon, _ = line.partition(b":")
    if not colon:
        return f"header field without a colon {line[:40]!r}"
    if not re.fullmatch(rb"[%s]+" % _TCHAR, name):
        return f"invalid header name {name[:40]!r}"
    return f"invalid character in header {name[:40]!r}"


# -- heads not complete yet ----------------------------------------------------------------------


def check_partial_request(raw: bytes, error: type[HTTPError]) -> None:
    """A request head not complete yet (empty lines before it skipped): what llhttp would
    refuse already, so a client learns it now, whichever the engine."""
    end = raw.find(b"\n")
    if end > 0 and raw[end - 1] != 0x0D and _REQUEST_LINE_09.fullmatch(raw, 0, end):
        # llhttp ends a line without a version (HTTP/0.9) at a bare LF too; the head is
        # refused once it ends all the same.
        raw = raw[:end] + b"\r" + raw[end:]
    check_line_ends(raw, error)
    line, crlf, rest = raw.partition(b"\r\n")
    if not crlf:
        if line.endswith(b"\r"):  # a line that ends here: whole (llhttp reads HTTP/0.9 too)
            if is_preface_line(line[:-1]):
                _check_pri_line(line[:-1], error)
            elif _REQUEST_LINE_09.fullmatch(line[:-1]):
                _check_partial_request_line(line[:-1] + b" ", error)
            else:
                read_request_line(line[:-1], error)
        else:
            _check_partial_request_line(line, error)
        return
    if is_preface_line(line):
        _check_pri_line(line, error)
        if not PREFACE_REST.startswith(rest) or rest == PREFACE_REST:
            raise error("not an HTTP/1 request (HTTP/2 connection preface)")
        return
    if _REQUEST_LINE_09.fullmatch(line):
        # No version: llhttp reads on (HTTP/0.9) and the head is refused once it ends.
        _check_partial_request_line(line + b" ", error)
    else:
        read_request_line(line, error)
    _check_partial_fields(rest, error, request=True)


def check_partial_response(raw: bytes) -> None:
    """A response head not complete yet: what llhttp would refuse already."""
    error = UpstreamProtocolError
    check_line_ends(raw, error)
    line, crlf, rest = raw.partition(b"\r\n")
    if not crlf:
        if line.endswith(b"\r"):
            read_status_line(line[:-1])
        else:
            _check_partial_status_line(line)
        return
    read_status_line(line)
    _check_partial_fields(rest, error, request=False)


def _check_partial_request_line(line: bytes, error: type[HTTPError]) -> None:
    method, space, rest = line.partition(b" ")
    if not space:
        if method and method not in _METHOD_PREFIXES:
            raise error(f"invalid method {method[:20]!r}")
        return
    if method not in _PARTIAL_METHODS:
        raise error(f"invalid method {method[:20]!r}")
    target, space, rest = rest.lstrip(b" ").partition(b" ")
    if not is_llhttp_url(target, method == b"CONNECT", complete=bool(space)):
        raise error(f"invalid request target {target[:40]!r}")
    protocol = rest.lstrip(b" ")
    if not protocol:
        return
    name, slash, version = protocol.partition(b"/")
    _check_partial_protocol(name, bool(slash), method, error)
    if slash and (not re.fullmatch(rb"(?:[0-9](?:\.[0-9]?)?)?", version) or _bad_version(version)):
        raise error(f"invalid protocol {protocol[:20]!r}")


def _check_partial_protocol(
    name: bytes, whole: bool, method: bytes, error: type[HTTPError]
) -> None:
    if whole or name in _PROTOCOL_METHODS:
        if name not in _PROTOCOL_METHODS:
            raise error(f"invalid protocol {name[:20]!r}")
        if method and method not in _PROTOCOL_METHODS[name] and (method, name) != _PRI_HTTP:
            raise error(f"invalid method {method[:20]!r} for {name.decode()}")
    elif not any(full.startswith(name) for full in _PROTOCOL_METHODS):
        raise error(f"invalid protocol {name[:20]!r}")


_PRI_HTTP = (b"PRI", b"HTTP")
_PRI_LINE = re.compile(rb"PRI +[\x21-\x7e]+(?: +HTTP/[0-9]\.[0-9])?")


def is_preface_line(line: bytes) -> bool:
    """A PRI request line with a version: llhttp then wants the rest of HTTP/2's preface (one
    without is read as any HTTP/0.9 line)."""
    return line.startswith(b"PRI ") and _REQUEST_LINE_09.fullmatch(line) is None


def _check_pri_line(line: bytes, error: type[HTTPError]) -> None:
    """A whole PRI request line, as llhttp reads it: with a whole version, or none."""
    _check_partial_request_line(line, error)
    if not _PRI_LINE.fullmatch(line):
        raise error(f"invalid request line {line[:40]!r}")


def _bad_version(version: bytes) -> bool:
    return len(version) >= 3 and version[:3] not in _LLHTTP_VERSIONS


def _check_partial_status_line(line: bytes) -> None:
    name, slash, rest = line.partition(b"/")
    _check_partial_protocol(name, bool(slash), b"", UpstreamProtocolError)
    if slash and (_STATUS_PREFIX.fullmatch(rest) is None or _bad_version(rest)):
        raise UpstreamProtocolError(f"invalid status line {line[:60]!r}")


def _check_partial_fields(rest: bytes, error: type[HTTPError], request: bool) -> None:
    """The field lines of a head begun: whole ones, and the last one as far as it came. llhttp
    ends a field line once the next one begins (it could be folded): so do the checks that
    need a whole value."""
    lines = rest.split(b"\r\n")
    begun = lines.pop()  # the line in progress, if a byte of it came
    last = begun.removesuffix(b"\r")
    if _FIELD_CTL.search(last) or _FIELD_PREFIX.fullmatch(last) is None:
        raise error(_field_problem(last))
    if last and len(last) < len(begun) and last.find(b":") < 0:
        raise error("field line without a colon")  # its CR came: llhttp refuses it there
    fields = read_fields(lines, error)
    lengths = codings = 0
    for index, (name, value) in enumerate(fields):
        lower = name.lower()
        ended = index + 1 < len(fields) or bool(begun)
        if lower == b"content-length":
            lengths += 1
            if (
                codings
                or lengths > 1
                or (not value.isdigit() and (value or ended))
                or int(value or 0) > _MAX_LENGTH  # llhttp refuses it once the line ends
            ):
                raise error("invalid or repeated Content-Length")
        elif lower == b"transfer-encoding":
            codings += 1
            if lengths:
                raise error("both Content-Length and Transfer-Encoding")
            if ended and not value.strip(b" \t"):
                raise error("empty Transfer-Encoding")  # llhttp refuses it once it ends
            if request and ended and b"chunked" in _codings(value)[:-1]:
                raise error(f"Transfer-Encoding {value[:40]!r} does not end in chunked")
    name, colon, value = last.partition(b":")
    lower = name.lower()
    if not colon:
        return
    if lower == b"content-length" and (
        codings or not _is_length_prefix(value) or (lengths and value.strip(b" \t"))
    ):
        raise error("invalid or repeated Content-Length")
    if lower == b"transfer-encoding" and lengths:
        raise error("both Content-Length and Transfer-Encoding")
    if request and lower == b"transfer-encoding" and b"chunked" in _codings(value)[:-1]:
        # llhttp refuses a coding after chunked as soon as its comma comes.
        raise error(f"Transfer-Encoding {value[:40]!r} does not end in chunked")


def _is_length_prefix(value: bytes) -> bool:
    """A Content-Length value so far, as llhttp reads it: digits (up to a uint64) in OWS."""
    if _CONTENT_LENGTH_PREFIX.fullmatch(value) is None:
        return False
    digits = value.strip(b" \t")
    return not digits or int(digits) <= _MAX_LENGTH


_MAX_LENGTH = 2**64 - 1


def _codings(value: bytes) -> list[bytes]:
    return [c.strip(b" \t").lower() for c in value.split(b",")]
