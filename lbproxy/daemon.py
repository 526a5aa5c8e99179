"""``lbproxy run``: the daemon. Workers, signals, reload, drain, pid file, systemd notify.

Theory of operation. With ``workers = 1`` the process itself serves. With more, a supervisor
forks that many workers, each with its own event loop and ``Runtime`` bound with SO_REUSEPORT
(the kernel spreads connections), and starts a new one when a worker dies unexpectedly.

Signals (sent to the supervisor, which passes them on to every worker):

- SIGHUP reloads: the configuration file (and state file) is read and validated again. A bad
  one is refused, logged and counted; the old one keeps serving. A good one is applied in place
  when it binds the same addresses (routes swapped for new requests, requests in flight finish
  on theirs); otherwise a new ``Runtime`` is started next to the old one, sharing its listening
  sockets where the addresses are the same, and the old one is drained. One reload runs at a
  time; a SIGHUP during one asks for another after it.
- SIGTERM and SIGQUIT drain gracefully within ``shutdown_timeout``: stop accepting, finish the
  requests in flight, close idle upstream connections. SIGINT does the same; a second SIGINT
  exits at once.
- SIGUSR1 is for reopening log files (the access log, when one is configured).

systemd ``Type=notify``: when ``NOTIFY_SOCKET`` is set, READY=1 is sent once serving,
RELOADING=1 (with MONOTONIC_USEC) then READY=1 around a reload, STOPPING=1 when draining. A
supervisor says READY=1 once every worker serves and passes SIGHUP on at once (it does not
wait for their reloads).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator

from lbproxy import BUILD, __version__
from lbproxy.config import Config
from lbproxy.errors import ConfigError, StartupError
from lbproxy.exporter import MULTIPROC_ENV, Exporter, use_multiprocess, worker_exited
from lbproxy.metrics import Stats
from lbproxy.server import Runtime
from lbproxy.state import Document, load_with_state

log = logging.getLogger("lbproxy")
_CANNOT_START = 3  # a worker's exit status when its configuration cannot be served
_PR_SET_PDEATHSIG = 1
_supervisor: int | None = None  # in a worker, the supervisor's pid
# In a worker, where to say it serves (a pipe to its supervisor), until it has said so.
_ready_fd: int | None = None
# The signals a supervisor passes on to its workers.
_RELAYED = (signal.SIGTERM, signal.SIGQUIT, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)
# A worker dying at once again is not restarted in a tight loop.
_RESTART_DELAY = 1.0
# How long a draining runtime keeps idle keep-alive connections for a last request (answered
# with Connection: close): a busy client sends one within this; an idle one is closed after.
IDLE_GRACE = 1.0


def notify(message: str) -> None:
    """Tell systemd (``Type=notify``) how the service is doing; nothing without NOTIFY_SOCKET."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]  # the abstract namespace
    # systemd gone: nothing to tell, and nothing to fail for.
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, contextlib.suppress(OSError):
        sock.sendto(message.encode(), address)


def write_pid_file(path: str) -> None:
    """Write our pid atomically: a reader never sees a half-written file."""
    temp = f"{path}.{os.getpid()}.tmp"
    with open(temp, "w", encoding="ascii") as f:
        f.write(f"{os.getpid()}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)


class Worker:
    """One serving process: a Runtime, reloaded in place or replaced on SIGHUP.

    ``alone``: no supervisor above it, so it tells systemd how it is doing and reads SIGINT.
    """

    def __init__(
        self, path: str, config: Config, document: Document, *, reuse_port: bool, alone: bool
    ) -> None:
        self._path = path
        self._reuse_port = reuse_port
        self._alone = alone
        # The process's metrics outlive each runtime a reload replaces.
        self.exporter = Exporter(Stats(), lambda: self.runtime)
        self.runtime = self._runtime(config, document)
        self._stop = asyncio.Event()
        self._interrupts = 0
        self._retired: set[asyncio.Task[None]] = set()
        self._reloading: asyncio.Task[None] | None = None
        self._reload_again = False

    def _runtime(self, config: Config, document: Document) -> Runtime:
        runtime = Runtime(config, document, reuse_port=self._reuse_port, exporter=self.exporter)
        if not self._alone:
            runtime.on_change = _reload_siblings
        return runtime

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        await self.runtime.start()
        self.exporter.start(loop)
        for sig in (signal.SIGTERM, signal.SIGQUIT):
            loop.add_signal_handler(sig, self._stop.set)
        if self._alone:
            loop.add_signal_handler(signal.SIGINT, self._interrupt)
        # (A worker leaves SIGINT ignored: Ctrl-C reaches the whole process group, and the
        # supervisor alone reads it, sending SIGTERM, then SIGKILL on a second one.)
        loop.add_signal_handler(signal.SIGHUP, self._on_hangup)
        loop.add_signal_handler(signal.SIGUSR1, self._reopen_logs)
        # Signals that came while this worker started are carried out now, so a worker never
        # keeps the configuration (or log file) it read before the SIGHUP (or SIGUSR1).
        early, _early_signals[:] = list(_early_signals), []
        if signal.SIGHUP in early:
            self._on_hangup()
        if signal.SIGUSR1 in early:
            self._reopen_logs()
        config = self.runtime.config
        log.info(
            "lbproxy %s (%s) serving %d API(s) in pid %d",
            __version__,
            BUILD,
            len(config.apis),
            os.getpid(),
        )
        self._notify("READY=1")
        _tell_supervisor_ready()
        await self._stop.wait()
        self._notify("STOPPING=1")
        log.info("stopping: finishing in-flight requests (at most %gs)", self._timeout())
        await self.runtime.stop(timeout=self._timeout(), idle_grace=IDLE_GRACE)
        await asyncio.gather(*self._retired)
        self.exporter.stop()

    def _notify(self, message: str) -> None:
        if self._alone:
            notify(message)

    def _timeout(self) -> float:
        return float(self.runtime.config.gateway.shutdown_timeout)

    def _interrupt(self) -> None:
        self._interrupts += 1
        if self._interrupts > 1:
            log.warning("second interrupt: exiting now")
            os._exit(130)
        self._stop.set()

    def _reopen_logs(self) -> None:
        self.runtime.reopen_logs()

    def _on_hangup(self) -> None:
        # One reload at a time: two at once would both replace the same runtime. A SIGHUP
        # during a reload asks for one more after it (the file may have changed again).
        if self._reloading is not None and not self._reloading.done():
            self._reload_again = True
            return
        self._reloading = asyncio.get_running_loop().create_task(self._reload_while_asked())

    async def _reload_while_asked(self) -> None:
        while True:
            self._reload_again = False
            await self.reload()
            if not self._reload_again:
                return

    async def reload(self) -> bool:
        """Read and validate the configuration again; keep the old one if it is bad."""
        self._notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        ok = False
        try:
            ok = await self._reload()
        finally:
            self.exporter.stats.reload(ok)
            self._notify("READY=1")
        return ok

    async def _reload(self) -> bool:
        try:
            config, document = load_with_state(self._path)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload refused: %s", problem)
            log.error("reload refused: the running configuration stays")
            # Server weights saved by another worker's admin action still apply.
            self.runtime.restore_weights()
            return False
        old = self.runtime
        if _bindings(config) == _bindings(old.config):
            try:
                old.apply(config)
            except StartupError as exc:
                log.error("reload refused: %s; the running configuration stays", exc)
                return False
            if old.admin is not None:
                old.admin.api.replace_document(document)
        else:
            new = self._runtime(config, document)
            try:
                await new.start(inherit=old.listening())
            except StartupError as exc:
                log.error("reload refused: %s; the running configuration stays", exc)
                return False
            self.runtime = new
            task = asyncio.get_running_loop().create_task(
                old.stop(timeout=self._timeout(), idle_grace=IDLE_GRACE)
            )
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)
        log.info("reloaded %s", self._path)
        return True


# SIGHUP and SIGUSR1 received by a worker before it serves (see defer_signals).
_early_signals: list[int] = []


def _remember_signal(signum: int, frame: object) -> None:
    _early_signals.append(signum)


def defer_signals() -> None:
    """Until the loop's handlers replace these, SIGHUP and SIGUSR1 are noted for later: the
    default action would kill the process, and ignoring them would lose a reload asked for
    after the configuration was read."""
    for sig in (signal.SIGHUP, signal.SIGUSR1):
        signal.signal(sig, _remember_signal)


def _tell_supervisor_ready() -> None:
    global _ready_fd
    if _ready_fd is None:
        return
    fd, _ready_fd = _ready_fd, None
    with contextlib.suppress(OSError):  # the supervisor is gone: PDEATHSIG ends this worker
        os.write(fd, b"r")
    os.close(fd)


def _reload_siblings() -> None:
    """The admin API changed the state file in this worker: the supervisor has every worker
    read it again (this one too, which finds nothing new)."""
    if _supervisor is not None and os.getppid() == _supervisor:  # not orphaned
        os.kill(_supervisor, signal.SIGHUP)


def _bindings(config: Config) -> tuple[object, ...]:
    """Every address a configuration binds: equal bindings can be reloaded in place."""
    gw = config.gateway
    lbs = tuple((str(lb.ip), ln.port) for lb in config.load_balancers for ln in lb.listeners)
    return (
        gw.listen,
        tuple((t.listen, t.cert_file, t.key_file) for t in gw.tls),
        gw.admin_listen,
        lbs,
    )


def run(path: str, pid_file: str | None) -> int:
    """Serve ``path`` until told to stop; the exit status for the CLI."""
    config, document = load_with_state(path)  # ConfigError goes to the CLI (exit 78)
    workers = config.gateway.worker_count()
    if pid_file:
        write_pid_file(pid_file)
    try:
        if workers == 1:
            # No SO_REUSEPORT: a second instance on the same addresses fails to start rather
            # than take half the traffic (reloads inherit the sockets instead).
            defer_signals()
            _serve_here(path, config, document, reuse_port=False, alone=True)
            return 0
        with _metrics_directory():
            return Supervisor(path, config, workers).run()
    finally:
        if pid_file:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(pid_file)


@contextlib.contextmanager
def _metrics_directory() -> Iterator[None]:
    """Workers keep their metrics in files, summed at each scrape: in PROMETHEUS_MULTIPROC_DIR
    when the operator names one (systemd's RuntimeDirectory, say), else a directory of our own
    removed at exit."""
    given = os.environ.get(MULTIPROC_ENV)
    directory = given or tempfile.mkdtemp(prefix="lbproxy-metrics-")
    use_multiprocess(directory)
    try:
        yield
    finally:
        if not given:
            shutil.rmtree(directory, ignore_errors=True)


def _serve_here(
    path: str, config: Config, document: Document, *, reuse_port: bool, alone: bool
) -> None:
    async def main() -> None:
        worker = Worker(path, config, document, reuse_port=reuse_port, alone=alone)
        await worker.serve()

    try:
        import uvloop
    except ImportError:  # e.g. Windows: the default loop works, only slower
        asyncio.run(main())
    else:
        uvloop.run(main())


class Supervisor:
    """Forks ``workers`` serving processes, restarts the ones that die, relays signals."""

    def __init__(self, path: str, config: Config, workers: int) -> None:
        self._path = path
        self._config = config
        self._workers = workers
        self._children: dict[int, float] = {}  # pid -> start time
        self._stopping = False
        self._interrupts = 0
        # A pipe on which each worker says, once, that it serves (see _say_ready).
        self._ready_r = self._ready_w = -1
        self._ready_said = False

    def run(self) -> int:
        for sig in _RELAYED:
            signal.signal(sig, self._signal)
        self._ready_r, self._ready_w = os.pipe()
        first = {self._fork() for _ in range(self._workers)}
        log.info("supervisor %d started %d workers", os.getpid(), self._workers)
        # READY=1 once every worker serves (systemctl start returns then), read by a thread
        # while this one waits on the workers; a worker that never serves leaves it unsaid.
        # The thread starts with the relayed signals blocked: delivered to it, one would be
        # handled between a fork and the new worker being counted (see _fork).
        signal.pthread_sigmask(signal.SIG_BLOCK, _RELAYED)
        try:
            threading.Thread(target=self._say_ready, name="ready", daemon=True).start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _RELAYED)
        code = 0
        while self._children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            started = self._children.pop(pid, None)
            if started is None:
                continue
            worker_exited(pid)
            if self._stopping:
                continue
            if pid in first and os.WIFEXITED(status) and os.WEXITSTATUS(status) == _CANNOT_START:
                # The configuration cannot be served (a port in use, say): restarting would
                # fail the same way forever, and one worker alone would say so by exiting.
                log.error("worker %d could not start; stopping the others", pid)
                code = _CANNOT_START
                self._signal(signal.SIGTERM, None)
                continue
            log.error("worker %d exited (%s); starting another", pid, _describe(status))
            if time.monotonic() - started < _RESTART_DELAY:
                time.sleep(_RESTART_DELAY)
            if not self._stopping:  # not told to stop during the pause
                self._fork()
        return code

    def _say_ready(self) -> None:
        ready = 0
        while ready < self._workers:
            said = os.read(self._ready_r, self._workers)
            if not said:
                return
            ready += len(said)
        log.info("all %d workers serve", self._workers)
        notify("READY=1")
        # Said once: workers started from now on are not asked (a write to a pipe nobody
        # reads would block one day), and the pipe goes.
        self._ready_said = True
        os.close(self._ready_r)

    def _fork(self) -> int:
        # Signals wait until the new worker is counted, or one sent in between would miss it.
        signal.pthread_sigmask(signal.SIG_BLOCK, _RELAYED)
        try:
            pid = os.fork()
            if pid == 0:
                self._become_worker()  # never returns
            self._children[pid] = time.monotonic()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _RELAYED)
        return pid

    def _become_worker(self) -> None:
        """The worker: its own loop, no supervisor state. Reloads and log reopening asked for
        while it starts are carried out once it serves; Ctrl-C is the supervisor's."""
        global _supervisor, _ready_fd  # noqa: PLW0603 -- this process's one supervisor
        _supervisor = os.getppid()
        with contextlib.suppress(OSError):  # closed already once READY was said
            os.close(self._ready_r)
        _ready_fd = self._ready_w
        if self._ready_said:
            os.close(self._ready_w)
            _ready_fd = None
        for sig in (signal.SIGTERM, signal.SIGQUIT):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        defer_signals()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _RELAYED)
        _die_with_parent()
        code = 0
        try:
            config, document = load_with_state(self._path)
            _serve_here(self._path, config, document, reuse_port=True, alone=False)
        except (ConfigError, StartupError) as exc:
            log.error("worker %d cannot start: %s", os.getpid(), exc)
            code = _CANNOT_START
        except BaseException:
            log.exception("worker %d failed", os.getpid())
            code = 1
        finally:
            logging.shutdown()
            os._exit(code)

    def _signal(self, signum: int, frame: object) -> None:
        if signum == signal.SIGHUP:
            notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        elif signum != signal.SIGUSR1:
            if signum == signal.SIGINT:
                self._interrupts += 1
                # Workers ignore SIGINT (Ctrl-C reaches them too): the first drains them, the
                # second ends them at once.
                signum = signal.SIGTERM if self._interrupts < 2 else signal.SIGKILL
            self._stopping = True
            notify("STOPPING=1")
        for pid in list(self._children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        if signum == signal.SIGHUP:
            notify("READY=1")


def _die_with_parent() -> None:
    """Ask Linux to send SIGTERM should the supervisor die (a worker would otherwise serve on,
    orphaned, with nobody to relay signals or restart it); elsewhere, nothing."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() != _supervisor:  # it died before the request was made
        os.kill(os.getpid(), signal.SIGTERM)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"status {os.WEXITSTATUS(status)}"
