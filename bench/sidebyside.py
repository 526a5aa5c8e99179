"""Side-by-side benchmark: lbproxy against nginx as a reverse proxy, in one run, on one machine.

Theory of operation. Two nginx backends (127.0.0.1:18081 and :18082) answer every request with a
12-byte body and stay up for the whole run. Each target is then measured with wrk:

    direct              wrk -> backend 18081                (the ceiling: no proxy at all)
    nginx               wrk -> nginx proxy :18080 -> backends
    lbproxy-<engine>    wrk -> lbproxy :18090 -> backends   (one target per HTTP parser engine)

Every proxy is started fresh before its measurement and stopped after it, nginx included, so both
sides pay the same cold start; a 2 s wrk warm-up run precedes every measured run. Rounds are
interleaved (round 1 runs every target once, then round 2, ...) so drift on a shared machine hits
all targets alike, and the report takes the median over rounds.

With two or more CPUs the proxy under test runs alone on the first CPU and wrk plus the backends
share the second, so the proxy's CPU cost per request is what limits its throughput. Affinity is
set on this process just before each spawn and restored after it: the child inherits it at fork.

CPU time per request is the proxy's utime + stime (the whole process tree: nginx master and
worker, lbproxy and any worker it forks) across the measured run, divided by wrk's request count.
wrk's error counts are reported next to the speed, since a proxy that errors must not look fast.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from benchkit import (
    BenchError,
    Child,
    Children,
    Measurement,
    WrkResult,
    is_accepting,
    process_tree_cpu_seconds,
    run_wrk,
    wait_until_accepting,
)
from sidebyside_report import number, write_report

REPO_ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = "127.0.0.1"
LB_IP = "127.0.0.20"
BACKEND_PORTS = (18081, 18082)
NGINX_PROXY_PORT = 18080
LBPROXY_PORT = 18090
LB_LISTENER_PORT = 18091
BODY = b"hello world\n"
ENGINES = ("httptools", "h11")
WARMUP_SECONDS = 2
EXIT_FAILED = 1
EXIT_MISSING_TOOLS = 2
EXIT_INTERRUPTED = 130

LBPROXY_CONFIG = """\
[gateway]
region = "bench-region"
listen = ["{loopback}:{port}"]
http_parser = "{engine}"

[[vpc]]
id = "vpc-bench"
region = "bench-region"
cidrs = ["127.0.0.0/8"]

[[instance]]
id = "i-nginx-1"
vpc = "vpc-bench"
ip = "{loopback}"

[[load_balancer]]
id = "lb-bench"
vpc = "vpc-bench"
ip = "{lb_ip}"
internal = true
[[load_balancer.listener]]
port = {lb_port}
servers = [ {{ instance = "i-nginx-1", port = {backend_1}, weight = 1 }}, \
{{ instance = "i-nginx-1", port = {backend_2}, weight = 1 }} ]

[[authorization]]
name = "bench-lb"
vpc = "vpc-bench"
target = "lb-bench"
port = {lb_port}

[[api]]
name = "bench"
methods = ["GET"]
path = "/*"
backend = {{ type = "vpc", authorization = "bench-lb", timeout = 10.0 }}
"""


class MissingToolsError(BenchError):
    """nginx or wrk is not on PATH."""


# --- targets and settings -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    port: int
    engine: str | None = None

    @property
    def is_proxy(self) -> bool:
        return self.name != "direct"

    @property
    def is_lbproxy(self) -> bool:
        return self.engine is not None


@dataclass(frozen=True, slots=True)
class Pinning:
    """Where each side runs; None means no pinning (fewer than two usable CPUs)."""

    proxy_cpus: frozenset[int] | None
    load_cpus: frozenset[int] | None

    def describe(self) -> str:
        if self.proxy_cpus is None or self.load_cpus is None:
            return "none (fewer than 2 usable CPUs: proxy, wrk and backends share the machine)"
        return (
            f"proxy on CPU {_cpu_list(self.proxy_cpus)}; "
            f"wrk and nginx backends on CPU {_cpu_list(self.load_cpus)}"
        )


@dataclass(frozen=True, slots=True)
class Settings:
    duration: int
    rounds: int
    connections: int
    targets: tuple[Target, ...]
    out: Path
    python: str
    pinning: Pinning


def _cpu_list(cpus: frozenset[int]) -> str:
    return ",".join(str(cpu) for cpu in sorted(cpus))


def choose_pinning() -> Pinning:
    usable = sorted(os.sched_getaffinity(0))
    if len(usable) < 2:
        return Pinning(None, None)
    return Pinning(frozenset({usable[0]}), frozenset({usable[1]}))


def resolve_targets(names: Sequence[str], engines: Sequence[str]) -> tuple[Target, ...]:
    known = {
        "direct": Target("direct", BACKEND_PORTS[0]),
        "nginx": Target("nginx", NGINX_PROXY_PORT),
        **{f"lbproxy-{e}": Target(f"lbproxy-{e}", LBPROXY_PORT, e) for e in ENGINES},
    }
    chosen: list[Target] = []
    for name in names:
        expanded = [f"lbproxy-{e}" for e in engines] if name == "lbproxy" else [name]
        for one in expanded:
            if one not in known:
                raise BenchError(f"unknown target {one!r}: choose from {', '.join(known)}, lbproxy")
            if known[one] not in chosen:
                chosen.append(known[one])
    if not chosen:
        raise BenchError("no targets to measure")
    return tuple(chosen)


def ensure_ports_free(targets: Sequence[Target]) -> None:
    wanted = [(LOOPBACK, port) for port in BACKEND_PORTS]
    if any(t.name == "nginx" for t in targets):
        wanted.append((LOOPBACK, NGINX_PROXY_PORT))
    if any(t.is_lbproxy for t in targets):
        wanted += [(LOOPBACK, LBPROXY_PORT), (LB_IP, LB_LISTENER_PORT)]
    busy = [f"{host}:{port}" for host, port in wanted if is_accepting(host, port)]
    if busy:
        raise BenchError(f"already in use (stop whatever listens there): {', '.join(busy)}")


def check_response(target: Target) -> None:
    """One request before the load: a proxy that answers wrongly is reported, not timed."""
    connection = http.client.HTTPConnection(LOOPBACK, target.port, timeout=10)
    try:
        connection.request("GET", "/")
        response = connection.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise BenchError(f"{target.name}: GET / failed: {exc!r}") from exc
    finally:
        connection.close()
    if response.status != 200 or body != BODY:
        raise BenchError(f"{target.name}: GET / answered {response.status} {body[:200]!r}")


# --- the lab: backends, proxies, measurements -----------------------------------------------


def nginx_conf(prefix: Path, server_block: str, connections: int) -> str:
    return f"""\
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections {max(1024, 4 * connections)}; }}
http {{
    access_log off;
    keepalive_requests 100000;
    keepalive_timeout 75s;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
{server_block}}}
"""


def backend_server_block(port: int) -> str:
    return f"""\
    server {{
        listen {LOOPBACK}:{port};
        default_type text/plain;
        location / {{ return 200 "hello world\\n"; }}
    }}
"""


def proxy_server_block() -> str:
    servers = "".join(f"        server {LOOPBACK}:{port};\n" for port in BACKEND_PORTS)
    return f"""\
    upstream backends {{
{servers}        keepalive 64;
        keepalive_requests 100000;
    }}
    server {{
        listen {LOOPBACK}:{NGINX_PROXY_PORT};
        location / {{
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
"""


def lbproxy_config(engine: str) -> str:
    return LBPROXY_CONFIG.format(
        loopback=LOOPBACK,
        port=LBPROXY_PORT,
        engine=engine,
        lb_ip=LB_IP,
        lb_port=LB_LISTENER_PORT,
        backend_1=BACKEND_PORTS[0],
        backend_2=BACKEND_PORTS[1],
    )


class Lab:
    """The temp dir, the children and the settings of one run."""

    def __init__(self, settings: Settings, workdir: Path) -> None:
        self._settings = settings
        self._workdir = workdir
        self._children = Children(workdir, cwd=REPO_ROOT)

    def close(self) -> None:
        self._children.stop_all()

    def start_backends(self) -> None:
        for port in BACKEND_PORTS:
            self._start_nginx(f"backend-{port}", backend_server_block(port), port, load=True)

    def measure(self, target: Target, round_number: int) -> Measurement:
        with self._proxy_for(target) as proxy:
            check_response(target)
            self._run_wrk(target, WARMUP_SECONDS)
            before = process_tree_cpu_seconds(proxy.process.pid) if proxy else None
            result = self._run_wrk(target, self._settings.duration)
            after = process_tree_cpu_seconds(proxy.process.pid) if proxy else None
            if proxy is not None and not proxy.is_running():
                raise BenchError(f"{proxy.name} died during the run\n{proxy.output_tail()}")
        cpu = None if before is None or after is None else after - before
        return Measurement(target.name, round_number, result, cpu)

    @contextlib.contextmanager
    def _proxy_for(self, target: Target) -> Iterator[Child | None]:
        if not target.is_proxy:
            yield None
            return
        if target.engine is not None:
            child = self._start_lbproxy(target.engine)
        else:
            child = self._start_nginx("nginx-proxy", proxy_server_block(), NGINX_PROXY_PORT)
        try:
            yield child
        finally:
            self._children.stop(child)

    def _start_nginx(self, name: str, server_block: str, port: int, load: bool = False) -> Child:
        prefix = self._workdir / name
        prefix.mkdir(exist_ok=True)
        conf = prefix / "nginx.conf"
        conf.write_text(nginx_conf(prefix, server_block, self._settings.connections))
        argv = ["nginx", "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf)]
        argv += ["-g", "daemon off;"]
        pinning = self._settings.pinning
        child = self._children.start(name, argv, pinning.load_cpus if load else pinning.proxy_cpus)
        wait_until_accepting(child, LOOPBACK, port)
        return child

    def _start_lbproxy(self, engine: str) -> Child:
        config = self._workdir / f"lbproxy-{engine}.toml"
        config.write_text(lbproxy_config(engine))
        argv = [self._settings.python, "-m", "lbproxy", "run", "-c", str(config)]
        child = self._children.start(f"lbproxy-{engine}", argv, self._settings.pinning.proxy_cpus)
        wait_until_accepting(child, LOOPBACK, LBPROXY_PORT)
        return child

    def _run_wrk(self, target: Target, seconds: int) -> WrkResult:
        url = f"http://{LOOPBACK}:{target.port}/"
        return run_wrk(url, seconds, self._settings.connections, self._settings.pinning.load_cpus)


# --- run ------------------------------------------------------------------------------------


def _first_line(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0].strip() if lines else "unknown"


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or "unknown"


def describe_run(settings: Settings, started: dt.datetime) -> dict[str, object]:
    commit = _first_line(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"])
    return {
        "started (UTC)": started.isoformat(timespec="seconds"),
        "host": f"{platform.node()} ({platform.system()} {platform.release()})",
        "cpu": f"{_cpu_model()}, {os.cpu_count()} CPUs",
        "pinning": settings.pinning.describe(),
        "nginx": _first_line(["nginx", "-v"]).removeprefix("nginx version: "),
        "wrk": _first_line(["wrk", "-v"]).partition(" Copyright")[0],
        "python for lbproxy": _first_line([settings.python, "--version"]),
        "git commit": commit if re.fullmatch(r"[0-9a-f]+", commit) else "none",
        "load": (
            f"wrk -t1 -c{settings.connections} -d{settings.duration}s --latency, "
            f"after a {WARMUP_SECONDS} s warm-up; {settings.rounds} interleaved rounds"
        ),
    }


def run_rounds(lab: Lab, settings: Settings) -> list[Measurement]:
    runs: list[Measurement] = []
    for round_number in range(1, settings.rounds + 1):
        for target in settings.targets:
            m = lab.measure(target, round_number)
            print(
                f"round {round_number}/{settings.rounds} {target.name:<18} "
                f"{m.wrk.req_per_s:>10,.0f} req/s  p50 {m.wrk.p50_ms:7.3f} ms  "
                f"p99 {m.wrk.p99_ms:7.3f} ms  CPU {number(m.cpu_us_per_request, 1)} us/req "
                f"({number(m.cpu_percent, 0)}%)  errors {m.wrk.non_2xx_3xx}/{m.wrk.socket_errors}",
                flush=True,
            )
            runs.append(m)
    return runs


def run(settings: Settings) -> None:
    started = dt.datetime.now(dt.UTC)
    meta = describe_run(settings, started)
    print(f"pinning: {settings.pinning.describe()}")
    ensure_ports_free(settings.targets)
    with tempfile.TemporaryDirectory(prefix="lbproxy-bench-") as tmp:
        workdir = Path(tmp)
        # nginx workers drop to an unprivileged user when started as root and must reach this dir.
        workdir.chmod(0o755)
        lab = Lab(settings, workdir)
        try:
            lab.start_backends()
            runs = run_rounds(lab, settings)
        finally:
            lab.close()
    names = [t.name for t in settings.targets]
    write_report(settings.out, meta, names, runs, settings.rounds)


def check_tools() -> None:
    missing = [tool for tool in ("nginx", "wrk") if shutil.which(tool) is None]
    if missing:
        raise MissingToolsError(
            f"not on PATH: {', '.join(missing)}. Install them with: apt-get install nginx wrk"
        )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections")
    parser.add_argument(
        "--targets",
        default="direct,nginx,lbproxy",
        help="comma list of direct, nginx, lbproxy (one per engine), lbproxy-<engine>",
    )
    parser.add_argument("--engines", default=",".join(ENGINES), help="lbproxy http_parser list")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    parser.add_argument(
        "--python", default=sys.executable, help="interpreter that runs `-m lbproxy`"
    )
    args = parser.parse_args(argv)
    for name in ("duration", "rounds", "connections"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    unknown = set(_split(args.engines)) - set(ENGINES)
    if unknown:
        parser.error(f"unknown engine(s) {', '.join(sorted(unknown))}: choose from {ENGINES}")
    return args


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Explicit, because a shell starts background jobs with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
    try:
        check_tools()
        settings = Settings(
            duration=args.duration,
            rounds=args.rounds,
            connections=args.connections,
            targets=resolve_targets(_split(args.targets), _split(args.engines)),
            out=args.out,
            python=args.python,
            pinning=choose_pinning(),
        )
        run(settings)
    except MissingToolsError as exc:
        print(f"sidebyside: {exc}", file=sys.stderr)
        return EXIT_MISSING_TOOLS
    except BenchError as exc:
        print(f"sidebyside: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("sidebyside: interrupted; children stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
