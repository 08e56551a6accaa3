"""The publisher process: ``python -m benchmarks.faults.publisher`` (settings from ``OKF_*``).

Publishes events ``0..N-1`` at a fixed rate, each in the caller's transaction together with
a business write (an ``orders`` row), the way an application does. Event ids are fixed per
number (``<run>-<n>``), so a transaction that failed or whose commit was ambiguous (the
connection was killed) is simply retried: publishing is idempotent on the event id. An event
is appended to ``published.log`` only once its transaction committed; that file is the
ground truth of what was published.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from benchmarks.faults.app import orders_table
from benchmarks.faults.settings import EVENT_TYPE, RunSpec, is_poison
from benchmarks.faults.tagging import tagged_engine
from outboxkit.backends import SqlRepository
from outboxkit.errors import OutboxError
from outboxkit.messages import PublishRequest
from outboxkit.publish.publisher import Publisher

logger = logging.getLogger("benchmarks.faults.publisher")

#: Give up on one event after retrying this long (the scenario then reports it).
GIVE_UP_SECONDS = 120.0
#: Pad every payload to about this many bytes, like a real event.
PAD = "x" * 200


def payload(spec: RunSpec, seq: int) -> dict[str, object]:
    body: dict[str, object] = {"seq": seq, "pad": PAD}
    if is_poison(seq):
        body["poison"] = True
    elif spec.is_slow(seq):
        body["sleep"] = spec.slow_seconds
    return body


def published_log(workdir: str) -> Path:
    return Path(workdir) / "published.log"


def main() -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s publisher %(message)s")
    spec = RunSpec.from_environment()
    db = tagged_engine(
        spec.database_url, application_name=spec.application_name, workdir=spec.workdir
    )
    publisher = Publisher(SqlRepository(db), spec.routing())
    orders = orders_table(spec.orders_table)
    fd = os.open(published_log(spec.workdir), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    started = time.monotonic()
    failures = 0
    for seq in range(spec.events):
        delay = started + seq / spec.rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        event_id = f"{spec.run_id}-{seq}"
        request = PublishRequest(
            event_type=EVENT_TYPE,
            payload=payload(spec, seq),
            message_key=f"k{seq % 50}",
            event_id=event_id,
        )
        give_up = time.monotonic() + GIVE_UP_SECONDS
        while True:
            try:
                with db.begin() as conn:
                    conn.execute(orders.insert().values(event_id=event_id))
                    publisher.publish(request, connection=conn)
                break
            except (OutboxError, SQLAlchemyError) as exc:
                failures += 1
                if time.monotonic() > give_up:
                    logger.error("gave up publishing %s: %s", event_id, exc)
                    return 1
                logger.warning("publishing %s failed, retrying: %s", event_id, exc)
                time.sleep(0.2)
        kind = "poison" if is_poison(seq) else "normal"
        os.write(fd, f"{event_id}\t{seq}\t{kind}\n".encode())
    os.close(fd)
    db.dispose()
    print(f"published {spec.events} events, {failures} failed attempts retried", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
