"""The one scrubbing path (:mod:`outboxkit.observability.logs`): what a value can reach in a
driver's error, and what is left of it after :func:`scrub_error` (issue #18, item 4).

Against the real servers, with engines created the usual way (parameters not hidden):
PostgreSQL through psycopg2 (``DETAIL``, ``LINE`` echo, quoted values), MariaDB through
PyMySQL (``Duplicate entry '...'``) and SQLite.
"""

from __future__ import annotations

import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path

import pydantic
import pytest
import sqlalchemy as sa

from outboxkit.observability.logs import (
    describe_error,
    describe_validation,
    printable,
    scrub_error,
    value_kind,
)

CARD = "4111-1111-1111-1111"


@pytest.fixture(params=["postgres", "mysql", "sqlite"])
def cards(
    request: pytest.FixtureRequest, unique: str, tmp_path: Path
) -> Iterator[tuple[sa.Engine, sa.Table]]:
    if request.param == "sqlite":  # the usual way, not outboxkit's create_sqlite_engine
        db = sa.create_engine(f"sqlite:///{tmp_path}/cards.db")
    else:
        db = request.getfixturevalue(f"{request.param}_engine")
    assert not db.hide_parameters
    table = sa.Table(
        f"scrub_{unique}",
        sa.MetaData(),
        sa.Column("card", sa.String(40), primary_key=True),
        sa.Column("n", sa.Integer),
        sa.CheckConstraint("n < 100", name=f"scrub_{unique}_small"),
    )
    table.create(db)
    with db.begin() as conn:
        conn.execute(sa.insert(table).values(card=CARD))
    yield db, table
    table.drop(db)


def _failure(db: sa.Engine, statement: sa.Executable | str, **params: object) -> BaseException:
    with db.connect() as conn:
        try:
            if isinstance(statement, str):
                conn.execute(sa.text(statement), params)
            else:
                conn.execute(statement, params)
        except sa.exc.DBAPIError as exc:
            return exc
    raise AssertionError("the statement did not fail")


def test_a_duplicate_key_error_names_its_constraint_never_the_key(
    cards: tuple[sa.Engine, sa.Table],
) -> None:
    db, table = cards
    exc = _failure(db, sa.insert(table), card=CARD)
    assert CARD in "".join(traceback.format_exception(exc))  # what the driver says

    scrub_error(exc)

    rendered = "".join(traceback.format_exception(exc))  # causes and their text included
    assert CARD not in rendered
    assert "IntegrityError" in rendered and f"INSERT INTO {table.name}" in rendered
    described = describe_error(exc)
    assert CARD not in described
    assert described.startswith("IntegrityError: ")


@pytest.mark.postgres
def test_a_value_postgres_quotes_and_echoes_is_masked(postgres_engine: sa.Engine) -> None:
    # Given psycopg2, which writes parameters into the statement it sends, and PostgreSQL,
    # which quotes the refused text and echoes the statement in a LINE line
    exc = _failure(postgres_engine, "SELECT CAST(:card AS integer)", card=CARD)
    assert "LINE 1" in str(exc)

    scrub_error(exc)

    text = str(exc)
    assert 'invalid input syntax for type integer: "***"' in text
    assert "LINE 1" not in text
    assert CARD not in "".join(traceback.format_exception(exc))


def test_a_literal_in_the_statement_text_is_masked(cards: tuple[sa.Engine, sa.Table]) -> None:
    db, table = cards
    exc = _failure(db, f"INSERT INTO {table.name} (card, n) VALUES ('{CARD}', 1)")
    scrub_error(exc)
    rendered = "".join(traceback.format_exception(exc))
    assert CARD not in rendered
    assert f"INSERT INTO {table.name} (card, n) VALUES ('***', 1)" in rendered


def test_a_check_constraint_is_named_without_the_failing_row(
    cards: tuple[sa.Engine, sa.Table],
) -> None:
    db, table = cards
    exc = _failure(db, sa.insert(table), card=CARD + "-2", n=4111)
    scrub_error(exc)
    rendered = "".join(traceback.format_exception(exc))
    assert "4111" not in rendered  # PostgreSQL's DETAIL: Failing row contains (...)
    assert f"scrub_{table.name.split('_')[1]}_small" in rendered or "CHECK" in rendered


@pytest.mark.parametrize(
    ("message", "scrubbed"),
    [
        ("Duplicate entry 'O'Brien' for key 'PRIMARY'", "Duplicate entry '***' for key 'PRIMARY'"),
        ('invalid input syntax for type uuid: "a"b"', 'invalid input syntax for type uuid: "***"'),
        ("Table 'test.cards' doesn't exist", "Table 'test.cards' doesn't exist"),
        ('value "99999999999" is out of range', 'value "***" is out of range'),
        ("unterminated 'quote", "unterminated '***'"),
    ],
)
def test_a_quoted_value_is_masked_whatever_quotes_it_holds(message: str, scrubbed: str) -> None:
    class DriverError(Exception):
        pass

    exc = sa.exc.DBAPIError("SELECT * FROM cards WHERE card = %s", (CARD,), DriverError(message))
    scrub_error(exc)
    assert str(exc.orig) == scrubbed


def test_a_password_in_a_url_in_any_error_is_masked() -> None:
    exc = RuntimeError("cannot reach redis://:s3cret@cache:6379/0")
    assert describe_error(exc) == "RuntimeError: cannot reach redis://:***@cache:6379/0"


class Card(pydantic.BaseModel):
    token: uuid.UUID
    n: int


def test_a_validation_error_is_described_by_field_without_the_input() -> None:
    with pytest.raises(pydantic.ValidationError) as raised:
        Card.model_validate({"token": CARD, "n": CARD})
    summary = describe_validation(raised.value)
    assert summary == ("token: Input should be a valid UUID; n: Input should be a valid integer")
    assert describe_validation(ValueError(CARD)) is None
    assert CARD not in describe_error(raised.value)


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (CARD, "a string of 19 characters"),
        ("x", "a string of 1 character"),
        (4111, "an integer"),
        (True, "a boolean"),
        (None, "null"),
        ([1, 2], "an array of 2 items"),
        ({"card": CARD}, "an object of 1 member"),
    ],
)
def test_a_value_is_described_by_kind(value: object, kind: str) -> None:
    assert value_kind(value) == kind


def test_terminal_control_characters_are_escaped() -> None:
    hostile = "boom\x1b]0;pwned\x07\x1b[2J\x9b31m\r\nnext\tcol\u2028"
    assert printable(hostile) == "boom\\x1b]0;pwned\\x07\\x1b[2J\\x9b31m\\x0d\\nnext\tcol\\u2028"
    assert printable("a\nb", newlines=True) == "a\nb"
