"""Text stored from outside reaches the terminal as text, never as control sequences (issue
#18, row 8).

A ``last_error`` can hold what a receipt's sender or a driver wrote; a message key what a
producer chose. Given such text with ESC and BEL sequences (retitle the window, clear the
screen, colours), when an operator lists or shows dead rows, then every control character
is printed escaped, in the plain and the rich table, in ``dlq show``, in an error line and
in the worker's log lines, and ``--json`` stays valid JSON that gives the text back
unchanged.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from outboxkit.backends import SqlRepository
from outboxkit.cli.logs import LOG_FORMAT, TerminalFormatter
from outboxkit.cli.main import main
from outboxkit.messages import PublishRequest
from outboxkit.publish.publisher import Publisher
from outboxkit.routing import Route, Routing, ServiceCatalog

#: Retitle the window, clear the screen, ring, colour red (CSI in its 8-bit form too).
HOSTILE = "boom\x1b]0;pwned\x07\x1b[2J\x1b[H\x9b31mred\x1b[0m"
CONTROL = ("\x1b", "\x07", "\x9b")


@pytest.fixture
def dead_row(tmp_path: Path) -> Iterator[tuple[str, Route, int]]:
    url = f"sqlite:///{tmp_path}/outbox.db"
    catalog = ServiceCatalog()
    catalog.configure("billing")
    routing = Routing(catalog)
    route = routing.register("invoice.sent", "billing")
    repository = SqlRepository.from_url(url)
    repository.create_schema([route])
    request = PublishRequest(event_type="invoice.sent", message_key=f"k{HOSTILE}", payload={})
    Publisher(repository, routing).publish(request)
    row = repository.get_by_event_id(route, request.event_id)
    assert row is not None
    table = repository.table(route)
    with repository.engine.begin() as conn:
        conn.execute(sa.update(table).values(status="dead", last_error=HOSTILE))
    repository.close()
    yield url, route, row.id


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


@pytest.mark.parametrize("renderer", ["--plain", "rich"])
def test_dlq_list_prints_control_characters_escaped(
    dead_row: tuple[str, Route, int], renderer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, route, _ = dead_row
    monkeypatch.setenv("COLUMNS", "400")  # wide enough that nothing is cut
    extra = [renderer] if renderer.startswith("-") else []
    result = _run("dlq", "list", "--database-url", url, "--service", route.service, *extra)
    assert result.returncode == 0, result.stderr
    for char in CONTROL:
        assert char not in result.stdout + result.stderr
    assert "boom\\x1b]0;pwned\\x07\\x1b[2J" in result.stdout


def test_dlq_show_prints_control_characters_escaped(dead_row: tuple[str, Route, int]) -> None:
    url, route, outbox_id = dead_row
    result = _run("dlq", "show", str(outbox_id), "--database-url", url, "--service", route.service)
    assert result.returncode == 0, result.stderr
    for char in CONTROL:
        assert char not in result.stdout
    assert "\\x9b31mred" in result.stdout


@pytest.mark.parametrize("action", ["list", "show"])
def test_dlq_json_stays_valid_and_gives_the_text_back(
    dead_row: tuple[str, Route, int], action: str
) -> None:
    url, route, outbox_id = dead_row
    ids = [str(outbox_id)] if action == "show" else []
    result = _run("dlq", action, *ids, "--database-url", url, "--service", route.service, "--json")
    assert result.returncode == 0, result.stderr
    for char in CONTROL:
        assert char not in result.stdout
    document = json.loads(result.stdout)
    row = document if action == "show" else document["rows"][0]
    assert row["last_error"] == HOSTILE


def test_an_error_line_escapes_control_characters_and_masks_passwords() -> None:
    result = _run("demo", "--broker-url", f"amqp://app:s3cret@mq/{HOSTILE}")
    assert result.returncode == 2
    assert result.stderr.startswith("outboxkit: error: unknown broker URL")
    assert "s3cret" not in result.stderr
    for char in CONTROL:
        assert char not in result.stderr


def test_a_worker_log_line_escapes_control_characters() -> None:
    record = logging.LogRecord(
        "outboxkit.consume", logging.WARNING, __file__, 1, "event %s failed", (HOSTILE,), None
    )
    line = TerminalFormatter(LOG_FORMAT).format(record)
    for char in CONTROL:
        assert char not in line
    assert line.endswith("event boom\\x1b]0;pwned\\x07\\x1b[2J\\x1b[H\\x9b31mred\\x1b[0m failed")
