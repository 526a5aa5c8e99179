"""Header analysis and rewriting: ``framing.analyze_*`` split framing from end-to-end headers,
``request_head_bytes`` / ``response_head_bytes`` write the heads that go upstream and back."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from lbproxy import framing
from lbproxy.framing import RequestHead, ResponseHead

Bench = Callable[..., object]

REQUEST_HEADERS = [
    (b"Host", b"api.example.internal"),
    (b"User-Agent", b"bench/1.0"),
    (b"Accept", b"application/json"),
    (b"Accept-Encoding", b"gzip, deflate"),
    (b"Authorization", b"Bearer 0123456789abcdef0123456789abcdef"),
    (b"X-Request-Id", b"4f1c2a9e-7b3d-4c55-9a8e-1d2f3a4b5c6d"),
    (b"X-Forwarded-For", b"10.1.2.3"),
    (b"Connection", b"keep-alive"),
]
RESPONSE_HEADERS = [
    (b"Server", b"nginx/1.22.1"),
    (b"Date", b"Tue, 24 Nov 2026 15:00:00 GMT"),
    (b"Content-Type", b"application/json"),
    (b"Content-Length", b"12"),
    (b"Connection", b"keep-alive"),
    (b"Cache-Control", b"no-store"),
]
ADDED = (
    b"X-Forwarded-For: 10.1.2.3, 127.0.0.1\r\nX-Forwarded-Proto: http\r\n"
    b"X-Request-Id: 4f1c2a9e-7b3d-4c55-9a8e-1d2f3a4b5c6d\r\n"
)


def analysed_request() -> RequestHead:
    head = RequestHead(b"GET", b"/items/42", True, list(REQUEST_HEADERS))
    framing.analyze_request(head)
    return head


def analysed_response() -> ResponseHead:
    head = ResponseHead(200, b"", True, list(RESPONSE_HEADERS))
    framing.analyze_response(head, b"GET")
    return head


@pytest.mark.benchmark(group="headers: analyse")
def test_analyze_request(benchmark: Bench) -> None:
    assert benchmark(analysed_request).host == b"api.example.internal"


@pytest.mark.benchmark(group="headers: analyse")
def test_analyze_response(benchmark: Bench) -> None:
    assert benchmark(analysed_response).content_length == 12


@pytest.mark.benchmark(group="headers: rewrite")
def test_request_head_bytes(benchmark: Bench) -> None:
    head = analysed_request()
    data = benchmark(framing.request_head_bytes, head, b"www.example.internal", ADDED)
    assert data.startswith(b"GET /items/42 HTTP/1.1\r\nHost: www.example.internal\r\n")


@pytest.mark.benchmark(group="headers: rewrite")
def test_response_head_bytes(benchmark: Bench) -> None:
    head = analysed_response()
    data, mode = benchmark(framing.response_head_bytes, head, True, True)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n") and mode == framing.BODY_LENGTH
