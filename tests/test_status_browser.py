"""/status.html in headless Chromium: the page, left open, refreshes itself and shows a killed
server as down with its reason, then a drained one as drained, without being reloaded.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON
messages ending in a NUL byte on file descriptors 3 and 4), which needs no Python package.
Skipped, saying why, where Debian's ``chromium`` is not installed (``make test-deps`` installs
it). Every wait is bounded and generous: a slow two-core machine runs this alongside Chromium.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import LoopThread
from tests.test_status import TOKEN, Rig, start_rig, stop_rig, wait_for

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)"
)

# What the test reads of the page: each row of one listener's section, and the page's state.
READ_PAGE = """(() => {
  const section = document.querySelector('section[data-listener="%s"]');
  const stale = document.getElementById("stale");
  const text = (tr, cell) => tr.querySelector("td." + cell).textContent;
  const rows = {};
  for (const tr of section ? section.querySelectorAll("tr[data-server]") : []) {
    rows[tr.dataset.server] = {
      kind: tr.className, phase: tr.dataset.phase, drained: tr.dataset.drained,
      state: text(tr, "phase"), why: text(tr, "why"), weight: text(tr, "weight"),
      background: getComputedStyle(tr.querySelector("td")).backgroundColor,
    };
  }
  return {
    refreshes: Number(document.body.dataset.refreshes),
    reloaded: window.statusTestMarker !== 1,
    stale: stale.hidden ? null : stale.textContent,
    summary: Array.from(document.querySelectorAll("#status .summary, #status li"),
                        (e) => e.textContent),
    rows: rows,
  };
})()"""
# Puts the pipes on file descriptors 3 and 4, then runs Chromium: a trampoline, because a
# preexec_fn is unsafe while the event loop's thread runs (and Debian's sh takes no fd above 9).
_ON_3_AND_4 = """
import fcntl, os, sys
pipes = [int(sys.argv[1]), int(sys.argv[2])]
high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in pipes]  # off 3 and 4 first
for fd in pipes:
    os.close(fd)
for target, fd in zip((3, 4), high):
    os.dup2(fd, target)
    os.close(fd)
os.execv(sys.argv[3], sys.argv[3:])
"""
RED = "rgb(255, 205, 210)"
GREY = "rgb(236, 239, 241)"
CLEAR = "rgba(0, 0, 0, 0)"


class Chromium:
    """Headless Chromium with one page, driven over the DevTools pipe."""

    def __init__(self, directory: Path) -> None:
        assert CHROMIUM is not None
        self._log = directory / "chromium.log"
        to_chromium, self._out = os.pipe()
        self._in, from_chromium = os.pipe()
        with self._log.open("wb") as log:
            self._process = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _ON_3_AND_4,
                    str(to_chromium),
                    str(from_chromium),
                    CHROMIUM,
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--no-first-run",
                    "--no-default-browser-check",
                    "--remote-debugging-pipe",
                    f"--user-data-dir={directory / 'profile'}",
                    "about:blank",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                pass_fds=(to_chromium, from_chromium),
            )
        os.close(to_chromium)
        os.close(from_chromium)
        self._buffer = b""
        self._next_id = 0
        self._session: str | None = None

    def call(self, method: str, timeout: float = 60.0, **params: Any) -> Any:
        """Send one command (to the page once ``open`` attached to it) and wait for its answer."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if self._session is not None and not method.startswith(("Target.", "Browser.")):
            message["sessionId"] = self._session
        os.write(self._out, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                answer = json.loads(raw)
                if answer.get("id") == self._next_id:
                    if "error" in answer:
                        raise AssertionError(f"{method}: {answer['error']}")
                    return answer["result"]
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self._in], [], [], max(left, 0.0))
            if not ready:
                raise AssertionError(f"{method}: no answer in {timeout} s; {self.log_tail()}")
            data = os.read(self._in, 1 << 20)
            if not data:
                raise AssertionError(f"chromium exited; {self.log_tail()}")
            self._buffer += data

    def open(self, url: str) -> None:
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        attached = self.call("Target.attachToTarget", targetId=target, flatten=True)
        self._session = attached["sessionId"]
        self.call("Page.navigate", url=url)
        loaded = f"location.href === {json.dumps(url)} && document.readyState === 'complete'"
        assert self.wait_until(lambda: self.evaluate(loaded) is True), self.log_tail()

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression[:60]}...: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_until(self, predicate: Any, seconds: float = 60.0) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.1)
        return bool(predicate())

    def log_tail(self) -> str:
        text = self._log.read_text(errors="replace") if self._log.exists() else ""
        return f"chromium's log ends: {text[-2000:]!r}"

    def close(self) -> None:
        with contextlib.suppress(AssertionError, OSError):
            self.call("Browser.close", timeout=10.0)
        try:
            self._process.wait(15)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(15)
        os.close(self._in)
        os.close(self._out)


@pytest.fixture
def rig(lt: LoopThread, tmp_path: Path) -> Iterator[Rig]:
    started = start_rig(lt, tmp_path, TOKEN)
    yield started
    stop_rig(started)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Chromium]:
    chromium = Chromium(tmp_path)
    yield chromium
    chromium.close()


def test_the_open_page_shows_a_killed_server_down_and_a_drained_one_drained(
    rig: Rig, browser: Chromium
) -> None:
    assert rig.runtime.admin is not None and rig.runtime.admin.address is not None
    host, port = rig.runtime.admin.address
    browser.open(f"http://{host}:{port}/status.html")
    browser.evaluate("window.statusTestMarker = 1")
    a, b, c = (rig.name(n) for n in "abc")

    def page() -> dict[str, Any]:
        state: dict[str, Any] = browser.evaluate(READ_PAGE % rig.web)
        return state

    first = page()
    assert first["rows"].keys() == {a, b, c}
    rows = first["rows"]
    assert {n: (r["phase"], r["kind"], r["background"]) for n, r in rows.items()} == dict.fromkeys(
        (a, b, c), ("up", "", CLEAR)
    )
    assert browser.wait_until(lambda: page()["refreshes"] >= 1)

    # A killed server: the checks take it down, then the page, as it is, shows it.
    rig.lt.run(rig.servers["b"].stop())
    assert wait_for(lambda: rig.server(rig.web, b)["phase"] == "down", seconds=30.0)
    assert browser.wait_until(lambda: page()["rows"][b]["phase"] == "down")
    shown = page()
    reason = "2 check(s) failed in a row; last: connection refused"
    assert (shown["reloaded"], shown["stale"]) == (False, None)
    assert shown["refreshes"] > first["refreshes"]
    row = shown["rows"][b]
    assert (row["kind"], row["state"], row["drained"], row["background"]) == (
        "out",
        "down",
        "false",
        RED,
    )
    assert row["why"].startswith(reason + " (")
    assert [(shown["rows"][n]["phase"], shown["rows"][n]["kind"]) for n in (a, c)] == [
        ("up", ""),
        ("up", ""),
    ]
    assert shown["summary"][:2] == ["1 of 8 servers out", f"{b} on {rig.web}: down, {reason}"]

    # A drained server, through the admin API: grey, with its weight.
    status, _ = rig.act("POST", f"/admin/servers/{rig.web}/{c}/drain")
    assert status == 200
    assert browser.wait_until(lambda: page()["rows"][c]["drained"] == "true")
    shown = page()
    row = shown["rows"][c]
    assert (row["kind"], row["state"], row["weight"], row["background"]) == (
        "drained",
        "up, drained",
        "0 (configured 1)",
        GREY,
    )
    assert (shown["rows"][b]["kind"], shown["rows"][a]["kind"]) == ("out", "")
    assert shown["reloaded"] is False
