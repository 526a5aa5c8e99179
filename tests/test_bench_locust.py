"""bench/load.py (locust against lbproxy demo, every answer checked) runs for a few seconds, so
it cannot rot. The demo's ports are all moved, so it runs beside anything else."""

from __future__ import annotations

import csv
import importlib.util
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lbproxy.demo import demo_config_text

BENCH = Path(__file__).resolve().parent.parent / "bench"


def free_port(ip: str) -> int:
    with socket.socket() as sock:
        sock.bind((ip, 0))
        return int(sock.getsockname()[1])


def moved_demo_config(path: Path) -> str:
    """The built-in demo with every port moved to a free one; the front address to use."""
    front = f"127.0.0.1:{free_port('127.0.0.1')}"
    text = demo_config_text()
    for old, new in {
        "127.0.0.1:8080": front,
        "127.0.0.1:9901": f"127.0.0.1:{free_port('127.0.0.1')}",
        "port = 9001": f"port = {free_port('127.0.0.11')}",
        "port = 8081": f"port = {free_port('127.0.0.10')}",
    }.items():
        assert old in text, old
        text = text.replace(old, new)
    path.write_text(text)
    return front


@pytest.mark.skipif(
    importlib.util.find_spec("locust") is None,
    reason="locust is not installed (pip install -e '.[dev]' brings it)",
)
def test_locust_against_the_demo_sees_only_right_answers(tmp_path: Path) -> None:
    config = tmp_path / "demo.toml"
    front = moved_demo_config(config)
    out = tmp_path / "load"
    argv = ["--run-time", "3s", "--users", "4", "--listen", front, "--config", str(config)]
    result = subprocess.run(
        [sys.executable, "load.py", *argv, "--out", str(out)],
        cwd=BENCH,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "answers by instance (" in result.stdout, result.stdout
    with (out / "locust_stats.csv").open() as stats:
        rows = {row["Name"]: row for row in csv.DictReader(stats)}
    assert set(rows) == {"GET /items/[id]", "POST /items/new", "Aggregated"}
    total = rows["Aggregated"]
    assert int(total["Request Count"]) > 0 and int(total["Failure Count"]) == 0, total
    assert float(total["Requests/s"]) > 0
    assert (out / "locust.html").read_text().lstrip().lower().startswith("<!doctype html")
