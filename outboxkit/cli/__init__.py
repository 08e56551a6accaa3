"""The ``outboxkit`` command: the worker, migrations, the demos and the operator commands.

:mod:`~outboxkit.cli.main` builds the parser and dispatches; each command lives in a module
of its own (``status``, ``rows``, ``dlq``, ``purge``, ``dev_kafka``, the demos), with what
they share (loading the app, resolving routes, output, logging) beside them.

Exit codes: 0 ok, 1 runtime failure (database unreachable, missing table, ids that matched
nothing), 2 usage (bad arguments, an APP that is not an outboxkit Engine), 130 interrupted.
"""

from outboxkit.cli.main import main

__all__ = ["main"]
