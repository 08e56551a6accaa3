"""The conformance suite of :class:`~outboxkit.inbox.Inbox`, on a real database.

Subclass :class:`InboxContract` in a test module (name the subclass ``Test...``) and provide
an ``engine`` fixture; the default ``inbox`` fixture wraps it in a
:class:`~outboxkit.inbox.SqlInbox` on a table of its own, override it to test your own
implementation (its handlers' writes must land in the ``engine``'s database)::

    class TestMyInbox(InboxContract):
        @pytest.fixture
        def engine(self, mysql_engine):
            return mysql_engine

Every test makes its own tables (unique names) and drops them afterwards.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from outboxkit.errors import ConfigurationError
from outboxkit.inbox import Inbox, InboxItem, InboxStatus, SqlInbox, inbox_table
from outboxkit.messages import Outcome

#: How long a thread may take before the suite calls it stuck.
JOIN_TIMEOUT = 20.0
GROUP = "contract-group"
SERVICE = "contract-svc"


class InboxContract:
    """Behaviour every :class:`~outboxkit.inbox.Inbox` must show. Needs an ``engine`` fixture."""

    #: Failed attempts after which the suite's inbox makes an event dead.
    max_attempts = 3
    #: Whether two write transactions can be open at once, so two consumers of one event
    #: run their handlers side by side (False for SQLite, which serializes writers: there
    #: the concurrency test runs them one after the other, and says so).
    concurrent_writers = True

    # ------------------------------------------------------------------ fixtures

    @pytest.fixture
    def names(self) -> dict[str, str]:
        suffix = uuid.uuid4().hex[:10]
        return {"inbox": f"ct_inbox_{suffix}", "effects": f"ct_effects_{suffix}"}

    @pytest.fixture
    def effects(self, engine: sa.Engine, names: dict[str, str]) -> Iterator[sa.Table]:
        """A business table the handlers write to: one row per applied effect."""
        table = sa.Table(
            names["effects"],
            sa.MetaData(),
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("event_id", sa.String(64), nullable=False),
        )
        table.create(engine)
        yield table
        table.drop(engine, checkfirst=True)

    @pytest.fixture
    def inbox(self, engine: sa.Engine, names: dict[str, str]) -> Iterator[Inbox]:
        inbox = SqlInbox(engine, table=names["inbox"], max_attempts=self.max_attempts)
        inbox.create_schema()
        yield inbox
        inbox.close()
        with engine.begin() as conn:
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {names['inbox']}"))

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def item(effects: sa.Table, event_id: str | None = None, **kwargs: Any) -> InboxItem:
        event_id = event_id or str(uuid.uuid4())

        def apply(conn: Connection) -> str:
            conn.execute(sa.insert(effects).values(event_id=event_id))
            return event_id

        kwargs.setdefault("run", apply)
        return InboxItem(
            event_id=event_id, event_type="contract.happened", service=SERVICE, **kwargs
        )

    @staticmethod
    def applied(engine: sa.Engine, effects: sa.Table) -> list[str]:
        with engine.connect() as conn:
            return sorted(str(r[0]) for r in conn.execute(sa.select(effects.c.event_id)))

    # ------------------------------------------------------------------ schema

    def test_create_schema_is_idempotent_and_check_passes(self, inbox: Inbox) -> None:
        inbox.create_schema()
        inbox.check()
        assert inbox.table_name in inbox.schema_ddl()

    def test_check_names_the_missing_table(self, engine: sa.Engine) -> None:
        missing = SqlInbox(engine, table=f"ct_missing_{uuid.uuid4().hex[:10]}")
        with pytest.raises(ConfigurationError, match=missing.table_name):
            missing.check()

    def test_inbox_table_goes_on_your_own_metadata(self) -> None:
        metadata = sa.MetaData()
        table = inbox_table(metadata, "my_inbox")
        assert metadata.tables["my_inbox"] is table
        assert [c.name for c in table.primary_key.columns] == ["consumer_group", "event_id"]

    # ------------------------------------------------------------------ consuming

    def test_handler_writes_and_the_inbox_row_commit_together(
        self, engine: sa.Engine, inbox: Inbox, effects: sa.Table
    ) -> None:
        item = self.item(effects, outbox_id=42)
        [result] = inbox.consume_batch(GROUP, [item])
        assert result.outcome is Outcome.CONSUMED
        assert result.value == item.event_id
        assert self.applied(engine, effects) == [item.event_id]
        record = inbox.get(GROUP, item.event_id)
        assert record is not None
        assert record.status is InboxStatus.CONSUMED
        assert (record.outbox_id, record.service_name) == (42, SERVICE)
        assert record.consumed_at is not None

    def test_a_redelivered_event_is_a_duplicate_and_runs_nothing(
        self, engine: sa.Engine, inbox: Inbox, effects: sa.Table
    ) -> None:
        item = self.item(effects)
        inbox.consume_batch(GROUP, [item])
        calls: list[str] = []
        again = self.item(effects, item.event_id, run=lambda conn: calls.append("ran"))
        [result] = inbox.consume_batch(GROUP, [again])
        assert result.outcome is Outcome.DUPLICATE
        assert calls == []
        assert self.applied(engine, effects) == [item.event_id]

    def test_the_same_event_twice_in_one_batch_runs_once(
        self, engine: sa.Engine, inbox: Inbox, effects: sa.Table
    ) -> None:
        item = self.item(effects)
        results = inbox.consume_batch(GROUP, [item, item])
        assert [r.outcome for r in results] == [
            Outcome.CONSUMED,
            Outcome.DUPLICATE,
        ]
        assert self.applied(engine, effects) == [item.event_id]

    def test_groups_are_independent(
        self, engine: sa.Engine, inbox: Inbox, effects: sa.Table
    ) -> None:
        item = self.item(effects)
        inbox.consume_batch(GROUP, [item])
        [other] = inbox.consume_batch("another-group", [item])
        assert other.outcome is Outcome.CONSUMED
        assert self.applied(engine, effects) == [item.event_id, item.event_id]

    def test_a_failing_handler_rolls_back_only_its_own_writes(
        self, engine: sa.Engine, inbox: Inbox, effects: sa.Table
    ) -> None:
        first, third = self.item(effects), self.item(effects)
        boom = RuntimeError("boom")

        def fail(conn: Connection) -> None:
            conn.execute(sa.insert(effects).values(event_id="never-committed"))
            raise boom

        second = self.item(effects, run=fail)
        results = inbox.consume_batch(GROUP, [first, second, third])
        assert [r.outcome for r in results] == [
            Outcome.CONSUMED,
            Outcome.FAILED,
            Outcome.CONSUMED,
        ]
        assert results[1].error is boom
        assert self.applied(engine, effects) == sorted([first.event_id, third.event_id])
        assert inbox.get(GROUP, second.event_id) is None  # nothing recorded for a failure

    def test_should_stop_leaves_the_rest_not_run(
        self, engine: sa.Engine, inbox: Inbox, effects: sa.Table
    ) -> None:
        items = [self.item(effects) for _ in range(3)]
        calls = iter([False, True, True])
        results = inbox.consume_batch(GROUP, items, should_stop=lambda: next(calls))
        assert [r.outcome for r in results] == [
            Outcome.CONSUMED,
            Outcome.NOT_RUN,
            Outcome.NOT_RUN,
        ]
        assert self.applied(engine, effects) == [items[0].event_id]

    def test_concurrent_consumers_of_one_event_commit_once(
        self, engine: sa.Engine, inbox: Inbox, effects: sa.Table
    ) -> None:
        event_id = str(uuid.uuid4())
        # Both handlers inside their transactions at once, each having written its effect:
        # the barrier is passed only when both are there (a broken one fails the test).
        # Where writers are serialized (concurrent_writers false) there is no barrier: the
        # second consumer runs after the first committed.
        both_ran = threading.Barrier(2, timeout=JOIN_TIMEOUT / 2)
        met: list[bool] = []

        def run(conn: Connection) -> None:
            conn.execute(sa.insert(effects).values(event_id=event_id))
            if self.concurrent_writers:
                try:
                    both_ran.wait()
                    met.append(True)
                except threading.BrokenBarrierError:
                    met.append(False)

        outcomes: list[Outcome] = []
        errors: list[BaseException] = []

        def consume() -> None:
            try:
                [result] = inbox.consume_batch(GROUP, [self.item(effects, event_id, run=run)])
                outcomes.append(result.outcome)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=consume, daemon=True) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(JOIN_TIMEOUT)
        assert not any(t.is_alive() for t in threads), "a consumer is stuck"
        assert errors == []
        if self.concurrent_writers:
            assert met == [True, True], "the two handlers never ran at the same time"
        assert sorted(outcomes) == sorted([Outcome.CONSUMED, Outcome.DUPLICATE])
        assert self.applied(engine, effects) == [event_id]

    # ------------------------------------------------------------------ failures

    def test_failures_are_counted_until_dead(self, inbox: Inbox, effects: sa.Table) -> None:
        item = self.item(effects)
        records = [
            inbox.record_failure(GROUP, item, reason=f"attempt {n}")
            for n in range(1, self.max_attempts + 1)
        ]
        assert [r.attempts for r in records] == list(range(1, self.max_attempts + 1))
        assert [r.status for r in records] == [InboxStatus.FAILED] * (self.max_attempts - 1) + [
            InboxStatus.DEAD
        ]
        assert records[-1].last_error == f"attempt {self.max_attempts}"
        after = inbox.record_failure(GROUP, item, reason="once more")
        assert (after.status, after.attempts) == (InboxStatus.DEAD, self.max_attempts)

    def test_a_failed_event_runs_again_and_is_then_consumed(
        self, engine: sa.Engine, inbox: Inbox, effects: sa.Table
    ) -> None:
        item = self.item(effects)
        inbox.record_failure(GROUP, item, reason="flaky")
        [result] = inbox.consume_batch(GROUP, [item])
        assert result.outcome is Outcome.CONSUMED
        record = inbox.get(GROUP, item.event_id)
        assert record is not None
        assert (record.status, record.attempts) == (InboxStatus.CONSUMED, 1)
        assert self.applied(engine, effects) == [item.event_id]

    def test_dead_is_final(self, engine: sa.Engine, inbox: Inbox, effects: sa.Table) -> None:
        item = self.item(effects)
        assert inbox.mark_dead(GROUP, item, reason="no handler")
        assert not inbox.mark_dead(GROUP, item, reason="again")
        assert not inbox.mark_consumed(GROUP, item)
        [result] = inbox.consume_batch(GROUP, [item])
        assert result.outcome is Outcome.DUPLICATE
        record = inbox.get(GROUP, item.event_id)
        assert record is not None
        assert (record.status, record.last_error) == (InboxStatus.DEAD, "no handler")
        assert self.applied(engine, effects) == []

    def test_mark_consumed_records_a_side_effect_once(
        self, inbox: Inbox, effects: sa.Table
    ) -> None:
        item = self.item(effects)
        assert inbox.mark_consumed(GROUP, item)
        assert not inbox.mark_consumed(GROUP, item)
        assert inbox.count_by_status(GROUP)[InboxStatus.CONSUMED] == 1

    # ------------------------------------------------------------------ operations

    def test_counts_and_lists_by_status(self, inbox: Inbox, effects: sa.Table) -> None:
        consumed, failed, dead = self.item(effects), self.item(effects), self.item(effects)
        inbox.consume_batch(GROUP, [consumed])
        inbox.record_failure(GROUP, failed, reason="flaky")
        inbox.mark_dead(GROUP, dead, reason="poison")
        assert inbox.count_by_status(GROUP) == {
            InboxStatus.CONSUMED: 1,
            InboxStatus.FAILED: 1,
            InboxStatus.DEAD: 1,
        }
        assert inbox.count_by_status("nobody") == {s: 0 for s in InboxStatus}
        [listed] = inbox.list_by_status(InboxStatus.DEAD, group=GROUP)
        assert (listed.event_id, listed.last_error) == (dead.event_id, "poison")

    def test_purge_deletes_old_final_rows_and_keeps_the_rest(
        self, engine: sa.Engine, inbox: Inbox, effects: sa.Table, names: dict[str, str]
    ) -> None:
        old_consumed, old_dead, old_failed, recent = (self.item(effects) for _ in range(4))
        inbox.consume_batch(GROUP, [old_consumed, recent])
        inbox.mark_dead(GROUP, old_dead, reason="poison")
        inbox.record_failure(GROUP, old_failed, reason="flaky")
        table = inbox_table(sa.MetaData(), names["inbox"])
        with engine.begin() as conn:
            now = conn.execute(sa.select(table.c.updated_at).limit(1)).scalar_one()
            conn.execute(
                sa.update(table)
                .where(
                    table.c.event_id.in_(
                        [old_consumed.event_id, old_dead.event_id, old_failed.event_id]
                    )
                )
                .values(updated_at=now - timedelta(days=2))
            )
        assert inbox.purge(older_than=3600) == 2
        assert inbox.get(GROUP, old_consumed.event_id) is None
        assert inbox.get(GROUP, old_dead.event_id) is None
        assert inbox.get(GROUP, old_failed.event_id) is not None
        assert inbox.get(GROUP, recent.event_id) is not None
        assert inbox.purge(older_than=3600) == 0


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll ``condition`` until true or ``timeout`` seconds passed; whether it became true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()
