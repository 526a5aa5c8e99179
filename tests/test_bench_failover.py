"""bench/failover.py and bench/reload.py run for a few seconds, so they cannot rot: a server
killed and restarted under load, or reloads under load, cost no failed request."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.skipif(shutil.which("nginx") is None, reason="needs nginx (apt-get install nginx)")
def test_failover_bench_kills_a_server_without_failed_requests() -> None:
    result = subprocess.run(
        [sys.executable, "failover.py", "--seconds", "4.5", "--connections", "4"],
        cwd=BENCH,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert ", failed: 0 {200: " in result.stdout, result.stdout
    assert "i-b:18111 ejected" in result.stdout or "i-b:18111 down" in result.stdout
    assert "back in rotation" in result.stdout


@pytest.mark.skipif(shutil.which("nginx") is None, reason="needs nginx (apt-get install nginx)")
@pytest.mark.parametrize("kind", [[], ["--rebind"]], ids=["in-place", "new-runtime"])
def test_reload_bench_reloads_under_load_without_failed_requests(kind: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "reload.py", "--seconds", "3", "--connections", "4", *kind],
        cwd=BENCH,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "failed requests: 0 {}" in result.stdout, result.stdout
    assert " 0 refused" in result.stdout and "worker reloads logged" in result.stdout
