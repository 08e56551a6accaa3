"""Values read from the broker are checked against the columns they will meet, and a value
that fails is described in a short reason that never quotes the message.

Covers :mod:`outboxkit.wire.fields` through its two users, the envelope decoder and the
receipt decoder: every case of issue #18 (huge and negative ids, booleans and floats where
an integer belongs, ``NaN``, non-string ids, over-long strings, NUL and lone surrogates,
wrong JSON types at every level, deep nesting, 10 MB values), then hypothesis on arbitrary
bytes and JSON: a decoder raises :class:`DecodeError` or returns values that fit.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outboxkit.errors import DecodeError
from outboxkit.messages import MAX_EVENT_ID, MAX_ROW_ID
from outboxkit.routing import MAX_EVENT_TYPE, MAX_SERVICE_NAME
from outboxkit.store import MAX_LAST_ERROR, storable
from outboxkit.wire.envelope import Envelope, decode_envelope
from outboxkit.wire.receipt import MAX_RECEIPT_BYTES, Receipt
from tests.support.hostile import nested

#: The longest reason a decoder may give, whatever the message held.
SHORT = 300
HUGE = "x" * 10_000_000


def _envelope(**fields: Any) -> bytes:
    value: dict[str, Any] = {
        "envelope_version": 1,
        "outbox_id": 7,
        "event_id": "e-7",
        "event_type": "order.placed",
        "service_name": "orders",
        "payload": {},
    }
    value.update(fields)
    return json.dumps(value).encode()


def _receipt(**fields: Any) -> bytes:
    value: dict[str, Any] = {
        "event_id": "e-7",
        "outbox_id": 7,
        "event_type": "order.placed",
        "outcome": "consumed",
        "reason": "",
    }
    value.update(fields)
    return json.dumps(value).encode()


BAD_IDS: dict[str, object] = {
    "2**63": 2**63,
    "10**30": 10**30,
    "zero": 0,
    "negative": -1,
    "true": True,
    "float": 7.0,
    "string": "7",
    "array": [7],
    "object": {"id": 7},
}

BAD_TEXTS: dict[str, object] = {
    "65-characters": "x" * 65,
    "10MB": HUGE,
    "NUL": "a\x00b",
    "lone-surrogate": "a\ud800b",
    "integer": 7,
    "boolean": False,
    "array": ["e"],
    "object": {"e": 1},
}


def _refused(decode: Any, value: bytes) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        decode(value)
    assert len(info.value.reason) < SHORT
    return info.value


# --------------------------------------------------------------------------- envelope


@pytest.mark.parametrize("raw", BAD_IDS.values(), ids=BAD_IDS.keys())
def test_an_envelope_whose_outbox_id_is_no_bigint_row_id_is_refused(raw: object) -> None:
    error = _refused(decode_envelope, _envelope(outbox_id=raw))
    assert error.outbox_id is None
    assert "outbox_id" in error.reason


@pytest.mark.parametrize("field", ["event_id", "event_type", "service_name"])
@pytest.mark.parametrize("raw", BAD_TEXTS.values(), ids=BAD_TEXTS.keys())
def test_an_envelope_whose_id_fields_do_not_fit_their_columns_is_refused(
    field: str, raw: object
) -> None:
    error = _refused(decode_envelope, _envelope(**{field: raw}))
    assert field in error.reason
    assert getattr(error, field) is None  # never carried on to a mark or a log line
    assert error.outbox_id == 7  # what passed its check still names the row


@pytest.mark.parametrize("number", [b"1e400", b"-1e400", b"7.5", b"1e2"])
def test_a_json_number_with_a_fraction_or_exponent_is_no_row_id(number: bytes) -> None:
    envelope = b'{"outbox_id":' + number + b',"event_type":"t","payload":{}}'
    assert "outbox_id" in _refused(decode_envelope, envelope).reason
    receipt = b'{"event_id":"e","outbox_id":' + number + b',"event_type":"t","outcome":"dead"}'
    assert "outbox_id" in _refused(Receipt.decode, receipt).reason


def test_the_largest_bigint_and_the_widest_ids_still_decode() -> None:
    envelope = decode_envelope(
        _envelope(
            outbox_id=MAX_ROW_ID,
            event_id="e" * MAX_EVENT_ID,
            event_type="t" * MAX_EVENT_TYPE,
            service_name="s" * MAX_SERVICE_NAME,
        )
    )
    assert envelope.outbox_id == MAX_ROW_ID
    assert len(envelope.event_id) == MAX_EVENT_ID


@pytest.mark.parametrize(
    "value",
    [
        b'{"outbox_id": NaN, "event_type": "t", "payload": {}}',
        b'{"outbox_id": 7, "event_type": "t", "payload": Infinity}',
        b'{"outbox_id": 7, "event_type": "t", "payload": ' + b"9" * 5000 + b"}",
        nested(100_000),
        b'{"outbox_id": 7, "event_type": "t", "payload": ' + nested(100_000) + b"}",
        json.dumps({"outbox_id": 7, "event_type": "t", "envelope_version": HUGE}).encode(),
        json.dumps({"outbox_id": 7, "event_type": "t", "envelope_version": 10**4000}).encode(),
        json.dumps([HUGE]).encode(),
        json.dumps(HUGE).encode(),
        b'"\xff' + HUGE.encode() + b'"',
    ],
    ids=[
        "NaN",
        "Infinity",
        "5000-digit-integer",
        "nested-100000",
        "payload-nested-100000",
        "10MB-version",
        "4001-digit-version",
        "array",
        "10MB-string",
        "not-utf-8",
    ],
)
def test_a_message_that_is_no_strict_json_object_is_refused_in_a_short_reason(
    value: bytes,
) -> None:
    _refused(decode_envelope, value)


def test_absent_null_and_blank_ids_fall_back_as_the_go_relay_expects() -> None:
    envelope = decode_envelope(_envelope(event_id=None, service_name="  "))
    assert (envelope.event_id, envelope.service_name) == ("7", "")


# --------------------------------------------------------------------------- receipt


@pytest.mark.parametrize("raw", BAD_IDS.values(), ids=BAD_IDS.keys())
def test_a_receipt_whose_outbox_id_is_no_bigint_row_id_is_refused(raw: object) -> None:
    assert "outbox_id" in _refused(Receipt.decode, _receipt(outbox_id=raw)).reason


@pytest.mark.parametrize("field", ["event_id", "event_type"])
@pytest.mark.parametrize("raw", [*BAD_TEXTS.values(), None, ""], ids=[*BAD_TEXTS, "null", "empty"])
def test_a_receipt_whose_ids_do_not_fit_their_columns_is_refused(field: str, raw: object) -> None:
    reason = _refused(Receipt.decode, _receipt(**{field: raw})).reason
    assert field in reason or "bytes, over" in reason  # 10 MB: refused before parsing


@pytest.mark.parametrize("outcome", ["lost", "", None, 1, ["dead"], HUGE])
def test_a_receipt_with_an_unknown_outcome_is_refused(outcome: object) -> None:
    _refused(Receipt.decode, _receipt(outcome=outcome))


def test_a_receipt_over_the_size_a_genuine_one_can_have_is_refused_unparsed() -> None:
    error = _refused(Receipt.decode, b" " * (MAX_RECEIPT_BYTES + 1))
    assert "bytes" in error.reason


def test_a_reason_longer_than_the_inbox_keeps_is_refused_and_nul_made_storable() -> None:
    _refused(Receipt.decode, _receipt(reason="r" * (MAX_LAST_ERROR + 1)))
    _refused(Receipt.decode, _receipt(reason=["not", "text"]))
    receipt = Receipt.decode(_receipt(outcome="dead", reason="a\x00b\ud800"))
    assert storable(receipt.reason)


def test_a_genuine_receipt_round_trips() -> None:
    sent = Receipt(
        event_id="e" * MAX_EVENT_ID,
        outbox_id=MAX_ROW_ID,
        event_type="t" * MAX_EVENT_TYPE,
        outcome="dead",
        reason="\u00e9" * MAX_LAST_ERROR,
    )
    assert len(sent.encode()) < MAX_RECEIPT_BYTES
    assert Receipt.decode(sent.encode()) == sent


# --------------------------------------------------------------------------- properties

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=80)
    | st.sampled_from([2**63, -(2**63), MAX_ROW_ID, "x" * 70, "a\x00b", "\ud800"]),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
#: Objects shaped like envelopes and receipts, whose every field may be anything.
shaped = st.fixed_dictionaries(
    {},
    optional={
        name: json_values
        for name in (
            "envelope_version",
            "outbox_id",
            "event_id",
            "event_type",
            "service_name",
            "payload",
            "attempt",
            "headers",
            "outcome",
            "reason",
        )
    },
)
messages = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    shaped.map(lambda v: json.dumps(v).encode()),
)
PROPERTY = settings(max_examples=300, deadline=None)


def _fits(envelope: Envelope) -> bool:
    return (
        1 <= envelope.outbox_id <= MAX_ROW_ID
        and 0 < len(envelope.event_id) <= MAX_EVENT_ID
        and 0 < len(envelope.event_type) <= MAX_EVENT_TYPE
        and len(envelope.service_name) <= MAX_SERVICE_NAME
        and all(storable(t) for t in (envelope.event_id, envelope.event_type))
    )


@PROPERTY
@given(value=messages)
def test_decode_envelope_refuses_or_returns_values_that_fit_their_columns(value: bytes) -> None:
    try:
        envelope = decode_envelope(value)
    except DecodeError as exc:
        assert len(exc.reason) < SHORT
        assert exc.outbox_id is None or 1 <= exc.outbox_id <= MAX_ROW_ID
        assert exc.event_id is None or len(exc.event_id) <= MAX_EVENT_ID
        return
    assert _fits(envelope)


@PROPERTY
@given(value=messages)
def test_receipt_decode_refuses_or_returns_values_that_fit_their_columns(value: bytes) -> None:
    try:
        receipt = Receipt.decode(value)
    except DecodeError as exc:
        assert len(exc.reason) < SHORT
        return
    assert 1 <= receipt.outbox_id <= MAX_ROW_ID
    assert 0 < len(receipt.event_id) <= MAX_EVENT_ID and storable(receipt.event_id)
    assert 0 < len(receipt.event_type) <= MAX_EVENT_TYPE and storable(receipt.event_type)
    assert receipt.outcome in ("consumed", "dead")
    assert len(receipt.reason) <= MAX_LAST_ERROR and storable(receipt.reason)
