"""Per-key publish waves: the ordering rule shared by the Kafka brokers.

With idempotence a Kafka producer never reorders *retriable* failures, but a record that
fails for good can still be overtaken by later records of its key. So a batch is sent in
waves: wave *n* holds the *n*-th message of every key still in good standing. A key whose
message failed takes no part in later waves; its remaining messages are reported with the
same kind of error and were never sent, so the relay retries them after the failed one and
nothing overtakes it. A batch of distinct keys is one wave.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from outboxkit.broker import BrokerMessage, SendResult
from outboxkit.errors import BrokerError, BrokerUnavailableError, MessageRejectedError

#: Sends the messages at these indexes as one wave; returns each one's error (``None`` when
#: acknowledged) and whether later waves may go on (``False`` abandons the rest of the batch).
SendWave = Callable[[list[int]], tuple[dict[int, BrokerError | None], bool]]


def same_kind(error: BrokerError, reason: str) -> BrokerError:
    """An error of ``error``'s kind with another text: for the later messages of a key that
    were not sent because an earlier one failed, so the relay treats them alike."""
    if isinstance(error, BrokerUnavailableError):
        return BrokerUnavailableError(reason)
    return MessageRejectedError(reason)


def publish_in_waves(
    messages: Sequence[BrokerMessage],
    send_wave: SendWave,
    *,
    abandoned: Callable[[], BrokerError],
) -> list[SendResult]:
    """Send ``messages`` in per-key waves with ``send_wave``; one result per message.

    A message left unsent because ``send_wave`` abandoned the batch gets ``abandoned()``
    (and the later messages of its key the same kind of error).
    """
    chains: dict[tuple[str, str], list[int]] = {}
    for index, message in enumerate(messages):
        chains.setdefault((message.topic, message.key), []).append(index)
    errors: dict[int, BrokerError | None] = {}
    stopped: set[tuple[str, str]] = set()  # keys with a failed message: no later waves
    depth = max((len(chain) for chain in chains.values()), default=0)
    for wave in range(depth):
        batch = [
            chain[wave] for key, chain in chains.items() if wave < len(chain) and key not in stopped
        ]
        if not batch:
            break
        outcome, go_on = send_wave(batch)
        errors.update(outcome)
        stopped.update(
            (messages[i].topic, messages[i].key) for i, error in outcome.items() if error
        )
        if not go_on:
            break
    for chain in chains.values():
        failed: BrokerError | None = None
        for index in chain:
            if failed is not None:
                errors[index] = same_kind(
                    failed,
                    f"not sent: an earlier message of key {messages[index].key!r} "
                    f"failed ({failed})",
                )
            elif index not in errors:
                failed = errors[index] = abandoned()
            elif errors[index] is not None:
                failed = errors[index]
    return [SendResult(message=m, error=errors[i]) for i, m in enumerate(messages)]
