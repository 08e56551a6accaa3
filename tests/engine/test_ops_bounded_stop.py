"""Bounded stop: ``Engine.stop(timeout)`` returns within the timeout whatever the broker does.

An orchestrator gives a worker a grace period and then kills it. An operations report saw
a worker with Kafka unreachable take ~32 s to stop (each admin bootstrap waited 10 s, and
threads queued behind each other). Here the broker is a free port nothing listens on (every
connection attempt is backing off when the stop comes: a refused Kafka bootstrap now fails
at once), or for Kafka a port that accepts connections and never answers (a bootstrap is
in progress when the stop comes).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from outboxkit.backends import SqlRepository
from outboxkit.broker import Broker
from outboxkit.engine import Engine
from outboxkit.messages import PublishRequest
from outboxkit.routing import Routing
from outboxkit.testing.services import free_port
from tests.support import worker_app
from tests.support.paths import ROOT

#: Slack over the stop timeout for the thread joins and the interpreter's own exit.
SLACK_SECONDS = 1.0


@contextlib.contextmanager
def _silent_port() -> Iterator[str]:
    """``127.0.0.1:port`` of a socket that listens and never accepts: connections complete
    (in the kernel's backlog) and no answer ever comes, so a Kafka bootstrap waits."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        yield f"127.0.0.1:{server.getsockname()[1]}"


def _unreachable_broker(kind: str, silent: str) -> Broker:
    address = f"127.0.0.1:{free_port()}"
    if kind in ("kafka", "kafka-silent"):
        from outboxkit.brokers.kafka import KafkaBroker

        return KafkaBroker.from_bootstrap(silent if kind == "kafka-silent" else address)
    if kind == "confluent":
        from outboxkit.brokers.confluent import ConfluentKafkaBroker

        return ConfluentKafkaBroker.from_bootstrap(address)
    from outboxkit.brokers.redis_streams import RedisStreamsBroker

    return RedisStreamsBroker.from_url(f"redis://{address}/0")


@pytest.mark.parametrize("kind", ["kafka", "kafka-silent", "confluent", "redis"])
def test_an_engine_whose_broker_is_unreachable_stops_within_its_timeout(
    kind: str, tmp_path: Path, unique: str
) -> None:
    # Given an engine on a real database whose broker cannot be reached
    routing = Routing()
    routing.register("bs.checked", f"bs{unique}")
    repository = SqlRepository.from_url(f"sqlite:///{tmp_path}/outbox.db")
    with _silent_port() as silent:
        engine = Engine(repository, _unreachable_broker(kind, silent), routing)
        engine.register_handler("bs.checked", lambda event, connection: None)
        engine.create_schema()
        engine.start()
        time.sleep(1.5)  # every thread is now connecting or backing off

        # When it is stopped with a 2 s timeout
        started = time.monotonic()
        finished = engine.stop(timeout=2.0)
        took = time.monotonic() - started

    # Then it returned in time, having stopped every thread and closed the broker
    assert took < 2.0 + SLACK_SECONDS, took
    assert finished
    assert engine.fatal_error is None  # unreachable is an outage, never fatal
    repository.close()


def _worker(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "outboxkit", "worker", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _read_until(worker: subprocess.Popen[str], text: str) -> str:
    """The worker's output up to and including the first line containing ``text``."""
    assert worker.stdout is not None
    seen = []
    for line in worker.stdout:
        seen.append(line)
        if text in line:
            return "".join(seen)
    raise AssertionError(f"the worker ended before printing {text!r}: {''.join(seen)}")


def test_a_worker_with_kafka_unreachable_exits_zero_within_its_stop_timeout(
    tmp_path: Path, unique: str
) -> None:
    # Given a worker (tables ready) whose Kafka is a port nothing listens on
    db_url = f"sqlite:///{tmp_path}/ops.db"
    env = dict(
        os.environ,
        RUNNER_APP_DB_URL=db_url,
        RUNNER_APP_SERVICE=f"bs{unique}",
        RUNNER_APP_BROKER=f"kafka://127.0.0.1:{free_port()}",
    )
    worker = _worker(["tests.support.runner_app:build", "--migrate", "--stop-timeout", "3"], env)
    try:
        before = _read_until(worker, "outboxkit worker running")
        time.sleep(1.5)  # the loops are connecting to Kafka or backing off

        # When SIGTERM comes
        started = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=30)
        took = time.monotonic() - started
        output = before + output
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()

    # Then it drained and exited 0 within the stop timeout
    assert worker.returncode == 0, output
    assert took < 3.0 + SLACK_SECONDS + 1.0, (took, output)  # + interpreter teardown
    assert "outbox engine stopped" in output


def test_a_worker_that_cannot_drain_in_time_exits_non_zero(tmp_path: Path) -> None:
    # Given a worker whose handler is busy for a minute
    markers = tmp_path / "markers"
    markers.mkdir()
    env = dict(os.environ, WORKER_APP_DB=str(tmp_path / "app.db"), WORKER_APP_MARKERS=str(markers))
    os.environ.update(WORKER_APP_DB=env["WORKER_APP_DB"], WORKER_APP_MARKERS=str(markers))
    try:
        engine = worker_app.build()
        engine.create_schema()
        event_id = engine.publish(
            PublishRequest(event_type=worker_app.EVENT_TYPE, payload={"seconds": 60})
        )
        engine.repository.close()
    finally:
        os.environ.pop("WORKER_APP_DB")
        os.environ.pop("WORKER_APP_MARKERS")
    worker = _worker(["tests.support.worker_app:build", "--stop-timeout", "1"], env)
    try:
        deadline = time.monotonic() + 30
        while not (markers / f"{event_id}.started").exists():
            assert time.monotonic() < deadline, "the handler never started"
            time.sleep(0.05)

        # When SIGTERM comes and the handler cannot finish within the stop timeout
        started = time.monotonic()
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=30)
        took = time.monotonic() - started
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()

    # Then the worker says so and exits 1, in time
    assert worker.returncode == 1, output
    assert took < 1.0 + SLACK_SECONDS + 1.0, (took, output)
    assert "could not drain within 1 s" in output
