"""``--help`` of every command is plain text written for an operator at a terminal.

Help texts used to be module docstrings, so reST markup (literal quotes, roles) and
implementation notes reached the terminal; and an option without help hid its default.
"""

from __future__ import annotations

import argparse
import re

import pytest

from outboxkit.cli.main import build_parser, main

#: Markup of reST or Markdown that means nothing in a terminal.
MARKUP = re.compile(
    r"``"  # reST literal
    r"|:[a-z]+(?::[a-z]+)?:`"  # reST role (:mod:`x`, :py:class:`x`)
    r"|`"  # any backquote: Markdown code, a reST role's leftover
    r"|^\s*\.\. "  # reST directive
    r"|\*\*",  # bold
    re.MULTILINE,
)


def _commands() -> list[str]:
    """Every subcommand name and alias the parser knows."""
    parser = build_parser()
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert len(subparsers) == 1
    return sorted(subparsers[0].choices)


def _help(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as done:
        main([*argv, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


def test_every_help_text_is_plain_text_without_markup(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    commands = _commands()
    assert {"worker", "status", "dlq", "dead", "health", "dev-kafka"} <= set(commands)
    texts = {"outboxkit": _help(capsys)} | {c: _help(capsys, c) for c in commands}

    marked = {
        name: sorted({m.group(0) for m in MARKUP.finditer(text)})
        for name, text in texts.items()
        if MARKUP.search(text)
    }
    assert marked == {}, "\n\n".join(texts[name] for name in marked)


def test_the_top_level_help_names_every_command_and_the_exit_codes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = _help(capsys)
    assert "Exit codes: 0 ok, 1 runtime failure, 2 usage error, 130" in text
    commands = (
        "worker",
        "migrate",
        "status",
        "rows",
        "dlq",
        "purge",
        "health",
        "demo",
        "dev-kafka",
    )
    for command in commands:
        assert command in text


def test_worker_stop_timeout_says_what_it_bounds_and_its_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = " ".join(_help(capsys, "worker").split())
    option = re.search(r"--stop-timeout SECONDS (.*?) --", text)
    assert option is not None, text
    assert "in-flight handlers" in option.group(1) and "(default 30)" in option.group(1)
    # the description says what each signal does
    assert "second signal exits at once with 130" in text


def test_status_help_describes_the_report_for_an_operator_not_the_implementation(
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = " ".join(_help(capsys, "status").split())
    for column in ("pending", "published", "consumed", "dead", "oldest pending", "stuck"):
        assert column in text
    for option in ("--watch", "--json", "--redelivery-after", "--database-url"):
        assert option in text
    for note in ("KeyboardInterrupt", "PyMySQL", "driver connection", "half-read"):
        assert note not in text
