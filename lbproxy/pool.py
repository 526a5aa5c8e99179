"""Upstream connection pools, one per server: keep-alive reuse and idle expiry.

The bookkeeping is pure (``ServerPool`` takes ``now`` and returns what to close); the caller
closes transports (``take`` closes the stale idle connections it pops, since it is already
holding them). Every connection is opened through ``upstream.open_connection`` and every reuse
goes through ``PoolSet.take_idle``, and both ask the reachability entry first: that is the
authorization gate, whatever part of lbproxy asked for the connection.
"""

from __future__ import annotations

import ssl
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from lbproxy.authz import Endpoint, Reach, public_address_problem
from lbproxy.config import IPAddress, IPNetwork, PoolLimits
from lbproxy.errors import UpstreamNotAuthorized


@dataclass(frozen=True, slots=True, eq=False)
class UpstreamTLS:
    """How an authorization's connections are wrapped in TLS. Compared by identity: it is part
    of a pool's key, so a connection is only ever reused under the TLS settings that verified
    it (never a plain one for a TLS route, nor one checked against another name or CA)."""

    context: ssl.SSLContext
    server_hostname: str | None


@dataclass(frozen=True, slots=True, eq=False)
class PublicOnly:
    """The gate of an http/https backend, whose name is resolved at connect time: every address
    it resolves to is judged (``authz.public_address_problem``) before a connect, so DNS can
    never lead the gateway into a private network."""

    vpc_cidrs: tuple[IPNetwork, ...]
    allowed: tuple[IPNetwork, ...]

    def problem(self, ip: IPAddress) -> str | None:
        return public_address_problem(ip, self.vpc_cidrs, self.allowed)


class PooledConnection(Protocol):
    idle_since: float

    def is_usable(self) -> bool: ...

    def close(self) -> None: ...


class ServerPool:
    """Connections to one server: the idle ones (most recently used first), counts of the
    active and opening ones, and the requests waiting for a connection when ``max_connections``
    are all in use. Waiters are the caller's opaque objects (futures), kept in arrival order."""

    __slots__ = (
        "_idle",
        "active",
        "endpoint",
        "idle_timeout",
        "max_connections",
        "max_idle",
        "opening",
        "waiters",
    )

    def __init__(
        self,
        endpoint: Endpoint,
        max_idle: int,
        idle_timeout: float,
        max_connections: int | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self._idle: list[PooledConnection] = []
        self.active = 0
        self.opening = 0
        self.waiters: deque[object] = deque()

    def take(self) -> PooledConnection | None:
        """An idle connection that can carry a request now, or None (open a new one). Expiry
        is the sweeper's job (``expired``), which keeps the clock off this hot path."""
        idle = self._idle
        while idle:
            conn = idle.pop()
            if conn.is_usable():
                self.active += 1
                return conn
            conn.close()
        return None

    def is_full(self) -> bool:
        limit = self.max_connections
        return limit is not None and self.active + self.opening + len(self._idle) >= limit

    def reserve(self) -> bool:
        """Count a connection about to be opened; False when the limit is reached or requests
        already wait (they come first)."""
        if self.waiters or self.is_full():
            return False
        self.opening += 1
        return True

    def opened(self, reserved: bool = False) -> None:
        """A connection is open and active (``reserved``: it was counted by ``reserve``)."""
        if reserved:
            self.opening -= 1
        self.active += 1

    def unreserve(self) -> None:
        """A reserved open failed or was given up."""
        self.opening -= 1

    def next_waiter(self) -> object | None:
        """The first waiting request, to be handed a connection that is being released."""
        return self.waiters.popleft() if self.waiters else None

    def wake_for_slot(self) -> object | None:
        """Room was made (a connection closed): the first waiting request may open one, and
        is counted as opening."""
        if self.waiters and not self.is_full():
            self.opening += 1
            return self.waiters.popleft()
        return None

    def put(self, conn: PooledConnection, now: float) -> bool:
        """Return ``conn``, which the caller found usable, after a clean exchange; False means
        the caller must close it."""
        self.active -= 1
        if len(self._idle) >= self.max_idle:
            return False
        conn.idle_since = now
        self._idle.append(conn)
        return True

    def discard(self, conn: PooledConnection) -> None:
        """An active connection is gone (error, close): it no longer counts."""
        del conn  # active connections are counted, not listed
        self.active -= 1

    def forget_idle(self, conn: PooledConnection) -> bool:
        """An idle connection closed by the server; True if it was counted here."""
        if conn in self._idle:
            self._idle.remove(conn)
            return True
        return False

    def expired(self, now: float) -> list[PooledConnection]:
        """Remove and return the idle connections past ``idle_timeout``."""
        keep = [c for c in self._idle if now - c.idle_since < self.idle_timeout]
        gone = [c for c in self._idle if now - c.idle_since >= self.idle_timeout]
        self._idle = keep
        return gone

    def drain(self) -> list[PooledConnection]:
        idle, self._idle = self._idle, []
        return idle

    def idle_count(self) -> int:
        return len(self._idle)

    def __repr__(self) -> str:
        state = f"{self.active} active, {len(self._idle)} idle"
        if self.opening:
            state += f", {self.opening} opening"
        if self.waiters:
            state += f", {len(self.waiters)} waiting"
        if self.max_connections is not None:
            state += f", max {self.max_connections}"
        return f"<ServerPool {self.endpoint} [{state}]>"


class PoolSet:
    """Every server's pool, keyed by address, shared by every route that reaches the server."""

    __slots__ = ("_idle_timeout", "_max_idle", "_pools")

    def __init__(self, max_idle: int, idle_timeout: float) -> None:
        self._pools: dict[tuple[str, int, UpstreamTLS | None], ServerPool] = {}
        self._max_idle = max_idle
        self._idle_timeout = idle_timeout

    def pool(
        self, endpoint: Endpoint, tls: UpstreamTLS | None = None, limits: PoolLimits | None = None
    ) -> ServerPool:
        """The server's pool, made on first use with ``limits`` (a listener's ``pool``) or the
        gateway's defaults. A server behind two listeners keeps the first one's limits."""
        key = (endpoint.ip, endpoint.port, tls)
        pool = self._pools.get(key)
        if pool is None:
            if limits is None:
                pool = ServerPool(endpoint, self._max_idle, self._idle_timeout)
            else:
                pool = ServerPool(
                    endpoint, limits.max_idle, limits.idle_timeout, limits.max_connections
                )
            self._pools[key] = pool
        return pool

    def take_idle(
        self, reach: Reach, endpoint: Endpoint, tls: UpstreamTLS | None = None
    ) -> PooledConnection | None:
        """Gate, then reuse; raises ``UpstreamNotAuthorized`` outside the table."""
        if (endpoint.ip, endpoint.port) not in reach.allowed:
            check_gate(reach, endpoint)
        pool = self._pools.get((endpoint.ip, endpoint.port, tls))
        return pool.take() if pool is not None else None

    def expired(self, now: float) -> list[PooledConnection]:
        return [c for pool in self._pools.values() for c in pool.expired(now)]

    def pools_of(self, endpoint: Endpoint) -> list[ServerPool]:
        """The server's pools made so far (one per TLS setting it is reached with), for status
        pages; unlike ``pool``, makes none."""
        where = (endpoint.ip, endpoint.port)
        return [pool for (ip, port, _), pool in self._pools.items() if (ip, port) == where]

    def counts(self) -> dict[str, tuple[int, int]]:
        """Connections in use and idle by server address ``ip:port`` (TLS settings summed),
        for metrics."""
        counts: dict[str, tuple[int, int]] = {}
        for (ip, port, _), pool in self._pools.items():
            address = f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"
            active, idle = counts.get(address, (0, 0))
            counts[address] = (active + pool.active, idle + pool.idle_count())
        return counts

    def drain(self) -> list[PooledConnection]:
        return [c for pool in self._pools.values() for c in pool.drain()]


def check_gate(reach: Reach, endpoint: Endpoint) -> None:
    if not reach.permits(endpoint.ip, endpoint.port):
        raise UpstreamNotAuthorized(f"{endpoint} is not reachable through {reach.scope}")
