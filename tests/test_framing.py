"""What lbproxy writes: canonical upstream request heads, client response heads and their body
modes, chunk encoding. Heads are built as an engine would hand them over, then analysed."""

from __future__ import annotations

from typing import NamedTuple

import pytest

from lbproxy.framing import (
    BODY_CHUNKED,
    BODY_LENGTH,
    BODY_NONE,
    BODY_UNTIL_CLOSE,
    HOP_BY_HOP,
    LAST_CHUNK,
    RequestHead,
    ResponseHead,
    analyze_request,
    analyze_response,
    encode_chunk,
    interim_head_bytes,
    request_head_bytes,
    response_head_bytes,
)
from lbproxy.http import request_parser

Header = tuple[bytes, bytes]


def fields(*lines: str) -> list[Header]:
    pairs = (line.split(":", 1) for line in lines)
    return [(n.strip().encode(), v.strip().encode()) for n, v in pairs]


def request(method: bytes, *lines: str, target: bytes = b"/p", http11: bool = True) -> RequestHead:
    head = RequestHead(method, target, http11, fields(*lines))
    analyze_request(head)
    return head


def response(
    status: int, *lines: str, reason: bytes = b"OK", http11: bool = True, method: bytes = b"GET"
) -> ResponseHead:
    head = ResponseHead(status, reason, http11, fields(*lines))
    analyze_response(head, method)
    return head


# -- upstream request heads ------------------------------------------------------------------


class RequestCase(NamedTuple):
    id: str
    head: RequestHead
    host: bytes | None
    added: bytes
    expected: bytes


REQUEST_CASES = [
    RequestCase(
        "get-keeps-end-to-end-headers-in-order-and-case",
        request(b"GET", "Host: a", "Accept: */*", "X-Mixed-Case: 1", "accept-language: fr"),
        None,
        b"",
        b"GET /p HTTP/1.1\r\nHost: a\r\nAccept: */*\r\nX-Mixed-Case: 1\r\n"
        b"accept-language: fr\r\n\r\n",
    ),
    RequestCase(
        "host-replaced-when-given",
        request(b"GET", "Host: public.example", "Accept: */*"),
        b"10.0.0.7:8080",
        b"",
        b"GET /p HTTP/1.1\r\nHost: 10.0.0.7:8080\r\nAccept: */*\r\n\r\n",
    ),
    RequestCase(
        "added-lines-after-end-to-end-before-framing",
        request(b"POST", "Host: a", "X-A: 1", "Content-Length: 3"),
        None,
        b"X-Forwarded-For: 192.0.2.1\r\nVia: 1.1 lbproxy\r\n",
        b"POST /p HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n"
        b"X-Forwarded-For: 192.0.2.1\r\nVia: 1.1 lbproxy\r\nContent-Length: 3\r\n\r\n",
    ),
    RequestCase(
        "content-length-once-at-the-end",
        request(b"PUT", "Content-Length: 5", "Host: a", "X-A: 1"),
        None,
        b"",
        b"PUT /p HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nContent-Length: 5\r\n\r\n",
    ),
    RequestCase(
        "post-without-body-says-length-zero",
        request(b"POST", "Host: a"),
        None,
        b"",
        b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    ),
    RequestCase(
        "patch-without-body-says-length-zero",
        request(b"PATCH", "Host: a"),
        None,
        b"",
        b"PATCH /p HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    ),
    RequestCase(
        "delete-with-length-zero-says-nothing",
        request(b"DELETE", "Host: a", "Content-Length: 0"),
        None,
        b"",
        b"DELETE /p HTTP/1.1\r\nHost: a\r\n\r\n",
    ),
    RequestCase(
        "chunked-reframed-canonically",
        request(b"POST", "Host: a", "Transfer-Encoding:  Chunked ", "X-A: 1"),
        None,
        b"",
        b"POST /p HTTP/1.1\r\nHost: a\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    ),
    RequestCase(
        "http10-sent-as-http11",
        request(b"GET", "Host: a", "Connection: keep-alive", http11=False),
        None,
        b"",
        b"GET /p HTTP/1.1\r\nHost: a\r\n\r\n",
    ),
    RequestCase(
        "http10-without-host-gets-the-route-host",
        request(b"GET", http11=False),
        b"backend",
        b"",
        b"GET /p HTTP/1.1\r\nHost: backend\r\n\r\n",
    ),
    RequestCase(
        "hop-by-hop-removed",
        request(
            b"GET",
            "Host: a",
            "Connection: keep-alive",
            "Keep-Alive: timeout=5",
            "Proxy-Connection: keep-alive",
            "TE: trailers",
            "Trailer: X-Sum",
            "Proxy-Authorization: Basic eDp5",
            "Proxy-Authenticate: Basic",
            "Accept: */*",
        ),
        None,
        b"",
        b"GET /p HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n",
    ),
    RequestCase(
        "headers-named-in-connection-removed",
        request(
            b"GET",
            "Host: a",
            "Connection: X-Foo, x-bar",
            "Connection: close",
            "x-foo: 1",
            "X-Bar: 2",
            "X-Baz: 3",
        ),
        None,
        b"",
        b"GET /p HTTP/1.1\r\nHost: a\r\nX-Baz: 3\r\n\r\n",
    ),
    RequestCase(
        "gateway-headers-not-copied",
        request(
            b"POST",
            "Host: a",
            "Expect: 100-continue",
            "X-Forwarded-For: 198.51.100.1",
            "X-Forwarded-Proto: https",
            "X-Forwarded-Host: spoofed",
            "Via: 1.0 elsewhere",
            "X-Request-Id: r1",
            "Content-Length: 1",
        ),
        None,
        b"",
        b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\n",
    ),
]


@pytest.mark.parametrize("case", REQUEST_CASES, ids=[c.id for c in REQUEST_CASES])
def test_request_head_bytes(case: RequestCase) -> None:
    assert request_head_bytes(case.head, case.host, case.added) == case.expected


def _field_names(head_bytes: bytes) -> list[bytes]:
    lines = head_bytes.split(b"\r\n")
    assert lines[-2:] == [b"", b""], "a head ends with an empty line"
    return [line.split(b":", 1)[0].lower() for line in lines[1:-2]]


@pytest.mark.parametrize("case", REQUEST_CASES, ids=[c.id for c in REQUEST_CASES])
def test_request_head_is_canonical(case: RequestCase) -> None:
    names = _field_names(request_head_bytes(case.head, case.host, case.added))
    framing = [n for n in names if n in (b"content-length", b"transfer-encoding")]
    assert len(framing) <= 1
    assert names.count(b"host") == 1
    assert not set(names) & (HOP_BY_HOP - {b"content-length", b"transfer-encoding"})


class Recorder:
    def __init__(self) -> None:
        self.heads: list[RequestHead] = []
        self.body = b""
        self.ends = 0

    def on_request_head(self, head: RequestHead) -> None:
        self.heads.append(head)

    def on_request_body(self, data: bytes) -> None:
        self.body += data

    def on_request_end(self) -> None:
        self.ends += 1


@pytest.mark.parametrize("engine", ["httptools", "h11"])
@pytest.mark.parametrize("case", REQUEST_CASES, ids=[c.id for c in REQUEST_CASES])
def test_request_head_reparses_to_the_same_request(engine: str, case: RequestCase) -> None:
    sink = Recorder()
    request_parser(engine, sink, 65536).feed(request_head_bytes(case.head, case.host, b""))
    [again] = sink.heads
    original = case.head
    assert (again.method, again.target, again.http11) == (original.method, original.target, True)
    assert (again.content_length, again.chunked) == (original.content_length, original.chunked)
    assert again.host == (case.host if case.host is not None else original.host)
    assert again.kept == original.kept


@pytest.mark.parametrize(
    "name", sorted(HOP_BY_HOP - {b"upgrade", b"content-length", b"transfer-encoding"})
)
def test_hop_by_hop_never_forwarded(name: bytes) -> None:
    line = name.decode() + ": x"
    req = request(b"GET", "Host: a", line)
    assert name not in _field_names(request_head_bytes(req, None, b""))
    resp = response(200, line, "Content-Length: 0")
    assert name not in _field_names(response_head_bytes(resp, True, True)[0])


# -- client response heads -------------------------------------------------------------------


class ResponseCase(NamedTuple):
    id: str
    head: ResponseHead
    client_http11: bool
    keep_alive: bool
    expected: bytes
    mode: int


OK = b"HTTP/1.1 200 OK\r\n"

RESPONSE_CASES = [
    ResponseCase(
        "length-http11-keep-alive",
        response(200, "X-A: 1", "Content-Length: 5"),
        True,
        True,
        OK + b"X-A: 1\r\nContent-Length: 5\r\n\r\n",
        BODY_LENGTH,
    ),
    ResponseCase(
        "length-http11-close",
        response(200, "Content-Length: 5"),
        True,
        False,
        OK + b"Content-Length: 5\r\nConnection: close\r\n\r\n",
        BODY_LENGTH,
    ),
    ResponseCase(
        "length-http10-keep-alive",
        response(200, "Content-Length: 5"),
        False,
        True,
        OK + b"Content-Length: 5\r\nConnection: keep-alive\r\n\r\n",
        BODY_LENGTH,
    ),
    ResponseCase(
        "length-http10-close",
        response(200, "Content-Length: 5"),
        False,
        False,
        OK + b"Content-Length: 5\r\nConnection: close\r\n\r\n",
        BODY_LENGTH,
    ),
    ResponseCase(
        "length-zero-stated",
        response(200, "Content-Length: 0"),
        True,
        True,
        OK + b"Content-Length: 0\r\n\r\n",
        BODY_NONE,
    ),
    ResponseCase(
        "chunked-to-http11-rechunked",
        response(200, "Transfer-Encoding: chunked"),
        True,
        True,
        OK + b"Transfer-Encoding: chunked\r\n\r\n",
        BODY_CHUNKED,
    ),
    ResponseCase(
        "chunked-to-http10-until-close",
        response(200, "Transfer-Encoding: chunked"),
        False,
        True,
        OK + b"Connection: close\r\n\r\n",
        BODY_UNTIL_CLOSE,
    ),
    ResponseCase(
        "close-delimited-to-http11-chunked",
        response(200, "X-A: 1", http11=False),
        True,
        True,
        OK + b"X-A: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        BODY_CHUNKED,
    ),
    ResponseCase(
        "close-delimited-to-http10-until-close",
        response(200),
        False,
        True,
        OK + b"Connection: close\r\n\r\n",
        BODY_UNTIL_CLOSE,
    ),
    ResponseCase(
        "no-content-204-has-no-length",
        response(204, reason=b"No Content"),
        True,
        True,
        b"HTTP/1.1 204 No Content\r\n\r\n",
        BODY_NONE,
    ),
    ResponseCase(
        "not-modified-304-has-no-length",
        response(304, "ETag: x", "Content-Length: 10", reason=b"Not Modified"),
        False,
        True,
        b"HTTP/1.1 304 Not Modified\r\nETag: x\r\nConnection: keep-alive\r\n\r\n",
        BODY_NONE,
    ),
    ResponseCase(
        "head-length-passes-through-once",
        response(200, "Content-Length: 10", method=b"HEAD"),
        True,
        True,
        OK + b"Content-Length: 10\r\n\r\n",
        BODY_NONE,
    ),
    # RFC 9110 8.6: a HEAD answer states a Content-Length only if it is the GET body's length.
    ResponseCase(
        "head-without-length-states-none",
        response(200, "X-A: 1", method=b"HEAD"),
        True,
        True,
        OK + b"X-A: 1\r\n\r\n",
        BODY_NONE,
    ),
    ResponseCase(
        "head-chunked-states-no-length",
        response(200, "Transfer-Encoding: chunked", method=b"HEAD"),
        True,
        True,
        OK + b"\r\n",
        BODY_NONE,
    ),
    ResponseCase(
        "hop-by-hop-and-connection-named-removed",
        response(
            200,
            "Connection: keep-alive, X-Hop",
            "Keep-Alive: timeout=5",
            "X-Hop: 1",
            "Proxy-Authenticate: Basic",
            "Trailer: X-Sum",
            "Upgrade: h2c",
            "Content-Length: 2",
            "Server: s",
        ),
        True,
        True,
        OK + b"Server: s\r\nContent-Length: 2\r\n\r\n",
        BODY_LENGTH,
    ),
    ResponseCase(
        "unknown-reason-kept",
        response(200, "Content-Length: 0", reason=b"Fine"),
        True,
        True,
        b"HTTP/1.1 200 Fine\r\nContent-Length: 0\r\n\r\n",
        BODY_NONE,
    ),
    ResponseCase(
        "empty-reason-gets-the-standard-one",
        response(404, "Content-Length: 0", reason=b""),
        True,
        True,
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
        BODY_NONE,
    ),
    ResponseCase(
        "unlisted-status",
        response(299, "Content-Length: 0", reason=b"Odd"),
        True,
        True,
        b"HTTP/1.1 299 Odd\r\nContent-Length: 0\r\n\r\n",
        BODY_NONE,
    ),
]


@pytest.mark.parametrize("case", RESPONSE_CASES, ids=[c.id for c in RESPONSE_CASES])
def test_response_head_bytes(case: ResponseCase) -> None:
    assert response_head_bytes(case.head, case.client_http11, case.keep_alive) == (
        case.expected,
        case.mode,
    )


@pytest.mark.parametrize("case", RESPONSE_CASES, ids=[c.id for c in RESPONSE_CASES])
def test_response_head_is_canonical(case: ResponseCase) -> None:
    data, _ = response_head_bytes(case.head, case.client_http11, case.keep_alive)
    names = _field_names(data)
    framing = [n for n in names if n in (b"content-length", b"transfer-encoding")]
    assert len(framing) <= 1
    assert names.count(b"connection") <= 1


def test_response_added_lines_before_framing() -> None:
    head = response(200, "Content-Length: 2")
    data, mode = response_head_bytes(head, True, False, b"Via: 1.1 lbproxy\r\n")
    assert data == OK + b"Via: 1.1 lbproxy\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"
    assert mode == BODY_LENGTH


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (response(100, reason=b"Continue"), b"HTTP/1.1 100 Continue\r\n\r\n"),
        (
            response(103, "Link: </s.css>; rel=preload", reason=b"Early Hints"),
            b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n",
        ),
    ],
    ids=["100", "103"],
)
def test_interim_head_bytes(head: ResponseHead, expected: bytes) -> None:
    assert interim_head_bytes(head) == expected


# -- chunks ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"hello", b"5\r\nhello\r\n"),
        (b"x" * 10, b"a\r\n" + b"x" * 10 + b"\r\n"),
        (b"x" * 255, b"ff\r\n" + b"x" * 255 + b"\r\n"),
        (b"\r\n0\r\n\r\n", b"7\r\n\r\n0\r\n\r\n\r\n"),
        (b"x" * 65536, b"10000\r\n" + b"x" * 65536 + b"\r\n"),
    ],
    ids=["5", "10", "255", "looks-like-last-chunk", "64KiB"],
)
def test_encode_chunk(data: bytes, expected: bytes) -> None:
    assert encode_chunk(data) == expected


def test_encode_empty_chunk_writes_nothing() -> None:
    # An empty chunk is the last chunk: encoding an empty read must not end the body.
    assert encode_chunk(b"") == b""


@pytest.mark.parametrize("engine", ["httptools", "h11"])
def test_encoded_chunks_parse_back(engine: str) -> None:
    pieces = [b"a", b"\r\n", b"0\r\n\r\n", b"z" * 4097]
    head = request(b"POST", "Host: a", "Transfer-Encoding: chunked")
    wire = request_head_bytes(head, None, b"")
    wire += b"".join(encode_chunk(p) for p in pieces) + LAST_CHUNK
    sink = Recorder()
    request_parser(engine, sink, 65536).feed(wire)
    assert (len(sink.heads), sink.body, sink.ends) == (1, b"".join(pieces), 1)
