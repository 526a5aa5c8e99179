"""The configuration model: frozen dataclasses, built once by ``configload`` and never mutated.

Addresses are ``ipaddress`` objects and listen addresses are ``(host, port)`` tuples, so nothing
downstream parses strings again.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
HostPort = tuple[str, int]

HTTP_PARSERS = ("httptools", "h11")
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE")


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    region: str
    listen: tuple[HostPort, ...]
    admin_listen: HostPort | None = None
    http_parser: str = "httptools"
    client_header_timeout: float = 10.0
    keepalive_timeout: float = 75.0
    connect_timeout: float = 5.0
    # Idle time allowed on an upstream exchange of a load balancer's own listener (an API sets
    # its own in backend.timeout).
    upstream_timeout: float = 60.0
    max_header_size: int = 64 * 1024
    max_body_size: int = 1024**3
    upstream_max_idle: int = 64
    upstream_idle_timeout: float = 60.0


@dataclass(frozen=True, slots=True)
class Vpc:
    id: str
    region: str
    cidrs: tuple[IPNetwork, ...]

    def contains(self, ip: IPAddress) -> bool:
        return any(ip in net for net in self.cidrs)


@dataclass(frozen=True, slots=True)
class Instance:
    id: str
    vpc: str
    ip: IPAddress


@dataclass(frozen=True, slots=True)
class ServerRef:
    """A load balancer listener's server: an instance and the port it serves on."""

    instance: str
    port: int
    weight: int = 1


@dataclass(frozen=True, slots=True)
class Listener:
    port: int
    servers: tuple[ServerRef, ...]


@dataclass(frozen=True, slots=True)
class LoadBalancer:
    id: str
    vpc: str
    ip: IPAddress
    internal: bool
    listeners: tuple[Listener, ...]

    def listener(self, port: int) -> Listener | None:
        return next((lst for lst in self.listeners if lst.port == port), None)


@dataclass(frozen=True, slots=True)
class Authorization:
    """Lets the gateway reach exactly ``target:port`` in ``vpc``, and nothing else."""

    name: str
    vpc: str
    target: str
    port: int
    host: str | None = None


@dataclass(frozen=True, slots=True)
class Backend:
    type: str
    authorization: str
    timeout: float = 10.0


@dataclass(frozen=True, slots=True)
class Api:
    name: str
    methods: tuple[str, ...]
    path: str
    backend: Backend
    max_body_size: int | None = None


@dataclass(frozen=True, slots=True)
class Config:
    file: str
    gateway: GatewayConfig
    vpcs: tuple[Vpc, ...] = ()
    instances: tuple[Instance, ...] = ()
    load_balancers: tuple[LoadBalancer, ...] = ()
    authorizations: tuple[Authorization, ...] = ()
    apis: tuple[Api, ...] = ()

    def vpc(self, vpc_id: str) -> Vpc | None:
        return next((v for v in self.vpcs if v.id == vpc_id), None)

    def instance(self, instance_id: str) -> Instance | None:
        return next((i for i in self.instances if i.id == instance_id), None)

    def load_balancer(self, lb_id: str) -> LoadBalancer | None:
        return next((lb for lb in self.load_balancers if lb.id == lb_id), None)

    def authorization(self, name: str) -> Authorization | None:
        return next((a for a in self.authorizations if a.name == name), None)
