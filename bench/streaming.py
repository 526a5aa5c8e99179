"""Stream a large download and a large upload through lbproxy and report its memory growth and
the throughput, next to the same transfers without lbproxy.

Run: python bench/streaming.py [--size-mib 1024]   (needs nginx on PATH)

    download   client <- lbproxy :18390 <- nginx :18381 serving a sparse file of --size-mib MiB
    upload     client -> lbproxy :18390 -> sink_backend.py :18382 (counts the body, keeps none)

Each transfer runs twice: straight to its backend (the ceiling on this machine), then through
`python -m lbproxy run` (one worker). The client is this script: one blocking socket, 1 MiB
reads and writes, the byte count checked exactly (the upload's by the sink's answer). While it
runs through lbproxy, lbproxy's RSS is sampled every 10 ms, and its peak (VmHWM, reset just
before the transfer) read after it. Growth is the peak minus the RSS before the transfer; the
target is <= 32 MB (1 MB = 10^6 bytes), whatever the size: a proxy that streams holds a few
buffers, not the body. With two or more CPUs, lbproxy runs alone on the first and the client
and backends on the second, as in sidebyside.py. All traffic stays on loopback.
"""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchkit import (
    BenchError,
    Child,
    Children,
    is_accepting,
    memory_bytes,
    pinned,
    process_tree_cpu_seconds,
    reset_peak_rss,
    run_lab,
    tree_rss_bytes,
    wait_until_accepting,
)
from labconfig import LOOPBACK, nginx_conf
from sidebyside_plan import choose_pinning

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
NGINX_PORT = 18381
SINK_PORT = 18382
LBPROXY_PORT = 18390
BLOCK = 1024 * 1024
SAMPLE_INTERVAL = 0.01
TARGET_GROWTH_MB = 32
MB = 1e6
MIB = 1024 * 1024

LBPROXY_CONFIG = """\
[gateway]
region = "bench"
listen = ["{loopback}:{port}"]

[[vpc]]
id = "vpc-bench"
region = "bench"
cidrs = ["127.0.0.0/8"]

[[instance]]
id = "i-local"
vpc = "vpc-bench"
ip = "{loopback}"

[[authorization]]
name = "files"
vpc = "vpc-bench"
target = "i-local"
port = {nginx_port}

[[authorization]]
name = "sink"
vpc = "vpc-bench"
target = "i-local"
port = {sink_port}

[[api]]
name = "download"
methods = ["GET"]
path = "/download/*"
backend = {{ type = "vpc", authorization = "files", timeout = 30.0 }}

[[api]]
name = "upload"
methods = ["POST"]
path = "/upload/*"
max_body_size = {max_body}
backend = {{ type = "vpc", authorization = "sink", timeout = 30.0 }}
"""


def files_server_block(files: Path) -> str:
    return f"""\
    server {{
        listen {LOOPBACK}:{NGINX_PORT};
        sendfile on;
        location /download/ {{ alias {files}/; }}
    }}
"""


# --- the client -----------------------------------------------------------------------------


def _read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise BenchError(f"closed before the answer's head ended: {data[:200]!r}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200 "):
        raise BenchError(f"answered {head[:200]!r}")
    return head, rest


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    raise BenchError(f"no Content-Length in {head[:200]!r}")


def download(port: int, size: int, name: str = "blob") -> None:
    with socket.create_connection((LOOPBACK, port), timeout=60) as sock:
        sock.sendall(b"GET /download/%b HTTP/1.1\r\nHost: bench\r\n\r\n" % name.encode())
        head, rest = _read_head(sock)
        length = _content_length(head)
        if length != size:
            raise BenchError(f"download: Content-Length {length}, expected {size}")
        received = len(rest)
        buffer = bytearray(BLOCK)
        while received < length:
            n = sock.recv_into(buffer)
            if n == 0:
                raise BenchError(f"download: closed after {received} of {length} bytes")
            received += n
        if received != length:
            raise BenchError(f"download: {received} bytes for a Content-Length of {length}")


def upload(port: int, size: int) -> None:
    block = bytes(BLOCK)
    with socket.create_connection((LOOPBACK, port), timeout=60) as sock:
        sock.sendall(
            b"POST /upload/blob HTTP/1.1\r\nHost: bench\r\n"
            b"Content-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % size
        )
        left = size
        view = memoryview(block)
        while left:
            n = min(left, BLOCK)
            sock.sendall(view[:n])
            left -= n
        head, rest = _read_head(sock)
        length = _content_length(head)
        while len(rest) < length:
            chunk = sock.recv(4096)
            if not chunk:
                break
            rest += chunk
        if rest != f"received {size}\n".encode():
            raise BenchError(f"upload: the sink answered {rest[:100]!r}, expected {size} bytes")


# --- measuring ------------------------------------------------------------------------------


class RssSampler(threading.Thread):
    """The highest RSS of a process tree, sampled until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self._pid = pid
        self._done = threading.Event()
        self.peak = 0

    def run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, tree_rss_bytes(self._pid))
            self._done.wait(SAMPLE_INTERVAL)

    def stop(self) -> int:
        self._done.set()
        self.join(timeout=5)
        return self.peak


@dataclass(frozen=True, slots=True)
class Transfer:
    name: str
    path: str  # "direct" or "lbproxy"
    size: int
    seconds: float
    rss_before: int = 0
    rss_peak: int = 0  # the larger of the sampled peak and VmHWM
    rss_after: int = 0
    cpu_seconds: float | None = None  # lbproxy's, over the transfer

    @property
    def mib_per_s(self) -> float:
        return self.size / MIB / self.seconds if self.seconds else 0.0

    @property
    def growth(self) -> int:
        return self.rss_peak - self.rss_before


def timed(name: str, path: str, move: Callable[[int, int], None], port: int, size: int) -> Transfer:
    began = time.perf_counter()
    move(port, size)
    return Transfer(name, path, size, time.perf_counter() - began)


def through(proxy: Child, name: str, move: Callable[[int, int], None], size: int) -> Transfer:
    pid = proxy.process.pid
    before = tree_rss_bytes(pid)
    reset_peak_rss(pid)
    cpu_before = process_tree_cpu_seconds(pid)
    sampler = RssSampler(pid)
    sampler.start()
    began = time.perf_counter()
    try:
        move(LBPROXY_PORT, size)
    finally:
        seconds = time.perf_counter() - began
        sampled = sampler.stop()
    peak = max(sampled, memory_bytes(pid, "VmHWM"))
    cpu = process_tree_cpu_seconds(pid) - cpu_before
    if not proxy.is_running():
        raise BenchError(f"lbproxy died during the {name}\n{proxy.output_tail()}")
    return Transfer(name, "lbproxy", size, seconds, before, peak, tree_rss_bytes(pid), cpu)


def start_servers(
    children: Children, workdir: Path, size: int, cpus: frozenset[int] | None
) -> None:
    # nginx workers drop to an unprivileged user when started as root and must reach the file.
    workdir.chmod(0o755)
    files = workdir / "files"
    files.mkdir()
    for name, length in (("blob", size), ("warm", MIB)):
        with (files / name).open("wb") as blob:
            blob.truncate(length)  # sparse: no disk space, read back as zeros
        (files / name).chmod(0o644)
    files.chmod(0o755)
    prefix = workdir / "nginx"
    prefix.mkdir()
    conf = prefix / "nginx.conf"
    conf.write_text(nginx_conf(prefix, files_server_block(files), 64))
    argv = ["nginx", "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf)]
    nginx = children.start("nginx", [*argv, "-g", "daemon off;"], cpus)
    wait_until_accepting(nginx, LOOPBACK, NGINX_PORT)
    sink_argv = [sys.executable, str(BENCH / "sink_backend.py"), "--port", str(SINK_PORT)]
    sink = children.start("sink", sink_argv, cpus)
    wait_until_accepting(sink, LOOPBACK, SINK_PORT)


async def measure(children: Children, workdir: Path, size: int) -> None:
    # Blocking transfers in a coroutine: nothing else runs on this loop.
    for port in (NGINX_PORT, SINK_PORT, LBPROXY_PORT):
        if is_accepting(LOOPBACK, port):
            raise BenchError(f"{LOOPBACK}:{port} is already in use (stop whatever listens there)")
    pinning = choose_pinning()
    print(f"pinning: {pinning.describe().replace('wrk and nginx', 'the client and')}", flush=True)
    start_servers(children, workdir, size, pinning.load_cpus)
    config = workdir / "lbproxy.toml"
    config.write_text(
        LBPROXY_CONFIG.format(
            loopback=LOOPBACK,
            port=LBPROXY_PORT,
            nginx_port=NGINX_PORT,
            sink_port=SINK_PORT,
            max_body=max(size, 1024**3) * 2,
        )
    )
    argv = [sys.executable, "-m", "lbproxy", "run", "-c", str(config)]
    proxy = children.start("lbproxy", argv, pinning.proxy_cpus)
    wait_until_accepting(proxy, LOOPBACK, LBPROXY_PORT)
    download(LBPROXY_PORT, MIB, "warm")  # warm: pooled paths and lazy imports
    upload(LBPROXY_PORT, MIB)
    download(NGINX_PORT, size)  # the file's pages in the page cache before either is timed
    transfers = []
    with pinned(pinning.load_cpus):
        for name, move, port in (("download", download, NGINX_PORT), ("upload", upload, SINK_PORT)):
            transfers.append(timed(name, "direct", move, port, size))
            transfers.append(through(proxy, name, move, size))
    report(transfers)


def report(transfers: list[Transfer]) -> None:
    print(
        "| transfer | path | MiB | seconds | MiB/s | lbproxy CPU s "
        "| RSS before MB | RSS peak MB | growth MB |"
    )
    print("|---|---|--:|--:|--:|--:|--:|--:|--:|")
    for t in transfers:
        cells = [t.name, t.path, f"{t.size / MIB:g}", f"{t.seconds:.2f}", f"{t.mib_per_s:.0f}"]
        if t.path == "direct":
            cells += ["", "", "", ""]
        else:
            cells += [f"{t.cpu_seconds or 0.0:.2f}", f"{t.rss_before / MB:.1f}"]
            cells += [f"{t.rss_peak / MB:.1f}", f"{t.growth / MB:.1f}"]
        print("| " + " | ".join(cells) + " |")
    for t in transfers:
        if t.path == "lbproxy":
            direct = next(d for d in transfers if d.name == t.name and d.path == "direct")
            verdict = "met" if t.growth <= TARGET_GROWTH_MB * MB else "NOT met"
            print(
                f"{t.name} through lbproxy: {t.mib_per_s:.0f} MiB/s "
                f"({t.mib_per_s / direct.mib_per_s:.2f}x direct), RSS growth "
                f"{t.growth / MB:.1f} MB: target <= {TARGET_GROWTH_MB} MB {verdict}"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size-mib", type=int, default=1024, help="MiB in each direction")
    args = parser.parse_args()
    if args.size_mib < 1:
        parser.error("--size-mib must be at least 1")
    return run_lab(
        "lbproxy-streaming-",
        REPO_ROOT,
        lambda children, workdir: measure(children, workdir, args.size_mib * MIB),
    )


if __name__ == "__main__":
    sys.exit(main())
