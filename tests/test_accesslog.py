"""The JSON access log: records parsed back field by field, off/stdout/file, reopening after
rotation, the queue bound and its drop counter, a writer stuck on a pipe nobody reads."""

from __future__ import annotations

import calendar
import contextlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lbproxy import accesslog
from lbproxy.accesslog import AccessLog, open_access_log
from lbproxy.errors import StartupError

FIELDS = [
    "time",
    "client",
    "method",
    "target",
    "status",
    "bytes_in",
    "bytes_out",
    "duration",
    "api",
    "upstream",
    "upstream_status",
    "upstream_connect_time",
    "upstream_response_time",
    "retries",
    "request_id",
    "error",
]
RFC3339_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")

DEFAULTS: dict[str, Any] = {
    "client": b"127.0.0.1",
    "method": b"GET",
    "target": b"/items/1?x=2",
    "status": 200,
    "bytes_in": 120,
    "bytes_out": 3456,
    "started": 100.0,
    "now": 100.25,
    "api": "items",
    "upstream": "127.0.0.11:9001",
    "upstream_status": 200,
    "connect_time": 0.0005,
    "response_time": 0.2,
    "retries": 1,
    "request_id": b"abc-1",
    "error": None,
}


def send(log: AccessLog, **values: Any) -> None:
    """One ``log`` call, positional as the relay makes it, from DEFAULTS and ``values``."""
    log.log(*{**DEFAULTS, **values}.values())


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="ascii").splitlines()]


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A named pipe and its read end, opened (so writers do not wait) but never read."""
    path = tmp_path / "pipe"
    os.mkfifo(path)
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    yield path, reader
    with contextlib.suppress(OSError):  # a test may have closed it already
        os.close(reader)


def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


# --- the record --------------------------------------------------------------------------------


def test_record_holds_every_field(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(str(path))
    before = time.time()
    send(log)
    assert log.close()
    after = time.time()
    (record,) = records(path)
    assert list(record) == FIELDS
    stamp = record.pop("time")
    assert RFC3339_MS.fullmatch(stamp)
    assert int(before) <= calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")) <= after
    assert record == {
        "client": "127.0.0.1",
        "method": "GET",
        "target": "/items/1?x=2",
        "status": 200,
        "bytes_in": 120,
        "bytes_out": 3456,
        "duration": 0.25,
        "api": "items",
        "upstream": "127.0.0.11:9001",
        "upstream_status": 200,
        "upstream_connect_time": 0.0005,
        "upstream_response_time": 0.2,
        "retries": 1,
        "request_id": "abc-1",
        "error": None,
    }


def test_a_gateway_answer_has_nulls_where_no_upstream_was_reached(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(str(path))
    send(log, client="::1", method=b"POST", target=b"/nowhere", status=404, api=None)
    send(log, upstream=None, upstream_status=None, connect_time=None, response_time=None)
    send(log, status=502, error="upstream_connect_failed", retries=0)
    assert log.close()
    no_route, no_upstream, failed = records(path)
    assert (no_route["client"], no_route["method"], no_route["api"]) == ("::1", "POST", None)
    assert no_route["status"] == 404
    assert [no_upstream[k] for k in FIELDS[9:13]] == [None, None, None, None]
    assert (failed["status"], failed["error"], failed["retries"]) == (
        502,
        "upstream_connect_failed",
        0,
    )


def test_time_is_rfc3339_utc_with_milliseconds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(str(path))
    monkeypatch.setattr(accesslog.time, "time", lambda: 1714564800.25)
    send(log)
    monkeypatch.setattr(accesslog.time, "time", lambda: 1714564801.0)
    send(log)
    monkeypatch.undo()
    assert log.close()
    assert [r["time"] for r in records(path)] == [
        "2024-05-01T12:00:00.250Z",
        "2024-05-01T12:00:01.000Z",
    ]


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (b"/caf\xc3\xa9", "/caf\u00e9"),
        (b"/\xff\xfe?q=\x00", "/\\xff\\xfe?q=\x00"),
        (b'/"quoted"\\back\r\n', '/"quoted"\\back\r\n'),
        (b"/" + b"a" * 2047, "/" + "a" * 2047),
        (b"/" + b"a" * 5000, "/" + "a" * 2047 + "..."),
    ],
    ids=["utf8", "not-utf8", "json-escapes", "at-the-limit", "cut"],
)
def test_targets_are_escaped_and_bounded(tmp_path: Path, target: bytes, expected: str) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(str(path))
    send(log, target=target, method=b"G\xe9T", request_id=b"r" * 300)
    assert log.close()
    (record,) = records(path)
    assert record["target"] == expected
    assert record["method"] == "G\\xe9T"
    assert record["request_id"] == "r" * 256 + "..."
    assert path.read_bytes().isascii()


def test_a_record_that_cannot_be_formatted_is_counted_and_the_rest_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(str(path))
    broken: Any = None
    send(log, request_id=b"1")
    send(log, status=broken)
    send(log, request_id=b"3")
    assert log.close()
    assert [r["request_id"] for r in records(path)] == ["1", "3"]
    assert log.write_failures == 1
    assert "access log: a record could not be formatted" in caplog.text


# --- destinations ------------------------------------------------------------------------------


def test_off_is_no_log_at_all() -> None:
    assert open_access_log("off") is None


def test_stdout(capfd: pytest.CaptureFixture[str]) -> None:
    log = open_access_log("stdout")
    assert log is not None
    send(log, request_id=b"to-stdout")
    assert log.close()
    out = capfd.readouterr().out
    assert [json.loads(line)["request_id"] for line in out.splitlines()] == ["to-stdout"]
    os.fstat(1)  # closing the log left the process's stdout open


def test_file_is_created_then_appended_to(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    for request_id in (b"first", b"second"):
        log = open_access_log(str(path))
        assert log is not None
        send(log, request_id=request_id)
        assert log.close()
    assert [r["request_id"] for r in records(path)] == ["first", "second"]


def test_a_missing_directory_is_said_plainly(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "access.log"
    with pytest.raises(StartupError) as caught:
        open_access_log(str(path))
    assert str(caught.value) == (
        f"access log {path}: directory {tmp_path / 'logs'} does not exist; create it first"
    )


def test_a_directory_cannot_be_the_log(tmp_path: Path) -> None:
    with pytest.raises(StartupError) as caught:
        open_access_log(str(tmp_path))
    assert str(caught.value) == f"access log {tmp_path}: cannot open: Is a directory"


def test_records_never_go_through_logging(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    log = AccessLog(str(tmp_path / "access.log"))
    send(log)
    assert log.close()
    assert caplog.records == []


# --- rotation ----------------------------------------------------------------------------------


def test_reopen_after_rotation_writes_to_the_new_file(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    rotated = tmp_path / "access.log.1"
    log = AccessLog(str(path), interval=60.0)
    send(log, request_id=b"before")
    path.rename(rotated)
    send(log, request_id=b"still-before")
    log.reopen()
    send(log, request_id=b"after")
    assert log.close()
    assert [r["request_id"] for r in records(rotated)] == ["before", "still-before"]
    assert [r["request_id"] for r in records(path)] == ["after"]


def test_a_failed_reopen_keeps_writing_to_the_old_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "logs").mkdir()
    path = tmp_path / "logs" / "access.log"
    log = AccessLog(str(path))
    (tmp_path / "logs").rename(tmp_path / "moved")
    log.reopen()
    send(log, request_id=b"kept")
    assert log.close()
    assert [r["request_id"] for r in records(tmp_path / "moved" / "access.log")] == ["kept"]
    assert "does not exist; create it first; still writing to the file opened before" in (
        caplog.text
    )


def test_reopen_on_stdout_changes_nothing(capfd: pytest.CaptureFixture[str]) -> None:
    log = AccessLog("stdout")
    send(log, request_id=b"a")
    log.reopen()
    send(log, request_id=b"b")
    assert log.close()
    lines = capfd.readouterr().out.splitlines()
    assert [json.loads(line)["request_id"] for line in lines] == ["a", "b"]


# --- never blocking ----------------------------------------------------------------------------


def test_a_stuck_writer_blocks_nothing_and_full_queue_drops_are_counted(
    fifo: tuple[Path, int], caplog: pytest.LogCaptureFixture
) -> None:
    path, reader = fifo
    log = AccessLog(str(path), max_queued=100, interval=0.01)
    big = b"/" + b"x" * 2000
    # 100 records of 2 KiB (as many as the queue takes): more than a pipe holds, so the writer
    # takes them all and blocks in write().
    for i in range(100):
        send(log, target=big, request_id=b"%d" % i)
    wait_until(lambda: len(log._queue) == 0)
    slowest = 0.0
    for i in range(100, 250):
        start = time.perf_counter()
        send(log, target=big, request_id=b"%d" % i)
        slowest = max(slowest, time.perf_counter() - start)
    # Generous for a loaded machine; a call waiting on the writer would never return.
    assert slowest < 0.05
    assert (len(log._queue), log.dropped) == (100, 50)
    assert repr(log) == f"<AccessLog {path} [100 queued, 50 dropped]>"

    received = bytearray()

    def read_all() -> None:
        os.set_blocking(reader, True)
        while chunk := os.read(reader, 65536):
            received.extend(chunk)

    draining = threading.Thread(target=read_all)
    draining.start()
    assert log.close()
    draining.join(5)
    ids = [json.loads(line)["request_id"] for line in received.decode("ascii").splitlines()]
    assert ids == [str(i) for i in range(200)]
    assert f"access log {path}: 50 record(s) dropped: the writer cannot keep up" in caplog.text


def test_close_gives_up_on_a_writer_stuck_for_good(fifo: tuple[Path, int]) -> None:
    path, _ = fifo
    log = AccessLog(str(path), interval=0.01)
    for _ in range(100):
        send(log, target=b"/" + b"x" * 2000)
    start = time.monotonic()
    assert log.close(timeout=0.2) is False
    assert time.monotonic() - start < 2
    assert not log.is_closed()


def test_a_failed_write_is_counted_and_warned_about(
    fifo: tuple[Path, int], caplog: pytest.LogCaptureFixture
) -> None:
    path, reader = fifo
    log = AccessLog(str(path), interval=0.01)
    os.close(reader)  # nobody will ever read: writes fail with EPIPE
    send(log)
    send(log)
    assert log.close()
    assert log.write_failures == 2
    assert f"access log {path}: write failed: [Errno 32] Broken pipe" in caplog.text


# --- close -------------------------------------------------------------------------------------


def test_close_writes_everything_queued_in_order(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(str(path), max_queued=10_000, interval=60.0)
    for i in range(5000):
        send(log, request_id=b"%d" % i)
    assert log.close()
    assert [r["request_id"] for r in records(path)] == [str(i) for i in range(5000)]
    assert (log.dropped, log.write_failures) == (0, 0)


def test_records_after_close_are_dropped(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    log = AccessLog(str(path))
    assert repr(log) == f"<AccessLog {path} [0 queued, 0 dropped]>"
    assert log.close()
    assert log.close()
    send(log)
    assert log.is_closed()
    assert log.dropped == 1
    assert repr(log) == f"<AccessLog {path} [closed, 1 dropped]>"
    assert path.read_text(encoding="ascii") == ""
