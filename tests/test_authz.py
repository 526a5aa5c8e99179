"""The reachability table: exactly what each authorization lets the gateway connect to."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import pytest

import lbproxy
from lbproxy.authz import Endpoint, Reach, build_reachability, format_egress, format_table
from lbproxy.config import Config
from lbproxy.configload import parse_config

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
