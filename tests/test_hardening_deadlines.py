"""Issue 7: which timeout runs while a request is in flight, over real sockets for both engines.

While the request body is the client's to send, the client's body timeout runs (408); once it
is in, or while the upstream holds it back, the upstream's (504). These are the paths where the
two meet: a pipelined request, a retry mid-body, a connect that held the body, a retry onto a
pooled connection after a connect that held it (each found by review, each failed before)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

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
    full_accept_queue,
    gateway_toml,
)
from tests.test_hardening_framing import read_responses, recv_responses


def statuses(data: bytes, methods: list[bytes]) -> list[int]:
    return [status for status, _ in read_responses(data, methods)]


def upload_in_two_parts(gateway: Gateway, path: bytes, pause: float) -> list[int]:
    """A 400 kB POST: 300 kB (past the 256 KiB held while connecting), a pause, the last
    100 kB; the statuses answered."""
    sock = gateway.connect()
    head = b"POST %b HTTP/1.1\r\nHost: a\r\nContent-Length: 400000\r\n\r\n" % path
    sock.sendall(head + b"x" * 300_000)
    time.sleep(pause)
    sock.sendall(b"y" * 100_000)
    data, _ = recv_responses(sock, [b"POST"])
    sock.close()
    return statuses(data, [b"POST"])


async def slow_post(seen: Seen, writer: asyncio.StreamWriter) -> bool:
    if seen.method == "POST":
        await asyncio.sleep(0.8)  # within the API timeout (2 s), past the body timeout (0.3 s)
    return await echo(seen, writer)


def test_a_pipelined_body_in_waits_for_the_upstream_timeout(gateway_for: GatewayFor) -> None:
    gateway, _ = gateway_for(slow_post, timeout=2.0, gateway_extra="client_body_timeout = 0.3")
    sock = gateway.connect()
    sock.sendall(
        b"GET /direct/g HTTP/1.1\r\nHost: a\r\n\r\n"
        b"POST /direct/p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nabcde"
    )
    data, _ = recv_responses(sock, [b"GET", b"POST"])
    sock.close()
    assert statuses(data, [b"GET", b"POST"]) == [200, 200]


@pytest.fixture
def dead_port() -> Iterator[int]:
    """A port that refuses connections."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_a_retry_mid_body_keeps_the_body_timeout(
    lt: LoopThread, engine: str, dead_port: int
) -> None:
    # The first server refuses the connect; the retry goes on while the client pauses 1 s
    # mid-body, within its body timeout (3 s) though past the upstream's (0.5 s).
    alive = Backend("alive")
    lt.run(alive.start())
    dead = Backend("dead", port=dead_port)
    text = gateway_toml(
        [dead, alive], free_port(), engine, timeout=0.5, gateway_extra="client_body_timeout = 3.0"
    )
    gateway = Gateway(lt, config_from(text))
    try:
        sock = gateway.connect()
        sock.sendall(b"POST /api/up HTTP/1.1\r\nHost: a\r\nContent-Length: 20\r\n\r\n0123456789")
        time.sleep(1.0)
        sock.sendall(b"0123456789")
        data, _ = recv_responses(sock, [b"POST"])
        sock.close()
        assert statuses(data, [b"POST"]) == [200]
        assert [(s.target, s.body_size) for s in alive.seen] == [("/api/up", 20)]
    finally:
        gateway.stop()
        lt.run(alive.stop())


def test_a_body_held_by_a_connect_is_the_clients_again_once_connected(
    gateway_for: GatewayFor,
) -> None:
    # 300 kB arrive while connecting (past the 256 KiB held, reading pauses); once connected
    # the client pauses 2.4 s, within its body timeout (3 s), past the upstream's (2 s).
    gateway, backend = gateway_for(
        timeout=2.0, gateway_extra="client_body_timeout = 3.0", keep_body=False
    )
    assert upload_in_two_parts(gateway, b"/direct/up", pause=2.4) == [200]
    assert [s.body_size for s in backend.seen] == [400_000]


def test_a_retry_onto_a_pooled_connection_reads_the_rest_of_the_body(
    lt: LoopThread, engine: str
) -> None:
    # The first server's accept queue is full: its connect times out with 300 kB held (reading
    # paused); the retry goes to an idle pooled connection of the second, and the client's
    # last 100 kB must still be read.
    alive = Backend("alive", keep_body=False)
    lt.run(alive.start())
    with full_accept_queue() as port:
        dead = Backend("dead", port=port)
        text = gateway_toml(
            [dead, alive],
            free_port(),
            engine,
            timeout=2.0,
            gateway_extra="client_body_timeout = 5.0\nconnect_timeout = 0.5",
        ).replace("servers = [", "passive = { max_fails = 0 }\nservers = [", 1)
        gateway = Gateway(lt, config_from(text))
        try:
            sock = gateway.connect()
            sock.sendall(b"GET /api/warm HTTP/1.1\r\nHost: a\r\n\r\n")  # pools a connection
            recv_responses(sock, [b"GET"])
            sock.close()
            for _ in range(2):  # round-robin: one of the two goes to the full queue first
                assert upload_in_two_parts(gateway, b"/api/up", pause=0.3) == [200]
            assert [s.body_size for s in alive.seen] == [0, 400_000, 400_000]
        finally:
            gateway.stop()
            lt.run(alive.stop())
