"""``lbproxy check`` and ``lbproxy run`` as an operator runs them: exit codes and output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_config import GATEWAY_KEYS

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = "examples/demo.toml"
BAD_PORT = "authorization[0].port: port 81 is not a listener of `lb-web`, which listens on 8081"


def lbproxy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lbproxy", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def bad_config(tmp_path: Path) -> str:
    """The example with one mistake: the authorization names a port that is no listener."""
    text = (ROOT / EXAMPLE).read_text(encoding="utf-8")
    text = text.replace("port = 8081\nhost", "port = 81\nhost")
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_check_prints_the_reachability_table() -> None:
    result = lbproxy("check", "-c", EXAMPLE)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0] == (
        f"{EXAMPLE}: ok: 1 API(s), 1 authorization(s). Reachable upstreams (nothing else is):"
    )
    assert lines[1].split() == ["API", "METHODS", "PATH", "AUTHORIZATION", "TARGET", "REACHES"]
    assert lines[2].split(maxsplit=4) == [
        "items",
        "GET,HEAD,POST",
        "/items/*",
        "web-lb-8081",
        "load balancer lb-web:8081  127.0.0.11:9001, 127.0.0.12:9001, 127.0.0.13:9001",
    ]
    assert lines[3] == (
        "load balancer listener lb-web:8081 -> 127.0.0.11:9001 (w3, i-web-1), "
        "127.0.0.12:9001 (w2, i-web-2), 127.0.0.13:9001 (w1, i-web-3)"
    )
    assert lines[4] == (
        "backends see connections from the gateway host's address toward each backend "
        "(no egress_source set)"
    )
    assert len(lines) == 5


@pytest.mark.parametrize("command", ["check", "run"])
def test_bad_config_exits_78_with_every_problem(command: str, bad_config: str) -> None:
    result = lbproxy(command, "-c", bad_config)
    assert result.returncode == 78
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{bad_config}: {BAD_PORT}",
        "1 problem(s) found; nothing was started.",
    ]


def test_several_problems_are_all_reported(tmp_path: Path) -> None:
    text = (ROOT / EXAMPLE).read_text(encoding="utf-8")
    text = text.replace('http_parser = "httptools"', 'http_parser = "httptools"\nwrokers = 4')
    text = text.replace("port = 8081\nhost", 'port = "8081"\nhost')
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    result = lbproxy("check", "-c", str(path))
    assert result.returncode == 78
    assert result.stderr.splitlines() == [
        f"{path}: gateway.wrokers: unknown key; known keys here: {GATEWAY_KEYS}",
        f"{path}: authorization[0].port: expected an integer, got a string ('8081')",
        "2 problem(s) found; nothing was started.",
    ]


def test_toml_syntax_error_exits_78(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("[gateway\n", encoding="utf-8")
    result = lbproxy("check", "-c", str(path))
    assert result.returncode == 78
    first, last = result.stderr.splitlines()
    assert first.startswith(f"{path}: (syntax): invalid TOML: ")
    assert last == "1 problem(s) found; nothing was started."


def test_missing_file_exits_78(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    result = lbproxy("check", "-c", str(path))
    assert result.returncode == 78
    assert result.stderr.splitlines() == [
        f"{path}: (file): cannot read: No such file or directory",
        "1 problem(s) found; nothing was started.",
    ]


@pytest.mark.parametrize(
    "args",
    [(), ("check",), ("frobnicate",), ("check", "-c"), ("run",), ("--log-level", "loud", "check")],
    ids=[
        "no-subcommand",
        "check-without-config",
        "unknown-subcommand",
        "c-without-value",
        "run-without-config",
        "bad-log-level",
    ],
)
def test_usage_error_exits_2(args: tuple[str, ...]) -> None:
    result = lbproxy(*args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("usage: lbproxy")


def test_check_prints_the_egress_source_and_http_backends() -> None:
    result = lbproxy("check", "-c", "examples/access.toml")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    status = ["status", "GET", "/status", "-", "url", "http://127.0.0.100:9100/v1"]
    assert lines[4].split() == [*status, "127.0.0.100:9100"]
    assert lines[-1] == (
        "backends see connections from 127.0.0.1 (gateway.egress_source); allow it in their "
        "security groups"
    )


def test_check_refuses_an_http_backend_with_a_private_address(tmp_path: Path) -> None:
    text = (ROOT / "examples" / "access.toml").read_text(encoding="utf-8")
    path = tmp_path / "private.toml"
    path.write_text(text.replace("http://127.0.0.100:9100/v1", "http://10.0.0.7"), "utf-8")
    result = lbproxy("check", "-c", str(path))
    assert result.returncode == 78
    assert result.stderr.splitlines() == [
        f"{path}: api[2].backend.url: 10.0.0.7 is a private address; http/https backends reach "
        "public addresses only (a lab may list the range in gateway.http_backend_allow)",
        "1 problem(s) found; nothing was started.",
    ]
