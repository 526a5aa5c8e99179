"""Access authorizations resolved into the reachability table, which is also the gate.

Pure: built once from a valid ``Config``. ``lbproxy check`` prints the table, and the code that
opens upstream connections asks ``Reach.permits(ip, port)`` before every connect, so the gateway
can reach exactly what the table shows and nothing else.

An http/https backend has no authorization: it may reach public addresses only. Its host is
checked when the configuration is loaded if it is an IP literal, and every address a name
resolves to must be checked again, after resolution and before the connect, with
``public_address_problem(ip, config.vpc_cidrs(), config.gateway.http_backend_allow)``;
checking the name alone would let a DNS answer that changes (rebinding) walk past the gate.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from lbproxy.config import (
    Api,
    Authorization,
    Config,
    IPAddress,
    IPNetwork,
    Listener,
    LoadBalancer,
)

_PRIVATE = tuple(
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


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
            if not api.backend.is_vpc():
                rows.append(_direct_row(api))
                continue
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


def _direct_row(api: Api) -> tuple[str, str, str, str, str, str]:
    url = api.backend.url
    assert url is not None  # an http/https backend of a checked config has its url
    host = f"[{url.host}]" if ":" in url.host else url.host
    reaches = f"{host}:{url.port}"
    if url.ip is None:
        reaches += " (its public addresses, checked at connect)"
    return (api.name, ",".join(api.methods), api.path, "-", f"url {url}", reaches)


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
    lines.append(format_egress(config))
    return "\n".join(line.rstrip() for line in lines)


def format_egress(config: Config) -> str:
    """The line telling operators which source address their backends' security groups must
    allow."""
    source = config.gateway.egress_source
    if source is None:
        return (
            "backends see connections from the gateway host's address toward each backend "
            "(no egress_source set)"
        )
    return (
        f"backends see connections from {source} (gateway.egress_source); allow it in their "
        "security groups"
    )


def public_address_problem(
    ip: IPAddress, vpc_cidrs: Iterable[IPNetwork], allowed: Iterable[IPNetwork]
) -> str | None:
    """Why an http/https backend may not connect to ``ip``, or None when it may.

    Refused: private, loopback, link-local, unspecified, multicast and other addresses that are
    not globally routable, and any address inside ``vpc_cidrs`` (VPC addresses are reached only
    through authorizations), unless ``ip`` is inside ``allowed`` (``http_backend_allow``).
    IPv4-mapped addresses are judged as IPv4; 6to4 and NAT64 (64:ff9b::/96) addresses are also
    judged by the IPv4 address they carry, so no IPv6 spelling of a private address gets through.
    The runtime calls this for every address a backend's name resolves to, before connecting.
    """
    allowed = tuple(allowed)
    vpc_cidrs = tuple(vpc_cidrs)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip in net for net in allowed):
        return None
    inside = _vpc_cidr_of(ip, vpc_cidrs)
    inner = _embedded_ipv4(ip)
    if inside is None and inner is not None and not any(inner in net for net in allowed):
        inside = _vpc_cidr_of(inner, vpc_cidrs)
    if inside is not None:
        return (
            f"{ip} is inside VPC CIDR {inside}; reach VPC addresses with a vpc backend through "
            "an [[authorization]]"
        )
    reason = _not_public_reason(ip)
    if reason is None and inner is not None and not any(inner in net for net in allowed):
        inner_reason = _not_public_reason(inner)
        if inner_reason is not None:
            reason = f"carries the IPv4 address {inner}, which {inner_reason}"
    if reason is None:
        return None
    return (
        f"{ip} {reason}; http/https backends reach public addresses only (a lab may list the "
        "range in gateway.http_backend_allow)"
    )


def _vpc_cidr_of(ip: IPAddress, vpc_cidrs: tuple[IPNetwork, ...]) -> IPNetwork | None:
    return next((net for net in vpc_cidrs if ip in net), None)


def _not_public_reason(ip: IPAddress) -> str | None:
    if ip.is_loopback:
        return "is a loopback address"
    if ip.is_link_local:
        return "is a link-local address"
    if ip.is_unspecified:
        return "is the unspecified address"
    if ip.is_multicast:
        return "is a multicast address"
    if any(ip in net for net in _PRIVATE):
        return "is a private address"
    if not ip.is_global:
        return "is a special-purpose address, not globally routable"
    return None


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    if not isinstance(ip, ipaddress.IPv6Address):
        return None
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None
