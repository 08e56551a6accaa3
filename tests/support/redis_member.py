"""A Redis Streams group member in its own process, for ``kill -9`` tests.

``python -m tests.support.redis_member URL STREAM GROUP NAME COUNT TTL`` subscribes, receives COUNT
entries without acknowledging them, prints ``took COUNT`` and then waits forever with its
broker (and so its liveness heartbeat) running, like a worker stuck in a slow handler,
until the test kills it.
"""

from __future__ import annotations

import sys
import threading

from outboxkit.brokers.redis_streams import RedisStreamsBroker


def main(argv: list[str]) -> None:
    url, stream, group, name, count, ttl = argv
    broker = RedisStreamsBroker.from_url(
        url, member_ttl_seconds=float(ttl), claim_idle_seconds=600.0, block_ms=200
    )
    subscription = broker.subscribe(stream, group, name)
    taken = 0
    while taken < int(count):
        taken += len(subscription.receive(timeout=1.0, max_messages=int(count) - taken))
    print(f"took {taken}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1:])
