"""Listener keys that keep an upstream serving while servers fail (scheduler, slow start, health
checks, passive health, retries, pool), server weight 0 and backups, and TLS on authorizations:
values and defaults, then the exact lines an operator sees for each mistake."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lbproxy.config import HealthCheck, Listener, Passive, PoolLimits, RetryPolicy
from lbproxy.configload import load_config, parse_config
from lbproxy.errors import ConfigError
from tests.test_config import DEMO_PATH, FILE, Edit, demo_with, lines, problem_lines, put

LISTENER = "load_balancer[0].listener[0]"
SERVERS = f"{LISTENER}.servers"
PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def listener_of(*edits: Edit) -> Listener:
    return parse_config(demo_with(*edits), FILE).load_balancers[0].listeners[0]


def test_listener_defaults() -> None:
    listener = listener_of()
    assert (listener.scheduler, listener.slow_start, listener.health_check) == ("wrr", 0.0, None)
    assert listener.passive == Passive(max_fails=3, fail_timeout=10.0, fail_statuses=())
    assert listener.retry == RetryPolicy(tries=2, try_timeout=None, budget=0.2)
    assert listener.pool == PoolLimits(
        max_idle=64, idle_timeout=60.0, max_connections=None, max_queue=128, queue_timeout=1.0
    )
    assert [(s.weight, s.backup) for s in listener.servers] == [(3, False), (2, False), (1, False)]


def test_every_listener_key_set() -> None:
    listener = listener_of(
        put(f"{LISTENER}.scheduler", "least_conn"),
        put(f"{LISTENER}.slow_start", 30),
        put(
            f"{LISTENER}.health_check",
            {
                "type": "http",
                "path": "/healthz",
                "expect": [200, "3xx"],
                "interval": 2,
                "timeout": 0.5,
                "rise": 1,
                "fall": 2,
            },
        ),
        put(
            f"{LISTENER}.passive",
            {"max_fails": 5, "fail_timeout": 30, "fail_statuses": [502, 503, 504]},
        ),
        put(f"{LISTENER}.retry", {"tries": 3, "try_timeout": 2, "budget": 0.5}),
        put(
            f"{LISTENER}.pool",
            {
                "max_idle": 8,
                "idle_timeout": 30,
                "max_connections": 100,
                "max_queue": 10,
                "queue_timeout": 0.25,
            },
        ),
        put(f"{SERVERS}[1].weight", 0),
        put(f"{SERVERS}[2].backup", True),
    )
    assert (listener.scheduler, listener.slow_start) == ("least_conn", 30.0)
    assert listener.health_check == HealthCheck(
        type="http",
        path="/healthz",
        expect=((200, 200), (300, 399)),
        interval=2.0,
        timeout=0.5,
        rise=1,
        fall=2,
    )
    assert listener.passive == Passive(5, 30.0, (502, 503, 504))
    assert listener.retry == RetryPolicy(3, 2.0, 0.5)
    assert listener.pool == PoolLimits(8, 30.0, 100, 10, 0.25)
    assert [(s.weight, s.backup) for s in listener.servers] == [(3, False), (0, False), (1, True)]


@pytest.mark.parametrize(
    ("table", "expected"),
    [
        ({}, HealthCheck()),
        ({"type": "tcp"}, HealthCheck(type="tcp")),
        ({"expect": ["2xx"]}, HealthCheck(expect=((200, 299),))),
        ({"expect": [204, 200]}, HealthCheck(expect=((204, 204), (200, 200)))),
        ({"interval": 1, "timeout": 1}, HealthCheck(interval=1.0, timeout=1.0)),
        ({"interval": 0.5}, HealthCheck(interval=0.5, timeout=0.5)),
    ],
    ids=["defaults", "tcp", "class", "statuses", "timeout-equal-to-interval", "short-interval"],
)
def test_health_check_values(table: dict[str, Any], expected: HealthCheck) -> None:
    assert listener_of(put(f"{LISTENER}.health_check", table)).health_check == expected


@pytest.mark.parametrize(
    ("status", "expected"), [(199, False), (200, True), (302, True), (399, True), (404, False)]
)
def test_health_check_expects_two_and_three_hundreds_by_default(
    status: int, expected: bool
) -> None:
    assert HealthCheck().expects(status) is expected


@pytest.mark.parametrize(
    ("gateway", "pool", "expected"),
    [
        ({}, {}, PoolLimits(64, 60.0)),
        ({"upstream_max_idle": 8, "upstream_idle_timeout": 5}, None, PoolLimits(8, 5.0)),
        ({"upstream_max_idle": 8}, {"max_idle": 2}, PoolLimits(2, 60.0)),
        ({}, {"max_connections": 4}, PoolLimits(4, 60.0, 4)),
        ({}, {"max_connections": 4, "max_idle": 0}, PoolLimits(0, 60.0, 4)),
    ],
    ids=["built-in", "gateway-defaults", "own-max-idle", "idle-capped-by-limit", "no-idle"],
)
def test_pool_defaults_come_from_the_gateway(
    gateway: dict[str, Any], pool: dict[str, Any] | None, expected: PoolLimits
) -> None:
    edits = [put(f"gateway.{key}", value) for key, value in gateway.items()]
    if pool is not None:
        edits.append(put(f"{LISTENER}.pool", pool))
    assert listener_of(*edits).pool == expected


def test_slow_start_zero_is_off() -> None:
    assert listener_of(put(f"{LISTENER}.slow_start", 0)).slow_start == 0.0


BAD_LISTENERS = [
    pytest.param(
        (put(f"{LISTENER}.scheduler", "rr"),),
        [(f"{LISTENER}.scheduler", "'rr' is not a scheduler; use one of wrr, least_conn")],
        id="bad-scheduler",
    ),
    pytest.param(
        (put(f"{LISTENER}.slow_start", -1),),
        [
            (
                f"{LISTENER}.slow_start",
                "-1 is not a usable number of seconds; use 0 (off) or e.g. 30.0",
            )
        ],
        id="negative-slow-start",
    ),
    pytest.param(
        (put(f"{SERVERS}[0].backup", "yes"),),
        [(f"{SERVERS}[0].backup", "expected true or false, got a string ('yes')")],
        id="backup-not-a-boolean",
    ),
    pytest.param(
        (
            put(f"{SERVERS}[0].weight", 0),
            put(f"{SERVERS}[1].weight", 0),
            put(f"{SERVERS}[2].weight", 0),
        ),
        [
            (
                SERVERS,
                "every server has weight 0 (drained); give at least one server weight = 1..1000",
            )
        ],
        id="every-server-drained",
    ),
    pytest.param(
        tuple(put(f"{SERVERS}[{i}].backup", True) for i in range(3)),
        [
            (
                SERVERS,
                "every server is a backup; backups take traffic only while every primary is "
                "down, so mark at least one server backup = false",
            )
        ],
        id="every-server-a-backup",
    ),
    pytest.param(
        (put(f"{LISTENER}.health_check", {"type": "udp"}),),
        [(f"{LISTENER}.health_check.type", "'udp' is not a check type; use one of http, tcp")],
        id="bad-check-type",
    ),
    pytest.param(
        (put(f"{LISTENER}.health_check", {"type": "tcp", "path": "/", "expect": [200]}),),
        [
            (
                f"{LISTENER}.health_check.path",
                'a tcp check only connects; remove path or use type = "http"',
            ),
            (
                f"{LISTENER}.health_check.expect",
                'a tcp check only connects; remove expect or use type = "http"',
            ),
        ],
        id="tcp-check-with-http-keys",
    ),
    pytest.param(
        (put(f"{LISTENER}.health_check", {"path": "healthz"}),),
        [(f"{LISTENER}.health_check.path", "'healthz' must start with '/', e.g. \"/healthz\"")],
        id="check-path-without-slash",
    ),
    pytest.param(
        (put(f"{LISTENER}.health_check", {"expect": []}),),
        [(f"{LISTENER}.health_check.expect", 'needs at least one status, e.g. [200] or ["2xx"]')],
        id="empty-expect",
    ),
    pytest.param(
        (put(f"{LISTENER}.health_check", {"expect": [200, "2XX", 600, True]}),),
        [
            (
                f"{LISTENER}.health_check.expect[1]",
                "expected a status 100..599 or a class like \"2xx\", got a string ('2XX')",
            ),
            (
                f"{LISTENER}.health_check.expect[2]",
                'expected a status 100..599 or a class like "2xx", got an integer (600)',
            ),
            (
                f"{LISTENER}.health_check.expect[3]",
                'expected a status 100..599 or a class like "2xx", got a boolean (True)',
            ),
        ],
        id="bad-expected-statuses",
    ),
    pytest.param(
        (put(f"{LISTENER}.health_check", {"expect": "2xx"}),),
        [
            (
                f"{LISTENER}.health_check.expect",
                "expected a list of statuses like [200, \"3xx\"], got a string ('2xx')",
            )
        ],
        id="expect-not-a-list",
    ),
    pytest.param(
        (put(f"{LISTENER}.health_check", {"interval": 1, "timeout": 3}),),
        [
            (
                f"{LISTENER}.health_check.timeout",
                "3.0 is longer than interval 1.0; a check must end before the next one starts",
            )
        ],
        id="check-timeout-longer-than-interval",
    ),
    pytest.param(
        (put(f"{LISTENER}.health_check", {"rise": 0, "fall": 101, "interval": 0}),),
        [
            (
                f"{LISTENER}.health_check.interval",
                "0 is not a usable number of seconds; use e.g. 10.0",
            ),
            (f"{LISTENER}.health_check.rise", "0 is out of range; use 1..100"),
            (f"{LISTENER}.health_check.fall", "101 is out of range; use 1..100"),
        ],
        id="check-counts-and-interval-out-of-range",
    ),
    pytest.param(
        (put(f"{LISTENER}.health_check", {"intervl": 2}),),
        [
            (
                f"{LISTENER}.health_check.intervl",
                "unknown key; known keys here: expect, fall, interval, path, rise, timeout, type",
            )
        ],
        id="unknown-check-key",
    ),
    pytest.param(
        (put(f"{LISTENER}.health_check", "http"),),
        [(f"{LISTENER}.health_check", "expected a table, got a string ('http')")],
        id="check-not-a-table",
    ),
    pytest.param(
        (put(f"{LISTENER}.passive", {"max_fails": -1, "fail_statuses": [502, 404]}),),
        [
            (
                f"{LISTENER}.passive.fail_statuses[1]",
                "expected a status 500..599, got an integer (404)",
            ),
            (f"{LISTENER}.passive.max_fails", "-1 is out of range; use 0..1000"),
        ],
        id="bad-passive",
    ),
    pytest.param(
        (put(f"{LISTENER}.passive", {"fail_timeout": 0, "max_fail": 2}),),
        [
            (
                f"{LISTENER}.passive.fail_timeout",
                "0 is not a usable number of seconds; use e.g. 10.0",
            ),
            (
                f"{LISTENER}.passive.max_fail",
                "unknown key; known keys here: fail_statuses, fail_timeout, max_fails",
            ),
        ],
        id="passive-zero-timeout-and-typo",
    ),
    pytest.param(
        (put(f"{LISTENER}.retry", {"tries": 0, "try_timeout": -2, "budget": 1.5}),),
        [
            (f"{LISTENER}.retry.tries", "0 is out of range; use 1..10"),
            (
                f"{LISTENER}.retry.try_timeout",
                "-2 is not a usable number of seconds; use e.g. 10.0",
            ),
            (f"{LISTENER}.retry.budget", "1.5 is out of range; use a fraction 0.0..1.0"),
        ],
        id="bad-retry",
    ),
    pytest.param(
        (put(f"{LISTENER}.retry", {"budget": "20%"}),),
        [(f"{LISTENER}.retry.budget", "expected a fraction like 0.2, got a string ('20%')")],
        id="budget-as-a-percentage",
    ),
    pytest.param(
        (put(f"{LISTENER}.pool", {"max_queue": 10, "queue_timeout": 1}),),
        [
            (
                f"{LISTENER}.pool.max_queue",
                "applies only with a connection limit; add max_connections = N",
            ),
            (
                f"{LISTENER}.pool.queue_timeout",
                "applies only with a connection limit; add max_connections = N",
            ),
        ],
        id="queue-without-limit",
    ),
    pytest.param(
        (put(f"{LISTENER}.pool", {"max_connections": 4, "max_idle": 8}),),
        [
            (
                f"{LISTENER}.pool.max_idle",
                "8 is above max_connections 4; idle connections count toward the limit",
            )
        ],
        id="more-idle-than-the-limit",
    ),
    pytest.param(
        (put(f"{LISTENER}.pool", {"max_connections": 0}),),
        [(f"{LISTENER}.pool.max_connections", "0 is out of range; use 1..1000000")],
        id="zero-connections",
    ),
]


@pytest.mark.parametrize(("edits", "expected"), BAD_LISTENERS)
def test_bad_listener_reports_exact_lines(
    edits: tuple[Edit, ...], expected: list[tuple[str, str]]
) -> None:
    assert problem_lines(demo_with(*edits)) == lines(*expected)


# --- TLS to an authorization's target ----------------------------------------------------------


def write_config(tmp_path: Path, auth_lines: str) -> Path:
    text = DEMO_PATH.read_text(encoding="utf-8")
    text = text.replace(
        'host = "www.example.internal"\n', f'host = "www.example.internal"\n{auth_lines}'
    )
    path = tmp_path / "gw.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_tls_is_off_by_default() -> None:
    (auth,) = parse_config(demo_with(), FILE).authorizations
    assert (auth.tls, auth.ca_file) == (False, None)


def test_tls_without_ca_file_uses_the_system_cas() -> None:
    (auth,) = parse_config(demo_with(put("authorization[0].tls", True)), FILE).authorizations
    assert (auth.tls, auth.ca_file) == (True, None)


def test_ca_file_is_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text(PEM, encoding="utf-8")
    path = write_config(tmp_path, 'tls = true\nca_file = "ca.pem"\n')
    (auth,) = load_config(str(path)).authorizations
    assert (auth.tls, auth.ca_file) == (True, str(tmp_path / "ca.pem"))


def test_absolute_ca_file(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text(PEM, encoding="utf-8")
    edits = (put("authorization[0].tls", True), put("authorization[0].ca_file", str(ca)))
    (auth,) = parse_config(demo_with(*edits), FILE).authorizations
    assert auth.ca_file == str(ca)


def test_bad_ca_files(tmp_path: Path) -> None:
    (tmp_path / "key.pem").write_text("-----BEGIN PRIVATE KEY-----\n", encoding="utf-8")
    path = write_config(tmp_path, 'ca_file = "missing.pem"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    missing = tmp_path / "missing.pem"
    assert str(caught.value).splitlines() == [
        f"{path}: authorization[0].ca_file: cannot read '{missing}': No such file or directory",
        f"{path}: authorization[0].ca_file: verifies the server's certificate, but tls is off; "
        "add tls = true",
    ]
    path = write_config(tmp_path, 'tls = true\nca_file = "key.pem"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    key = tmp_path / "key.pem"
    assert str(caught.value).splitlines() == [
        f"{path}: authorization[0].ca_file: '{key}' holds no PEM certificate "
        "(-----BEGIN CERTIFICATE-----)"
    ]


@pytest.mark.parametrize(
    ("edits", "expected"),
    [
        (
            (put("authorization[0].tls", "yes"),),
            [("authorization[0].tls", "expected true or false, got a string ('yes')")],
        ),
        (
            (put("authorization[0].tls", True), put("authorization[0].ca_file", "")),
            [("authorization[0].ca_file", "must not be empty")],
        ),
    ],
    ids=["tls-not-a-boolean", "empty-ca-file"],
)
def test_bad_tls_values(edits: tuple[Edit, ...], expected: list[tuple[str, str]]) -> None:
    assert problem_lines(demo_with(*edits)) == lines(*expected)


def test_the_high_availability_example_loads() -> None:
    path = Path(__file__).parent.parent / "examples" / "high-availability.toml"
    (listener,) = load_config(str(path)).load_balancers[0].listeners
    assert (listener.scheduler, listener.slow_start) == ("least_conn", 30.0)
    assert [(s.weight, s.backup) for s in listener.servers] == [
        (2, False),
        (2, False),
        (0, False),
        (1, True),
    ]
    assert listener.health_check == HealthCheck(path="/healthz", expect=((200, 200), (300, 399)))
    assert listener.passive == Passive(3, 10.0, (502, 503, 504))
    assert listener.retry == RetryPolicy(2, 3.0, 0.2)
    assert listener.pool == PoolLimits(32, 30.0, 256, 128, 1.0)
