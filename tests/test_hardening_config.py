"""Issue 7, rule 4: the limit keys of [gateway], their defaults, and problems reported as the
other keys' are (file, key path, what to do)."""

from __future__ import annotations

import pytest

from lbproxy.config import MAX_HEADER_COUNT, MAX_REQUEST_LINE
from lbproxy.errors import ConfigError
from tests.harness import Backend, config_from, gateway_toml


def config_text(lines: str = "") -> str:
    text = gateway_toml([Backend("a", port=8080)], 9000)
    return text.replace('region = "test-region"\n', f'region = "test-region"\n{lines}', 1)


def test_limit_defaults() -> None:
    gateway = config_from(config_text()).gateway
    assert (gateway.max_request_line, gateway.max_header_count) == (8 * 1024, 100)
    assert (gateway.max_request_line, gateway.max_header_count) == (
        MAX_REQUEST_LINE,
        MAX_HEADER_COUNT,
    )
    assert gateway.max_header_size == 64 * 1024
    assert gateway.max_client_connections == 10_000
    assert gateway.max_requests_per_connection == 1000
    assert gateway.client_body_timeout == 60.0


@pytest.mark.parametrize(
    ("line", "attribute", "expected"),
    [
        ("max_request_line = 4096", "max_request_line", 4096),
        ("max_header_count = 50", "max_header_count", 50),
        ("max_client_connections = 20000", "max_client_connections", 20_000),
        ("max_requests_per_connection = 1", "max_requests_per_connection", 1),
        ("client_body_timeout = 5", "client_body_timeout", 5.0),
        ("client_body_timeout = 0.5", "client_body_timeout", 0.5),
    ],
)
def test_limit_values(line: str, attribute: str, expected: object) -> None:
    gateway = config_from(config_text(line + "\n")).gateway
    assert getattr(gateway, attribute) == expected


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (
            "max_request_line = 100",
            "gateway.max_request_line: 100 is out of range; use 256..1048576",
        ),
        (
            "max_header_count = 0",
            "gateway.max_header_count: 0 is out of range; use 1..10000",
        ),
        (
            'max_client_connections = "many"',
            "gateway.max_client_connections: expected an integer, got a string ('many')",
        ),
        (
            "max_requests_per_connection = true",
            "gateway.max_requests_per_connection: expected an integer, got True",
        ),
        (
            "client_body_timeout = 0",
            "gateway.client_body_timeout: 0 is not a usable number of seconds; use e.g. 10.0",
        ),
        (
            "max_header_cont = 10",
            "gateway.max_header_cont: unknown key; known keys here: ",
        ),
    ],
)
def test_limit_problems_name_file_key_and_fix(line: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_from(config_text(line + "\n"))
    [found] = caught.value.problems
    assert str(found).startswith(f"test.toml: {problem}")
