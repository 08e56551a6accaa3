"""The operator commands (``status``, ``dlq``/``dead``, ``purge``) run as the real console
script against PostgreSQL and MariaDB filled by the engine (see ``tests/support/ops_app.py``).

Each test gets its own services (so tables); the engine leaves, per database: in
``orders-*`` 4 consumed rows, 5 dead (3 "poison pill", 2 "timeout talking to the bank"), 1
pending after one failed attempt; in ``billing-*`` 3 published rows nobody consumes.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import sqlalchemy as sa

from outboxkit.cli.main import main
from outboxkit.messages import Status
from outboxkit.routing import Route
from tests.support import ops_app
from tests.support.paths import ROOT

#: The console script pip installed next to the interpreter running the tests.
OUTBOXKIT = Path(sys.executable).parent / "outboxkit"
APP = "tests.support.ops_app:build"


@attrs.frozen
class Filled:
    """A database filled by the engine, and how to run the command against it."""

    url: str
    env: dict[str, str]
    orders: Route
    billing: Route
    engine: Any  # the outboxkit Engine that filled it (its repository reads rows back)

    def run(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        assert OUTBOXKIT.exists(), f"console script missing: {OUTBOXKIT} (pip install -e .)"
        return subprocess.run(
            [str(OUTBOXKIT), *args],
            check=False,
            cwd=ROOT,
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def main(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The same command in this process (``outboxkit.cli.main.main``): the checks that only
        vary filters use it, to keep the suite fast; each command also runs as a script."""
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args))
        return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())

    def json(self, *args: str) -> Any:
        result = self.main(*args, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def status_of(self, outbox_id: int) -> Status | None:
        row = self.engine.repository.get(self.orders, outbox_id)
        return None if row is None else row.status

    def dead_ids(self) -> list[int]:
        rows = self.engine.repository.list_by_status(self.orders, Status.DEAD, limit=100)
        return [r.id for r in rows]


@pytest.fixture(params=["postgres", "mysql"], ids=["pg", "mariadb"])
def filled(request: pytest.FixtureRequest, unique: str) -> Iterator[Filled]:
    db: sa.Engine = request.getfixturevalue(f"{request.param}_engine")
    url = db.url.render_as_string(hide_password=False)
    env = dict(os.environ, OPS_APP_DATABASE_URL=url, OPS_APP_SUFFIX=unique)
    saved = {k: os.environ.get(k) for k in ("OPS_APP_DATABASE_URL", "OPS_APP_SUFFIX")}
    os.environ.update(OPS_APP_DATABASE_URL=url, OPS_APP_SUFFIX=unique)
    engine = ops_app.build()
    try:
        routes = ops_app.fill(engine)
        yield Filled(url, env, routes["orders"], routes["billing"], engine)
    finally:
        with db.begin() as conn:
            for service in ops_app.services(unique):
                table = engine.routing.route_of_service(service).table
                conn.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        engine.repository.close()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_status_reports_counts_backlog_age_stuck_rows_retries_and_dead(filled: Filled) -> None:
    report = filled.json("status", APP)
    by_service = {s["service"]: s for s in report["services"]}
    orders, billing = by_service[filled.orders.service], by_service[filled.billing.service]
    assert orders["counts"] == {"pending": 1, "published": 0, "consumed": 4, "dead": 5}
    assert orders["dead"] == 5
    assert orders["oldest_pending_age_seconds"] is not None
    assert 0 <= orders["oldest_pending_age_seconds"] < 120
    assert orders["retry_histogram"]["1"] == 1
    assert billing["counts"]["published"] == 3
    assert billing["oldest_pending_age_seconds"] is None
    assert billing["stuck_published"] == 0  # published seconds ago: not past 300 s

    # a password in the URL is never printed: in the title (PostgreSQL trusts any password
    # here) nor in the error (MariaDB refuses it)
    with_password = filled.url.replace("://root@", "://root:s3cret@").replace(
        "://postgres@", "://postgres:s3cret@"
    )
    secret = filled.run("status", "--database-url", with_password, "--plain")
    assert "s3cret" not in secret.stdout + secret.stderr
    if secret.returncode == 0:
        assert secret.stdout.startswith("outboxkit status of ") and ":***@" in secret.stdout
    else:
        assert secret.returncode == 1 and "Access denied" in secret.stderr

    # without an APP: --database-url and --service; stuck past a redelivery time of 0 s
    plain = filled.run(
        "status",
        "--database-url",
        filled.url,
        "--service",
        filled.billing.service,
        "--redelivery-after",
        "0",
        "--plain",
    )
    assert plain.returncode == 0, plain.stderr
    lines = plain.stdout.splitlines()
    assert lines[0].startswith("outboxkit status of ")
    assert lines[1].split()[:6] == ["service", "table", "pending", "published", "consumed", "dead"]
    cells = lines[2].split()
    assert cells[:6] == [filled.billing.service, filled.billing.table, "0", "3", "0", "0"]
    assert cells[7] == "3"  # stuck published

    rich = filled.main("status", APP, "--service", filled.orders.service)
    assert rich.returncode == 0, rich.stderr
    assert filled.orders.table in rich.stdout and "oldest pending" in rich.stdout


def test_status_watch_refreshes_until_interrupted(filled: Filled) -> None:
    process = subprocess.Popen(
        [str(OUTBOXKIT), "status", APP, "--watch", "0.2", "--json"],
        cwd=ROOT,
        env=filled.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        first, second = process.stdout.readline(), process.stdout.readline()
        assert json.loads(first)["at"] < json.loads(second)["at"]
        process.send_signal(signal.SIGINT)
        _, errors = process.communicate(timeout=10)
        assert process.returncode == 0, errors
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_dlq_list_count_and_show_with_filters(filled: Filled) -> None:
    service = ("--service", filled.orders.service)
    listed = filled.json("dlq", "list", APP, *service)
    assert [r["event_type"] for r in listed["rows"]] == ["order.placed"] * 3 + [
        "order.cancelled"
    ] * 2
    assert all(r["updated_at"].endswith("Z") for r in listed["rows"])
    assert listed["next_after"] is None

    bank = filled.json("dlq", "list", APP, *service, "--error", "bank")
    assert [r["message_key"] for r in bank["rows"]] == ["c-cancel", "c-cancel"]
    assert filled.json("dlq", "count", APP, *service, "--event-type", "order.placed")["dead"] == 3
    assert filled.json("dlq", "count", APP, *service, "--key", "c-poison")["dead"] == 3
    assert filled.json("dlq", "count", APP, *service, "--since", "1h")["dead"] == 5
    assert filled.json("dlq", "count", APP, *service, "--until", "1h")["dead"] == 0

    page = filled.json("dlq", "list", APP, *service, "--limit", "2")
    assert len(page["rows"]) == 2 and page["next_after"] == page["rows"][1]["id"]
    rest = filled.json("dlq", "list", APP, *service, "--after", str(page["next_after"]))
    assert len(rest["rows"]) == 3

    plain = filled.run("dlq", "list", APP, *service, "--plain", "--error", "poison pill 2")
    assert plain.returncode == 0, plain.stderr
    header, row = plain.stdout.splitlines()[1:3]
    assert header.split() == [
        *("id", "event", "id", "type", "key", "retries", "created", "died", "last", "error")
    ]
    assert row.split()[2:4] == ["order.placed", "c-poison"] and row.endswith("poison pill 2")

    dead_id = listed["rows"][0]["id"]
    shown = filled.json("dlq", "show", str(dead_id), APP, *service)
    assert shown["status"] == "dead" and shown["payload"]["payload"]["poison"] is True
    missing = filled.run("dlq", "show", "987654", APP, *service)
    assert missing.returncode == 1 and "no row with id 987654" in missing.stderr


def _at_a_terminal(filled: Filled, columns: int, *args: str) -> str:
    """What the console script writes to a terminal ``columns`` wide (a pty, no COLUMNS),
    without colour codes."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {k: v for k, v in filled.env.items() if k not in ("COLUMNS", "LINES")}
    try:
        process = subprocess.Popen(
            [str(OUTBOXKIT), *args],
            cwd=ROOT,
            env={**env, "TERM": "xterm"},
            stdin=subprocess.DEVNULL,
            stdout=follower,
            stderr=subprocess.DEVNULL,
        )
    finally:
        os.close(follower)
    chunks = []
    try:
        while chunk := os.read(leader, 65536):
            chunks.append(chunk)
    except OSError:  # EIO: the process closed the terminal
        pass
    finally:
        os.close(leader)
    assert process.wait(timeout=60) == 0
    text = b"".join(chunks).decode().replace("\r\n", "\n")
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def test_dlq_list_at_80_columns_keeps_each_event_id_on_one_line(filled: Filled) -> None:
    service = ("--service", filled.orders.service)
    event_ids = [r["event_id"] for r in filled.json("dlq", "list", APP, *service)["rows"]]
    assert len(event_ids) == 5
    narrow = dict(filled.env, COLUMNS="80")
    outputs = {
        "rich, COLUMNS=80": subprocess.run(
            [str(OUTBOXKIT), "dlq", "list", APP, *service],
            cwd=ROOT,
            env=narrow,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout,
        "plain, COLUMNS=80": subprocess.run(
            [str(OUTBOXKIT), "dlq", "list", APP, *service, "--plain"],
            cwd=ROOT,
            env=narrow,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout,
        "rich, an 80-column terminal": _at_a_terminal(filled, 80, "dlq", "list", APP, *service),
        "plain, an 80-column terminal": _at_a_terminal(
            filled, 80, "dlq", "list", APP, *service, "--plain"
        ),
    }
    for how, output in outputs.items():
        lines = output.splitlines()
        # every event id whole on one line, the ids the operator looks for ...
        for event_id in event_ids:
            assert sum(event_id in line for line in lines) == 1, f"{how}:\n{output}"
        # ... and no line wider than the terminal, so it never wraps (the title names the
        # table, whose length the test does not choose)
        table = [line for line in lines if not line.startswith("dead rows of ")]
        assert max(len(line.rstrip()) for line in table) <= 80, f"{how}:\n{output}"
        assert "order.cancelled" in output and "permanent" in output, f"{how}:\n{output}"


def test_dlq_requeue_by_positional_ids_reports_ids_that_matched_nothing(filled: Filled) -> None:
    first, second, *_ = filled.dead_ids()

    # the form of the issue: ids after the options, under the old command name
    legacy = filled.run("dead", APP, "requeue", "--service", filled.orders.service, str(first))
    assert legacy.returncode == 0, legacy.stderr
    assert "requeued 1 of 1" in legacy.stdout
    assert filled.status_of(first) is Status.PENDING

    unknown = filled.run("dlq", "requeue", "987654", str(second), APP, "--service")
    assert unknown.returncode == 2  # --service without a value: usage

    partly = filled.run(
        "dlq", "requeue", "987654", str(second), APP, "--service", filled.orders.service
    )
    assert partly.returncode == 1
    assert "requeued 1 of 1" in partly.stdout
    assert "no dead row with id 987654" in partly.stderr
    assert filled.status_of(second) is Status.PENDING
    row = filled.engine.repository.get(filled.orders, second)
    assert row.retry_count == 0 and row.next_retry_at is not None

    again = filled.main("dlq", "requeue", str(second), APP, "--service", filled.orders.service)
    assert again.returncode == 1 and f"no dead row with id {second}" in again.stderr


def test_bulk_requeue_needs_all_and_confirmation_and_runs_in_batches(filled: Filled) -> None:
    service = ("--service", filled.orders.service)
    everything = filled.run("dlq", "requeue", APP, *service)
    assert everything.returncode == 2 and "--all" in everything.stderr
    unconfirmed = filled.main("dlq", "requeue", APP, *service, "--all")
    assert unconfirmed.returncode == 2 and "--yes" in unconfirmed.stderr
    assert len(filled.dead_ids()) == 5

    dry = filled.json("dlq", "requeue", APP, *service, "--error", "poison", "--dry-run")
    assert dry == {**dry, "matched": 3, "changed": 0, "dry_run": True}
    assert len(filled.dead_ids()) == 5

    by_filter = filled.json("dlq", "requeue", APP, *service, "--error", "poison", "--yes")
    assert by_filter["changed"] == 3
    assert len(filled.dead_ids()) == 2

    rest = filled.run("dlq", "requeue", APP, *service, "--all", "--yes", "--batch-size", "1")
    assert rest.returncode == 0, rest.stderr
    assert "requeued 2 of 2" in rest.stdout
    assert filled.dead_ids() == []
    counts = filled.engine.repository.count_by_status(filled.orders)
    assert counts[Status.PENDING] == 6 and counts[Status.CONSUMED] == 4


def test_dlq_purge_deletes_only_the_matching_dead_rows(filled: Filled) -> None:
    service = ("--service", filled.orders.service)
    purged = filled.json("dlq", "purge", APP, *service, "--event-type", "order.cancelled", "--yes")
    assert purged["changed"] == 2
    remaining = filled.dead_ids()
    assert len(remaining) == 3
    with_id = filled.main("dlq", "purge", str(remaining[0]), APP, *service, "--plain")
    assert with_id.returncode == 0 and "purged 1 of 1" in with_id.stdout
    assert filled.status_of(remaining[0]) is None
    assert filled.engine.repository.count_by_status(filled.orders)[Status.CONSUMED] == 4


def test_purge_deletes_old_consumed_rows_and_dead_ones_only_when_asked(filled: Filled) -> None:
    dry = filled.json("purge", APP, "--older-than", "0s", "--dry-run")
    consumed = [r for r in dry["results"] if r["service"] == filled.orders.service]
    assert consumed == [{**consumed[0], "status": "consumed", "matched": 4, "deleted": 0}]
    assert filled.engine.repository.count_by_status(filled.orders)[Status.CONSUMED] == 4

    kept = filled.json("purge", APP, "--older-than", "1d")
    assert all(r["deleted"] == 0 for r in kept["results"])

    done = filled.run(
        "purge",
        "--database-url",
        filled.url,
        "--service",
        filled.orders.service,
        "--older-than",
        "0",
        "--dead-older-than",
        "0",
        "--batch-size",
        "2",
        "--plain",
    )
    assert done.returncode == 0, done.stderr
    counts = filled.engine.repository.count_by_status(filled.orders)
    assert counts == {Status.PENDING: 1, Status.PUBLISHED: 0, Status.CONSUMED: 0, Status.DEAD: 0}
    assert "deleted" in done.stdout.splitlines()[1]


def test_usage_and_runtime_errors_are_one_clear_line_with_documented_exit_codes(
    filled: Filled,
) -> None:
    unknown = filled.run("dlq", "list", APP, "--service", "nope")
    assert unknown.returncode == 2
    assert "unknown service 'nope'" in unknown.stderr and filled.orders.service in unknown.stderr
    assert "Traceback" not in unknown.stderr

    no_table = filled.main("status", "--database-url", filled.url, "--service", "nope-nothing")
    assert no_table.returncode == 1
    assert "no table nope_nothing_outbox_messages" in no_table.stderr
    assert "Traceback" not in no_table.stderr

    loud = filled.run("status", APP, "--log-level", "LOUD")
    assert loud.returncode == 2 and "invalid log level 'LOUD'" in loud.stderr

    two_services = filled.main("dlq", "count", APP)
    assert two_services.returncode == 2 and "name one service" in two_services.stderr


def test_an_app_that_is_not_an_outboxkit_engine_is_named_and_never_called(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["status", "tests.support.ops_app:db"]) == 2
    assert "is a SQLAlchemy Engine, not an outboxkit Engine" in capsys.readouterr().err

    assert main(["dlq", "list", "tests.support.ops_app:handler_function"]) == 2
    assert "not called" in capsys.readouterr().err  # the handler raises if it is called

    assert main(["status", "tests.support.ops_app:nothing_here"]) == 2
    assert "has no attribute 'nothing_here'" in capsys.readouterr().err
    assert main(["status", "tests.no_such_module:engine"]) == 2
    assert "cannot import module 'tests.no_such_module'" in capsys.readouterr().err
    assert main(["status"]) == 2
    assert "APP (module:attribute) or --database-url" in capsys.readouterr().err


def test_log_level_is_validated_after_the_subcommand_and_version_is_printed() -> None:
    version = subprocess.run(
        [str(OUTBOXKIT), "--version"], check=False, capture_output=True, text=True, timeout=60
    )
    assert version.returncode == 0 and version.stdout.startswith("outboxkit ")
    with pytest.raises(SystemExit) as usage:
        main(["status", "tests.support.ops_app:build", "--log-level", "LOUD"])
    assert usage.value.code == 2


def test_rows_lists_the_pending_backlog_and_stuck_published_rows(filled: Filled) -> None:
    pending = filled.json("rows", APP, "--service", filled.orders.service)
    assert [(r["status"], r["retry_count"], r["message_key"]) for r in pending["rows"]] == [
        ("pending", 1, "c-flaky")
    ]
    billing = ("--service", filled.billing.service)
    assert filled.json("rows", APP, *billing, "--stuck")["rows"] == []  # not past 300 s yet
    stuck = filled.run("rows", APP, *billing, "--stuck", "--older-than", "0", "--plain")
    assert stuck.returncode == 0, stuck.stderr
    lines = stuck.stdout.splitlines()
    assert (
        lines[0]
        == f"stuck published rows of {filled.billing.table} (service {filled.billing.service})"
    )
    assert [line.split()[2] for line in lines[2:]] == ["invoice.sent"] * 3
    consumed = filled.json("rows", APP, "--service", filled.orders.service, "--status", "consumed")
    assert len(consumed["rows"]) == 4


def test_bulk_requeue_at_a_terminal_asks_first_and_a_no_changes_nothing(filled: Filled) -> None:
    service = ("--service", filled.orders.service)

    def answer(reply: str) -> subprocess.CompletedProcess[str]:
        leader, follower = pty.openpty()  # stdin is a terminal: the command may ask
        try:
            os.write(leader, reply.encode() + b"\n")
            return subprocess.run(
                [str(OUTBOXKIT), "dlq", "requeue", APP, "--error", "bank", *service],
                check=False,
                cwd=ROOT,
                env=filled.env,
                stdin=follower,
                capture_output=True,
                text=True,
                timeout=60,
            )
        finally:
            os.close(leader)
            os.close(follower)

    refused = answer("n")
    assert refused.returncode == 1 and "cancelled; nothing changed" in refused.stderr
    assert "requeue 2 dead rows of" in refused.stdout  # the question names the count
    assert len(filled.dead_ids()) == 5

    accepted = answer("y")
    assert accepted.returncode == 0, accepted.stderr
    assert "requeued 2 of 2" in accepted.stdout
    assert len(filled.dead_ids()) == 3
