"""`noroshi serve`: the listening sockets, the worker processes, signals and the drain, around
the HTTP/1.1 server (`noroshi.http.server`).

One worker serves in the main process, for the fastest start. Several are forked from it after
it bound the sockets, so they share one accept queue and a busy port is found before any
worker starts (`SO_REUSEPORT` would let a second server bind the same port unnoticed). Each
worker dies with its parent (Linux's parent-death signal, and a watchdog on `getppid()`
elsewhere): a parent killed with SIGKILL leaves no worker holding the port.

SIGTERM or SIGINT drains: the sockets stop accepting, `App.begin_drain` starts the app's timer,
open requests finish for up to `server.drain_timeout_s` (streams still open then end with an
error event), then the app shuts down. The parent passes the signal on to every worker.

A worker that fails to start ends the server: the parent stops the others and exits with
status 2, after one line that says why. A worker that dies later is reported and replaced,
unless workers keep dying (`RESTARTS` within `RESTART_WINDOW_S`): then the server exits 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

try:
    import uvloop
except ImportError:  # not on Windows
    uvloop = None  # type: ignore[assignment]

from noroshi.app import App
from noroshi.config import Config, ServerConfig
from noroshi.http.server import Limits, Server
from noroshi.metrics import SHARED_DIR_ENV
from noroshi.process import tune_collector

__all__ = ["ListenError", "failure", "listen", "make_server", "run", "say"]

EXIT_START = 2  # the server could not start: port, configuration or start-up
GRACE_S = 2.0  # after the drain timeout: time for cut streams to send their error event
KILL_AFTER_S = 10.0  # after the drain: a worker still running is killed
RESTARTS, RESTART_WINDOW_S = 5, 60.0
WATCH_S = 1.0  # how often a worker checks that its parent is alive
PR_SET_PDEATHSIG = 1


class ListenError(Exception):
    """The address cannot be listened on; the message names it."""


def say(message: str) -> None:
    """One line on standard error, the way every start failure is reported."""
    print(f"noroshi: {message}", file=sys.stderr, flush=True)


def failure(exc: BaseException) -> str:
    """The line for an exception raised while starting: its message, on one line."""
    text = " ".join(str(exc).split())
    return f"start-up failed: {text or type(exc).__name__}"


def listen(host: str, port: int) -> list[socket.socket]:
    """Bound, listening sockets for every address `host` names (`port` 0: a free port)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    addresses = list(dict.fromkeys((family, address) for family, _, _, _, address in infos))
    sockets: list[socket.socket] = []
    try:
        for family, address in addresses:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and len(addresses) > 1:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(1024)
            sock.set_inheritable(True)
            sock.setblocking(False)
    except OSError as exc:
        for sock in sockets:
            sock.close()
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        where = f"[{host}]" if ":" in host else host
        message = f"cannot listen on {where}:{port}: {reason[:1].lower()}{reason[1:]}"
        raise ListenError(message) from None
    return sockets


def limits(server: ServerConfig) -> Limits:
    return Limits(
        max_body_bytes=server.max_body_bytes,
        max_connections=server.max_connections,
        keepalive_timeout_s=server.keepalive_timeout_s,
        header_timeout_s=server.header_timeout_s,
        send_timeout_s=server.send_timeout_s,
    )


def make_server(app: App) -> Server:
    """The HTTP server for `app`: its dispatch, its WebSockets, its start-up and drain."""
    server = Server(
        app.dispatch,
        websocket=app.websocket,
        limits=limits(app.config.server),
        startup=app.startup,
        drain=app.begin_drain,
    )
    app.server = server.name
    return server


def run(config: Config, sockets: list[socket.socket], ready: Callable[[], None]) -> int:
    """Serve until SIGTERM or SIGINT, then drain; the exit status. `ready` runs once every
    worker accepts connections."""
    if config.server.workers == 1:
        return _serve_here(config, sockets, _Report(ready))
    return _Supervisor(config, sockets, ready).run()


class _Report:
    """How a serving process says that it started, or why it could not."""

    def __init__(self, ready: Callable[[], None], fd: int = -1) -> None:
        self._ready = ready
        self.fd = fd  # a worker's pipe to its parent, else -1

    def ready(self) -> None:
        if self.fd < 0:
            self._ready()
        else:
            os.write(self.fd, b"ready\n")

    def failed(self, exc: BaseException) -> None:
        message = failure(exc)
        if self.fd < 0:
            say(message)
        else:
            os.write(self.fd, f"failed {message}\n".encode())


def _serve_here(
    config: Config, sockets: list[socket.socket], report: _Report, parent: int = 0
) -> int:
    tune_collector()
    main = _serve(config, sockets, report, parent)
    if uvloop is None:
        return asyncio.run(main)
    code: int = uvloop.run(main)
    return code


async def _serve(config: Config, sockets: list[socket.socket], report: _Report, parent: int) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        app = App(config)
    except Exception as exc:
        report.failed(exc)
        return EXIT_START
    server = make_server(app)
    try:
        await server.start(sockets)  # the app's start-up first: the database opens
    except Exception as exc:
        report.failed(exc)
        with contextlib.suppress(Exception):
            await app.shutdown()
        return EXIT_START
    report.ready()
    if parent:
        _watch_parent(loop, parent, stop)
    await stop.wait()
    await server.stop(config.server.drain_timeout_s + GRACE_S)
    await app.shutdown()
    return 0


def _watch_parent(loop: asyncio.AbstractEventLoop, parent: int, stop: asyncio.Event) -> None:
    """Drain once the parent is gone, where no parent-death signal told us already."""

    def look() -> None:
        if os.getppid() != parent:
            stop.set()
        else:
            loop.call_later(WATCH_S, look)

    loop.call_later(WATCH_S, look)


def _die_with_parent() -> None:
    """Linux sends this process SIGTERM, and so a drain, when its parent dies."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


@dataclass
class _Worker:
    index: int
    pid: int
    pipe: int  # the read end of its status pipe
    ready: bool = False
    failure: str = ""
    buffer: bytes = b""


@dataclass
class _Supervisor:
    """The parent of several workers: it starts them, watches them, and stops them."""

    config: Config
    sockets: list[socket.socket]
    on_ready: Callable[[], None]
    workers: dict[int, _Worker] = field(default_factory=dict)  # by pid
    deaths: list[float] = field(default_factory=list)
    stopping: bool = False

    def run(self) -> int:
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        signal.set_wakeup_fd(wake_w)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # only to wake the loop below
        # where the workers leave their metrics for whichever of them answers a scrape
        shared = tempfile.mkdtemp(prefix="noroshi-metrics-")
        os.environ[SHARED_DIR_ENV] = shared
        try:
            for index in range(self.config.server.workers):
                self._spawn(index, wake_r, wake_w)
            return self._watch(wake_r, wake_w)
        finally:
            signal.set_wakeup_fd(-1)
            self._stop()
            shutil.rmtree(shared, ignore_errors=True)

    def _on_signal(self, *_: object) -> None:
        self.stopping = True

    def _spawn(self, index: int, wake_r: int, wake_w: int) -> None:
        read, write = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                _die_with_parent()
                if os.getppid() != parent:
                    os._exit(0)
                signal.set_wakeup_fd(-1)
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGCHLD):
                    signal.signal(sig, signal.SIG_DFL)
                for fd in (read, wake_r, wake_w, *(w.pipe for w in self.workers.values())):
                    os.close(fd)
                code = _serve_here(self.config, self.sockets, _Report(self.on_ready, write), parent)
            except BaseException:
                import traceback

                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        os.close(write)
        os.set_blocking(read, False)
        self.workers[pid] = _Worker(index, pid, read)

    def _watch(self, wake_r: int, wake_w: int) -> int:
        announced = False
        while not self.stopping:
            pipes = {w.pipe: w for w in self.workers.values()}
            with contextlib.suppress(InterruptedError):
                select.select([wake_r, *pipes], [], [], 1.0)
            with contextlib.suppress(BlockingIOError):
                os.read(wake_r, 512)
            for worker in list(self.workers.values()):
                self._read(worker)
                if worker.failure:
                    say(worker.failure)
                    return EXIT_START
            for pid, status in _reaped():
                if pid not in self.workers:
                    continue
                worker = self.workers.pop(pid)
                self._read(worker)
                os.close(worker.pipe)
                if worker.failure or not worker.ready:
                    say(worker.failure or f"start-up failed: a worker {_how(status)}")
                    return EXIT_START
                say(f"worker {worker.index} (pid {pid}) {_how(status)}; restarting it")
                now = time.monotonic()
                self.deaths = [t for t in self.deaths if now - t < RESTART_WINDOW_S] + [now]
                if len(self.deaths) > RESTARTS:
                    say(
                        f"workers died {len(self.deaths)} times in {RESTART_WINDOW_S:.0f} s; "
                        "stopping"
                    )
                    return 1
                self._spawn(worker.index, wake_r, wake_w)
            if not announced and all(w.ready for w in self.workers.values()):
                announced = True
                self.on_ready()
        return 0

    def _read(self, worker: _Worker) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while chunk := os.read(worker.pipe, 4096):
                worker.buffer += chunk
        *lines, worker.buffer = worker.buffer.split(b"\n")
        for line in lines:
            if line == b"ready":
                worker.ready = True
            elif line.startswith(b"failed "):
                worker.failure = line[7:].decode(errors="replace")

    def _stop(self) -> None:
        """Close the sockets, SIGTERM every worker, and wait for their drains to end."""
        for sock in self.sockets:
            sock.close()
        for pid in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.config.server.drain_timeout_s + GRACE_S + KILL_AFTER_S
        while self.workers and time.monotonic() < deadline:
            for pid, _ in _reaped():
                if pid in self.workers:
                    os.close(self.workers.pop(pid).pipe)
            time.sleep(0.05)
        for pid in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def _reaped() -> list[tuple[int, int]]:
    """The children that ended since the last look, and their wait statuses."""
    done: list[tuple[int, int]] = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return done
        except OSError as exc:
            if exc.errno == errno.EINTR:
                continue
            raise
        if pid == 0:
            return done
        done.append((pid, status))


def _how(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"
