"""The repository contract on PostgreSQL, plus PostgreSQL's DDL and version floor."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from outboxkit.backends import SqlRepository
from outboxkit.backends.dialect import parse_version
from outboxkit.backends.postgres import POSTGRESQL
from outboxkit.backends.schema import index_name
from outboxkit.errors import UnsupportedDatabaseError
from outboxkit.routing import Route
from outboxkit.testing.repository_contract import RepositoryContract

pytestmark = pytest.mark.postgres


class TestPostgresRepository(RepositoryContract):
    @pytest.fixture
    def engine(self, postgres_engine: sa.Engine) -> sa.Engine:
        return postgres_engine


@pytest.mark.parametrize(
    ("text", "ok"),
    [("9.4.26", False), ("9.5.0", True), ("15.5 (Debian 15.5-0+deb12u1)", True), ("16", True)],
)
def test_version_floor(text: str, ok: bool) -> None:
    if ok:
        assert POSTGRESQL.check_version(text).startswith("PostgreSQL ")
    else:
        with pytest.raises(UnsupportedDatabaseError, match=r"9\.4\.26.*>= 9\.5"):
            POSTGRESQL.check_version(text)


def test_real_server_passes_the_version_check(postgres_engine: sa.Engine) -> None:
    repository = SqlRepository(postgres_engine)
    assert parse_version(repository.server_version.split()[1]) >= (9, 5, 0)
    assert repository.describe()["dialect"] == "postgresql"


def test_index_names_carry_the_table_name_and_fit_the_limit() -> None:
    assert index_name("orders_outbox", "idx_outbox_status_next", per_table=False) == (
        "orders_outbox_idx_outbox_status_next"
    )
    long_a = index_name("a" * 60 + "_x", "idx_outbox_status_next", per_table=False)
    long_b = index_name("a" * 60 + "_y", "idx_outbox_status_next", per_table=False)
    assert len(long_a) <= 63 and len(long_b) <= 63
    assert long_a != long_b


def test_schema_ddl_names_table_indexes_and_partial_index(postgres_engine: sa.Engine) -> None:
    repository = SqlRepository(postgres_engine)
    route = Route.by_convention("billing")
    ddl = repository.schema_ddl([route])
    assert "CREATE TABLE billing_outbox_messages" in ddl
    assert "billing_outbox_messages_idx_outbox_status_next" in ddl
    assert "billing_outbox_messages_idx_outbox_service_name" in ddl
    assert "CREATE UNIQUE INDEX billing_outbox_messages_uq_outbox_event_id" in ddl
    assert "billing_outbox_messages_idx_outbox_pending_due" in ddl
    assert "WHERE status = 'pending'" in ddl
