"""Configuration loading and checking: vector tables of good and bad configs, each bad one with
the exact ``FILE: key.path: message`` lines an operator sees.

Every vector starts from ``lbproxy/demo.toml`` and applies small edits to a copy of it.
"""

from __future__ import annotations

import copy
import ipaddress
import os
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import lbproxy
from lbproxy.config import Config
from lbproxy.configcheck import path_pattern_problem
from lbproxy.configload import load_config, parse_config
from lbproxy.errors import ConfigError, ConfigProblem

FILE = "gw.toml"
DEMO_PATH = Path(lbproxy.__file__).parent / "demo.toml"
DEMO: dict[str, Any] = tomllib.loads(DEMO_PATH.read_text(encoding="utf-8"))

Data = dict[str, Any]
Edit = Callable[[Data], None]

HINT = "use /exact, /prefix/* or /items/{id}"
METHODS = "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS, TRACE or ANY"
ROOT_KEYS = "api, app, authorization, gateway, instance, load_balancer, vpc"
GATEWAY_KEYS = (
    "access_log, admin_listen, admin_token, admin_token_env, allow, client_body_timeout, "
    "client_header_timeout, connect_timeout, deny, egress_source, http_backend_allow, "
    "http_parser, keepalive_timeout, listen, max_body_size, max_client_connections, "
    "max_header_count, max_header_size, max_request_line, max_requests_per_connection, "
    "peered_regions, region, shutdown_timeout, state_file, tls, trusted_proxies, "
    "upstream_idle_timeout, upstream_max_idle, upstream_timeout, workers"
)
LISTENER_KEYS = "health_check, passive, pool, port, retry, scheduler, servers, slow_start"
PEER_SHANGHAI = "or add `cn-shanghai` to gateway.peered_regions for a cross-region link"
WEB_TARGETS = "`i-web-1`, `i-web-2`, `i-web-3`, `lb-web`"

VPC_B = {"id": "vpc-b", "region": "cn-hangzhou", "cidrs": ["10.1.0.0/16"]}
VPC_SHANGHAI = {"id": "vpc-sh", "region": "cn-shanghai", "cidrs": ["10.2.0.0/16"]}
INSTANCE_X = {"id": "i-x", "vpc": "vpc-b", "ip": "10.1.0.5"}
LB_B = {
    "id": "lb-b",
    "vpc": "vpc-b",
    "ip": "10.1.0.10",
    "listener": [{"port": 80, "servers": [{"instance": "i-x", "port": 8000}]}],
}


# --- editing a copy of the demo config ---------------------------------------------------------


def _steps(path: str) -> list[str | int]:
    """``"load_balancer[0].listener"`` -> ``["load_balancer", 0, "listener"]``."""
    steps: list[str | int] = []
    for part in path.split("."):
        name, *indexes = re.split(r"\[(\d+)\]", part)
        steps.append(name)
        steps += [int(i) for i in indexes if i]
    return steps


def _locate(data: Data, path: str) -> tuple[Any, str | int]:
    *parents, last = _steps(path)
    node: Any = data
    for step in parents:
        node = node[step]
    return node, last


def put(path: str, value: Any) -> Edit:
    def edit(data: Data) -> None:
        node, last = _locate(data, path)
        node[last] = copy.deepcopy(value)

    return edit


def drop(path: str) -> Edit:
    def edit(data: Data) -> None:
        node, last = _locate(data, path)
        del node[last]

    return edit


def append(path: str, table: Data) -> Edit:
    """Add a table to an array of tables (``[[vpc]]``, ``[[api]]``, ...)."""

    def edit(data: Data) -> None:
        node, last = _locate(data, path)
        node.setdefault(last, []).append(copy.deepcopy(table))

    return edit


def api(name: str, path: str, methods: list[str] | None = None) -> Data:
    return {
        "name": name,
        "methods": methods or ["GET"],
        "path": path,
        "backend": {"type": "vpc", "authorization": "web-lb-8081"},
    }


def demo_with(*edits: Edit) -> Data:
    data = copy.deepcopy(DEMO)
    for edit in edits:
        edit(data)
    return data


def problem_lines(data: Data, file: str = FILE) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(data, file)
    return [str(problem) for problem in caught.value.problems]


def lines(*problems: tuple[str, str]) -> list[str]:
    return [f"{FILE}: {key}: {message}" for key, message in problems]


# --- good configs ------------------------------------------------------------------------------

GOOD = [
    pytest.param((), id="demo-as-is"),
    pytest.param((put("gateway.http_parser", "h11"),), id="h11-parser"),
    pytest.param(
        (put("authorization[0].target", "127.0.0.20"), put("authorization[0].port", 9000)),
        id="ip-target-inside-cidrs",
    ),
    pytest.param(
        (put("authorization[0].target", "i-web-1"), put("authorization[0].port", 9001)),
        id="instance-target-any-port",
    ),
    pytest.param((drop("authorization[0].host"),), id="no-host"),
    pytest.param((put("api[0].methods", ["get", "post"]),), id="lowercase-methods"),
    pytest.param((put("api[0].methods", ["ANY"]),), id="any-method"),
    pytest.param((drop("api[0].methods"),), id="methods-default-to-get"),
    pytest.param(
        (put("api[0].methods", ["GET"]), append("api", api("items-post", "/items/*", ["POST"]))),
        id="same-path-other-method",
    ),
    pytest.param((append("api", api("items-list", "/items")),), id="exact-beside-prefix"),
    pytest.param((append("api", api("item", "/items/{id}")),), id="param-beside-prefix"),
    pytest.param(
        (
            append("api", api("a", "/v1/{kind}/{id}")),
            append("api", api("b", "/v1/{kind}/{id}/tags")),
        ),
        id="params-of-other-shapes",
    ),
    pytest.param(
        (
            put("vpc[0].cidrs", ["127.0.0.0/8", "fd00::/8"]),
            put("authorization[0].target", "fd00::5"),
            put("authorization[0].port", 7000),
        ),
        id="ipv6-target",
    ),
    pytest.param(
        (
            append(
                "load_balancer",
                {
                    "id": "lb-public",
                    "vpc": "vpc-demo",
                    "ip": "203.0.113.10",
                    "internal": False,
                    "listener": [{"port": 80, "servers": [{"instance": "i-web-1", "port": 9001}]}],
                },
            ),
        ),
        id="public-lb-not-targeted",
    ),
    pytest.param(
        (
            put("gateway.admin_listen", "127.0.0.1:9901"),
            put("gateway.listen", ["127.0.0.1:8080", "[::1]:8080"]),
            put("gateway.keepalive_timeout", 5),
            put("gateway.connect_timeout", 0.5),
            put("gateway.max_header_size", 1024),
            put("api[0].max_body_size", 0),
        ),
        id="gateway-tuning",
    ),
    pytest.param(
        (append("vpc", VPC_B), append("instance", INSTANCE_X), append("load_balancer", LB_B)),
        id="second-vpc-with-its-own-lb",
    ),
    pytest.param((put("authorization[0].host", "www.example.internal:8443"),), id="host-with-port"),
]


@pytest.mark.parametrize("edits", GOOD)
def test_good_config_parses(edits: tuple[Edit, ...]) -> None:
    config = parse_config(demo_with(*edits), FILE)
    assert isinstance(config, Config)
    assert config.file == FILE


def test_demo_config_values() -> None:
    config = parse_config(demo_with(), FILE)
    gw = config.gateway
    assert (gw.region, gw.listen, gw.http_parser) == (
        "cn-hangzhou",
        (("127.0.0.1", 8080),),
        "httptools",
    )
    assert gw.admin_listen == ("127.0.0.1", 9901)
    assert [v.id for v in config.vpcs] == ["vpc-demo"]
    assert config.vpcs[0].cidrs == (ipaddress.ip_network("127.0.0.0/8"),)
    assert [(i.id, str(i.ip)) for i in config.instances] == [
        ("i-web-1", "127.0.0.11"),
        ("i-web-2", "127.0.0.12"),
        ("i-web-3", "127.0.0.13"),
    ]
    (lb,) = config.load_balancers
    assert (lb.id, str(lb.ip), lb.internal) == ("lb-web", "127.0.0.10", True)
    (listener,) = lb.listeners
    assert listener.port == 8081
    assert [(s.instance, s.port, s.weight) for s in listener.servers] == [
        ("i-web-1", 9001, 3),
        ("i-web-2", 9001, 2),
        ("i-web-3", 9001, 1),
    ]
    (auth,) = config.authorizations
    assert (auth.name, auth.vpc, auth.target, auth.port, auth.host) == (
        "web-lb-8081",
        "vpc-demo",
        "lb-web",
        8081,
        "www.example.internal",
    )
    (item_api,) = config.apis
    assert (item_api.name, item_api.methods, item_api.path) == (
        "items",
        ("GET", "HEAD", "POST"),
        "/items/*",
    )
    assert (item_api.backend.authorization, item_api.backend.timeout) == ("web-lb-8081", 10.0)


@pytest.mark.parametrize(
    ("edit", "attribute", "expected"),
    [
        (put("api[0].methods", ["get", "Post"]), "methods", ("GET", "POST")),
        (drop("api[0].methods"), "methods", ("GET",)),
        (put("api[0].max_body_size", 10), "max_body_size", 10),
        (drop("api[0].backend.timeout"), "timeout", 10.0),
        (put("api[0].backend.timeout", 3), "timeout", 3.0),
    ],
    ids=[
        "methods-uppercased",
        "methods-default",
        "max-body-size",
        "timeout-default",
        "int-timeout",
    ],
)
def test_api_values(edit: Edit, attribute: str, expected: object) -> None:
    (parsed,) = parse_config(demo_with(edit), FILE).apis
    holder = parsed.backend if attribute == "timeout" else parsed
    value = getattr(holder, attribute)
    assert value == expected
    assert type(value) is type(expected)


# --- bad configs: parse stage (names, types, ranges, syntax of values) -------------------------

BAD_VALUES = [
    # unknown keys
    pytest.param(
        (put("gatway", {"region": "cn-hangzhou"}),),
        [("gatway", f"unknown key; known keys here: {ROOT_KEYS}")],
        id="unknown-top-level-key",
    ),
    pytest.param(
        (put("gateway.listn", ["127.0.0.1:8080"]),),
        [("gateway.listn", f"unknown key; known keys here: {GATEWAY_KEYS}")],
        id="unknown-gateway-key",
    ),
    pytest.param(
        (put("vpc[0].cidr", "127.0.0.0/8"),),
        [("vpc[0].cidr", "unknown key; known keys here: cidrs, id, region")],
        id="unknown-vpc-key",
    ),
    pytest.param(
        (put("load_balancer[0].listener[0].servers[1].wieght", 2),),
        [
            (
                "load_balancer[0].listener[0].servers[1].wieght",
                "unknown key; known keys here: backup, instance, port, weight",
            )
        ],
        id="unknown-listener-server-key",
    ),
    pytest.param(
        (put("load_balancer[0].listener[0].protocol", "http"),),
        [
            (
                "load_balancer[0].listener[0].protocol",
                f"unknown key; known keys here: {LISTENER_KEYS}",
            )
        ],
        id="unknown-listener-key",
    ),
    pytest.param(
        (put("api[0].backend.timeout_s", 5),),
        [
            (
                "api[0].backend.timeout_s",
                "unknown key; known keys here: authorization, ca_file, timeout, type, url",
            )
        ],
        id="unknown-backend-key",
    ),
    # wrong types
    pytest.param(
        (put("authorization[0].port", "80"),),
        [("authorization[0].port", "expected an integer, got a string ('80')")],
        id="port-is-a-string",
    ),
    pytest.param(
        (put("authorization[0].port", True),),
        [("authorization[0].port", "expected an integer, got True")],
        id="port-is-a-boolean",
    ),
    pytest.param(
        (put("load_balancer[0].listener[0].port", 8081.0),),
        [("load_balancer[0].listener[0].port", "expected an integer, got a number (8081.0)")],
        id="port-is-a-float",
    ),
    pytest.param(
        (put("load_balancer[0].internal", "yes"),),
        [("load_balancer[0].internal", "expected true or false, got a string ('yes')")],
        id="internal-is-a-string",
    ),
    pytest.param(
        (put("gateway.listen", "127.0.0.1:8080"),),
        [("gateway.listen", "expected a list of strings, got a string ('127.0.0.1:8080')")],
        id="listen-is-a-string",
    ),
    pytest.param(
        (put("api[0].methods", ["GET", 1]),),
        [("api[0].methods[1]", "expected a string, got an integer (1)")],
        id="method-is-an-integer",
    ),
    pytest.param(
        (put("gateway.keepalive_timeout", True),),
        [("gateway.keepalive_timeout", "expected a number of seconds, got True")],
        id="timeout-is-a-boolean",
    ),
    pytest.param(
        (put("vpc", {"id": "vpc-demo"}),),
        [("vpc", "expected an array of tables ([[...]]), got a table ({'id': 'vpc-demo'})")],
        id="vpc-is-a-table-not-an-array",
    ),
    pytest.param(
        (put("vpc", ["vpc-demo"]),),
        [("vpc[0]", "expected a table")],
        id="vpc-item-is-not-a-table",
    ),
    pytest.param(
        (put("api[0].backend", "web-lb-8081"),),
        [("api[0].backend", "expected a table, got a string ('web-lb-8081')")],
        id="backend-is-not-a-table",
    ),
    pytest.param(
        (put("gateway", "cn-hangzhou"),),
        [("gateway", "expected a table, got a string ('cn-hangzhou')")],
        id="gateway-is-not-a-table",
    ),
    pytest.param(
        (put("vpc[0].id", "  "),),
        [("vpc[0].id", "must not be empty")],
        id="blank-string",
    ),
    # ranges
    pytest.param(
        (put("authorization[0].port", 0),),
        [("authorization[0].port", "0 is out of range; use 1..65535")],
        id="port-zero",
    ),
    pytest.param(
        (put("authorization[0].port", 65536),),
        [("authorization[0].port", "65536 is out of range; use 1..65535")],
        id="port-too-high",
    ),
    pytest.param(
        (put("load_balancer[0].listener[0].servers[0].port", -1),),
        [("load_balancer[0].listener[0].servers[0].port", "-1 is out of range; use 1..65535")],
        id="server-port-negative",
    ),
    pytest.param(
        (put("load_balancer[0].listener[0].servers[2].weight", 1001),),
        [("load_balancer[0].listener[0].servers[2].weight", "1001 is out of range; use 0..1000")],
        id="weight-too-high",
    ),
    pytest.param(
        (put("gateway.max_header_size", 100),),
        [("gateway.max_header_size", "100 is out of range; use 1024..1048576")],
        id="max-header-size-too-small",
    ),
    pytest.param(
        (put("gateway.connect_timeout", 0),),
        [("gateway.connect_timeout", "0 is not a usable number of seconds; use e.g. 10.0")],
        id="timeout-zero",
    ),
    pytest.param(
        (put("api[0].backend.timeout", -1.5),),
        [("api[0].backend.timeout", "-1.5 is not a usable number of seconds; use e.g. 10.0")],
        id="timeout-negative",
    ),
    pytest.param(
        (put("api[0].backend.timeout", float("nan")),),
        [("api[0].backend.timeout", "nan is not a usable number of seconds; use e.g. 10.0")],
        id="timeout-nan",
    ),
    # missing required keys
    pytest.param(
        (drop("gateway"),),
        [("gateway", 'missing; add a [gateway] table with region = "..."')],
        id="missing-gateway",
    ),
    pytest.param(
        (drop("gateway.region"),),
        [("gateway.region", "missing; add region = <a string>")],
        id="missing-region",
    ),
    pytest.param(
        (drop("vpc[0].id"),),
        [("vpc[0].id", "missing; add id = <a string>")],
        id="missing-vpc-id",
    ),
    pytest.param(
        (drop("vpc[0].cidrs"),),
        [("vpc[0].cidrs", "missing; add cidrs = <a list of strings>")],
        id="missing-cidrs",
    ),
    pytest.param(
        (drop("instance[1].ip"),),
        [("instance[1].ip", "missing; add ip = <a string>")],
        id="missing-instance-ip",
    ),
    pytest.param(
        (drop("load_balancer[0].ip"),),
        [("load_balancer[0].ip", "missing; add ip = <a string>")],
        id="missing-lb-ip",
    ),
    pytest.param(
        (drop("authorization[0].target"), drop("authorization[0].port")),
        [
            ("authorization[0].target", "missing; add target = <a string>"),
            ("authorization[0].port", "missing; add port = <an integer>"),
        ],
        id="missing-target-and-port",
    ),
    pytest.param(
        (drop("api[0].path"),),
        [("api[0].path", "missing; add path = <a string>")],
        id="missing-api-path",
    ),
    pytest.param(
        (drop("api[0].backend"),),
        [("api[0].backend", 'missing; add backend = { type = "vpc", authorization = "..." }')],
        id="missing-backend",
    ),
    pytest.param(
        (drop("api[0].backend.authorization"),),
        [("api[0].backend.authorization", "missing; add authorization = <a string>")],
        id="missing-backend-authorization",
    ),
    pytest.param(
        (drop("load_balancer[0].listener"),),
        [
            (
                "load_balancer[0].listener",
                "a load balancer needs at least one [[load_balancer.listener]]",
            )
        ],
        id="lb-without-listener",
    ),
    pytest.param(
        (put("load_balancer[0].listener[0].servers", []),),
        [
            (
                "load_balancer[0].listener[0].servers",
                "a listener needs at least one server: { instance = ..., port = ... }",
            )
        ],
        id="listener-without-servers",
    ),
    pytest.param(
        (put("vpc[0].cidrs", []),),
        [("vpc[0].cidrs", 'needs at least one CIDR, e.g. ["10.0.0.0/16"]')],
        id="vpc-without-cidrs",
    ),
    # bad IPs, CIDRs and addresses
    pytest.param(
        (put("instance[0].ip", "127.0.0.300"),),
        [("instance[0].ip", "'127.0.0.300' is not an IP address")],
        id="bad-instance-ip",
    ),
    pytest.param(
        (put("load_balancer[0].ip", "lb.internal"),),
        [("load_balancer[0].ip", "'lb.internal' is not an IP address")],
        id="hostname-as-lb-ip",
    ),
    pytest.param(
        (put("vpc[0].cidrs", ["127.0.0.0/8", "10.0.0.0/33", "not-a-cidr"]),),
        [
            ("vpc[0].cidrs[1]", "'10.0.0.0/33' is not a CIDR like 10.0.0.0/16"),
            ("vpc[0].cidrs[2]", "'not-a-cidr' is not a CIDR like 10.0.0.0/16"),
        ],
        id="bad-cidrs",
    ),
    pytest.param(
        (put("vpc[0].cidrs", ["127.0.0.1/8"]),),
        [("vpc[0].cidrs[0]", "'127.0.0.1/8' is not a CIDR like 10.0.0.0/16")],
        id="cidr-with-host-bits",
    ),
    pytest.param(
        (put("gateway.listen", ["127.0.0.1:8080", "localhost:8080", "127.0.0.1:99999"]),),
        [
            ("gateway.listen[1]", "'localhost:8080' is not an address like 127.0.0.1:8080"),
            ("gateway.listen[2]", "'127.0.0.1:99999' is not an address like 127.0.0.1:8080"),
        ],
        id="bad-listen-addresses",
    ),
    pytest.param(
        (put("gateway.admin_listen", "127.0.0.1"),),
        [("gateway.admin_listen", "'127.0.0.1' is not an address like 127.0.0.1:8080")],
        id="admin-listen-without-port",
    ),
    # choices
    pytest.param(
        (put("gateway.http_parser", "llhttp"),),
        [("gateway.http_parser", "'llhttp' is not a parser; use one of httptools, h11")],
        id="bad-http-parser",
    ),
    pytest.param(
        (put("api[0].backend.type", "http"),),
        [
            (
                "api[0].backend.authorization",
                "an http backend connects to its url without an authorization; remove "
                'authorization, or use type = "vpc"',
            ),
            ("api[0].backend.url", 'missing; add url = "http://api.example.com/v1"'),
        ],
        id="http-backend-with-an-authorization",
    ),
    # every problem at once, in file order
    pytest.param(
        (
            put("gateway.max_header_size", 100),
            put("vpc[0].cidrs", ["127.0.0.0/8", "10.0.0.0/33"]),
            put("instance[2].ip", "127.0.0.300"),
            put("authorization[0].port", "8081"),
            put("authorization[0].tagret", "lb-web"),
            drop("api[0].path"),
        ),
        [
            ("gateway.max_header_size", "100 is out of range; use 1024..1048576"),
            ("vpc[0].cidrs[1]", "'10.0.0.0/33' is not a CIDR like 10.0.0.0/16"),
            ("instance[2].ip", "'127.0.0.300' is not an IP address"),
            ("authorization[0].port", "expected an integer, got a string ('8081')"),
            (
                "authorization[0].tagret",
                "unknown key; known keys here: ca_file, host, name, port, target, tls, vpc",
            ),
            ("api[0].path", "missing; add path = <a string>"),
        ],
        id="several-value-problems",
    ),
]


# --- bad configs: cross-reference stage (what may reach what) ----------------------------------

BAD_REFERENCES = [
    # duplicates
    pytest.param(
        (append("vpc", {"id": "vpc-demo", "region": "cn-hangzhou", "cidrs": ["10.0.0.0/8"]}),),
        [("vpc[1].id", "`vpc-demo` is already used by vpc[0]; ids must be unique")],
        id="duplicate-vpc-id",
    ),
    pytest.param(
        (append("instance", {"id": "i-web-2", "vpc": "vpc-demo", "ip": "127.0.0.14"}),),
        [("instance[3].id", "`i-web-2` is already used by instance[1]; ids must be unique")],
        id="duplicate-instance-id",
    ),
    pytest.param(
        (
            append(
                "authorization",
                {"name": "web-lb-8081", "vpc": "vpc-demo", "target": "i-web-1", "port": 9001},
            ),
        ),
        [
            (
                "authorization[1].name",
                "`web-lb-8081` is already used by authorization[0]; names must be unique",
            )
        ],
        id="duplicate-authorization-name",
    ),
    pytest.param(
        (append("api", api("items", "/other/*")),),
        [("api[1].name", "`items` is already used by api[0]; names must be unique")],
        id="duplicate-api-name",
    ),
    pytest.param(
        (append("instance", {"id": "lb-web", "vpc": "vpc-demo", "ip": "127.0.0.14"}),),
        [
            (
                "instance[3].id",
                "`lb-web` is also a load balancer id; an authorization target must name exactly "
                "one thing",
            )
        ],
        id="instance-id-is-an-lb-id",
    ),
    pytest.param(
        (
            append(
                "load_balancer[0].listener",
                {"port": 8081, "servers": [{"instance": "i-web-1", "port": 9002}]},
            ),
        ),
        [
            (
                "load_balancer[0].listener[1].port",
                "`8081` is already used by load_balancer[0].listener[0]; ports must be unique",
            )
        ],
        id="duplicate-listener-port",
    ),
    pytest.param(
        (put("gateway.listen", []),),
        [("gateway.listen", 'needs at least one address, e.g. ["127.0.0.1:8080"]')],
        id="no-listen-address",
    ),
    # instances and load balancers in their VPC
    pytest.param(
        (put("instance[0].ip", "10.0.0.5"),),
        [("instance[0].ip", "10.0.0.5 is outside vpc `vpc-demo`, whose CIDRs are 127.0.0.0/8")],
        id="instance-outside-vpc-cidrs",
    ),
    pytest.param(
        (put("vpc[0].cidrs", ["127.0.0.8/30", "127.0.0.12/32"]),),
        [
            (
                "instance[2].ip",
                "127.0.0.13 is outside vpc `vpc-demo`, whose CIDRs are 127.0.0.8/30, 127.0.0.12/32",
            )
        ],
        id="instance-outside-all-cidrs",
    ),
    pytest.param(
        (put("instance[0].vpc", "vpc-x"),),
        [
            ("instance[0].vpc", "vpc `vpc-x` does not exist; declared VPCs: `vpc-demo`"),
            (
                "load_balancer[0].listener[0].servers[0].instance",
                "instance `i-web-1` is in `vpc-x`, not `vpc-demo`; a load balancer serves only "
                "its own VPC",
            ),
        ],
        id="instance-in-missing-vpc",
    ),
    pytest.param(
        (put("load_balancer[0].ip", "10.0.0.10"),),
        [
            (
                "load_balancer[0].ip",
                "10.0.0.10 is outside vpc `vpc-demo`, whose CIDRs are 127.0.0.0/8; an internal "
                "load balancer has a private address in its VPC",
            )
        ],
        id="internal-lb-outside-vpc",
    ),
    pytest.param(
        (
            append("vpc", VPC_B),
            append("instance", INSTANCE_X),
            put("load_balancer[0].listener[0].servers[1].instance", "i-x"),
        ),
        [
            (
                "load_balancer[0].listener[0].servers[1].instance",
                "instance `i-x` is in `vpc-b`, not `vpc-demo`; a load balancer serves only its "
                "own VPC",
            )
        ],
        id="lb-server-in-another-vpc",
    ),
    pytest.param(
        (put("load_balancer[0].listener[0].servers[0].instance", "i-web-9"),),
        [
            (
                "load_balancer[0].listener[0].servers[0].instance",
                "instance `i-web-9` does not exist; instances in `vpc-demo`: `i-web-1`, "
                "`i-web-2`, `i-web-3`",
            )
        ],
        id="lb-server-missing",
    ),
    # authorizations
    pytest.param(
        (append("vpc", VPC_B), put("authorization[0].vpc", "vpc-x")),
        [
            (
                "authorization[0].vpc",
                "vpc `vpc-x` does not exist; declared VPCs: `vpc-b`, `vpc-demo`; target `lb-web` "
                "is in `vpc-demo`",
            )
        ],
        id="authorization-to-missing-vpc",
    ),
    pytest.param(
        (put("vpc[0].region", "cn-shanghai"),),
        [
            (
                "authorization[0].vpc",
                "vpc `vpc-demo` is in region `cn-shanghai`, but the gateway is in `cn-hangzhou`; "
                f"authorize a VPC of `cn-hangzhou`, {PEER_SHANGHAI}",
            )
        ],
        id="vpc-in-another-region",
    ),
    pytest.param(
        (
            append("vpc", VPC_SHANGHAI),
            put("authorization[0].vpc", "vpc-sh"),
            put("authorization[0].target", "10.2.0.5"),
        ),
        [
            (
                "authorization[0].vpc",
                "vpc `vpc-sh` is in region `cn-shanghai`, but the gateway is in `cn-hangzhou`; "
                f"authorize a VPC of `cn-hangzhou`, {PEER_SHANGHAI}",
            )
        ],
        id="second-vpc-in-another-region",
    ),
    pytest.param(
        (put("authorization[0].target", "i-nope"),),
        [
            (
                "authorization[0].target",
                "`i-nope` is neither an instance, a load balancer nor an IP address; targets in "
                f"`vpc-demo`: {WEB_TARGETS}",
            )
        ],
        id="target-does-not-exist",
    ),
    pytest.param(
        (
            append("vpc", VPC_B),
            append("instance", INSTANCE_X),
            put("authorization[0].target", "i-x"),
        ),
        [("authorization[0].target", "instance `i-x` is in `vpc-b`, not `vpc-demo`")],
        id="target-instance-in-another-vpc",
    ),
    pytest.param(
        (
            append("vpc", VPC_B),
            append("instance", INSTANCE_X),
            append("load_balancer", LB_B),
            put("authorization[0].target", "lb-b"),
            put("authorization[0].port", 80),
        ),
        [("authorization[0].target", "load balancer `lb-b` is in `vpc-b`, not `vpc-demo`")],
        id="target-lb-in-another-vpc",
    ),
    pytest.param(
        (put("load_balancer[0].internal", False),),
        [
            (
                "authorization[0].target",
                "load balancer `lb-web` is not internal; only internal load balancers may be VPC "
                "targets; reach a public one with an HTTP/HTTPS-type backend: backend = "
                '{ type = "http", url = "http://127.0.0.10:8081" }',
            )
        ],
        id="target-lb-not-internal",
    ),
    pytest.param(
        (put("authorization[0].port", 81),),
        [
            (
                "authorization[0].port",
                "port 81 is not a listener of `lb-web`, which listens on 8081",
            )
        ],
        id="port-not-a-listener",
    ),
    pytest.param(
        (
            append(
                "load_balancer[0].listener",
                {"port": 8082, "servers": [{"instance": "i-web-1", "port": 9002}]},
            ),
            put("authorization[0].port", 81),
        ),
        [
            (
                "authorization[0].port",
                "port 81 is not a listener of `lb-web`, which listens on 8081, 8082",
            )
        ],
        id="port-not-one-of-the-listeners",
    ),
    pytest.param(
        (put("authorization[0].target", "10.0.0.5"),),
        [
            (
                "authorization[0].target",
                "10.0.0.5 is outside vpc `vpc-demo`, whose CIDRs are 127.0.0.0/8",
            )
        ],
        id="ip-target-outside-cidrs",
    ),
    pytest.param(
        (put("authorization[0].host", "www example"),),
        [("authorization[0].host", "'www example' is not a valid Host header value")],
        id="bad-host",
    ),
    # APIs
    pytest.param(
        (put("api[0].backend.authorization", "web"),),
        [
            (
                "api[0].backend.authorization",
                "authorization `web` does not exist; declared authorizations: `web-lb-8081`",
            )
        ],
        id="api-names-missing-authorization",
    ),
    pytest.param(
        (put("api[0].methods", ["GET", "FETCH"]),),
        [("api[0].methods[1]", f"'FETCH' is not a method; use {METHODS}")],
        id="bad-method",
    ),
    pytest.param(
        (put("api[0].methods", ["CONNECT"]),),
        [("api[0].methods[0]", f"'CONNECT' is not a method; use {METHODS}")],
        id="connect-is-not-routable",
    ),
    pytest.param(
        (put("api[0].methods", []),),
        [("api[0].methods", "needs at least one method")],
        id="no-methods",
    ),
    pytest.param(
        (put("api[0].path", "items/*"),),
        [("api[0].path", f"'items/*' must start with '/'; {HINT}")],
        id="path-without-leading-slash",
    ),
    pytest.param(
        (put("api[0].path", "/items/*/tags"),),
        [("api[0].path", f"segment '*' of '/items/*/tags' is not valid; {HINT}")],
        id="path-star-not-last",
    ),
    # routes: two APIs for one method and path
    pytest.param(
        (append("api", api("items-again", "/items/*")),),
        [("api[1].path", "GET /items/* is already routed by api[0] (`items`)")],
        id="route-conflict",
    ),
    pytest.param(
        (
            put("api[0].path", "/items/{id}"),
            append("api", api("item-by-key", "/items/{key}", ["DELETE", "POST"])),
        ),
        [("api[1].path", "POST /items/{key} is already routed by api[0] (`items`)")],
        id="route-conflict-same-param-shape",
    ),
    pytest.param(
        (append("api", api("everything", "/items/*", ["ANY"])),),
        [("api[1].path", "GET /items/* is already routed by api[0] (`items`)")],
        id="route-conflict-any",
    ),
    # every problem at once
    pytest.param(
        (
            append("vpc", VPC_SHANGHAI),
            put("instance[0].ip", "10.0.0.5"),
            put("authorization[0].vpc", "vpc-sh"),
            put("api[0].backend.authorization", "web"),
            append("api", api("items", "/items/*")),
        ),
        [
            ("api[1].name", "`items` is already used by api[0]; names must be unique"),
            ("instance[0].ip", "10.0.0.5 is outside vpc `vpc-demo`, whose CIDRs are 127.0.0.0/8"),
            (
                "authorization[0].vpc",
                "vpc `vpc-sh` is in region `cn-shanghai`, but the gateway is in `cn-hangzhou`; "
                f"authorize a VPC of `cn-hangzhou`, {PEER_SHANGHAI}",
            ),
            ("authorization[0].target", "load balancer `lb-web` is in `vpc-demo`, not `vpc-sh`"),
            (
                "api[0].backend.authorization",
                "authorization `web` does not exist; declared authorizations: `web-lb-8081`",
            ),
            ("api[1].path", "GET /items/* is already routed by api[0] (`items`)"),
        ],
        id="several-reference-problems",
    ),
]


@pytest.mark.parametrize(("edits", "expected"), BAD_VALUES + BAD_REFERENCES)
def test_bad_config_reports_exact_lines(
    edits: tuple[Edit, ...], expected: list[tuple[str, str]]
) -> None:
    assert problem_lines(demo_with(*edits)) == lines(*expected)


def test_config_error_names_file_key_and_message() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(demo_with(put("authorization[0].port", 81)), "/etc/lbproxy/gw.toml")
    (problem,) = caught.value.problems
    assert (problem.file, problem.key) == ("/etc/lbproxy/gw.toml", "authorization[0].port")
    assert str(problem) == (
        "/etc/lbproxy/gw.toml: authorization[0].port: "
        "port 81 is not a listener of `lb-web`, which listens on 8081"
    )
    assert str(caught.value) == str(problem)


def test_config_error_message_joins_every_problem() -> None:
    error = ConfigError([ConfigProblem("a.toml", "x", "one"), ConfigProblem("a.toml", "y", "two")])
    assert str(error) == "a.toml: x: one\na.toml: y: two"
    assert repr(error.problems[0]) == "ConfigProblem('a.toml', 'x', 'one')"


def test_empty_document_reports_the_missing_gateway() -> None:
    assert problem_lines({}) == lines(
        ("gateway", 'missing; add a [gateway] table with region = "..."')
    )


# --- API path patterns -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/", "/*", "/items", "/items/", "/items/*", "/items/{id}", "/v1/{kind}/{id}/tags", "/a.b/~c"],
)
def test_path_pattern_accepted(path: str) -> None:
    assert path_pattern_problem(path) is None


DOT = " can never match (requests with dot segments are refused); write the path without it"

REFUSED_PATTERNS = [
    ("", f"'' must start with '/'; {HINT}"),
    ("items", f"'items' must start with '/'; {HINT}"),
    ("*", f"'*' must start with '/'; {HINT}"),
    ("/a//b", f"segment '' of '/a//b' is not valid; {HINT}"),
    ("/items/*/x", f"segment '*' of '/items/*/x' is not valid; {HINT}"),
    ("/items/x*", f"segment 'x*' of '/items/x*' is not valid; {HINT}"),
    ("/items/{id", f"segment '{{id' of '/items/{{id' is not valid; {HINT}"),
    ("/items/{1d}", f"segment '{{1d}}' of '/items/{{1d}}' is not valid; {HINT}"),
    ("/items/id-{id}", f"segment 'id-{{id}}' of '/items/id-{{id}}' is not valid; {HINT}"),
    ("/a b", f"segment 'a b' of '/a b' is not valid; {HINT}"),
    ("/a?b", f"segment 'a?b' of '/a?b' is not valid; {HINT}"),
    # the router refuses dot segments in requests, so such a pattern could never match
    ("/a/../b", "dot segment '..' in '/a/../b'" + DOT),
    ("/a/./b", "dot segment '.' in '/a/./b'" + DOT),
    ("/a/%2e%2e/b", "dot segment '%2e%2e' in '/a/%2e%2e/b'" + DOT),
    # the router matches a prefix literally, so `{id}` before `/*` would never match a request
    ("/items/{id}/*", f"segment '*' of '/items/{{id}}/*' is not valid; {HINT}"),
]


@pytest.mark.parametrize(
    ("path", "problem"), REFUSED_PATTERNS, ids=[repr(path) for path, _ in REFUSED_PATTERNS]
)
def test_path_pattern_refused(path: str, problem: str) -> None:
    assert path_pattern_problem(path) == problem


def test_bad_path_is_reported_at_its_key() -> None:
    assert problem_lines(demo_with(put("api[0].path", "/items/*/x"))) == lines(
        ("api[0].path", f"segment '*' of '/items/*/x' is not valid; {HINT}")
    )


# --- running it: access_log, workers, shutdown_timeout -----------------------------------------

WORKERS_RANGE = 'use 1..1024 or "auto"'


def test_operation_defaults() -> None:
    gw = parse_config(demo_with(), FILE).gateway
    assert (gw.access_log, gw.workers, gw.shutdown_timeout) == ("off", 1, 30.0)
    assert gw.worker_count() == 1


@pytest.mark.parametrize(
    ("edit", "attribute", "expected"),
    [
        (put("gateway.access_log", "off"), "access_log", "off"),
        (put("gateway.access_log", "stdout"), "access_log", "stdout"),
        (put("gateway.access_log", "/tmp/access.log"), "access_log", "/tmp/access.log"),
        (put("gateway.workers", 4), "workers", 4),
        (put("gateway.workers", 1024), "workers", 1024),
        (put("gateway.workers", "auto"), "workers", "auto"),
        (put("gateway.shutdown_timeout", 5), "shutdown_timeout", 5.0),
        (put("gateway.shutdown_timeout", 0.5), "shutdown_timeout", 0.5),
    ],
    ids=[
        "access-log-off",
        "access-log-stdout",
        "access-log-absolute-path",
        "workers-4",
        "workers-max",
        "workers-auto",
        "int-shutdown-timeout",
        "short-shutdown-timeout",
    ],
)
def test_operation_values(edit: Edit, attribute: str, expected: object) -> None:
    value = getattr(parse_config(demo_with(edit), FILE).gateway, attribute)
    assert value == expected
    assert type(value) is type(expected)


def test_workers_auto_counts_the_usable_cpus() -> None:
    gw = parse_config(demo_with(put("gateway.workers", "auto")), FILE).gateway
    assert gw.worker_count() == len(os.sched_getaffinity(0))
    assert parse_config(demo_with(put("gateway.workers", 3)), FILE).gateway.worker_count() == 3


def test_relative_access_log_is_taken_from_the_config_directory(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    data = demo_with(put("gateway.access_log", "logs/access.log"))
    config = parse_config(data, str(tmp_path / "gw.toml"))
    assert config.gateway.access_log == str(tmp_path / "logs" / "access.log")


def test_access_log_in_a_missing_directory_is_refused(tmp_path: Path) -> None:
    data = demo_with(put("gateway.access_log", "logs/access.log"))
    lines_seen = problem_lines(data, str(tmp_path / "gw.toml"))
    assert lines_seen == [
        f"{tmp_path / 'gw.toml'}: gateway.access_log: directory {str(tmp_path / 'logs')!r} "
        "does not exist; create it (the file itself is created)"
    ]


def test_access_log_naming_a_directory_is_refused(tmp_path: Path) -> None:
    data = demo_with(put("gateway.access_log", str(tmp_path)))
    assert problem_lines(data) == lines(
        (
            "gateway.access_log",
            f"{str(tmp_path)!r} is a directory; name a file in it, or use off or stdout",
        )
    )


OPERATION_PROBLEMS = [
    pytest.param(
        (put("gateway.workers", 0),),
        [("gateway.workers", f"0 is out of range; {WORKERS_RANGE}")],
        id="zero-workers",
    ),
    pytest.param(
        (put("gateway.workers", 1025),),
        [("gateway.workers", f"1025 is out of range; {WORKERS_RANGE}")],
        id="too-many-workers",
    ),
    pytest.param(
        (put("gateway.workers", "many"),),
        [("gateway.workers", f"'many' is not a number of workers; {WORKERS_RANGE}")],
        id="workers-word",
    ),
    pytest.param(
        (put("gateway.workers", "4"),),
        [("gateway.workers", f"'4' is not a number of workers; {WORKERS_RANGE}")],
        id="workers-quoted-number",
    ),
    pytest.param(
        (put("gateway.workers", True),),
        [("gateway.workers", 'expected an integer or "auto", got True')],
        id="workers-boolean",
    ),
    pytest.param(
        (put("gateway.workers", 2.5),),
        [("gateway.workers", 'expected an integer or "auto", got a number (2.5)')],
        id="workers-fraction",
    ),
    pytest.param(
        (put("gateway.shutdown_timeout", 0),),
        [("gateway.shutdown_timeout", "0 is not a usable number of seconds; use e.g. 10.0")],
        id="zero-shutdown-timeout",
    ),
    pytest.param(
        (put("gateway.shutdown_timeout", -1.5),),
        [("gateway.shutdown_timeout", "-1.5 is not a usable number of seconds; use e.g. 10.0")],
        id="negative-shutdown-timeout",
    ),
    pytest.param(
        (put("gateway.shutdown_timeout", "30s"),),
        [("gateway.shutdown_timeout", "expected a number of seconds, got a string ('30s')")],
        id="shutdown-timeout-with-unit",
    ),
    pytest.param(
        (put("gateway.access_log", ""),),
        [("gateway.access_log", "must not be empty")],
        id="empty-access-log",
    ),
    pytest.param(
        (put("gateway.access_log", True),),
        [("gateway.access_log", "expected a string, got True")],
        id="access-log-boolean",
    ),
    pytest.param(
        (put("gateway.access_log", "/nonexistent-lbproxy-dir/access.log"),),
        [
            (
                "gateway.access_log",
                "directory '/nonexistent-lbproxy-dir' does not exist; "
                "create it (the file itself is created)",
            )
        ],
        id="access-log-directory-missing",
    ),
    pytest.param(
        (
            put("gateway.workers", 0),
            put("gateway.shutdown_timeout", 0),
            put("gateway.access_log", 1),
        ),
        [
            ("gateway.workers", f"0 is out of range; {WORKERS_RANGE}"),
            ("gateway.access_log", "expected a string, got an integer (1)"),
            ("gateway.shutdown_timeout", "0 is not a usable number of seconds; use e.g. 10.0"),
        ],
        id="every-operation-problem-reported",
    ),
]


@pytest.mark.parametrize(("edits", "expected"), OPERATION_PROBLEMS)
def test_operation_problems_report_exact_lines(
    edits: tuple[Edit, ...], expected: list[tuple[str, str]]
) -> None:
    assert problem_lines(demo_with(*edits)) == lines(*expected)


# --- load_config -------------------------------------------------------------------------------


def test_load_config_reads_the_example() -> None:
    path = str(Path(__file__).parent.parent / "examples" / "demo.toml")
    config = load_config(path)
    assert config.file == path
    assert config == parse_config(tomllib.loads(Path(path).read_text(encoding="utf-8")), path)


def test_load_config_reports_toml_syntax_errors(tmp_path: Path) -> None:
    text = '[gateway]\nregion = "cn-hangzhou"\nlisten = [127.0.0.1:8080]\n'
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(tomllib.TOMLDecodeError) as toml_error:
        tomllib.loads(text)
    assert "line 3" in str(toml_error.value)
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert [str(p) for p in caught.value.problems] == [
        f"{path}: (syntax): invalid TOML: {toml_error.value}"
    ]


def test_load_config_reports_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert [str(p) for p in caught.value.problems] == [
        f"{path}: (file): cannot read: No such file or directory"
    ]


def test_load_config_reports_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(str(tmp_path))
    assert [str(p) for p in caught.value.problems] == [
        f"{tmp_path}: (file): cannot read: Is a directory"
    ]


def test_load_config_reports_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('[gateway]\nregion = "caf\u00e9"\n'.encode("latin-1"))
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    (problem,) = caught.value.problems
    assert (problem.file, problem.key) == (str(path), "(syntax)")
    assert problem.message.startswith("invalid TOML: ")


def test_load_config_reports_value_problems_with_the_path(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    text = DEMO_PATH.read_text(encoding="utf-8").replace("port = 8081\nhost", "port = 81\nhost")
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert [str(p) for p in caught.value.problems] == [
        f"{path}: authorization[0].port: port 81 is not a listener of `lb-web`, which listens on "
        "8081"
    ]
