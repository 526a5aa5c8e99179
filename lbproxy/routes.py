"""What a request is relayed to: routes and server groups built from a checked ``Config``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lbproxy.authz import Endpoint, Reach, ReachabilityTable, build_reachability
from lbproxy.balancer import SmoothWeightedRoundRobin
from lbproxy.config import Config, GatewayConfig
from lbproxy.pool import PoolSet
from lbproxy.router import Router

if TYPE_CHECKING:
    from lbproxy.relay import ClientConnection


class ServerGroup:
    """The servers one route balances over, with the balancer's state (shared by every route
    that reaches the same load balancer listener)."""

    __slots__ = ("_balancer", "endpoints", "name")

    def __init__(self, name: str, endpoints: tuple[Endpoint, ...]) -> None:
        self.name = name
        self.endpoints = endpoints
        self._balancer = SmoothWeightedRoundRobin(tuple(e.weight for e in endpoints))

    def pick(self) -> Endpoint:
        return self.endpoints[self._balancer.pick()]

    def __repr__(self) -> str:
        return f"<ServerGroup {self.name} {[str(e) for e in self.endpoints]}>"


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    reach: Reach
    group: ServerGroup
    host: bytes | None
    timeout: float
    max_body: int


@dataclass(slots=True)
class RelayContext:
    """Shared by every connection of one listener."""

    loop: asyncio.AbstractEventLoop
    gateway: GatewayConfig
    engine: str
    pools: PoolSet
    resolve: Callable[[bytes, bytes], Route]
    connections: set[ClientConnection] = field(default_factory=set)
    # Set when the runtime stops: answered exchanges end their connection, new requests get 503.
    draining: bool = False


@dataclass(slots=True)
class RouteTable:
    reachability: ReachabilityTable
    api_router: Router[Route]
    listener_routes: dict[str, Route]
    groups: dict[str, ServerGroup]


def build_routes(config: Config) -> RouteTable:
    table = build_reachability(config)
    groups: dict[str, ServerGroup] = {}
    gw = config.gateway
    listener_routes = {}
    for key, reach in table.by_listener.items():
        groups[key] = ServerGroup(key, reach.endpoints)
        listener_routes[key] = Route(
            key, reach, groups[key], None, gw.upstream_timeout, gw.max_body_size
        )
    api_routes = []
    for api in config.apis:
        reach = table.by_authorization[api.backend.authorization]
        if reach.balanced_by is not None:
            group = groups[reach.balanced_by]
        else:
            group = groups.setdefault(reach.scope, ServerGroup(reach.scope, reach.endpoints))
        host = reach.host.encode() if reach.host else None
        body = gw.max_body_size if api.max_body_size is None else api.max_body_size
        route = Route(api.name, reach, group, host, api.backend.timeout, body)
        api_routes.append((api.methods, api.path, route))
    return RouteTable(table, Router(api_routes), listener_routes, groups)
