"""Regressions from review: what belongs to one exchange never leaks into another (answers,
trailers, pauses, timers), over real sockets for both engines."""

from __future__ import annotations

import asyncio
import socket
import struct
import time

from tests.conftest import GatewayFor
from tests.harness import (
    Client,
    Seen,
)


async def slow_created(seen: Seen, writer: asyncio.StreamWriter) -> bool:
    await asyncio.sleep(0.3)
    writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
    return True


def test_a_bad_pipelined_request_is_answered_after_the_one_in_flight(
    gateway_for: GatewayFor,
) -> None:
    gateway, _ = gateway_for(slow_created)
    client = Client(gateway.connect())
    client.send(
        b"POST /api/order HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        b"GET /api/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"
    )
    first, body = client.response()
    assert (first.status_code, body) == (201, b"ok")  # the order's own answer, not the 400
    second, _ = client.response()
    assert second.status_code == 400
    client.close()


def test_trailer_fields_never_become_the_next_requests_headers(gateway_for: GatewayFor) -> None:
    from tests.harness import echo

    gateway, _ = gateway_for(echo)
    client = Client(gateway.connect())
    client.send(
        b"POST /api/1 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\nX-Injected: from-trailer\r\n\r\n"
        b"GET /api/2 HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert client.response()[0].status_code == 200
    response, body = client.response()
    assert response.status_code == 200 and b"x-injected" not in body.lower()
    client.close()


async def ok_after_body(seen: Seen, writer: asyncio.StreamWriter) -> bool:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    return True


def test_the_upstream_timeout_is_idle_time_not_total_time(gateway_for: GatewayFor) -> None:
    gateway, _ = gateway_for(ok_after_body, timeout=1.0)
    client = Client(gateway.connect())
    client.send(b"POST /api/up HTTP/1.1\r\nHost: x\r\nContent-Length: 60000\r\n\r\n")
    for _ in range(6):  # 1.5 s of steady upload, longer than the 1 s timeout
        time.sleep(0.25)
        client.send(b"u" * 10000)
    response, body = client.response()
    assert (response.status_code, body) == (200, b"ok")
    client.close()


SIZE = 8 * 1024 * 1024


async def big(seen: Seen, writer: asyncio.StreamWriter) -> bool:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % SIZE)
    for _ in range(SIZE // 65536):
        writer.write(b"d" * 65536)
        await writer.drain()
    return True


def test_a_slow_reading_client_is_not_an_upstream_timeout(gateway_for: GatewayFor) -> None:
    gateway, _ = gateway_for(big, timeout=0.5)
    sock = gateway.connect()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    sock.sendall(
        b"GET /api/big HTTP/1.1\r\nHost: x\r\n\r\nGET /api/big HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    client = Client(sock)
    time.sleep(1.5)  # not reading: flow control pauses the upstream, its timer must not run
    for _ in range(2):  # and the pause must not outlive the exchange
        response, body = client.response()
        assert response.status_code == 200 and len(body) == SIZE
    client.close()


async def reset_mid_body(seen: Seen, writer: asyncio.StreamWriter) -> bool:
    writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b"p" * 1000)
    await writer.drain()
    await asyncio.sleep(0.2)
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
    return False


def test_a_reset_is_not_the_end_of_a_close_delimited_body(gateway_for: GatewayFor) -> None:
    gateway, _ = gateway_for(reset_mid_body)
    sock = gateway.connect()
    sock.sendall(b"GET /api/x HTTP/1.1\r\nHost: x\r\n\r\n")
    raw = b""
    while chunk := sock.recv(65536):
        raw += chunk
    assert raw.startswith(b"HTTP/1.1 200")
    assert not raw.endswith(b"0\r\n\r\n")  # truncated, never terminated as if complete
    sock.close()
