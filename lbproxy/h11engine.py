"""The h11 engine: the pure-Python reference, reaching the httptools engine's verdicts.

Theory of operation. Each engine is fed bytes and calls its sink back with heads, body chunks
and message ends (the interface is in http.py). Here h11 reads heads only: a head is taken
whole from the buffer (its end is the first empty line), checked against llhttp's grammar and
the limits (strict.py), then read by a fresh ``h11.Connection``, which must agree; bodies are
framed by lbproxy's readers (strict.py) as ``framing.analyze_*`` decided. So both engines accept
and refuse the same bytes, and h11's state machine never needs to be told about the answers
lbproxy writes itself. A request head is held until its first body bytes, its end or the end of
the read, as in the httptools engine: a request whose framing fails in the read that carries
its head never reaches the relay, so nothing of it reaches a backend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import h11

from lbproxy import framing
from lbproxy.chunked import ChunkedReader, LengthReader
from lbproxy.config import MAX_HEADER_COUNT, MAX_REQUEST_LINE
from lbproxy.errors import (
    BadRequest,
    HeadersTooLarge,
    HTTPError,
    RequestLineTooLong,
    UpstreamClosed,
    UpstreamProtocolError,
)
from lbproxy.framing import CLOSE_DELIMITED, RequestHead, ResponseHead
from lbproxy.strict import (
    HeadLimits,
    check_idle_reads,
    check_line_ends,
    check_partial_request,
    check_partial_response,
    is_preface_line,
    read_fields,
    read_request_line,
    read_status_line,
)

if TYPE_CHECKING:
    from lbproxy.http import RequestSink, ResponseSink

_EMPTY_LINE: Final = b"\r\n\r\n"


def _skip_empty_lines(buf: bytes, pos: int) -> int:
    """Past any CR and LF at ``pos``: llhttp ignores them before a message."""
    end = len(buf)
    while pos < end and buf[pos] in (13, 10):
        pos += 1
    return pos


def _partial_target(line: bytes) -> bytes:
    """The target of a request line, as much of it as has arrived."""
    _, space, rest = line.partition(b" ")
    return rest.lstrip(b" ").partition(b" ")[0] if space else b""


def _target_begun(buffer: bytes) -> bool:
    """Whether a head begun in ``buffer`` has reached its target (llhttp's first on_url)."""
    return bool(buffer) and bool(_partial_target(buffer.partition(b"\r\n")[0]))


def _chunked_with_tab(lines: list[bytes]) -> bool:
    """A Transfer-Encoding field whose trailing whitespace holds an HTAB ("chunked<HTAB>"):
    framing reads it as chunked, llhttp does not (it refuses such a request, and reads such a
    response's body raw, to the connection's end)."""
    for line in lines:
        name, _, value = line.partition(b":")
        if name.lower() == b"transfer-encoding" and b"\t" in value[len(value.rstrip(b" \t")) :]:
            return True
    return False


class _NoData:
    """A body no reading of which can be trusted: any byte of it is an error."""

    done = False

    def feed(self, buf: bytes, pos: int) -> int:
        raise UpstreamProtocolError("Transfer-Encoding not read as chunked")


BodyReader = ChunkedReader | LengthReader | _NoData


def _check_framing_fields(fields: list[framing.Header], error: type[HTTPError]) -> None:
    """What h11 would judge differently from llhttp and ``framing``: a repeated or listed
    Content-Length (400 here, as in llhttp) and a Transfer-Encoding (400 or 501, by framing's
    rule, where h11 answers 501 to all)."""
    lengths = 0
    for name, value in fields:
        lower = name.lower()
        if lower == b"content-length":
            lengths += 1
            if lengths > 1 or b"," in value:
                raise error("more than one Content-Length")
        elif lower == b"transfer-encoding" and error is BadRequest:
            framing.parse_transfer_encoding(value, BadRequest)


class H11RequestParser:
    __slots__ = (
        "_body",
        "_buffer",
        "_closed",
        "_fed_body",
        "_head_reads",
        "_held",
        "_held_body",
        "_idle",
        "_keep_alive",
        "_limits",
        "_sink",
    )

    def __init__(
        self,
        sink: RequestSink,
        max_header_size: int,
        max_request_line: int = MAX_REQUEST_LINE,
        max_header_count: int = MAX_HEADER_COUNT,
    ) -> None:
        self._sink = sink
        self._limits = HeadLimits(max_header_size, max_request_line, max_header_count)
        self._buffer = b""
        self._body: BodyReader | None = None
        self._keep_alive = True
        self._closed = False  # a message ended the connection: only empty lines may follow
        self._held: RequestHead | None = None
        self._held_body: list[bytes] = []
        self._fed_body = False
        self._idle = 0
        self._head_reads = 0

    def feed(self, data: bytes) -> None:
        buf = self._buffer + data if self._buffer else data
        # As in the httptools engine: a head whose target had begun before this read.
        continued = self._body is None and _target_begun(self._buffer)
        pos = 0
        try:
            while pos < len(buf):
                body = self._body
                if body is not None:
                    pos = body.feed(buf, pos)
                    if not body.done:
                        break
                    self._end_message(body)
                elif self._closed:
                    if _skip_empty_lines(buf, pos) < len(buf):
                        raise BadRequest("data after a request that ended the connection")
                    pos = len(buf)
                else:
                    start = _skip_empty_lines(buf, pos)
                    pos = self._read_head(buf, start)
                    if pos == start:
                        break
            self._buffer = buf[pos:]
            self._after_read(len(data), continued)
        except HTTPError:
            # A request failing in the read that carried its head is never started.
            self._held = None
            self._held_body.clear()
            raise
        if self._held is not None:
            self._release()

    def _after_read(self, size: int, continued: bool) -> None:
        if isinstance(self._body, ChunkedReader):
            if self._fed_body:
                self._idle = 0
            else:
                self._idle += size
                check_idle_reads(self._idle, self._limits.size, HeadersTooLarge)
        self._fed_body = False
        raw = self._buffer
        if not raw or self._body is not None or self._closed:
            self._head_reads = 0
            return
        # A head not complete yet: what llhttp would refuse already, and the limits.
        check_partial_request(raw, BadRequest)
        line = raw.partition(b"\r\n")[0]
        if len(_partial_target(line)) > self._limits.line:
            raise RequestLineTooLong(f"request line longer than {self._limits.line} bytes")
        if continued and _target_begun(raw):
            self._head_reads += size
            if self._head_reads > self._limits.size:
                raise HeadersTooLarge(f"request head larger than {self._limits.size} bytes")
        else:
            self._head_reads = 0

    def _read_head(self, buf: bytes, start: int) -> int:
        """Read the head at ``start``; return where it ends, or ``start`` if it is not
        complete yet."""
        end = buf.find(_EMPTY_LINE, start)
        if end < 0:
            return start
        if buf.startswith(b"PRI ", start) and is_preface_line(
            buf[start : buf.find(b"\r\n", start)]
        ):
            return start  # HTTP/2's preface: llhttp reads on, the partial check refuses it
        raw = buf[start : end + 2]
        check_line_ends(raw, BadRequest)
        line, *lines = raw[:-2].split(b"\r\n")
        method, target, version = read_request_line(line, BadRequest)
        limits = self._limits
        if len(target) > limits.line:
            raise RequestLineTooLong(f"request line longer than {limits.line} bytes")
        fields = read_fields(lines, BadRequest)
        try:
            _check_framing_fields(fields, BadRequest)
        except HTTPError:
            # The httptools engine judges the fields in framing's order (an invalid Host
            # before an unknown coding, say): so does this, for the same verdict.
            framing.analyze_request(RequestHead(method, target, version == b"1.1", fields))
            raise
        self._read_with_h11(method, target, version, buf[start + len(line) : end + 4])
        limits.check_request(method, target, fields, end + 4 - start)
        if version not in (b"1.0", b"1.1"):
            raise BadRequest(f"HTTP/{version.decode()} is not supported")
        head = RequestHead(method, target, version == b"1.1", fields)
        framing.analyze_request(head)
        if head.chunked and _chunked_with_tab(lines):
            raise BadRequest("invalid Transfer-Encoding")
        self._held = head
        self._keep_alive = head.keep_alive
        if head.chunked:
            self._body = ChunkedReader(
                self._on_body, limits.size, BadRequest, HeadersTooLarge, request=True
            )
            self._idle = 0
        elif head.content_length:
            self._body = LengthReader(head.content_length, self._on_body)
        else:
            self._end_message(None)
        return end + 4

    @staticmethod
    def _read_with_h11(method: bytes, target: bytes, version: bytes, fields: bytes) -> None:
        # h11 gets the request line with single spaces and the HTTP name, as llhttp read it.
        conn = h11.Connection(h11.SERVER)
        conn.receive_data(b"%b %b HTTP/%b%b" % (method, target, version, fields))
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise BadRequest(str(exc)) from None
        if not isinstance(event, h11.Request):
            raise BadRequest("h11 read no request from a complete head")

    def _on_body(self, data: bytes) -> None:
        self._fed_body = True
        if self._held is not None:
            self._held_body.append(data)
        else:
            self._sink.on_request_body(data)

    def _end_message(self, body: BodyReader | None) -> None:
        self._body = None
        if self._held is not None:
            self._release()
        self._sink.on_request_end()
        closes = isinstance(body, ChunkedReader) and body.close
        self._closed = not self._keep_alive or closes

    def _release(self) -> None:
        head = self._held
        assert head is not None
        self._held = None
        self._sink.on_request_head(head)
        for data in self._held_body:
            self._sink.on_request_body(data)
        self._held_body.clear()


class H11ResponseParser:
    __slots__ = (
        "_body",
        "_buffer",
        "_closed",
        "_expecting",
        "_fed_body",
        "_idle",
        "_limit",
        "_method",
        "_sink",
    )

    def __init__(self, sink: ResponseSink, max_header_size: int) -> None:
        self._sink = sink
        self._limit = max_header_size
        self._method = b"GET"
        self._buffer = b""
        self._body: BodyReader | None = None
        self._expecting = False
        self._closed = False  # a trailer field ended the connection, as in llhttp
        self._fed_body = False
        self._idle = 0

    def expect(self, method: bytes, sink: ResponseSink) -> None:
        self._sink = sink
        self._method = method
        self._expecting = True
        self._idle = 0

    def feed(self, data: bytes) -> None:
        buf = self._buffer + data if self._buffer else data
        pos = 0
        while pos < len(buf):
            body = self._body
            if body is not None:
                pos = body.feed(buf, pos)
                if not body.done:
                    break
                self._end_response()
            elif self._closed or not self._expecting:
                if _skip_empty_lines(buf, pos) < len(buf):
                    raise UpstreamProtocolError("upstream sent more than the response asked for")
                pos = len(buf)
            else:
                start = _skip_empty_lines(buf, pos)
                pos = self._read_head(buf, start)
                if pos == start:
                    break
        self._buffer = buf[pos:]
        if self._expecting:
            # As in the httptools engine: what an open response may hold without data.
            self._idle = 0 if self._fed_body else self._idle + len(data)
            check_idle_reads(self._idle, self._limit, UpstreamProtocolError)
            if self._buffer and self._body is None:
                check_partial_response(self._buffer)
        self._fed_body = False

    def feed_eof(self) -> None:
        body = self._body
        if isinstance(body, LengthReader) and body.until_close:
            self._end_response()
        elif self._expecting:
            raise UpstreamClosed("upstream closed the connection before the response ended")

    def _read_head(self, buf: bytes, start: int) -> int:
        end = buf.find(_EMPTY_LINE, start)
        if end < 0:
            return start
        raw = buf[start : end + 2]
        check_line_ends(raw, UpstreamProtocolError)
        line, *lines = raw[:-2].split(b"\r\n")
        status, version = read_status_line(line)
        fields = read_fields(lines, UpstreamProtocolError)
        _check_framing_fields(fields, UpstreamProtocolError)
        self._read_with_h11(status, version, buf[start + len(line) : end + 4])
        if version not in (b"1.0", b"1.1"):
            raise UpstreamProtocolError(f"HTTP/{version.decode()} response")
        if status < 100:
            raise UpstreamProtocolError(f"invalid status code {status}")
        head = ResponseHead(status, b"", version == b"1.1", fields)
        framing.analyze_response(head, self._method)
        self._sink.on_response_head(head)
        if head.chunked and not head.bodiless and _chunked_with_tab(lines):
            self._body = _NoData()
        elif head.bodiless:
            if status >= 200:
                self._end_response()
        elif head.chunked:
            error = UpstreamProtocolError
            self._body = ChunkedReader(self._on_body, self._limit, error, error, request=False)
        elif head.content_length == CLOSE_DELIMITED:
            self._body = LengthReader(None, self._on_body)
        elif head.content_length:
            self._body = LengthReader(head.content_length, self._on_body)
        else:
            self._end_response()
        return end + 4

    def _read_with_h11(self, status: int, version: bytes, fields: bytes) -> None:
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method=self._method, target=b"/", headers=[(b"host", b"upstream")]))
        conn.send(h11.EndOfMessage())
        conn.receive_data(b"HTTP/%b %03d %b" % (version, status, fields))
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise UpstreamProtocolError(str(exc)) from None
        if not isinstance(event, h11.Response | h11.InformationalResponse):
            raise UpstreamProtocolError("h11 read no response from a complete head")

    def _on_body(self, data: bytes) -> None:
        self._fed_body = True
        self._sink.on_response_body(data)

    def _end_response(self) -> None:
        body = self._body
        self._body = None
        self._expecting = False
        if isinstance(body, ChunkedReader) and body.close:
            self._closed = True  # llhttp takes no further message after this one
        self._sink.on_response_end()
