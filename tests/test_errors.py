"""Every error the gateway answers itself, over real sockets, for both engines."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from lbproxy.authz import Endpoint
from tests.conftest import GatewayFor
from tests.harness import (
    Backend,
    Client,
    Gateway,
    Handler,
    LoopThread,
    Seen,
    config_from,
    free_port,
    full_accept_queue,
    gateway_toml,
    header,
)

DEAD_PORT = free_port()
EXTRA = f"""
[[api]]
name = "small"
methods = ["POST"]
path = "/small"
max_body_size = 10
backend = {{ type = "vpc", authorization = "to-first", timeout = 5 }}

[[instance]]
id = "i-dead"
vpc = "vpc-t"
ip = "127.0.0.2"

[[authorization]]
name = "to-dead"
vpc = "vpc-t"
target = "i-dead"
port = {DEAD_PORT}

[[api]]
name = "dead"
methods = ["GET"]
path = "/dead"
backend = {{ type = "vpc", authorization = "to-dead", timeout = 5 }}
"""


def make_gateway(
    lt: LoopThread, backends: list[Backend], engine: str, timeout: float = 5.0
) -> Gateway:
    text = gateway_toml(backends, free_port(), engine, extra_api=EXTRA, timeout=timeout)
    return Gateway(lt, config_from(text))


@pytest.fixture
def gw(lt: LoopThread, backends: list[Backend], engine: str) -> Iterator[Gateway]:
    gateway = make_gateway(lt, backends, engine)
    yield gateway
    gateway.stop()


def exchange(
    gw: Gateway, raw: bytes, method: str = "GET"
) -> tuple[int, dict[str, str], dict[str, object], bool]:
    """Send raw bytes; return status, headers, JSON body and whether the gateway closed."""
    sock = gw.connect()
    sock.sendall(raw)
    client = Client(sock)
    response, body = client.response(method)
    headers = {k.decode(): v.decode() for k, v in response.headers}
    sock.settimeout(0.3)
    try:
        closed = sock.recv(1) == b""
    except TimeoutError:
        closed = False
    sock.close()
    return response.status_code, headers, json.loads(body) if body else {}, closed


def test_404_names_the_reason(gw: Gateway) -> None:
    status, headers, body, closed = exchange(gw, b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status, body["error"], closed) == (404, "no_route", False)
    assert headers["content-type"] == "application/json"


def test_405_lists_allowed_methods(gw: Gateway) -> None:
    status, headers, body, _ = exchange(gw, b"PATCH /api/x HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status, body["error"]) == (405, "method_not_allowed")
    assert headers["allow"] == "DELETE, GET, HEAD, POST, PUT"


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /api/x HTTP/1.1\r\n\r\n",  # no Host
        b"GET /api/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked"
        b"\r\n\r\n",
        b"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
        b"POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc",
        b"GET /api/../admin HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET\x01 / HTTP/1.1\r\nHost: a\r\n\r\n",
    ],
)
def test_400_closes_and_forwards_nothing(
    gw: Gateway, backends: list[Backend], engine: str, raw: bytes
) -> None:
    status, _, body, closed = exchange(gw, raw)
    assert (status, body["error"], closed) == (400, "bad_request", True)
    assert all(not b.raw for b in backends)


def test_413_for_declared_and_streamed_bodies(gw: Gateway, backends: list[Backend]) -> None:
    raw = b"POST /small HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nxxxxxxxxxxx"
    status, _, body, closed = exchange(gw, raw)
    assert (status, body["error"], closed) == (413, "body_too_large", True)
    chunked = (
        b"POST /small HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"8\r\nxxxxxxxx\r\n8\r\nxxxxxxxx\r\n0\r\n\r\n"
    )
    status, _, body, closed = exchange(gw, chunked)
    assert (status, body["error"], closed) == (413, "body_too_large", True)
    ok = b"POST /small HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nxxxxxxxxxx"
    assert exchange(gw, ok)[0] == 200


def test_431_for_a_huge_header_block(gw: Gateway, backends: list[Backend]) -> None:
    raw = b"GET /api/x HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"
    status, _, body, closed = exchange(gw, raw)
    assert (status, body["error"], closed) == (431, "headers_too_large", True)
    assert all(not b.raw for b in backends)


def test_502_when_the_upstream_refuses(gw: Gateway) -> None:
    status, _, body, _ = exchange(gw, b"GET /dead HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status, body["error"]) == (502, "upstream_connect_failed")


def run_with_handler(
    gateway_for: GatewayFor, handler: Handler, raw: bytes, timeout: float = 5.0
) -> tuple[int, dict[str, object], bool]:
    gateway, _ = gateway_for(handler, timeout=timeout, extra_api=EXTRA)
    status, _, body, closed = exchange(gateway, raw)
    return status, body, closed


@pytest.mark.parametrize(
    "reply",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nab",
        b"HTTP/1.1 abc OK\r\n\r\n",
    ],
)
def test_502_for_an_invalid_upstream_response(gateway_for: GatewayFor, reply: bytes) -> None:
    async def bad(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(reply)
        return False

    status, body, _ = run_with_handler(gateway_for, bad, b"GET /api/x HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (status, body["error"]) == (502, "upstream_protocol_error")


def test_502_when_the_upstream_closes_without_answering(gateway_for: GatewayFor) -> None:
    async def hang_up(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        return False

    status, body, _ = run_with_handler(
        gateway_for, hang_up, b"GET /api/x HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert (status, body["error"]) == (502, "upstream_closed")


def test_504_when_the_upstream_hangs(gateway_for: GatewayFor) -> None:
    async def slow(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(3)
        return False

    status, body, _ = run_with_handler(
        gateway_for, slow, b"GET /api/x HTTP/1.1\r\nHost: x\r\n\r\n", timeout=0.3
    )
    assert (status, body["error"]) == (504, "upstream_timeout")


def test_truncated_response_is_never_completed(gateway_for: GatewayFor) -> None:
    async def short(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        return False

    gateway, _ = gateway_for(short)
    sock = gateway.connect()
    sock.sendall(b"GET /api/x HTTP/1.1\r\nHost: x\r\n\r\n")
    raw = b""
    while chunk := sock.recv(65536):
        raw += chunk
    assert raw.startswith(b"HTTP/1.1 200") and raw.endswith(b"partial")
    sock.close()


def test_gate_refuses_a_server_outside_the_table(
    lt: LoopThread, gw: Gateway, backends: list[Backend]
) -> None:
    rogue = Backend("rogue")
    lt.run(rogue.start())
    try:
        # Whatever picks the server (here a tampered group), the connect itself is refused.
        group = gw.runtime.routes.groups["authorization to-first"]
        lt.call(lambda: setattr(group, "endpoints", (Endpoint("127.0.0.1", rogue.port, 1, "x"),)))
        status, _, body, _ = exchange(gw, b"GET /direct/x HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (status, body["error"]) == (502, "upstream_not_authorized")
        assert rogue.connections == 0
    finally:
        lt.run(rogue.stop())


def test_503_for_requests_queued_while_draining(lt: LoopThread, engine: str) -> None:
    started = threading.Event()

    async def slow(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        started.set()
        await asyncio.sleep(0.5)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return True

    backend = Backend("a", handler=slow)
    lt.run(backend.start())
    gateway = make_gateway(lt, [backend], engine)
    sock = gateway.connect()
    try:
        sock.sendall(
            b"GET /api/1 HTTP/1.1\r\nHost: x\r\n\r\nGET /api/2 HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        assert started.wait(5)
        stopping = asyncio.run_coroutine_threadsafe(gateway.runtime.stop(timeout=5), lt.loop)
        client = Client(sock)
        first, body = client.response()
        assert (first.status_code, body) == (200, b"ok")
        second, body = client.response()
        assert second.status_code == 503 and json.loads(body)["error"] == "shutting_down"
        assert header(second, "connection") == "close" and header(second, "retry-after") == "1"
        stopping.result(10)
        with pytest.raises(OSError):
            socket.create_connection((gateway.host, gateway.port), timeout=1)
    finally:
        sock.close()
        lt.run(backend.stop())


def test_504_when_the_connect_itself_hangs(lt: LoopThread, engine: str) -> None:
    with full_accept_queue() as port:
        backend = Backend("a", port=port)  # never started: only its address
        text = gateway_toml([backend], free_port(), engine, gateway_extra="connect_timeout = 0.3")
        gateway = Gateway(lt, config_from(text))
        try:
            started = time.monotonic()
            status, _, body, _ = exchange(gateway, b"GET /direct/x HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (status, body["error"]) == (504, "upstream_timeout")
            assert "connect to 127.0.0.1" in str(body["message"])
            assert time.monotonic() - started < 3
        finally:
            gateway.stop()
