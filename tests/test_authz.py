"""The reachability table: exactly what each authorization lets the gateway connect to."""

from __future__ import annotations

import copy
import ipaddress
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

import lbproxy
from lbproxy.authz import (
    Endpoint,
    Reach,
    build_reachability,
    format_egress,
    format_table,
    public_address_problem,
)
from lbproxy.config import Config
from lbproxy.configload import load_config, parse_config

DEMO: dict[str, Any] = tomllib.loads(
    (Path(lbproxy.__file__).parent / "demo.toml").read_text(encoding="utf-8")
)
WEB_SERVERS = frozenset({("127.0.0.11", 9001), ("127.0.0.12", 9001), ("127.0.0.13", 9001)})


def demo_config(**authorization: Any) -> Config:
    """The demo config, its one authorization updated with ``authorization``."""
    data = copy.deepcopy(DEMO)
    data["authorization"][0].update(authorization)
    return parse_config(data, "demo.toml")


def api_reach(config: Config) -> Reach:
    (api,) = config.apis
    return build_reachability(config).by_authorization[api.backend.authorization]


def test_demo_api_reaches_exactly_the_three_servers() -> None:
    reach = api_reach(demo_config())
    assert reach.allowed == WEB_SERVERS
    assert reach.endpoints == (
        Endpoint("127.0.0.11", 9001, 3, "i-web-1"),
        Endpoint("127.0.0.12", 9001, 2, "i-web-2"),
        Endpoint("127.0.0.13", 9001, 1, "i-web-3"),
    )
    assert (reach.scope, reach.target, reach.host) == (
        "authorization web-lb-8081",
        "load balancer lb-web:8081",
        "www.example.internal",
    )
    assert reach.balanced_by == "lb-web:8081"


@pytest.mark.parametrize(
    ("ip", "port", "permitted"),
    [
        ("127.0.0.11", 9001, True),
        ("127.0.0.12", 9001, True),
        ("127.0.0.13", 9001, True),
        ("127.0.0.11", 9002, False),
        ("127.0.0.11", 8081, False),
        ("127.0.0.14", 9001, False),
        ("127.0.0.1", 9001, False),
        ("127.0.0.10", 8081, False),
        ("10.0.0.11", 9001, False),
    ],
)
def test_demo_permits(ip: str, port: int, permitted: bool) -> None:
    assert api_reach(demo_config()).permits(ip, port) is permitted


def test_listener_reach_matches_the_load_balancer() -> None:
    table = build_reachability(demo_config())
    assert list(table.by_listener) == ["lb-web:8081"]
    listener = table.by_listener["lb-web:8081"]
    assert listener.allowed == WEB_SERVERS
    assert [e.weight for e in listener.endpoints] == [3, 2, 1]
    assert (listener.scope, listener.host, listener.balanced_by) == (
        "listener lb-web:8081",
        None,
        "lb-web:8081",
    )


@pytest.mark.parametrize(
    ("ip", "port", "permitted"),
    [
        ("127.0.0.12", 9005, True),
        ("127.0.0.12", 9001, False),
        ("127.0.0.12", 9006, False),
        ("127.0.0.11", 9005, False),
    ],
)
def test_instance_target_allows_exactly_its_port(ip: str, port: int, permitted: bool) -> None:
    reach = api_reach(demo_config(target="i-web-2", port=9005))
    assert reach.allowed == frozenset({("127.0.0.12", 9005)})
    assert reach.endpoints == (Endpoint("127.0.0.12", 9005, 1, "i-web-2"),)
    assert (reach.target, reach.balanced_by) == ("instance i-web-2", None)
    assert reach.permits(ip, port) is permitted


@pytest.mark.parametrize(
    ("target", "ip", "shown"),
    [
        ("127.0.0.20", "127.0.0.20", "127.0.0.20:7000"),
        ("fd00::5", "fd00::5", "[fd00::5]:7000"),
        ("fd00:0:0::0005", "fd00::5", "[fd00::5]:7000"),
    ],
)
def test_ip_target(target: str, ip: str, shown: str) -> None:
    data = copy.deepcopy(DEMO)
    data["vpc"][0]["cidrs"] = ["127.0.0.0/8", "fd00::/8"]
    data["authorization"][0].update(target=target, port=7000)
    config = parse_config(data, "demo.toml")
    reach = api_reach(config)
    assert reach.allowed == frozenset({(ip, 7000)})
    assert (reach.target, reach.balanced_by) == (f"ip {target}", None)
    assert reach.permits(ip, 7000)
    assert not reach.permits(ip, 7001)
    assert [str(e) for e in reach.endpoints] == [shown]
    assert shown in format_table(config, build_reachability(config))


def test_format_table_shows_every_endpoint() -> None:
    config = demo_config()
    text = format_table(config, build_reachability(config))
    for endpoint in ("127.0.0.11:9001", "127.0.0.12:9001", "127.0.0.13:9001"):
        assert endpoint in text
    header, row, listener, egress = text.splitlines()
    assert header.split() == ["API", "METHODS", "PATH", "AUTHORIZATION", "TARGET", "REACHES"]
    assert row.split(maxsplit=4) == [
        "items",
        "GET,HEAD,POST",
        "/items/*",
        "web-lb-8081",
        "load balancer lb-web:8081  127.0.0.11:9001, 127.0.0.12:9001, 127.0.0.13:9001",
    ]
    assert listener == (
        "load balancer listener lb-web:8081 -> 127.0.0.11:9001 (w3, i-web-1), "
        "127.0.0.12:9001 (w2, i-web-2), 127.0.0.13:9001 (w1, i-web-3)"
    )
    assert egress == format_egress(config)


# --- http/https backends: public addresses only -------------------------------------------------

VPCS = (ipaddress.ip_network("10.1.0.0/16"), ipaddress.ip_network("fd12::/16"))
PUBLIC = (
    "http/https backends reach public addresses only (a lab may list the range in "
    "gateway.http_backend_allow)"
)
IN_VPC = "reach VPC addresses with a vpc backend through an [[authorization]]"


@pytest.mark.parametrize(
    ("address", "allowed", "problem"),
    [
        ("1.1.1.1", [], None),
        ("2606:4700::1111", [], None),
        ("10.0.0.1", [], f"10.0.0.1 is a private address; {PUBLIC}"),
        ("172.16.5.4", [], f"172.16.5.4 is a private address; {PUBLIC}"),
        ("192.168.1.1", [], f"192.168.1.1 is a private address; {PUBLIC}"),
        ("127.0.0.1", [], f"127.0.0.1 is a loopback address; {PUBLIC}"),
        ("169.254.169.254", [], f"169.254.169.254 is a link-local address; {PUBLIC}"),
        ("0.0.0.0", [], f"0.0.0.0 is the unspecified address; {PUBLIC}"),
        ("224.0.0.1", [], f"224.0.0.1 is a multicast address; {PUBLIC}"),
        (
            "100.64.0.1",
            [],
            f"100.64.0.1 is a special-purpose address, not globally routable; {PUBLIC}",
        ),
        ("::1", [], f"::1 is a loopback address; {PUBLIC}"),
        ("fe80::1", [], f"fe80::1 is a link-local address; {PUBLIC}"),
        ("fd00::1", [], f"fd00::1 is a private address; {PUBLIC}"),
        ("::", [], f":: is the unspecified address; {PUBLIC}"),
        # IPv4-mapped: judged (and shown) as the IPv4 address
        ("::ffff:127.0.0.1", [], f"127.0.0.1 is a loopback address; {PUBLIC}"),
        ("::ffff:1.1.1.1", [], None),
        # 6to4 and NAT64 spellings of a private address
        (
            "2002:a00:1::",
            [],
            f"2002:a00:1:: carries the IPv4 address 10.0.0.1, which is a private address; {PUBLIC}",
        ),
        (
            "64:ff9b::7f00:1",
            [],
            f"64:ff9b::7f00:1 carries the IPv4 address 127.0.0.1, which is a loopback address; "
            f"{PUBLIC}",
        ),
        ("64:ff9b::101:101", [], None),
        # declared VPC CIDRs, whatever kind of address they hold
        ("10.1.2.3", [], f"10.1.2.3 is inside VPC CIDR 10.1.0.0/16; {IN_VPC}"),
        ("fd12::5", [], f"fd12::5 is inside VPC CIDR fd12::/16; {IN_VPC}"),
        ("::ffff:10.1.2.3", [], f"10.1.2.3 is inside VPC CIDR 10.1.0.0/16; {IN_VPC}"),
        # http_backend_allow overrides every rule, for exactly its ranges
        ("10.1.2.3", ["10.1.2.0/24"], None),
        ("10.1.3.3", ["10.1.2.0/24"], f"10.1.3.3 is inside VPC CIDR 10.1.0.0/16; {IN_VPC}"),
        ("127.0.0.1", ["127.0.0.0/8"], None),
        ("::ffff:127.0.0.1", ["127.0.0.0/8"], None),
        ("::1", ["127.0.0.0/8"], f"::1 is a loopback address; {PUBLIC}"),
        ("fe80::1", ["fe80::/64"], None),
        ("2002:a00:1::", ["10.0.0.0/8"], None),
    ],
)
def test_public_address_problem(address: str, allowed: list[str], problem: str | None) -> None:
    ip = ipaddress.ip_address(address)
    nets = [ipaddress.ip_network(n) for n in allowed]
    assert public_address_problem(ip, VPCS, nets) == problem


# --- several VPCs, several authorizations -------------------------------------------------------


def test_two_vpcs_are_served_by_two_authorizations() -> None:
    config = load_config(str(Path(__file__).parent.parent / "examples" / "two-vpcs.toml"))
    table = build_reachability(config)
    shop = table.by_authorization["shop-lb-8081"]
    reports = table.by_authorization["reports-9002"]
    assert shop.allowed == frozenset({("127.0.1.11", 9001), ("127.0.1.12", 9001)})
    assert reports.allowed == frozenset({("127.0.2.11", 9002)})
    # neither authorization opens the other VPC, nor another port of its own target
    assert not shop.permits("127.0.2.11", 9002)
    assert not reports.permits("127.0.1.11", 9001)
    assert not reports.permits("127.0.2.11", 9001)
    assert [r[3] for r in table.rows(config)] == ["shop-lb-8081", "reports-9002"]


def test_an_authorization_into_a_peered_region() -> None:
    data = copy.deepcopy(DEMO)
    data["gateway"]["peered_regions"] = ["cn-shanghai"]
    data["vpc"].append({"id": "vpc-sh", "region": "cn-shanghai", "cidrs": ["10.2.0.0/16"]})
    data["authorization"].append(
        {"name": "sh-9000", "vpc": "vpc-sh", "target": "10.2.0.5", "port": 9000}
    )
    table = build_reachability(parse_config(data, "demo.toml"))
    assert table.by_authorization["sh-9000"].allowed == frozenset({("10.2.0.5", 9000)})
    assert table.by_authorization["web-lb-8081"].allowed == WEB_SERVERS


# --- what `lbproxy check` prints ---------------------------------------------------------------


def test_the_egress_line_names_egress_source() -> None:
    data = copy.deepcopy(DEMO)
    data["gateway"]["egress_source"] = "127.0.0.9"
    config = parse_config(data, "demo.toml")
    text = format_table(config, build_reachability(config))
    assert text.splitlines()[-1] == (
        "backends see connections from 127.0.0.9 (gateway.egress_source); allow it in their "
        "security groups"
    )


def test_the_egress_line_without_egress_source() -> None:
    assert format_egress(demo_config()) == (
        "backends see connections from the gateway host's address toward each backend "
        "(no egress_source set)"
    )


@pytest.mark.parametrize(
    ("backend", "row"),
    [
        (
            {"type": "https", "url": "https://api.example.com/v1"},
            [
                "-",
                "url https://api.example.com:443/v1",
                "api.example.com:443 (its public addresses, checked at connect)",
            ],
        ),
        (
            {"type": "http", "url": "http://[2606:4700::1111]:8080"},
            ["-", "url http://[2606:4700::1111]:8080/", "[2606:4700::1111]:8080"],
        ),
    ],
    ids=["name", "ipv6-literal"],
)
def test_an_http_backend_row(backend: dict[str, str], row: list[str]) -> None:
    data = copy.deepcopy(DEMO)
    data["api"][0]["backend"] = backend
    config = parse_config(data, "demo.toml")
    table = build_reachability(config)
    (api_row,) = table.rows(config)
    assert list(api_row[3:]) == row
    shown = format_table(config, table).splitlines()[1]
    assert re.split(r"\s{2,}", shown) == ["items", "GET,HEAD,POST", "/items/*", *row]
