"""Durations and moments on the command line: absurd ones are refused in one line with exit
2, never a crash (issue #18, row 9: ``--since 99999999999d`` overflowed the date
arithmetic)."""

from __future__ import annotations

import argparse
import contextlib
import io
from pathlib import Path

import pytest

from outboxkit.backends import SqlRepository
from outboxkit.cli.durations import parse_duration, parse_moment
from outboxkit.cli.main import main
from outboxkit.routing import Route


@pytest.mark.parametrize("text", ["99999999999d", "5300000w", "9" * 400, "3153600001"])
def test_an_absurd_duration_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="at most 36500d"):
        parse_duration(text)
    with pytest.raises(argparse.ArgumentTypeError, match="at most 36500d"):
        parse_moment(text)


@pytest.mark.parametrize("text", ["2h\nDROP", "7d 2h", "0001-01-01T00:00:00+01:00", "nan", "inf"])
def test_a_malformed_moment_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_moment(text)


def test_the_longest_duration_is_taken() -> None:
    assert parse_duration("36500d") == 36500 * 86400.0
    assert parse_duration(" 90s ") == 90.0


@pytest.mark.parametrize("option", ["--since", "--until"])
def test_the_cli_refuses_an_absurd_since_with_one_error_line(tmp_path: Path, option: str) -> None:
    # Given a database with an outbox table
    url = f"sqlite:///{tmp_path}/outbox.db"
    repository = SqlRepository.from_url(url)
    repository.create_schema([Route.by_convention("billing")])
    repository.close()
    out, err = io.StringIO(), io.StringIO()
    # When asked for the rows that died in the last 99999999999 days
    with (
        contextlib.redirect_stdout(out),
        contextlib.redirect_stderr(err),
        pytest.raises(SystemExit) as exited,
    ):
        main(
            ["dlq", "count", "--database-url", url, "--service", "billing", option, "99999999999d"]
        )
    # Then: a usage error naming the limit, no traceback
    assert exited.value.code == 2
    errors = [line for line in err.getvalue().splitlines() if line.startswith("outboxkit")]
    assert len(errors) == 1
    assert "at most 36500d" in errors[0]
    assert "Traceback" not in err.getvalue()
