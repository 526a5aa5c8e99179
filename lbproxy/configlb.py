"""TOML -> the load balancer part of the model: listeners, servers, and how a listener keeps
serving while servers fail (scheduler, slow start, health checks, passive health, retries, pool).

Rules that concern one table only (a check's timeout against its interval, a listener whose
servers are all drained) are checked here, next to the keys, so each message names its key.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

from lbproxy.config import (
    CHECK_TYPES,
    SCHEDULERS,
    HealthCheck,
    Listener,
    LoadBalancer,
    Passive,
    PoolLimits,
    RetryPolicy,
    ServerRef,
    StatusRange,
)
from lbproxy.configreader import Reader, describe

T = TypeVar("T")
_STATUS_CLASS = re.compile(r"^[1-5]xx$")
MAX_WEIGHT = 1000


def read_load_balancer(r: Reader, pool: PoolLimits) -> LoadBalancer:
    """``pool``: the limits a listener's servers get where it sets none (the gateway's)."""
    lb_id, vpc, ip = r.string("id"), r.string("vpc"), r.ip("ip")
    internal = r.boolean("internal", True)
    listeners = tuple(_read_listener(t, pool) for t in r.tables("listener"))
    if not listeners:
        r.problem("listener", "a load balancer needs at least one [[load_balancer.listener]]")
    r.finish()
    return LoadBalancer(id=lb_id, vpc=vpc, ip=ip, internal=internal, listeners=listeners)  # type: ignore[arg-type]


def _read_listener(r: Reader, pool: PoolLimits) -> Listener:
    port = r.port("port")
    servers = tuple(_read_server(t) for t in r.tables("servers"))
    if not servers:
        r.problem("servers", "a listener needs at least one server: { instance = ..., port = ... }")
    else:
        _check_servers(r, servers)
    scheduler = r.string("scheduler", "wrr")
    if scheduler not in SCHEDULERS:
        r.problem(
            "scheduler", f"{scheduler!r} is not a scheduler; use one of {', '.join(SCHEDULERS)}"
        )
    listener = Listener(
        port=port,
        servers=servers,
        scheduler=scheduler,
        slow_start=r.seconds("slow_start", 0.0, zero_ok=True),
        health_check=_optional(r, "health_check", _read_health_check),
        passive=_optional(r, "passive", _read_passive) or Passive(),
        retry=_optional(r, "retry", _read_retry) or RetryPolicy(),
        pool=_optional(r, "pool", lambda t: _read_pool(t, pool)) or pool,
    )
    r.finish()
    return listener


def _optional(r: Reader, name: str, read: Callable[[Reader], T]) -> T | None:
    table = r.table(name)
    return None if table is None else read(table)


def _read_server(r: Reader) -> ServerRef:
    ref = ServerRef(
        instance=r.string("instance"),
        port=r.port("port"),
        weight=r.integer("weight", 1, 0, MAX_WEIGHT),
        backup=r.boolean("backup", False),
    )
    r.finish()
    return ref


def _check_servers(r: Reader, servers: tuple[ServerRef, ...]) -> None:
    # A listener that can take no new request is almost surely a mistake in the file; draining a
    # whole listener is done by removing it (or its authorization).
    if all(s.weight == 0 for s in servers):
        r.problem(
            "servers",
            "every server has weight 0 (drained); give at least one server weight = 1.."
            f"{MAX_WEIGHT}",
        )
    elif all(s.backup for s in servers):
        r.problem(
            "servers",
            "every server is a backup; backups take traffic only while every primary is down, "
            "so mark at least one server backup = false",
        )


def _read_health_check(r: Reader) -> HealthCheck:
    default = HealthCheck()
    kind = r.string("type", default.type)
    if kind not in CHECK_TYPES:
        r.problem("type", f"{kind!r} is not a check type; use one of {', '.join(CHECK_TYPES)}")
    if kind == "tcp":
        for name in ("path", "expect"):
            if r.has(name):
                r.problem(name, f'a tcp check only connects; remove {name} or use type = "http"')
    path = r.string("path", default.path)
    if isinstance(path, str) and not path.startswith("/"):
        r.problem("path", f"{path!r} must start with '/', e.g. \"/healthz\"")
    expect = _read_expect(r, default.expect)
    interval = r.seconds("interval", default.interval)
    timeout = r.seconds("timeout", None)
    if timeout is None:
        # A short interval shortens the default timeout rather than contradict it.
        timeout = min(default.timeout, interval)
    elif timeout > interval:
        r.problem(
            "timeout",
            f"{timeout} is longer than interval {interval}; a check must end before the next "
            "one starts",
        )
    check = HealthCheck(
        type=kind,
        path=path,
        expect=expect,
        interval=interval,
        timeout=timeout,
        rise=r.integer("rise", default.rise, 1, 100),
        fall=r.integer("fall", default.fall, 1, 100),
    )
    r.finish()
    return check


def _read_expect(r: Reader, default: tuple[StatusRange, ...]) -> tuple[StatusRange, ...]:
    items = r.value("expect", None, list, 'a list of statuses like [200, "3xx"]')
    if items is None:
        return default
    if not items:
        r.problem("expect", 'needs at least one status, e.g. [200] or ["2xx"]')
    ranges = []
    for i, item in enumerate(items):
        if isinstance(item, int) and not isinstance(item, bool) and 100 <= item <= 599:
            ranges.append((item, item))
        elif isinstance(item, str) and _STATUS_CLASS.match(item):
            first = int(item[0]) * 100
            ranges.append((first, first + 99))
        else:
            r.problem(
                f"expect[{i}]",
                f'expected a status 100..599 or a class like "2xx", got {describe(item)}',
            )
    return tuple(ranges) or default


def _read_passive(r: Reader) -> Passive:
    default = Passive()
    statuses = r.value("fail_statuses", [], list, "a list of statuses like [502, 503, 504]")
    for i, status in enumerate(statuses):
        if not isinstance(status, int) or isinstance(status, bool) or not 500 <= status <= 599:
            r.problem(f"fail_statuses[{i}]", f"expected a status 500..599, got {describe(status)}")
            statuses = []
            break
    passive = Passive(
        max_fails=r.integer("max_fails", default.max_fails, 0, 1000),
        fail_timeout=r.seconds("fail_timeout", default.fail_timeout),
        fail_statuses=tuple(statuses),
    )
    r.finish()
    return passive


def _read_retry(r: Reader) -> RetryPolicy:
    default = RetryPolicy()
    retry = RetryPolicy(
        tries=r.integer("tries", default.tries, 1, 10),
        try_timeout=r.seconds("try_timeout", None),
        budget=r.fraction("budget", default.budget),
    )
    r.finish()
    return retry


def _read_pool(r: Reader, default: PoolLimits) -> PoolLimits:
    max_connections = r.integer("max_connections", None, 1, 1_000_000)
    max_idle = r.integer("max_idle", None, 0, 100_000)
    if max_connections is None:
        for name in ("max_queue", "queue_timeout"):
            if r.has(name):
                r.problem(name, "applies only with a connection limit; add max_connections = N")
    elif max_idle is not None and max_idle > max_connections:
        r.problem(
            "max_idle",
            f"{max_idle} is above max_connections {max_connections}; idle connections count "
            "toward the limit",
        )
    if max_idle is None:
        # The gateway's default, capped so that the default never contradicts a set limit.
        max_idle = min(default.max_idle, max_connections or default.max_idle)
    pool = PoolLimits(
        max_idle=max_idle,
        idle_timeout=r.seconds("idle_timeout", default.idle_timeout),
        max_connections=max_connections,
        max_queue=r.integer("max_queue", default.max_queue, 0, 1_000_000),
        queue_timeout=r.seconds("queue_timeout", default.queue_timeout),
    )
    r.finish()
    return pool
