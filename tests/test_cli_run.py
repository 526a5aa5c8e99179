"""`lbproxy run` and `lbproxy demo` as an operator runs them: real processes, real ports."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.harness import free_port

EXAMPLES = Path(__file__).parent.parent / "examples"


def lbproxy(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "lbproxy", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_listening(port: int, proc: subprocess.Popen[str]) -> None:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
    raise AssertionError("not listening")


def test_run_exits_3_when_the_port_is_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        text = (EXAMPLES / "demo.toml").read_text()
        config = tmp_path / "c.toml"
        config.write_text(text.replace("127.0.0.1:8080", f"127.0.0.1:{port}"))
        proc = lbproxy("run", "-c", str(config))
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 3
    assert f"cannot listen on 127.0.0.1:{port}: the port is already in use" in err


def test_demo_serves_the_weighted_backends_and_stops_on_sigint() -> None:
    port = free_port()
    proc = lbproxy("demo", "--listen", f"127.0.0.1:{port}")
    try:
        wait_listening(port, proc)
        seen = []
        for _ in range(12):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/items/1", timeout=5) as r:
                seen.append(json.loads(r.read())["instance"])
        # weights 3:2:1 over 12 requests
        assert sorted(seen.count(i) for i in ("i-web-1", "i-web-2", "i-web-3")) == [2, 4, 6]
        assert seen.count("i-web-1") == 6
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0
    assert f"curl -s http://127.0.0.1:{port}/items/42" in out
    assert "demo stopped." in out


def test_examples_pass_check() -> None:
    for example in sorted(EXAMPLES.glob("*.toml")):
        result = subprocess.run(
            [sys.executable, "-m", "lbproxy", "check", "-c", str(example)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, (example, result.stderr)


def test_built_in_demo_is_examples_demo() -> None:
    built_in = Path(__file__).parent.parent / "lbproxy" / "demo.toml"
    assert built_in.read_text() == (EXAMPLES / "demo.toml").read_text()
