"""Routing: the Go naming convention, overrides, and names that never reach SQL unchecked."""

from __future__ import annotations

import pytest

from outboxkit.errors import InvalidNameError, RoutingError, UnknownEventTypeError
from outboxkit.routing import Route, Routing, ServiceCatalog


def test_convention_matches_the_go_default_route_with_its_namespace() -> None:
    route = Route.by_convention("active-scheduler", namespace="smartflow")

    assert route.table == "active_scheduler_outbox_messages"
    assert route.topic == "smartflow.active-scheduler.outbox"
    assert route.group == "smartflow-active-scheduler-outbox-consumer"


def test_catalog_overrides_only_what_it_is_told() -> None:
    catalog = ServiceCatalog()

    route = catalog.configure("orders", topic="shop.orders")

    assert route.topic == "shop.orders"
    assert route.table == "orders_outbox_messages"
    assert route.group == "outboxkit-orders-outbox-consumer"
    assert catalog.route("orders") == route


def test_two_services_may_not_share_a_table() -> None:
    catalog = ServiceCatalog()
    catalog.configure("orders", table="shared_outbox")

    with pytest.raises(RoutingError, match="shared_outbox"):
        catalog.configure("billing", table="shared_outbox")


@pytest.mark.parametrize(
    "table",
    ["orders; DROP TABLE users", "1orders", "orders-outbox", "", "x" * 64, 'a"b', "ta ble"],
)
def test_unsafe_table_names_are_rejected(table: str) -> None:
    with pytest.raises(InvalidNameError):
        ServiceCatalog().configure("orders", table=table)


@pytest.mark.parametrize("topic", ["a b", "..", ".", "x" * 129, "topic/1", ""])
def test_illegal_topic_names_are_rejected(topic: str) -> None:
    with pytest.raises(InvalidNameError):
        ServiceCatalog().configure("orders", topic=topic)


@pytest.mark.parametrize("service", ["", "-lead", "with space", "x" * 65, "a.b"])
def test_illegal_service_names_are_rejected(service: str) -> None:
    with pytest.raises(InvalidNameError):
        Routing().register("order.placed", service)


def test_an_event_type_belongs_to_one_service() -> None:
    routing = Routing()
    routing.register("order.placed", "orders")
    routing.register("order.placed", "orders")  # same pair again: harmless

    with pytest.raises(RoutingError, match="already registered to service 'orders'"):
        routing.register("order.placed", "billing")


def test_unknown_and_empty_event_types_are_errors() -> None:
    routing = Routing()

    with pytest.raises(UnknownEventTypeError, match="nope"):
        routing.route_of("nope")
    with pytest.raises(RoutingError, match="empty"):
        routing.register("  ", "orders")
    with pytest.raises(RoutingError, match="64"):
        routing.register("x" * 65, "orders")


def test_routing_lists_services_event_types_and_routes() -> None:
    routing = Routing(ServiceCatalog(namespace="shop"))
    routing.register("order.placed", "orders")
    routing.register("order.paid", "orders")
    routing.register("invoice.sent", "billing")

    assert routing.services() == ["billing", "orders"]
    assert routing.event_types("orders") == ["order.paid", "order.placed"]
    assert [r.topic for r in routing.routes()] == ["shop.billing.outbox", "shop.orders.outbox"]
    assert routing.route_of("invoice.sent").table == "billing_outbox_messages"


#: A name with a final line break: ``re.match`` with ``$`` accepted it (issue #18, row 6).
TRAILING_NEWLINE = ["t\n", "orders\n", "shop.orders\n", "grp\n"]


@pytest.mark.parametrize("name", TRAILING_NEWLINE)
def test_a_name_ending_in_a_line_break_is_rejected_everywhere(name: str) -> None:
    with pytest.raises(InvalidNameError):
        ServiceCatalog().configure("orders", table=name)
    with pytest.raises(InvalidNameError):
        ServiceCatalog().configure("orders", topic=name)
    with pytest.raises(InvalidNameError):
        ServiceCatalog().configure("orders", group=name)
    with pytest.raises(InvalidNameError):
        Routing().register("order.placed", name)
    with pytest.raises(InvalidNameError):
        ServiceCatalog(namespace=name)
    with pytest.raises(InvalidNameError):
        Route.by_convention(name.strip(), namespace=name)


def test_a_taken_table_cannot_be_taken_again_with_a_line_break() -> None:
    # Given "t" belongs to alpha
    catalog = ServiceCatalog()
    catalog.configure("alpha", table="t")
    # When beta asks for "t\n", which the database would not tell from "t"
    with pytest.raises(InvalidNameError):
        catalog.configure("beta", table="t\n")
    # Then beta keeps its own table
    assert catalog.route("beta").table == "beta_outbox_messages"
