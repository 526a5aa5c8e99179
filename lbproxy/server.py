"""A ``Runtime`` built from a ``Config``: the listeners, the routes, the pools, the health
checks, the admin listener, metrics and the access log, started and stopped as one. The daemon
(daemon.py) drives it from the outside: signals, workers, reloads."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lbproxy import status
from lbproxy.accesslog import AccessLog, open_access_log
from lbproxy.admin import AdminServer, AuthorizationsAPI
from lbproxy.authz import listener_key
from lbproxy.checker import HealthChecker
from lbproxy.config import Config, GatewayConfig, HostPort, TlsListener
from lbproxy.errors import ConfigError, StartupError
from lbproxy.exporter import Exporter
from lbproxy.metrics import Stats
from lbproxy.pool import PoolSet
from lbproxy.relay import client_protocol
from lbproxy.routes import RelayContext, Route, RouteTable, ServerGroup, build_routes
from lbproxy.state import Document, read_weights, state_path

log = logging.getLogger("lbproxy.server")
Resolver = Callable[[bytes, bytes], Route]
Listening = Any  # a listening socket as asyncio.Server.sockets has it (a fileno() is enough)
_SWEEP_INTERVAL = 5.0


def admin_token(gateway: GatewayConfig) -> str | None:
    """The admin API's bearer token: ``admin_token``, or the variable ``admin_token_env``."""
    token = gateway.admin_token
    if token is None and gateway.admin_token_env:
        token = os.environ.get(gateway.admin_token_env) or None
    return token


def _server_tls(entry: TlsListener) -> ssl.SSLContext:
    """A listener's TLS: its certificate and key, TLS 1.2 and newer."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(entry.cert_file, entry.key_file)
    except (OSError, ssl.SSLError) as exc:
        where = f"{entry.listen[0]}:{entry.listen[1]}"
        raise StartupError(f"cannot load the certificate for {where}: {exc}") from exc
    return context


def _bind_error(address: HostPort, exc: OSError) -> StartupError:
    where = f"{address[0]}:{address[1]}"
    if exc.errno == errno.EADDRINUSE:
        return StartupError(f"cannot listen on {where}: the port is already in use")
    if exc.errno == errno.EADDRNOTAVAIL:
        return StartupError(f"cannot listen on {where}: no such local address on this machine")
    if exc.errno == errno.EACCES:
        return StartupError(
            f"cannot listen on {where}: permission denied (ports < 1024 need privileges)"
        )
    return StartupError(f"cannot listen on {where}: {exc.strerror or exc}")


class Runtime:
    def __init__(
        self,
        config: Config,
        document: Document | None = None,
        *,
        reuse_port: bool = False,
        exporter: Exporter | None = None,
    ) -> None:
        """``document``: the configuration file as parsed TOML, which the admin API needs to
        validate changes like the file; without it the admin listener is not started.
        ``reuse_port``: bind the listeners with SO_REUSEPORT, so that several worker processes
        can each accept on the same addresses. ``exporter``: the process's metrics, when they
        outlive this runtime (a reload that rebinds starts another); by default its own."""
        self.config = config
        self._reuse_port = reuse_port
        self._document = document
        self.admin: AdminServer | None = None
        self._own_exporter = exporter is None
        self.exporter = exporter if exporter is not None else Exporter(Stats(), lambda: self)
        self.stats = self.exporter.stats
        self.routes: RouteTable = build_routes(config, stats=self.stats)
        gw = config.gateway
        self.pools = PoolSet(gw.upstream_max_idle, gw.upstream_idle_timeout)
        self._servers: list[asyncio.Server] = []
        self._contexts: list[RelayContext] = []
        self._sweeper: asyncio.TimerHandle | None = None
        self.checkers: list[_Checked] = []
        self._stopping: set[asyncio.Task[None]] = set()
        self._api_contexts: list[RelayContext] = []
        self._lb_contexts: dict[HostPort, RelayContext] = {}  # load balancer listeners' own
        self._listening: dict[HostPort, asyncio.Server] = {}
        self._inherit: dict[HostPort, Listening] = {}
        self.addresses: list[HostPort] = []
        self.access_log: AccessLog | None = None
        # Called after the admin API saved a change (authorizations, server weights): the
        # daemon has the other workers read it.
        self.on_change: Callable[[], None] | None = None

    def __repr__(self) -> str:
        conns = sum(len(c.connections) for c in self._contexts)
        return f"<Runtime {len(self._servers)} listeners, {conns} client connections>"

    def _context(self, loop: asyncio.AbstractEventLoop, resolve: Resolver) -> RelayContext:
        gw = self.config.gateway
        ctx = RelayContext(loop, gw, gw.http_parser, self.pools, resolve, stats=self.stats)
        ctx.access_log = self.access_log
        self._contexts.append(ctx)
        return ctx

    def client_connections(self) -> int:
        return sum(len(ctx.connections) for ctx in self._contexts)

    def reopen_logs(self) -> None:
        """SIGUSR1: reopen the access log file (after logrotate moved it)."""
        if self.access_log is not None:
            self.access_log.reopen()

    def apply(self, config: Config) -> None:
        """Take ``config``'s authorizations and APIs for new requests; requests in flight keep
        the routes they started with. Load balancer listeners are not rebound here."""
        routes = build_routes(config, previous=self.routes, stats=self.stats)
        if config.gateway.access_log != self.config.gateway.access_log:
            # StartupError when the new file cannot be opened: nothing was changed yet.
            self._switch_access_log(open_access_log(config.gateway.access_log))
        self.config = config
        self.routes = routes
        for ctx in self._contexts:  # limits and timeouts: for connections accepted from now on
            ctx.gateway = config.gateway
            ctx.engine = config.gateway.http_parser
        for ctx in self._api_contexts:
            ctx.resolve = routes.api_router.match
            ctx.guard = routes.guard
        for lb in config.load_balancers:  # at the addresses bound already (the daemon checks)
            for listener in lb.listeners:
                fixed = self._lb_contexts.get((str(lb.ip), listener.port))
                if fixed is not None:
                    fixed.resolve = _fixed(routes.listener_routes[listener_key(lb, listener)])
        loop = asyncio.get_running_loop()
        self.restore_weights(loop.time())
        live = {id(g) for g in routes.groups.values()}
        for checker in [c for c in self.checkers if id(c.group) not in live]:
            self.checkers.remove(checker)
            task = loop.create_task(checker.checker.stop())
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)
        self._start_checks(loop)

    def _switch_access_log(self, new: AccessLog | None) -> None:
        old, self.access_log = self.access_log, new
        for ctx in self._contexts:
            ctx.access_log = new
        if old is not None:
            old.close(timeout=0)  # its thread writes what is queued, then ends

    def listening(self) -> dict[HostPort, Listening]:
        """The listening sockets by the address the configuration gives them (the admin
        listener's too)."""
        sockets = {address: server.sockets[0] for address, server in self._listening.items()}
        admin = self.admin.listening() if self.admin is not None else None
        if admin is not None and self.config.gateway.admin_listen is not None:
            sockets[self.config.gateway.admin_listen] = admin
        return sockets

    async def start(self, inherit: dict[HostPort, Listening] | None = None) -> None:
        """Bind and serve. ``inherit``: the listening sockets of a runtime this one replaces
        (``listening()``); addresses found there are served on the same socket, so a reload
        that starts a new runtime loses no connection waiting to be accepted."""
        self._inherit = inherit or {}
        loop = asyncio.get_running_loop()
        self.access_log = open_access_log(self.config.gateway.access_log)
        api_ctx = self._context(loop, self.routes.api_router.match)
        api_ctx.guard = self.routes.guard
        self._api_contexts.append(api_ctx)
        try:
            for address in self.config.gateway.listen:
                await self._listen(loop, api_ctx, address)
            if self.config.gateway.tls:
                tls_ctx = self._context(loop, self.routes.api_router.match)
                tls_ctx.guard = self.routes.guard
                tls_ctx.forwarded_proto = b"https"
                self._api_contexts.append(tls_ctx)
                for entry in self.config.gateway.tls:
                    context = _server_tls(entry)
                    await self._listen(loop, tls_ctx, entry.listen, context)
            for lb in self.config.load_balancers:
                for listener in lb.listeners:
                    route = self.routes.listener_routes[listener_key(lb, listener)]
                    ctx = self._context(loop, _fixed(route))
                    self._lb_contexts[(str(lb.ip), listener.port)] = ctx
                    await self._listen(loop, ctx, (str(lb.ip), listener.port))
        except StartupError:
            await self.stop()
            raise
        self._sweeper = loop.call_later(_SWEEP_INTERVAL, self._sweep)
        self.restore_weights(loop.time())
        self._start_checks(loop)
        if self._own_exporter:
            self.exporter.start(loop)
        await self._start_admin()

    def restore_weights(self, now: float | None = None) -> None:
        """The server weights saved by the admin API's actions (state.py), over the configured
        ones; a server without an entry gets its configured weight back (another worker may
        have enabled it)."""
        path = state_path(self.config)
        if path is None:
            return  # runtime changes live in this process only (an in-place reload keeps them)
        now = asyncio.get_running_loop().time() if now is None else now
        try:
            saved = read_weights(path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("server weights not restored: %s", problem)
            return
        for name, group in self.routes.groups.items():
            weights = saved.get(name, {})
            for index, host in enumerate(group.table.hosts):
                weight = weights.get(host.name, host.configured_weight)
                if weight != host.weight:
                    group.table.set_weight(index, weight, now)

    async def _start_admin(self) -> None:
        gw = self.config.gateway
        if gw.admin_listen is None or self._document is None:
            return
        api = AuthorizationsAPI(self, self._document, state_path(self.config), admin_token(gw))
        inherited = self._inherit.get(gw.admin_listen) if gw.admin_listen[1] else None
        self.admin = AdminServer(api, gw.admin_listen, self._reuse_port, inherited)
        self.admin.add(self.exporter.handler())
        self.admin.add(status.handler(self))
        try:
            await self.admin.start()
        except OSError as exc:
            await self.stop()
            raise _bind_error(gw.admin_listen, exc) from exc

    def _start_checks(self, loop: asyncio.AbstractEventLoop) -> None:
        gw = self.config.gateway
        checked = {id(c.group) for c in self.checkers}
        for group in self.routes.groups.values():
            check = group.listener.health_check
            if check is None or group.check_reach is None or id(group) in checked:
                continue
            tls = group.check_tls
            checker = HealthChecker(
                group.name,
                group.endpoints,
                group.check_reach,
                group.board,
                check,
                host_header=group.check_host,
                loop=loop,
                ssl_context=None if tls is None else tls.context,
                stats=group.stats,
                source=None if gw.egress_source is None else str(gw.egress_source),
            )
            checker.start()
            self.checkers.append(_Checked(group, checker))

    async def _listen(
        self,
        loop: asyncio.AbstractEventLoop,
        ctx: RelayContext,
        address: HostPort,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        inherited = self._inherit.get(address) if address[1] else None
        try:
            if inherited is not None:
                # The runtime this one replaces listens here: share its socket (and so its
                # queue of connections not yet accepted), which its close then leaves open.
                sock = socket.socket(fileno=os.dup(inherited.fileno()))
                server = await loop.create_server(
                    client_protocol(ctx), sock=sock, backlog=1024, ssl=tls
                )
            else:
                server = await loop.create_server(
                    client_protocol(ctx),
                    address[0],
                    address[1],
                    reuse_address=True,
                    reuse_port=self._reuse_port,
                    backlog=1024,
                    ssl=tls,
                )
        except OSError as exc:
            raise _bind_error(address, exc) from exc
        self._servers.append(server)
        self._listening[address] = server
        for sock in server.sockets:
            bound = sock.getsockname()
            self.addresses.append((bound[0], bound[1]))
        log.info("listening on %s:%d", *self.addresses[-1])

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        for idle in self.pools.expired(loop.time()):
            idle.close()
        self._sweeper = loop.call_later(_SWEEP_INTERVAL, self._sweep)

    async def stop(self, timeout: float = 5.0, idle_grace: float = 0.0) -> None:
        """Stop accepting, let in-flight exchanges end within ``timeout``, then close all.

        ``idle_grace``: idle keep-alive connections stay open this long (within ``timeout``),
        and a request that comes on one is answered with ``Connection: close``. Closing one at
        once races with a client sending its next request on it, which then gets a reset it
        cannot tell from a failure (HAProxy's idle-close-on-response, for the same reason)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.admin is not None:
            await self.admin.stop()
        for checked in self.checkers:
            await checked.checker.stop()
        self.checkers.clear()
        for server in self._servers:
            server.close()
        for ctx in self._contexts:
            ctx.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        idle_until = loop.time() + min(idle_grace, timeout)
        idle_closed = False
        while any(ctx.connections for ctx in self._contexts) and loop.time() < deadline:
            if not idle_closed and loop.time() >= idle_until:
                idle_closed = True
                for ctx in self._contexts:
                    for conn in list(ctx.connections):
                        conn.shutdown()
                continue
            await asyncio.sleep(0.05)
        for ctx in self._contexts:
            for conn in list(ctx.connections):
                if conn.transport is not None:
                    conn.transport.abort()
        for idle in self.pools.drain():
            idle.close()
        self._servers.clear()
        if self._own_exporter:
            self.exporter.stop()
        if self.access_log is not None:
            # Writes what is queued; a writer stuck on a full pipe does not hold the exit.
            await asyncio.to_thread(self.access_log.close)


@dataclass(frozen=True, slots=True)
class _Checked:
    """A running health checker and the server group it checks."""

    group: ServerGroup
    checker: HealthChecker


def _fixed(route: Route) -> Resolver:
    def resolve(method: bytes, path: bytes) -> Route:
        return route

    return resolve
