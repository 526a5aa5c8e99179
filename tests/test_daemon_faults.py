"""The daemon when things go wrong: a worker that cannot start, a supervisor killed, signals
at awkward moments, reloads in a burst, a second instance, workers saving state at once."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from lbproxy.state import read_weights, save_weight
from tests.harness import Backend, free_port
from tests.test_daemon import (  # noqa: F401 -- daemons: the fixture
    Daemon,
    _children,
    config_text,
    daemons,
    get,
    start,
    wait_until_serving,
)


def wait_for(condition: object, daemon: Daemon, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, daemon.log()
        time.sleep(0.05)


def workers_config(backends: list[Backend], tmp_path: Path, port: int, extra: str = "") -> Path:
    config = tmp_path / "gateway.toml"
    config.write_text(
        config_text(backends, port).replace("[gateway]\n", f"[gateway]\nworkers = 2\n{extra}")
    )
    return config


def test_workers_that_cannot_start_stop_the_supervisor(
    backends: list[Backend], tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        daemon = Daemon(workers_config(backends, tmp_path, port))
        assert daemon.process.wait(20) == 3
    assert "the port is already in use" in daemon.log()
    assert "could not start; stopping the others" in daemon.log()


def test_a_second_instance_on_the_same_addresses_fails_to_start(
    backends: list[Backend],
    tmp_path: Path,
    daemons: list[Daemon],  # noqa: F811
) -> None:
    port, config, first = start(backends, tmp_path, daemons)
    second = Daemon(config)
    assert second.process.wait(20) == 3
    assert f"cannot listen on 127.0.0.1:{port}: the port is already in use" in second.log()
    assert get(port) == 200 and first.process.poll() is None


def test_workers_end_when_the_supervisor_is_killed(backends: list[Backend], tmp_path: Path) -> None:
    port = free_port()
    daemon = Daemon(workers_config(backends, tmp_path, port))
    try:
        wait_until_serving(port, daemon)
        daemon.wait_for_log("supervisor")
        workers = _children(daemon.process.pid)
        assert len(workers) == 2
        daemon.process.kill()
        daemon.process.wait(10)
        deadline = time.monotonic() + 15
        while any(Path(f"/proc/{pid}").exists() and _alive(pid) for pid in workers):
            assert time.monotonic() < deadline, daemon.log()
            time.sleep(0.05)
    finally:
        for pid in _children(daemon.process.pid):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_sighup_as_workers_start_kills_none(
    backends: list[Backend],
    tmp_path: Path,
    daemons: list[Daemon],  # noqa: F811
) -> None:
    port = free_port()
    daemon = Daemon(workers_config(backends, tmp_path, port))
    daemons.append(daemon)
    daemon.wait_for_log("supervisor")
    daemon.signal(signal.SIGHUP)  # the workers are still loading their configuration
    wait_until_serving(port, daemon)
    time.sleep(0.5)
    assert "killed by SIGHUP" not in daemon.log()
    assert len(_children(daemon.process.pid)) == 2


def test_request_ids_differ_across_workers(
    backends: list[Backend],
    tmp_path: Path,
    daemons: list[Daemon],  # noqa: F811
) -> None:
    port, log = free_port(), tmp_path / "access.log"
    daemon = Daemon(workers_config(backends, tmp_path, port, f'access_log = "{log}"\n'))
    daemons.append(daemon)
    wait_until_serving(port, daemon)
    for _ in range(39):
        assert get(port) == 200
    deadline = time.monotonic() + 10
    while len(log.read_text().splitlines()) < 40 if log.exists() else True:
        assert time.monotonic() < deadline, daemon.log()
        time.sleep(0.05)
    ids = [json.loads(line)["request_id"] for line in log.read_text().splitlines()]
    assert len(ids) == 40 and len(set(ids)) == 40


def test_sighups_in_a_burst_reload_one_after_another(
    backends: list[Backend],
    tmp_path: Path,
    daemons: list[Daemon],  # noqa: F811
) -> None:
    """Each reload here starts a new runtime (one more address); two at once would both
    replace the first and leak one of theirs."""
    port, config, daemon = start(backends, tmp_path, daemons)
    pid = daemon.process.pid
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    extra = free_port()
    one = f'listen = ["127.0.0.1:{port}"]'
    config.write_text(
        config.read_text().replace(one, f'listen = ["127.0.0.1:{port}", "127.0.0.1:{extra}"]')
    )
    daemon.signal(signal.SIGHUP)
    time.sleep(0.005)  # (two at once would be one: the kernel does not queue a signal twice)
    daemon.signal(signal.SIGHUP)
    wait_for(lambda: "reloaded" in daemon.log(), daemon)
    # The original runtime drained and closed (its pooled upstream connection too): one
    # listener more and one connection less than at start, not a runtime more.
    wait_for(lambda: len(os.listdir(f"/proc/{pid}/fd")) <= fds, daemon)
    assert "refused" not in daemon.log()
    assert get(port) == 200 and get(extra) == 200


def _drain_many(path: str, worker: int) -> None:
    for i in range(30):
        save_weight(path, "lb:80", f"w{worker}-{i}:80", 0)


def test_workers_saving_weights_at_once_lose_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "state.json")
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_drain_many, args=(path, n)) for n in range(2)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
        assert writer.exitcode == 0
    assert len(read_weights(path)["lb:80"]) == 60


EXTRA_API = """
[[api]]
name = "extra"
methods = ["GET"]
path = "/extra/*"
backend = { type = "vpc", authorization = "to-first", timeout = 5 }
"""

# A process that reads its configuration, is sent SIGHUP for a newer file before it serves (as a
# worker can be, while it starts), then serves what it read.
SIGHUP_WHILE_STARTING = """
import logging, os, signal, sys
from pathlib import Path
from lbproxy import daemon

logging.basicConfig(level=logging.INFO)

path, newer = sys.argv[1], sys.argv[2]
config, document = daemon.load_with_state(path)
daemon.defer_signals()
Path(path).write_text(Path(newer).read_text())
os.kill(os.getpid(), signal.SIGHUP)
daemon._serve_here(path, config, document, reuse_port=False, alone=False)
"""


def test_a_sighup_while_starting_is_carried_out_once_serving(
    backends: list[Backend], tmp_path: Path
) -> None:
    port = free_port()
    config, newer = tmp_path / "gateway.toml", tmp_path / "newer.toml"
    config.write_text(config_text(backends, port))
    newer.write_text(config_text(backends, port, extra=EXTRA_API))
    stderr = tmp_path / "stderr"
    with stderr.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-c", SIGHUP_WHILE_STARTING, str(config), str(newer)],
            cwd=Path(__file__).resolve().parent.parent,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 15
        while True:
            assert process.poll() is None, stderr.read_text()
            with contextlib.suppress(OSError):
                if get(port, "/extra/x") == 200:
                    break
            assert time.monotonic() < deadline, stderr.read_text()
            time.sleep(0.05)
        assert "reloaded" in stderr.read_text()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0, stderr.read_text()
