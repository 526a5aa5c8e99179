"""The parser interface and its two engines: httptools (llhttp, the fast default, here) and h11
(the pure-Python reference, h11engine.py).

Theory of operation: an engine is fed bytes and calls its sink back with heads, body chunks and
message ends. It never decides framing: it hands a raw ``RequestHead``/``ResponseHead`` to
``framing.analyze_*`` and raises an ``HTTPError`` (with its status) on anything malformed. Both
engines emit pipelined requests eagerly; the relay queues what it cannot serve yet. A request
head is held back until its first body bytes, its end or the end of the read that carried it,
so a request whose framing fails in that read (a bad chunk line after the head) is never
emitted and nothing of it reaches a backend. Both engines reach one verdict on every input and
hold heads to the same limits (strict.py).
"""

from __future__ import annotations

from typing import Final, Protocol

import httptools

from lbproxy import framing
from lbproxy.config import MAX_HEADER_COUNT, MAX_REQUEST_LINE
from lbproxy.errors import (
    BadRequest,
    HeadersTooLarge,
    NotImplementedByGateway,
    RequestLineTooLong,
    UpstreamClosed,
    UpstreamProtocolError,
)
from lbproxy.framing import CLOSE_DELIMITED, RequestHead, ResponseHead
from lbproxy.h11engine import H11RequestParser, H11ResponseParser
from lbproxy.strict import HeadLimits, check_idle_reads, check_trailers, trailer_size

# What an upstream's response head may take (nginx's proxy_buffer_size is 4-8 KiB).
MAX_RESPONSE_HEAD: Final = 64 * 1024
_NOT_CHUNKED, _CHUNKED_UNCONFIRMED, _CHUNKED = 0, 1, 2
_HTTP11_END: Final = b" HTTP/1.1\r\n"


class RequestSink(Protocol):
    def on_request_head(self, head: RequestHead) -> None: ...
    def on_request_body(self, data: bytes) -> None: ...
    def on_request_end(self) -> None: ...


class ResponseSink(Protocol):
    def on_response_head(self, head: ResponseHead) -> None: ...
    def on_response_body(self, data: bytes) -> None: ...
    def on_response_end(self) -> None: ...


class RequestParser(Protocol):
    def feed(self, data: bytes) -> None: ...


class ResponseParser(Protocol):
    def expect(self, method: bytes, sink: ResponseSink) -> None:
        """Prepare for the one response to a request with ``method`` (HEAD has no body), to be
        delivered to ``sink``. Any byte beyond that response is an ``UpstreamProtocolError``."""

    def feed(self, data: bytes) -> None: ...

    def feed_eof(self) -> None:
        """The upstream closed: end a close-delimited body, or raise ``UpstreamClosed``."""


def _unwrap(exc: BaseException) -> BaseException:
    """httptools wraps what a callback raised; give back the original error."""
    return exc.__context__ if exc.__context__ is not None else exc


class HttptoolsRequestParser:
    # No on_message_begin: state is reset once a head is complete, which saves a callback per
    # request; a head is in progress exactly while ``_url`` holds bytes. Only a chunked
    # request's head is held (a body of a Content-Length cannot fail), so a request without
    # one pays a test or two.
    __slots__ = (
        "_begins",
        "_careful",
        "_chunked",
        "_fed_body",
        "_head_reads",
        "_headers",
        "_held",
        "_held_body",
        "_idle",
        "_in_body",
        "_limits",
        "_line",
        "_parser",
        "_read",
        "_sink",
        "_span",
        "_trailer_size",
        "_url",
    )

    def __init__(
        self,
        sink: RequestSink,
        max_header_size: int,
        max_request_line: int = MAX_REQUEST_LINE,
        max_header_count: int = MAX_HEADER_COUNT,
    ) -> None:
        self._sink = sink
        self._limits = limits = HeadLimits(max_header_size, max_request_line, max_header_count)
        self._careful = limits.careful
        self._line = max_request_line
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: list[framing.Header] = []
        self._read = 0  # bytes of the reads that may carry the head being parsed
        self._span = 0  # bytes of the earlier reads that carried the head in progress
        self._head_reads = 0  # of those, the reads that continued it
        self._chunked = False  # a chunked body is open
        self._held: RequestHead | None = None  # its head, until data, its end or the read's end
        self._held_body: list[bytes] = []
        self._fed_body = False  # this read carried body bytes
        self._idle = 0
        self._trailer_size = 0
        # The read being fed when a request's first byte may be its first byte (no message in
        # progress when it came): its request line then tells HTTP/1.1 without
        # get_http_version(), which formats a string per call (on_headers_complete).
        self._begins: bytes | None = None
        self._in_body = False  # a head is complete, its message's end is not

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._line:
            raise RequestLineTooLong(f"request line longer than {self._line} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._url:
            # A chunked body's trailer fields: bounded like a head, then dropped (lbproxy does
            # not forward trailers), so they can never become the next request's headers.
            self._trailer_size += trailer_size(name, value)
            if self._trailer_size > self._limits.size:
                raise HeadersTooLarge(f"trailer fields larger than {self._limits.size} bytes")
            return
        # llhttp drops leading OWS but keeps trailing OWS; neither is part of the value.
        self._headers.append((name, value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        url = self._url
        p = self._parser
        method = p.get_method()
        headers = self._headers
        if self._read > self._careful:
            self._limits.check_request(method, url, headers, self._read)
        begins = self._begins
        self._begins = None  # a later request of this read begins further on
        at = len(method) + len(url) + 1
        # "METHOD SP target SP HTTP/1.1 CRLF" from the read's first byte; the target's first
        # byte right after one space rules out any other reading of the line.
        if (
            begins is not None
            and begins[at : at + 11] == _HTTP11_END
            and begins[at - len(url)] == 47
        ):
            http11 = True
        else:
            version = p.get_http_version()
            if version not in ("1.0", "1.1"):
                raise BadRequest(f"HTTP/{version} is not supported")
            http11 = version == "1.1"
        head = RequestHead(method, url, http11, headers)
        self._url = b""
        self._headers = []
        self._in_body = True
        framing.analyze_request(head)
        if head.chunked:
            self._chunked = True
            self._held = head
            self._idle = self._trailer_size = 0
        else:
            self._sink.on_request_head(head)

    def on_body(self, body: bytes) -> None:
        self._fed_body = True
        if self._held is None:
            self._sink.on_request_body(body)
        else:
            self._held_body.append(body)

    def on_message_complete(self) -> None:
        self._in_body = False
        if self._chunked:
            self._chunked = False
            self._release()
        self._sink.on_request_end()

    def _release(self) -> None:
        head = self._held
        if head is None:
            return
        self._held = None
        self._sink.on_request_head(head)
        for data in self._held_body:
            self._sink.on_request_body(data)
        self._held_body.clear()

    def feed(self, data: bytes) -> None:
        continued = self._url != b""
        self._begins = None if continued or self._in_body else data
        size = len(data)
        self._read = size + self._span if continued else size
        try:
            try:
                self._parser.feed_data(data)
            except httptools.HttpParserCallbackError as exc:
                raise _unwrap(exc) from None
            except httptools.HttpParserUpgrade:
                raise NotImplementedByGateway("protocol upgrades are not supported") from None
            except httptools.HttpParserError as exc:
                raise BadRequest(str(exc)) from None
            if self._url:
                self._bound_head(size, continued)
            if self._chunked:
                self._bound_idle(size)
        except Exception:
            # A chunked request failing in the read that carried its head is never started.
            self._held = None
            self._held_body.clear()
            raise
        if self._held is not None:
            self._release()

    def _bound_head(self, size: int, continued: bool) -> None:
        # A head still incomplete after a whole read is all head bytes: bound them here, since
        # llhttp itself has no header size limit and httptools buffers partial header values.
        self._span = self._span + size if continued else size
        self._head_reads = self._head_reads + size if continued else 0
        if self._head_reads > self._limits.size:
            raise HeadersTooLarge(f"request head larger than {self._limits.size} bytes")

    def _bound_idle(self, size: int) -> None:
        if self._fed_body:
            self._fed_body = False
            self._idle = 0
        else:
            self._idle += size
            check_idle_reads(self._idle, self._limits.size, HeadersTooLarge)


class HttptoolsResponseParser:
    __slots__ = (
        "_chunked",
        "_close_delimited",
        "_expecting",
        "_fed_body",
        "_fields",
        "_fresh",
        "_headers",
        "_http11",
        "_idle",
        "_limit",
        "_method",
        "_parser",
        "_sink",
        "_skip_body",
        "_status",
    )

    def __init__(self, sink: ResponseSink, max_header_size: int = MAX_RESPONSE_HEAD) -> None:
        self._sink = sink
        self._limit = max_header_size
        self._parser = httptools.HttpResponseParser(self)
        self._method = b"GET"
        self._headers: list[framing.Header] = []
        self._skip_body = False
        self._close_delimited = False
        self._expecting = False
        self._status = 0
        self._idle = 0  # bytes of earlier reads of this exchange that carried no body data
        self._fed_body = False  # this read carried body data
        # Whether the body is chunked, and whether llhttp read it so too (a chunk header came).
        self._chunked = _NOT_CHUNKED
        self._fields = 0  # the head's fields: trailer fields follow them in _headers
        # The first read of an exchange begins with its response (the connection was idle), so
        # its first bytes tell an HTTP/1.1 status line without get_http_version(), which
        # formats a string per call.
        self._fresh = False  # no byte of the expected response read yet
        self._http11 = False  # the response being parsed began "HTTP/1.1 "

    def expect(self, method: bytes, sink: ResponseSink) -> None:
        self._sink = sink
        self._method = method
        self._close_delimited = False
        self._expecting = True
        self._fresh = True
        self._idle = 0
        if self._skip_body:
            # llhttp cannot be told a HEAD response has no body: start a fresh parser instead.
            self._parser = httptools.HttpResponseParser(self)
            self._skip_body = False

    def on_message_begin(self) -> None:
        if not self._expecting:
            raise UpstreamProtocolError("upstream sent more than the response asked for")
        self._headers = []

    def on_header(self, name: bytes, value: bytes) -> None:
        # Trailer fields land here too, after the head's: bounded at the message's end.
        self._headers.append((name, value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        p = self._parser
        if self._http11:
            self._http11 = False  # a final response after a 1xx one is read by llhttp
            http11 = True
        else:
            version = p.get_http_version()
            http11 = version == "1.1"
            if not http11 and version != "1.0":
                raise UpstreamProtocolError(f"HTTP/{version} response")
        status = self._status = p.get_status_code()
        if status < 100:
            raise UpstreamProtocolError(f"invalid status code {status}")
        head = ResponseHead(status, b"", http11, self._headers)
        framing.analyze_response(head, self._method)
        if head.chunked:
            self._chunked = _CHUNKED_UNCONFIRMED
            self._fields = len(self._headers)
        else:
            self._close_delimited = head.content_length == CLOSE_DELIMITED
        self._sink.on_response_head(head)
        if self._method == b"HEAD" and head.status >= 200:
            self._skip_body = True
            self._expecting = False
            self._sink.on_response_end()

    def on_chunk_header(self) -> None:
        self._chunked = _CHUNKED

    def on_body(self, body: bytes) -> None:
        if self._skip_body:
            raise UpstreamProtocolError("body bytes after a response to HEAD")
        if self._status < 200:
            # llhttp reads a body after some 1xx heads (199 with a Content-Length): relayed,
            # it would reach the client as bytes of no message.
            raise UpstreamProtocolError("body bytes in an interim (1xx) response")
        if self._chunked == _CHUNKED_UNCONFIRMED:
            # llhttp reads "Transfer-Encoding: chunked<HTAB>" as not chunked: its data would
            # be the raw chunk framing, so no reading of this body can be trusted.
            raise UpstreamProtocolError("Transfer-Encoding not read as chunked")
        self._fed_body = True
        self._sink.on_response_body(body)

    def on_message_complete(self) -> None:
        if self._chunked:
            self._chunked = _NOT_CHUNKED
            check_trailers(self._headers[self._fields :], self._limit, UpstreamProtocolError)
        # llhttp ends a 1xx interim response as a message of its own; the exchange goes on.
        if not self._skip_body and self._status >= 200:
            self._expecting = False
            self._sink.on_response_end()

    def feed(self, data: bytes) -> None:
        if self._fresh:
            self._fresh = False
            self._http11 = data[:9] == b"HTTP/1.1 "
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            raise _unwrap(exc) from None
        except httptools.HttpParserUpgrade:
            raise UpstreamProtocolError("unexpected protocol switch") from None
        except httptools.HttpParserError as exc:
            raise UpstreamProtocolError(str(exc)) from None
        if self._expecting:
            # The response goes on in the next read: bound what it may hold without data.
            if self._fed_body:
                self._fed_body = False
                self._idle = 0
            else:
                self._idle += len(data)
                check_idle_reads(self._idle, self._limit, UpstreamProtocolError)

    def feed_eof(self) -> None:
        if not self._expecting:
            return  # the response ended before the connection did
        if not self._close_delimited:
            raise UpstreamClosed("upstream closed the connection before the response ended")
        self._close_delimited = False
        self._expecting = False
        self._sink.on_response_end()


def request_parser(
    engine: str,
    sink: RequestSink,
    max_header_size: int,
    max_request_line: int = MAX_REQUEST_LINE,
    max_header_count: int = MAX_HEADER_COUNT,
) -> RequestParser:
    if engine == "h11":
        return H11RequestParser(sink, max_header_size, max_request_line, max_header_count)
    return HttptoolsRequestParser(sink, max_header_size, max_request_line, max_header_count)


class _NoExchange:
    """The sink before the first ``expect``: nothing was asked, so any response is an error."""

    def on_response_head(self, head: ResponseHead) -> None:
        raise UpstreamProtocolError("response without a request")

    def on_response_body(self, data: bytes) -> None:
        raise UpstreamProtocolError("response without a request")

    def on_response_end(self) -> None:
        raise UpstreamProtocolError("response without a request")


def response_parser(
    engine: str, sink: ResponseSink | None = None, max_header_size: int = MAX_RESPONSE_HEAD
) -> ResponseParser:
    sink = sink or _NoExchange()
    if engine == "h11":
        return H11ResponseParser(sink, max_header_size)
    return HttptoolsResponseParser(sink, max_header_size)
