"""Typing checked from the user's side: mypy --strict on a typed application and snippets.

One mypy run (through ``mypy.api.run``) checks ``tests/support/sample_app.py`` and every
snippet below; each snippet states the error mypy must report for it, so a change that
makes the handler types lax (or wrongly strict) fails here. The sample application is also
run for real on SQLite and the in-process broker.
"""

from __future__ import annotations

import sys
import textwrap
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.support import sample_app
from tests.support.paths import ROOT

SAMPLE = ROOT / "tests" / "support" / "sample_app.py"

PRELUDE = """\
from __future__ import annotations

import dataclasses
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session
from typing_extensions import assert_type

from outboxkit import Engine, Event, PublishRequest


@dataclasses.dataclass
class OrderPlaced:
    order_id: int


def check(engine: Engine, db: sa.Engine) -> None:
"""

#: name -> (body inside ``check``, text mypy must report for it; "" means no error).
SNIPPETS: dict[str, tuple[str, str]] = {
    "wrong_parameter_types": (
        """
        @engine.register_handler("a")
        def handler(event: int, connection: str) -> None: ...
        """,
        'Value of type variable "TransactionalHandlerT" of function cannot be '
        '"Callable[[int, str], None]"',
    ),
    "transactional_without_connection": (
        """
        @engine.register_handler("a")
        def handler(event: Event[Any]) -> None: ...
        """,
        'Value of type variable "TransactionalHandlerT" of function cannot be '
        '"Callable[[Event[Any]], None]"',
    ),
    "side_effect_with_connection": (
        """
        @engine.register_handler("a", transactional=False)
        def handler(event: Event[Any], connection: Connection) -> None: ...
        """,
        'Value of type variable "SideEffectHandlerT" of function cannot be '
        '"Callable[[Event[Any], Connection], None]"',
    ),
    "direct_registration_of_wrong_shape": (
        """
        def handler(event: Event[Any], connection: Connection, extra: int) -> None: ...
        engine.register_handler("a", handler)
        """,
        "No overload variant matches argument types "
        '"str", "Callable[[Event[Any], Connection, int], None]"',
    ),
    "payload_attribute_that_does_not_exist": (
        """
        @engine.register_handler("a")
        def handler(event: Event[OrderPlaced], connection: Connection) -> None:
            print(event.payload.no_such_field)
        """,
        '"OrderPlaced" has no attribute "no_such_field"',
    ),
    "engine_instead_of_connection": (
        """
        engine.publish(PublishRequest(event_type="a", payload={}), connection=db)
        """,
        'Argument "connection" to "publish" of "Engine" has incompatible type "Engine"; '
        'expected "Connection | Session | None"',
    ),
    "decorated_function_keeps_its_type": (
        """
        @engine.register_handler("a")
        def handler(event: Event[OrderPlaced], connection: Connection) -> None:
            assert_type(event.payload, OrderPlaced)
        reveal_type(handler)
        """,
        'Revealed type is "def (event: outboxkit.messages.Event[__main__.OrderPlaced]',
    ),
    "session_handler_is_accepted_and_keeps_its_type": (
        """
        @engine.register_handler("a")
        def handler(event: Event[OrderPlaced], session: Session) -> None:
            assert_type(event.payload, OrderPlaced)
        def direct(event: Event[OrderPlaced], session: Session) -> None: ...
        engine.register_handler("b", direct)
        reveal_type(handler)
        """,
        'Revealed type is "def (event: outboxkit.messages.Event[__main__.OrderPlaced], '
        "session: sqlalchemy.orm.session.Session)",
    ),
    "side_effect_with_session": (
        """
        @engine.register_handler("a", transactional=False)
        def handler(event: Event[Any], session: Session) -> None: ...
        """,
        'Value of type variable "SideEffectHandlerT" of function cannot be '
        '"Callable[[Event[Any], Session], None]"',
    ),
    "plain_event_is_any_payload": (
        """
        def handler(event: Event, connection: Connection) -> None:
            assert_type(event.payload, Any)
        def mail(event: Event[OrderPlaced]) -> None: ...
        engine.register_handler("a", handler)
        engine.register_handler("b", mail, transactional=False)
        """,
        "",
    ),
}


@pytest.fixture(scope="module")
def mypy_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """mypy --strict output per checked file, by name (``sample_app`` and each snippet's),
    from one run for all of them. Every line mypy prints must name one of those files: a
    line it attributes to another path fails here, rather than leaving a file's report
    empty (which would read as "no error")."""
    from mypy import api

    work = tmp_path_factory.mktemp("user-typing")
    config = work / "mypy.ini"
    config.write_text("[mypy]\nstrict = True\nwarn_unreachable = True\n")
    names = {SAMPLE.resolve(): "sample_app"}
    for name, (body, _expected) in SNIPPETS.items():
        path = work / f"{name}.py"
        path.write_text(PRELUDE + textwrap.indent(textwrap.dedent(body), "    "))
        names[path.resolve()] = name
    files = [str(path) for path in names]
    # mypy raises the interpreter's recursion limit for its own run and leaves it raised:
    # tests that count on Python's default limit (JSON nested too deep) would then pass
    # or fail by the order the tests ran in.
    limit = sys.getrecursionlimit()
    try:
        stdout, stderr, _status = api.run(
            [
                "--config-file",
                str(config),
                # A fresh cache: mypy does not report again the errors of modules it finds
                # fresh in a cache, and these snippets are the same modules every run.
                "--cache-dir",
                str(work / "cache"),
                "--no-error-summary",
                "--show-absolute-path",
                *files,
            ]
        )
    finally:
        sys.setrecursionlimit(limit)
    assert not stderr, stderr
    by_name: dict[str, str] = {}
    for line in stdout.splitlines():
        path = Path(line.split(":", 1)[0]).resolve()
        assert path in names, f"mypy reported on {path}, a file it was not given:\n{stdout}"
        by_name[names[path]] = by_name.get(names[path], "") + line + "\n"
    return by_name


def test_the_report_attributes_each_error_to_its_own_snippet(
    mypy_report: dict[str, str],
) -> None:
    # Every snippet that must fail has its error under its own name (not lost to a path
    # mismatch), and nothing else reported
    failing = {name for name, (_body, expected) in SNIPPETS.items() if expected}
    assert set(mypy_report) == failing, sorted(mypy_report)


def test_a_typed_sample_application_passes_mypy_strict(mypy_report: dict[str, str]) -> None:
    assert mypy_report.get("sample_app", "") == ""


@pytest.mark.parametrize("name", sorted(SNIPPETS))
def test_mypy_reports_exactly_the_expected_error_of_each_snippet(
    mypy_report: dict[str, str], name: str
) -> None:
    output = mypy_report.get(name, "")
    expected = SNIPPETS[name][1]
    if not expected:
        assert output == ""
        return
    assert expected.replace("__main__.", f"{name}.") in output, output
    errors = [line for line in output.splitlines() if ": error:" in line]
    assert len(errors) <= 1, output


@pytest.fixture
def sample_db(sqlite_engine: sa.Engine) -> Iterator[sa.Engine]:
    sample_app.metadata.create_all(sqlite_engine)
    sample_app.sent_mail.clear()
    yield sqlite_engine


def test_the_sample_application_runs_and_its_handlers_get_typed_payloads(
    sample_db: sa.Engine,
) -> None:
    # Given the sample application on SQLite and the in-process broker
    engine = sample_app.build(sample_db, f"s{uuid.uuid4().hex[:8]}")
    engine.create_schema()
    order = sample_app.sample_order()
    # When an order is placed and the engine steps until both events are handled
    sample_app.place_order(engine, sample_db, order)
    for _ in range(20):
        if not engine.run_once(receive_timeout=0.05) and sample_app.sent_mail:
            break
    # Then the transactional handler summed Decimals from the decoded dataclass
    with sample_db.connect() as conn:
        rows = conn.execute(sa.select(sample_app.shipments)).all()
    assert [(r.order_id, Decimal(r.total)) for r in rows] == [
        (str(order.order_id), Decimal("19.90"))
    ]
    # And the side-effect handler got an attrs instance
    assert sample_app.sent_mail == [sample_app.MailRequested(to="a@example.com", subject="thanks")]
    engine.stop(timeout=5)
