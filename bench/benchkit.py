"""Tools shared by the benchmarks: child processes, CPU pinning and accounting, wrk runs.

Every child starts in its own session (process group), so stopping it stops whatever it forked,
and Children remembers them all so one finally-block can stop everything on error or Ctrl-C.
Nothing here loops without a bound: readiness polls a fixed number of times, waits have timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

READY_TRIES = 300
READY_INTERVAL = 0.05
STOP_TIMEOUT = 5.0
WRK_SLACK_SECONDS = 30
LOG_TAIL_CHARS = 4000
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """A failure that ends the run with its message."""


# --- wrk ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    seconds: float
    req_per_s: float
    p50_ms: float
    p99_ms: float
    non_2xx_3xx: int
    socket_errors: int


_MS_PER_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}
_TIME = r"([\d.]+)(us|ms|s|m|h)"
_PERCENTILE_RE = re.compile(rf"^\s*(\d+(?:\.\d+)?)%\s+{_TIME}\s*$", re.MULTILINE)
_REQUESTS_RE = re.compile(rf"(\d+) requests in {_TIME},")
_RATE_RE = re.compile(r"Requests/sec:\s+([\d.]+)")
_NON_2XX_RE = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET_ERRORS_RE = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)"
)


def to_ms(value: str, unit: str) -> float:
    return float(value) * _MS_PER_UNIT[unit]


def parse_wrk(output: str) -> WrkResult:
    """Read wrk --latency output; wrk prints the error lines only when there are errors."""
    percentiles = {float(p): to_ms(v, u) for p, v, u in _PERCENTILE_RE.findall(output)}
    requests = _REQUESTS_RE.search(output)
    rate = _RATE_RE.search(output)
    if requests is None or rate is None or 50.0 not in percentiles or 99.0 not in percentiles:
        raise BenchError(f"cannot parse wrk output:\n{output}")
    non_2xx = _NON_2XX_RE.search(output)
    socket_errors = _SOCKET_ERRORS_RE.search(output)
    return WrkResult(
        requests=int(requests.group(1)),
        seconds=to_ms(requests.group(2), requests.group(3)) / 1e3,
        req_per_s=float(rate.group(1)),
        p50_ms=percentiles[50.0],
        p99_ms=percentiles[99.0],
        non_2xx_3xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in socket_errors.groups()) if socket_errors else 0,
    )


def run_wrk(
    url: str, seconds: int, connections: int, cpus: frozenset[int] | None = None
) -> WrkResult:
    argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    with pinned(cpus):
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=seconds + WRK_SLACK_SECONDS,
            check=False,
        )
    if done.returncode != 0:
        raise BenchError(f"wrk failed on {url} (status {done.returncode}):\n{done.stderr}")
    return parse_wrk(done.stdout)


@dataclass(frozen=True, slots=True)
class Measurement:
    """One measured wrk run against one target under one load, with the proxy's CPU time over
    that run."""

    target: str
    round: int
    wrk: WrkResult
    proxy_cpu_seconds: float | None
    load: str = ""

    @property
    def cpu_us_per_request(self) -> float | None:
        if self.proxy_cpu_seconds is None or self.wrk.requests == 0:
            return None
        return self.proxy_cpu_seconds / self.wrk.requests * 1e6

    @property
    def cpu_percent(self) -> float | None:
        if self.proxy_cpu_seconds is None or self.wrk.seconds == 0:
            return None
        return self.proxy_cpu_seconds / self.wrk.seconds * 100


# --- child processes ------------------------------------------------------------------------


@contextlib.contextmanager
def pinned(cpus: frozenset[int] | None) -> Iterator[None]:
    """Run the block with this process pinned, so that children spawned in it inherit the pin.

    Setting the affinity before the fork, rather than on the pid after it, also covers the
    workers an nginx master forks at once, and needs neither taskset nor a preexec_fn.
    """
    if cpus is None:
        yield
        return
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, previous)


@dataclass(frozen=True, slots=True)
class Child:
    name: str
    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    def is_running(self) -> bool:
        return self.process.poll() is None

    def output_tail(self) -> str:
        parts = []
        for label, path in (("stderr", self.stderr), ("stdout", self.stdout)):
            text = path.read_text(errors="replace") if path.exists() else ""
            if text.strip():
                parts.append(f"--- {self.name} {label} (tail) ---\n{text[-LOG_TAIL_CHARS:]}")
        return "\n".join(parts) or f"({self.name} wrote nothing to stdout or stderr)"


class Children:
    """Every child process started here, so one finally-block can stop them all."""

    def __init__(self, log_dir: Path, cwd: Path) -> None:
        self._log_dir = log_dir
        self._cwd = cwd
        self._children: list[Child] = []

    def __repr__(self) -> str:
        return f"<Children [{', '.join(c.name for c in self._children)}]>"

    def start(self, name: str, argv: Sequence[str], cpus: frozenset[int] | None) -> Child:
        # Logs go to files, not pipes: nobody drains a pipe during a run, and a full one stalls.
        stdout, stderr = self._log_dir / f"{name}.stdout", self._log_dir / f"{name}.stderr"
        with stdout.open("wb") as out, stderr.open("wb") as err, pinned(cpus):
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                cwd=self._cwd,
                start_new_session=True,
            )
        child = Child(name, process, stdout, stderr)
        self._children.append(child)
        return child

    def stop(self, child: Child) -> None:
        _signal_group(child.process.pid, signal.SIGTERM)
        try:
            child.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            print(f"{child.name} did not stop in {STOP_TIMEOUT:.0f} s: killing it", file=sys.stderr)
        # Also reaches anything the child forked and left behind in its group.
        _signal_group(child.process.pid, signal.SIGKILL)
        child.process.wait(timeout=STOP_TIMEOUT)
        self._children.remove(child)

    def stop_all(self) -> None:
        for child in reversed(self._children[:]):
            self.stop(child)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def is_accepting(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_until_accepting(child: Child, host: str, port: int) -> None:
    for _ in range(READY_TRIES):
        if not child.is_running():
            raise BenchError(
                f"{child.name} exited with status {child.process.returncode} before accepting "
                f"on {host}:{port}\n{child.output_tail()}"
            )
        if is_accepting(host, port):
            return
        time.sleep(READY_INTERVAL)
    raise BenchError(
        f"{child.name} did not accept on {host}:{port} within "
        f"{READY_TRIES * READY_INTERVAL:.0f} s\n{child.output_tail()}"
    )


# --- CPU accounting -------------------------------------------------------------------------


def process_tree_cpu_seconds(root: int) -> float:
    """utime + stime of root and every live descendant, from /proc."""
    stats = _all_proc_stats()
    return sum(stats[pid][1] for pid in _tree(root, stats)) / CLK_TCK


def process_tree_pids(root: int) -> list[int]:
    """root and every live descendant."""
    return _tree(root, _all_proc_stats())


def _tree(root: int, stats: dict[int, tuple[int, int]]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    found, pending = [], [root]
    seen: set[int] = set()
    while pending:
        pid = pending.pop()
        if pid in seen or pid not in stats:
            continue
        seen.add(pid)
        found.append(pid)
        pending.extend(children.get(pid, ()))
    return found


def _all_proc_stats() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, utime + stime in clock ticks) for every process still alive."""
    stats: dict[int, tuple[int, int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: fields start after the last ')'.
        fields = raw.rpartition(")")[2].split()
        stats[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    return stats


# --- memory and file descriptors ------------------------------------------------------------


def memory_bytes(pid: int, field: str = "VmRSS") -> int:
    """A /proc/PID/status size (VmRSS: resident now; VmHWM: the peak since start or since
    ``reset_peak_rss``) in bytes; 0 for a process gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(rf"^{field}:\s+(\d+) kB$", status, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else 0


def tree_rss_bytes(root: int) -> int:
    """Resident memory of root and every live descendant (shared pages counted in each)."""
    return sum(memory_bytes(pid) for pid in process_tree_pids(root))


def reset_peak_rss(pid: int) -> bool:
    """Start VmHWM again from the current RSS (Linux 4.0+); False where not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def raise_nofile(needed: int) -> tuple[int, int]:
    """Raise this process's RLIMIT_NOFILE to at least ``needed`` (children inherit it at
    fork), raising the hard limit too where allowed (root); the (soft, hard) limits after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return soft, hard
    if hard != resource.RLIM_INFINITY and hard < needed:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            return needed, needed
        raise BenchError(
            f"{needed} file descriptors are needed but the hard limit is {hard} and cannot be "
            f"raised here: raise it (ulimit -Hn, LimitNOFILE=, /etc/security/limits.conf) or "
            f"ask for fewer connections"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return needed, hard


def run_lab(prefix: str, root: Path, measure: Callable[[Children, Path], Awaitable[None]]) -> int:
    """Run ``measure`` in a temporary directory with children started from ``root``, stop
    every child whatever happens; the exit status for a bench script."""
    if shutil.which("nginx") is None:
        print("nginx is not on PATH (Debian: apt-get install nginx)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        children = Children(Path(tmp), cwd=root)
        try:
            asyncio.run(measure(children, Path(tmp)))
        except BenchError as exc:
            print(exc, file=sys.stderr)
            return 1
        finally:
            children.stop_all()
    return 0
