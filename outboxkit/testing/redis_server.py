"""Run a private ``redis-server`` for tests that must kill, restart, fill or demote Redis.

The shared Redis of the machine is never restarted, flushed or reconfigured by the suite:
other people's tests run on it. A test that needs a Redis it may break starts one of these
on a free loopback port, without persistence (``--save "" --appendonly no``), so a
:meth:`RedisServer.restart` comes back **empty** on the same port, as a server that lost
its data would. Everything listens on ``127.0.0.1`` only.
"""

from __future__ import annotations

import logging
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from outboxkit.testing.services import free_port

logger = logging.getLogger(__name__)

#: How long a fresh server may take to answer ``PING``.
DEFAULT_START_TIMEOUT = 10.0
#: How long ``stop()`` waits after SIGTERM before it kills the process.
DEFAULT_STOP_TIMEOUT = 5.0
_LOG_TAIL_CHARS = 2000


class RedisServerError(RuntimeError):
    """``redis-server`` could not be found or did not start; the message has its log."""


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` subprocess on a loopback port, without persistence.

    ``args`` are extra server options, e.g. ``["--maxmemory", "2mb"]`` or
    ``["--replicaof", "127.0.0.1", "6390"]``. The port is chosen at the first start and
    kept across :meth:`restart`. Use as a context manager, or :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        *,
        args: Sequence[str] = (),
        binary: str | None = None,
        port: int | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
    ) -> None:
        self._args = list(args)
        self._binary = binary
        self._port = port
        self._start_timeout = start_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def binary(self) -> str:
        if self._binary is None:
            found = shutil.which("redis-server")
            if found is None:
                raise RedisServerError("redis-server is not on PATH; install redis-server")
            self._binary = found
        return self._binary

    @property
    def port(self) -> int:
        if self._port is None:
            raise RedisServerError("the Redis server has not been started")
        return self._port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_tail(self) -> str:
        if self._dir is None:
            return ""
        try:
            text = (Path(self._dir.name) / "redis.log").read_text(errors="replace")
        except OSError:
            return ""
        return text[-_LOG_TAIL_CHARS:]

    def start(self) -> RedisServer:
        """Start the server and wait until it answers ``PING``; raise :class:`RedisServerError`."""
        if self.running:
            return self
        if self._port is None:
            self._port = free_port()
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="outboxkit-redis-")
        command = [
            self.binary,
            "--port",
            str(self._port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self._dir.name,
            "--logfile",
            "redis.log",
            *self._args,
        ]
        try:
            self._process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
            )
        except OSError as exc:
            raise RedisServerError(f"{self.binary} could not be executed: {exc}") from exc
        deadline = time.monotonic() + self._start_timeout
        while not _answers_ping(self._port):
            if self._process.poll() is not None or time.monotonic() >= deadline:
                tail = self.log_tail().strip() or "(empty)"
                self.stop()
                raise RedisServerError(
                    f"redis-server on 127.0.0.1:{self._port} did not start; log tail:\n{tail}"
                )
            time.sleep(0.05)
        logger.info("started redis-server pid %d on port %d", self._process.pid, self._port)
        return self

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """Terminate the server (kill it if it does not exit in ``timeout``). Idempotent."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=timeout)
        logger.info("stopped redis-server pid %d", process.pid)

    def restart(self) -> RedisServer:
        """Stop and start again on the same port: the server comes back empty."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop the server and delete its working directory."""
        self.stop()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
