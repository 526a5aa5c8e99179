"""bench/idle_connections.py and bench/streaming.py, scaled down, so they cannot rot: they run,
every connection and byte is accounted for, and the memory they report is well formed and sane.
Their targets (150 MB for 10,000 idle connections, 32 MB of growth while streaming) are judged
by the scripts at full scale, never here."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
NUMBER = r"(\d+(?:\.\d+)?)"
needs_nginx = pytest.mark.skipif(
    shutil.which("nginx") is None, reason="needs nginx (apt-get install nginx)"
)


def run_script(*argv: str) -> str:
    result = subprocess.run(
        [sys.executable, *argv],
        cwd=BENCH,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def megabytes(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match is not None, f"{pattern!r} not in:\n{text}"
    value = float(match.group(1))
    assert 1 < value < 10_000, (pattern, value)  # an RSS in MB, not bytes or GB
    return value


@needs_nginx
def test_idle_connections_are_all_held_and_measured() -> None:
    out = run_script("idle_connections.py", "--connections", "300", "--hold", "0.5")
    assert "idle keep-alive connections: 300 of 300 opened" in out, out
    assert ", 0 failed []" in out, out
    before = megabytes(rf"lbproxy RSS before: {NUMBER} MB", out)
    held = megabytes(rf"lbproxy RSS with 300 idle connections held 0.5 s: {NUMBER} MB", out)
    assert held >= before * 0.9, out
    assert re.search(rf"target <= 150 MB with 10000 connections: {NUMBER} MB extrapolated", out)
    sampled = re.search(r"still answered after 0.5 s idle: (\d+)/(\d+) sampled", out)
    assert sampled is not None and sampled.group(1) == sampled.group(2) != "0", out


@needs_nginx
def test_streaming_moves_every_byte_both_ways() -> None:
    out = run_script("streaming.py", "--size-mib", "32")
    rows = re.findall(r"^\| (download|upload) \| (direct|lbproxy) \| 32 \| ([^|]+)\|", out, re.M)
    assert sorted((name, path) for name, path, _ in rows) == [
        ("download", "direct"),
        ("download", "lbproxy"),
        ("upload", "direct"),
        ("upload", "lbproxy"),
    ], out
    for name in ("download", "upload"):
        line = re.search(
            rf"^{name} through lbproxy: (\d+) MiB/s \({NUMBER}x direct\), "
            rf"RSS growth (-?\d+\.\d) MB: target <= 32 MB (met|NOT met)$",
            out,
            re.M,
        )
        assert line is not None, out
        assert int(line.group(1)) > 0 and float(line.group(2)) > 0, out
    megabytes(r"\| download \| lbproxy \| 32 \| [^|]+\| [^|]+\| [^|]+\| " + NUMBER, out)
