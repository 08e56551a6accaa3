"""Member liveness: a key with a short TTL per open subscription, kept fresh by a thread.

Redis tells nothing about whether a consumer of a group is alive: a process killed with
``kill -9`` leaves its consumer and pending entries behind, and the engine names members
``<host>-<pid>-<n>``, so a restarted process never finds its predecessor's entries. Each
open subscription therefore keeps ``outboxkit:alive:<stream>:<group>:<consumer>`` alive
(``SET ... PX member_ttl``), and every member that ever did so is listed in the group's
registry ``outboxkit:members:<stream>:<group>`` (a set). A registered member whose key is
gone is dead; :mod:`.takeover` acts on that. A member that is not registered (a process of
an older version, a consumer written in Go) never had a key, so a missing key says nothing
about it: only the idle rule (``XAUTOCLAIM``) applies to it.

One daemon thread per broker refreshes the keys of all its open subscriptions in one
pipelined round trip every third of the TTL, so a slow handler never makes its member look
dead and a receive costs no extra round trip. ``:`` and ``\\`` in names are escaped, so two
(stream, group, consumer) triples never share a key.
"""

from __future__ import annotations

import itertools
import logging
import threading

import attrs
import redis

__all__ = ["Heartbeat", "Member"]

logger = logging.getLogger(__name__)

ALIVE_PREFIX = b"outboxkit:alive:"
REGISTRY_PREFIX = b"outboxkit:members:"
#: How long a group's registry outlives the last heartbeat of any of its members: after a
#: day without any, its dead members fall back to the idle rule, which has long expired.
REGISTRY_TTL_MS = 24 * 3600 * 1000


def _part(name: str | bytes) -> bytes:
    raw = name.encode() if isinstance(name, str) else name
    return raw.replace(b"\\", b"\\\\").replace(b":", b"\\:")


def registry_key(stream: str, group: str) -> bytes:
    """The set of members of ``group`` on ``stream`` that keep a liveness key."""
    return REGISTRY_PREFIX + _part(stream) + b":" + _part(group)


def alive_key(stream: str, group: str, consumer: str | bytes) -> bytes:
    """The key that exists while ``consumer`` of ``group`` on ``stream`` is alive."""
    return ALIVE_PREFIX + _part(stream) + b":" + _part(group) + b":" + _part(consumer)


@attrs.frozen
class Member:
    """One consumer of a group on a stream, as the liveness keys know it."""

    stream: str
    group: str
    consumer: str

    @property
    def alive_key(self) -> bytes:
        return alive_key(self.stream, self.group, self.consumer)

    @property
    def registry_key(self) -> bytes:
        return registry_key(self.stream, self.group)


class Heartbeat:
    """Keeps the liveness keys of a broker's open subscriptions; one daemon thread.

    :meth:`add` writes the member's key at once (raising redis-py's error if it cannot),
    so a member is alive before its first read creates it in the group. :meth:`remove`
    never blocks: the thread deletes the key on its next turn, which it takes at once.
    """

    def __init__(self, client: redis.Redis, ttl_seconds: float, *, name: str) -> None:
        self._client = client
        self._ttl_ms = max(int(ttl_seconds * 1000), 1)
        self._interval = ttl_seconds / 3
        self._name = name
        self._lock = threading.Lock()
        self._tokens = itertools.count()
        self._members: dict[int, Member] = {}
        self._retired: list[Member] = []
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._failing = False

    def add(self, member: Member) -> int:
        """Mark ``member`` alive now and keep it so; returns the token for :meth:`remove`."""
        self._write([member], [])
        with self._lock:
            token = next(self._tokens)
            self._members[token] = member
            if self._thread is None and not self._stopping:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
        return token

    def remove(self, token: int) -> None:
        """Stop refreshing the member of ``token`` and delete its key (soon, in the thread)."""
        with self._lock:
            member = self._members.pop(token, None)
            if member is None:
                return
            self._retired.append(member)
        self._wake.set()

    def stop(self, timeout: float) -> None:
        """Delete every key still held and end the thread (waiting at most ``timeout``)."""
        with self._lock:
            self._stopping = True
            thread = self._thread
            for member in self._members.values():
                self._retired.append(member)
            self._members.clear()
        self._wake.set()
        if thread is not None:
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            with self._lock:
                stopping = self._stopping
                live = set(self._members.values())
                # A member closed and opened again under the same name keeps its key.
                retired = [m for m in self._retired if m not in live]
                self._retired = []
            try:
                self._write(sorted(live, key=attrs.astuple), retired)
            except redis.exceptions.RedisError as exc:
                with self._lock:
                    self._retired.extend(retired)  # delete them next time
                if not self._failing:
                    logger.warning("Redis liveness heartbeat failed, will retry: %s", exc)
                self._failing = True
            else:
                if self._failing:
                    logger.info("Redis liveness heartbeat works again")
                self._failing = False
            if stopping:
                return

    def _write(self, live: list[Member], retired: list[Member]) -> None:
        if not live and not retired:
            return
        pipe = self._client.pipeline(transaction=False)
        for member in retired:
            pipe.delete(member.alive_key)
        for member in live:
            pipe.set(member.alive_key, b"1", px=self._ttl_ms)
            pipe.sadd(member.registry_key, member.consumer)
            pipe.pexpire(member.registry_key, REGISTRY_TTL_MS)
        pipe.execute()
