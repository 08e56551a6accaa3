"""The operator commands of the ``outboxkit`` CLI: ``status``, ``dlq`` (alias ``dead``) and
``purge``, plus what every command shares (loading the app, resolving routes, output,
logging). :mod:`outboxkit.cli` stays the entry module and only wires their parsers in.

Exit codes: 0 ok, 1 runtime failure (database unreachable, missing table, ids that matched
nothing), 2 usage (bad arguments, an APP that is not an outboxkit Engine), 130 interrupted.
"""

from outboxkit.cli_commands.common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    CommandFailedError,
    UsageError,
)

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "CommandFailedError", "UsageError"]
