"""The parser interface and its two engines: httptools (llhttp, the fast default) and h11 (the
pure-Python reference).

Theory of operation: an engine is fed bytes and calls its sink back with heads, body chunks and
message ends. It never decides framing: it hands a raw ``RequestHead``/``ResponseHead`` to
``framing.analyze_*`` and raises an ``HTTPError`` (with its status) on anything malformed. Both
engines emit pipelined requests eagerly; the relay queues what it cannot serve yet.
"""

from __future__ import annotations

import contextlib
import re
from typing import Protocol

import h11
import httptools

from lbproxy import framing
from lbproxy.errors import (
    BadRequest,
    HeadersTooLarge,
    HTTPError,
    NotImplementedByGateway,
    UpstreamClosed,
    UpstreamProtocolError,
)
from lbproxy.framing import CLOSE_DELIMITED, RequestHead, ResponseHead


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
    # request; a head is in progress exactly while ``_url`` holds bytes.
    __slots__ = ("_head_reads", "_head_size", "_headers", "_limit", "_parser", "_sink", "_url")

    def __init__(self, sink: RequestSink, max_header_size: int) -> None:
        self._sink = sink
        self._limit = max_header_size
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: list[framing.Header] = []
        self._head_size = 0
        self._head_reads = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > self._limit:
            raise HeadersTooLarge(f"request target longer than {self._limit} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        if not self._url:
            # A chunked body's trailer fields: bounded like a head, then dropped (lbproxy does
            # not forward trailers), so they can never become the next request's headers.
            if self._head_size > self._limit:
                raise HeadersTooLarge(f"trailer fields larger than {self._limit} bytes")
            return
        # llhttp drops leading OWS but keeps trailing OWS; neither is part of the value.
        self._headers.append((name, value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        url = self._url
        if self._head_size + len(url) > self._limit:
            raise HeadersTooLarge(f"request head larger than {self._limit} bytes")
        p = self._parser
        version = p.get_http_version()
        if version not in ("1.0", "1.1"):
            raise BadRequest(f"HTTP/{version} is not supported")
        head = RequestHead(p.get_method(), url, version == "1.1", self._headers)
        self._url = b""
        self._headers = []
        self._head_size = 0
        self._head_reads = 0
        framing.analyze_request(head)
        self._sink.on_request_head(head)

    def on_body(self, body: bytes) -> None:
        self._sink.on_request_body(body)

    def on_message_complete(self) -> None:
        self._head_size = 0
        self._sink.on_request_end()

    def feed(self, data: bytes) -> None:
        continued = bool(self._url)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            raise _unwrap(exc) from None
        except httptools.HttpParserUpgrade:
            raise NotImplementedByGateway("protocol upgrades are not supported") from None
        except httptools.HttpParserError as exc:
            raise BadRequest(str(exc)) from None
        # A head still incomplete after a whole read is all head bytes: bound them here, since
        # llhttp itself has no header size limit and httptools buffers partial header values.
        if continued and self._url:
            self._head_reads += len(data)
            if self._head_reads > self._limit:
                raise HeadersTooLarge(f"request head larger than {self._limit} bytes")


class HttptoolsResponseParser:
    __slots__ = (
        "_close_delimited",
        "_expecting",
        "_headers",
        "_method",
        "_parser",
        "_reason",
        "_sink",
        "_skip_body",
        "_status",
    )

    def __init__(self, sink: ResponseSink) -> None:
        self._sink = sink
        self._parser = httptools.HttpResponseParser(self)
        self._method = b"GET"
        self._headers: list[framing.Header] = []
        self._reason = b""
        self._skip_body = False
        self._close_delimited = False
        self._expecting = False
        self._status = 0

    def expect(self, method: bytes, sink: ResponseSink) -> None:
        self._sink = sink
        self._method = method
        self._close_delimited = False
        self._expecting = True
        if self._skip_body:
            # llhttp cannot be told a HEAD response has no body: start a fresh parser instead.
            self._parser = httptools.HttpResponseParser(self)
            self._skip_body = False

    def on_message_begin(self) -> None:
        if not self._expecting:
            raise UpstreamProtocolError("upstream sent more than the response asked for")
        self._headers = []
        self._reason = b""

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value.rstrip(b" \t")))

    def on_headers_complete(self) -> None:
        p = self._parser
        status = self._status = p.get_status_code()
        if status < 100:
            raise UpstreamProtocolError(f"invalid status code {status}")
        head = ResponseHead(status, b"", p.get_http_version() == "1.1", self._headers)
        framing.analyze_response(head, self._method)
        self._close_delimited = head.content_length == CLOSE_DELIMITED and not head.chunked
        self._sink.on_response_head(head)
        if self._method == b"HEAD" and head.status >= 200:
            self._skip_body = True
            self._expecting = False
            self._sink.on_response_end()

    def on_body(self, body: bytes) -> None:
        if self._skip_body:
            raise UpstreamProtocolError("body bytes after a response to HEAD")
        self._sink.on_response_body(body)

    def on_message_complete(self) -> None:
        # llhttp ends a 1xx interim response as a message of its own; the exchange goes on.
        if not self._skip_body and self._status >= 200:
            self._expecting = False
            self._sink.on_response_end()

    def feed(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            raise _unwrap(exc) from None
        except httptools.HttpParserUpgrade:
            raise UpstreamProtocolError("unexpected protocol switch") from None
        except httptools.HttpParserError as exc:
            raise UpstreamProtocolError(str(exc)) from None

    def feed_eof(self) -> None:
        if not self._expecting:
            return  # the response ended before the connection did
        if not self._close_delimited:
            raise UpstreamClosed("upstream closed the connection before the response ended")
        self._close_delimited = False
        self._expecting = False
        self._sink.on_response_end()


def _h11_error(exc: h11.RemoteProtocolError) -> HTTPError:
    if exc.error_status_hint == 431:
        return HeadersTooLarge(str(exc))
    return BadRequest(str(exc))


_BLANK_LINE = re.compile(rb"\n\r?\n")
_FIELD_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def _check_raw_head(buffer: bytes, error: type[HTTPError]) -> None:
    """Judge what h11 would normalise away (obs-fold, bare LF, repeated or listed
    Content-Length, CTLs) on the raw head, as llhttp does, so both engines give one verdict."""
    end = _BLANK_LINE.search(buffer)
    if end is None:
        return
    raw = buffer[: end.end()]
    if raw.count(b"\n") != raw.count(b"\r\n"):
        raise error("bare LF line ending")
    lengths = 0
    for line in raw[:-4].split(b"\r\n")[1:]:
        if line[:1] in (b" ", b"\t"):
            raise error("obsolete line folding")
        if _FIELD_CTL.search(line):
            raise error("control character in a header field")
        name, _, value = line.partition(b":")
        name = name.lower()
        if name == b"content-length":
            lengths += 1
            if lengths > 1 or b"," in value:
                raise error("more than one Content-Length")
        elif name == b"transfer-encoding" and error is BadRequest:
            framing.parse_transfer_encoding(value.strip(), BadRequest)


def _h11_headers(headers: h11._headers.Headers) -> list[framing.Header]:
    return headers.raw_items()


class H11RequestParser:
    __slots__ = ("_conn", "_keep_alive", "_limit", "_sink")

    def __init__(self, sink: RequestSink, max_header_size: int) -> None:
        self._sink = sink
        self._limit = max_header_size
        self._keep_alive = True
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=max_header_size)

    def feed(self, data: bytes) -> None:
        self._conn.receive_data(data)
        while True:
            conn = self._conn  # _next_cycle may replace it
            if conn.their_state is h11.IDLE:
                _check_raw_head(conn.trailing_data[0], BadRequest)
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise _h11_error(exc) from None
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                # h11 bounds only a head still incomplete; one that arrived whole is measured here.
                size = len(event.target) + sum(len(n) + len(v) + 4 for n, v in event.headers)
                if size > self._limit:
                    raise HeadersTooLarge(f"request head larger than {self._limit} bytes")
                if event.http_version not in (b"1.0", b"1.1"):
                    raise BadRequest(f"HTTP/{event.http_version.decode()} is not supported")
                head = RequestHead(
                    event.method,
                    event.target,
                    event.http_version == b"1.1",
                    _h11_headers(event.headers),
                )
                framing.analyze_request(head)
                self._keep_alive = head.keep_alive
                self._sink.on_request_head(head)
            elif isinstance(event, h11.Data):
                self._sink.on_request_body(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                self._sink.on_request_end()
                self._next_cycle()
            else:
                return

    def _next_cycle(self) -> None:
        # h11 parses the next pipelined request only once this one is answered. The relay writes
        # answers itself, so complete h11's half with a stand-in response that is never sent.
        conn = self._conn
        if conn.our_state is h11.SEND_RESPONSE:
            conn.send(h11.Response(status_code=200, headers=[(b"content-length", b"0")]))
            conn.send(h11.EndOfMessage())
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        elif self._keep_alive and conn.their_state is h11.MUST_CLOSE:
            # h11 has no HTTP/1.0 keep-alive; framing said the connection persists, so go on
            # with a fresh h11 connection holding the bytes already received.
            self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=self._limit)
            pending = conn.trailing_data[0]
            if pending:  # receive_data(b"") would mean EOF
                self._conn.receive_data(pending)


class H11ResponseParser:
    __slots__ = ("_conn", "_done", "_method", "_sink")

    def __init__(self, sink: ResponseSink) -> None:
        self._sink = sink
        self._conn = h11.Connection(h11.CLIENT)
        self._method = b"GET"
        self._done = True

    def expect(self, method: bytes, sink: ResponseSink) -> None:
        self._sink = sink
        conn = self._conn
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        self._method = method
        self._done = False
        # Tell h11 the method (a HEAD response has no body); the real request bytes are ours.
        conn.send(h11.Request(method=method, target=b"/", headers=[(b"host", b"upstream")]))
        conn.send(h11.EndOfMessage())

    def feed(self, data: bytes) -> None:
        if self._done and data:
            raise UpstreamProtocolError("upstream sent more than the response asked for")
        self._conn.receive_data(data)
        self._drain()

    def feed_eof(self) -> None:
        self._conn.receive_data(b"")
        with contextlib.suppress(UpstreamProtocolError):
            self._drain()
        if not self._done:
            raise UpstreamClosed("upstream closed the connection before the response ended")

    def _drain(self) -> None:
        conn = self._conn
        while True:
            if conn.their_state is h11.SEND_RESPONSE:
                _check_raw_head(conn.trailing_data[0], UpstreamProtocolError)
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise UpstreamProtocolError(str(exc)) from None
            if event is h11.PAUSED and conn.trailing_data[0]:
                raise UpstreamProtocolError("upstream sent more than the response asked for")
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Response | h11.InformationalResponse):
                head = ResponseHead(
                    event.status_code,
                    b"",
                    event.http_version == b"1.1",
                    _h11_headers(event.headers),
                )
                framing.analyze_response(head, self._method)
                self._sink.on_response_head(head)
            elif isinstance(event, h11.Data):
                self._sink.on_response_body(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                self._done = True
                self._sink.on_response_end()
            else:
                return


def request_parser(engine: str, sink: RequestSink, max_header_size: int) -> RequestParser:
    if engine == "h11":
        return H11RequestParser(sink, max_header_size)
    return HttptoolsRequestParser(sink, max_header_size)


class _NoExchange:
    """The sink before the first ``expect``: nothing was asked, so any response is an error."""

    def on_response_head(self, head: ResponseHead) -> None:
        raise UpstreamProtocolError("response without a request")

    def on_response_body(self, data: bytes) -> None:
        raise UpstreamProtocolError("response without a request")

    def on_response_end(self) -> None:
        raise UpstreamProtocolError("response without a request")


def response_parser(engine: str, sink: ResponseSink | None = None) -> ResponseParser:
    sink = sink or _NoExchange()
    if engine == "h11":
        return H11ResponseParser(sink)
    return HttptoolsResponseParser(sink)
