"""Taking over the pending entries of dead members, and removing dead members from a group.

Run by each member with its periodic claim sweep (every ``claim_interval_seconds``):

1. ``XINFO CONSUMERS`` lists the group's members with their pending count and idle time;
2. one pipelined round trip reads the group's registry and the liveness key of each other
   member (see :mod:`.liveness`);
3. for a registered member whose key is gone, :data:`TAKEOVER_SCRIPT` re-checks that
   atomically, ``XCLAIM``\\ s its pending entries (whatever their idle time) and, once its
   pending list is empty, ``XGROUP DELCONSUMER``\\ s it;
4. an unregistered member (never had a key: an older version, a Go consumer) is only
   removed when the idle rule says it is dead (idle longer than ``claim_idle_seconds``)
   and its pending list is empty; its entries are left to ``XAUTOCLAIM``'s idle rule.

``DELCONSUMER`` drops a consumer's pending entries with it, so the script only runs it on
an empty pending list, checked in the same atomic step. A live member wrongly removed
(its heartbeat late) loses nothing: its next read creates it again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import attrs
import redis
from redis.commands.core import Script

from outboxkit.brokers.redis_streams.liveness import alive_key, registry_key

__all__ = ["TAKEOVER_SCRIPT", "Takeover", "take_over_dead_members"]

logger = logging.getLogger(__name__)

# KEYS[1]: the stream; KEYS[2]: the member's liveness key; KEYS[3]: the group's registry.
# ARGV[1]: group; ARGV[2]: the member; ARGV[3]: the claiming consumer; ARGV[4]: how many
# entries to claim at most; ARGV[5]: "dead" (a registered member whose key expired) or
# "idle" (an unregistered member past the idle rule: only removed if nothing is pending).
# Returns {1 if removed else 0, claimed entries, ids and delivery counts before the claim}.
TAKEOVER_SCRIPT = """
local stream, alive, registry = KEYS[1], KEYS[2], KEYS[3]
local group, member, claimer = ARGV[1], ARGV[2], ARGV[3]
local count = tonumber(ARGV[4])
if ARGV[5] == "dead" then
  if redis.call("EXISTS", alive) == 1 or redis.call("SISMEMBER", registry, member) == 0 then
    return {0, {}, {}}
  end
end
local pending = redis.call("XPENDING", stream, group, "-", "+", count, member)
local claimed, counts = {}, {}
if #pending > 0 then
  if ARGV[5] ~= "dead" then
    return {0, {}, {}}
  end
  local ids = {}
  for i, row in ipairs(pending) do
    ids[i] = row[1]
    counts[#counts + 1] = row[1]
    counts[#counts + 1] = row[4]
  end
  claimed = redis.call("XCLAIM", stream, group, claimer, 0, unpack(ids))
end
if #pending < count then
  redis.call("XGROUP", "DELCONSUMER", stream, group, member)
  redis.call("SREM", registry, member)
  return {1, claimed, counts}
end
return {0, claimed, counts}
"""


@attrs.frozen(kw_only=True)
class Takeover:
    """What one sweep took: stream entries as ``XCLAIM`` returns them, their delivery counts
    (after the claim), the members removed, and whether a dead member has more entries."""

    entries: list[tuple[bytes, dict[bytes, bytes]]] = attrs.field(factory=list)
    counts: dict[bytes, int] = attrs.field(factory=dict)
    removed: list[bytes] = attrs.field(factory=list)
    more: bool = False


def take_over_dead_members(
    connection: redis.Redis,
    script: Script,
    *,
    stream: str,
    group: str,
    me: str,
    idle_ms: int,
    count: int,
) -> Takeover:
    """One sweep of ``group`` on ``stream`` by member ``me``; see the module docstring.

    Claims at most ``count`` entries (from the first dead member that has any).
    """
    consumers = connection.xinfo_consumers(stream, group)
    mine = me.encode()
    others = [c for c in consumers if c["name"] != mine]
    if not others:
        return Takeover()
    pipe = connection.pipeline(transaction=False)
    pipe.smembers(registry_key(stream, group))
    for consumer in others:
        pipe.exists(alive_key(stream, group, consumer["name"]))
    registered, *alive = pipe.execute()
    taken = Takeover()
    for consumer, is_alive in zip(others, alive, strict=True):
        name: bytes = consumer["name"]
        if name in registered:
            if is_alive:
                continue
            mode = "dead"
        elif int(consumer["pending"]) == 0 and int(consumer["idle"]) > idle_ms:
            mode = "idle"
        else:
            continue
        keys: list[bytes | str] = [
            stream,
            alive_key(stream, group, name),
            registry_key(stream, group),
        ]
        reply = script(keys=keys, args=[group, name, me, count, mode], client=connection)
        taken = _merge(taken, name, reply, count)
        _log(stream, group, name, me, reply)
        if taken.entries:
            break  # hand these over first; the next sweep goes on
    return taken


def _merge(taken: Takeover, name: bytes, reply: Sequence[Any], count: int) -> Takeover:
    removed, claimed, flat_counts = int(reply[0]), reply[1], reply[2]
    before = dict(zip(flat_counts[::2], flat_counts[1::2], strict=True))
    entries = [(entry[0], _fields(entry[1])) for entry in claimed if entry]
    return Takeover(
        entries=taken.entries + entries,
        # XCLAIM counted one more delivery than XPENDING reported before it
        counts={**taken.counts, **{i: int(n) + 1 for i, n in before.items()}},
        removed=taken.removed + ([name] if removed else []),
        more=taken.more or len(before) >= count,
    )


def _log(stream: str, group: str, name: bytes, me: str, reply: Any) -> None:
    member = name.decode(errors="replace")  # as it was named, not as b'...'
    if reply[1]:
        logger.info(
            "%s took over %d pending entries of dead member %s of %s/%s",
            me,
            len(reply[1]),
            member,
            stream,
            group,
        )
    if int(reply[0]):
        logger.info("%s removed dead member %s from %s/%s", me, member, stream, group)


def _fields(flat: Sequence[bytes]) -> dict[bytes, bytes]:
    return dict(zip(flat[::2], flat[1::2], strict=True))
