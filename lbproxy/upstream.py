"""The upstream side of the relay: one keep-alive connection to one server.

It parses responses with the configured engine and hands every event to the client connection
it currently serves (``client``); between exchanges it sits idle in its server's pool. Any byte
arriving while idle, a protocol error or an early close makes it unusable, so it is never
reused in a state where a response could be attributed to the wrong request.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from typing import TYPE_CHECKING, Protocol, cast

from lbproxy.authz import Endpoint, Reach
from lbproxy.config import PoolLimits
from lbproxy.errors import (
    GatewayTimeout,
    HTTPError,
    ServiceUnavailable,
    UpstreamClosed,
    UpstreamConnectFailed,
    UpstreamNotAuthorized,
)
from lbproxy.http import ResponseSink, response_parser
from lbproxy.pool import PoolSet, PublicOnly, ServerPool, UpstreamTLS, check_gate

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger("lbproxy.upstream")


class UpstreamClient(ResponseSink, Protocol):
    """What an upstream connection serves: the client connection. Its parser delivers response
    events to the client directly (one call less per event on the hot path)."""

    wbuf: list[bytes]  # response bytes not yet written to the client

    def on_upstream_error(self, error: HTTPError) -> None: ...
    def on_upstream_progress(self) -> None: ...
    def flush(self) -> None: ...
    def pause_client_reading(self) -> None: ...
    def resume_client_reading(self) -> None: ...


class UpstreamConnection:
    __slots__ = (
        "_feeding",
        "_keep_alive",
        "_loop",
        "_parser",
        "_released",
        "answered",
        "client",
        "exchanges",
        "idle_since",
        "pool",
        "transport",
    )

    def __init__(self, pool: ServerPool, engine: str, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self._loop = loop
        self._parser = response_parser(engine)
        self.transport: asyncio.Transport | None = None
        self.client: UpstreamClient | None = None
        self.idle_since = 0.0
        self._keep_alive = True
        self._feeding = False
        self._released: bool | None = None
        self.exchanges = 0  # requests sent on this connection; above 1, it was reused
        self.answered = False  # a byte of the current exchange's response arrived

    def __repr__(self) -> str:
        state = "closed" if self.transport is None else "active" if self.client else "idle"
        return f"<UpstreamConnection {self.pool.endpoint} {state}>"

    # -- pool interface -------------------------------------------------------------------

    def is_usable(self) -> bool:
        return self._keep_alive and self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        self._keep_alive = False
        if self.transport is not None:
            self.transport.close()

    # -- exchange ---------------------------------------------------------------------------

    def send(self, client: UpstreamClient, method: bytes, data: bytes, paused: bool) -> None:
        """Start an exchange for ``client``: the request head (and any body bytes so far);
        ``paused`` when the client cannot take response bytes yet (flow control)."""
        self.client = client
        self.exchanges += 1
        self.answered = False
        self._parser.expect(method, client)
        transport = self.transport
        assert transport is not None
        if paused:
            transport.pause_reading()
        transport.write(data)

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def abandon(self) -> None:
        """The client gave up mid-exchange: this connection's state is unknown, close it."""
        if self.client is not None:
            self.client = None
            self.pool.discard(self)
            free_slot(self.pool)
        self.close()

    def _finish(self, reusable: bool) -> None:
        transport = self.transport
        # Unsent request bytes (the server answered before reading the whole body) would be
        # sent ahead of the next client's request, and their flow control is another's.
        if not (reusable and self._keep_alive and transport is not None) or (
            transport.is_closing() or transport.get_write_buffer_size()
        ):
            self.pool.discard(self)
            free_slot(self.pool)
            self.close()
            return
        # The client may have paused our reading for flow control; an idle connection must
        # read, to notice the server closing it.
        transport.resume_reading()
        pool = self.pool
        if pool.waiters and _hand_over(pool, self):
            return  # straight to a request that waited for a connection: it stays active
        if not pool.put(self, self._loop.time()):
            self.close()  # the pool is full (put has already stopped counting it)

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.client is None:
            # Nothing was asked: a server speaking out of turn cannot be trusted with a request.
            self._keep_alive = False
            self.close()
            return
        client = self.client
        self.answered = True
        self._feeding = True
        try:
            self._parser.feed(data)
        except HTTPError as exc:
            self._feeding = False
            self._released = None
            self._fail(exc)
            return
        self._feeding = False
        if client.wbuf:  # skip the call in the common case: the response ended and was flushed
            client.flush()
        if self.client is client:
            client.on_upstream_progress()
        released = self._released
        if released is not None:
            # Only now: a pooled connection handed to a pipelined request inside the feed
            # could otherwise receive the rest of this read as its response.
            self._released = None
            self._finish(released)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._keep_alive = False
        client = self.client
        if client is None:
            if self.pool.forget_idle(self):
                free_slot(self.pool)
            return
        if exc is not None:
            # A reset is not an end: a close-delimited body cut by it must not look complete.
            self._fail(UpstreamClosed(f"upstream connection lost: {exc}"))
            return
        try:
            self._parser.feed_eof()
        except HTTPError as error:
            self._fail(error)

    def pause_writing(self) -> None:
        if self.client is not None:
            self.client.pause_client_reading()

    def resume_writing(self) -> None:
        if self.client is not None:
            self.client.resume_client_reading()

    def release(self, reusable: bool) -> None:
        """The client is done with this exchange; ``reusable`` when both messages ended
        cleanly and the response allowed keep-alive."""
        self.client = None
        if self._feeding:
            self._released = reusable
        else:
            self._finish(reusable)

    def _fail(self, error: HTTPError) -> None:
        client = self.client
        self._keep_alive = False
        self.client = None
        self.pool.discard(self)
        free_slot(self.pool)
        if client is not None:
            client.on_upstream_error(error)
        self.close()


def _hand_over(pool: ServerPool, conn: UpstreamConnection) -> bool:
    """Give ``conn`` to the first request still waiting for one; False if none is left."""
    while (waiter := pool.next_waiter()) is not None:
        future: asyncio.Future[UpstreamConnection | None] = waiter  # type: ignore[assignment]
        if not future.done():  # a waiter that timed out may not have left the queue yet
            future.set_result(conn)
            return True
    return False


def free_slot(pool: ServerPool) -> None:
    """A connection closed: the first waiting request may open one in its place."""
    while (waiter := pool.wake_for_slot()) is not None:
        future: asyncio.Future[UpstreamConnection | None] = waiter  # type: ignore[assignment]
        if not future.done():
            future.set_result(None)
            return
        pool.unreserve()


async def _wait_for_connection(pool: ServerPool, limits: PoolLimits) -> UpstreamConnection | None:
    """Queue for a connection of a full pool: one handed over, or None for a reserved slot."""
    if len(pool.waiters) >= limits.max_queue:
        raise ServiceUnavailable(
            f"{pool.endpoint}: all {pool.max_connections} connections busy "
            f"and {len(pool.waiters)} requests queued"
        )
    future: asyncio.Future[UpstreamConnection | None] = asyncio.get_running_loop().create_future()
    pool.waiters.append(future)
    taken = False
    try:
        async with asyncio.timeout(limits.queue_timeout):
            handed = await future
            taken = True
            return handed
    except TimeoutError:
        raise ServiceUnavailable(
            f"{pool.endpoint}: no connection free within {limits.queue_timeout:g}s "
            f"(max_connections = {pool.max_connections})"
        ) from None
    finally:
        if future in pool.waiters:
            pool.waiters.remove(future)
        if not taken and future.done() and not future.cancelled():
            # Handed a connection (or a slot) just as the wait ended: pass it on.
            _give_back(pool, future.result())


def _give_back(pool: ServerPool, handed: UpstreamConnection | None) -> None:
    """What a cancelled waiter was given goes to the next one (or back to the pool)."""
    if handed is None:
        pool.unreserve()
        free_slot(pool)
    else:
        handed.release(reusable=True)


async def open_connection(
    pools: PoolSet,
    reach: Reach,
    endpoint: Endpoint,
    engine: str,
    timeout: float,
    *,
    tls: UpstreamTLS | None = None,
    limits: PoolLimits | None = None,
    public_only: PublicOnly | None = None,
    source: str | None = None,
) -> UpstreamConnection:
    """A new connection to ``endpoint`` (or, when the server's pool is at max_connections, the
    first one released while this request queued). The gate is asked first, whoever asks;
    with ``tls`` the handshake (certificate and name verified) is part of the connect."""
    check_gate(reach, endpoint)
    loop = asyncio.get_running_loop()
    pool = pools.pool(endpoint, tls, limits)
    if not pool.reserve():
        handed = await _wait_for_connection(pool, limits or PoolLimits())
        if handed is not None:
            return handed
    # asyncio calls a protocol's methods by name; UpstreamConnection does not inherit
    # asyncio.Protocol, so that mypyc compiles it as a native class (setup.py).
    factory = cast("Callable[[], asyncio.Protocol]", lambda: UpstreamConnection(pool, engine, loop))
    local = None if source is None else (source, 0)
    try:
        async with asyncio.timeout(timeout):
            address = endpoint.ip
            if public_only is not None:
                address = await _public_address(loop, endpoint, public_only)
            if tls is None:
                _, conn = await loop.create_connection(
                    factory, address, endpoint.port, local_addr=local
                )
            else:
                _, conn = await loop.create_connection(
                    factory,
                    address,
                    endpoint.port,
                    ssl=tls.context,
                    server_hostname=tls.server_hostname,
                    local_addr=local,
                )
    except BaseException as exc:
        pool.unreserve()
        free_slot(pool)
        if isinstance(exc, UpstreamNotAuthorized):
            raise  # the relay answers 502 and logs it, as for any refusal of the gate
        if isinstance(exc, TimeoutError):
            raise GatewayTimeout(f"connect to {endpoint} timed out after {timeout:g}s") from None
        if isinstance(exc, OSError):
            raise UpstreamConnectFailed(
                f"connect to {endpoint}: {exc.strerror or exc}", exc.errno
            ) from None
        raise
    pool.opened(reserved=True)
    return cast(UpstreamConnection, conn)


async def _public_address(
    loop: asyncio.AbstractEventLoop, endpoint: Endpoint, policy: PublicOnly
) -> str:
    """The first address ``endpoint``'s name resolves to that ``policy`` allows, checked now,
    at connect time (a name that later resolves into a private network is refused then)."""
    try:
        infos = await loop.getaddrinfo(endpoint.ip, endpoint.port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise UpstreamConnectFailed(f"cannot resolve {endpoint.ip}: {exc}", exc.errno) from None
    problems = []
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).partition("%")[0])
        problem = policy.problem(ip)
        if problem is None:
            return str(ip)
        problems.append(f"{ip}: {problem}")
    raise UpstreamNotAuthorized(
        f"{endpoint.ip} resolves only to refused addresses ({'; '.join(problems)})"
    )
