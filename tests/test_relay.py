"""The relay end to end over real sockets, for both parser engines."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import Iterator

import pytest

from lbproxy.authz import Endpoint
from tests.conftest import GatewayFor
from tests.harness import (
    Backend,
    Client,
    Gateway,
    LoopThread,
    config_from,
    free_port,
    gateway_toml,
    header,
)


@pytest.fixture
def gw(lt: LoopThread, backends: list[Backend], engine: str) -> Iterator[Gateway]:
    text = gateway_toml(backends, free_port(), engine, weights=[2, 1, 1])
    gateway = Gateway(lt, config_from(text))
    yield gateway
    gateway.stop()


def get(gw: Gateway, path: str, extra: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    client = Client(gw.connect())
    client.send(b"GET %b HTTP/1.1\r\nHost: gw.example\r\n%b\r\n" % (path.encode(), extra))
    response, body = client.response()
    client.close()
    headers = {k.decode(): v.decode() for k, v in response.headers}
    return response.status_code, headers, body


def test_get_is_relayed_with_forwarding_headers(gw: Gateway, backends: list[Backend]) -> None:
    status, _, body = get(gw, "/api/items/1?x=1")
    assert status == 200
    seen = json.loads(body)
    assert seen["target"] == "/api/items/1?x=1"
    upstream = dict(seen["headers"])
    assert upstream["host"] == "svc.internal"  # the authorization's host
    assert upstream["x-forwarded-for"] == "127.0.0.1"
    assert upstream["x-forwarded-host"] == "gw.example"
    assert upstream["x-forwarded-proto"] == "http"
    assert upstream["via"] == "1.1 lbproxy"
    assert len(upstream["x-request-id"]) == 24


def test_request_id_and_forwarded_for_are_carried_on(gw: Gateway) -> None:
    extra = b"X-Request-Id: abc-123\r\nX-Forwarded-For: 10.1.1.1\r\nVia: 1.0 edge\r\n"
    _, _, body = get(gw, "/api/x", extra)
    upstream = dict(json.loads(body)["headers"])
    assert upstream["x-request-id"] == "abc-123"
    assert upstream["x-forwarded-for"] == "10.1.1.1, 127.0.0.1"
    assert upstream["via"] == "1.0 edge, 1.1 lbproxy"


def test_hop_by_hop_headers_are_removed(gw: Gateway) -> None:
    extra = b"Connection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nTE: trailers\r\n"
    _, _, body = get(gw, "/api/x", extra + b"X-Kept: yes\r\n")
    names = {k for k, _ in json.loads(body)["headers"]}
    assert "x-kept" in names
    assert not names & {"connection", "x-secret", "keep-alive", "te"}


def test_smooth_weighted_round_robin_across_servers(gw: Gateway, backends: list[Backend]) -> None:
    for _ in range(8):
        assert get(gw, "/api/x")[0] == 200
    counts = [len(b.seen) for b in backends]
    assert counts == [4, 2, 2]


def test_instance_authorization_reaches_only_that_instance(
    gw: Gateway, backends: list[Backend]
) -> None:
    for _ in range(3):
        assert get(gw, "/direct/x")[0] == 200
    assert [len(b.seen) for b in backends] == [3, 0, 0]
    assert backends[0].seen[0].header("host") == "gw.example"  # no host: the client's


def test_keep_alive_reuses_client_and_upstream_connections(
    gw: Gateway, backends: list[Backend]
) -> None:
    client = Client(gw.connect())
    for i in range(20):
        client.send(b"GET /direct/%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
        response, body = client.response()
        assert response.status_code == 200
        assert json.loads(body)["target"] == f"/direct/{i}"
    client.close()
    assert backends[0].connections == 1


def test_pipelined_requests_are_answered_in_order(gw: Gateway) -> None:
    client = Client(gw.connect())
    client.send(b"".join(b"GET /api/p%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(6)))
    targets = [json.loads(client.response()[1])["target"] for _ in range(6)]
    assert targets == [f"/api/p{i}" for i in range(6)]
    client.close()


def test_pipelined_posts_with_bodies(gw: Gateway) -> None:
    client = Client(gw.connect())
    reqs = [
        b"POST /api/%d HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%b"
        % (i, i * 10, b"x" * (i * 10))
        for i in range(1, 5)
    ]
    client.send(b"".join(reqs))
    sizes = [json.loads(client.response()[1])["body_size"] for _ in range(4)]
    assert sizes == [10, 20, 30, 40]
    client.close()


def test_chunked_request_is_reframed_and_streamed(gw: Gateway, backends: list[Backend]) -> None:
    client = Client(gw.connect())
    client.send(
        b"POST /direct/c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    )
    response, body = client.response()
    assert response.status_code == 200
    assert json.loads(body)["body_size"] == 11
    seen = backends[0].seen[-1]
    assert seen.body == b"hello world"
    assert seen.header("transfer-encoding") == "chunked"
    assert seen.header("content-length") is None
    assert b"ext=1" not in bytes(backends[0].raw)  # re-framed, not the client's bytes
    client.close()


def test_http10_client_gets_close_delimited_body(gateway_for: GatewayFor) -> None:
    async def chunked(seen: object, writer: object) -> bool:
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"  # type: ignore[attr-defined]
            b"3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n"
        )
        return True

    gateway, _ = gateway_for(chunked)
    client = Client(gateway.connect())
    client.send(b"GET /api/x HTTP/1.1\r\nHost: x\r\n\r\n")
    response, body = client.response()
    assert body == b"abcdef" and header(response, "transfer-encoding") == "chunked"
    client.close()
    sock = gateway.connect()
    sock.sendall(b"GET /api/x HTTP/1.0\r\n\r\n")
    raw = b""
    while chunk := sock.recv(65536):
        raw += chunk
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert rest == b"abcdef"
    assert b"Transfer-Encoding" not in head and b"Connection: close" in head
    sock.close()


@pytest.mark.parametrize(
    ("method", "status", "expect_body"),
    [("HEAD", 200, b""), ("GET", 204, b""), ("GET", 304, b""), ("GET", 200, b"0123456789")],
)
def test_bodyless_responses_are_framed_right(
    gateway_for: GatewayFor, method: str, status: int, expect_body: bytes
) -> None:
    async def answer(seen: object, writer: object) -> bool:
        # Content-Length describes the GET body for HEAD; 204/304 carry none.
        body = b"" if status in (204, 304) or method == "HEAD" else b"0123456789"
        writer.write(b"HTTP/1.1 %d X\r\nContent-Length: 10\r\n\r\n%b" % (status, body))  # type: ignore[attr-defined]
        return True

    gateway, backend = gateway_for(answer)
    client = Client(gateway.connect())
    for _ in range(2):  # twice: the connections must still be in sync afterwards
        client.send(b"%b /api/x HTTP/1.1\r\nHost: x\r\n\r\n" % method.encode())
        response, body = client.response(method)
        assert response.status_code == status and body == expect_body
    client.close()
    assert backend.connections == 1


def test_expect_100_continue(gw: Gateway) -> None:
    sock = gw.connect()
    sock.sendall(
        b"POST /api/e HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
    )
    assert sock.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
    sock.sendall(b"data")
    client = Client(sock)
    response, body = client.response()
    assert response.status_code == 200 and json.loads(body)["body_size"] == 4
    assert "expect" not in dict(json.loads(body)["headers"])
    sock.close()


def test_header_timeout_answers_408_and_closes(lt: LoopThread, backends: list[Backend]) -> None:
    text = gateway_toml(backends, free_port(), gateway_extra="client_header_timeout = 0.8")
    gateway = Gateway(lt, config_from(text.replace("client_header_timeout = 2.0\n", "")))
    try:
        sock = gateway.connect()
        started = time.monotonic()
        sock.sendall(b"GET /api/slow HTTP/1.1\r\nHost: x\r\n")
        for _ in range(6):  # trickled bytes must not extend the deadline (it would: 1.4 s)
            time.sleep(0.1)
            sock.sendall(b"X-Trickle: 1\r\n")
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
        elapsed = time.monotonic() - started
        assert raw.startswith(b"HTTP/1.1 408 ") and b"request_timeout" in raw
        assert elapsed < 1.3, f"closed {elapsed:.2f}s after the first byte: the deadline moved"
        assert all(not b.raw for b in backends)
        sock.close()
    finally:
        gateway.stop()


@pytest.mark.parametrize(("path", "status"), [(b"/api/x", 200), (b"/no-such-api", 404)])
def test_idle_keep_alive_connection_is_closed(
    lt: LoopThread, backends: list[Backend], path: bytes, status: int
) -> None:
    # After a relayed answer or one the gateway made itself, the connection idles on the
    # keep-alive timeout (0.3 s), not the header timeout (2 s), and ends without a 408.
    text = gateway_toml(backends, free_port(), gateway_extra="keepalive_timeout = 0.3")
    gateway = Gateway(lt, config_from(text))
    try:
        client = Client(gateway.connect())
        client.send(b"GET %b HTTP/1.1\r\nHost: x\r\n\r\n" % path)
        assert client.response()[0].status_code == status
        started = time.monotonic()
        assert client.sock.recv(1) == b""  # closed by the gateway, without a response
        assert time.monotonic() - started < 1.5
        client.close()
    finally:
        gateway.stop()


def test_close_delimited_response_is_rechunked_for_http11(gateway_for: GatewayFor) -> None:
    async def until_close(seen: object, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil ")
        await writer.drain()
        writer.write(b"close")
        return False  # the harness closes the connection: that ends the body

    gateway, backend = gateway_for(until_close)
    client = Client(gateway.connect())
    for _ in range(2):  # the client connection stays usable
        client.send(b"GET /api/x HTTP/1.1\r\nHost: x\r\n\r\n")
        response, body = client.response()
        assert body == b"until close"
        assert header(response, "transfer-encoding") == "chunked"
    client.close()
    assert backend.connections == 2  # a close-delimited upstream is never reused


def test_load_balancer_listener_serves_clients_inside_the_vpc(
    lt: LoopThread, backends: list[Backend], engine: str
) -> None:
    lb_port = free_port()
    gateway = Gateway(lt, config_from(gateway_toml(backends, lb_port, engine, weights=[1, 1, 1])))
    try:
        for i in range(3):
            client = Client(socket.create_connection(("127.0.0.1", lb_port), timeout=10))
            client.send(b"GET /any/path/%d HTTP/1.1\r\nHost: lb.internal\r\n\r\n" % i)
            response, body = client.response()
            assert response.status_code == 200
            assert json.loads(body)["target"] == f"/any/path/{i}"  # no API routing here
            client.close()
        assert [len(b.seen) for b in backends] == [1, 1, 1]
        assert backends[0].seen[0].header("host") == "lb.internal"
    finally:
        gateway.stop()


def test_gate_refusal_is_logged(
    lt: LoopThread, gw: Gateway, caplog: pytest.LogCaptureFixture
) -> None:
    group = gw.runtime.routes.groups["authorization to-first"]
    rogue = Endpoint("127.0.0.1", free_port(), 1, "rogue")
    lt.call(lambda: setattr(group, "endpoints", (rogue,)))
    with caplog.at_level(logging.WARNING, logger="lbproxy.relay"):
        status, _, body = get(gw, "/direct/x")
    assert status == 502 and json.loads(body)["error"] == "upstream_not_authorized"
    assert any(
        "gate refused" in r.getMessage() and str(rogue) in r.getMessage() for r in caplog.records
    )
