"""Test scaffolding: an event loop thread, scriptable upstream backends and a gateway built from
TOML, all on 127.0.0.1 with real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import threading
import tomllib
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import h11
import uvloop

from lbproxy.config import Config
from lbproxy.configload import parse_config
from lbproxy.server import Runtime

T = TypeVar("T")


class LoopThread:
    """A uvloop running in a thread; tests stay synchronous and use blocking sockets."""

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], T]) -> T:
        async def wrapper() -> T:
            return fn()

        return self.run(wrapper())

    def close(self) -> None:
        async def cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.sleep(0.1)  # let closed transports finish closing

        self.run(cancel_all())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def full_accept_queue() -> Iterator[int]:
    """The port of a listener whose accept queue is full: further SYNs are dropped, so a
    connect to it hangs until the connector's own timeout."""
    with socket.socket() as stuffed:
        stuffed.bind(("127.0.0.1", 0))
        stuffed.listen(0)
        fillers = []
        try:
            for _ in range(3):
                filler = socket.socket()
                fillers.append(filler)
                filler.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    filler.connect(stuffed.getsockname())
            yield int(stuffed.getsockname()[1])
        finally:
            for filler in fillers:
                filler.close()


@dataclass
class Seen:
    """A request as the backend received it."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    body_size: int
    connection: int

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k == name.lower()]
        return ", ".join(values) if values else None


Handler = Callable[[Seen, asyncio.StreamWriter], Awaitable[bool]]


async def echo(seen: Seen, writer: asyncio.StreamWriter) -> bool:
    """Answer with what was seen as JSON; keep the connection."""
    body = json.dumps(
        {
            "method": seen.method,
            "target": seen.target,
            "body_size": seen.body_size,
            "headers": seen.headers,
        }
    ).encode()
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
        b"X-Backend-Connection: %d\r\n\r\n%b" % (len(body), seen.connection, body)
    )
    return True


@dataclass
class Backend:
    """An upstream server with a scriptable handler; records every byte it receives."""

    name: str
    handler: Handler = echo
    keep_body: bool = True
    host: str = "127.0.0.1"
    port: int = 0
    raw: bytearray = field(default_factory=bytearray)
    seen: list[Seen] = field(default_factory=list)
    connections: int = 0
    server: asyncio.Server | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    # Stop reading for a second once this many bytes arrived: a slow upstream (flow control).
    stall_at: int | None = None
    received: int = 0
    tls: ssl.SSLContext | None = None  # serve HTTPS with this server context
    peers: list[str] = field(default_factory=list)  # each connection's source address

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, self.host, self.port, ssl=self.tls)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.peers.append(str(writer.get_extra_info("peername")[0]))
        number = self.connections
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                seen = await self._read_request(reader, conn, number)
                if seen is None:
                    break
                keep = await self.handler(seen, writer)
                await writer.drain()
                if not keep or conn.their_state is not h11.DONE:
                    break
                # The handler wrote raw bytes, so h11's own server half is completed by hand.
                conn.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
                conn.send(h11.EndOfMessage())
                if conn.our_state is not h11.DONE:
                    break
                conn.start_next_cycle()
        except (ConnectionError, h11.ProtocolError):
            pass
        finally:
            self.tasks.discard(task)
            writer.close()

    async def _read_request(
        self, reader: asyncio.StreamReader, conn: h11.Connection, number: int
    ) -> Seen | None:
        request: h11.Request | None = None
        body = bytearray()
        size = 0
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if self.stall_at is not None and self.received >= self.stall_at:
                    self.stall_at = None
                    await asyncio.sleep(1.0)
                data = await reader.read(65536)
                self.received += len(data)
                self.raw += data if len(self.raw) < 1 << 20 else b""
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if self.keep_body:
                    body += event.data
            elif isinstance(event, h11.EndOfMessage) and request is not None:
                headers = [(k.decode(), v.decode("latin-1")) for k, v in request.headers]
                seen = Seen(
                    request.method.decode(),
                    request.target.decode("latin-1"),
                    headers,
                    bytes(body),
                    size,
                    number,
                )
                self.seen.append(seen)
                return seen
            else:
                return None


def gateway_toml(
    backends: list[Backend],
    lb_port: int,
    engine: str = "httptools",
    *,
    weights: list[int] | None = None,
    extra_api: str = "",
    timeout: float = 5.0,
    gateway_extra: str = "",
) -> str:
    """A config: backends behind an internal LB (weights), an API `/api/*` through it, and an
    API `/direct/*` straight to the first backend's instance."""
    weights = weights or [1] * len(backends)
    instances = "".join(
        f'[[instance]]\nid = "i-{b.name}"\nvpc = "vpc-t"\nip = "{b.host}"\n\n' for b in backends
    )
    servers = ", ".join(
        f'{{ instance = "i-{b.name}", port = {b.port}, weight = {w} }}'
        for b, w in zip(backends, weights, strict=True)
    )
    first = backends[0]
    return f"""
[gateway]
region = "test-region"
listen = ["127.0.0.1:0"]
http_parser = "{engine}"
client_header_timeout = 2.0
{gateway_extra}

[[vpc]]
id = "vpc-t"
region = "test-region"
cidrs = ["127.0.0.0/8"]

{instances}
[[load_balancer]]
id = "lb-t"
vpc = "vpc-t"
ip = "127.0.0.1"
[[load_balancer.listener]]
port = {lb_port}
servers = [{servers}]

[[authorization]]
name = "to-lb"
vpc = "vpc-t"
target = "lb-t"
port = {lb_port}
host = "svc.internal"

[[authorization]]
name = "to-first"
vpc = "vpc-t"
target = "i-{first.name}"
port = {first.port}

[[api]]
name = "api"
methods = ["GET", "HEAD", "POST", "PUT", "DELETE"]
path = "/api/*"
backend = {{ type = "vpc", authorization = "to-lb", timeout = {timeout} }}

[[api]]
name = "direct"
methods = ["ANY"]
path = "/direct/*"
backend = {{ type = "vpc", authorization = "to-first", timeout = {timeout} }}
{extra_api}
"""


def config_from(text: str) -> Config:
    return parse_config(tomllib.loads(text), "test.toml")


class Gateway:
    def __init__(self, lt: LoopThread, config: Config) -> None:
        self.lt = lt
        self.runtime = Runtime(config)
        lt.run(self.runtime.start())
        self.host, self.port = self.runtime.addresses[0]

    def stop(self) -> None:
        self.lt.run(self.runtime.stop(timeout=2.0))

    def connect(self, timeout: float = 10.0) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout=timeout)


def read_response(sock: socket.socket, method: str = "GET") -> tuple[h11.Response, bytes]:
    """Read exactly one response from ``sock`` (h11 as the strict reference client)."""
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
    conn.send(h11.EndOfMessage())
    return _read_with(conn, sock)


class Client:
    """A keep-alive client connection that reads responses strictly, one after another."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self, method: str = "GET") -> tuple[h11.Response, bytes]:
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
        conn.send(h11.EndOfMessage())
        if self._buffer:  # h11 takes an empty receive as end of stream
            conn.receive_data(self._buffer)
        self._buffer = b""
        response, body = _read_with(conn, self.sock)
        self._buffer = bytes(conn.trailing_data[0])
        return response, body

    def close(self) -> None:
        self.sock.close()


def _read_with(conn: h11.Connection, sock: socket.socket) -> tuple[h11.Response, bytes]:
    response: h11.Response | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(sock.recv(65536))
            continue
        if isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            assert response is not None, "connection closed before a response"
            return response, bytes(body)


def header(response: h11.Response, name: str) -> str | None:
    for k, v in response.headers:
        if k == name.lower().encode():
            return str(v.decode("latin-1"))
    return None
