"""The flow the orchestrator demo drives: its event types, what a handled step records, and
the summary it prints."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import attrs
import sqlalchemy as sa

COMMAND = "Command.Received"
REQUESTED = "Character.Requested"
TASK = "Character.Generation.Requested"
RESULT = "Character.Generated"
PROPOSED = "Character.Proposed"
#: The event types of one complete flow, in causal order.
CHAIN = (COMMAND, REQUESTED, TASK, RESULT, PROPOSED)
TASK_TYPE = "Character.Generation"


@attrs.frozen(kw_only=True)
class FlowStep:
    """One handled event of a flow, as recorded by its handler."""

    event_type: str
    event_id: str
    correlation_id: str
    causation_id: str
    service: str
    handled_on: str


@attrs.frozen(kw_only=True)
class OrchestratorSummary:
    """What the scenario checked; ``ok`` when every flow completed exactly once."""

    commands: int
    completed_flows: int
    tasks_completed: int
    characters: int
    writer_retries: int
    inbox_consumed: dict[str, int]
    #: Outbox rows (of both databases) not ``consumed``: receipts close inbox routes' rows.
    unfinished_rows: int
    chains: dict[str, list[FlowStep]]
    elapsed: float

    @property
    def ok(self) -> bool:
        return (
            self.completed_flows == self.commands
            and self.tasks_completed == self.commands
            and self.characters == self.commands
            and all(v == self.commands for v in self.inbox_consumed.values())
            and self.unfinished_rows == 0
            and all(chain_is_linear(c) for c in self.chains.values())
        )


def chain_is_linear(steps: list[FlowStep]) -> bool:
    """Whether ``steps`` are the five events of :data:`CHAIN`, each caused by the previous,
    all of one correlation id (the first event's own id)."""
    if [s.event_type for s in steps] != list(CHAIN):
        return False
    first = steps[0]
    if first.causation_id or first.correlation_id != first.event_id:
        return False
    return all(
        step.correlation_id == first.correlation_id and step.causation_id == before.event_id
        for before, step in itertools.pairwise(steps)
    )


def flow_table(name: str, metadata: sa.MetaData) -> sa.Table:
    """Handled events of one database; the primary key makes a second effect fail loudly."""
    return sa.Table(
        name,
        metadata,
        sa.Column("event_id", sa.String(64), primary_key=True),
        sa.Column("event_type", sa.String(64), nullable=False),
        sa.Column("correlation_id", sa.String(64), nullable=False),
        sa.Column("causation_id", sa.String(64), nullable=False),
        sa.Column("service", sa.String(64), nullable=False),
        sa.Column("handled_on", sa.String(32), nullable=False),
    )


def print_summary(
    say: Callable[[str], None],
    summary: OrchestratorSummary,
    chain: list[FlowStep],
    task: tuple[str, str, str] | None,
) -> None:
    """The chain of one correlation id (and its task), then the summary."""
    if chain:
        say("")
        say(f"chain of correlation id {chain[0].correlation_id}")
        for n, step in enumerate(chain, 1):
            cause = step.causation_id[:8] or "-"
            say(
                f"  {n}. {step.event_type:<31} event {step.event_id[:8]}  caused by "
                f"{cause:<8}  handled by {step.service} on the {step.handled_on} database"
            )
        if task is not None:
            say(f"  task {task[0]}: {task[1]} ({task[2]})")
    say("")
    say("summary")
    say(f"  commands / flows completed  {summary.commands} / {summary.completed_flows}")
    say(f"  tasks completed             {summary.tasks_completed}")
    say(f"  characters (writer db)      {summary.characters}")
    say(f"  writer attempts redelivered {summary.writer_retries}")
    for service, consumed in summary.inbox_consumed.items():
        say(f"  inbox {service:<21} {consumed} consumed")
    say(f"  outbox rows not consumed    {summary.unfinished_rows}")
    linear = sum(1 for c in summary.chains.values() if chain_is_linear(c))
    say(f"  complete causal chains      {linear} of {len(summary.chains)}")
    say(f"  elapsed                     {summary.elapsed:.2f} s")
    say(f"  result                      {'OK' if summary.ok else 'INCOMPLETE'}")
