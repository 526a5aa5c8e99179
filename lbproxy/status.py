"""The status page and the server actions of the admin listener.

Paths (``handler(runtime)`` answers them; ``AdminServer.add`` registers it):

- ``GET /status``: a JSON snapshot of every load balancer, listener and server: health phase
  and why, the last active checks, configured and current weight, drain, slow-start share,
  ejection, requests in flight and pool state; plus the gateway's version, pid and uptime.
- ``GET /status.html``: the same as a self-contained page (``statuspage``) that refreshes
  itself every 2 s (a reload every 5 s without JavaScript): servers that are down or ejected
  are red rows with the reason, half-open ones amber, drained ones grey.
- ``POST /admin/servers/{listener}/{server}/drain``: weight 0, no new requests; those in
  flight finish.
- ``POST /admin/servers/{listener}/{server}/enable``: back to the configured weight.
- ``PUT /admin/servers/{listener}/{server}/weight`` with ``{"weight": N}``, N in 0..1000.

``{listener}`` is ``lb-id:port`` and ``{server}`` the host name ``instance:port`` as in the
snapshot (percent-encoded or not). The two status paths need no token, like ``/metrics``: they
carry no secret, a browser cannot send a bearer token with a page load, and the admin listener
is loopback by default. (Reads under ``/admin/``, the authorizations, need the token when one
is set.) The actions are writes under ``/admin/``: they need ``Authorization: Bearer
<admin_token>`` exactly as writes of ``/admin/authorizations`` do (401 without it or with a
wrong one, 403 when no token is configured). They answer the listener's availability and the
server's new snapshot entry. With a ``state_file`` they are saved there (state.py), so reloads
and restarts keep them; without one they live in this process only, and a restart, or a reload
that rebuilds the listener, gives every server its configured weight again.

With ``workers`` above 1 every worker process balances on its own and the admin address is
shared (SO_REUSEPORT): the worker that accepts an action saves it and has the supervisor reload
every worker, which reads the saved weights (the daemon's ``on_change``, as for authorization
changes). Without a state file there is nothing to share it through, so the actions are refused
(409) rather than half done. ``/status`` is the view of the worker that answered (its ``pid``;
``workers`` says how many).

Draining every server of a listener is allowed, as HAProxy (``set server ... state drain``)
and nginx (the API's ``drain``) allow it: an operator taking a whole group out for maintenance
means it, and the gateway answers new requests with 503 until a server is enabled. The answer's
``availability`` says ``drained`` then, the page says so in red, and the log has a warning.

Times in the snapshot are Unix seconds; the host table and health board keep ``loop.time()``,
converted here once per snapshot.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from lbproxy import __version__
from lbproxy.admin import AdminError, AdminRequest, Handler, Reply
from lbproxy.authz import listener_key
from lbproxy.configlb import MAX_WEIGHT
from lbproxy.hosts import NEVER, Availability
from lbproxy.routes import ServerGroup
from lbproxy.state import save_weight, state_path
from lbproxy.statuspage import Json, render_page

if TYPE_CHECKING:
    from lbproxy.server import Runtime

log = logging.getLogger("lbproxy.admin")
_ACTION = re.compile(r"^/admin/servers/([^/]+)/([^/]+)/(drain|enable|weight)$")
_ACTION_METHODS = {"drain": "POST", "enable": "POST", "weight": "PUT"}
# This module is imported as the runtime is built, which is close enough to the process start.
_STARTED = time.time()


def _restarted() -> None:
    global _STARTED  # noqa: PLW0603 -- a forked worker's uptime starts with it
    _STARTED = time.time()


os.register_at_fork(after_in_child=_restarted)
_HTML = b"text/html; charset=utf-8"


class _Clock:
    """One snapshot's ``now`` on both clocks, and the conversion between them."""

    __slots__ = ("loop", "wall")

    def __init__(self, loop: float, wall: float) -> None:
        self.loop = loop
        self.wall = wall

    def wall_time(self, at: float) -> float:
        return round(self.wall - (self.loop - at), 3)

    def until(self, at: float) -> float | None:
        """``at`` as wall time if it is still to come, else None."""
        return self.wall_time(at) if at != NEVER and at > self.loop else None


def snapshot(runtime: Runtime, loop_now: float, wall_now: float) -> Json:
    """The ``/status`` document at ``loop_now`` (``loop.time()``) and ``wall_now``."""
    clock = _Clock(loop_now, wall_now)
    balancers = []
    for lb in runtime.config.load_balancers:
        ip = str(lb.ip)
        host = f"[{ip}]" if ":" in ip else ip
        listeners = [
            _listener(
                runtime, runtime.routes.groups[listener_key(lb, lst)], f"{host}:{lst.port}", clock
            )
            for lst in lb.listeners
        ]
        balancers.append(
            {"id": lb.id, "vpc": lb.vpc, "ip": ip, "internal": lb.internal, "listeners": listeners}
        )
    gateway = {
        "version": __version__,
        "pid": os.getpid(),
        "workers": runtime.config.gateway.worker_count(),
        "started_at": round(_STARTED, 3),
        "uptime": round(wall_now - _STARTED, 3),
        "time": round(wall_now, 3),
    }
    return {"gateway": gateway, "load_balancers": balancers}


def _listener(runtime: Runtime, group: ServerGroup, address: str, clock: _Clock) -> Json:
    listener = group.listener
    check = listener.health_check
    return {
        "name": group.name,
        "port": listener.port,
        "address": address,
        "scheduler": listener.scheduler,
        "slow_start": listener.slow_start,
        "health_check": None
        if check is None
        else {
            "type": check.type,
            "path": check.path if check.type == "http" else None,
            "interval": check.interval,
            "timeout": check.timeout,
            "rise": check.rise,
            "fall": check.fall,
        },
        "availability": group.table.availability(clock.loop).value,
        "servers": [_server(runtime, group, i, clock) for i in range(len(group.endpoints))],
    }


def _server(runtime: Runtime, group: ServerGroup, index: int, clock: _Clock) -> Json:
    table, board = group.table, group.board
    host, endpoint = table.hosts[index], group.endpoints[index]
    now = clock.loop
    why = board.why(index)
    pools = runtime.pools.pools_of(endpoint)
    ramp_end = host.ramp_from + table.slow_start if table.slow_start > 0 else NEVER
    return {
        "name": host.name,
        "address": str(endpoint),
        "weight": {"configured": host.configured_weight, "current": host.weight},
        "backup": host.backup,
        "drained": host.is_drained(),
        "available": host.is_available(now),
        "phase": board.phase(index, now),
        "why": None
        if why is None
        else {"event": why.event.value, "reason": why.reason, "at": clock.wall_time(why.at)},
        "checks": [
            {"at": clock.wall_time(c.at), "ok": c.ok, "reason": c.reason}
            for c in board.checks(index)
        ],
        "slow_start": {"share": table.share(host, now), "until": clock.until(ramp_end)},
        "ejected_until": clock.until(host.ejected_until),
        "in_flight": host.in_flight,
        "pool": {
            "active": sum(p.active for p in pools),
            "idle": sum(p.idle_count() for p in pools),
            "opening": sum(p.opening for p in pools),
            "waiting": sum(len(p.waiters) for p in pools),
            # A server behind two listeners has the pool of the first to use it, and its limit.
            "max_connections": pools[0].max_connections
            if pools
            else group.listener.pool.max_connections,
        },
    }


# --- the handler and the server actions ---------------------------------------------------------


def handler(runtime: Runtime) -> Handler:
    """The admin handler of ``/status``, ``/status.html`` and ``/admin/servers/...``."""

    def handle(request: AdminRequest) -> tuple[int, Any] | Reply | None:
        if request.path in ("/status", "/status.html"):
            if request.method not in ("GET", "HEAD"):
                raise AdminError(405, "method_not_allowed", "use GET")
            document = snapshot(runtime, asyncio.get_running_loop().time(), time.time())
            if request.path == "/status":
                return 200, document
            return Reply(200, render_page(document).encode(), _HTML)
        action = _ACTION.match(request.path)
        if action is None:
            return None
        listener, server, verb = action.groups()
        return 200, _act(runtime, request, unquote(listener), unquote(server), verb)

    return handle


def _act(runtime: Runtime, request: AdminRequest, listener: str, server: str, verb: str) -> Json:
    method = _ACTION_METHODS[verb]
    if request.method != method:
        raise AdminError(405, "method_not_allowed", f"use {method} for {verb}")
    # Registered on runtime.admin, so only ever called while it exists.
    assert runtime.admin is not None
    runtime.admin.api.check_token(request.authorization, write=True)
    workers = runtime.config.gateway.worker_count()
    saved_in = state_path(runtime.config)
    if workers > 1 and saved_in is None:
        raise AdminError(
            409,
            "workers",
            f"this gateway runs {workers} workers, each balancing on its own, and this request "
            f"reached one (pid {os.getpid()}); set [gateway] state_file, through which every "
            f"worker takes the change, or run with workers = 1",
        )
    group = _group(runtime, listener)
    index = _host_index(group, server)
    host = group.table.hosts[index]
    if verb == "drain":
        weight = 0
    elif verb == "enable":
        weight = host.configured_weight
        if weight == 0:
            raise AdminError(
                409,
                "configured_drained",
                f"the configuration gives {server} weight 0; PUT a weight to send it requests",
            )
    else:
        weight = _weight(request.body)
    loop_now = asyncio.get_running_loop().time()
    before = host.weight
    if saved_in is not None:
        kept = None if weight == host.configured_weight else weight
        save_weight(saved_in, group.name, host.name, kept)
    group.table.set_weight(index, weight, loop_now)
    availability = group.table.availability(loop_now)
    log.info(
        "%s: %s %s through the admin API: weight %d -> %d (configured %d; %s)",
        group.name,
        host.name,
        verb,
        before,
        weight,
        host.configured_weight,
        "runtime only" if saved_in is None else "saved",
    )
    if saved_in is not None and runtime.on_change is not None:
        runtime.on_change()  # the other workers read it
    if availability is Availability.DRAINED:
        log.warning("%s: every server is drained; new requests get 503", group.name)
    return {
        "listener": group.name,
        "availability": availability.value,
        "server": _server(runtime, group, index, _Clock(loop_now, time.time())),
    }


def _group(runtime: Runtime, name: str) -> ServerGroup:
    keys = [listener_key(lb, lst) for lb in runtime.config.load_balancers for lst in lb.listeners]
    if name not in keys:
        known = ", ".join(f"`{k}`" for k in keys) or "none"
        raise AdminError(
            404, "not_found", f"no load balancer listener `{name}`; listeners: {known}"
        )
    return runtime.routes.groups[name]


def _host_index(group: ServerGroup, name: str) -> int:
    for index, host in enumerate(group.table.hosts):
        if host.name == name:
            return index
    known = ", ".join(f"`{h.name}`" for h in group.table.hosts)
    raise AdminError(404, "not_found", f"no server `{name}` in {group.name}; servers: {known}")


def _weight(body: bytes) -> int:
    try:
        value = json.loads(body or b"null")
    except ValueError as exc:
        raise AdminError(400, "bad_json", f"the body is not JSON: {exc}") from None
    weight = value.get("weight") if isinstance(value, dict) else None
    if type(weight) is not int or not 0 <= weight <= MAX_WEIGHT:
        raise AdminError(
            400, "bad_weight", f'send {{"weight": N}} with N an integer from 0 to {MAX_WEIGHT}'
        )
    return weight
