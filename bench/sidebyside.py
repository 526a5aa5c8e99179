"""Side-by-side benchmark: lbproxy against nginx and HAProxy as reverse proxies, in one run, on one
machine.

Theory of operation. Two nginx backends (127.0.0.1:18081 and :18082) answer ``/`` with a 12-byte
body and ``/64k`` with a 64 KiB one, and stay up for the whole run. Each target is then measured
with wrk under each load:

    direct              wrk -> backend 18081                (the ceiling: no proxy at all)
    nginx               wrk -> nginx proxy :18080 -> backends
    haproxy             wrk -> HAProxy :18083 -> backends   (nbthread 1)
    lbproxy-<engine>    wrk -> lbproxy :18090 -> backends   (one target per HTTP parser engine;
                                                             lbproxy-<engine>-<N>w with N workers)

    single   1 connection, 12-byte bodies (latency: nothing to overlap)
    small    --connections connections (50), 12-byte bodies (per-request cost)
    large    --connections connections, 64 KiB bodies (bytes moved)

Every proxy is started fresh before its measurement and stopped after it, nginx included, so all
sides pay the same cold start; a 2 s wrk warm-up run precedes every measured run. Rounds are
interleaved (round 1 runs every load on every target once, then round 2, ...) so drift on a
shared machine hits all targets alike, and the report takes the median over rounds.

With two or more CPUs the proxy under test runs alone on the first CPU and wrk plus the backends
share the second, so the proxy's CPU cost per request is what limits its throughput. lbproxy with
N workers gets N CPUs when the machine has N + 1 or more, and is not pinned otherwise (the report
says which). Affinity is set on this process just before each spawn and restored after it: the
child inherits it at fork.

CPU time per request is the proxy's utime + stime (the whole process tree: nginx master and
worker, lbproxy's supervisor and workers) across the measured run, divided by wrk's request
count. wrk's error counts are reported next to the speed, since a proxy that errors must not look
fast.
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
from labconfig import (
    LOOPBACK,
    backend_server_block,
    haproxy_config,
    lbproxy_config,
    nginx_conf,
    proxy_server_block,
    write_large_file,
)
from sidebyside_plan import (
    BACKEND_PORTS,
    ENGINES,
    HAPROXY_PORT,
    LB_IP,
    LB_LISTENER_PORT,
    LBPROXY_PORT,
    LOADS,
    NGINX_PROXY_PORT,
    Load,
    Settings,
    Target,
    choose_pinning,
    resolve_loads,
    resolve_targets,
)
from sidebyside_report import number, write_report

REPO_ROOT = Path(__file__).resolve().parent.parent
EXIT_FAILED = 1
EXIT_MISSING_TOOLS = 2
EXIT_INTERRUPTED = 130


class MissingToolsError(BenchError):
    """nginx, wrk or haproxy is not on PATH."""


# --- checks ---------------------------------------------------------------------------------


def ensure_ports_free(targets: Sequence[Target]) -> None:
    wanted = [(LOOPBACK, port) for port in BACKEND_PORTS]
    if any(t.name == "nginx" for t in targets):
        wanted.append((LOOPBACK, NGINX_PROXY_PORT))
    if any(t.name == "haproxy" for t in targets):
        wanted.append((LOOPBACK, HAPROXY_PORT))
    if any(t.is_lbproxy for t in targets):
        wanted += [(LOOPBACK, LBPROXY_PORT), (LB_IP, LB_LISTENER_PORT)]
    busy = [f"{host}:{port}" for host, port in wanted if is_accepting(host, port)]
    if busy:
        raise BenchError(f"already in use (stop whatever listens there): {', '.join(busy)}")


def check_response(target: Target, load: Load) -> None:
    """One request before the load: a proxy that answers wrongly is reported, not timed."""
    connection = http.client.HTTPConnection(LOOPBACK, target.port, timeout=10)
    try:
        connection.request("GET", load.path)
        response = connection.getresponse()
        body = response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise BenchError(f"{target.name}: GET {load.path} failed: {exc!r}") from exc
    finally:
        connection.close()
    if response.status != 200 or body != load.body:
        raise BenchError(
            f"{target.name}: GET {load.path} answered {response.status} "
            f"({len(body)} bytes) {body[:200]!r}"
        )


# --- the lab: backends, proxies, measurements -----------------------------------------------


class Lab:
    """The temp dir, the children and the settings of one run."""

    def __init__(self, settings: Settings, workdir: Path) -> None:
        self._settings = settings
        self._workdir = workdir
        self._children = Children(workdir, cwd=REPO_ROOT)

    def close(self) -> None:
        self._children.stop_all()

    def start_backends(self) -> None:
        write_large_file(self._workdir)
        for port in BACKEND_PORTS:
            block = backend_server_block(port, self._workdir)
            self._start_nginx(f"backend-{port}", block, port, load=True)

    def measure(self, target: Target, load: Load, round_number: int) -> Measurement:
        with self._proxy_for(target) as proxy:
            check_response(target, load)
            if self._settings.warmup:
                self._run_wrk(target, load, self._settings.warmup)
            before = process_tree_cpu_seconds(proxy.process.pid) if proxy else None
            result = self._run_wrk(target, load, self._settings.duration)
            after = process_tree_cpu_seconds(proxy.process.pid) if proxy else None
            if proxy is not None and not proxy.is_running():
                raise BenchError(f"{proxy.name} died during the run\n{proxy.output_tail()}")
        cpu = None if before is None or after is None else after - before
        return Measurement(target.name, round_number, result, cpu, load.name)

    @contextlib.contextmanager
    def _proxy_for(self, target: Target) -> Iterator[Child | None]:
        if not target.is_proxy:
            yield None
            return
        if target.engine is not None:
            child = self._start_lbproxy(target)
        elif target.name == "haproxy":
            child = self._start_haproxy()
        else:
            block = proxy_server_block(NGINX_PROXY_PORT, BACKEND_PORTS)
            child = self._start_nginx("nginx-proxy", block, NGINX_PROXY_PORT)
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

    def _start_haproxy(self) -> Child:
        conf = self._workdir / "haproxy.cfg"
        conf.write_text(haproxy_config(HAPROXY_PORT, BACKEND_PORTS, self._settings.connections))
        # -db: stay in the foreground, one process, so its pid is the one whose CPU is counted.
        argv = ["haproxy", "-db", "-f", str(conf)]
        child = self._children.start("haproxy", argv, self._settings.pinning.proxy_cpus)
        wait_until_accepting(child, LOOPBACK, HAPROXY_PORT)
        return child

    def _start_lbproxy(self, target: Target) -> Child:
        assert target.engine is not None
        config = self._workdir / f"{target.name}.toml"
        text = lbproxy_config(
            LBPROXY_PORT,
            BACKEND_PORTS,
            engine=target.engine,
            workers=target.workers,
            lb_ip=LB_IP,
            lb_port=LB_LISTENER_PORT,
        )
        config.write_text(text)
        argv = [self._settings.python, "-m", "lbproxy", "run", "-c", str(config)]
        cpus = self._settings.pinning.proxy_cpus_for(target.workers)
        child = self._children.start(target.name, argv, cpus)
        wait_until_accepting(child, LOOPBACK, LBPROXY_PORT)
        return child

    def _run_wrk(self, target: Target, load: Load, seconds: int) -> WrkResult:
        url = f"http://{LOOPBACK}:{target.port}{load.path}"
        return run_wrk(url, seconds, load.connections, self._settings.pinning.load_cpus)


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
    pinning = settings.pinning.describe()
    for workers in sorted({t.workers for t in settings.targets if t.workers > 1}):
        pinning += "; " + settings.pinning.describe_workers(workers)
    meta: dict[str, object] = {
        "started (UTC)": started.isoformat(timespec="seconds"),
        "host": f"{platform.node()} ({platform.system()} {platform.release()})",
        "cpu": f"{_cpu_model()}, {os.cpu_count()} CPUs",
        "pinning": pinning,
        "nginx": _first_line(["nginx", "-v"]).removeprefix("nginx version: "),
    }
    if any(t.name == "haproxy" for t in settings.targets):
        meta["haproxy"] = _first_line(["haproxy", "-v"]).partition(" - ")[0]
    meta |= {
        "wrk": _first_line(["wrk", "-v"]).partition(" Copyright")[0],
        "python for lbproxy": _first_line([settings.python, "--version"]),
        "git commit": commit if re.fullmatch(r"[0-9a-f]+", commit) else "none",
        "load": (
            f"wrk -t1 -c<connections> -d{settings.duration}s --latency, after a "
            f"{settings.warmup} s warm-up; {settings.rounds} interleaved rounds"
        ),
    }
    return meta


def run_rounds(lab: Lab, settings: Settings) -> list[Measurement]:
    runs: list[Measurement] = []
    for round_number in range(1, settings.rounds + 1):
        for load in settings.loads:
            for target in settings.targets:
                m = lab.measure(target, load, round_number)
                print(
                    f"round {round_number}/{settings.rounds} {load.name:<6} {target.name:<22} "
                    f"{m.wrk.req_per_s:>10,.0f} req/s  p50 {m.wrk.p50_ms:7.3f} ms  "
                    f"p99 {m.wrk.p99_ms:7.3f} ms  "
                    f"CPU {number(m.cpu_us_per_request, 1)} us/req "
                    f"({number(m.cpu_percent, 0)}%)  "
                    f"errors {m.wrk.non_2xx_3xx}/{m.wrk.socket_errors}",
                    flush=True,
                )
                runs.append(m)
    return runs


def run(settings: Settings) -> None:
    started = dt.datetime.now(dt.UTC)
    meta = describe_run(settings, started)
    print(f"pinning: {meta['pinning']}")
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
    loads = {load.name: load.describe() for load in settings.loads}
    write_report(settings.out, meta, names, loads, runs, rounds=settings.rounds)


def check_tools(targets: Sequence[Target]) -> None:
    tools = ["nginx", "wrk"] + (["haproxy"] if any(t.name == "haproxy" for t in targets) else [])
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        raise MissingToolsError(
            f"not on PATH: {', '.join(missing)}. Install them with: "
            f"apt-get install {' '.join(missing)} (or make bench-deps)"
        )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    parser.add_argument(
        "--warmup", type=int, default=2, help="seconds of wrk before each measured run (0: none)"
    )
    parser.add_argument(
        "--connections", type=int, default=50, help="wrk connections of the small and large loads"
    )
    parser.add_argument(
        "--targets",
        default="direct,nginx,haproxy,lbproxy",
        help="comma list of direct, nginx, haproxy, lbproxy (one per engine and worker count), "
        "lbproxy-<engine> (one per worker count)",
    )
    parser.add_argument("--engines", default=",".join(ENGINES), help="lbproxy http_parser list")
    parser.add_argument(
        "--loads",
        default=",".join(LOADS),
        help="comma list of single (1 connection), small (12-byte bodies), large (64 KiB bodies)",
    )
    parser.add_argument(
        "--workers",
        default="1",
        help="lbproxy worker counts, a comma list: 1,2 measures both, to show scaling",
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    parser.add_argument(
        "--python", default=sys.executable, help="interpreter that runs `-m lbproxy`"
    )
    args = parser.parse_args(argv)
    for name in ("duration", "rounds", "connections"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must be 0 or more")
    unknown = set(_split(args.engines)) - set(ENGINES)
    if unknown:
        parser.error(f"unknown engine(s) {', '.join(sorted(unknown))}: choose from {ENGINES}")
    try:
        args.workers = tuple(dict.fromkeys(int(n) for n in _split(args.workers)))
    except ValueError:
        parser.error(f"--workers wants whole numbers, got {args.workers!r}")
    if not args.workers or min(args.workers) < 1:
        parser.error("--workers wants worker counts of 1 or more")
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
        targets = resolve_targets(_split(args.targets), _split(args.engines), args.workers)
        check_tools(targets)
        settings = Settings(
            duration=args.duration,
            warmup=args.warmup,
            rounds=args.rounds,
            connections=args.connections,
            targets=targets,
            loads=resolve_loads(_split(args.loads), args.connections),
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
