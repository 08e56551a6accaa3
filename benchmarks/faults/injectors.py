"""The faults. Each injector runs in the runner while the publisher publishes, is bounded in
count and time, and returns what it did (for the report).

Every loop stops by itself: when the publisher has finished (plus a short tail) or at the
injector's own time limit, whichever comes first.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator

import attrs

from benchmarks.faults.brokers import OwnBroker
from benchmarks.faults.database import RunDatabase
from benchmarks.faults.processes import Child, ProcessGroup
from benchmarks.faults.settings import EVENT_TYPE, SERVICE, RunSpec
from outboxkit.wire.envelope import Envelope, encode_envelope

#: No injector runs longer than this, whatever the publisher does.
MAX_INJECTOR_SECONDS = 900.0


@attrs.define
class FaultContext:
    """What an injector may touch: the run's own processes, broker and connections."""

    spec: RunSpec
    db: RunDatabase
    broker: OwnBroker
    procs: ProcessGroup
    publisher: Child
    outage_seconds: float
    say: Callable[[str], None]
    rng: random.Random = attrs.field(factory=lambda: random.Random(os.getpid()))
    #: When the last fault action ended (monotonic); drain time is measured from it.
    last_fault: float | None = None

    def faulted(self) -> None:
        """Record that a fault action just ended."""
        self.last_fault = time.monotonic()

    def publishing(self) -> bool:
        return self.publisher.alive

    def windows(self, pause: tuple[float, float], *, tail: float = 0.0) -> Iterator[int]:
        """Yield 0, 1, 2, ... after random pauses, while publishing (plus ``tail`` seconds)."""
        limit = time.monotonic() + MAX_INJECTOR_SECONDS
        finished_at: float | None = None
        n = 0
        while time.monotonic() < limit:
            time.sleep(self.rng.uniform(*pause))
            if not self.publishing():
                finished_at = finished_at or time.monotonic()
                if time.monotonic() - finished_at >= tail:
                    return
            yield n
            n += 1


Injector = Callable[[FaultContext], dict[str, object]]


def no_fault(ctx: FaultContext) -> dict[str, object]:
    """Only concurrency: wait for the publisher."""
    for _ in ctx.windows((0.5, 0.5)):
        pass
    return {}


def kill_workers(role: str, pause: tuple[float, float] = (1.5, 3.0)) -> Injector:
    """kill -9 a random live worker of ``role`` and start a replacement, repeatedly."""

    def inject(ctx: FaultContext) -> dict[str, object]:
        kills = 0
        for _ in ctx.windows(pause, tail=3.0):
            candidates = ctx.procs.workers(role)
            if not candidates:
                continue
            victim = ctx.rng.choice(candidates)
            ctx.procs.kill9(victim)
            kills += 1
            ctx.faulted()
            ctx.procs.start_worker(role)
        ctx.say(f"killed {kills} {role} workers with SIGKILL")
        return {f"kill -9 ({role} workers)": kills}

    return inject


def broker_outage(ctx: FaultContext) -> dict[str, object]:
    """Stop the broker a third into publishing; restart it empty after the outage."""
    planned = ctx.spec.events / ctx.spec.rate
    time.sleep(max(1.0, planned / 3))
    ctx.broker.stop()
    ctx.say(f"broker {ctx.broker.kind} stopped for {ctx.outage_seconds:.0f} s")
    time.sleep(ctx.outage_seconds)
    ctx.broker.start()
    ctx.faulted()
    ctx.say(f"broker {ctx.broker.kind} restarted empty")
    return {"broker stopped, restarted empty (s)": ctx.outage_seconds}


def terminate_connections(ctx: FaultContext) -> dict[str, object]:
    """Terminate all the run's database connections every 0.5-1.5 s (claim, publish, consume)."""
    rounds = killed = 0
    for _ in ctx.windows((0.5, 1.5), tail=2.0):
        killed += ctx.db.terminate_connections()
        rounds += 1
        ctx.faulted()
    ctx.say(f"terminated {killed} connections in {rounds} rounds")
    return {"connection-kill rounds": rounds, "connections terminated": killed}


def _envelope(outbox_id: int, event_id: str, payload: object, **extra: object) -> bytes:
    envelope = Envelope(
        outbox_id=outbox_id,
        event_id=event_id,
        event_type=EVENT_TYPE,
        service_name=SERVICE,
        payload=payload,
    )
    if not extra:
        return encode_envelope(envelope)
    obj = json.loads(encode_envelope(envelope))
    obj.update(extra)
    return json.dumps(obj).encode()


def bad_message(kind: str, ctx: FaultContext, n: int) -> bytes:
    """One message of ``kind``; the forged ones name a real row that is not consumed yet."""
    rng = ctx.rng
    real = ctx.db.open_row_ids(5)
    target = rng.choice(real) if real else 1
    forged_id = f"forged-{ctx.spec.run_id}-{n}"
    if kind == "random bytes":
        return rng.randbytes(rng.randint(1, 400))
    if kind == "truncated envelope":
        whole = _envelope(target, forged_id, {"seq": -1})
        return whole[: rng.randint(1, len(whole) - 1)]
    if kind == "oversized envelope":
        return _envelope(10**12 + n, forged_id, {"seq": -1, "pad": "y" * 950_000})
    if kind == "not an object":
        return rng.choice([b"[1,2,3]", b'"text"', b"null", b"42", b"{}"])
    if kind == "unknown row":
        return _envelope(10**12 + n, forged_id, {"seq": -1})
    if kind == "undecodable, real row":
        return _envelope(target, forged_id, {"seq": -1}, envelope_version=99)
    if kind == "forged":
        return _envelope(target, forged_id, {"seq": -1, "forged": True})
    if kind == "forged poison":
        return _envelope(target, forged_id, {"seq": -1, "forged": True, "poison": True})
    raise ValueError(kind)


BAD_KINDS = (
    "random bytes",
    "truncated envelope",
    "oversized envelope",
    "not an object",
    "unknown row",
    "undecodable, real row",
    "forged",
    "forged poison",
)


def garbage_and_forged(ctx: FaultContext) -> dict[str, object]:
    """Put raw garbage and forged envelopes on the topic, one every 0.2-0.6 s."""
    sent: Counter[str] = Counter()
    failed = 0
    for n in ctx.windows((0.2, 0.6)):
        kind = BAD_KINDS[n % len(BAD_KINDS)]
        try:
            ctx.broker.inject(ctx.db.route.topic, b"garbage", bad_message(kind, ctx, n))
            sent[kind] += 1
            ctx.faulted()
        except Exception as exc:
            failed += 1
            ctx.say(f"could not inject {kind}: {type(exc).__name__}: {exc}")
    ctx.say(f"injected {sum(sent.values())} bad messages ({failed} injections failed)")
    return {f"injected: {k}": v for k, v in sorted(sent.items())}
