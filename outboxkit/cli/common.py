"""What every operator command shares: its errors and exit codes."""

from __future__ import annotations

#: Exit codes of every command (documented in ``docs/operations.md``).
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """The command line asks for something impossible (exit 2): wrong service, bad APP."""


class CommandFailedError(Exception):
    """The command ran and could not do what was asked (exit 1): no such table, ids that
    matched nothing, a refused confirmation."""
