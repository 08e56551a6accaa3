"""Bounded stop: ``Engine.stop(timeout)`` returns within the timeout whatever the broker does.

An orchestrator gives a worker a grace period and then kills it. An operations report saw
a worker with Kafka unreachable take ~32 s to stop (each admin bootstrap waited 10 s, and
threads queued behind each other). Here the broker is a free port nothing listens on (every
connection attempt is backing off when the stop comes: a refused Kafka bootstrap now fails
at once), or for Kafka a port that accepts connections and never answers (a bootstrap is
in progress when the stop comes). Each test waits until the engine's loops are in that
state before it stops them, and allows the stop its timeout plus the load margin of
:mod:`tests.support.timing`: the defect cost 10 s per bootstrap, 32 s in all.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from outboxkit.backends import SqlRepository
from outboxkit.broker import Broker
from outboxkit.engine import Engine
from outboxkit.messages import PublishRequest
from outboxkit.routing import Routing
from outboxkit.testing.services import free_port
from tests.support import worker_app
from tests.support.engine import wait_for
from tests.support.paths import ROOT
from tests.support.timing import assert_within


@contextlib.contextmanager
def _silent_port() -> Iterator[tuple[str, list[socket.socket]]]:
    """``127.0.0.1:port`` of a server that accepts connections and never answers, so a
    Kafka bootstrap waits; and the connections it accepted (a bootstrap in progress each)."""
    accepted: list[socket.socket] = []
    stop = threading.Event()
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(64)
        server.settimeout(0.1)

        def accept() -> None:
            while not stop.is_set():
                try:
                    accepted.append(server.accept()[0])
                except OSError:
                    continue

        thread = threading.Thread(target=accept, name="silent-kafka", daemon=True)
        thread.start()
        try:
            yield f"127.0.0.1:{server.getsockname()[1]}", accepted
        finally:
            stop.set()
            thread.join(5)
            for connection in accepted:
                connection.close()


def _unreachable_broker(kind: str, silent: str) -> Broker:
    """A broker of ``kind`` on a closed port, or (``kafka-silent``) on ``silent``."""
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
    with _silent_port() as (silent, accepted):
        entered: set[str] = set()
        engine = Engine(repository, _entering(_unreachable_broker(kind, silent), entered), routing)
        engine.register_handler("bs.checked", lambda event, connection: None)
        engine.create_schema()
        engine.start()
        # ... whose loops are all connecting or backing off: each has entered its first
        # broker call (a silent broker: two bootstraps under way); waited for
        loops = {f"outboxkit-relay-bs{unique}-0", f"outboxkit-consumer-bs{unique}-0"}
        wait_for(lambda: loops <= entered, timeout=30, what=f"{sorted(loops)} in the broker")
        if kind == "kafka-silent":
            wait_for(lambda: len(accepted) >= 2, timeout=30, what="two bootstraps under way")

        # When it is stopped with a 2 s timeout
        started = time.monotonic()
        finished = engine.stop(timeout=2.0)
        took = time.monotonic() - started

    # Then it returned in time, having stopped every thread and closed the broker
    assert_within(took, 2.0, "stop(timeout=2.0)")
    assert finished
    assert engine.fatal_error is None  # unreachable is an outage, never fatal
    repository.close()


def _entering(broker: Broker, entered: set[str]) -> Broker:
    """``broker``, noting in ``entered`` the name of each thread that calls its
    ``ensure_topic`` (every engine loop's first broker call)."""

    class Entering(type(broker)):  # type: ignore[misc]
        def ensure_topic(self, *args: Any, **kwargs: Any) -> None:
            entered.add(threading.current_thread().name)
            super().ensure_topic(*args, **kwargs)

    broker.__class__ = Entering
    return broker


def _worker(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "outboxkit", "worker", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _read_until(worker: subprocess.Popen[str], *texts: str) -> str:
    """The worker's output up to the line by which every one of ``texts`` was printed."""
    assert worker.stdout is not None
    seen = []
    missing = set(texts)
    for line in worker.stdout:
        seen.append(line)
        missing = {text for text in missing if text not in line}
        if not missing:
            return "".join(seen)
    raise AssertionError(f"the worker ended before printing {sorted(missing)}: {''.join(seen)}")


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
        # ... whose loops met the outage and are backing off (waited for: both said so)
        before = _read_until(
            worker,
            "outboxkit worker running",
            f"relay bs{unique} paused",
            f"consumer bs{unique} paused",
        )

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
    assert_within(took, 3.0, f"SIGTERM to exit with --stop-timeout 3 ({output})")
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

    # Then the worker says so and exits 1, in time (not after its 60 s handler)
    assert worker.returncode == 1, output
    assert_within(took, 1.0, f"SIGTERM to exit with --stop-timeout 1 ({output})")
    assert "could not drain within 1 s" in output
