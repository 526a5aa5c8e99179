"""Upstream connection pools, one per server: keep-alive reuse and idle expiry.

The bookkeeping is pure (``ServerPool`` takes ``now`` and returns what to close); the caller
closes transports (``take`` closes the stale idle connections it pops, since it is already
holding them). Every connection is opened through ``upstream.open_connection`` and every reuse
goes through ``PoolSet.take_idle``, and both ask the reachability entry first: that is the
authorization gate, whatever part of lbproxy asked for the connection.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Protocol

from lbproxy.authz import Endpoint, Reach
from lbproxy.errors import UpstreamNotAuthorized


@dataclass(frozen=True, slots=True, eq=False)
class UpstreamTLS:
    """How an authorization's connections are wrapped in TLS. Compared by identity: it is part
    of a pool's key, so a connection is only ever reused under the TLS settings that verified
    it (never a plain one for a TLS route, nor one checked against another name or CA)."""

    context: ssl.SSLContext
    server_hostname: str | None


class PooledConnection(Protocol):
    idle_since: float

    def is_usable(self) -> bool: ...

    def close(self) -> None: ...


class ServerPool:
    """Idle keep-alive connections to one server, most recently used first."""

    __slots__ = ("_idle", "active", "endpoint", "idle_timeout", "max_idle")

    def __init__(self, endpoint: Endpoint, max_idle: int, idle_timeout: float) -> None:
        self.endpoint = endpoint
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self._idle: list[PooledConnection] = []
        self.active = 0

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

    def opened(self) -> None:
        self.active += 1

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

    def forget_idle(self, conn: PooledConnection) -> None:
        """An idle connection closed by the server."""
        if conn in self._idle:
            self._idle.remove(conn)

    def expired(self, now: float) -> list[PooledConnection]:
        """Remove and return the idle connections past ``idle_timeout``."""
        keep = [c for c in self._idle if now - c.idle_since < self.idle_timeout]
        gone = [c for c in self._idle if now - c.idle_since >= self.idle_timeout]
        self._idle = keep
        return gone

    def drain(self) -> list[PooledConnection]:
        idle, self._idle = self._idle, []
        return idle

    def __repr__(self) -> str:
        return f"<ServerPool {self.endpoint} [{self.active} active, {len(self._idle)} idle]>"


class PoolSet:
    """Every server's pool, keyed by address, shared by every route that reaches the server."""

    __slots__ = ("_idle_timeout", "_max_idle", "_pools")

    def __init__(self, max_idle: int, idle_timeout: float) -> None:
        self._pools: dict[tuple[str, int, UpstreamTLS | None], ServerPool] = {}
        self._max_idle = max_idle
        self._idle_timeout = idle_timeout

    def pool(self, endpoint: Endpoint, tls: UpstreamTLS | None = None) -> ServerPool:
        key = (endpoint.ip, endpoint.port, tls)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = ServerPool(endpoint, self._max_idle, self._idle_timeout)
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

    def drain(self) -> list[PooledConnection]:
        return [c for pool in self._pools.values() for c in pool.drain()]


def check_gate(reach: Reach, endpoint: Endpoint) -> None:
    if not reach.permits(endpoint.ip, endpoint.port):
        raise UpstreamNotAuthorized(f"{endpoint} is not reachable through {reach.scope}")
