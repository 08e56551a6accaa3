"""Publishing a batch: one Lua script ``XADD``s every message, in order, atomically.

Once a message fails, the script skips the later messages of the same key, so a failure
never reorders a key (a plain pipeline would already have written the later ones). The
script is atomic, so a lost connection means "all or nothing of the batch was written":
every message is then reported :class:`~outboxkit.errors.BrokerUnavailableError` and a
retry may duplicate, never reorder, what was written.
"""

from __future__ import annotations

from collections.abc import Sequence

import redis
from redis.commands.core import Script

from outboxkit.broker import BrokerMessage, SendResult
from outboxkit.brokers.redis_streams.errors import (
    is_unavailable_reply,
    rejection,
    send_error,
    setup_error,
)
from outboxkit.brokers.redis_streams.wire import encode_fields, text
from outboxkit.errors import BrokerUnavailableError, MessageRejectedError

# KEYS: the streams. ARGV[1]: MAXLEN (0 = none); then per message: stream index, message
# key, number of field pairs, fields. Returns only the messages not written, as flat
# triples: position (1-based), "err" or "skip", error text; so a batch written whole answers
# with an empty array (a reply of one entry id per message cost a fifth of the relay's
# time to parse). A failed key skips its later messages: never reorder a key.
PUBLISH_SCRIPT = """
local out = {}
local failed = {}
local maxlen = tonumber(ARGV[1])
local i = 2
local position = 0
while i <= #ARGV do
  position = position + 1
  local stream = KEYS[tonumber(ARGV[i])]
  local key = ARGV[i + 1]
  local nfields = tonumber(ARGV[i + 2])
  local fields = {}
  for f = 1, nfields * 2 do
    fields[f] = ARGV[i + 2 + f]
  end
  i = i + 3 + nfields * 2
  if failed[key] then
    out[#out + 1] = position
    out[#out + 1] = "skip"
    out[#out + 1] = failed[key]
  else
    local reply
    if maxlen > 0 then
      reply = redis.pcall("XADD", stream, "MAXLEN", "~", maxlen, "*", unpack(fields))
    else
      reply = redis.pcall("XADD", stream, "*", unpack(fields))
    end
    if type(reply) == "table" and reply.err then
      failed[key] = reply.err
      out[#out + 1] = position
      out[#out + 1] = "err"
      out[#out + 1] = reply.err
    end
  end
end
return out
"""


def publish_batch(
    client: redis.Redis, script: Script, maxlen: int | None, messages: Sequence[BrokerMessage]
) -> list[SendResult]:
    """Run :data:`PUBLISH_SCRIPT` for ``messages`` and return one result per message.

    A message redis-py could not encode is rejected on its own before anything is sent, and
    the later messages of its key are not sent; errors are classified as in :mod:`.errors`.
    """
    results: list[SendResult | None] = [None] * len(messages)
    failed_keys: dict[str, str] = {}
    streams: dict[str, int] = {}
    sent: list[int] = []
    args: list[bytes | str | int] = [maxlen or 0]
    for position, message in enumerate(messages):
        if message.key in failed_keys:
            reason = f"not sent: an earlier message of key {message.key!r} failed: "
            results[position] = SendResult(
                message=message, error=MessageRejectedError(reason + failed_keys[message.key])
            )
            continue
        try:
            fields = encode_fields(message)
        except MessageRejectedError as exc:
            failed_keys[message.key] = str(exc)
            results[position] = SendResult(message=message, error=exc)
            continue
        index = streams.setdefault(message.topic, len(streams) + 1)
        args.extend((index, message.key, len(fields) // 2))
        args.extend(fields)
        sent.append(position)
    if sent:
        batch = [messages[position] for position in sent]
        sent_results = _run(client, script, list(streams), args, batch)
        for position, result in zip(sent, sent_results, strict=True):
            results[position] = result
    return [result for result in results if result is not None]


def _run(
    client: redis.Redis,
    script: Script,
    keys: list[str],
    args: list[bytes | str | int],
    batch: list[BrokerMessage],
) -> list[SendResult]:
    try:
        # redis-py answers NOSCRIPT (a restarted server) by loading the script and retrying.
        replies = script(keys=keys, args=args, client=client)
    except redis.exceptions.RedisError as exc:
        what = f"a batch of {len(batch)} messages"
        fatal = setup_error(exc, what)
        if fatal is not None:
            # The connection itself is refused (password, database number): nothing was
            # sent, and no message is to blame. The engine stops (see Broker.publish).
            raise fatal from exc
        # The whole script was refused or lost: nothing or all of it was written.
        error = send_error(exc, what)
        return [SendResult(message=m, error=error) for m in batch]
    results = [SendResult(message=message) for message in batch]
    try:
        if len(replies) % 3:
            raise ValueError(f"{len(replies)} items, not triples")
        for at in range(0, len(replies), 3):
            position, status, detail = int(replies[at]) - 1, replies[at + 1], replies[at + 2]
            if not 0 <= position < len(batch) or status not in (b"err", b"skip", "err", "skip"):
                raise ValueError(f"position {position + 1}, status {status!r}")
            if not isinstance(detail, (bytes, str)):
                raise ValueError(f"error text {detail!r}")
            results[position] = _failure(batch[position], text(status), text(detail))
    except (TypeError, ValueError) as exc:
        # Not this script's answer (a script of another version under our name?): what
        # was written is unknown, so the batch is sent again later, uncounted.
        error = BrokerUnavailableError(f"unexpected reply from the publish script: {exc}")
        return [SendResult(message=m, error=error) for m in batch]
    return results


def _failure(message: BrokerMessage, status: str, detail: str) -> SendResult:
    """The result of a message the script did not write (``status`` "err" or "skip").

    A skipped message was not sent because an earlier one of its key failed: nothing is
    wrong with it, so it is never a permanent rejection, whatever the earlier one's was.
    """
    reply = detail
    if status == "skip":
        detail = f"not sent: an earlier message of key {message.key!r} failed: {detail}"
    if is_unavailable_reply(reply):
        return SendResult(message=message, error=BrokerUnavailableError(detail))
    text = f"XADD to {message.topic} refused: {detail}"
    if status == "skip":
        return SendResult(message=message, error=MessageRejectedError(text))
    return SendResult(message=message, error=rejection(reply, text))
