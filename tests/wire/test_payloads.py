"""The default payload codec: plain JSON out, the declared payload type back in."""

from __future__ import annotations

import dataclasses
import enum
import json
import uuid
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Literal

import attrs
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outboxkit import (
    ConfigurationError,
    Event,
    InvalidEventError,
    JsonPayloadCodec,
    PayloadCodecs,
    PayloadDecodeError,
)
from outboxkit.wire.envelope import dumps
from outboxkit.wire.payloads import decode_payload


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Size(enum.IntEnum):
    S = 1
    L = 3


@attrs.frozen
class Address:
    street: str
    city: str = "Berlin"


@dataclasses.dataclass(frozen=True)
class Line:
    sku: str
    price: Decimal
    colour: Colour


@dataclasses.dataclass(frozen=True)
class Everything:
    order_id: uuid.UUID
    placed_at: datetime
    due: date
    total: Decimal
    size: Size
    lines: tuple[Line, ...]
    pair: tuple[int, str]
    tags: frozenset[str]
    prices: dict[str, Decimal]
    address: Address
    note: str | None
    blob: bytes
    kind: Literal["web", "shop"]
    extra: Any = None


class Customer(pydantic.BaseModel):
    id: uuid.UUID
    since: datetime
    credit: Decimal


def everything() -> Everything:
    return Everything(
        order_id=uuid.UUID("12345678-1234-5678-1234-567812345678"),
        placed_at=datetime(2026, 11, 25, 13, 40, 5, 123456, tzinfo=timezone(timedelta(hours=2))),
        due=date(2026, 12, 1),
        total=Decimal("10.10"),
        size=Size.L,
        lines=(Line(sku="A", price=Decimal("0.1"), colour=Colour.BLUE),),
        pair=(7, "x"),
        tags=frozenset({"b", "a"}),
        prices={"A": Decimal("1E+2")},
        address=Address(street="Main 1"),
        note=None,
        blob=b"\x00\xff",
        kind="shop",
        extra={"free": [1, "json"]},
    )


codec = JsonPayloadCodec()


def test_rich_values_are_written_as_plain_json() -> None:
    encoded = codec.encode(everything())
    # plain JSON a Go consumer reads: only dicts, lists, strings, numbers, null
    assert json.loads(dumps(encoded)) == encoded
    assert encoded["order_id"] == "12345678-1234-5678-1234-567812345678"
    assert encoded["placed_at"] == "2026-11-25T13:40:05.123456+02:00"
    assert encoded["due"] == "2026-12-01"
    assert encoded["total"] == "10.10"
    assert encoded["size"] == 3
    assert encoded["lines"] == [{"sku": "A", "price": "0.1", "colour": "blue"}]
    assert encoded["tags"] == ["a", "b"]
    assert encoded["address"] == {"street": "Main 1", "city": "Berlin"}
    assert encoded["blob"] == "AP8="


def test_a_declared_payload_type_comes_back_equal_through_json() -> None:
    original = everything()
    wire = json.loads(dumps(codec.encode(original)))
    assert codec.decode(wire, Everything) == original


def test_a_pydantic_model_round_trips() -> None:
    customer = Customer(id=uuid.uuid4(), since=datetime.now(timezone.utc), credit=Decimal("5.5"))
    wire = json.loads(dumps(codec.encode(customer)))
    assert codec.decode(wire, Customer) == customer


def test_plain_json_payloads_are_unchanged_both_ways() -> None:
    payload = {"id": 1, "items": [{"a": None, "b": 1.5, "c": True}], "s": "é"}
    assert codec.encode(payload) == payload
    assert codec.decode(payload, Any) == payload
    assert codec.decode(payload, dict[str, Any]) == payload


def test_a_go_style_utc_timestamp_decodes() -> None:
    assert codec.decode("2026-11-25T13:40:00Z", datetime) == datetime(
        2026, 11, 25, 13, 40, tzinfo=timezone.utc
    )


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({1: "a"}, "payload has the non-string key 1"),
        ({"a": {None: 1}}, "payload.a has the non-string key None"),
        ({"a": [object()]}, r"payload.a\[0\] is not JSON-serialisable: object"),
        ({"n": Decimal("NaN")}, "payload.n: NaN cannot be written as JSON"),
        (1j, "payload is not JSON-serialisable: complex"),
    ],
)
def test_values_json_cannot_carry_unchanged_are_rejected(payload: Any, message: str) -> None:
    with pytest.raises(InvalidEventError, match=message):
        codec.encode(payload)


CARD = "4111-1111-1111-1111"


@attrs.frozen
class Card:
    number: str = attrs.field(validator=attrs.validators.matches_re(r"\d{16}"))


class Holder(pydantic.BaseModel):
    card: uuid.UUID
    n: int

    @pydantic.field_validator("n")
    @classmethod
    def small(cls, n: int) -> int:
        if n > 9:
            raise ValueError(f"{n} is too big")
        return n


@pytest.mark.parametrize(
    ("data", "payload_type", "message"),
    [
        ({"sku": "A", "price": "x", "colour": "red"}, Line, "payload.price: not a valid Decimal"),
        ({"sku": "A", "price": "1", "colour": "green"}, Line, "payload.colour: not a valid Colour"),
        (
            {"sku": "A", "colour": "red"},
            Line,
            r"payload: cannot build Line: TypeError \(absent: price",
        ),
        ([1, 2], Line, "payload: expected an object for Line, got an array of 2 items"),
        ({"pair": [1]}, dict[str, tuple[int, str]], r"payload\[0\]: expected 2 items, got 1"),
        ("not-a-uuid", uuid.UUID, r"payload: not a valid UUID \(got a string of 10 characters\)"),
        (True, int, "payload: expected int, got a boolean"),
        ({"id": "x"}, Customer, "payload: not a valid Customer: id: Input should be a valid UUID"),
        ("tv", Literal["web", "shop"], r"payload: expected one of \('web', 'shop'\), got a string"),
    ],
)
def test_a_payload_that_does_not_fit_names_the_field(
    data: Any, payload_type: Any, message: str
) -> None:
    with pytest.raises(PayloadDecodeError, match=message):
        codec.decode(data, payload_type)


@pytest.mark.parametrize(
    ("data", "payload_type", "message"),
    [
        (CARD, uuid.UUID, "payload: not a valid UUID (got a string of 19 characters)"),
        (CARD, int, "payload: expected int, got a string of 19 characters"),
        (CARD, Literal["web"], "payload: expected one of ('web',), got a string of 19 characters"),
        (CARD, Colour, "payload: not a valid Colour (got a string of 19 characters)"),
        ({CARD: CARD}, dict[str, int], "payload[0]: expected int, got a string of 19 characters"),
        ({"number": CARD}, Card, "payload: cannot build Card: ValueError"),
        (
            {"card": CARD, "n": 4111},
            Holder,
            "payload: not a valid Holder: card: Input should be a valid UUID; n: Value error",
        ),
    ],
)
def test_a_payload_that_does_not_fit_is_described_never_quoted(
    data: Any, payload_type: Any, message: str
) -> None:
    # Given a value that does not fit its declared type (issue #18, row 14)
    with pytest.raises(PayloadDecodeError) as raised:
        codec.decode(data, payload_type)
    # Then the error says where and what was expected, and never holds the value
    assert str(raised.value) == message
    assert "4111" not in str(raised.value)


@dataclasses.dataclass(frozen=True)
class Sample:
    at: datetime
    day: date
    amount: Decimal
    ident: uuid.UUID
    colour: Colour
    size: Size
    pair: tuple[int, str]
    names: frozenset[str]
    blob: bytes
    maybe: Address | None
    nested: list[dict[str, Decimal]]
    ratio: float


samples = st.builds(
    Sample,
    at=st.datetimes(timezones=st.one_of(st.none(), st.timezones())),
    day=st.dates(),
    amount=st.decimals(allow_nan=False, allow_infinity=False),
    ident=st.uuids(),
    colour=st.sampled_from(Colour),
    size=st.sampled_from(Size),
    pair=st.tuples(st.integers(), st.text()),
    names=st.frozensets(st.text(max_size=5), max_size=4),
    blob=st.binary(max_size=16),
    maybe=st.one_of(st.none(), st.builds(Address, street=st.text(), city=st.text())),
    nested=st.lists(
        st.dictionaries(
            st.text(max_size=5),
            st.decimals(allow_nan=False, allow_infinity=False),
            max_size=3,
        ),
        max_size=3,
    ),
    ratio=st.floats(allow_nan=False, allow_infinity=False),
)


@settings(max_examples=300, deadline=None)
@given(sample=samples)
def test_any_declared_value_survives_the_wire_unchanged(sample: Sample) -> None:
    wire = json.loads(dumps(codec.encode(sample)))
    back = codec.decode(wire, Sample)
    assert dataclasses.replace(back, at=sample.at) == sample
    # The same wall time and offset (a zone's name is not kept, only its offset; == would
    # be False for a wall time in a DST gap even when both say the same instant).
    assert type(back.at) is datetime and back.at.utcoffset() == sample.at.utcoffset()
    assert back.at.replace(tzinfo=None) == sample.at.replace(tzinfo=None)
    assert str(back.amount) == str(sample.amount)
    assert type(back.pair) is tuple and type(back.names) is frozenset


def _sample() -> Sample:
    return Sample(
        at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
        day=date(2026, 1, 2),
        amount=Decimal("1.5"),
        ident=uuid.UUID(int=7),
        colour=Colour.RED,
        size=Size.S,
        pair=(1, "a"),
        names=frozenset({"n"}),
        blob=b"\x01",
        maybe=None,
        nested=[{"k": Decimal("2")}],
        ratio=0.5,
    )


@pytest.mark.parametrize(
    ("payload_type", "value"),
    [
        (Everything, everything()),
        (Customer, Customer(id=uuid.UUID(int=1), since=datetime(2026, 1, 1), credit=Decimal(1))),
        (Sample, _sample()),
        (dict[str, Any], {"a": [1, "b"]}),
        (list[Line] | None, [Line(sku="A", price=Decimal("1.5"), colour=Colour.RED)]),
        (Colour, Colour.BLUE),
    ],
    ids=["dataclass", "pydantic", "nested", "dict", "optional-list", "enum"],
)
def test_every_type_the_codec_decodes_passes_its_registration_check(
    payload_type: Any, value: Any
) -> None:
    # Given a type the codec really decodes: a value of it survives the wire
    assert codec.decode(json.loads(dumps(codec.encode(value))), payload_type) == value
    # Then registering a handler for it is accepted (no ConfigurationError)
    codec.check_payload_type(payload_type)


class QuotingCodec(JsonPayloadCodec):
    """A codec of the application's whose errors quote what they refuse."""

    def decode(self, data: Any, payload_type: Any) -> Any:
        raise ValueError(f"cannot read {data!r}")


def test_a_custom_codec_error_is_named_by_type_never_by_its_message() -> None:
    event = Event(
        event_id="e-1",
        outbox_id=1,
        event_type="card.added",
        event_version="1",
        service_name="billing",
        aggregate_id="",
        message_key="k",
        payload={"card": CARD},
        headers={},
        attempt=1,
    )
    codecs = PayloadCodecs(by_event_type={"card.added": QuotingCodec()})
    with pytest.raises(PayloadDecodeError) as raised:
        decode_payload(event, Line, codecs)
    assert str(raised.value) == (
        "QuotingCodec failed to decode a Line for card.added: ValueError: its message withheld"
    )


class NotJson:
    def __init__(self, raw: bytes) -> None:
        self.raw = raw


@pytest.mark.parametrize(
    ("payload_type", "message"),
    [
        (NotJson, "NotJson is not a dataclass, attrs class, pydantic model, enum or JSON type"),
        (dict[int, str], "JSON object keys are strings, not int"),
        (list[complex], r"complex is not a dataclass"),
    ],
)
def test_a_type_the_codec_cannot_decode_fails_its_registration_check(
    payload_type: Any, message: str
) -> None:
    # The contrast that makes the check above mean something: an accept-all check fails here
    with pytest.raises(ConfigurationError, match=message):
        codec.check_payload_type(payload_type)
