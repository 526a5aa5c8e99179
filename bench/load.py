"""Locust against ``lbproxy demo`` for a bounded time: the demo is started, locust runs headless
(bench/locustfile.py: every answer checked), the demo is stopped, and locust's CSV files and
HTML report are left under --out.

Run: make load, or python bench/load.py [--users 20] [--run-time 30s] [--out bench/results/load]

The demo listens on 127.0.0.1:8080 (--listen to move it) with its backends on 127.0.0.11-13:9001
and its admin listener on 127.0.0.1:9901; --config runs another demo configuration (the test
moves every port so that it can run beside anything). All traffic stays on loopback. Exits with
locust's status: 0 when every request succeeded and every answer was right.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

from benchkit import BenchError, Children, wait_until_accepting

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
LOCUST_SLACK_SECONDS = 60
EXIT_MISSING_LOCUST = 2


def run_time_seconds(text: str) -> int:
    """locust's --run-time (``30s``, ``2m``, ``1h30m``, or plain seconds) in seconds."""
    if text.isdigit():
        return int(text)
    total, number = 0, ""
    for char in text:
        if char.isdigit():
            number += char
        elif char in "hms" and number:
            total += int(number) * {"h": 3600, "m": 60, "s": 1}[char]
            number = ""
        else:
            raise argparse.ArgumentTypeError(f"not a locust run time: {text!r}")
    if number or not total:
        raise argparse.ArgumentTypeError(f"not a locust run time: {text!r}")
    return total


def locust_argv(args: argparse.Namespace, host: str) -> list[str]:
    stem = args.out / "locust"
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        f"http://{host}",
        "--users",
        str(args.users),
        "--spawn-rate",
        str(args.spawn_rate or args.users),
        "--run-time",
        args.run_time,
        "--stop-timeout",
        "5",
        "--only-summary",
        "--csv",
        str(stem),
        "--html",
        str(stem.with_suffix(".html")),
        "--loglevel",
        "WARNING",
    ]


def run(args: argparse.Namespace, children: Children) -> int:
    demo_argv = [sys.executable, "-m", "lbproxy", "demo", "--listen", args.listen]
    if args.config is not None:
        demo_argv += ["-c", str(args.config)]
    demo = children.start("demo", demo_argv, None)
    host, _, port = args.listen.rpartition(":")
    wait_until_accepting(demo, host, int(port))
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"lbproxy demo up on http://{args.listen}; locust for {args.run_time}", flush=True)
    done = subprocess.run(
        locust_argv(args, args.listen),
        cwd=REPO_ROOT,
        timeout=run_time_seconds(args.run_time) + LOCUST_SLACK_SECONDS,
        check=False,
    )
    if not demo.is_running():
        raise BenchError(f"the demo died during the run\n{demo.output_tail()}")
    written = sorted(str(p) for p in args.out.glob("locust*"))
    print(f"locust exited with status {done.returncode}; wrote {', '.join(written)}")
    return done.returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--users", type=int, default=20, help="concurrent locust users")
    parser.add_argument("--spawn-rate", type=float, help="users started per second (all at once)")
    parser.add_argument("--run-time", default="30s", help="how long locust runs: 30s, 2m, ...")
    parser.add_argument("--listen", default="127.0.0.1:8080", help="the demo's API front")
    parser.add_argument("--config", type=Path, help="a demo configuration instead of the built-in")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "load")
    args = parser.parse_args(argv)
    try:
        run_time_seconds(args.run_time)
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    if args.users < 1:
        parser.error("--users must be at least 1")
    if importlib.util.find_spec("locust") is None:
        print("locust is not importable: pip install -e '.[bench]'", file=sys.stderr)
        return EXIT_MISSING_LOCUST
    args.out = args.out.resolve()
    with tempfile.TemporaryDirectory(prefix="lbproxy-load-") as tmp:
        children = Children(Path(tmp), cwd=REPO_ROOT)
        try:
            return run(args, children)
        except BenchError as exc:
            print(exc, file=sys.stderr)
            return 1
        except subprocess.TimeoutExpired:
            print("locust did not stop in time", file=sys.stderr)
            return 1
        finally:
            children.stop_all()


if __name__ == "__main__":
    sys.exit(main())
