"""What a consumer thread can be told."""

from __future__ import annotations

import attrs
from sqlalchemy.orm import Session

from outboxkit.consume.handler_shapes import SessionFactory


@attrs.frozen(kw_only=True)
class ConsumerConfig:
    """Knobs of one consumer thread."""

    #: Deliveries fetched per receive.
    batch_size: int = attrs.field(default=100, validator=attrs.validators.gt(0))
    #: Longest wait of one receive; also bounds how fast a stop is noticed.
    receive_timeout: float = attrs.field(default=0.5, validator=attrs.validators.gt(0))
    #: First and longest pause while the broker or database is unreachable.
    outage_backoff: float = attrs.field(default=1.0, validator=attrs.validators.gt(0))
    outage_backoff_max: float = attrs.field(default=30.0, validator=attrs.validators.gt(0))
    #: Receive the next batch while this one is recorded, when this receive came back full
    #: (not for a ledger whose failures the broker redelivers: an inbox's).
    prefetch: bool = True
    #: Makes the session of a handler whose second parameter is a ``Session``:
    #: ``session_factory(bind=connection, join_transaction_mode="rollback_only")``. A
    #: ``sessionmaker`` of the application's fits (its other options are kept).
    session_factory: SessionFactory = attrs.field(default=Session, eq=False)
