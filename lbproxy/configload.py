"""TOML -> ``Config``: read, check every key's type and name, then run the cross-reference rules.

Every problem is collected (never only the first) and reported as ``FILE: key.path: message``.
Unknown keys are errors, because a misspelt key silently ignored is a misconfigured gateway.
"""

from __future__ import annotations

import ipaddress
import tomllib
from collections.abc import Callable
from typing import Any, TypeVar

from lbproxy import configcheck
from lbproxy.config import (
    HTTP_PARSERS,
    Api,
    Authorization,
    Backend,
    Config,
    GatewayConfig,
    HostPort,
    Instance,
    IPAddress,
    IPNetwork,
    Listener,
    LoadBalancer,
    ServerRef,
    Vpc,
)
from lbproxy.errors import ConfigError, ConfigProblem

T = TypeVar("T")
_MISSING: Any = object()


class _Reader:
    """Reads one TOML table, recording a problem (with its key path) for every bad value."""

    def __init__(self, data: dict[str, Any], path: str, problems: list[tuple[str, str]]) -> None:
        self._data = data
        self._path = path
        self._problems = problems
        self._seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self._path}.{name}" if self._path else name

    def problem(self, name: str, message: str) -> None:
        self._problems.append((self.key(name), message))

    def _get(self, name: str, default: Any, kind: type | tuple[type, ...], what: str) -> Any:
        self._seen.add(name)
        if name not in self._data:
            if default is _MISSING:
                self.problem(name, f"missing; add {name} = <{what}>")
            return default
        value = self._data[name]
        # bool is an int subclass in Python, but `port = true` is a mistake, not a port.
        if isinstance(value, bool) and bool not in _as_tuple(kind):
            self.problem(name, f"expected {what}, got {value!r}")
            return default
        if not isinstance(value, kind):
            self.problem(name, f"expected {what}, got {_describe(value)}")
            return default
        return value

    def string(self, name: str, default: Any = _MISSING) -> Any:
        value = self._get(name, default, str, "a string")
        if isinstance(value, str) and not value.strip():
            self.problem(name, "must not be empty")
        return value

    def boolean(self, name: str, default: Any = _MISSING) -> Any:
        return self._get(name, default, bool, "true or false")

    def integer(self, name: str, default: Any = _MISSING, lo: int = 0, hi: int = 2**63) -> Any:
        value = self._get(name, default, int, "an integer")
        if isinstance(value, int) and value is not default and not lo <= value <= hi:
            self.problem(name, f"{value} is out of range; use {lo}..{hi}")
            return default
        return value

    def port(self, name: str, default: Any = _MISSING) -> Any:
        return self.integer(name, default, 1, 65535)

    def seconds(self, name: str, default: Any = _MISSING) -> Any:
        value = self._get(name, default, (int, float), "a number of seconds")
        if isinstance(value, int | float) and value is not default and not 0 < value < 1e9:
            self.problem(name, f"{value} is not a usable number of seconds; use e.g. 10.0")
            return default
        return float(value) if isinstance(value, int | float) else value

    def str_list(self, name: str, default: Any = _MISSING) -> Any:
        value = self._get(name, default, list, "a list of strings")
        if isinstance(value, list) and value is not default:
            for i, item in enumerate(value):
                if not isinstance(item, str):
                    self.problem(f"{name}[{i}]", f"expected a string, got {_describe(item)}")
                    return default
        return value

    def ip(self, name: str, default: Any = _MISSING) -> IPAddress | None:
        text = self.string(name, default)
        if not isinstance(text, str) or not text.strip():
            return None
        return _parse(self, name, text, ipaddress.ip_address, "an IP address")

    def has(self, name: str) -> bool:
        return name in self._data

    def table(self, name: str) -> _Reader | None:
        value = self._get(name, None, dict, "a table")
        return None if value is None else _Reader(value, self.key(name), self._problems)

    def tables(self, name: str) -> list[_Reader]:
        value = self._get(name, [], list, "an array of tables ([[...]])")
        readers = []
        for i, item in enumerate(value):
            if isinstance(item, dict):
                readers.append(_Reader(item, f"{self.key(name)}[{i}]", self._problems))
            else:
                self._problems.append((f"{self.key(name)}[{i}]", "expected a table"))
        return readers

    def finish(self) -> None:
        for name in self._data:
            if name not in self._seen:
                known = ", ".join(sorted(self._seen))
                self.problem(name, f"unknown key; known keys here: {known}")


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def _describe(value: object) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "a boolean"}
    names |= {list: "an array", dict: "a table"}
    return f"{names.get(type(value), type(value).__name__)} ({value!r})"


def _parse(reader: _Reader, name: str, text: str, parse: Callable[[str], T], what: str) -> T | None:
    try:
        return parse(text)
    except ValueError:
        reader.problem(name, f"{text!r} is not {what}")
        return None


def parse_host_port(text: str) -> HostPort:
    """``"127.0.0.1:8080"`` or ``"[::1]:8080"`` -> ``("127.0.0.1", 8080)``; raises ValueError."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(text)
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    ipaddress.ip_address(host)
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(text)
    return host, port


def _address(reader: _Reader, name: str, text: str) -> HostPort | None:
    return _parse(reader, name, text, parse_host_port, "an address like 127.0.0.1:8080")


def _read_gateway(r: _Reader) -> GatewayConfig | None:
    region = r.string("region")
    listen_text = r.str_list("listen", ["127.0.0.1:8080"])
    listen = [_address(r, f"listen[{i}]", t) for i, t in enumerate(listen_text or [])]
    admin_text = r.string("admin_listen", None)
    admin = _address(r, "admin_listen", admin_text) if admin_text else None
    parser = r.string("http_parser", "httptools")
    if parser not in HTTP_PARSERS:
        r.problem(
            "http_parser", f"{parser!r} is not a parser; use one of {', '.join(HTTP_PARSERS)}"
        )
    default = GatewayConfig(region="", listen=())
    gw = GatewayConfig(
        region=region,
        listen=tuple(a for a in listen if a is not None),
        admin_listen=admin,
        http_parser=parser,
        client_header_timeout=r.seconds("client_header_timeout", default.client_header_timeout),
        keepalive_timeout=r.seconds("keepalive_timeout", default.keepalive_timeout),
        connect_timeout=r.seconds("connect_timeout", default.connect_timeout),
        upstream_timeout=r.seconds("upstream_timeout", default.upstream_timeout),
        max_header_size=r.integer("max_header_size", default.max_header_size, 1024, 1024**2),
        max_body_size=r.integer("max_body_size", default.max_body_size, 0, 2**62),
        upstream_max_idle=r.integer("upstream_max_idle", default.upstream_max_idle, 0, 100_000),
        upstream_idle_timeout=r.seconds("upstream_idle_timeout", default.upstream_idle_timeout),
    )
    r.finish()
    return gw if isinstance(region, str) else None


def _read_vpc(r: _Reader) -> Vpc:
    cidrs = []
    texts = r.str_list("cidrs")
    texts = texts if isinstance(texts, list) else []
    if r.has("cidrs") and not texts:
        r.problem("cidrs", 'needs at least one CIDR, e.g. ["10.0.0.0/16"]')
    for i, text in enumerate(texts):
        net = _parse(r, f"cidrs[{i}]", text, _network, "a CIDR like 10.0.0.0/16")
        if net is not None:
            cidrs.append(net)
    vpc = Vpc(id=r.string("id"), region=r.string("region"), cidrs=tuple(cidrs))
    r.finish()
    return vpc


def _network(text: str) -> IPNetwork:
    return ipaddress.ip_network(text, strict=True)


def _read_instance(r: _Reader) -> Instance:
    inst = Instance(id=r.string("id"), vpc=r.string("vpc"), ip=r.ip("ip"))  # type: ignore[arg-type]
    r.finish()
    return inst


def _read_load_balancer(r: _Reader) -> LoadBalancer:
    lb_id, vpc, ip = r.string("id"), r.string("vpc"), r.ip("ip")
    internal = r.boolean("internal", True)
    listeners = tuple(_read_listener(t) for t in r.tables("listener"))
    if not listeners:
        r.problem("listener", "a load balancer needs at least one [[load_balancer.listener]]")
    r.finish()
    return LoadBalancer(id=lb_id, vpc=vpc, ip=ip, internal=internal, listeners=listeners)  # type: ignore[arg-type]


def _read_listener(r: _Reader) -> Listener:
    port = r.port("port")
    servers = tuple(_read_server(t) for t in r.tables("servers"))
    if not servers:
        r.problem("servers", "a listener needs at least one server: { instance = ..., port = ... }")
    r.finish()
    return Listener(port=port, servers=servers)


def _read_server(r: _Reader) -> ServerRef:
    ref = ServerRef(
        instance=r.string("instance"), port=r.port("port"), weight=r.integer("weight", 1, 1, 1000)
    )
    r.finish()
    return ref


def _read_authorization(r: _Reader) -> Authorization:
    auth = Authorization(
        name=r.string("name"),
        vpc=r.string("vpc"),
        target=r.string("target"),
        port=r.port("port"),
        host=r.string("host", None),
    )
    r.finish()
    return auth


def _read_api(r: _Reader) -> Api:
    name, methods, path = r.string("name"), r.str_list("methods", ["GET"]), r.string("path")
    backend_reader = r.table("backend")
    if backend_reader is not None:
        backend = _read_backend(backend_reader)
    else:
        if not r.has("backend"):
            r.problem("backend", 'missing; add backend = { type = "vpc", authorization = "..." }')
        backend = Backend(type="vpc", authorization="")
    body = r.integer("max_body_size", None, 0, 2**62)
    r.finish()
    methods = tuple(m.upper() for m in methods) if methods else ()
    return Api(name=name, methods=methods, path=path, backend=backend, max_body_size=body)


def _read_backend(r: _Reader) -> Backend:
    kind = r.string("type", "vpc")
    if kind != "vpc":
        r.problem(
            "type",
            f'{kind!r} backends are not available in this version; use type = "vpc" with an '
            "[[authorization]] for the target",
        )
    backend = Backend(
        type=kind, authorization=r.string("authorization"), timeout=r.seconds("timeout", 10.0)
    )
    r.finish()
    return backend


def parse_config(data: dict[str, Any], file: str) -> Config:
    """Build a ``Config`` from parsed TOML; raise ``ConfigError`` naming every problem."""
    problems: list[tuple[str, str]] = []
    root = _Reader(data, "", problems)
    gw_reader = root.table("gateway")
    gateway = _read_gateway(gw_reader) if gw_reader else None
    if gw_reader is None and not root.has("gateway"):
        problems.append(("gateway", 'missing; add a [gateway] table with region = "..."'))
    config = Config(
        file=file,
        gateway=gateway or GatewayConfig(region="", listen=()),
        vpcs=tuple(_read_vpc(t) for t in root.tables("vpc")),
        instances=tuple(_read_instance(t) for t in root.tables("instance")),
        load_balancers=tuple(_read_load_balancer(t) for t in root.tables("load_balancer")),
        authorizations=tuple(_read_authorization(t) for t in root.tables("authorization")),
        apis=tuple(_read_api(t) for t in root.tables("api")),
    )
    root.finish()
    if not problems:
        # Cross-references are only meaningful once every value has its type.
        problems.extend(configcheck.check(config))
    if problems:
        raise ConfigError([ConfigProblem(file, key, message) for key, message in problems])
    return config


def load_config(path: str) -> Config:
    """Read and validate a TOML file; raise ``ConfigError`` (never ``OSError``) on any problem."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError([ConfigProblem(path, "(file)", f"cannot read: {exc.strerror}")]) from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError([ConfigProblem(path, "(syntax)", f"invalid TOML: {exc}")]) from exc
    return parse_config(data, path)
