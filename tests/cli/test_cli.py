"""The ``outboxkit`` command: worker signals, migrate, dead-letter requeue and the demo."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from outboxkit.backends import SqlRepository, create_sqlite_engine
from outboxkit.cli.demo import run_demo
from outboxkit.cli.main import main
from outboxkit.messages import PublishRequest, Status
from outboxkit.publish.publisher import Publisher
from tests.support import worker_app
from tests.support.engine import wait_for
from tests.support.paths import ROOT
from tests.support.timing import assert_within


@pytest.fixture
def app_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    markers = tmp_path / "markers"
    markers.mkdir()
    env = dict(os.environ)
    env.update(WORKER_APP_DB=str(tmp_path / "app.db"), WORKER_APP_MARKERS=str(markers))
    old = {k: os.environ.get(k) for k in ("WORKER_APP_DB", "WORKER_APP_MARKERS")}
    os.environ.update(WORKER_APP_DB=env["WORKER_APP_DB"], WORKER_APP_MARKERS=str(markers))
    yield env
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _publish(env: dict[str, str], seconds: float) -> str:
    repository = SqlRepository(create_sqlite_engine(f"sqlite:///{env['WORKER_APP_DB']}"))
    publisher = Publisher(repository, worker_app.routing())
    event_id = publisher.publish(
        PublishRequest(event_type=worker_app.EVENT_TYPE, payload={"seconds": seconds})
    )
    repository.close()
    return event_id


def _status(env: dict[str, str], event_id: str) -> Status | None:
    repository = SqlRepository(create_sqlite_engine(f"sqlite:///{env['WORKER_APP_DB']}"))
    try:
        route = worker_app.routing().route_of(worker_app.EVENT_TYPE)
        row = repository.get_by_event_id(route, event_id)
        return None if row is None else row.status
    finally:
        repository.close()


def _start_worker(env: dict[str, str]) -> subprocess.Popen[str]:
    assert main(["migrate", "tests.support.worker_app:build"]) == 0
    return subprocess.Popen(
        [sys.executable, "-m", "outboxkit", "worker", "tests.support.worker_app:build"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_worker_stops_gracefully_on_sigterm_letting_the_handler_finish(
    app_env: dict[str, str],
) -> None:
    worker = _start_worker(app_env)
    try:
        event_id = _publish(app_env, seconds=1.5)
        markers = Path(app_env["WORKER_APP_MARKERS"])
        wait_for((markers / f"{event_id}.started").exists, timeout=30, what="start")

        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=30)

        assert worker.returncode == 0, output
        assert (markers / f"{event_id}.finished").exists()
        assert _status(app_env, event_id) is Status.CONSUMED
        assert "stopping gracefully" in output
    finally:
        if worker.poll() is None:
            worker.kill()


def test_worker_exits_at_once_on_a_second_signal(app_env: dict[str, str]) -> None:
    worker = _start_worker(app_env)
    try:
        event_id = _publish(app_env, seconds=60)
        markers = Path(app_env["WORKER_APP_MARKERS"])
        wait_for((markers / f"{event_id}.started").exists, timeout=30, what="start")

        worker.send_signal(signal.SIGTERM)
        # the first signal was taken (waited for: the worker says so), then the second
        assert worker.stdout is not None
        before = []
        for line in worker.stdout:
            before.append(line)
            if "stopping gracefully" in line:
                break
        worker.send_signal(signal.SIGINT)
        started = time.monotonic()
        rest, _ = worker.communicate(timeout=10)
        output = "".join(before) + rest

        assert worker.returncode == 130, output
        # at once: not after the 60 s handler, nor the stop timeout
        assert_within(time.monotonic() - started, 0.0, "exit on a second signal")
        assert not (markers / f"{event_id}.finished").exists()
        assert _status(app_env, event_id) is not Status.CONSUMED  # will be delivered again
        # and the operator reads why, in one line: the first signal says a second one
        # exits at once, the second what exiting without draining means
        assert "a second signal exits at once" in output
        [forced] = [line for line in output.splitlines() if "second signal SIGINT" in line]
        assert " WARNING " in forced and "without draining" in forced, output
        assert "will be delivered again" in forced, output
    finally:
        if worker.poll() is None:
            worker.kill()


def test_health_prints_its_verdict_without_lifecycle_log_lines(app_env: dict[str, str]) -> None:
    # Given an application whose engine logs at INFO when it opens and stops
    assert main(["migrate", "tests.support.worker_app:build"]) == 0

    def health(*options: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "outboxkit",
                "health",
                "tests.support.worker_app:build",
                *options,
            ],
            cwd=ROOT,
            env=app_env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    # When an operator (or a probe) runs health with the defaults
    quiet = health()
    # Then it prints the verdict only, like the other operator commands (WARNING by default)
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr
    assert quiet.stdout.startswith("live: yes  ready: yes")
    assert quiet.stderr == ""
    # and --log-level info still shows the lifecycle lines
    loud = health("--log-level", "info")
    assert loud.returncode == 0 and " INFO " in loud.stderr


def test_migrate_print_sql_shows_the_ddl_without_creating_anything(
    app_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["migrate", "tests.support.worker_app:build", "--print-sql"]) == 0

    ddl = capsys.readouterr().out
    assert "jobs_outbox_messages" in ddl
    assert "idx_outbox_status_next" in ddl
    assert not Path(app_env["WORKER_APP_DB"]).exists() or "jobs_outbox_messages" not in (
        Path(app_env["WORKER_APP_DB"]).read_bytes().decode("latin-1")
    )


def test_dead_requeue_puts_dead_rows_back_to_pending(
    app_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["migrate", "tests.support.worker_app:build"]) == 0
    event_id = _publish(app_env, seconds=0)
    repository = SqlRepository(create_sqlite_engine(f"sqlite:///{app_env['WORKER_APP_DB']}"))
    route = worker_app.routing().route_of(worker_app.EVENT_TYPE)
    row = repository.get_by_event_id(route, event_id)
    assert row is not None and repository.mark_dead(route, row.id, reason="poison")

    assert (
        main(["dead", "tests.support.worker_app:build", "list", "--service", "jobs", "--plain"])
        == 0
    )
    listed = capsys.readouterr().out.splitlines()
    header = next(n for n, line in enumerate(listed) if line.startswith("id "))
    assert listed[header].split()[:3] == ["id", "event", "id"]
    assert listed[header + 1].split()[:3] == [str(row.id), event_id, "job.requested"]
    assert "poison" in listed[header + 1]

    assert (
        main(["dead", "tests.support.worker_app:build", "requeue", "--service", "jobs", "--all"])
        == 2
    )
    assert "--yes" in capsys.readouterr().err
    assert main(["dead", "tests.support.worker_app:build", "requeue", "--all", "--yes"]) == 0

    assert "requeued 1 of 1" in capsys.readouterr().out
    requeued = repository.get(route, row.id)
    assert requeued is not None and requeued.status is Status.PENDING
    assert requeued.retry_count == 0
    repository.close()


def test_the_embedded_demo_delivers_every_committed_event() -> None:
    out = io.StringIO()

    summary = run_demo(orders=60, timeout=60, out=out)

    text = out.getvalue()
    assert summary.ok, text
    assert summary.rolled_back == 6 and summary.leaked_rollbacks == 0
    assert summary.shipments == 53 and summary.invoices == 53
    assert summary.retries >= 1 and summary.dead == 1
    assert "result                  OK" in text


@pytest.mark.parametrize(
    ("database", "broker"),
    [("postgres", "kafka"), ("mysql", "redis")],
    ids=["pg-kafka", "mysql-redis"],
)
def test_the_demo_runs_on_real_servers(
    request: pytest.FixtureRequest, database: str, broker: str
) -> None:
    db = request.getfixturevalue(f"{database}_engine")
    database_url = db.url.render_as_string(hide_password=False)
    if broker == "kafka":
        broker_url = f"kafka://{request.getfixturevalue('kafka_bootstrap')}"
    else:
        broker_url = request.getfixturevalue("redis_url")
    out = io.StringIO()
    streams_before = _demo_streams(request) if broker == "redis" else set()

    summary = run_demo(
        database_url=database_url, broker_url=broker_url, orders=40, timeout=90, out=out
    )

    if broker == "redis":  # the demo drops its tables; its streams are ours to delete
        _delete_streams(request, _demo_streams(request) - streams_before)
    assert summary.ok, out.getvalue()
    assert summary.shipments == 35


def _demo_streams(request: pytest.FixtureRequest) -> set[bytes]:
    import redis

    client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
    try:
        return set(client.scan_iter(match="outboxkit-demo-*"))
    finally:
        client.close()


def _delete_streams(request: pytest.FixtureRequest, streams: set[bytes]) -> None:
    import redis

    client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
    try:
        if streams:
            client.delete(*streams)
    finally:
        client.close()
