"""The access model through real sockets: signed requests, source-IP lists with trusted
proxies, throttling, HTTPS listeners, http backends judged after DNS, egress source, and the
admin API driven by the configuration's own keys."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from lbproxy.server import Runtime
from lbproxy.state import load_with_state
from tests.harness import Backend, Client, LoopThread, Seen

SECRET = "app-secret-1"


def access_toml(backend: Backend, gateway: str = "", apis: str = "", extra: str = "") -> str:
    return f"""
[gateway]
region = "r"
listen = ["127.0.0.1:0"]
{gateway}

[[vpc]]
id = "vpc-t"
region = "r"
cidrs = ["127.0.0.0/25"]

[[instance]]
id = "i-a"
vpc = "vpc-t"
ip = "{backend.host}"

[[authorization]]
name = "to-a"
vpc = "vpc-t"
target = "i-a"
port = {backend.port}

[[app]]
name = "shop"
key = "203751"
secret = "{SECRET}"

[[app]]
name = "other"
key = "999"
secret = "other-secret"

[[api]]
name = "open"
methods = ["GET"]
path = "/open/*"
backend = {{ type = "vpc", authorization = "to-a" }}
{apis}
{extra}
"""


@pytest.fixture
def backend(lt: LoopThread) -> Iterator[Backend]:
    started = Backend("a", host="127.0.0.51")
    lt.run(started.start())
    yield started
    lt.run(started.stop())


Start = Callable[[str], Runtime]


@pytest.fixture
def start(lt: LoopThread, tmp_path: Path) -> Iterator[Start]:
    runtimes: list[Runtime] = []

    def run(text: str) -> Runtime:
        path = tmp_path / "gateway.toml"
        path.write_text(text)
        config, document = load_with_state(str(path))
        runtime = Runtime(config, document)
        lt.run(runtime.start())
        runtimes.append(runtime)
        return runtime

    yield run
    for runtime in runtimes:
        lt.run(runtime.stop(timeout=2.0))


def request(
    runtime: Runtime, raw: bytes, source: str | None = None
) -> tuple[int, dict[bytes, bytes], bytes]:
    sock = socket.socket()
    if source:
        sock.bind((source, 0))
    sock.settimeout(10)
    sock.connect(runtime.addresses[0])
    client = Client(sock)
    client.send(raw)
    response, body = client.response()
    client.close()
    return response.status_code, dict(response.headers), body


def signed(
    path: str, extra: list[str] | None = None, key: str = "203751", secret: str = SECRET
) -> bytes:
    out = subprocess.run(
        [sys.executable, "-m", "lbproxy", "sign", "--key", key, "--secret", secret, path],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    lines = [line for line in out.splitlines() if line] + (extra or [])
    head = "".join(f"{line}\r\n" for line in lines)
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n{head}\r\n".encode()


SIGNED_API = """
[[api]]
name = "orders"
methods = ["GET"]
path = "/orders/*"
auth = "app"
apps = ["shop"]
backend = { type = "vpc", authorization = "to-a" }
"""


def test_a_request_signed_by_lbproxy_sign_passes_once(start: Start, backend: Backend) -> None:
    runtime = start(access_toml(backend, apis=SIGNED_API))
    raw = signed("/orders/7?b=2&a=1")
    assert request(runtime, raw)[0] == 200
    assert backend.seen[-1].target == "/orders/7?b=2&a=1"
    status, headers, _ = request(runtime, raw)  # the same nonce again: a replay
    assert status == 401 and headers[b"x-ca-error-message"] == b"nonce reused"


@pytest.mark.parametrize(
    ("make", "status", "message"),
    [
        (lambda: signed("/orders/1", key="404"), 401, b"unknown X-Ca-Key"),
        (lambda: signed("/orders/1", secret="wrong"), 401, b"signature mismatch"),
        (lambda: signed("/orders/1", key="999", secret="other-secret"), 403, b"app not granted"),
        (lambda: b"GET /orders/1 HTTP/1.1\r\nHost: x\r\n\r\n", 401, b"missing X-Ca-Key"),
    ],
)
def test_signature_failures_name_their_cause(
    start: Start, backend: Backend, make: Callable[[], bytes], status: int, message: bytes
) -> None:
    runtime = start(access_toml(backend, apis=SIGNED_API))
    got, headers, _ = request(runtime, make())
    assert (got, headers[b"x-ca-error-message"]) == (status, message)
    assert backend.seen == []


def test_debug_mode_returns_the_string_to_sign(start: Start, backend: Backend) -> None:
    runtime = start(access_toml(backend, apis=SIGNED_API))
    raw = signed("/orders/1", ["X-Ca-Request-Mode: debug"], secret="wrong")
    status, headers, _ = request(runtime, raw)
    assert status == 401
    assert headers[b"x-ca-debug-string-to-sign"].startswith(b"GET#")


def test_denied_source_gets_403_even_with_a_forged_forwarded_for(
    start: Start, backend: Backend
) -> None:
    gateway = 'deny = ["127.0.0.66"]\ntrusted_proxies = ["127.0.0.77"]'
    runtime = start(access_toml(backend, gateway=gateway))
    forged = b"GET /open/x HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 8.8.8.8\r\n\r\n"
    status, _, body = request(runtime, forged, source="127.0.0.66")
    assert status == 403 and b"127.0.0.66 is denied by the gateway" in body
    # Through the trusted proxy, the address it forwards is the one judged, both ways.
    via_proxy = forged.replace(b"8.8.8.8", b"127.0.0.66")
    assert request(runtime, via_proxy, source="127.0.0.77")[0] == 403
    assert request(runtime, forged, source="127.0.0.77")[0] == 200
    assert backend.seen[-1].header("x-forwarded-for") == "8.8.8.8, 127.0.0.77"


def test_api_allow_list(start: Start, backend: Backend) -> None:
    api = SIGNED_API.replace('auth = "app"\napps = ["shop"]', 'allow = ["127.0.0.60/31"]')
    runtime = start(access_toml(backend, apis=api))
    raw = b"GET /orders/1 HTTP/1.1\r\nHost: x\r\n\r\n"
    assert request(runtime, raw, source="127.0.0.61")[0] == 200
    status, _, body = request(runtime, raw, source="127.0.0.62")
    assert status == 403 and b"not in the allow list of api `orders`" in body


def test_throttled_api_answers_429_after_its_limit(start: Start, backend: Backend) -> None:
    api = SIGNED_API.replace('auth = "app"\napps = ["shop"]', "rate_limit = { per_minute = 3 }")
    runtime = start(access_toml(backend, apis=api))
    raw = b"GET /orders/1 HTTP/1.1\r\nHost: x\r\n\r\n"
    assert [request(runtime, raw)[0] for _ in range(3)] == [200, 200, 200]
    status, headers, body = request(runtime, raw)
    assert status == 429 and b"rate_limited" in body
    assert int(headers[b"retry-after"]) >= 1
    assert request(runtime, b"GET /open/1 HTTP/1.1\r\nHost: x\r\n\r\n")[0] == 200  # other APIs


def test_https_listener_with_a_trustme_certificate(
    start: Start, backend: Backend, tmp_path: Path
) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    tls = (
        f'[[gateway.tls]]\nlisten = "127.0.0.1:0"\n'
        f'cert_file = "{cert_file}"\nkey_file = "{key_file}"'
    )
    runtime = start(access_toml(backend).replace("[[vpc]]", f"{tls}\n\n[[vpc]]", 1))
    address = runtime.addresses[-1]
    context = ssl.create_default_context()
    ca.configure_trust(context)
    with (
        socket.create_connection(address, timeout=10) as raw_sock,
        context.wrap_socket(raw_sock, server_hostname="127.0.0.1") as sock,
    ):
        assert sock.version() in ("TLSv1.2", "TLSv1.3")
        client = Client(sock)
        client.send(b"GET /open/x HTTP/1.1\r\nHost: x\r\n\r\n")
        assert client.response()[0].status_code == 200
    assert backend.seen[-1].header("x-forwarded-proto") == "https"


def http_api(authority: str) -> str:
    return f"""
[[api]]
name = "status"
methods = ["GET"]
path = "/status"
backend = {{ type = "http", url = "http://{authority}/v1" }}
"""


def test_http_backend_is_judged_after_dns(start: Start, backend: Backend, lt: LoopThread) -> None:
    public = Backend("p", host="127.0.0.100")
    lt.run(public.start())
    try:
        runtime = start(access_toml(backend, apis=http_api(f"localhost:{public.port}")))
        status, _, body = request(runtime, b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 502 and b"upstream_not_authorized" in body
        assert b"localhost resolves only to refused addresses" in body
        assert public.seen == []
    finally:
        lt.run(public.stop())


def test_http_backend_allowed_range_base_path_and_egress_source(
    start: Start, backend: Backend, lt: LoopThread
) -> None:
    public = Backend("p", host="127.0.0.100")
    lt.run(public.start())
    try:
        gateway = 'http_backend_allow = ["127.0.0.100/32"]\negress_source = "127.0.0.9"'
        api = http_api(f"127.0.0.100:{public.port}")
        runtime = start(access_toml(backend, gateway=gateway, apis=api))
        status, _, _ = request(runtime, b"GET /status?x=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 200
        seen = public.seen[-1]
        assert seen.target == "/v1/status?x=1"
        assert seen.header("host") == f"127.0.0.100:{public.port}"
        assert public.peers[-1] == "127.0.0.9"
    finally:
        lt.run(public.stop())


def admin_call(runtime: Runtime, method: str, path: str, body: object, token: str) -> int:
    assert runtime.admin is not None and runtime.admin.address is not None
    data = json.dumps(body).encode()
    with socket.create_connection(runtime.admin.address, timeout=10) as sock:
        sock.sendall(
            f"{method} {path} HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
            + data
        )
        return int(sock.recv(65536)[9:12])


def test_runtime_authorization_change_survives_a_restart(
    start: Start, backend: Backend, lt: LoopThread
) -> None:
    other = Backend("b", host="127.0.0.52")
    lt.run(other.start())
    try:
        gateway = 'admin_listen = "127.0.0.1:0"\nadmin_token = "tok"\nstate_file = "state.json"'
        extra = '[[instance]]\nid = "i-b"\nvpc = "vpc-t"\nip = "127.0.0.52"\n'
        text = access_toml(backend, gateway=gateway, extra=extra)
        runtime = start(text)
        change = {"vpc": "vpc-t", "target": "i-b", "port": other.port}
        assert admin_call(runtime, "PUT", "/admin/authorizations/to-a", change, "wrong") == 401
        assert admin_call(runtime, "PUT", "/admin/authorizations/to-a", change, "tok") == 200
        raw = b"GET /open/x HTTP/1.1\r\nHost: x\r\n\r\n"
        assert request(runtime, raw)[0] == 200 and len(other.seen) == 1  # the next request
        lt.run(runtime.stop(timeout=2.0))
        restarted = start(text)  # the same file: the state file's list wins
        assert request(restarted, raw)[0] == 200 and len(other.seen) == 2
        assert len(backend.seen) == 0
    finally:
        lt.run(other.stop())


def test_a_change_leaves_requests_in_flight_on_their_route(start: Start, lt: LoopThread) -> None:
    async def slow(seen: Seen, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.5)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow")
        return True

    first = Backend("a", handler=slow, host="127.0.0.53")
    other = Backend("b", host="127.0.0.54")
    for b in (first, other):
        lt.run(b.start())
    try:
        gateway = 'admin_listen = "127.0.0.1:0"\nadmin_token = "tok"\nstate_file = "s.json"'
        extra = '[[instance]]\nid = "i-b"\nvpc = "vpc-t"\nip = "127.0.0.54"\n'
        runtime = start(access_toml(first, gateway=gateway, extra=extra))
        sock = socket.create_connection(runtime.addresses[0], timeout=10)
        in_flight = Client(sock)
        in_flight.send(b"GET /open/x HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.1)  # the request reached the slow server
        change = {"vpc": "vpc-t", "target": "i-b", "port": other.port}
        assert admin_call(runtime, "PUT", "/admin/authorizations/to-a", change, "tok") == 200
        response, body = in_flight.response()
        assert (response.status_code, body) == (200, b"slow")  # finished where it started
        in_flight.send(b"GET /open/x HTTP/1.1\r\nHost: x\r\n\r\n")
        assert in_flight.response()[0].status_code == 200
        in_flight.close()
        assert len(other.seen) == 1  # the next request took the new authorization
    finally:
        for b in (first, other):
            lt.run(b.stop())
