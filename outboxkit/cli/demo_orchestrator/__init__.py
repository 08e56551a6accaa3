"""``outboxkit demo --scenario orchestrator``: a command flow across two services and databases.

The orchestrator flow of the InfiniteScribe seed, in our words. An API writes a command and
its ``Command.Received`` event in one transaction; then, each step a handler that commits
its writes together with the events it publishes:

1. the orchestrator maps the command to the domain fact ``Character.Requested``;
2. on that fact it opens a task record (``RUNNING``) and dispatches the capability task
   ``Character.Generation.Requested`` to the ``writer`` service;
3. the writer, on **its own database** (through an inbox), writes the character and
   publishes its result ``Character.Generated``;
4. the orchestrator, through an inbox on its database, marks the task ``COMPLETED`` and
   records the fact ``Character.Proposed``, which a projection adds to the timeline.

Every step is idempotent: commands, tasks and facts are keyed by the flow's correlation id,
deliveries are deduplicated by the outbox or the inbox, the writer fails its first attempt
once (the broker redelivers it) and one command is published twice. Correlation and
causation ids are never passed by hand: what a handler publishes joins the handled event's
flow. Each handler also records the event it handled in a ``flow`` table of its database,
in its own transaction, which is what the printed chain is read from.

Embedded default: two SQLite files (the orchestrator's and the writer's) and the in-process
broker. ``--database-url``, ``--capability-database-url`` and ``--broker-url`` point it at
PostgreSQL/MariaDB and Redis/Kafka.
"""

from __future__ import annotations

import sys
import tempfile
import uuid
from typing import TextIO

from outboxkit.cli.demo_orchestrator.flow import (
    CHAIN,
    FlowStep,
    OrchestratorSummary,
    chain_is_linear,
)
from outboxkit.cli.demo_orchestrator.scenario import Scenario


def run_orchestrator_demo(
    *,
    database_url: str | None = None,
    capability_database_url: str | None = None,
    broker_url: str = "memory://",
    commands: int = 3,
    timeout: float = 60.0,
    keep: bool = False,
    out: TextIO | None = None,
) -> OrchestratorSummary:
    """Run the scenario, print the chain of one correlation id and a summary to ``out``."""
    with tempfile.TemporaryDirectory(prefix="outboxkit-orchestrator-") as folder:
        scenario = Scenario(
            run_id=uuid.uuid4().hex[:8],
            orchestrator_url=database_url or f"sqlite:///{folder}/orchestrator.db",
            writer_url=capability_database_url or database_url or f"sqlite:///{folder}/writer.db",
            broker_url=broker_url,
            commands=commands,
            timeout=timeout,
            keep=keep,
            out=out or sys.stdout,
        )
        return scenario.run()


__all__ = ["CHAIN", "FlowStep", "OrchestratorSummary", "chain_is_linear", "run_orchestrator_demo"]
