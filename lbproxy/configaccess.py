"""TOML -> the access part of the model: who may call an API (apps, source-IP lists, rate
limits), how callers reach the gateway (TLS listeners) and how the gateway reaches backends
outside any VPC (http/https URLs, the egress source address); then the cross-reference rules
of these keys.

Secrets named by ``secret_env`` are read from the environment here, once, so a missing variable
is a configuration error at load time rather than a 401 at the first request.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from lbproxy.authz import public_address_problem
from lbproxy.config import (
    AUTH_MODES,
    BACKEND_TYPES,
    App,
    Backend,
    BackendUrl,
    Config,
    HostPort,
    IPAddress,
    RateLimit,
    TlsListener,
)
from lbproxy.configreader import Reader, normalise_address, parse_host_port

Problems = list[tuple[str, str]]

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_APP_KEY = re.compile(r"^[A-Za-z0-9._~+/=-]+$")
_DNS_NAME = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?$")
CERT_MARK = b"-----BEGIN CERTIFICATE-----"
KEY_MARK = b"PRIVATE KEY-----"
WILDCARDS = ("0.0.0.0", "::")


def _names(items: list[str]) -> str:
    return ", ".join(f"`{n}`" for n in sorted(items)) if items else "none"


# --- files -------------------------------------------------------------------------------------


def read_pem_file(r: Reader, name: str, base_dir: str, mark: bytes, default: object) -> str | None:
    """A PEM file's path (relative to the configuration file's directory), or None; a problem if
    it cannot be read or holds no ``mark``. Only the marker is looked for: the TLS layer parses
    the PEM when it builds its context."""
    text = r.string(name, default)
    if not isinstance(text, str) or not text.strip():
        return None
    path = os.path.join(base_dir, text)
    try:
        with open(path, "rb") as f:
            head = f.read(1024 * 1024)
    except OSError as exc:
        r.problem(name, f"cannot read {path!r}: {exc.strerror}")
        return path
    if mark not in head:
        r.problem(name, f"{path!r} holds no PEM {mark.decode().strip('-')} ({mark.decode()})")
    return path


def _read_state_file(r: Reader, base_dir: str) -> str | None:
    text = r.string("state_file", None)
    if not isinstance(text, str) or not text.strip():
        return None
    path = os.path.abspath(os.path.join(base_dir, text))
    if os.path.isdir(path):
        r.problem("state_file", f"{path!r} is a directory; name a file in it, e.g. state.json")
    elif not os.path.isdir(os.path.dirname(path)):
        r.problem(
            "state_file",
            f"directory {os.path.dirname(path)!r} does not exist; create it or name a file in an "
            "existing directory",
        )
    return path


# --- [gateway] ---------------------------------------------------------------------------------


def read_gateway_access(r: Reader, base_dir: str, taken: dict[HostPort, str]) -> dict[str, object]:
    """The access keys of ``[gateway]``, as ``GatewayConfig`` field values. ``taken``: the
    addresses of ``listen`` and ``admin_listen``, each with what it is."""
    token = r.string("admin_token", None)
    token_env = _env_name(r, "admin_token_env")
    if token is not None and token_env is not None:
        r.problem("admin_token_env", "give admin_token or admin_token_env, not both")
    return {
        "admin_token": token,
        "admin_token_env": token_env,
        "state_file": _read_state_file(r, base_dir),
        "peered_regions": tuple(r.str_list("peered_regions", []) or ()),
        "egress_source": _read_egress_source(r),
        "trusted_proxies": r.networks("trusted_proxies"),
        "allow": r.networks("allow"),
        "deny": r.networks("deny"),
        "http_backend_allow": r.networks("http_backend_allow"),
        "tls": _read_tls_listeners(r, base_dir, dict(taken)),
    }


def _env_name(r: Reader, name: str) -> str | None:
    text = r.string(name, None)
    if isinstance(text, str) and text.strip() and not _ENV_NAME.match(text):
        r.problem(
            name,
            f"{text!r} is not an environment variable name; use letters, digits and _, "
            "e.g. LBPROXY_ADMIN_TOKEN",
        )
        return None
    return text if isinstance(text, str) and text.strip() else None


def _read_egress_source(r: Reader) -> IPAddress | None:
    ip = r.ip("egress_source", None)
    if ip is None:
        return None
    ip = normalise_address(ip)
    what = None
    if ip.is_unspecified:
        what = "the unspecified address, which leaves the choice to the kernel"
    elif ip.is_multicast:
        what = "a multicast address, which cannot open a connection"
    elif ip.version == 4 and ip.is_reserved:  # 240.0.0.0/4 and the broadcast address
        what = "a reserved address, which no host has"
    if what is not None:
        r.problem(
            "egress_source",
            f"{ip} is {what}; give an address of this host (e.g. 10.0.0.5) or remove the key",
        )
        return None
    return ip


def _read_tls_listeners(
    r: Reader, base_dir: str, taken: dict[HostPort, str]
) -> tuple[TlsListener, ...]:
    listeners = []
    for t in r.tables("tls"):
        address = _tls_address(t, taken)
        cert = read_pem_file(t, "cert_file", base_dir, CERT_MARK, None)
        key = read_pem_file(t, "key_file", base_dir, KEY_MARK, None)
        for name, value in (("cert_file", cert), ("key_file", key)):
            if value is None and not t.has(name):
                t.problem(name, f'missing; add {name} = "<path to a PEM file>"')
        t.finish()
        if address is not None and cert is not None and key is not None:
            listeners.append(TlsListener(address, cert, key))
        if address is not None:
            taken.setdefault(address, f"already used by {t.key('listen').rsplit('.', 1)[0]}")
    return tuple(listeners)


def _tls_address(t: Reader, taken: dict[HostPort, str]) -> HostPort | None:
    text = t.string("listen")
    if not isinstance(text, str) or not text.strip():
        return None
    try:
        address = parse_host_port(text)
    except ValueError:
        t.problem("listen", f"{text!r} is not an address like 127.0.0.1:8443")
        return None
    for other, what in taken.items():
        if _overlaps(address, other):
            t.problem(
                "listen",
                f"{text} overlaps {other[0]}:{other[1]}, {what}; give the TLS listener its own "
                "port, e.g. 127.0.0.1:8443",
            )
            break
    return address


def _overlaps(a: HostPort, b: HostPort) -> bool:
    """Whether binding both would collide: one port (0 picks a free one) on one host, or on a
    wildcard host that covers the other."""
    if a[1] != b[1] or a[1] == 0:
        return False
    return a[0] == b[0] or a[0] in WILDCARDS or b[0] in WILDCARDS


# --- [[app]] -----------------------------------------------------------------------------------


def read_app(r: Reader, environ: Mapping[str, str]) -> App:
    name, key = r.string("name"), r.string("key")
    if isinstance(key, str) and key.strip() and not _APP_KEY.match(key):
        r.problem(
            "key", f"{key!r} cannot be sent in X-Ca-Key; use letters, digits and . _ ~ + / = -"
        )
    secret = r.string("secret", None)
    secret_env = _env_name(r, "secret_env")
    if secret is not None and (secret_env is not None or r.has("secret_env")):
        r.problem("secret_env", "give secret or secret_env, not both")
    elif secret_env is not None:
        secret = environ.get(secret_env)
        if secret is None:
            r.problem(
                "secret_env",
                f"environment variable `{secret_env}` is not set; export it before starting "
                'lbproxy, or give secret = "..."',
            )
        elif not secret.strip():
            r.problem("secret_env", f"environment variable `{secret_env}` is empty")
    elif secret is None and not r.has("secret_env"):
        r.problem("secret", 'missing; add secret = "..." or secret_env = "VARIABLE"')
    app = App(
        name=name,
        key=key,
        secret=secret or "",
        secret_env=secret_env,
        rate_limit=read_rate_limit(r),
    )
    r.finish()
    return app


def read_rate_limit(r: Reader) -> RateLimit | None:
    t = r.table("rate_limit")
    if t is None:
        return None
    limit = RateLimit(
        per_second=t.integer("per_second", None, 1, 10**9),
        per_minute=t.integer("per_minute", None, 1, 10**9),
    )
    if not t.has("per_second") and not t.has("per_minute"):
        r.problem("rate_limit", "needs per_second = N, per_minute = M, or both")
    t.finish()
    return limit


# --- [[api]] access keys and backends ----------------------------------------------------------


def read_api_access(r: Reader) -> dict[str, object]:
    """The access keys of one ``[[api]]``, as ``Api`` field values."""
    auth = r.string("auth", "anonymous")
    if isinstance(auth, str) and auth not in AUTH_MODES:
        r.problem("auth", f"{auth!r} is not an auth mode; use one of {', '.join(AUTH_MODES)}")
    return {
        "auth": auth,
        "apps": tuple(r.str_list("apps", []) or ()),
        "allow": r.networks("allow"),
        "deny": r.networks("deny"),
        "rate_limit": read_rate_limit(r),
    }


def read_backend(r: Reader, base_dir: str) -> Backend:
    kind = r.string("type", "vpc")
    if isinstance(kind, str) and kind not in BACKEND_TYPES:
        r.problem("type", f"{kind!r} is not a backend type; use one of {', '.join(BACKEND_TYPES)}")
    timeout = r.seconds("timeout", 10.0)
    if kind not in BACKEND_TYPES:
        # The type is the mistake; what the other keys should be depends on the fix.
        for name in ("authorization", "url", "ca_file"):
            r.value(name, None, object, "any value")
        backend = Backend(type=kind, timeout=timeout)
    elif kind == "vpc":
        backend = Backend(type=kind, authorization=r.string("authorization"), timeout=timeout)
        r.refuse(
            "url",
            "a vpc backend reaches its target through its authorization; remove url, or use "
            'type = "http"',
        )
        r.refuse(
            "ca_file",
            "a vpc backend takes its TLS settings (tls, ca_file) from its authorization; "
            "remove ca_file",
        )
    else:
        backend = _read_direct_backend(r, kind, timeout, base_dir)
    r.finish()
    return backend


def _read_direct_backend(r: Reader, kind: str, timeout: float, base_dir: str) -> Backend:
    r.string("authorization", None)
    if r.has("authorization"):
        r.problem(
            "authorization",
            f"an {kind} backend connects to its url without an authorization; remove "
            'authorization, or use type = "vpc"',
        )
    ca_file = read_pem_file(r, "ca_file", base_dir, CERT_MARK, None)
    if ca_file is not None and kind != "https":
        r.problem(
            "ca_file", 'verifies an https server\'s certificate; remove it or use type = "https"'
        )
    text = r.string("url", None)
    url = None
    if text is None and not r.has("url"):
        example = "https://api.example.com/v1" if kind == "https" else "http://api.example.com/v1"
        r.problem("url", f'missing; add url = "{example}"')
    elif isinstance(text, str) and text.strip():
        url = _parse_url(r, text, kind)
    return Backend(type=kind, timeout=timeout, url=url, ca_file=ca_file)


def _parse_url(r: Reader, text: str, kind: str) -> BackendUrl | None:
    hint = f'e.g. "{kind}://api.example.com:8080/v1"'
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        r.problem("url", f"{text!r} is not a URL; {hint}")
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        r.problem("url", f"{text!r} is not an http or https URL with a host; {hint}")
        return None
    if parts.scheme != kind:
        r.problem("url", f'{text!r} is {parts.scheme}, but type = "{kind}"; make them agree')
        return None
    for present, what in (
        (parts.username is not None, "credentials"),
        (parts.query or text.endswith("?"), "a query"),
        (parts.fragment or "#" in text, "a fragment"),
    ):
        if present:
            r.problem("url", f"{text!r} has {what}; a backend URL is a host, a port and a path")
            return None
    host = parts.hostname
    if not _is_host(host):
        r.problem("url", f"{host!r} in {text!r} is neither a host name nor an IP address")
        return None
    path = parts.path.rstrip("/")
    if any(seg in (".", "..") for seg in path.split("/")):
        r.problem("url", f"{text!r} has a dot segment; write the path without it")
        return None
    default = 443 if kind == "https" else 80
    return BackendUrl(scheme=kind, host=host, port=port or default, base_path=path)


def _is_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return bool(_DNS_NAME.match(host)) and not host.replace(".", "").isdigit()
    return True


# --- cross-references --------------------------------------------------------------------------


def check_access(config: Config) -> Problems:
    problems = _check_peered_regions(config)
    problems += _check_apps(config)
    for i, api in enumerate(config.apis):
        problems += _check_api_apps(config, f"api[{i}]", api.auth, api.apps)
        if api.backend.url is not None:
            problems += _check_direct_backend(config, f"api[{i}].backend.url", api.backend.url)
    return problems


def _check_peered_regions(config: Config) -> Problems:
    problems: Problems = []
    regions = sorted({v.region for v in config.vpcs})
    own = config.gateway.region
    seen: set[str] = set()
    for i, region in enumerate(config.gateway.peered_regions):
        key = f"gateway.peered_regions[{i}]"
        if region == own:
            problems.append((key, f"`{region}` is the gateway's own region; remove it"))
        elif region in seen:
            problems.append((key, f"`{region}` is listed twice; remove one"))
        elif region not in regions:
            problems.append(
                (
                    key,
                    f"no VPC is in region `{region}`; regions of declared VPCs: {_names(regions)}",
                )
            )
        seen.add(region)
    return problems


def _check_apps(config: Config) -> Problems:
    problems: Problems = []
    for what in ("name", "key"):
        first: dict[str, int] = {}
        for i, app in enumerate(config.apps):
            value = getattr(app, what)
            j = first.setdefault(value, i)
            if j != i:
                problems.append(
                    (
                        f"app[{i}].{what}",
                        f"`{value}` is already used by app[{j}]; {what}s must be unique",
                    )
                )
    return problems


def _check_api_apps(config: Config, key: str, auth: str, apps: tuple[str, ...]) -> Problems:
    declared = _names([a.name for a in config.apps])
    if auth == "anonymous" and apps:
        return [
            (
                f"{key}.apps",
                'an anonymous API is open to every caller; remove apps, or add auth = "app"',
            )
        ]
    if auth == "app" and not apps:
        return [
            (
                f"{key}.apps",
                f'auth = "app" needs the apps it grants; add apps = ["..."] (declared apps: '
                f"{declared})",
            )
        ]
    problems: Problems = []
    for j, name in enumerate(apps):
        if config.app(name) is None:
            problems.append(
                (f"{key}.apps[{j}]", f"app `{name}` does not exist; declared apps: {declared}")
            )
        elif name in apps[:j]:
            problems.append((f"{key}.apps[{j}]", f"`{name}` is listed twice; remove one"))
    return problems


def _check_direct_backend(config: Config, key: str, url: BackendUrl) -> Problems:
    problems: Problems = []
    ip = url.ip
    if ip is None:
        return problems  # a name: its addresses are checked after resolution, at connect time
    problem = public_address_problem(ip, config.vpc_cidrs(), config.gateway.http_backend_allow)
    if problem is not None:
        problems.append((key, problem))
    problems += egress_family_problems(config, key, ip)
    return problems


def egress_family_problems(config: Config, key: str, ip: IPAddress) -> Problems:
    """A connection bound to ``egress_source`` can only reach addresses of its own family."""
    source = config.gateway.egress_source
    if source is None or source.version == ip.version:
        return []
    return [
        (
            key,
            f"{ip} is IPv{ip.version}, but gateway.egress_source {source} is IPv{source.version}; "
            "a connection from it cannot reach this address",
        )
    ]
