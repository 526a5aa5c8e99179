"""The access keys of a configuration (gateway tokens, state file, peered regions, egress
source, source-IP lists, TLS listeners, apps, API auth and limits, http/https backends): values
and defaults, then the exact ``FILE: key.path: message`` lines an operator sees for each mistake.

Every vector edits a copy of ``lbproxy/demo.toml`` and is parsed as ``<dir>/gw.toml``, where
``<dir>`` holds a certificate, a key and a ``state/`` directory, so file checks run for real.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from lbproxy.authz import build_reachability, format_table
from lbproxy.config import App, BackendUrl, Config, RateLimit, TlsListener
from lbproxy.configload import parse_config
from lbproxy.errors import ConfigError
from tests.test_config import (
    VPC_B,
    VPC_SHANGHAI,
    Data,
    Edit,
    append,
    demo_with,
    drop,
    put,
)

CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"
ENV = {"SHOP_SECRET": "s3cret", "EMPTY": "", "ADMIN": "t0ken"}
TLS = {"listen": "127.0.0.1:8443", "cert_file": "cert.pem", "key_file": "key.pem"}
APP = {"name": "shop", "key": "203751", "secret": "abc"}
BACKEND = "api[0].backend"
PUBLIC = (
    "http/https backends reach public addresses only (a lab may list the range in "
    "gateway.http_backend_allow)"
)
IN_VPC = "reach VPC addresses with a vpc backend through an [[authorization]]"
ADDRESS_OR_CIDR = "a CIDR like 10.0.0.0/16 or an address like 10.0.0.5"
HTTP_LB = {
    "id": "lb-public",
    "vpc": "vpc-demo",
    "ip": "203.0.113.10",
    "internal": False,
    "listener": [{"port": 80, "servers": [{"instance": "i-web-1", "port": 9001}]}],
}


@pytest.fixture
def conf_dir(tmp_path: Path) -> Path:
    (tmp_path / "cert.pem").write_text(CERT, encoding="utf-8")
    (tmp_path / "key.pem").write_text(KEY, encoding="utf-8")
    (tmp_path / "state").mkdir()
    return tmp_path


def parsed(conf_dir: Path, *edits: Edit) -> Config:
    return parse_config(demo_with(*edits), str(conf_dir / "gw.toml"), ENV)


def problem_lines(conf_dir: Path, data: Data) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, str(conf_dir / "gw.toml"), ENV)
    return [str(problem) for problem in caught.value.problems]


def http_backend(url: str, **extra: object) -> Edit:
    return put(BACKEND, {"type": url.partition(":")[0], "url": url, **extra})


# --- values and defaults -----------------------------------------------------------------------


def test_defaults_leave_everything_open_and_unset(conf_dir: Path) -> None:
    config = parsed(conf_dir)
    gw = config.gateway
    assert (gw.admin_token, gw.admin_token_env, gw.state_file, gw.egress_source) == (None,) * 4
    assert (gw.peered_regions, gw.trusted_proxies, gw.allow, gw.deny) == ((), (), (), ())
    assert (gw.http_backend_allow, gw.tls) == ((), ())
    (item_api,) = config.apis
    assert (item_api.auth, item_api.apps, item_api.allow, item_api.deny) == (
        "anonymous",
        (),
        (),
        (),
    )
    assert item_api.rate_limit is None
    assert (item_api.backend.url, item_api.backend.ca_file, item_api.backend.is_vpc()) == (
        None,
        None,
        True,
    )
    assert config.apps == ()


def test_every_gateway_access_key_set(conf_dir: Path) -> None:
    config = parsed(
        conf_dir,
        put("gateway.admin_listen", "127.0.0.1:9901"),
        put("gateway.admin_token_env", "ADMIN"),
        put("gateway.state_file", "state/auth.json"),
        put("gateway.egress_source", "::ffff:127.0.0.1"),
        put("gateway.trusted_proxies", ["10.0.0.1", "fd00::/8"]),
        put("gateway.allow", ["::ffff:10.0.0.0/104", "2001:db8::1"]),
        put("gateway.deny", ["10.9.0.0/16"]),
        put("gateway.http_backend_allow", ["192.168.50.0/24"]),
        put("gateway.tls", [TLS, {**TLS, "listen": "[::1]:8443"}]),
        append("vpc", VPC_SHANGHAI),
        put("gateway.peered_regions", ["cn-shanghai"]),
    )
    gw = config.gateway
    net = ipaddress.ip_network
    assert (gw.admin_token, gw.admin_token_env) == (None, "ADMIN")
    assert gw.state_file == str(conf_dir / "state" / "auth.json")
    assert gw.egress_source == ipaddress.IPv4Address("127.0.0.1")
    assert gw.trusted_proxies == (net("10.0.0.1/32"), net("fd00::/8"))
    assert gw.allow == (net("10.0.0.0/8"), net("2001:db8::1/128"))
    assert (gw.deny, gw.http_backend_allow) == ((net("10.9.0.0/16"),), (net("192.168.50.0/24"),))
    cert, key = str(conf_dir / "cert.pem"), str(conf_dir / "key.pem")
    assert gw.tls == (
        TlsListener(("127.0.0.1", 8443), cert, key),
        TlsListener(("::1", 8443), cert, key),
    )
    assert gw.peered_regions == ("cn-shanghai",)


def test_the_admin_token_is_kept_out_of_repr(conf_dir: Path) -> None:
    gw = parsed(conf_dir, put("gateway.admin_token", "t0ken-value")).gateway
    assert gw.admin_token == "t0ken-value"
    assert "t0ken-value" not in repr(gw)


def test_a_tls_listener_may_be_the_only_front(conf_dir: Path) -> None:
    config = parsed(conf_dir, put("gateway.listen", []), put("gateway.tls", [TLS]))
    assert (config.gateway.listen, len(config.gateway.tls)) == ((), 1)


def test_apps_with_inline_and_environment_secrets(conf_dir: Path) -> None:
    config = parsed(
        conf_dir,
        append("app", {**APP, "rate_limit": {"per_minute": 600}}),
        append("app", {"name": "ops", "key": "k.ops-1", "secret_env": "SHOP_SECRET"}),
        put("api[0].auth", "app"),
        put("api[0].apps", ["shop", "ops"]),
        put("api[0].rate_limit", {"per_second": 5, "per_minute": 100}),
        put("api[0].allow", ["10.0.0.0/8"]),
        put("api[0].deny", ["10.0.0.9"]),
    )
    assert config.apps == (
        App("shop", "203751", "abc", None, RateLimit(per_minute=600)),
        App("ops", "k.ops-1", "s3cret", "SHOP_SECRET"),
    )
    assert "s3cret" not in repr(config.apps)
    assert config.app_by_key("k.ops-1") == config.app("ops") == config.apps[1]
    (item_api,) = config.apis
    assert (item_api.auth, item_api.apps) == ("app", ("shop", "ops"))
    assert item_api.rate_limit == RateLimit(per_second=5, per_minute=100)
    net = ipaddress.ip_network
    assert (item_api.allow, item_api.deny) == ((net("10.0.0.0/8"),), (net("10.0.0.9/32"),))


@pytest.mark.parametrize(
    ("backend", "url", "authority"),
    [
        (
            {"type": "http", "url": "http://api.example.com/v1/"},
            BackendUrl("http", "api.example.com", 80, "/v1"),
            "api.example.com",
        ),
        (
            {"type": "https", "url": "https://API.example.com:8443"},
            BackendUrl("https", "api.example.com", 8443, ""),
            "api.example.com:8443",
        ),
        (
            {"type": "http", "url": "http://1.1.1.1:8080/a/b"},
            BackendUrl("http", "1.1.1.1", 8080, "/a/b"),
            "1.1.1.1:8080",
        ),
        (
            {"type": "https", "url": "https://[2606:4700::1111]/"},
            BackendUrl("https", "2606:4700::1111", 443, ""),
            "[2606:4700::1111]",
        ),
    ],
    ids=["name-with-base-path", "https-port-lowercased-host", "public-ipv4", "public-ipv6"],
)
def test_http_backend_url(
    conf_dir: Path, backend: dict[str, str], url: BackendUrl, authority: str
) -> None:
    (item_api,) = parsed(conf_dir, put(BACKEND, backend)).apis
    assert (item_api.backend.type, item_api.backend.authorization) == (backend["type"], "")
    assert not item_api.backend.is_vpc()
    assert item_api.backend.url == url
    assert url.authority == authority


def test_https_backend_with_its_ca_file(conf_dir: Path) -> None:
    (item_api,) = parsed(conf_dir, http_backend("https://api.example.com", ca_file="cert.pem")).apis
    assert item_api.backend.ca_file == str(conf_dir / "cert.pem")


GOOD = [
    pytest.param(
        (put("gateway.http_backend_allow", ["127.0.0.0/24"]), http_backend("http://127.0.0.50")),
        id="allowed-range-overrides-loopback-and-vpc",
    ),
    pytest.param(
        (
            append("load_balancer", HTTP_LB),
            put("gateway.http_backend_allow", ["203.0.113.0/24"]),
            append(
                "api",
                {
                    "name": "pub",
                    "path": "/pub/*",
                    "backend": {"type": "http", "url": "http://203.0.113.10"},
                },
            ),
        ),
        id="public-lb-through-an-http-backend",
    ),
    pytest.param(
        (
            append("vpc", VPC_SHANGHAI),
            put("gateway.peered_regions", ["cn-shanghai"]),
            put("authorization[0].vpc", "vpc-sh"),
            put("authorization[0].target", "10.2.0.5"),
        ),
        id="peered-region",
    ),
    pytest.param(
        (put("gateway.egress_source", "127.0.0.1"), http_backend("http://1.1.1.1")),
        id="egress-source-of-the-targets-family",
    ),
    pytest.param((http_backend("http://localhost:8080"),), id="names-are-checked-at-connect"),
    pytest.param(
        (
            put("gateway.listen", ["0.0.0.0:8080"]),
            put("gateway.tls", [{**TLS, "listen": "0.0.0.0:8443"}]),
        ),
        id="tls-on-another-port-of-the-wildcard",
    ),
    pytest.param(
        (put("gateway.tls", [{**TLS, "listen": "127.0.0.1:0"}, {**TLS, "listen": "127.0.0.1:0"}]),),
        id="ephemeral-ports-never-collide",
    ),
]


@pytest.mark.parametrize("edits", GOOD)
def test_good_access_config_parses(conf_dir: Path, edits: tuple[Edit, ...]) -> None:
    assert isinstance(parsed(conf_dir, *edits), Config)


# --- bad configs -------------------------------------------------------------------------------

BAD = [
    # [gateway]
    pytest.param(
        (put("gateway.admin_token", "x"), put("gateway.admin_token_env", "ADMIN")),
        [("gateway.admin_token_env", "give admin_token or admin_token_env, not both")],
        id="admin-token-twice",
    ),
    pytest.param(
        (put("gateway.admin_token_env", "ADMIN-TOKEN"),),
        [
            (
                "gateway.admin_token_env",
                "'ADMIN-TOKEN' is not an environment variable name; use letters, digits and _, "
                "e.g. LBPROXY_ADMIN_TOKEN",
            )
        ],
        id="admin-token-env-not-a-name",
    ),
    pytest.param(
        (put("gateway.admin_token", ""),),
        [("gateway.admin_token", "must not be empty")],
        id="admin-token-empty",
    ),
    pytest.param(
        (put("gateway.state_file", "nowhere/auth.json"),),
        [
            (
                "gateway.state_file",
                "directory '<dir>/nowhere' does not exist; create it or name a file in an "
                "existing directory",
            )
        ],
        id="state-file-in-a-missing-directory",
    ),
    pytest.param(
        (put("gateway.state_file", "state"),),
        [
            (
                "gateway.state_file",
                "'<dir>/state' is a directory; name a file in it, e.g. state.json",
            )
        ],
        id="state-file-is-a-directory",
    ),
    pytest.param(
        (
            append("vpc", VPC_SHANGHAI),
            put("gateway.peered_regions", ["cn-hangzhou", "cn-shanghai", "cn-shanghai"]),
        ),
        [
            ("gateway.peered_regions[0]", "`cn-hangzhou` is the gateway's own region; remove it"),
            ("gateway.peered_regions[2]", "`cn-shanghai` is listed twice; remove one"),
        ],
        id="peered-own-region-and-twice",
    ),
    pytest.param(
        (append("vpc", VPC_SHANGHAI), put("gateway.peered_regions", ["cn-shanghi"])),
        [
            (
                "gateway.peered_regions[0]",
                "no VPC is in region `cn-shanghi`; regions of declared VPCs: `cn-hangzhou`, "
                "`cn-shanghai`",
            )
        ],
        id="peered-region-misspelt",
    ),
    pytest.param(
        (put("gateway.peered_regions", "cn-shanghai"),),
        [("gateway.peered_regions", "expected a list of strings, got a string ('cn-shanghai')")],
        id="peered-regions-not-a-list",
    ),
    pytest.param(
        (put("gateway.egress_source", "0.0.0.0"),),
        [
            (
                "gateway.egress_source",
                "0.0.0.0 is the unspecified address, which leaves the choice to the kernel; give "
                "an address of this host (e.g. 10.0.0.5) or remove the key",
            )
        ],
        id="egress-source-unspecified",
    ),
    pytest.param(
        (put("gateway.egress_source", "ff02::1"),),
        [
            (
                "gateway.egress_source",
                "ff02::1 is a multicast address, which cannot open a connection; give an address "
                "of this host (e.g. 10.0.0.5) or remove the key",
            )
        ],
        id="egress-source-multicast",
    ),
    pytest.param(
        (put("gateway.egress_source", "255.255.255.255"),),
        [
            (
                "gateway.egress_source",
                "255.255.255.255 is a reserved address, which no host has; give an address of "
                "this host (e.g. 10.0.0.5) or remove the key",
            )
        ],
        id="egress-source-broadcast",
    ),
    pytest.param(
        (put("gateway.egress_source", "gw.internal"),),
        [("gateway.egress_source", "'gw.internal' is not an IP address")],
        id="egress-source-a-name",
    ),
    pytest.param(
        (put("gateway.egress_source", "::1"),),
        [
            (
                "authorization[0].target",
                "127.0.0.11 is IPv4, but gateway.egress_source ::1 is IPv6; a connection from it "
                "cannot reach this address",
            )
        ],
        id="egress-source-of-another-family",
    ),
    pytest.param(
        (
            put("gateway.trusted_proxies", ["10.0.0.1/8"]),
            put("gateway.allow", ["nope"]),
            put("gateway.deny", [1]),
            put("gateway.http_backend_allow", ["fd00::/129"]),
        ),
        [
            ("gateway.trusted_proxies[0]", f"'10.0.0.1/8' is not {ADDRESS_OR_CIDR}"),
            ("gateway.allow[0]", f"'nope' is not {ADDRESS_OR_CIDR}"),
            ("gateway.deny[0]", "expected a string, got an integer (1)"),
            ("gateway.http_backend_allow[0]", f"'fd00::/129' is not {ADDRESS_OR_CIDR}"),
        ],
        id="bad-source-ip-lists",
    ),
    # [[gateway.tls]]
    pytest.param(
        (put("gateway.tls", [{**TLS, "listen": "127.0.0.1:8080"}]),),
        [
            (
                "gateway.tls[0].listen",
                "127.0.0.1:8080 overlaps 127.0.0.1:8080, an address in gateway.listen; give the "
                "TLS listener its own port, e.g. 127.0.0.1:8443",
            )
        ],
        id="tls-on-the-plain-address",
    ),
    pytest.param(
        (
            put("gateway.admin_listen", "127.0.0.1:9901"),
            put("gateway.tls", [{**TLS, "listen": "0.0.0.0:9901"}]),
        ),
        [
            (
                "gateway.tls[0].listen",
                "0.0.0.0:9901 overlaps 127.0.0.1:9901, the admin listener (gateway.admin_listen); "
                "give the TLS listener its own port, e.g. 127.0.0.1:8443",
            )
        ],
        id="tls-wildcard-over-the-admin-address",
    ),
    pytest.param(
        (put("gateway.tls", [TLS, TLS]),),
        [
            (
                "gateway.tls[1].listen",
                "127.0.0.1:8443 overlaps 127.0.0.1:8443, already used by gateway.tls[0]; give the "
                "TLS listener its own port, e.g. 127.0.0.1:8443",
            )
        ],
        id="two-tls-listeners-on-one-address",
    ),
    pytest.param(
        (put("gateway.tls", [{**TLS, "listen": "localhost:8443"}]),),
        [("gateway.tls[0].listen", "'localhost:8443' is not an address like 127.0.0.1:8443")],
        id="tls-listen-not-an-address",
    ),
    pytest.param(
        (put("gateway.tls", [{"listen": "127.0.0.1:8443", "cert": "cert.pem"}]),),
        [
            ("gateway.tls[0].cert_file", 'missing; add cert_file = "<path to a PEM file>"'),
            ("gateway.tls[0].key_file", 'missing; add key_file = "<path to a PEM file>"'),
            ("gateway.tls[0].cert", "unknown key; known keys here: cert_file, key_file, listen"),
        ],
        id="tls-without-files",
    ),
    pytest.param(
        (put("gateway.tls", [{**TLS, "cert_file": "nope.pem", "key_file": "cert.pem"}]),),
        [
            (
                "gateway.tls[0].cert_file",
                "cannot read '<dir>/nope.pem': No such file or directory",
            ),
            (
                "gateway.tls[0].key_file",
                "'<dir>/cert.pem' holds no PEM PRIVATE KEY (PRIVATE KEY-----)",
            ),
        ],
        id="tls-files-unreadable-or-wrong",
    ),
    pytest.param(
        (put("gateway.listen", []),),
        [("gateway.listen", 'needs at least one address, e.g. ["127.0.0.1:8080"]')],
        id="no-front-at-all",
    ),
    # [[app]]
    pytest.param(
        (append("app", {"name": "shop", "key": "k"}),),
        [("app[0].secret", 'missing; add secret = "..." or secret_env = "VARIABLE"')],
        id="app-without-secret",
    ),
    pytest.param(
        (append("app", {**APP, "secret_env": "SHOP_SECRET"}),),
        [("app[0].secret_env", "give secret or secret_env, not both")],
        id="app-with-both-secrets",
    ),
    pytest.param(
        (append("app", {"name": "shop", "key": "k", "secret_env": "SHOP_SECRT"}),),
        [
            (
                "app[0].secret_env",
                "environment variable `SHOP_SECRT` is not set; export it before starting "
                'lbproxy, or give secret = "..."',
            )
        ],
        id="app-secret-variable-unset",
    ),
    pytest.param(
        (append("app", {"name": "shop", "key": "k", "secret_env": "EMPTY"}),),
        [("app[0].secret_env", "environment variable `EMPTY` is empty")],
        id="app-secret-variable-empty",
    ),
    pytest.param(
        (append("app", {**APP, "key": "my key"}),),
        [
            (
                "app[0].key",
                "'my key' cannot be sent in X-Ca-Key; use letters, digits and . _ ~ + / = -",
            )
        ],
        id="app-key-with-a-space",
    ),
    pytest.param(
        (append("app", APP), append("app", APP)),
        [
            ("app[1].name", "`shop` is already used by app[0]; names must be unique"),
            ("app[1].key", "`203751` is already used by app[0]; keys must be unique"),
        ],
        id="duplicate-app",
    ),
    pytest.param(
        (append("app", {**APP, "secert": "x"}),),
        [
            (
                "app[0].secert",
                "unknown key; known keys here: key, name, rate_limit, secret, secret_env",
            )
        ],
        id="unknown-app-key",
    ),
    # [[api]] access keys
    pytest.param(
        (put("api[0].auth", "token"),),
        [("api[0].auth", "'token' is not an auth mode; use one of anonymous, app")],
        id="bad-auth-mode",
    ),
    pytest.param(
        (append("app", APP), put("api[0].auth", "app")),
        [
            (
                "api[0].apps",
                'auth = "app" needs the apps it grants; add apps = ["..."] (declared apps: `shop`)',
            )
        ],
        id="app-auth-without-apps",
    ),
    pytest.param(
        (append("app", APP), put("api[0].apps", ["shop"])),
        [
            (
                "api[0].apps",
                'an anonymous API is open to every caller; remove apps, or add auth = "app"',
            )
        ],
        id="anonymous-api-with-apps",
    ),
    pytest.param(
        (
            append("app", APP),
            put("api[0].auth", "app"),
            put("api[0].apps", ["shop", "shp", "shop"]),
        ),
        [
            ("api[0].apps[1]", "app `shp` does not exist; declared apps: `shop`"),
            ("api[0].apps[2]", "`shop` is listed twice; remove one"),
        ],
        id="unknown-and-repeated-apps",
    ),
    pytest.param(
        (put("api[0].rate_limit", {}),),
        [("api[0].rate_limit", "needs per_second = N, per_minute = M, or both")],
        id="empty-rate-limit",
    ),
    pytest.param(
        (put("api[0].rate_limit", {"per_second": 0, "per_hour": 5}),),
        [
            ("api[0].rate_limit.per_second", "0 is out of range; use 1..1000000000"),
            ("api[0].rate_limit.per_hour", "unknown key; known keys here: per_minute, per_second"),
        ],
        id="bad-rate-limit",
    ),
    pytest.param(
        (put("api[0].deny", ["10.0.0.0/33"]),),
        [("api[0].deny[0]", f"'10.0.0.0/33' is not {ADDRESS_OR_CIDR}")],
        id="bad-api-deny",
    ),
    # backends
    pytest.param(
        (put(f"{BACKEND}.type", "ftp"),),
        [("api[0].backend.type", "'ftp' is not a backend type; use one of vpc, http, https")],
        id="bad-backend-type",
    ),
    pytest.param(
        (put(f"{BACKEND}.url", "http://1.1.1.1"), put(f"{BACKEND}.ca_file", "cert.pem")),
        [
            (
                "api[0].backend.url",
                "a vpc backend reaches its target through its authorization; remove url, or use "
                'type = "http"',
            ),
            (
                "api[0].backend.ca_file",
                "a vpc backend takes its TLS settings (tls, ca_file) from its authorization; "
                "remove ca_file",
            ),
        ],
        id="vpc-backend-with-http-keys",
    ),
    pytest.param(
        (put(BACKEND, {"type": "https"}),),
        [("api[0].backend.url", 'missing; add url = "https://api.example.com/v1"')],
        id="https-backend-without-url",
    ),
    pytest.param(
        (http_backend("http://api.example.com", ca_file="cert.pem"),),
        [
            (
                "api[0].backend.ca_file",
                'verifies an https server\'s certificate; remove it or use type = "https"',
            )
        ],
        id="ca-file-on-http",
    ),
    pytest.param(
        (http_backend("https://api.example.com", ca_file="none.pem"),),
        [("api[0].backend.ca_file", "cannot read '<dir>/none.pem': No such file or directory")],
        id="ca-file-missing",
    ),
    pytest.param(
        (put(BACKEND, {"type": "http", "url": "https://api.example.com"}),),
        [
            (
                "api[0].backend.url",
                "'https://api.example.com' is https, but type = \"http\"; make them agree",
            )
        ],
        id="scheme-and-type-disagree",
    ),
    pytest.param(
        (http_backend("http://api.example.com/v1?x=1"),),
        [
            (
                "api[0].backend.url",
                "'http://api.example.com/v1?x=1' has a query; a backend URL is a host, a port and "
                "a path",
            )
        ],
        id="url-with-query",
    ),
    pytest.param(
        (http_backend("http://u:p@api.example.com/"),),
        [
            (
                "api[0].backend.url",
                "'http://u:p@api.example.com/' has credentials; a backend URL is a host, a port "
                "and a path",
            )
        ],
        id="url-with-credentials",
    ),
    pytest.param(
        (http_backend("http://api.example.com:99999"),),
        [
            (
                "api[0].backend.url",
                "'http://api.example.com:99999' is not a URL; e.g. "
                '"http://api.example.com:8080/v1"',
            )
        ],
        id="url-port-out-of-range",
    ),
    pytest.param(
        (put(BACKEND, {"type": "http", "url": "api.example.com"}),),
        [
            (
                "api[0].backend.url",
                "'api.example.com' is not an http or https URL with a host; e.g. "
                '"http://api.example.com:8080/v1"',
            )
        ],
        id="url-without-scheme",
    ),
    pytest.param(
        (http_backend("http://api_example.com"),),
        [
            (
                "api[0].backend.url",
                "'api_example.com' in 'http://api_example.com' is neither a host name nor an IP "
                "address",
            )
        ],
        id="url-bad-host",
    ),
    pytest.param(
        (http_backend("http://api.example.com/v1/../admin"),),
        [
            (
                "api[0].backend.url",
                "'http://api.example.com/v1/../admin' has a dot segment; write the path without it",
            )
        ],
        id="url-dot-segment",
    ),
    # http/https backends may reach public addresses only
    pytest.param(
        (http_backend("http://10.0.0.5:8080"),),
        [("api[0].backend.url", f"10.0.0.5 is a private address; {PUBLIC}")],
        id="private-ipv4",
    ),
    pytest.param(
        (http_backend("http://127.0.0.50"),),
        [("api[0].backend.url", f"127.0.0.50 is inside VPC CIDR 127.0.0.0/8; {IN_VPC}")],
        id="inside-a-vpc",
    ),
    pytest.param(
        (append("vpc", VPC_B), http_backend("https://10.1.2.3")),
        [("api[0].backend.url", f"10.1.2.3 is inside VPC CIDR 10.1.0.0/16; {IN_VPC}")],
        id="inside-a-second-vpc",
    ),
    pytest.param(
        (http_backend("http://169.254.169.254/latest"),),
        [("api[0].backend.url", f"169.254.169.254 is a link-local address; {PUBLIC}")],
        id="metadata-service",
    ),
    pytest.param(
        (http_backend("http://[::1]:8080"),),
        [("api[0].backend.url", f"::1 is a loopback address; {PUBLIC}")],
        id="loopback-ipv6",
    ),
    pytest.param(
        (http_backend("http://[::ffff:192.168.1.1]"),),
        [("api[0].backend.url", f"192.168.1.1 is a private address; {PUBLIC}")],
        id="ipv4-mapped",
    ),
    pytest.param(
        (put("gateway.http_backend_allow", ["10.0.0.0/24"]), http_backend("http://10.0.1.5")),
        [("api[0].backend.url", f"10.0.1.5 is a private address; {PUBLIC}")],
        id="outside-the-allowed-range",
    ),
    pytest.param(
        (put("gateway.egress_source", "127.0.0.1"), http_backend("http://[2606:4700::1111]")),
        [
            (
                "api[0].backend.url",
                "2606:4700::1111 is IPv6, but gateway.egress_source 127.0.0.1 is IPv4; a "
                "connection from it cannot reach this address",
            )
        ],
        id="http-backend-of-another-family",
    ),
    # authorizations
    pytest.param(
        (put("load_balancer[0].internal", False), put("load_balancer[0].ip", "203.0.113.10")),
        [
            (
                "authorization[0].target",
                "load balancer `lb-web` is not internal; only internal load balancers may be VPC "
                "targets; reach a public one with an HTTP/HTTPS-type backend: backend = "
                '{ type = "http", url = "http://203.0.113.10:8081" }',
            )
        ],
        id="public-lb-as-a-vpc-target",
    ),
    pytest.param(
        (
            append("vpc", VPC_SHANGHAI),
            put("gateway.peered_regions", ["cn-shanghai"]),
            append("vpc", {"id": "vpc-bj", "region": "cn-beijing", "cidrs": ["10.3.0.0/16"]}),
            put("authorization[0].vpc", "vpc-bj"),
            put("authorization[0].target", "10.3.0.5"),
        ),
        [
            (
                "authorization[0].vpc",
                "vpc `vpc-bj` is in region `cn-beijing`, but the gateway is in `cn-hangzhou`; "
                "authorize a VPC of `cn-hangzhou`, or add `cn-beijing` to gateway.peered_regions "
                "for a cross-region link",
            )
        ],
        id="region-not-peered",
    ),
    pytest.param(
        (put("authorization[0].vpc", "vpc-dmeo"),),
        [
            (
                "authorization[0].vpc",
                "vpc `vpc-dmeo` does not exist; declared VPCs: `vpc-demo`; target `lb-web` is in "
                "`vpc-demo`",
            )
        ],
        id="misspelt-vpc-names-the-targets-vpc",
    ),
]


@pytest.mark.parametrize(("edits", "expected"), BAD)
def test_bad_access_config_reports_exact_lines(
    conf_dir: Path, edits: tuple[Edit, ...], expected: list[tuple[str, str]]
) -> None:
    file = conf_dir / "gw.toml"
    want = [
        f"{file}: {key}: {message.replace('<dir>', str(conf_dir))}" for key, message in expected
    ]
    assert problem_lines(conf_dir, demo_with(*edits)) == want


def test_secret_env_is_read_from_the_process_environment(
    conf_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LBPROXY_TEST_SECRET", "from-env")
    data = demo_with(append("app", {"name": "a", "key": "k", "secret_env": "LBPROXY_TEST_SECRET"}))
    (app,) = parse_config(data, str(conf_dir / "gw.toml")).apps
    assert app.secret == "from-env"
    monkeypatch.delenv("LBPROXY_TEST_SECRET")
    with pytest.raises(ConfigError, match="`LBPROXY_TEST_SECRET` is not set"):
        parse_config(data, str(conf_dir / "gw.toml"))


def test_an_http_backend_needs_no_authorization(conf_dir: Path) -> None:
    config = parsed(conf_dir, drop("authorization"), http_backend("http://1.1.1.1"))
    assert config.authorizations == ()
    assert "url http://1.1.1.1:80/" in format_table(config, build_reachability(config))
