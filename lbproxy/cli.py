"""``lbproxy run | check | demo | sign``: the only place that maps errors to exit codes.

Exit codes: 0 ok, 2 usage, 3 start-up failure (a port in use, ...), 78 bad configuration
(EX_CONFIG from sysexits.h, what systemd and supervisors understand).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
import tomllib
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from lbproxy import BUILD, __version__, daemon
from lbproxy.authz import build_reachability, format_table
from lbproxy.config import Config
from lbproxy.configload import load_config, parse_config, parse_host_port
from lbproxy.demo import demo_config_text, start_demo_backends
from lbproxy.errors import ConfigError, StartupError
from lbproxy.server import Runtime
from lbproxy.signing import sign
from lbproxy.state import Document, read_document

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_STARTUP = 3
EXIT_CONFIG = 78

log = logging.getLogger("lbproxy")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lbproxy", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"lbproxy {__version__} ({BUILD})")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="serve the gateway described by a configuration file")
    run.add_argument("-c", "--config", required=True, help="the TOML configuration file")
    run.add_argument(
        "--pid-file", help="write the (supervisor's) pid here, atomically; removed at exit"
    )
    check = sub.add_parser(
        "check", help="validate a configuration and print what each API can reach"
    )
    check.add_argument("-c", "--config", required=True, help="the TOML configuration file")
    demo = sub.add_parser("demo", help="run the built-in demo: backends, a load balancer, an API")
    demo.add_argument(
        "-c",
        "--config",
        help="a configuration to demo instead of the built-in "
        "one (demo backends start on every load balancer server)",
    )
    demo.add_argument("--listen", help="the API front address, e.g. 127.0.0.1:8088")
    _add_sign_parser(sub)
    return parser


SIGN_EPILOG = """\
Every header printed must be sent as printed: the -H headers, then Accept (*/*, curl's default,
when no -H gives one), Content-Type (application/x-www-form-urlencoded, curl's default, when
--data is given without one), Content-MD5 and the X-Ca-* headers. The method defaults to GET, or
POST with --data, as in curl. The signature is valid for 15 minutes and one request. With bash:

  export APP_SECRET=...
  mapfile -t H < <(lbproxy sign --key K --secret-env APP_SECRET URL)
  curl "${H[@]/#/-H}" URL
"""


def _add_sign_parser(sub: Any) -> None:
    signer = sub.add_parser(
        "sign",
        help="print the headers that sign a request as an app (AppKey/AppSecret)",
        description="Print the headers that sign a request as an app, one 'Name: value' a line.",
        epilog=SIGN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    signer.set_defaults(sign_parser=signer)  # its usage errors name the subcommand
    signer.add_argument("--key", required=True, help="the app's key (X-Ca-Key)")
    secret = signer.add_mutually_exclusive_group(required=True)
    secret.add_argument(
        "--secret", help="the app's secret (visible in the process list: prefer --secret-env)"
    )
    secret.add_argument(
        "--secret-env",
        metavar="NAME",
        help="read the secret from the environment variable NAME, so that it need not go on "
        "a command line",
    )
    signer.add_argument(
        "-X", "--request", dest="method", help="the method (default GET, or POST with --data)"
    )
    signer.add_argument(
        "-H",
        "--header",
        dest="headers",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="a header to send and sign; repeatable",
    )
    signer.add_argument(
        "--data", help="the request body, byte for byte as sent (curl --data-binary 'BODY')"
    )
    signer.add_argument(
        "url", metavar="URL", help="the URL or path, exactly as it will be sent (percent-encoded)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "sign":
        return _sign(args)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "check":
            return _check(args.config)
        if args.command == "run":
            return daemon.run(args.config, args.pid_file)
        return _demo(args.config, args.listen)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{len(exc.problems)} problem(s) found; nothing was started.", file=sys.stderr)
        return EXIT_CONFIG
    except StartupError as exc:
        print(f"lbproxy: {exc}", file=sys.stderr)
        return EXIT_STARTUP


def _check(path: str) -> int:
    config = load_config(path)
    table = build_reachability(config)
    print(
        f"{path}: ok: {len(config.apis)} API(s), {len(config.authorizations)} "
        "authorization(s). Reachable upstreams (nothing else is):"
    )
    print(format_table(config, table))
    return EXIT_OK


def _sign(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.sign_parser
    secret = args.secret
    if args.secret_env is not None:
        secret = os.environ.get(args.secret_env)
        if not secret:
            parser.error(f"--secret-env: the environment variable {args.secret_env} is not set")
    headers: list[tuple[str, str]] = []
    for text in args.headers:
        name, colon, value = text.partition(":")
        name, value = name.strip(), value.strip()
        if not colon or not name or " " in name or not value:
            parser.error(f"-H {text!r}: expected 'Name: value' with a non-empty value")
        headers.append((name, value))
    names = {name.lower() for name, _ in headers}
    if "accept" not in names:
        headers.append(("Accept", "*/*"))
    if args.data is not None and "content-type" not in names:
        headers.append(("Content-Type", "application/x-www-form-urlencoded"))
    method = args.method or ("GET" if args.data is None else "POST")
    body = b"" if args.data is None else args.data.encode()
    try:
        added = sign(method, args.url, headers, body, key=args.key, secret=secret, now=time.time())
    except ValueError as exc:
        parser.error(str(exc))
    for name, value in [*headers, *added]:
        print(f"{name}: {value}")
    return EXIT_OK


def _serve(main_coro: Callable[[], Coroutine[Any, Any, None]]) -> int:
    try:
        import uvloop
    except ImportError:  # e.g. Windows: the default loop works, only slower
        asyncio.run(main_coro())
    else:
        uvloop.run(main_coro())
    return EXIT_OK


async def _until_signalled() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(sig)


def _demo(path: str | None, listen: str | None) -> int:
    if path is not None:
        document = read_document(path)
        config = parse_config(document, path)
    else:
        document = tomllib.loads(demo_config_text())
        config = parse_config(document, "<built-in demo>")
    if listen is not None:
        try:
            address = parse_host_port(listen)
        except ValueError:
            print(
                f"lbproxy: --listen {listen!r} is not an address like 127.0.0.1:8088",
                file=sys.stderr,
            )
            return EXIT_USAGE
        config = _with_listen(config, address)
    return _serve(lambda: _run_demo(config, document))


def _with_listen(config: Config, address: tuple[str, int]) -> Config:
    from dataclasses import replace

    return replace(config, gateway=replace(config.gateway, listen=(address,)))


async def _run_demo(config: Config, document: Document) -> None:
    try:
        backends = await start_demo_backends(config)
    except OSError as exc:
        raise StartupError(f"cannot start the demo backends: {exc.strerror or exc}") from exc
    try:
        await _run_with_banner(config, document)
    finally:
        for server in backends:
            server.close()


async def _run_with_banner(config: Config, document: Document) -> None:
    runtime = Runtime(config, document)
    await runtime.start()
    print(_banner(config, runtime), flush=True)
    try:
        await _until_signalled()
    finally:
        await runtime.stop()
        print("demo stopped.", flush=True)


def _banner(config: Config, runtime: Runtime) -> str:
    host, port = runtime.addresses[0]
    lines = ["", f"lbproxy demo is up: the API front listens on http://{host}:{port}", ""]
    lines.append(format_table(config, build_reachability(config)))
    lines += ["", "Try:"]
    for api in config.apis:
        path = api.path.replace("/*", "/42").replace("{", "").replace("}", "")
        lines.append(f"  curl -s http://{host}:{port}{path}")
        if "POST" in api.methods:
            lines.append(f"  curl -s -X POST --data 'hello' http://{host}:{port}{path}")
    lines.append(
        f"  for i in $(seq 12); do curl -s http://{host}:{port}"
        f"{config.apis[0].path.replace('/*', '/1')} | grep -o 'i-[a-z0-9-]*'; done "
        "| sort | uniq -c"
        if config.apis
        else ""
    )
    for lb in config.load_balancers:
        for listener in lb.listeners:
            lines.append(
                f"  curl -s http://{lb.ip}:{listener.port}/any/path   "
                f"# the internal load balancer {lb.id} itself"
            )
    lines.append(f"  curl -s -i http://{host}:{port}/nowhere    # 404 with a JSON reason")
    if runtime.admin is not None and runtime.admin.address is not None:
        admin_host, admin_port = runtime.admin.address
        admin = f"http://{admin_host}:{admin_port}"
        lines += [
            f"  curl -s {admin}/metrics | grep '^lbproxy_requests_total'   # Prometheus metrics",
            f"  open {admin}/status.html in a browser: servers, health, weights",
        ]
    lines += ["", "Press Ctrl-C to stop."]
    return "\n".join(lines)
