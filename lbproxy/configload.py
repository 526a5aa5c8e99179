"""TOML -> ``Config``: read, check every key's type and name, then run the cross-reference rules.

Every problem is collected (never only the first) and reported as ``FILE: key.path: message``.
Unknown keys are errors, because a misspelt key silently ignored is a misconfigured gateway.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from typing import Any

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
    IPNetwork,
    PoolLimits,
    Vpc,
)
from lbproxy.configaccess import read_api_access, read_app, read_backend, read_gateway_access
from lbproxy.configlb import read_load_balancer
from lbproxy.configreader import Reader, parse, parse_host_port

__all__ = ["load_config", "parse_config", "parse_host_port"]
from lbproxy.errors import ConfigError, ConfigProblem


def _address(reader: Reader, name: str, text: str) -> HostPort | None:
    return parse(reader, name, text, parse_host_port, "an address like 127.0.0.1:8080")


def _read_gateway(r: Reader, base_dir: str) -> GatewayConfig | None:
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
    taken = {a: "an address in gateway.listen" for a in listen if a is not None}
    if admin is not None:
        taken[admin] = "the admin listener (gateway.admin_listen)"
    access: dict[str, Any] = read_gateway_access(r, base_dir, taken)
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
        **_read_limits(r, default),
        upstream_max_idle=r.integer("upstream_max_idle", default.upstream_max_idle, 0, 100_000),
        upstream_idle_timeout=r.seconds("upstream_idle_timeout", default.upstream_idle_timeout),
        **access,
        **_read_operations(r, base_dir),
    )
    r.finish()
    return gw if isinstance(region, str) else None


_MAX_WORKERS = 1024


def _read_limits(r: Reader, default: GatewayConfig) -> dict[str, Any]:
    """The keys bounding what one client may hold: request line, header count, connections,
    requests per connection, the body's pace."""
    return {
        "max_request_line": r.integer("max_request_line", default.max_request_line, 256, 1024**2),
        "max_header_count": r.integer("max_header_count", default.max_header_count, 1, 10_000),
        "max_client_connections": r.integer(
            "max_client_connections", default.max_client_connections, 1, 1_000_000
        ),
        "max_requests_per_connection": r.integer(
            "max_requests_per_connection", default.max_requests_per_connection, 1, 2**31
        ),
        "client_body_timeout": r.seconds("client_body_timeout", default.client_body_timeout),
    }


def _read_operations(r: Reader, base_dir: str) -> dict[str, Any]:
    """The keys of running it: ``access_log``, ``workers``, ``shutdown_timeout``."""
    workers = r.value("workers", 1, (int, str), 'an integer or "auto"')
    if isinstance(workers, str) and workers != "auto":
        r.problem(
            "workers", f'{workers!r} is not a number of workers; use 1..{_MAX_WORKERS} or "auto"'
        )
        workers = 1
    elif isinstance(workers, int) and not 1 <= workers <= _MAX_WORKERS:
        r.problem("workers", f'{workers} is out of range; use 1..{_MAX_WORKERS} or "auto"')
        workers = 1
    return {
        "access_log": _read_access_log(r, base_dir),
        "workers": workers,
        "shutdown_timeout": r.seconds("shutdown_timeout", 30.0),
    }


def _read_access_log(r: Reader, base_dir: str) -> str:
    value = r.string("access_log", "off")
    if not isinstance(value, str) or not value.strip():
        return "off"
    if value in ("off", "stdout"):
        return value
    # Relative to the configuration file, like state_file, so the two can move together.
    path = os.path.join(base_dir, value)
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        r.problem("access_log", f"{path!r} is a directory; name a file in it, or use off or stdout")
    elif not os.path.isdir(directory):
        r.problem(
            "access_log",
            f"directory {directory!r} does not exist; create it (the file itself is created)",
        )
    return path


def _read_vpc(r: Reader) -> Vpc:
    cidrs = []
    texts = r.str_list("cidrs")
    texts = texts if isinstance(texts, list) else []
    if r.has("cidrs") and not texts:
        r.problem("cidrs", 'needs at least one CIDR, e.g. ["10.0.0.0/16"]')
    for i, text in enumerate(texts):
        net = parse(r, f"cidrs[{i}]", text, _network, "a CIDR like 10.0.0.0/16")
        if net is not None:
            cidrs.append(net)
    vpc = Vpc(id=r.string("id"), region=r.string("region"), cidrs=tuple(cidrs))
    r.finish()
    return vpc


def _network(text: str) -> IPNetwork:
    return ipaddress.ip_network(text, strict=True)


def _read_instance(r: Reader) -> Instance:
    inst = Instance(id=r.string("id"), vpc=r.string("vpc"), ip=r.ip("ip"))  # type: ignore[arg-type]
    r.finish()
    return inst


def _read_authorization(r: Reader, base_dir: str) -> Authorization:
    auth = Authorization(
        name=r.string("name"),
        vpc=r.string("vpc"),
        target=r.string("target"),
        port=r.port("port"),
        host=r.string("host", None),
        tls=r.boolean("tls", False),
        ca_file=_read_ca_file(r, base_dir),
    )
    if auth.ca_file is not None and auth.tls is not True:
        r.problem("ca_file", "verifies the server's certificate, but tls is off; add tls = true")
    r.finish()
    return auth


def _read_ca_file(r: Reader, base_dir: str) -> str | None:
    name = r.string("ca_file", None)
    if not isinstance(name, str) or not name.strip():
        return None
    # Relative to the configuration file, so a config and its CA can move together.
    path = os.path.join(base_dir, name)
    problem = _ca_file_problem(path)
    if problem:
        r.problem("ca_file", problem)
    return path


def _ca_file_problem(path: str) -> str | None:
    """Why ``path`` cannot serve as a CA bundle, or None. Only the PEM marker is looked for:
    the TLS layer parses the certificates when it builds its context."""
    try:
        with open(path, "rb") as f:
            text = f.read(1024 * 1024)
    except OSError as exc:
        return f"cannot read {path!r}: {exc.strerror}"
    if b"-----BEGIN CERTIFICATE-----" not in text:
        return f"{path!r} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
    return None


def _read_api(r: Reader, base_dir: str) -> Api:
    name, methods, path = r.string("name"), r.str_list("methods", ["GET"]), r.string("path")
    backend_reader = r.table("backend")
    if backend_reader is not None:
        backend = read_backend(backend_reader, base_dir)
    else:
        if not r.has("backend"):
            r.problem("backend", 'missing; add backend = { type = "vpc", authorization = "..." }')
        backend = Backend(type="vpc", authorization="")
    body = r.integer("max_body_size", None, 0, 2**62)
    access: dict[str, Any] = read_api_access(r)
    r.finish()
    methods = tuple(m.upper() for m in methods) if methods else ()
    return Api(name=name, methods=methods, path=path, backend=backend, max_body_size=body, **access)


def parse_config(
    data: dict[str, Any], file: str, environ: Mapping[str, str] | None = None
) -> Config:
    """Build a ``Config`` from parsed TOML; raise ``ConfigError`` naming every problem.

    ``environ`` (``os.environ`` when None) is where ``secret_env`` variables are read; paths
    are relative to ``file``'s directory."""
    problems: list[tuple[str, str]] = []
    root = Reader(data, "", problems)
    base_dir = os.path.dirname(file)
    gw_reader = root.table("gateway")
    gateway = _read_gateway(gw_reader, base_dir) if gw_reader else None
    if gw_reader is None and not root.has("gateway"):
        problems.append(("gateway", 'missing; add a [gateway] table with region = "..."'))
    gateway = gateway or GatewayConfig(region="", listen=())
    pool = PoolLimits(
        max_idle=gateway.upstream_max_idle, idle_timeout=gateway.upstream_idle_timeout
    )
    env = os.environ if environ is None else environ
    config = Config(
        file=file,
        gateway=gateway,
        vpcs=tuple(_read_vpc(t) for t in root.tables("vpc")),
        instances=tuple(_read_instance(t) for t in root.tables("instance")),
        load_balancers=tuple(read_load_balancer(t, pool) for t in root.tables("load_balancer")),
        authorizations=tuple(
            _read_authorization(t, base_dir) for t in root.tables("authorization")
        ),
        apis=tuple(_read_api(t, base_dir) for t in root.tables("api")),
        apps=tuple(read_app(t, env) for t in root.tables("app")),
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
