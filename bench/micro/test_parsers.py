"""Both parser engines on the messages the relay sees most: a request head, a chunked request
body, a response head with a small body, through ``http.request_parser`` / ``response_parser``
into a sink whose callbacks count, as the relay's do."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from lbproxy import framing
from lbproxy.http import request_parser, response_parser

ENGINES = ["httptools", "h11"]
MAX_HEADER_SIZE = 64 * 1024

REQUEST_HEAD = (
    b"GET /items/42?expand=owner HTTP/1.1\r\n"
    b"Host: api.example.internal\r\n"
    b"User-Agent: bench/1.0\r\n"
    b"Accept: application/json\r\n"
    b"Accept-Encoding: gzip, deflate\r\n"
    b"Accept-Language: en-GB,en;q=0.9\r\n"
    b"Authorization: Bearer 0123456789abcdef0123456789abcdef\r\n"
    b"X-Request-Id: 4f1c2a9e-7b3d-4c55-9a8e-1d2f3a4b5c6d\r\n"
    b"X-Forwarded-For: 10.1.2.3\r\n"
    b"\r\n"
)
CHUNK = b"x" * 1024
CHUNKED_REQUEST = (
    b"POST /items HTTP/1.1\r\nHost: api.example.internal\r\n"
    b"Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b"".join(b"400\r\n" + CHUNK + b"\r\n" for _ in range(16))
    + b"0\r\n\r\n"
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Server: nginx/1.22.1\r\n"
    b"Date: Tue, 24 Nov 2026 15:00:00 GMT\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: 12\r\n"
    b"Connection: keep-alive\r\n"
    b"Cache-Control: no-store\r\n"
    b"X-Instance: i-web-1\r\n"
    b"\r\n"
    b"hello world\n"
)


class CountingSink:
    """Request and response sink: counts heads, body bytes and message ends."""

    def __init__(self) -> None:
        self.heads = 0
        self.body_bytes = 0
        self.ends = 0

    def on_request_head(self, head: framing.RequestHead) -> None:
        self.heads += 1

    def on_request_body(self, data: bytes) -> None:
        self.body_bytes += len(data)

    def on_request_end(self) -> None:
        self.ends += 1

    def on_response_head(self, head: framing.ResponseHead) -> None:
        self.heads += 1

    def on_response_body(self, data: bytes) -> None:
        self.body_bytes += len(data)

    def on_response_end(self) -> None:
        self.ends += 1


Bench = Callable[..., object]


@pytest.mark.benchmark(group="parse: request head")
@pytest.mark.parametrize("engine", ENGINES)
def test_request_head(benchmark: Bench, engine: str) -> None:
    sink = CountingSink()
    parser = request_parser(engine, sink, MAX_HEADER_SIZE)
    benchmark(parser.feed, REQUEST_HEAD)
    assert sink.heads == sink.ends > 0


@pytest.mark.benchmark(group="parse: chunked request, 16 x 1 KiB")
@pytest.mark.parametrize("engine", ENGINES)
def test_chunked_request_body(benchmark: Bench, engine: str) -> None:
    """16 chunks of 1 KiB with their head: the body callbacks dominate."""
    sink = CountingSink()
    parser = request_parser(engine, sink, MAX_HEADER_SIZE)
    benchmark(parser.feed, CHUNKED_REQUEST)
    assert sink.heads == sink.ends > 0
    assert sink.body_bytes == sink.ends * 16 * len(CHUNK)


@pytest.mark.benchmark(group="parse: response head, 12-byte body")
@pytest.mark.parametrize("engine", ENGINES)
def test_response_head(benchmark: Bench, engine: str) -> None:
    sink = CountingSink()
    parser = response_parser(engine, sink)

    def one_response() -> None:
        parser.expect(b"GET", sink)
        parser.feed(RESPONSE)

    benchmark(one_response)
    assert sink.heads == sink.ends > 0
    assert sink.body_bytes == sink.ends * 12
