"""What a request is relayed to: routes and server groups built from a checked ``Config``."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lbproxy.accesslog import AccessLog
from lbproxy.authz import Endpoint, Reach, ReachabilityTable, build_reachability, listener_key
from lbproxy.balancer import make_scheduler
from lbproxy.checker import note_transitions
from lbproxy.config import Api, Authorization, Config, GatewayConfig, Listener, ServerRef
from lbproxy.guard import Guard, ListenerGuard, build_guards
from lbproxy.health import HealthBoard, Transition
from lbproxy.hosts import Availability, Host, HostTable
from lbproxy.metrics import ApiStats, Stats
from lbproxy.pool import PoolSet, PublicOnly, UpstreamTLS
from lbproxy.retry import RetryBudget
from lbproxy.router import Router

if TYPE_CHECKING:
    from lbproxy.relay import ClientConnection

log = logging.getLogger("lbproxy.health")


class ServerGroup:
    """The servers one route balances over (shared by every route that reaches the same load
    balancer listener): their host table, the scheduler reading it, the health board writing
    it, and the listener's retry policy and budget."""

    __slots__ = (
        "board",
        "budget",
        "check_host",
        "check_reach",
        "check_tls",
        "endpoints",
        "listener",
        "name",
        "pick",
        "stats",
        "table",
    )

    def __init__(
        self,
        name: str,
        endpoints: tuple[Endpoint, ...],
        listener: Listener,
        stats: Stats | None = None,
    ) -> None:
        self.name = name
        self.endpoints = endpoints
        self.listener = listener
        hosts = [
            Host(f"{e.name}:{e.port}", s.weight, s.backup)
            for e, s in zip(endpoints, listener.servers, strict=True)
        ]
        self.table = HostTable(hosts, listener.slow_start)
        # What its servers did, for metrics (kept across reloads by the process's Stats).
        self.stats = (stats or Stats()).group(name, [h.name for h in hosts])
        self.board = HealthBoard(self.table, listener.passive, listener.health_check)
        self.budget = RetryBudget(listener.retry.budget)
        # pick(now, tried=0) -> host index, or None once every server was tried.
        self.pick = make_scheduler(listener.scheduler, self.table).pick
        # How active checks reach the servers: as the first authorization routed here does
        # (its gate entry, Host and TLS), or plainly through the listener's own entry.
        self.check_reach: Reach | None = None
        self.check_host: str | None = None
        self.check_tls: UpstreamTLS | None = None

    def adopt(self, reach: Reach, tls: UpstreamTLS | None) -> None:
        """An API reaches this group through ``reach``; the first one sets how checks go."""
        if self.check_reach is None or (self.check_reach.balanced_by == self.name and reach.host):
            self.check_reach, self.check_host, self.check_tls = reach, reach.host, tls

    def report_success(self, index: int, now: float) -> None:
        self.note(self.board.record_success(index, now))

    def report_failure(self, index: int, reason: str, now: float) -> None:
        self.note(self.board.record_failure(index, reason, now))

    def note(self, transitions: tuple[Transition, ...]) -> None:
        note_transitions(self.name, transitions, self.stats)

    def is_failing_open(self, now: float) -> bool:
        """Every server is down (or ejected): requests try them all anyway."""
        return self.table.availability(now) is Availability.FAIL_OPEN

    def __repr__(self) -> str:
        return f"<ServerGroup {self.name} {self.table!r}>"


def _tls(auth: Authorization, made: dict[str, UpstreamTLS | None]) -> UpstreamTLS | None:
    """The TLS an authorization asks for: verified against ``ca_file`` (or the system's CAs),
    with the authorization's Host as SNI and the name checked (the IP when it has none)."""
    tls = None
    if auth.tls:
        context = ssl.create_default_context(cafile=auth.ca_file)
        tls = UpstreamTLS(context, auth.host)
    made[auth.name] = tls
    return tls


def _http_route(
    api: Api,
    max_body: int,
    public_only: PublicOnly,
    *,
    guard: Guard | None,
    source: str | None,
    stats: Stats,
) -> Route:
    """The route of an http/https backend: one server named by its URL's host, resolved and
    judged at each connect (never a private address unless ``http_backend_allow`` says so)."""
    backend = api.backend
    url = backend.url
    assert url is not None  # a checked config has one for every http/https backend
    scope = f"api {api.name} backend {url}"
    endpoint = Endpoint(url.host, url.port, 1, url.host)
    reach = Reach(scope, str(url), url.authority, (endpoint,), frozenset({(url.host, url.port)}))
    tls = None
    if backend.type == "https":
        context = ssl.create_default_context(cafile=backend.ca_file)
        tls = UpstreamTLS(context, url.host)
    group = ServerGroup(scope, (endpoint,), _single_server(endpoint), stats)
    group.adopt(reach, tls)
    return Route.build(
        api.name,
        reach,
        group,
        host=url.authority.encode(),
        timeout=backend.timeout,
        max_body=max_body,
        tls=tls,
        guard=guard,
        base_path=url.base_path.encode(),
        public_only=public_only,
        source=source,
        stats=stats,
    )


def _single_server(endpoint: Endpoint) -> Listener:
    """The implicit listener of an authorization that names one instance or IP."""
    return Listener(endpoint.port, (ServerRef(endpoint.name, endpoint.port),))


@dataclass(frozen=True, slots=True)
class Route:
    name: str
    reach: Reach
    group: ServerGroup
    host: bytes | None
    timeout: float
    max_body: int
    # How long one try waits for progress: the route's timeout, or the listener's shorter
    # retry.try_timeout.
    try_timeout: float = 0.0
    tls: UpstreamTLS | None = None
    guard: Guard | None = None  # the API's source lists, signatures and limits, if any
    # http/https backends: the URL's base path, put before the request's, and the gate that
    # judges every address the backend's name resolves to at connect time.
    base_path: bytes = b""
    public_only: PublicOnly | None = None
    source: str | None = None  # egress_source: the local address upstream connects bind to
    stats: ApiStats = field(default_factory=lambda: ApiStats(""))

    @classmethod
    def build(
        cls,
        name: str,
        reach: Reach,
        group: ServerGroup,
        *,
        host: bytes | None,
        timeout: float,
        max_body: int,
        tls: UpstreamTLS | None = None,
        guard: Guard | None = None,
        base_path: bytes = b"",
        public_only: PublicOnly | None = None,
        source: str | None = None,
        stats: Stats | None = None,
    ) -> Route:
        per_try = group.listener.retry.try_timeout
        try_timeout = timeout if per_try is None else min(timeout, per_try)
        return cls(
            name,
            reach,
            group,
            host,
            timeout,
            max_body,
            try_timeout,
            tls,
            guard,
            base_path,
            public_only,
            source,
            (stats or Stats()).api(name),
        )


@dataclass(slots=True)
class RelayContext:
    """Shared by every connection of one listener."""

    loop: asyncio.AbstractEventLoop
    gateway: GatewayConfig
    engine: str
    pools: PoolSet
    resolve: Callable[[bytes, bytes], Route]
    connections: set[ClientConnection] = field(default_factory=set)
    # The gateway's source lists and trusted proxies (None: none, and no check per request).
    guard: ListenerGuard | None = None
    forwarded_proto: bytes = b"http"  # https on TLS listeners
    # Set when the runtime stops: answered exchanges end their connection, new requests get 503.
    draining: bool = False
    stats: Stats = field(default_factory=Stats)  # the process's counts, for metrics
    access_log: AccessLog | None = None  # None: off


@dataclass(slots=True)
class RouteTable:
    reachability: ReachabilityTable
    api_router: Router[Route]
    listener_routes: dict[str, Route]
    groups: dict[str, ServerGroup]
    guard: ListenerGuard | None = None


def build_routes(
    config: Config, previous: RouteTable | None = None, stats: Stats | None = None
) -> RouteTable:
    """The routes of ``config``. With ``previous`` (a runtime change), server groups whose
    servers and listener settings are unchanged are kept, with their health and balancing
    state, so a change of authorizations does not forget what health checks learnt. ``stats``:
    the process's counts, which routes and groups count into."""
    stats = stats or Stats()
    table = build_reachability(config)
    groups: dict[str, ServerGroup] = {}
    kept = previous.groups if previous is not None else {}

    def group_for(name: str, endpoints: tuple[Endpoint, ...], listener: Listener) -> ServerGroup:
        old = kept.get(name)
        if old is not None and old.endpoints == endpoints and old.listener == listener:
            return old
        return ServerGroup(name, endpoints, listener, stats)

    gw = config.gateway
    listener_routes = {}
    listeners = {
        listener_key(lb, listener): listener
        for lb in config.load_balancers
        for listener in lb.listeners
    }
    for key, reach in table.by_listener.items():
        groups[key] = group_for(key, reach.endpoints, listeners[key])
        groups[key].check_reach = reach
        listener_routes[key] = Route.build(
            key,
            reach,
            groups[key],
            host=None,
            timeout=gw.upstream_timeout,
            max_body=gw.max_body_size,
            stats=stats,
        )
    api_routes = []
    tls_for: dict[str, UpstreamTLS | None] = {}
    listener_guard, guards = build_guards(config)
    source = str(gw.egress_source) if gw.egress_source is not None else None
    public_only = PublicOnly(config.vpc_cidrs(), gw.http_backend_allow)
    for api in config.apis:
        body = gw.max_body_size if api.max_body_size is None else api.max_body_size
        if not api.backend.is_vpc():
            route = _http_route(
                api, body, public_only, guard=guards.get(api.name), source=source, stats=stats
            )
            groups[route.group.name] = route.group
            api_routes.append((api.methods, api.path, route))
            continue
        reach = table.by_authorization[api.backend.authorization]
        if reach.balanced_by is not None:
            group = groups[reach.balanced_by]
        else:
            (endpoint,) = reach.endpoints
            group = groups.get(reach.scope) or group_for(
                reach.scope, reach.endpoints, _single_server(endpoint)
            )
            groups[reach.scope] = group
        host = reach.host.encode() if reach.host else None
        auth = config.authorization(api.backend.authorization)
        tls = None if auth is None else tls_for.get(auth.name) or _tls(auth, tls_for)
        group.adopt(reach, tls)
        route = Route.build(
            api.name,
            reach,
            group,
            host=host,
            timeout=api.backend.timeout,
            max_body=body,
            tls=tls,
            guard=guards.get(api.name),
            source=source,
            stats=stats,
        )
        api_routes.append((api.methods, api.path, route))
    return RouteTable(table, Router(api_routes), listener_routes, groups, listener_guard)
