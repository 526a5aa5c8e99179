"""The JSON access log: one object per line per exchange, written by a thread of its own.

Theory of operation. ``AccessLog.log`` runs on the event loop at the end of each exchange: it
builds a tuple of the plain values it is given (a target is cut to a bounded length first, so a
queued record never pins a large buffer) and appends it to a bounded ``deque``; nothing else.
A writer thread wakes every ``interval`` seconds, or early once a batch has piled up, formats
every queued record as JSON (escaping, timestamps and the rest are its work, not the loop's) and
writes the batch with few ``write`` calls. A writer stuck on a slow disk or a full pipe cannot
block the loop: the queue fills, and further records are counted in ``dropped`` and reported
in the error log at most every ``WARN_EVERY`` seconds, never waited for.

``reopen`` and ``close`` are markers in the same queue, so every record logged before them is
written to the file they concern: after ``mv access.log access.log.1`` and SIGUSR1 the records
logged before the signal are in ``access.log.1``, later ones in a new ``access.log``.

The access log never goes through ``logging``: lbproxy's ``logging`` (errors, warnings,
transitions) is the error log, on stderr, and this module only uses it to say that records were
dropped or could not be written. A file is opened with ``O_APPEND`` and each batch written as
whole lines, so several worker processes can share one file without cutting each other's lines;
on a pipe (``stdout``) writes stay within ``PIPE_BUF`` bytes for the same reason.

Threads do not survive ``fork``: each worker process makes its own ``AccessLog``.
"""

from __future__ import annotations

import json.encoder
import logging
import os
import stat
import threading
import time
from collections import deque
from typing import Any

from lbproxy.errors import StartupError

log = logging.getLogger("lbproxy.accesslog")

OFF = "off"
STDOUT = "stdout"
# Bytes of a target (and of a request id) kept; a longer one ends with "..." in the record.
TARGET_LIMIT = 2048
REQUEST_ID_LIMIT = 256
MAX_QUEUED = 16384
WARN_EVERY = 10.0
_BATCH = 1024
_PIPE_BUF = 4096
_REOPEN: Any = object()
_CLOSE: Any = object()

_LINE = (
    '{"time":"%s","client":%s,"method":%s,"target":%s,"status":%d,"bytes_in":%d,'
    '"bytes_out":%d,"duration":%.6f,"api":%s,"upstream":%s,"upstream_status":%s,'
    '"upstream_connect_time":%s,"upstream_response_time":%s,"retries":%d,'
    '"request_id":%s,"error":%s}\n'
)
_quote = json.encoder.encode_basestring_ascii


def open_access_log(
    setting: str, *, max_queued: int = MAX_QUEUED, interval: float = 0.1
) -> AccessLog | None:
    """The access log a ``[gateway] access_log`` value asks for: None for ``"off"``, so the
    relay skips logging with one ``is None`` test. Raises ``StartupError`` when the file cannot
    be opened."""
    if setting == OFF:
        return None
    return AccessLog(setting, max_queued=max_queued, interval=interval)


class AccessLog:
    """Writes access records to ``destination`` (``"stdout"`` or a file path) from a thread."""

    def __init__(
        self, destination: str, *, max_queued: int = MAX_QUEUED, interval: float = 0.1
    ) -> None:
        self.destination = destination
        self._fd = 1 if destination == STDOUT else _open(destination)
        self._owns_fd = destination != STDOUT
        self._chunk = _PIPE_BUF if not stat.S_ISREG(os.fstat(self._fd).st_mode) else 1 << 20
        self._queue: deque[Any] = deque()
        self._limit = max_queued
        # Wake the writer early once this many records wait, well before the queue is full.
        self._wake_at = max(1, min(_BATCH, max_queued // 4))
        self._interval = interval
        self._wake = threading.Event()
        self._dropped = 0  # written by the loop thread only
        self._write_failures = 0  # written by the writer thread only
        self._reported = 0
        self._warned_at = -WARN_EVERY
        self._second = -1
        self._second_text = ""
        self._thread = threading.Thread(target=self._run, name="lbproxy-accesslog", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        state = "closed" if self.is_closed() else f"{len(self._queue)} queued"
        return f"<AccessLog {self.destination} [{state}, {self.dropped} dropped]>"

    @property
    def dropped(self) -> int:
        """Records refused because the queue was full (or the log closed)."""
        return self._dropped

    @property
    def write_failures(self) -> int:
        """Records lost because writing them failed (disk full, a closed pipe, ...)."""
        return self._write_failures

    def is_closed(self) -> bool:
        return not self._thread.is_alive()

    # Positional plain values: the cheapest call the relay can make once per exchange.
    def log(  # noqa: PLR0917
        self,
        client: str | bytes,
        method: bytes,
        target: bytes,
        status: int,
        bytes_in: int,
        bytes_out: int,
        started: float,
        now: float,
        api: str | None,
        upstream: str | None,
        upstream_status: int | None,
        connect_time: float | None,
        response_time: float | None,
        retries: int,
        request_id: bytes,
        error: str | None,
    ) -> None:
        """Queue one record; never blocks. ``started`` and ``now`` are the same clock's readings
        (the loop's), so ``now - started`` is the duration; times are seconds or None."""
        queue = self._queue
        if len(queue) >= self._limit:
            self._dropped += 1
            return
        # Slicing a bytes object no longer than the slice returns it as is: no copy.
        queue.append(
            (
                time.time(),
                client,
                method,
                target[: TARGET_LIMIT + 1],
                status,
                bytes_in,
                bytes_out,
                now - started,
                api,
                upstream,
                upstream_status,
                connect_time,
                response_time,
                retries,
                request_id[: REQUEST_ID_LIMIT + 1],
                error,
            )
        )
        if len(queue) == self._wake_at:
            self._wake.set()

    def reopen(self) -> None:
        """Reopen the file by its path (after rotation; SIGUSR1). No-op on stdout."""
        self._queue.append(_REOPEN)
        self._wake.set()

    def close(self, timeout: float = 5.0) -> bool:
        """Write what is queued, close the file and stop the thread. Records logged afterwards
        are counted as dropped. False when the writer did not finish within ``timeout``
        (blocked on a full pipe, say); it is a daemon thread and will not hold up exit."""
        if self._limit:
            self._limit = 0
            self._queue.append(_CLOSE)
            self._wake.set()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # -- the writer thread ------------------------------------------------------------------

    def _run(self) -> None:
        running = True
        while running:
            self._wake.wait(self._interval)
            self._wake.clear()
            running = self._drain()
            self._report_drops()

    def _drain(self) -> bool:
        """Write every queued record; False once the close marker was met."""
        queue = self._queue
        lines: list[str] = []
        while queue:
            item = queue.popleft()
            if item is _REOPEN or item is _CLOSE:
                self._write(lines)
                lines = []
                if item is _CLOSE:
                    self._close_fd()
                    return False
                self._reopen_now()
                continue
            try:
                lines.append(self._format(item))
            except (TypeError, ValueError, OverflowError):
                self._write_failures += 1
                log.exception("access log: a record could not be formatted: %r", item)
            if len(lines) >= _BATCH:
                self._write(lines)
                lines = []
        self._write(lines)
        return True

    def _format(self, record: tuple[Any, ...]) -> str:
        wall, client, method, target, status, bytes_in, bytes_out, duration = record[:8]
        api, upstream, upstream_status, connect_time, response_time = record[8:13]
        retries, request_id, error = record[13:]
        return _LINE % (
            self._timestamp(wall),
            _quote(_text(client)),
            _quote(_text(method)),
            _quote(_cut(target, TARGET_LIMIT)),
            status,
            bytes_in,
            bytes_out,
            duration,
            _optional(api),
            _optional(upstream),
            _integer(upstream_status),
            _seconds(connect_time),
            _seconds(response_time),
            retries,
            _quote(_cut(request_id, REQUEST_ID_LIMIT)),
            _optional(error),
        )

    def _timestamp(self, wall: float) -> str:
        """RFC 3339 in UTC with milliseconds: ``2024-05-01T12:00:00.250Z``."""
        second = int(wall)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._second_text}.{int((wall - second) * 1000):03d}Z"

    def _write(self, lines: list[str]) -> None:
        if not lines:
            return
        data = "".join(lines).encode("ascii")
        try:
            for chunk in _chunks(data, self._chunk):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(self._fd, view) :]
        except OSError as exc:
            self._write_failures += len(lines)
            self._warn("access log %s: write failed: %s", self.destination, exc)

    def _reopen_now(self) -> None:
        if not self._owns_fd:
            return
        try:
            fd = _open(self.destination)
        except StartupError as exc:
            log.error("%s; still writing to the file opened before", exc)
            return
        os.close(self._fd)
        self._fd = fd

    def _close_fd(self) -> None:
        if self._owns_fd:
            os.close(self._fd)

    def _report_drops(self) -> None:
        dropped = self._dropped
        if dropped != self._reported and self._warn(
            "access log %s: %d record(s) dropped: the writer cannot keep up (queue of %d)",
            self.destination,
            dropped - self._reported,
            len(self._queue),
        ):
            self._reported = dropped

    def _warn(self, message: str, *args: object) -> bool:
        """Log a warning unless one was logged less than ``WARN_EVERY`` seconds ago."""
        now = time.monotonic()
        if now - self._warned_at < WARN_EVERY:
            return False
        self._warned_at = now
        log.warning(message, *args)
        return True


def _open(path: str) -> int:
    """An append-only descriptor on ``path``, created if missing (its directory must exist)."""
    try:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except FileNotFoundError as exc:
        directory = os.path.dirname(os.path.abspath(path))
        raise StartupError(
            f"access log {path}: directory {directory} does not exist; create it first"
        ) from exc
    except OSError as exc:
        raise StartupError(f"access log {path}: cannot open: {exc.strerror}") from exc


def _text(value: str | bytes) -> str:
    if isinstance(value, str):
        return value
    return value.decode("utf-8", "backslashreplace")


def _cut(value: bytes, limit: int) -> str:
    if len(value) > limit:
        return value[:limit].decode("utf-8", "backslashreplace") + "..."
    return value.decode("utf-8", "backslashreplace")


def _optional(value: str | None) -> str:
    return "null" if value is None else _quote(value)


def _seconds(value: float | None) -> str:
    return "null" if value is None else f"{value:.6f}"


def _integer(value: int | None) -> str:
    return "null" if value is None else f"{value:d}"


def _chunks(data: bytes, size: int) -> list[bytes]:
    """``data`` in pieces of at most ``size`` bytes cut after a newline (a longer line alone)."""
    if len(data) <= size:
        return [data]
    pieces, start = [], 0
    while start < len(data):
        end = data.rfind(b"\n", start, start + size) + 1
        if end <= start:
            end = data.find(b"\n", start + size) + 1 or len(data)
        pieces.append(data[start:end])
        start = end
    return pieces
