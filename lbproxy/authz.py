"""Access authorizations resolved into the reachability table, which is also the gate.

Pure: built once from a valid ``Config``. ``lbproxy check`` prints the table, and the code that
opens upstream connections asks ``Reach.permits(ip, port)`` before every connect, so the gateway
can reach exactly what the table shows and nothing else.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from lbproxy.config import Authorization, Config, Listener, LoadBalancer


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One server the gateway may connect to."""

    ip: str
    port: int
    weight: int
    name: str

    def __str__(self) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"{host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Reach:
    """What one authorization (or one load balancer listener) lets the gateway reach."""

    scope: str
    target: str
    host: str | None
    endpoints: tuple[Endpoint, ...]
    allowed: frozenset[tuple[str, int]]
    balanced_by: str | None = None

    def permits(self, ip: str, port: int) -> bool:
        return (ip, port) in self.allowed


def _reach(
    scope: str,
    target: str,
    host: str | None,
    endpoints: tuple[Endpoint, ...],
    balanced_by: str | None = None,
) -> Reach:
    allowed = frozenset((e.ip, e.port) for e in endpoints)
    return Reach(scope, target, host, endpoints, allowed, balanced_by)


def listener_key(lb: LoadBalancer, listener: Listener) -> str:
    return f"{lb.id}:{listener.port}"


def listener_endpoints(config: Config, listener: Listener) -> tuple[Endpoint, ...]:
    endpoints = []
    for server in listener.servers:
        inst = config.instance(server.instance)
        if inst is None:  # impossible in a checked config; the gate must still not guess
            continue
        endpoints.append(Endpoint(str(inst.ip), server.port, server.weight, inst.id))
    return tuple(endpoints)


def _authorization_reach(config: Config, auth: Authorization) -> Reach:
    scope = f"authorization {auth.name}"
    inst = config.instance(auth.target)
    if inst is not None:
        ep = Endpoint(str(inst.ip), auth.port, 1, inst.id)
        return _reach(scope, f"instance {inst.id}", auth.host, (ep,))
    lb = config.load_balancer(auth.target)
    if lb is not None:
        listener = lb.listener(auth.port)
        endpoints = listener_endpoints(config, listener) if listener else ()
        key = f"{lb.id}:{auth.port}"
        return _reach(scope, f"load balancer {key}", auth.host, endpoints, key)
    ip = str(ipaddress.ip_address(auth.target))
    ep = Endpoint(ip, auth.port, 1, ip)
    return _reach(scope, f"ip {auth.target}", auth.host, (ep,))


@dataclass(frozen=True, slots=True)
class ReachabilityTable:
    by_authorization: dict[str, Reach]
    by_listener: dict[str, Reach]

    def rows(self, config: Config) -> list[tuple[str, str, str, str, str, str]]:
        """(api, methods, path, authorization, target, endpoints) for every API."""
        rows = []
        for api in config.apis:
            reach = self.by_authorization[api.backend.authorization]
            eps = ", ".join(str(e) for e in reach.endpoints)
            rows.append(
                (
                    api.name,
                    ",".join(api.methods),
                    api.path,
                    api.backend.authorization,
                    reach.target,
                    eps,
                )
            )
        return rows


def build_reachability(config: Config) -> ReachabilityTable:
    by_auth = {a.name: _authorization_reach(config, a) for a in config.authorizations}
    by_listener = {}
    for lb in config.load_balancers:
        for listener in lb.listeners:
            key = listener_key(lb, listener)
            by_listener[key] = _reach(
                f"listener {key}",
                f"load balancer {key}",
                None,
                listener_endpoints(config, listener),
                key,
            )
    return ReachabilityTable(by_auth, by_listener)


def format_table(config: Config, table: ReachabilityTable) -> str:
    header = ("API", "METHODS", "PATH", "AUTHORIZATION", "TARGET", "REACHES")
    rows = [header, *table.rows(config)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1] for r in rows
    ]
    for key, reach in table.by_listener.items():
        eps = ", ".join(f"{e} (w{e.weight}, {e.name})" for e in reach.endpoints)
        lines.append(f"load balancer listener {key} -> {eps}")
    return "\n".join(line.rstrip() for line in lines)
