"""High availability through the relay: balancing tiers, passive health, retries, failover.

Every server is a separate loopback address (127.0.0.11, .12, ...) answering with its name, as
the instances of an internal load balancer would.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
import trustme

from tests.harness import (
    Backend,
    Client,
    Gateway,
    Handler,
    LoopThread,
    Seen,
    config_from,
    free_port,
)


def answering(name: str) -> Handler:
    async def handler(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        body = name.encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
        return True

    return handler


async def hang(seen: Seen, writer: asyncio.StreamWriter) -> bool:
    await asyncio.sleep(30)
    return False


def ha_toml(
    servers: list[tuple[Backend, str]],
    *,
    listener: str = "",
    timeout: float = 5.0,
) -> str:
    """An internal LB over ``servers`` (backend, extra server keys such as `weight = 5`) and an
    API `/api/*` through it."""
    port = free_port()
    instances = "".join(
        f'[[instance]]\nid = "i-{b.name}"\nvpc = "vpc-t"\nip = "{b.host}"\n\n' for b, _ in servers
    )
    refs = ", ".join(
        f'{{ instance = "i-{b.name}", port = {b.port}{", " + extra if extra else ""} }}'
        for b, extra in servers
    )
    return f"""
[gateway]
region = "r"
listen = ["127.0.0.1:0"]
max_requests_per_connection = 100000  # the clients here keep one connection for thousands

[[vpc]]
id = "vpc-t"
region = "r"
cidrs = ["127.0.0.0/8"]

{instances}
[[load_balancer]]
id = "lb-t"
vpc = "vpc-t"
ip = "127.0.0.10"
[[load_balancer.listener]]
port = {port}
servers = [{refs}]
{listener}

[[authorization]]
name = "to-lb"
vpc = "vpc-t"
target = "lb-t"
port = {port}

[[api]]
name = "api"
methods = ["GET", "POST", "PUT"]
path = "/api/*"
backend = {{ type = "vpc", authorization = "to-lb", timeout = {timeout} }}
"""


StartGateway = Callable[[str], Gateway]


@pytest.fixture
def servers(lt: LoopThread) -> Iterator[list[Backend]]:
    """Three servers a, b, c on 127.0.0.11, .12, .13, each answering with its name."""
    started = []
    for i, name in enumerate("abc"):
        backend = Backend(name, handler=answering(name), host=f"127.0.0.{11 + i}")
        lt.run(backend.start())
        started.append(backend)
    yield started
    for backend in started:
        lt.run(backend.stop())


@pytest.fixture
def start_gateway(lt: LoopThread) -> Iterator[StartGateway]:
    gateways: list[Gateway] = []

    def start(text: str) -> Gateway:
        gateway = Gateway(lt, config_from(text))
        gateways.append(gateway)
        return gateway

    yield start
    for gateway in gateways:
        gateway.stop()


def get(client: Client, path: str = "/api/x", method: str = "GET") -> tuple[int, bytes]:
    client.send(f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode())
    response, body = client.response(method)
    return response.status_code, body


def test_wrr_sequence_and_shares_for_weights_5_1_1(
    servers: list[Backend], start_gateway: StartGateway
) -> None:
    a, b, c = servers
    gateway = start_gateway(ha_toml([(a, "weight = 5"), (b, "weight = 1"), (c, "weight = 1")]))
    client = Client(gateway.connect())
    names = [get(client)[1].decode() for _ in range(7000)]
    client.close()
    assert "".join(names[:14]) == "aabacaa" * 2  # nginx's smooth sequence, not aaaaabc
    assert Counter(names) == {"a": 5000, "b": 1000, "c": 1000}
    # One pooled upstream connection per server served all of them.
    assert (a.connections, b.connections, c.connections) == (1, 1, 1)


def test_weight_zero_drains_and_backup_waits(
    servers: list[Backend], start_gateway: StartGateway
) -> None:
    a, b, c = servers
    gateway = start_gateway(ha_toml([(a, "weight = 0"), (b, ""), (c, "backup = true")]))
    client = Client(gateway.connect())
    assert {get(client)[1] for _ in range(20)} == {b"b"}
    client.close()
    assert a.seen == [] and c.seen == []


def test_backup_takes_over_when_every_primary_is_down(
    lt: LoopThread, servers: list[Backend], start_gateway: StartGateway
) -> None:
    a, b, c = servers
    listener = "passive = { max_fails = 1, fail_timeout = 30 }"
    gateway = start_gateway(ha_toml([(a, ""), (b, ""), (c, "backup = true")], listener=listener))
    lt.run(a.stop())
    lt.run(b.stop())
    client = Client(gateway.connect())
    # The first request finds both primaries refusing (each ejected), then the backup answers.
    answers = [get(client) for _ in range(10)]
    client.close()
    assert answers == [(200, b"c")] * 10


def test_killed_server_costs_no_failed_request(
    lt: LoopThread, servers: list[Backend], start_gateway: StartGateway
) -> None:
    a, b, c = servers
    gateway = start_gateway(
        ha_toml(
            [(a, ""), (b, ""), (c, "")], listener="passive = { max_fails = 1, fail_timeout = 30 }"
        )
    )
    statuses: Counter[int] = Counter()
    seen_after_kill: list[int] = []
    killed = threading.Event()

    def run_client() -> None:
        client = Client(gateway.connect())
        for i in range(3000):
            if i == 500:
                lt.run(b.stop())  # refuses new connections and resets its open ones
                killed.set()
                seen_after_kill.append(len(b.seen))
            statuses[get(client)[0]] += 1
        client.close()

    runner = threading.Thread(target=run_client)
    runner.start()
    runner.join(60)
    assert killed.is_set()
    assert statuses == {200: 3000}
    assert len(b.seen) == seen_after_kill[0]  # nothing reached it after it died


def test_hanging_server_get_is_retried_post_is_not_then_it_is_ejected(
    lt: LoopThread, start_gateway: StartGateway, caplog: pytest.LogCaptureFixture
) -> None:
    hung = Backend("h", handler=hang, host="127.0.0.14")
    fine = Backend("f", handler=answering("f"), host="127.0.0.15")
    for backend in (hung, fine):
        lt.run(backend.start())
    try:
        listener = (
            "retry = { tries = 2, try_timeout = 0.5 }\n"
            "passive = { max_fails = 2, fail_timeout = 30 }"
        )
        gateway = start_gateway(ha_toml([(hung, ""), (fine, "")], listener=listener))
        client = Client(gateway.connect())
        with caplog.at_level(logging.INFO):
            # WRR sends the first request to the hanging server, the second to the good one.
            assert get(client) == (200, b"f")  # GET: retried on the other server after 0.5 s
            assert get(client)[1] == b"f"
            client.close()
            client = Client(gateway.connect())
            status, body = get(client, method="POST")  # to the hanging server: sent once
            assert status == 504 and b"upstream_timeout" in body
            # Two timeouts in a row: the hanging server is out, every request goes to the other.
            assert "ejected: 2 failure(s) in a row; last: upstream timeout" in caplog.text
            assert {get(client, method="POST") for _ in range(10)} == {(200, b"f")}
        client.close()
        assert [s.method for s in hung.seen] == ["GET", "POST"]
        assert "POST was sent and is not idempotent" in caplog.text
    finally:
        for backend in (hung, fine):
            lt.run(backend.stop())


def test_stale_pooled_connection_is_retried_on_a_fresh_one(
    lt: LoopThread, start_gateway: StartGateway
) -> None:
    async def answer_then_close_idle(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return False  # keep-alive response, but the server closes the connection right after

    backend = Backend("s", handler=answer_then_close_idle, host="127.0.0.16")
    lt.run(backend.start())
    try:
        listener = "retry = { tries = 1 }"  # no ordinary retries: only the stale-connection one
        gateway = start_gateway(ha_toml([(backend, "")], listener=listener))
        client = Client(gateway.connect())
        for _ in range(5):
            time.sleep(0.05)  # the close reaches the gateway, or races the next request
            assert get(client, method="POST") == (200, b"ok")
        client.close()
        assert len(backend.seen) == 5  # each POST reached the server once
    finally:
        lt.run(backend.stop())


def test_every_server_down_fails_open_then_503_with_retry_after(
    lt: LoopThread,
    servers: list[Backend],
    start_gateway: StartGateway,
    caplog: pytest.LogCaptureFixture,
) -> None:
    a, b, _ = servers
    listener = "passive = { max_fails = 1, fail_timeout = 30 }"
    gateway = start_gateway(ha_toml([(a, ""), (b, "")], listener=listener))
    lt.run(a.stop())
    lt.run(b.stop())
    client = Client(gateway.connect())
    with caplog.at_level(logging.INFO):
        for _ in range(2):
            # Both are tried (refused, ejected); the second time they are known to be down and
            # are tried anyway (fail open) before the 503.
            client.send(b"GET /api/x HTTP/1.1\r\nHost: x\r\n\r\n")
            response, body = client.response()
            assert response.status_code == 503 and b"no_upstream_available" in body
            assert (b"retry-after", b"1") in response.headers
    client.close()
    assert caplog.text.count("connection refused: next server: nothing was sent -> ") == 2
    assert "ejected: 1 failure(s) in a row; last: connection refused" in caplog.text


def test_passive_ejection_then_slow_start_ramp(
    lt: LoopThread, servers: list[Backend], start_gateway: StartGateway
) -> None:
    a, b, _ = servers
    listener = "passive = { max_fails = 1, fail_timeout = 0.3 }\nslow_start = 1.0"
    port_a = a.port
    gateway = start_gateway(ha_toml([(a, ""), (b, "")], listener=listener))
    lt.run(a.stop())
    client = Client(gateway.connect())
    assert {get(client)[1] for _ in range(10)} == {b"b"}  # a refused once, then ejected
    a.port = port_a
    lt.run(a.start())  # back on the same address
    time.sleep(0.35)  # the ejection ends: a ramps from 10% of its weight over 1 s
    early = Counter(get(client)[1] for _ in range(40))
    time.sleep(1.1)
    late = Counter(get(client)[1] for _ in range(40))
    client.close()
    assert 1 <= early[b"a"] < 12  # ramping: well under its half
    assert late[b"a"] == 20  # full weight: every other request


def wait_for(predicate: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_active_checks_take_a_sick_server_out_and_bring_it_back(
    lt: LoopThread, start_gateway: StartGateway, caplog: pytest.LogCaptureFixture
) -> None:
    sick = {"a": False, "b": False, "c": False}

    def checked(name: str) -> Handler:
        async def handler(seen: Seen, writer: asyncio.StreamWriter) -> bool:
            if seen.target == "/health":
                status = b"500 Internal Server Error" if sick[name] else b"200 OK"
                writer.write(b"HTTP/1.1 %b\r\nContent-Length: 0\r\n\r\n" % status)
                return True
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n" + name.encode())
            return True

        return handler

    servers = [
        Backend(n, handler=checked(n), host=f"127.0.0.{21 + i}") for i, n in enumerate("abc")
    ]
    for backend in servers:
        lt.run(backend.start())
    a, b, c = servers
    traffic = lambda backend: sum(1 for s in backend.seen if s.target != "/health")  # noqa: E731
    try:
        check = (
            'health_check = { path = "/health", interval = 0.1, timeout = 0.1, rise = 2, fall = 2 }'
        )
        gateway = start_gateway(
            ha_toml([(a, ""), (b, ""), (c, "")], listener=check + "\nslow_start = 0.5")
        )
        client = Client(gateway.connect())
        with caplog.at_level(logging.INFO, logger="lbproxy.health"):
            assert {get(client)[1] for _ in range(30)} == {b"a", b"b", b"c"}
            sick["b"] = True
            assert wait_for(
                lambda: "i-b:" in caplog.text and " down: 2 check(s) failed" in caplog.text
            )
            assert "last: status 500" in caplog.text
            before = traffic(b)
            answers = [get(client) for _ in range(300)]
            assert {status for status, _ in answers} == {200}
            assert traffic(b) == before  # nothing after `fall` failed checks
            sick["b"] = False
            assert wait_for(lambda: " up: 2 check(s) passed in a row" in caplog.text)
            assert wait_for(lambda: get(client)[1] == b"b", seconds=3.0)  # back in the rotation
        client.close()
    finally:
        for backend in servers:
            lt.run(backend.stop())


@pytest.fixture(scope="module")
def tls_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, str]:
    ca = trustme.CA()
    path = tmp_path_factory.mktemp("tls") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return ca, str(path)


def tls_toml(backend: Backend, ca_file: str) -> str:
    return f"""
[gateway]
region = "r"
listen = ["127.0.0.1:0"]

[[vpc]]
id = "vpc-t"
region = "r"
cidrs = ["127.0.0.0/8"]

[[instance]]
id = "i-tls"
vpc = "vpc-t"
ip = "{backend.host}"

[[authorization]]
name = "to-tls"
vpc = "vpc-t"
target = "i-tls"
port = {backend.port}
host = "svc.internal"
tls = true
ca_file = "{ca_file}"

[[api]]
name = "secure"
methods = ["GET"]
path = "/secure/*"
backend = {{ type = "vpc", authorization = "to-tls", timeout = 5.0 }}
"""


@pytest.mark.parametrize("trusted", [True, False])
def test_https_backend_is_verified_against_the_configured_ca(
    lt: LoopThread, start_gateway: StartGateway, tls_ca: tuple[trustme.CA, str], trusted: bool
) -> None:
    ca, ca_file = tls_ca
    issuer = ca if trusted else trustme.CA()  # an untrusted CA signs the second server's cert
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    issuer.issue_cert("svc.internal").configure_cert(server_context)
    backend = Backend("t", handler=answering("secure"), host="127.0.0.31", tls=server_context)
    lt.run(backend.start())
    try:
        gateway = start_gateway(tls_toml(backend, ca_file))
        client = Client(gateway.connect())
        if trusted:
            assert [get(client, "/secure/x") for _ in range(3)] == [(200, b"secure")] * 3
            assert backend.connections == 1  # the TLS connection is pooled and reused
            assert backend.seen[0].header("host") == "svc.internal"
        else:
            status, body = get(client, "/secure/x")
            assert status == 502 and b"upstream_connect_failed" in body
            assert b"certificate verify failed" in body
            assert backend.seen == []
        client.close()
    finally:
        lt.run(backend.stop())


def test_max_connections_queue_hands_over_then_503s(
    lt: LoopThread, start_gateway: StartGateway
) -> None:
    async def slow(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.4)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return True

    backend = Backend("q", handler=slow, host="127.0.0.41")
    lt.run(backend.start())
    try:
        pool = "pool = { max_connections = 1, max_queue = 1, queue_timeout = 2.0 }"
        gateway = start_gateway(ha_toml([(backend, "")], listener=pool))
        clients = [Client(gateway.connect()) for _ in range(3)]
        for client in clients:
            client.send(b"GET /api/x HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.05)  # in this order: one served, one queued, one turned away
        results = [(c.response()[0].status_code, c) for c in clients]
        assert [status for status, _ in results] == [200, 200, 503]
        assert backend.connections == 1  # the queued request got the same connection
        for client in clients:
            client.close()
    finally:
        lt.run(backend.stop())


def test_queue_timeout_answers_503(lt: LoopThread, start_gateway: StartGateway) -> None:
    async def slower(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(1.0)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return True

    backend = Backend("q", handler=slower, host="127.0.0.42")
    lt.run(backend.start())
    try:
        pool = "pool = { max_connections = 1, queue_timeout = 0.2 }"
        gateway = start_gateway(ha_toml([(backend, "")], listener=pool))
        first, second = Client(gateway.connect()), Client(gateway.connect())
        first.send(b"GET /api/x HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.05)
        second.send(b"GET /api/x HTTP/1.1\r\nHost: x\r\n\r\n")
        response, body = second.response()
        assert response.status_code == 503 and b"no connection free within 0.2s" in body
        assert (b"retry-after", b"1") in response.headers
        assert first.response()[0].status_code == 200
        first.close()
        second.close()
    finally:
        lt.run(backend.stop())
