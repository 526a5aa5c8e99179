"""Issue 7, rule 4: the limits, over real sockets for both engines."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import Callable, Iterator

import pytest

from tests.conftest import GatewayFor
from tests.harness import (
    Backend,
    Client,
    Gateway,
    LoopThread,
    Seen,
    config_from,
    echo,
    free_port,
    gateway_toml,
)
from tests.test_hardening_framing import canonical_requests, recv_all, recv_responses

SMALL_API = """
[[api]]
name = "small"
methods = ["POST"]
path = "/small"
max_body_size = 10
backend = { type = "vpc", authorization = "to-first", timeout = 5 }
"""


@pytest.fixture
def backend(lt: LoopThread) -> Iterator[Backend]:
    started = Backend("a")
    lt.run(started.start())
    yield started
    lt.run(started.stop())


GatewayWith = Callable[..., Gateway]


@pytest.fixture
def gateway_with(lt: LoopThread, backend: Backend, engine: str) -> Iterator[GatewayWith]:
    """A factory: a gateway (the harness config, ``[gateway]`` lines replaced or added) in
    front of ``backend``."""
    started: list[Gateway] = []

    def start(**keys: object) -> Gateway:
        text = gateway_toml([backend], free_port(), engine, extra_api=SMALL_API)
        lines = "".join(f"{key} = {json.dumps(value)}\n" for key, value in keys.items())
        if "client_header_timeout" in keys:
            text = text.replace("client_header_timeout = 2.0\n", "")
        text = text.replace('region = "test-region"\n', f'region = "test-region"\n{lines}', 1)
        gateway = Gateway(lt, config_from(text))
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


def exchange(gateway: Gateway, raw: bytes) -> tuple[bytes, bool]:
    """One request's bytes sent; the answer, and whether the gateway then closed."""
    sock = gateway.connect()
    sock.sendall(raw)
    data, closed = recv_responses(sock, [b"GET"])
    if not closed:
        sock.settimeout(0.3)
        try:
            closed = sock.recv(1) == b""
        except TimeoutError:
            closed = False
    sock.close()
    return data, closed


def get_with_target(target: bytes) -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n"


# -- request line and head ------------------------------------------------------------------


def test_request_line_over_8_kib_is_414(gateway_for: GatewayFor) -> None:
    gateway, backend = gateway_for(echo)
    # "GET <target> HTTP/1.1" is the target and 13 bytes: 8179 bytes of target fit in 8 KiB.
    target = b"/direct/" + b"t" * (8179 - 8)
    data, closed = exchange(gateway, get_with_target(target + b"x"))
    assert data.startswith(b"HTTP/1.1 414 ") and b"request_line_too_long" in data
    assert closed and not backend.raw
    data, _ = exchange(gateway, get_with_target(target))
    assert data.startswith(b"HTTP/1.1 200 ")
    assert canonical_requests(bytes(backend.raw)) == [(b"GET", target, b"")]


def test_header_block_over_64_kib_is_431(gateway_for: GatewayFor) -> None:
    gateway, backend = gateway_for(echo)
    fields = b"".join(b"X-F%d: %s\r\n" % (i, b"v" * 1000) for i in range(66))
    data, closed = exchange(gateway, b"GET /direct/a HTTP/1.1\r\nHost: a\r\n" + fields + b"\r\n")
    assert data.startswith(b"HTTP/1.1 431 ") and closed and not backend.raw
    # The harness backend (h11) reads heads up to 16 KiB: a head well under the limit passes.
    fields = b"".join(b"X-F%d: %s\r\n" % (i, b"v" * 1000) for i in range(12))
    data, _ = exchange(gateway, b"GET /direct/a HTTP/1.1\r\nHost: a\r\n" + fields + b"\r\n")
    assert data.startswith(b"HTTP/1.1 200 ")


def test_header_count_over_100_is_431(gateway_for: GatewayFor) -> None:
    gateway, backend = gateway_for(echo)
    fields = b"".join(b"X-F%d: v\r\n" % i for i in range(100))  # with Host: 101 fields
    data, closed = exchange(gateway, b"GET /direct/a HTTP/1.1\r\nHost: a\r\n" + fields + b"\r\n")
    assert data.startswith(b"HTTP/1.1 431 ") and b"more than 100 header fields" in data
    assert closed and not backend.raw
    fields = b"".join(b"X-F%d: v\r\n" % i for i in range(99))
    data, _ = exchange(gateway, b"GET /direct/a HTTP/1.1\r\nHost: a\r\n" + fields + b"\r\n")
    assert data.startswith(b"HTTP/1.1 200 ")


def test_chunk_beyond_the_api_body_limit_is_413_and_never_forwarded(
    gateway_for: GatewayFor,
) -> None:
    gateway, backend = gateway_for(echo, extra_api=SMALL_API)
    raw = (
        b"POST /small HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nffff\r\n" + b"b" * 11
    )
    data, closed = exchange(gateway, raw)
    assert data.startswith(b"HTTP/1.1 413 ") and closed
    assert not backend.raw, "the request was refused in the read that carried its head"


def test_slowloris_head_is_408_at_the_header_timeout(
    gateway_with: GatewayWith, backend: Backend
) -> None:
    gateway = gateway_with(client_header_timeout=0.8)
    sock = gateway.connect()
    started = time.monotonic()
    sock.sendall(b"GET /direct/slow HTTP/1.1\r\nHost: a\r\n")
    for _ in range(6):  # one field every 0.1 s: the deadline must not move
        time.sleep(0.1)
        sock.sendall(b"X-Trickle: 1\r\n")
    data, closed = recv_all(sock, timeout=3.0)
    sock.close()
    assert data.startswith(b"HTTP/1.1 408 ") and closed
    assert time.monotonic() - started < 1.4
    assert not backend.raw


def test_idle_keep_alive_connection_is_closed(gateway_with: GatewayWith, backend: Backend) -> None:
    gateway = gateway_with(keepalive_timeout=0.5)
    client = Client(gateway.connect())
    client.send(b"GET /direct/a HTTP/1.1\r\nHost: a\r\n\r\n")
    assert client.response()[0].status_code == 200
    started = time.monotonic()
    client.sock.settimeout(3.0)
    assert client.sock.recv(1) == b""
    assert 0.4 < time.monotonic() - started < 1.5
    client.close()


# -- limits the relay keeps ---------------------------------------------------------------


def test_configured_head_limits_are_honoured(gateway_with: GatewayWith, backend: Backend) -> None:
    gateway = gateway_with(max_request_line=1024, max_header_count=10)
    data, closed = exchange(gateway, get_with_target(b"/direct/" + b"t" * 1100))
    assert data.startswith(b"HTTP/1.1 414 ") and closed
    fields = b"".join(b"X-F%d: v\r\n" % i for i in range(10))
    data, closed = exchange(gateway, b"GET /direct/a HTTP/1.1\r\nHost: a\r\n" + fields + b"\r\n")
    assert data.startswith(b"HTTP/1.1 431 ") and closed
    assert not backend.raw


def test_connections_past_the_cap_are_refused_gracefully(
    gateway_with: GatewayWith, backend: Backend
) -> None:
    gateway = gateway_with(max_client_connections=3)
    held = [gateway.connect() for _ in range(3)]
    time.sleep(0.2)  # accepted
    try:
        extra = gateway.connect()
        extra.sendall(b"GET /direct/a HTTP/1.1\r\nHost: a\r\n\r\n")
        data, closed = recv_all(extra, timeout=2.0)
        extra.close()
        assert data.startswith(b"HTTP/1.1 503 ") and b"too_many_connections" in data
        assert b"Retry-After: 1" in data and closed
        assert not backend.raw
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.2)
    data, _ = exchange(gateway, b"GET /direct/a HTTP/1.1\r\nHost: a\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200 "), "a freed place is taken again"


def test_requests_per_connection_are_bounded(gateway_with: GatewayWith, backend: Backend) -> None:
    gateway = gateway_with(max_requests_per_connection=3)
    sock = gateway.connect()
    sock.sendall(b"GET /direct/a HTTP/1.1\r\nHost: a\r\n\r\n" * 4)
    data, closed = recv_all(sock, timeout=2.0)
    sock.close()
    assert data.count(b"HTTP/1.1 200 ") == 3 and closed
    assert data.count(b"Connection: close") == 1
    assert len(canonical_requests(bytes(backend.raw))) == 3


def test_stalled_upload_is_408_at_the_body_timeout(
    gateway_with: GatewayWith, backend: Backend
) -> None:
    gateway = gateway_with(client_body_timeout=0.5)
    sock = gateway.connect()
    started = time.monotonic()
    sock.sendall(b"POST /direct/up HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789")
    data, closed = recv_all(sock, timeout=2.0)
    sock.close()
    assert data.startswith(b"HTTP/1.1 408 ") and b"body_timeout" in data and closed
    assert time.monotonic() - started < 1.5


def test_a_steady_slow_upload_is_not_cut(gateway_with: GatewayWith, backend: Backend) -> None:
    # The body timeout is an idle timeout, as nginx's: each piece restarts it.
    gateway = gateway_with(client_body_timeout=0.5)
    sock = gateway.connect()
    sock.sendall(b"POST /direct/up HTTP/1.1\r\nHost: a\r\nContent-Length: 60\r\n\r\n")
    for _ in range(6):  # 1.2 s in all, 0.2 s between pieces
        time.sleep(0.2)
        sock.sendall(b"0123456789")
    data, _ = recv_responses(sock, [b"POST"])
    sock.close()
    assert data.startswith(b"HTTP/1.1 200 ")
    assert [(s.target, s.body_size) for s in backend.seen] == [("/direct/up", 60)]


async def sleepy(seen: Seen, writer: asyncio.StreamWriter) -> bool:
    await asyncio.sleep(3.0)  # read the whole request, then say nothing
    return await echo(seen, writer)


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_a_sent_body_then_a_slow_upstream_is_504_not_408(
    gateway_for: GatewayFor, framing: str
) -> None:
    # Once the body is in, waiting is the upstream's doing: its timeout (1 s), not the client's
    # body timeout (0.3 s).
    gateway, _ = gateway_for(sleepy, timeout=1.0, gateway_extra="client_body_timeout = 0.3")
    sock = gateway.connect()
    started = time.monotonic()
    if framing == "length":
        sock.sendall(b"POST /direct/up HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nabcde")
    else:
        sock.sendall(
            b"POST /direct/up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nabcde\r\n0\r\n\r\n"
        )
    data, _ = recv_all(sock, timeout=3.0)
    sock.close()
    assert data.startswith(b"HTTP/1.1 504 ") and b"upstream_timeout" in data
    assert time.monotonic() - started > 0.8


def test_refused_connections_leave_their_places_free(
    gateway_with: GatewayWith, backend: Backend
) -> None:
    # Refused connections take no place: once the held ones go, the cap admits as many again.
    gateway = gateway_with(max_client_connections=2)
    for _ in range(2):
        held = [gateway.connect() for _ in range(2)]
        time.sleep(0.1)
        refused = [gateway.connect() for _ in range(3)]
        for sock in refused:
            data, closed = recv_all(sock, timeout=2.0)
            assert data.startswith(b"HTTP/1.1 503 ") and closed
            sock.close()
        for sock in held:
            sock.sendall(b"GET /direct/a HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            data, _ = recv_all(sock, timeout=2.0)
            assert data.startswith(b"HTTP/1.1 200 ")
            sock.close()
        time.sleep(0.2)


def test_limits_changed_by_an_in_place_reload_apply_to_new_connections(
    gateway_with: GatewayWith, backend: Backend
) -> None:
    gateway = gateway_with()
    config = gateway.runtime.config
    changed = dataclasses.replace(
        config, gateway=dataclasses.replace(config.gateway, max_requests_per_connection=1)
    )

    async def reload() -> None:
        gateway.runtime.apply(changed)

    gateway.lt.run(reload())
    sock = gateway.connect()
    sock.sendall(b"GET /direct/a HTTP/1.1\r\nHost: a\r\n\r\n" * 2)
    data, closed = recv_all(sock, timeout=2.0)
    sock.close()
    assert data.count(b"HTTP/1.1 200 ") == 1 and b"Connection: close" in data and closed
