"""The configuration model: frozen dataclasses, built once by ``configload`` and never mutated.

Addresses are ``ipaddress`` objects and listen addresses are ``(host, port)`` tuples, so nothing
downstream parses strings again.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from typing import Literal

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
HostPort = tuple[str, int]

HTTP_PARSERS = ("httptools", "h11")
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE")
SCHEDULERS = ("wrr", "least_conn")
CHECK_TYPES = ("http", "tcp")
BACKEND_TYPES = ("vpc", "http", "https")
AUTH_MODES = ("anonymous", "app")
StatusRange = tuple[int, int]
# Request limits the parser engines default to as well (http.py), so a parser built without
# a configuration holds the same line.
MAX_REQUEST_LINE = 8 * 1024
MAX_HEADER_COUNT = 100


@dataclass(frozen=True, slots=True)
class TlsListener:
    """An HTTPS address of the API front, with its certificate chain and private key (PEM)."""

    listen: HostPort
    cert_file: str
    key_file: str


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
    # The request line (method, target, version; nginx's default buffer is 8 KiB too) and the
    # number of header fields (Apache's LimitRequestFields, Envoy's max_headers_count).
    max_request_line: int = MAX_REQUEST_LINE
    max_header_count: int = MAX_HEADER_COUNT
    # Per worker process: past it a new client connection is answered 503 and closed.
    max_client_connections: int = 10_000
    # Requests served on one client connection; the last one is answered with Connection: close
    # (nginx's keepalive_requests), so no connection holds a worker's state forever.
    max_requests_per_connection: int = 1000
    # Longest wait for the next bytes of a request body (nginx's client_body_timeout): a
    # stalled upload is answered 408, never blamed on the upstream.
    client_body_timeout: float = 60.0
    upstream_max_idle: int = 64
    upstream_idle_timeout: float = 60.0
    # The admin API's bearer token, inline or the name of the environment variable holding it
    # (read when the admin listener starts); at most one of the two is set.
    admin_token: str | None = field(default=None, repr=False)
    admin_token_env: str | None = None
    # Absolute: a relative state_file is taken from the configuration file's directory.
    state_file: str | None = None
    # Regions whose VPCs the gateway may reach over a cross-region link.
    peered_regions: tuple[str, ...] = ()
    # The source address upstream connections are bound to (None: the kernel picks).
    egress_source: IPAddress | None = None
    # Source-IP lists of the API front; IPv4-mapped networks are stored as IPv4.
    trusted_proxies: tuple[IPNetwork, ...] = ()
    allow: tuple[IPNetwork, ...] = ()
    deny: tuple[IPNetwork, ...] = ()
    # Ranges that http/https backends may reach although private, loopback, link-local or in a
    # VPC (labs and tests); see ``authz.public_address_problem``.
    http_backend_allow: tuple[IPNetwork, ...] = ()
    tls: tuple[TlsListener, ...] = ()
    # "off", "stdout" or an absolute file path (a relative one is taken from the configuration
    # file's directory). Off by default: each record costs the loop a little and the writer
    # thread some CPU under the GIL, so logging every request is the operator's choice.
    access_log: str = "off"
    # Worker processes sharing the listeners with SO_REUSEPORT; "auto": one per usable CPU.
    workers: int | Literal["auto"] = 1
    # How long a graceful stop (SIGTERM, SIGQUIT) lets in-flight requests finish.
    shutdown_timeout: float = 30.0

    def worker_count(self) -> int:
        """``workers`` as a number: "auto" is the CPUs this process may run on."""
        if self.workers != "auto":
            return self.workers
        if hasattr(os, "sched_getaffinity"):
            return len(os.sched_getaffinity(0))
        return os.cpu_count() or 1


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
    """A load balancer listener's server: an instance and the port it serves on.

    Weight 0 drains the server: no new requests, in-flight ones finish. A backup server takes
    traffic only while every primary server is down.
    """

    instance: str
    port: int
    weight: int = 1
    backup: bool = False


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """Active checks of each server of a listener; a server starts up and goes down after
    ``fall`` failed checks in a row, up again after ``rise`` passing ones."""

    type: str = "http"
    path: str = "/"
    # Inclusive ranges: `expect = [200, "3xx"]` is ((200, 200), (300, 399)).
    expect: tuple[StatusRange, ...] = ((200, 299), (300, 399))
    interval: float = 5.0
    timeout: float = 2.0
    rise: int = 2
    fall: int = 3

    def expects(self, status: int) -> bool:
        return any(lo <= status <= hi for lo, hi in self.expect)


@dataclass(frozen=True, slots=True)
class Passive:
    """Outlier detection from real requests: ``max_fails`` consecutive failures eject a server
    for ``fail_timeout`` seconds (``max_fails = 0`` turns it off). Connect errors, timeouts and
    resets are failures; responses with a status in ``fail_statuses`` too."""

    max_fails: int = 3
    fail_timeout: float = 10.0
    fail_statuses: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``tries``: how many times one request may be sent (connect failures send nothing, so they
    move on without counting). ``try_timeout``: how long one try may wait for its response
    (None: the route's own timeout). ``budget``: the fraction of a listener's in-flight requests
    that may be retrying at once."""

    tries: int = 2
    try_timeout: float | None = None
    budget: float = 0.2


@dataclass(frozen=True, slots=True)
class PoolLimits:
    """Per server. ``max_connections`` None is unlimited; beyond it a request waits in a queue of
    at most ``max_queue`` for ``queue_timeout`` seconds, then gets 503."""

    max_idle: int = 64
    idle_timeout: float = 60.0
    max_connections: int | None = None
    max_queue: int = 128
    queue_timeout: float = 1.0


@dataclass(frozen=True, slots=True)
class Listener:
    port: int
    servers: tuple[ServerRef, ...]
    scheduler: str = "wrr"
    slow_start: float = 0.0
    health_check: HealthCheck | None = None
    passive: Passive = Passive()
    retry: RetryPolicy = RetryPolicy()
    pool: PoolLimits = PoolLimits()


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
    # TLS to the target, verified (with SNI) against ca_file, or the system's CAs when None.
    tls: bool = False
    ca_file: str | None = None


@dataclass(frozen=True, slots=True)
class BackendUrl:
    """The base URL of an http/https backend. ``host`` is a DNS name or an IP literal (IPv6
    without brackets); ``base_path`` is "" or a path without a trailing slash, put before the
    request's path ("/v1" + "/items/1")."""

    scheme: str
    host: str
    port: int
    base_path: str = ""

    @property
    def ip(self) -> IPAddress | None:
        """The host when it is an IP literal (IPv4-mapped ones as IPv4), else None."""
        try:
            ip = ipaddress.ip_address(self.host)
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        return ip

    @property
    def authority(self) -> str:
        """``host[:port]`` as a Host header carries it: the port only when not the default."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.base_path or '/'}"


@dataclass(frozen=True, slots=True)
class Backend:
    """Where an API's requests go. ``type = "vpc"``: through ``authorization``; ``"http"`` or
    ``"https"``: to ``url`` directly (public addresses only), verifying an https server against
    ``ca_file`` (or the system's CAs when None); ``authorization`` is then ""."""

    type: str
    authorization: str = ""
    timeout: float = 10.0
    url: BackendUrl | None = None
    ca_file: str | None = None

    def is_vpc(self) -> bool:
        return self.type == "vpc"


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Requests allowed per second and/or per minute; at least one is set."""

    per_second: int | None = None
    per_minute: int | None = None


@dataclass(frozen=True, slots=True)
class App:
    """A caller of ``auth = "app"`` APIs, signing with ``key`` and ``secret``. ``secret`` is the
    value itself, read from the variable ``secret_env`` at load time when that is set."""

    name: str
    key: str
    secret: str = field(repr=False)
    secret_env: str | None = None
    rate_limit: RateLimit | None = None


@dataclass(frozen=True, slots=True)
class Api:
    name: str
    methods: tuple[str, ...]
    path: str
    backend: Backend
    max_body_size: int | None = None
    auth: str = "anonymous"
    # Names of the apps granted this API (only with auth = "app").
    apps: tuple[str, ...] = ()
    allow: tuple[IPNetwork, ...] = ()
    deny: tuple[IPNetwork, ...] = ()
    rate_limit: RateLimit | None = None


@dataclass(frozen=True, slots=True)
class Config:
    file: str
    gateway: GatewayConfig
    vpcs: tuple[Vpc, ...] = ()
    instances: tuple[Instance, ...] = ()
    load_balancers: tuple[LoadBalancer, ...] = ()
    authorizations: tuple[Authorization, ...] = ()
    apis: tuple[Api, ...] = ()
    apps: tuple[App, ...] = ()

    def vpc(self, vpc_id: str) -> Vpc | None:
        return next((v for v in self.vpcs if v.id == vpc_id), None)

    def instance(self, instance_id: str) -> Instance | None:
        return next((i for i in self.instances if i.id == instance_id), None)

    def load_balancer(self, lb_id: str) -> LoadBalancer | None:
        return next((lb for lb in self.load_balancers if lb.id == lb_id), None)

    def authorization(self, name: str) -> Authorization | None:
        return next((a for a in self.authorizations if a.name == name), None)

    def app(self, name: str) -> App | None:
        return next((a for a in self.apps if a.name == name), None)

    def app_by_key(self, key: str) -> App | None:
        return next((a for a in self.apps if a.key == key), None)

    def vpc_cidrs(self) -> tuple[IPNetwork, ...]:
        """Every declared VPC's CIDRs: addresses an http/https backend may not reach."""
        return tuple(net for vpc in self.vpcs for net in vpc.cidrs)
