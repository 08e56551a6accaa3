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

import itertools
import sys
import tempfile
import time
import uuid
from typing import Any, TextIO

import attrs
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from outboxkit.backends import SqlRepository
from outboxkit.broker import Broker
from outboxkit.brokers.memory import MemoryBroker
from outboxkit.brokers.urls import broker_from_url
from outboxkit.consume.config import ConsumerConfig
from outboxkit.engine import Engine, EngineConfig
from outboxkit.inbox import InboxStatus, SqlInbox
from outboxkit.messages import Event, PublishRequest
from outboxkit.relay.relay import RelayConfig
from outboxkit.retry import RetryPolicy
from outboxkit.routing import Routing, ServiceCatalog

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
        scenario = _Scenario(
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


def _brokers(url: str) -> tuple[Broker, Broker]:
    """Two clients of one broker, as two processes would have (memory: one shared store)."""
    first = broker_from_url(url)
    if isinstance(first, MemoryBroker):
        return first, first.connect()
    return first, broker_from_url(url)


class _Scenario:
    def __init__(
        self,
        *,
        run_id: str,
        orchestrator_url: str,
        writer_url: str,
        broker_url: str,
        commands: int,
        timeout: float,
        keep: bool,
        out: TextIO,
    ) -> None:
        self.out, self.commands, self.timeout, self.keep = out, commands, timeout, keep
        self.broker_url = broker_url
        prefix = f"orch_{run_id}"
        catalog = ServiceCatalog(namespace=f"outboxkit-orch-{run_id}")
        catalog.configure("commands", table=f"{prefix}_commands_outbox")
        catalog.configure("facts", table=f"{prefix}_facts_outbox")
        catalog.configure("writer-tasks", table=f"{prefix}_writer_tasks_outbox", inbox=True)
        catalog.configure("writer-results", table=f"{prefix}_writer_results_outbox", inbox=True)
        self.routing = Routing(catalog)
        self.routing.register(COMMAND, "commands")
        self.routing.register(REQUESTED, "facts")
        self.routing.register(PROPOSED, "facts")
        self.routing.register(TASK, "writer-tasks")
        self.routing.register(RESULT, "writer-results")

        self.orch_repo = SqlRepository.from_url(orchestrator_url)
        self.writer_repo = SqlRepository.from_url(writer_url)
        self.orch_db: sa.Engine = self.orch_repo.engine
        self.writer_db: sa.Engine = self.writer_repo.engine
        self.orch_meta, self.writer_meta = sa.MetaData(), sa.MetaData()
        self.commands_table = sa.Table(
            f"{prefix}_commands",
            self.orch_meta,
            sa.Column("command_id", sa.String(64), primary_key=True),
            sa.Column("session_id", sa.String(64), nullable=False),
        )
        self.domain_events = sa.Table(
            f"{prefix}_domain_events",
            self.orch_meta,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("correlation_id", sa.String(64), nullable=False),
            sa.Column("event_type", sa.String(64), nullable=False),
            sa.UniqueConstraint("correlation_id", "event_type"),
        )
        self.tasks = sa.Table(
            f"{prefix}_async_tasks",
            self.orch_meta,
            sa.Column("task_id", sa.String(80), primary_key=True),
            sa.Column("correlation_id", sa.String(64), nullable=False),
            sa.Column("task_type", sa.String(64), nullable=False),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("result", sa.String(200), nullable=True),
            sa.UniqueConstraint("correlation_id", "task_type"),
        )
        self.timeline = sa.Table(
            f"{prefix}_timeline",
            self.orch_meta,
            sa.Column("correlation_id", sa.String(64), primary_key=True),
            sa.Column("character", sa.String(200), nullable=False),
        )
        self.characters = sa.Table(
            f"{prefix}_characters",
            self.writer_meta,
            sa.Column("task_id", sa.String(80), primary_key=True),
            sa.Column("name", sa.String(200), nullable=False),
        )
        self.orch_flow = _flow_table(f"{prefix}_flow", self.orch_meta)
        self.writer_flow = _flow_table(f"{prefix}_wflow", self.writer_meta)

        config = EngineConfig(
            relay=RelayConfig(idle_interval=0.05),
            consumer=ConsumerConfig(receive_timeout=0.2),
            retry=RetryPolicy.fixed(0.2),
        )
        orch_broker, writer_broker = _brokers(broker_url)
        self.orch_inbox = SqlInbox(self.orch_db, table=f"{prefix}_inbox")
        self.writer_inbox = SqlInbox(self.writer_db, table=f"{prefix}_winbox")
        self.orchestrator = Engine(
            self.orch_repo,
            orch_broker,
            self.routing,
            config=attrs.evolve(config, relay_services=("commands", "facts", "writer-tasks")),
            inboxes={"writer-results": self.orch_inbox},
        )
        self.writer = Engine(
            self.writer_repo,
            writer_broker,
            self.routing,
            config=attrs.evolve(config, relay_services=("writer-results",)),
            inboxes={"writer-tasks": self.writer_inbox},
        )
        self.orchestrator.register_handler(COMMAND, self._on_command)
        self.orchestrator.register_handler(REQUESTED, self._on_requested)
        self.orchestrator.register_handler(RESULT, self._on_result)
        self.orchestrator.register_handler(PROPOSED, self._on_proposed)
        self.writer.register_handler(TASK, self._write_character)
        self.writer_failures = 0

    # -------------------------------------------------------------- handlers

    def _record(self, flow: sa.Table, event: Event, conn: Connection, database: str) -> None:
        """The handled event, in the handler's transaction: committed once per event."""
        conn.execute(
            flow.insert().values(
                event_id=event.event_id,
                event_type=event.event_type,
                correlation_id=event.correlation_id,
                causation_id=event.causation_id,
                service=event.service_name,
                handled_on=database,
            )
        )

    def _fact_once(self, conn: Connection, correlation_id: str, event_type: str) -> bool:
        """Record a domain fact unless the flow has it already (the seed's idempotency key)."""
        found = conn.execute(
            sa.select(self.domain_events.c.id).where(
                self.domain_events.c.correlation_id == correlation_id,
                self.domain_events.c.event_type == event_type,
            )
        ).first()
        if found is not None:
            return False
        conn.execute(
            self.domain_events.insert().values(correlation_id=correlation_id, event_type=event_type)
        )
        return True

    def _on_command(self, event: Event, conn: Connection) -> None:
        self._record(self.orch_flow, event, conn, "orchestrator")
        if self._fact_once(conn, event.correlation_id, REQUESTED):
            self.orchestrator.publish(
                PublishRequest(
                    event_type=REQUESTED,
                    message_key=event.message_key,
                    payload={"session_id": event.payload["session_id"]},
                ),
                connection=conn,
            )

    def _on_requested(self, event: Event, conn: Connection) -> None:
        self._record(self.orch_flow, event, conn, "orchestrator")
        running = conn.execute(
            sa.select(self.tasks.c.task_id).where(
                self.tasks.c.correlation_id == event.correlation_id,
                self.tasks.c.task_type == TASK_TYPE,
            )
        ).first()
        if running is not None:
            return  # a task for this flow exists already
        task_id = f"task-{event.correlation_id}"
        conn.execute(
            self.tasks.insert().values(
                task_id=task_id,
                correlation_id=event.correlation_id,
                task_type=TASK_TYPE,
                status="RUNNING",
            )
        )
        self.orchestrator.publish(
            PublishRequest(
                event_type=TASK,
                message_key=event.message_key,
                payload={"task_id": task_id, "session_id": event.payload["session_id"]},
            ),
            connection=conn,
        )

    def _write_character(self, event: Event, conn: Connection) -> None:
        self._record(self.writer_flow, event, conn, "writer")
        task_id = event.payload["task_id"]
        if self.writer_failures == 0:
            self.writer_failures += 1
            raise RuntimeError(f"model busy for {task_id} (first attempt of the run)")
        name = f"character of {event.payload['session_id']}"
        conn.execute(self.characters.insert().values(task_id=task_id, name=name))
        self.writer.publish(
            PublishRequest(
                event_type=RESULT,
                message_key=event.message_key,
                payload={"task_id": task_id, "name": name},
            ),
            connection=conn,
        )

    def _on_result(self, event: Event, conn: Connection) -> None:
        self._record(self.orch_flow, event, conn, "orchestrator")
        task_id = event.payload["task_id"]
        completed = conn.execute(
            self.tasks.update()
            .where(self.tasks.c.task_id == task_id, self.tasks.c.status == "RUNNING")
            .values(status="COMPLETED", result=event.payload["name"])
        ).rowcount
        if completed and self._fact_once(conn, event.correlation_id, PROPOSED):
            self.orchestrator.publish(
                PublishRequest(
                    event_type=PROPOSED,
                    message_key=event.message_key,
                    payload={"task_id": task_id, "name": event.payload["name"]},
                ),
                connection=conn,
            )

    def _on_proposed(self, event: Event, conn: Connection) -> None:
        self._record(self.orch_flow, event, conn, "orchestrator")
        conn.execute(
            self.timeline.insert().values(
                correlation_id=event.correlation_id, character=event.payload["name"]
            )
        )

    # -------------------------------------------------------------- run

    def run(self) -> OrchestratorSummary:
        say = self._say
        say("outboxkit orchestrator scenario")
        say(f"  orchestrator database {_url(self.orch_db)}")
        say(f"  writer database       {_url(self.writer_db)}")
        say(f"  broker                {self.broker_url}")
        self.orchestrator.create_schema(["commands", "facts", "writer-tasks"])
        self.writer.create_schema(["writer-results"])
        self.orch_meta.create_all(self.orch_db)
        self.writer_meta.create_all(self.writer_db)
        try:
            self.writer.start()
            self.orchestrator.start()
            return self._run()
        finally:
            self.orchestrator.stop(timeout=10)
            self.writer.stop(timeout=10)
            if not self.keep:
                self._drop()
            self.orch_repo.close()
            self.writer_repo.close()

    def _run(self) -> OrchestratorSummary:
        started = time.monotonic()
        first_event = ""
        for n in range(1, self.commands + 1):
            request = PublishRequest(
                event_type=COMMAND,
                message_key=f"session-{n}",
                payload={"command": "Character.Request", "session_id": f"session-{n}"},
            )
            with self.orch_db.begin() as conn:
                conn.execute(
                    self.commands_table.insert().values(
                        command_id=request.event_id, session_id=f"session-{n}"
                    )
                )
                self.orchestrator.publish(request, connection=conn)
            if n == 1:
                first_event = request.event_id
                self.orchestrator.publish(request)  # the same event again: writes nothing
        self._say(f"  {self.commands} commands written (the first one published twice)")
        deadline = started + self.timeout
        while time.monotonic() < deadline and (
            self._count(self.orch_db, self.timeline) < self.commands or self._unfinished()
        ):
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        chains = {c: self._chain(c) for c in self._correlations()}
        summary = OrchestratorSummary(
            commands=self.commands,
            completed_flows=self._count(self.orch_db, self.timeline),
            tasks_completed=self._count(
                self.orch_db, self.tasks, self.tasks.c.status == "COMPLETED"
            ),
            characters=self._count(self.writer_db, self.characters),
            writer_retries=self.writer.stats().retried,
            inbox_consumed={
                "writer-tasks": self._consumed(self.writer_inbox, "writer-tasks"),
                "writer-results": self._consumed(self.orch_inbox, "writer-results"),
            },
            unfinished_rows=self._unfinished(),
            chains=chains,
            elapsed=elapsed,
        )
        self._print(summary, chains.get(first_event, []))
        return summary

    def _unfinished(self) -> int:
        """Outbox rows not yet ``consumed``, in both databases."""
        unfinished = 0
        for repo, services in (
            (self.orch_repo, ("commands", "facts", "writer-tasks")),
            (self.writer_repo, ("writer-results",)),
        ):
            for service in services:
                counts = repo.count_by_status(self.routing.route_of_service(service))
                unfinished += sum(n for s, n in counts.items() if s.value != "consumed")
        return unfinished

    def _consumed(self, inbox: SqlInbox, service: str) -> int:
        group = self.routing.route_of_service(service).group
        return inbox.count_by_status(group)[InboxStatus.CONSUMED]

    def _correlations(self) -> list[str]:
        with self.orch_db.connect() as conn:
            return [str(r[0]) for r in conn.execute(sa.select(self.commands_table.c.command_id))]

    def _chain(self, correlation_id: str) -> list[FlowStep]:
        """The flow's handled events from both databases, each after the one that caused it."""
        steps: list[FlowStep] = []
        for db, flow in ((self.orch_db, self.orch_flow), (self.writer_db, self.writer_flow)):
            with db.connect() as conn:
                rows = conn.execute(
                    sa.select(flow).where(flow.c.correlation_id == correlation_id)
                ).mappings()
                steps.extend(FlowStep(**{k: str(v or "") for k, v in row.items()}) for row in rows)
        by_cause = {s.causation_id: s for s in steps}
        ordered: list[FlowStep] = []
        cause = ""
        while cause in by_cause and len(ordered) < len(steps):
            ordered.append(by_cause[cause])
            cause = ordered[-1].event_id
        return ordered if len(ordered) == len(steps) else steps

    def _count(self, db: sa.Engine, table: sa.Table, *where: Any) -> int:
        query = sa.select(sa.func.count()).select_from(table)
        if where:
            query = query.where(*where)
        with db.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def _print(self, summary: OrchestratorSummary, chain: list[FlowStep]) -> None:
        say = self._say
        if chain:
            say("")
            say(f"chain of correlation id {chain[0].correlation_id}")
            for n, step in enumerate(chain, 1):
                cause = step.causation_id[:8] or "-"
                say(
                    f"  {n}. {step.event_type:<31} event {step.event_id[:8]}  caused by "
                    f"{cause:<8}  handled by {step.service} on the {step.handled_on} database"
                )
            with self.orch_db.connect() as conn:
                task = conn.execute(
                    sa.select(self.tasks.c.task_id, self.tasks.c.status, self.tasks.c.result).where(
                        self.tasks.c.correlation_id == chain[0].correlation_id
                    )
                ).first()
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

    def _drop(self) -> None:
        self.orch_meta.drop_all(self.orch_db)
        self.writer_meta.drop_all(self.writer_db)
        drops: list[tuple[sa.Engine, str]] = [
            (self.orch_db, self.orch_inbox.table_name),
            (self.writer_db, self.writer_inbox.table_name),
            (self.writer_db, self.routing.route_of_service("writer-results").table),
        ]
        drops += [
            (self.orch_db, self.routing.route_of_service(s).table)
            for s in ("commands", "facts", "writer-tasks")
        ]
        for db, name in drops:
            with db.begin() as conn:
                conn.execute(sa.text(f"DROP TABLE IF EXISTS {name}"))  # names are validated

    def _say(self, line: str) -> None:
        print(line, file=self.out, flush=True)


def _flow_table(name: str, metadata: sa.MetaData) -> sa.Table:
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


def _url(db: sa.Engine) -> str:
    return db.url.render_as_string(hide_password=True)


__all__ = ["FlowStep", "OrchestratorSummary", "run_orchestrator_demo"]
