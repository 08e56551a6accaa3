"""A handler of the wrong shape is refused when it is registered, not at its first delivery.

Before, ``def ship(event)`` registered as transactional was accepted, raised TypeError at
each delivery and was retried 20 times before the event went dead.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from outboxkit import (
    ConfigurationError,
    Engine,
    EngineConfig,
    Event,
    HandlerRegistry,
    JsonPayloadCodec,
    PayloadCodecs,
    Routing,
)
from outboxkit.backends import SqlRepository
from outboxkit.brokers.memory import MemoryBroker


@dataclasses.dataclass
class OrderPlaced:
    order_id: int


@dataclasses.dataclass
class Invoice:
    number: str


@pytest.fixture
def registry() -> HandlerRegistry:
    routing = Routing()
    routing.register("order.placed", "orders")
    return HandlerRegistry(routing)


def test_a_transactional_handler_without_a_connection_parameter_is_refused_with_a_hint(
    registry: HandlerRegistry,
) -> None:
    def ship(event: Event) -> None: ...

    with pytest.raises(ConfigurationError) as raised:
        registry.register("order.placed", ship)  # type: ignore[call-overload]
    message = str(raised.value)
    assert "ship(event: 'Event') -> 'None'" in message
    assert "cannot be called as a transactional handler (event, connection)" in message
    assert "pass transactional=False" in message
    assert registry.get("order.placed") is None


def test_a_side_effect_handler_that_needs_a_connection_is_refused(
    registry: HandlerRegistry,
) -> None:
    def mail(event: Event, connection: Connection) -> None: ...

    with pytest.raises(ConfigurationError, match=r"side-effect handler \(event\).*must be "):
        registry.register("order.placed", mail, transactional=False)  # type: ignore[call-overload]
    assert registry.get("order.placed") is None


@pytest.mark.parametrize(
    "handler",
    [
        lambda event, connection: None,
        lambda *args: None,
        lambda event, connection, extra=1: None,
        functools.partial(lambda tag, event, connection: None, "tag"),
    ],
    ids=["lambda", "varargs", "defaulted-extra", "partial"],
)
def test_handlers_that_accept_event_and_connection_are_accepted(
    registry: HandlerRegistry, handler: Any
) -> None:
    registry.register("order.placed", handler)
    spec = registry.get("order.placed")
    assert spec is not None and spec.func is handler and spec.payload_type is None


def test_bound_methods_and_callable_objects_are_checked_without_self() -> None:
    class Shipper:
        def handle(self, event: Event[OrderPlaced], connection: Connection) -> None: ...

        def __call__(self, event: Event[OrderPlaced]) -> None: ...

    routing = Routing()
    routing.register("a", "orders")
    routing.register("b", "orders")
    registry = HandlerRegistry(routing)
    registry.register("a", Shipper().handle)
    registry.register("b", Shipper(), transactional=False)
    assert [registry.get(t).payload_type for t in ("a", "b")] == [OrderPlaced, OrderPlaced]  # type: ignore[union-attr]


def test_an_event_annotation_declares_the_payload_type(registry: HandlerRegistry) -> None:
    def ship(event: Event[OrderPlaced], connection: Connection) -> None: ...

    registry.register("order.placed", ship)
    spec = registry.get("order.placed")
    assert spec is not None and spec.payload_type is OrderPlaced


@pytest.mark.parametrize("annotation", [Event, Event[Any], Event[dict[str, Any]], Event[dict]])
def test_json_annotations_leave_the_payload_as_json(
    registry: HandlerRegistry, annotation: Any
) -> None:
    def ship(event: Any, connection: Connection) -> None: ...

    ship.__annotations__["event"] = annotation
    registry.register("order.placed", ship)
    spec = registry.get("order.placed")
    assert spec is not None and spec.payload_type is None


def test_an_annotation_that_disagrees_with_payload_type_is_refused(
    registry: HandlerRegistry,
) -> None:
    def ship(event: Event[Invoice], connection: Connection) -> None: ...

    with pytest.raises(
        ConfigurationError,
        match=r"annotated Event\[Invoice\] but registered with payload_type=OrderPlaced",
    ):
        registry.register("order.placed", ship, payload_type=OrderPlaced)


def test_payload_type_without_annotation_is_used(registry: HandlerRegistry) -> None:
    registry.register("order.placed", lambda event, conn: None, payload_type=OrderPlaced)
    spec = registry.get("order.placed")
    assert spec is not None and spec.payload_type is OrderPlaced


def test_something_not_callable_is_refused(registry: HandlerRegistry) -> None:
    with pytest.raises(ConfigurationError, match="not callable"):
        registry.register("order.placed", sa.MetaData())  # type: ignore[call-overload]


def test_an_unresolvable_event_annotation_asks_for_payload_type(registry: HandlerRegistry) -> None:
    # Given a payload class defined inside a function (annotations are strings here)
    @dataclasses.dataclass
    class Local:
        n: int

    def ship(event: Event[Local], connection: Connection) -> None: ...

    # Then registering without payload_type refuses rather than handing it dicts
    with pytest.raises(ConfigurationError, match=r"'Event\[Local\]' cannot be resolved"):
        registry.register("order.placed", ship)
    registry.register("order.placed", ship, payload_type=Local)
    spec = registry.get("order.placed")
    assert spec is not None and spec.payload_type is Local


def test_only_the_event_annotation_needs_to_resolve(registry: HandlerRegistry) -> None:
    # A connection type imported under TYPE_CHECKING only does not hide the payload type.
    def ship(event: Event[OrderPlaced], connection: NotImportedAtRunTime) -> None: ...  # type: ignore[name-defined]  # noqa: F821

    registry.register("order.placed", ship)
    spec = registry.get("order.placed")
    assert spec is not None and spec.payload_type is OrderPlaced


class NotAPayload:
    def __init__(self, n: int) -> None:
        self.n = n


@dataclasses.dataclass
class IntKeys:
    by_id: dict[int, str]


@dataclasses.dataclass
class Outer:
    fine: list[OrderPlaced] | None
    inner: NotAPayload


@pytest.fixture
def engine(sqlite_engine: sa.Engine) -> Engine:
    routing = Routing()
    routing.register("order.placed", "orders")
    return Engine(SqlRepository(sqlite_engine), MemoryBroker(), routing)


@pytest.mark.parametrize(
    ("payload_type", "message"),
    [
        (NotAPayload, "NotAPayload: NotAPayload is not a dataclass, attrs class, pydantic"),
        (IntKeys, "IntKeys.by_id: JSON object keys are strings, not int"),
        (Outer, "Outer.inner: NotAPayload is not a dataclass"),
        (list[set[complex]], r"list\[set\[complex\]\]\[\]\[\]: complex is not a dataclass"),
    ],
)
def test_a_payload_type_the_codec_cannot_build_is_refused_at_registration(
    engine: Engine, payload_type: Any, message: str
) -> None:
    def ship(event: Event[Any], connection: Connection) -> None: ...

    with pytest.raises(ConfigurationError, match=message):
        engine.register_handler("order.placed", ship, payload_type=payload_type)
    assert engine.registry.get("order.placed") is None


def test_a_custom_codec_decides_what_it_can_decode(sqlite_engine: sa.Engine) -> None:
    class Anything(JsonPayloadCodec):
        def check_payload_type(self, payload_type: Any) -> None:
            return None

    routing = Routing()
    routing.register("order.placed", "orders")
    config = EngineConfig(codecs=PayloadCodecs(by_event_type={"order.placed": Anything()}))
    engine = Engine(SqlRepository(sqlite_engine), MemoryBroker(), routing, config=config)

    def ship(event: Event[NotAPayload], connection: Connection) -> None: ...

    engine.register_handler("order.placed", ship)
    spec = engine.registry.get("order.placed")
    assert spec is not None and spec.payload_type is NotAPayload
