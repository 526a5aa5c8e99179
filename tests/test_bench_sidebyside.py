"""bench/sidebyside.py: its plan (targets, worker counts, loads, pinning) resolved from the
command line, and one short real run against nginx, HAProxy and lbproxy under every load, whose
report must be well formed. Speed is never asserted: only that every figure is there and sane."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
sys.path.append(str(BENCH))

from benchkit import BenchError  # noqa: E402
from sidebyside import parse_args  # noqa: E402
from sidebyside_plan import Pinning, resolve_loads, resolve_targets  # noqa: E402


@pytest.mark.parametrize(
    ("names", "engines", "workers", "expected"),
    [
        (["direct", "nginx"], ["httptools"], (1,), ["direct", "nginx"]),
        (
            ["nginx", "haproxy", "lbproxy"],
            ["httptools", "h11"],
            (1,),
            ["nginx", "haproxy", "lbproxy-httptools", "lbproxy-h11"],
        ),
        (
            ["lbproxy"],
            ["httptools"],
            (1, 2),
            ["lbproxy-httptools", "lbproxy-httptools-2w"],
        ),
        (["lbproxy-h11"], ["httptools"], (2,), ["lbproxy-h11-2w"]),
        (["lbproxy-httptools-2w", "lbproxy-httptools-2w"], ["h11"], (2,), ["lbproxy-httptools-2w"]),
    ],
)
def test_targets_expand_per_engine_and_worker_count(
    names: list[str], engines: list[str], workers: tuple[int, ...], expected: list[str]
) -> None:
    targets = resolve_targets(names, engines, workers)
    assert [t.name for t in targets] == expected
    assert all(t.workers == (2 if t.name.endswith("-2w") else 1) for t in targets)


@pytest.mark.parametrize("names", [["apache"], [], ["lbproxy-httptools-3w"]])
def test_unknown_or_no_targets_are_refused(names: list[str]) -> None:
    with pytest.raises(BenchError):
        resolve_targets(names, ["httptools"], (1, 2))


def test_loads_take_the_connections_except_single() -> None:
    loads = {load.name: load for load in resolve_loads(["single", "small", "large"], 20)}
    assert [loads[n].connections for n in ("single", "small", "large")] == [1, 20, 20]
    assert len(loads["large"].body) == 64 * 1024 and loads["large"].path == "/64k"
    assert loads["small"].describe() == "20 connections, 12-byte bodies"
    assert loads["large"].describe() == "20 connections, 64 KiB bodies"
    assert loads["single"].describe() == "1 connection, 12-byte bodies"
    with pytest.raises(BenchError):
        resolve_loads(["huge"], 50)


@pytest.mark.parametrize(
    ("pinning", "workers", "expected"),
    [
        (Pinning(frozenset({0}), frozenset({1})), 1, frozenset({0})),
        (Pinning(frozenset({0}), frozenset({1})), 2, None),
        (Pinning(frozenset({0}), frozenset({1}), (2, 3)), 2, frozenset({0, 2})),
        (Pinning(frozenset({0}), frozenset({1}), (2, 3)), 3, frozenset({0, 2, 3})),
        (Pinning(None, None), 2, None),
    ],
)
def test_extra_workers_get_spare_cpus_or_no_pinning(
    pinning: Pinning, workers: int, expected: frozenset[int] | None
) -> None:
    assert pinning.proxy_cpus_for(workers) == expected


def test_default_arguments_run_every_load_and_haproxy() -> None:
    args = parse_args([])
    assert args.loads == "single,small,large"
    assert "haproxy" in args.targets.split(",")
    assert args.workers == (1,)
    assert parse_args(["--workers", "1,2,2"]).workers == (1, 2)


@pytest.mark.parametrize("bad", [["--workers", "0"], ["--workers", "two"], ["--warmup", "-1"]])
def test_bad_arguments_exit_with_usage(bad: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        parse_args(bad)
    assert exc.value.code == 2


def _busy(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


TOOLS = [tool for tool in ("nginx", "wrk", "haproxy") if shutil.which(tool) is None]


@pytest.mark.skipif(bool(TOOLS), reason=f"needs {', '.join(TOOLS)} (make bench-deps)")
def test_a_short_run_reports_every_load_and_target(tmp_path: Path) -> None:
    if any(_busy(port) for port in (18080, 18081, 18082, 18083, 18090)):
        pytest.skip("the side-by-side ports are busy: another benchmark is running")
    targets = ["direct", "nginx", "haproxy", "lbproxy-httptools"]
    argv = ["--duration", "1", "--warmup", "0", "--rounds", "1", "--connections", "8"]
    argv += ["--targets", ",".join(targets), "--out", str(tmp_path)]
    result = subprocess.run(
        [sys.executable, "sidebyside.py", *argv],
        cwd=BENCH,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (report,) = tmp_path.glob("sidebyside-*.json")
    document = json.loads(report.read_text())
    assert list(document["summary"]) == ["single", "small", "large"]
    assert document["meta"]["haproxy"].startswith("HAProxy version")
    for load, summaries in document["summary"].items():
        assert [s["target"] for s in summaries] == targets, load
        for s in summaries:
            assert s["req_per_s"] > 0 and 0 < s["p50_ms"] <= s["p99_ms"], s
            assert s["non_2xx_3xx"] == 0 and s["socket_errors"] == 0, s
            if s["target"] != "direct":
                assert s["cpu_us_per_request"] > 0, s
        nginx = next(s for s in summaries if s["target"] == "nginx")
        assert nginx["vs_nginx"]["req_per_s"] == 1.0
    assert len(document["runs"]) == 3 * len(targets)
    markdown = report.with_suffix(".md").read_text()
    for title in ("1 connection, 12-byte", "8 connections, 12-byte", "8 connections, 64 KiB"):
        assert markdown.count(title) == 2, title  # the medians table and the rounds table
