"""A worker whose Kafka cannot be reached: outboxkit says so itself, at once, and the client
library's per-attempt lines stay below WARNING unless asked for.

An operations trial with Kafka down saw kafka-python's ``Connection failed ...
ECONNREFUSED`` and ``Bootstrap ... not ready`` lines make up 54 of 62 log lines in 25 s
(despite the default ``--client-log-level warning``), ``outboxkit health`` print 16 of
them, and outboxkit's own line come only after the 10 s bootstrap timeout. These run the
real console command against real sockets on 127.0.0.1: a closed port, and a port that
accepts connections and drops them (which kafka-python does reach, and retries).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import attrs
import pytest

from outboxkit.backends import SqlRepository
from outboxkit.routing import Routing
from outboxkit.testing.services import free_port
from tests.support.paths import ROOT
from tests.support.runner_app import EVENT_TYPE
from tests.support.timing import assert_within

pytestmark = pytest.mark.kafka

#: How long a test waits for a line it expects (kafka-python's bootstrap is bounded below).
WAIT_SECONDS = 30.0
#: The bootstrap timeout of the workers on a dropping port, so their outage line comes soon.
BOOTSTRAP_TIMEOUT_MS = 1500
_LINE = re.compile(
    r"^(?P<at>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (?P<level>[A-Z]+) (?P<thread>\S+) "
    r"(?P<logger>[\w.]+): (?P<message>.*)$"
)


@attrs.frozen
class Record:
    """One log line the worker wrote."""

    at: datetime
    level: str
    logger: str
    message: str


def _records(lines: list[str]) -> list[Record]:
    found = []
    for line in lines:
        match = _LINE.match(line)
        if match:
            at = datetime.strptime(match["at"], "%Y-%m-%d %H:%M:%S,%f")
            found.append(Record(at, match["level"], match["logger"], match["message"]))
    return found


@contextlib.contextmanager
def _worker(tmp_path: Path, broker: str, *args: str) -> Iterator[Callable[..., list[str]]]:
    """A running ``outboxkit worker`` on ``broker``; yields ``wait(predicate)``, which
    returns the output lines so far once one of them satisfies ``predicate``. The worker
    is stopped with SIGTERM afterwards."""
    env = dict(
        os.environ,
        RUNNER_APP_DB_URL=f"sqlite:///{tmp_path}/outbox.db",
        RUNNER_APP_SERVICE="kafkalogs",
        RUNNER_APP_BROKER=f"kafka://{broker}",
        RUNNER_APP_KAFKA_BOOTSTRAP_TIMEOUT_MS=str(BOOTSTRAP_TIMEOUT_MS),
    )
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "outboxkit",
            "worker",
            "tests.support.runner_app:build",
            "--migrate",
            *args,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    seen: list[str] = []

    def wait(predicate: Callable[[list[str]], bool]) -> list[str]:
        deadline = time.monotonic() + WAIT_SECONDS
        while not predicate(seen):
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    "the worker never wrote what was expected:\n" + "\n".join(seen)
                ) from None
            if line is None:
                raise AssertionError("the worker ended early:\n" + "\n".join(seen))
            seen.append(line)
        return list(seen)

    try:
        yield wait
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        reader.join(timeout=5)
        assert process.stdout is not None
        process.stdout.close()


def _both_paused(lines: list[str]) -> bool:
    """Both loops of the service (relay and consumer) logged their outage line."""
    return sum(" paused, retrying" in line for line in lines) >= 2


@contextlib.contextmanager
def _dropping_port() -> Iterator[str]:
    """``127.0.0.1:port`` of a listener that accepts each connection and closes it at once
    (another service on Kafka's port, a proxy without its backend)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()


def test_a_worker_whose_kafka_refuses_connections_names_it_at_once_without_client_lines(
    tmp_path: Path,
) -> None:
    # Given a worker whose Kafka bootstrap server is a closed port on 127.0.0.1
    address = f"127.0.0.1:{free_port()}"
    with _worker(tmp_path, address) as wait:
        # When both of its loops have met the outage
        records = _records(wait(_both_paused))
    # Then outboxkit's own first WARNING names the broker, its address and the refusal,
    # and came at once after the start (it used to wait out the 10 s bootstrap)
    started = next(r for r in records if "outbox engine started" in r.message)
    first = next(r for r in records if r.level in ("WARNING", "ERROR"))
    assert " paused, retrying" in first.message, first
    assert "Kafka" in first.message and address in first.message, first
    assert "connection refused" in first.message, first
    assert_within((first.at - started.at).total_seconds(), 0.0, f"first warning {first}")
    # And not one line of the client library reached the log
    assert [r for r in records if r.logger.startswith("kafka")] == []


def test_health_of_an_app_whose_kafka_refuses_connections_prints_one_line_about_it(
    tmp_path: Path,
) -> None:
    # Given an application (its table created) whose Kafka is a closed port
    address = f"127.0.0.1:{free_port()}"
    db_url = f"sqlite:///{tmp_path}/outbox.db"
    routing = Routing()
    routing.register(EVENT_TYPE, "kafkalogs")
    repository = SqlRepository.from_url(db_url)
    repository.create_schema(routing.routes())
    repository.close()
    env = dict(
        os.environ,
        RUNNER_APP_DB_URL=db_url,
        RUNNER_APP_SERVICE="kafkalogs",
        RUNNER_APP_BROKER=f"kafka://{address}",
    )
    # When `outboxkit health` checks it
    done = subprocess.run(
        [sys.executable, "-m", "outboxkit", "health", "tests.support.runner_app:build"],
        cwd=ROOT,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = done.stdout + done.stderr
    # Then it fails, its broker line says why, and no client line is printed
    assert done.returncode == 1, output
    [broker] = [line for line in output.splitlines() if line.startswith("broker")]
    assert "FAIL" in broker and address in broker and "connection refused" in broker, output
    assert not [r for r in _records(output.splitlines()) if r.logger.startswith("kafka")], output


@pytest.mark.parametrize(
    ("client_level", "shown"), [(None, False), ("info", True)], ids=["default", "asked"]
)
def test_client_lines_about_a_dropped_connection_show_only_when_asked_and_below_warning(
    tmp_path: Path, client_level: str | None, shown: bool
) -> None:
    # Given a worker whose Kafka port accepts connections and drops them, so kafka-python
    # itself tries, fails and logs each attempt
    args = [] if client_level is None else ["--client-log-level", client_level]
    with _dropping_port() as address, _worker(tmp_path, address, *args) as wait:
        # When both loops have given up a bootstrap and reported the outage
        records = _records(wait(_both_paused))
    client = [r for r in records if r.logger.startswith("kafka")]
    # Then the client's lines never count as WARNING or ERROR
    assert [r for r in client if r.level in ("WARNING", "ERROR", "CRITICAL")] == []
    # And they are there only when asked for (--client-log-level info)
    assert bool(client) is shown, [r.message for r in client][:5]
    # While outboxkit's own outage lines name the address either way
    paused = [r for r in records if " paused, retrying" in r.message]
    assert paused and all(address in r.message for r in paused)


def _record(
    name: str, level: int, msg: str, *args: object, error: BaseException | None = None
) -> logging.LogRecord:
    exc_info = (type(error), error, None) if error is not None else None
    return logging.LogRecord(name, level, __file__, 1, msg, args, exc_info)


def test_the_client_filter_re_levels_connection_lines_only() -> None:
    from kafka.errors import KafkaConnectionError

    from outboxkit.cli.logs import ClientLogFilter

    shown = ClientLogFilter(logging.WARNING)
    refused = KafkaConnectionError("111 ECONNREFUSED")
    quiet = [
        _record("kafka.net.manager", logging.ERROR, "Connection failed: %s", refused),
        _record("kafka.net.manager", logging.WARNING, "Bootstrap %s not ready", "bootstrap-0"),
        _record("kafka.net.transport", logging.ERROR, "recv", error=ConnectionResetError()),
        _record("kafka.coordinator", logging.ERROR, "Error sending %s [%s]", "Heartbeat", refused),
        _record("kafka.cluster", logging.WARNING, "No node available for metadata refresh"),
    ]
    kept = [
        _record("kafka.net.selector", logging.ERROR, "IO loop crashed", error=RuntimeError("bug")),
        _record("kafka.cluster", logging.ERROR, "Topic %s is not authorized", "t"),
        _record("outboxkit.engine.loops", logging.WARNING, "relay x paused: %s", refused),
    ]
    for record in quiet:
        assert not shown.filter(record), record.getMessage()
        assert record.levelname == "INFO"  # what --client-log-level info would show
    for record in kept:
        level = record.levelno
        assert shown.filter(record), record.getMessage()
        assert record.levelno == level
