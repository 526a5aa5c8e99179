"""Configuration text for the benchmark labs: nginx (backends and proxy), HAProxy and lbproxy.

Every server listens on loopback only. nginx and HAProxy log nothing per request and keep
client and upstream connections open for as long as a pooling proxy does, so a benchmark
measures forwarding, not connection setup or logging.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

LOOPBACK = "127.0.0.1"
SMALL_BODY = b"hello world\n"
# 64 KiB, the same bytes on every backend: a proxy that mixes up or cuts bodies is caught.
LARGE_BODY = bytes(range(256)) * 256
LARGE_PATH = "/64k"
LARGE_FILE = "64k.bin"


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


def backend_server_block(port: int, files: Path | None = None) -> str:
    """``/`` answers the 12-byte body; with ``files`` (a directory holding ``LARGE_FILE``),
    ``LARGE_PATH`` answers the 64 KiB one from it."""
    large = ""
    if files is not None:
        large = f"        location = {LARGE_PATH} {{ alias {files / LARGE_FILE}; }}\n"
    return f"""\
    server {{
        listen {LOOPBACK}:{port};
        default_type text/plain;
        location / {{ return 200 "hello world\\n"; }}
{large}    }}
"""


def write_large_file(directory: Path) -> None:
    path = directory / LARGE_FILE
    path.write_bytes(LARGE_BODY)
    path.chmod(0o644)  # nginx workers started as root read it as an unprivileged user


def proxy_server_block(listen_port: int, backend_ports: Sequence[int]) -> str:
    servers = "".join(f"        server {LOOPBACK}:{port};\n" for port in backend_ports)
    return f"""\
    upstream backends {{
{servers}        keepalive 64;
        keepalive_requests 100000;
    }}
    server {{
        listen {LOOPBACK}:{listen_port};
        location / {{
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
"""


def haproxy_config(listen_port: int, backend_ports: Sequence[int], connections: int) -> str:
    """One thread, HTTP keep-alive on both sides, idle server connections reused by any
    request (``http-reuse always``: what nginx's ``keepalive`` pool and lbproxy's pool do)."""
    servers = "".join(
        f"    server b{i} {LOOPBACK}:{port}\n" for i, port in enumerate(backend_ports, 1)
    )
    return f"""\
global
    nbthread 1
    maxconn {max(4096, 4 * connections)}

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 75s
    timeout server 75s
    timeout http-keep-alive 75s

frontend bench
    bind {LOOPBACK}:{listen_port}
    default_backend backends

backend backends
    balance roundrobin
{servers}"""


LBPROXY_CONFIG = """\
[gateway]
region = "bench-region"
listen = ["{loopback}:{port}"]
http_parser = "{engine}"
workers = {workers}
{gateway_extra}
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
servers = [{servers}]

[[authorization]]
name = "bench-lb"
vpc = "vpc-bench"
target = "lb-bench"
port = {lb_port}

[[api]]
name = "bench"
methods = ["GET", "POST", "PUT"]
path = "/*"
backend = {{ type = "vpc", authorization = "bench-lb", timeout = {timeout} }}
"""


def lbproxy_config(
    port: int,
    backend_ports: Sequence[int],
    *,
    engine: str = "httptools",
    workers: int = 1,
    lb_ip: str = "127.0.0.20",
    lb_port: int = 18091,
    timeout: float = 10.0,
    gateway_extra: str = "",
) -> str:
    """lbproxy on ``LOOPBACK:port`` balancing ``/*`` over nginx servers on ``backend_ports``
    through an internal load balancer listener (``lb_ip:lb_port``) and its authorization."""
    servers = ", ".join(
        f'{{ instance = "i-nginx-1", port = {p}, weight = 1 }}' for p in backend_ports
    )
    return LBPROXY_CONFIG.format(
        loopback=LOOPBACK,
        port=port,
        engine=engine,
        workers=workers,
        gateway_extra=gateway_extra,
        lb_ip=lb_ip,
        lb_port=lb_port,
        servers=servers,
        timeout=timeout,
    )
