"""The orchestrator demo's two engines, their handlers and their tables, run once."""

from __future__ import annotations

import time
from typing import Any, TextIO

import attrs
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from outboxkit.backends import SqlRepository
from outboxkit.broker import Broker
from outboxkit.brokers.memory import MemoryBroker
from outboxkit.brokers.urls import broker_from_url
from outboxkit.cli.demo_orchestrator.flow import (
    COMMAND,
    PROPOSED,
    REQUESTED,
    RESULT,
    TASK,
    TASK_TYPE,
    FlowStep,
    OrchestratorSummary,
    flow_table,
    print_summary,
)
from outboxkit.consume.config import ConsumerConfig
from outboxkit.engine import Engine, EngineConfig
from outboxkit.inbox import InboxStatus, SqlInbox
from outboxkit.messages import Event, PublishRequest
from outboxkit.observability.logs import mask_url
from outboxkit.relay.relay import RelayConfig
from outboxkit.retry import RetryPolicy
from outboxkit.routing import Routing, ServiceCatalog


def _brokers(url: str) -> tuple[Broker, Broker]:
    """Two clients of one broker, as two processes would have (memory: one shared store)."""
    first = broker_from_url(url)
    if isinstance(first, MemoryBroker):
        return first, first.connect()
    return first, broker_from_url(url)


class Scenario:
    """Two engines (orchestrator and writer), their databases and their handlers."""

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
        self.orch_flow = flow_table(f"{prefix}_flow", self.orch_meta)
        self.writer_flow = flow_table(f"{prefix}_wflow", self.writer_meta)

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
        say(f"  broker                {mask_url(self.broker_url)}")
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

    def _print(self, summary: OrchestratorSummary, chain: list[FlowStep]) -> None:
        task = None
        if chain:
            with self.orch_db.connect() as conn:
                row = conn.execute(
                    sa.select(self.tasks.c.task_id, self.tasks.c.status, self.tasks.c.result).where(
                        self.tasks.c.correlation_id == chain[0].correlation_id
                    )
                ).first()
            task = None if row is None else (str(row[0]), str(row[1]), str(row[2]))
        print_summary(self._say, summary, chain, task)

    def _say(self, line: str) -> None:
        print(line, file=self.out, flush=True)


def _url(db: sa.Engine) -> str:
    return db.url.render_as_string(hide_password=True)
