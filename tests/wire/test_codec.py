"""The envelope codec against literal Go-shaped JSON: what the Go relay emits, we read."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import pytest

from outboxkit.errors import DecodeError, InvalidEventError
from outboxkit.messages import OutboxMessage, PublishRequest
from outboxkit.wire.envelope import (
    CONTENT_TYPE,
    ENVELOPE_VERSION,
    Envelope,
    broker_headers,
    decode_envelope,
    decode_shell,
    encode_envelope,
    encode_shell,
    envelope_from_row,
)
from tests.support.engine import outbox_row

#: An envelope exactly as the Go relay (json.Marshal of its Envelope struct) writes it.
GO_ENVELOPE = (
    '{"outbox_id":42,"event_id":"42","event_type":"chat.history.persist.requested",'
    '"event_version":"v1","service_name":"agent","aggregate_id":"conv-1",'
    '"payload":{"conversation_id":"conv-1","text":"你好"}}'
)
GO_FIELDS = (
    "outbox_id",
    "event_id",
    "event_type",
    "event_version",
    "service_name",
    "aggregate_id",
    "payload",
)
PUBLISHED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def _row(
    payload: str, *, row_id: int = 7, event_id: str | None = None, **extra: Any
) -> OutboxMessage:
    return outbox_row(payload, id=row_id, event_id=event_id, **extra)


# --------------------------------------------------------------------------- reading Go


@pytest.mark.parametrize("value", [GO_ENVELOPE, GO_ENVELOPE.encode("utf-8")])
def test_a_go_envelope_decodes_as_version_1_first_attempt(value: str | bytes) -> None:
    assert decode_envelope(value) == Envelope(
        outbox_id=42,
        event_id="42",
        event_type="chat.history.persist.requested",
        event_version="v1",
        service_name="agent",
        aggregate_id="conv-1",
        payload={"conversation_id": "conv-1", "text": "你好"},
        occurred_at=None,
        published_at=None,
        attempt=1,
        headers={},
        envelope_version=1,
    )


def test_a_go_envelope_without_event_id_falls_back_to_the_outbox_id() -> None:
    go = '{"outbox_id":9001,"event_type":"memory.extract.requested","payload":null}'
    envelope = decode_envelope(go)
    assert envelope.event_id == "9001"
    assert envelope.event_version == "v1"  # omitted (omitempty) -> the default
    assert envelope.service_name == "" and envelope.aggregate_id == ""
    assert envelope.payload is None  # a literal null payload is accepted, as in Go


def test_a_go_envelope_with_padded_strings_is_trimmed() -> None:
    go = '{"outbox_id":3,"event_id":" e-3 ","event_type":" t.x ","event_version":"","payload":1}'
    envelope = decode_envelope(go)
    assert (envelope.event_id, envelope.event_type, envelope.event_version) == ("e-3", "t.x", "v1")


def test_a_go_event_shell_decodes_with_trim_and_default_version() -> None:
    # The payload column as the Go publisher writes it (omitempty on the optional fields)
    column = (
        '{"event_id":"  ev-1 ","event_type":" chat.history.persist.requested\\n",'
        '"event_version":"","aggregate_id":" conv-1 ",'
        '"payload":{"conversation_id":"conv-1","text":"你好"}}'
    )
    shell = decode_shell(column, outbox_id=5)
    assert shell.event_id == "ev-1"
    assert shell.event_type == "chat.history.persist.requested"
    assert shell.event_version == "v1"
    assert shell.aggregate_id == "conv-1"
    assert shell.payload == {"conversation_id": "conv-1", "text": "你好"}
    assert shell.headers == {} and shell.occurred_at is None
    minimal = decode_shell('{"event_type":"x","payload":null}')
    assert (minimal.event_id, minimal.event_version, minimal.payload) == ("", "v1", None)


@pytest.mark.parametrize(
    ("column", "reason"),
    [
        ("not json", "failed to parse"),
        ('{"event_type":"  ","payload":{}}', "event type is empty"),
        ('{"event_type":"x"}', "payload is empty"),
        ('["event_type"]', "not an object"),
    ],
)
def test_a_bad_event_shell_raises_decode_error_with_the_row_id(column: str, reason: str) -> None:
    with pytest.raises(DecodeError, match=reason) as info:
        decode_shell(column, outbox_id=11)
    assert info.value.outbox_id == 11


# --------------------------------------------------------------------------- malformed


def test_a_value_that_is_not_json_raises_decode_error_without_ids() -> None:
    for value in (b"\xff\xfe not utf-8", b"{oops", "plain text"):
        with pytest.raises(DecodeError) as info:
            decode_envelope(value)
        assert info.value.outbox_id is None


DEEP = 5000  # far beyond what Python's JSON parser and encoder recurse into


def test_json_nested_too_deep_for_python_is_an_outboxkit_error_not_a_recursion_error() -> None:
    """A relay or consumer must be able to mark such a row or message dead; a bare
    RecursionError would fail the whole batch, again at every lease or redelivery."""
    deep = "[" * DEEP + "]" * DEEP
    with pytest.raises(DecodeError) as shell:
        decode_shell(f'{{"event_type":"t","payload":{deep}}}', outbox_id=9)
    assert shell.value.outbox_id == 9
    with pytest.raises(DecodeError):
        decode_envelope(f'{{"outbox_id":9,"event_type":"t","payload":{deep}}}')
    nested: list[Any] = []
    for _ in range(DEEP):
        nested = [nested]
    with pytest.raises(InvalidEventError):
        encode_shell(
            PublishRequest(event_type="t", payload=nested),
            occurred_at=datetime(2026, 1, 1, tzinfo=timezone.utc),
        )


@pytest.mark.parametrize("raw_id", ["", '"outbox_id":0,', '"outbox_id":-4,', '"outbox_id":"42",'])
def test_an_envelope_without_a_usable_outbox_id_raises_with_the_other_ids(raw_id: str) -> None:
    value = (
        "{" + raw_id + '"event_id":"e-1","event_type":"t.x","service_name":"agent","payload":{}}'
    )
    with pytest.raises(DecodeError, match="outbox_id") as info:
        decode_envelope(value)
    error = info.value
    assert error.outbox_id is None or error.outbox_id <= 0
    assert (error.event_id, error.event_type, error.service_name) == ("e-1", "t.x", "agent")


def test_an_envelope_with_an_empty_event_type_carries_its_outbox_id() -> None:
    with pytest.raises(DecodeError, match="event type") as info:
        decode_envelope('{"outbox_id":42,"event_id":"42","event_type":"  ","payload":{}}')
    assert info.value.outbox_id == 42
    assert info.value.event_id == "42"
    assert info.value.event_type is None


def test_an_envelope_without_payload_is_rejected() -> None:
    with pytest.raises(DecodeError, match="payload") as info:
        decode_envelope('{"outbox_id":42,"event_type":"t.x"}')
    assert info.value.outbox_id == 42 and info.value.event_type == "t.x"


def test_an_envelope_from_a_newer_version_is_rejected_with_its_ids() -> None:
    newer = json.loads(GO_ENVELOPE) | {"envelope_version": ENVELOPE_VERSION + 1}
    with pytest.raises(DecodeError, match="newer") as info:
        decode_envelope(json.dumps(newer))
    assert info.value.outbox_id == 42
    assert info.value.event_type == "chat.history.persist.requested"
    assert info.value.service_name == "agent"


@pytest.mark.parametrize("version", ["0", "-1", '"1"', "true", "1.5"])
def test_an_invalid_envelope_version_is_rejected(version: str) -> None:
    with pytest.raises(DecodeError, match="envelope_version"):
        decode_envelope(
            '{"envelope_version":' + version + ',"outbox_id":1,"event_type":"t","payload":1}'
        )


def test_an_invalid_attempt_reads_as_the_first() -> None:
    for attempt in ("true", "0", '"2"', "-3"):
        value = '{"outbox_id":1,"event_type":"t","payload":1,"attempt":' + attempt + "}"
        assert decode_envelope(value).attempt == 1
    assert decode_envelope('{"outbox_id":1,"event_type":"t","payload":1,"attempt":4}').attempt == 4


def test_a_boolean_outbox_id_is_not_an_id() -> None:
    with pytest.raises(DecodeError, match="outbox_id"):
        decode_envelope('{"outbox_id":true,"event_type":"t","payload":1}')


# --------------------------------------------------------------------------- writing for Go


def _full_envelope(**changes: Any) -> Envelope:
    fields: dict[str, Any] = {
        "outbox_id": 42,
        "event_id": "ev-42",
        "event_type": "chat.history.persist.requested",
        "event_version": "v2",
        "service_name": "agent",
        "aggregate_id": "conv-1",
        "payload": {"conversation_id": "conv-1", "text": "你好", "n": [1, 2.5, None]},
        "occurred_at": "2026-01-02T03:04:00Z",
        "published_at": "2026-01-02T03:04:05Z",
        "attempt": 3,
        "headers": {"traceparent": "00-abc-def-01", "tenant": "t1"},
    }
    fields.update(changes)
    return Envelope(**fields)


def test_our_envelope_has_every_go_field_with_go_names_and_a_nested_payload() -> None:
    envelope = _full_envelope()
    obj = json.loads(encode_envelope(envelope).decode("utf-8"))
    assert set(GO_FIELDS) <= set(obj)
    assert obj["outbox_id"] == 42 and isinstance(obj["outbox_id"], int)
    assert obj["event_id"] == "ev-42"
    assert obj["event_type"] == "chat.history.persist.requested"
    assert obj["event_version"] == "v2"
    assert obj["service_name"] == "agent"
    assert obj["aggregate_id"] == "conv-1"
    assert obj["payload"] == envelope.payload  # a nested JSON value, not a string
    assert isinstance(obj["payload"], dict)
    assert obj["envelope_version"] == ENVELOPE_VERSION and obj["attempt"] == 3
    # UTF-8 kept as is (as Go's encoder writes it), compact separators
    assert "你好".encode() in encode_envelope(envelope)
    assert b": " not in encode_envelope(envelope)


def test_empty_optional_fields_are_omitted_like_go_omitempty() -> None:
    obj = json.loads(
        encode_envelope(
            _full_envelope(
                service_name="", aggregate_id="", occurred_at=None, published_at=None, headers={}
            )
        )
    )
    assert "service_name" not in obj and "aggregate_id" not in obj
    assert "occurred_at" not in obj and "published_at" not in obj and "headers" not in obj
    assert obj["payload"] is not None and "outbox_id" in obj and "event_type" in obj


def test_our_envelope_round_trips() -> None:
    for envelope in (_full_envelope(), _full_envelope(payload=None, headers={}, attempt=1)):
        assert decode_envelope(encode_envelope(envelope)) == envelope


def test_a_go_envelope_re_encoded_keeps_the_go_fields() -> None:
    obj = json.loads(encode_envelope(decode_envelope(GO_ENVELOPE)))
    assert {k: obj[k] for k in GO_FIELDS} == json.loads(GO_ENVELOPE)


# --------------------------------------------------------------------------- headers


def test_broker_headers_carry_type_id_content_type_and_trace_only_when_present() -> None:
    with_trace = broker_headers(
        _full_envelope(headers={"traceparent": "00-abc-def-01", "tracestate": "k=v", "x": "y"})
    )
    assert with_trace == {
        "event_type": "chat.history.persist.requested",
        "event_id": "ev-42",
        "content-type": CONTENT_TYPE,
        "traceparent": "00-abc-def-01",
        "tracestate": "k=v",
    }
    without = broker_headers(_full_envelope(headers={"tenant": "t1"}))
    assert without == {
        "event_type": "chat.history.persist.requested",
        "event_id": "ev-42",
        "content-type": "application/json",
    }


# --------------------------------------------------------------------------- rows


def test_envelope_from_row_uses_our_shell_and_the_row() -> None:
    request = PublishRequest(
        event_type="chat.history.persist.requested",
        payload={"text": "你好"},
        message_key="conv-1",
        event_id="ev-1",
        headers={"traceparent": "00-1-2-01"},
    )
    column = encode_shell(request, occurred_at=datetime(2026, 1, 1, tzinfo=timezone.utc))
    envelope = envelope_from_row(
        _row(column, row_id=7, event_id="ev-1", retry_count=2), published_at=PUBLISHED
    )
    assert envelope == Envelope(
        outbox_id=7,
        event_id="ev-1",
        event_type="chat.history.persist.requested",
        event_version="v1",
        service_name="agent",
        aggregate_id="conv-1",
        payload={"text": "你好"},
        occurred_at="2026-01-01T00:00:00Z",
        published_at="2026-01-02T03:04:05Z",
        attempt=3,
        headers={"traceparent": "00-1-2-01"},
    )


def test_envelope_from_row_event_id_falls_back_row_then_shell_then_row_id() -> None:
    with_shell_id = '{"event_id":"shell-id","event_type":"t.x","payload":{}}'
    without = '{"event_type":"t.x","payload":{}}'
    assert (
        envelope_from_row(_row(with_shell_id, event_id="row-id"), published_at=PUBLISHED).event_id
        == "row-id"
    )
    assert (
        envelope_from_row(_row(with_shell_id, event_id=None), published_at=PUBLISHED).event_id
        == "shell-id"
    )
    assert (
        envelope_from_row(_row(without, row_id=123, event_id=None), published_at=PUBLISHED).event_id
        == "123"
    )
    # aggregate_id falls back to the message key, as in Go
    assert envelope_from_row(_row(without), published_at=PUBLISHED).aggregate_id == "conv-1"


def test_a_go_written_row_publishes_what_go_would_publish() -> None:
    column = (
        '{"event_type":"chat.history.persist.requested","aggregate_id":"conv-1",'
        '"payload":{"conversation_id":"conv-1","text":"你好"}}'
    )
    envelope = envelope_from_row(_row(column, row_id=42), published_at=PUBLISHED)
    obj = json.loads(encode_envelope(envelope))
    assert {k: obj[k] for k in GO_FIELDS} == json.loads(GO_ENVELOPE)


def test_envelope_from_row_raises_decode_error_with_the_row_id_for_a_bad_column() -> None:
    with pytest.raises(DecodeError) as info:
        envelope_from_row(_row('{"payload":{}}', row_id=77), published_at=PUBLISHED)
    assert info.value.outbox_id == 77
