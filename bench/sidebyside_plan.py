"""What a side-by-side run measures: its targets (with their ports and worker counts), its loads,
the CPU pinning and the settings, resolved from the command line before anything starts."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from benchkit import BenchError
from labconfig import LARGE_BODY, LARGE_PATH, SMALL_BODY

LB_IP = "127.0.0.20"
BACKEND_PORTS = (18081, 18082)
NGINX_PROXY_PORT = 18080
HAPROXY_PORT = 18083
LBPROXY_PORT = 18090
LB_LISTENER_PORT = 18091
ENGINES = ("httptools", "h11")
LOADS = ("single", "small", "large")


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    port: int
    engine: str | None = None
    workers: int = 1

    @property
    def is_proxy(self) -> bool:
        return self.name != "direct"

    @property
    def is_lbproxy(self) -> bool:
        return self.engine is not None


@dataclass(frozen=True, slots=True)
class Load:
    """What wrk asks for: how many connections, which path, and the body every answer has."""

    name: str
    connections: int
    path: str
    body: bytes

    def describe(self) -> str:
        plural = "s" if self.connections > 1 else ""
        size = (
            f"{len(self.body) // 1024} KiB" if len(self.body) >= 1024 else f"{len(self.body)}-byte"
        )
        return f"{self.connections} connection{plural}, {size} bodies"


def resolve_loads(names: Sequence[str], connections: int) -> tuple[Load, ...]:
    known = {
        "single": Load("single", 1, "/", SMALL_BODY),
        "small": Load("small", connections, "/", SMALL_BODY),
        "large": Load("large", connections, LARGE_PATH, LARGE_BODY),
    }
    chosen: list[Load] = []
    for name in names:
        if name not in known:
            raise BenchError(f"unknown load {name!r}: choose from {', '.join(known)}")
        if known[name] not in chosen:
            chosen.append(known[name])
    if not chosen:
        raise BenchError("no loads to apply")
    return tuple(chosen)


@dataclass(frozen=True, slots=True)
class Pinning:
    """Where each side runs; None means no pinning (fewer than two usable CPUs). ``spare_cpus``
    (beyond the first two) go to the extra workers of a multi-worker lbproxy."""

    proxy_cpus: frozenset[int] | None
    load_cpus: frozenset[int] | None
    spare_cpus: tuple[int, ...] = ()

    def proxy_cpus_for(self, workers: int) -> frozenset[int] | None:
        """The CPUs of a proxy with ``workers`` processes: as many CPUs, or no pinning when the
        machine has no spare ones for them."""
        if self.proxy_cpus is None or workers == 1:
            return self.proxy_cpus
        if len(self.spare_cpus) < workers - 1:
            return None
        return self.proxy_cpus | frozenset(self.spare_cpus[: workers - 1])

    def describe(self) -> str:
        if self.proxy_cpus is None or self.load_cpus is None:
            return "none (fewer than 2 usable CPUs: proxy, wrk and backends share the machine)"
        return (
            f"proxy on CPU {_cpu_list(self.proxy_cpus)}; "
            f"wrk and nginx backends on CPU {_cpu_list(self.load_cpus)}"
        )

    def describe_workers(self, workers: int) -> str:
        cpus = self.proxy_cpus_for(workers)
        if cpus is None:
            return (
                f"lbproxy with {workers} workers not pinned (pinning them needs {workers + 1} "
                f"usable CPUs): they share every CPU with wrk and the backends"
            )
        return f"lbproxy with {workers} workers on CPU {_cpu_list(cpus)}"


@dataclass(frozen=True, slots=True)
class Settings:
    duration: int
    warmup: int
    rounds: int
    connections: int
    targets: tuple[Target, ...]
    loads: tuple[Load, ...]
    out: Path
    python: str
    pinning: Pinning


def _cpu_list(cpus: frozenset[int]) -> str:
    return ",".join(str(cpu) for cpu in sorted(cpus))


def choose_pinning() -> Pinning:
    usable = sorted(os.sched_getaffinity(0))
    if len(usable) < 2:
        return Pinning(None, None)
    return Pinning(frozenset({usable[0]}), frozenset({usable[1]}), tuple(usable[2:]))


def lbproxy_target(engine: str, workers: int) -> Target:
    name = f"lbproxy-{engine}" if workers == 1 else f"lbproxy-{engine}-{workers}w"
    return Target(name, LBPROXY_PORT, engine, workers)


def resolve_targets(
    names: Sequence[str], engines: Sequence[str], workers: Sequence[int] = (1,)
) -> tuple[Target, ...]:
    known = {
        "direct": Target("direct", BACKEND_PORTS[0]),
        "nginx": Target("nginx", NGINX_PROXY_PORT),
        "haproxy": Target("haproxy", HAPROXY_PORT),
    }
    for engine in ENGINES:
        for count in {1, *workers}:
            target = lbproxy_target(engine, count)
            known[target.name] = target
    chosen: list[Target] = []
    for name in names:
        if name == "lbproxy":
            expanded = [lbproxy_target(e, n).name for e in engines for n in workers]
        elif name in {f"lbproxy-{e}" for e in ENGINES}:
            expanded = [lbproxy_target(name.removeprefix("lbproxy-"), n).name for n in workers]
        else:
            expanded = [name]
        for one in expanded:
            if one not in known:
                choices = ", ".join([*known, "lbproxy"])
                raise BenchError(f"unknown target {one!r}: choose from {choices}")
            if known[one] not in chosen:
                chosen.append(known[one])
    if not chosen:
        raise BenchError("no targets to measure")
    return tuple(chosen)
