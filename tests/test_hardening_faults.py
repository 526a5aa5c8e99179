"""Issue 7, rule 5: faults on either side, over real sockets for both engines. A client never
gets a wrong or spliced response, and an upstream connection whose state is unknown is never
used again."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import struct
import threading
import time
from collections.abc import Callable

import pytest

from tests.conftest import GatewayFor
from tests.harness import (
    Backend,
    Gateway,
    LoopThread,
    Seen,
    config_from,
    echo,
    free_port,
    gateway_toml,
)
from tests.test_hardening_framing import (
    canonical_requests,
    read_responses,
    recv_all,
    recv_responses,
)


def wait_for(predicate: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def leave_mid_body(gateway_for: GatewayFor, reset: bool) -> None:
    gateway, backend = gateway_for(echo)
    sock = gateway.connect()
    sock.sendall(
        b"POST /direct/up HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n" + b"u" * 100
    )
    assert wait_for(lambda: b"u" * 100 in backend.raw), "the head and first bytes went out"
    if reset:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    # The upstream connection is closed at once, its request never completed...
    assert wait_for(lambda: not backend.tasks, 1.0), "the upstream request was not abandoned"
    assert backend.seen == []
    # ...and never reused: the next request opens a new one.
    sock = gateway.connect()
    sock.sendall(b"GET /direct/b HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    data, _ = recv_all(sock)
    sock.close()
    assert data.startswith(b"HTTP/1.1 200 ")
    assert backend.connections == 2 and [s.target for s in backend.seen] == ["/direct/b"]


def test_client_resetting_mid_body_abandons_the_upstream_request(gateway_for: GatewayFor) -> None:
    leave_mid_body(gateway_for, reset=True)


def test_client_closing_mid_body_abandons_the_upstream_request(gateway_for: GatewayFor) -> None:
    leave_mid_body(gateway_for, reset=False)


async def cut_short(seen: Seen, writer: asyncio.StreamWriter) -> bool:
    if seen.target.endswith("/chunked"):
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n")
    else:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nfirst")
    await writer.drain()
    await asyncio.sleep(0.1)
    return False  # the upstream goes away mid-response


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_upstream_leaving_mid_response_closes_the_client_never_splices(
    gateway_for: GatewayFor, framing: str
) -> None:
    gateway, backend = gateway_for(cut_short)
    sock = gateway.connect()
    # Two pipelined requests: the second must never be answered on this connection.
    sock.sendall(
        b"GET /direct/%b HTTP/1.1\r\nHost: a\r\n\r\nGET /direct/second HTTP/1.1\r\nHost: a\r\n\r\n"
        % framing.encode()
    )
    data, closed = recv_all(sock)
    sock.close()
    assert closed
    assert data.count(b"HTTP/1.1 ") == 1 and data.startswith(b"HTTP/1.1 200 ")
    assert data.endswith(b"first" if framing == "length" else b"first\r\n")
    assert read_responses(data, [b"GET"]) == [], "a cut response must not read as complete"
    assert [s.target for s in backend.seen] == [f"/direct/{framing}"]


class RawBackend:
    """A scripted upstream: reads one request head, answers nothing, and notes when the
    gateway closes the connection (what the harness backend cannot see while its handler
    waits)."""

    def __init__(self) -> None:
        self.heads: list[bytes] = []
        self.closed = threading.Event()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            self.heads.append(await reader.readuntil(b"\r\n\r\n"))
            while await reader.read(65536):
                pass
            self.closed.set()
        finally:
            writer.close()


def test_hanging_upstream_is_504_and_its_connection_discarded(lt: LoopThread, engine: str) -> None:
    upstream = RawBackend()
    lt.run(upstream.start())
    stand_in = Backend("a", port=upstream.port)  # only its address, for the config
    gateway = Gateway(lt, config_from(gateway_toml([stand_in], free_port(), engine, timeout=0.5)))
    try:
        sock = gateway.connect()
        started = time.monotonic()
        sock.sendall(b"GET /direct/slow HTTP/1.1\r\nHost: a\r\n\r\n")
        data, _ = recv_responses(sock, [b"GET"])
        sock.close()
        assert data.startswith(b"HTTP/1.1 504 ") and b"upstream_timeout" in data
        assert time.monotonic() - started < 2.0
        # The gateway closed the upstream connection: it can never answer someone else.
        assert upstream.closed.wait(2.0)
        assert len(upstream.heads) == 1
    finally:
        gateway.stop()
        lt.run(upstream.stop())


async def shuffled_echo(seen: Seen, writer: asyncio.StreamWriter) -> bool:
    await asyncio.sleep(random.random() * 0.01)  # answers finish out of order
    return await echo(seen, writer)


CLIENTS = 200
REQUESTS_EACH = 5


async def keep_alive_client(host: str, port: int, number: int) -> list[str]:
    """One keep-alive connection, its requests sent one after another (the last two
    pipelined); what the backend says it answered ("target body_size"), in order."""
    reader, writer = await asyncio.open_connection(host, port)
    data = b""
    responses: list[tuple[int, bytes]] = []
    try:
        for i in range(REQUESTS_EACH):
            target = f"/direct/c{number}/r{i}"
            body = f"body of {number}/{i}".encode()
            writer.write(
                b"POST %b HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%b"
                % (target.encode(), len(body), body)
            )
            if i == REQUESTS_EACH - 2:
                continue  # pipelined with the next one
            while len(responses) < i + 1:
                chunk = await reader.read(65536)
                assert chunk, f"client {number}: the gateway closed the connection"
                data += chunk
                responses = read_responses(data, [b"POST"] * (i + 1))
    finally:
        writer.close()
        await writer.wait_closed()
    out = []
    for status, body in responses:
        assert status == 200
        seen = json.loads(body)
        out.append(f"{seen['target']} {seen['body_size']}")
    return out


def test_200_keep_alive_clients_never_see_each_others_responses(
    gateway_for: GatewayFor,
) -> None:
    gateway, backend = gateway_for(shuffled_echo)

    async def run() -> list[list[str]]:
        return await asyncio.gather(
            *(keep_alive_client(gateway.host, gateway.port, n) for n in range(CLIENTS))
        )

    results = asyncio.run(run())
    for number, targets in enumerate(results):
        expected = [
            f"/direct/c{number}/r{i} {len(f'body of {number}/{i}')}" for i in range(REQUESTS_EACH)
        ]
        assert targets == expected, f"client {number} got another's response"
    assert len(backend.seen) == CLIENTS * REQUESTS_EACH
    assert backend.connections < CLIENTS * REQUESTS_EACH, "upstream connections were reused"


def test_bad_chunk_in_a_later_read_ends_the_exchange_at_once(gateway_for: GatewayFor) -> None:
    gateway, backend = gateway_for(echo, timeout=2.0)
    sock = gateway.connect()
    sock.sendall(
        b"POST /direct/up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n"
    )
    assert wait_for(lambda: b"abcde" in backend.raw)
    started = time.monotonic()
    sock.sendall(b"zz\r\n")
    data, closed = recv_all(sock, timeout=1.5)
    sock.close()
    assert data.startswith(b"HTTP/1.1 400 ") and closed
    assert time.monotonic() - started < 1.0
    assert wait_for(lambda: not backend.tasks, 1.0), "the upstream connection was kept"
    assert backend.seen == []


def test_fragment_never_reaches_a_backend(gateway_for: GatewayFor) -> None:
    gateway, backend = gateway_for(echo)
    sock = gateway.connect()
    sock.sendall(b"GET /direct/a#../../admin HTTP/1.1\r\nHost: a\r\n\r\n")
    data, closed = recv_all(sock, timeout=1.0)
    sock.close()
    assert data.startswith(b"HTTP/1.1 400 ") and closed
    assert canonical_requests(bytes(backend.raw)) == []
