"""The faults. Each injector runs in the runner while the publisher publishes, is bounded in
count and time, and records what it did as counted facts on its :class:`FaultContext`.

A fault that was meant to happen and did not (no live worker to kill, an injection that
failed, a connection-kill round that found nothing to kill) is recorded as *missed*; the
verdict fails a scenario with any missed fault, and one whose facts fall short of what the
scenario requires (see :mod:`benchmarks.faults.scenarios`): a scenario cannot pass on a
fault that never happened.

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
#: How long a kill waits for a worker of its role to be running before it counts as missed.
CANDIDATE_WAIT_SECONDS = 30.0

# The counted facts (keys of ``FaultContext.facts``); scenarios require minimums of them.
KILLS = "kill -9 done"
KILLED_MID_HANDLER = "handler calls cut by kill -9"
KILL_ROUNDS = "connection-kill rounds"
CONNECTIONS_TERMINATED = "connections terminated"
BROKER_DOWN = "broker refused connections during the outage"
BROKER_BACK = "broker serving again after the outage"
STRANDED = "rows published when the broker stopped, still unconsumed when it came back"
RESCUED = "rows republished by the stuck-published rescue"
FORGED_AIMED = "forged messages aimed at open rows"
WORKERS_APPLYING = "workers that applied events"
SLOW_CALLS = "slow handler calls"


def injected(kind: str) -> str:
    """The fact counting bad messages of ``kind`` put on the topic."""
    return f"injected: {kind}"


@attrs.define
class FaultContext:
    """What an injector may touch: the run's own processes, broker and connections; and
    what it did: :attr:`facts`, :attr:`missed`, :attr:`killed_pids`."""

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
    #: Counted facts of the faults done (keys: the constants of this module).
    facts: Counter[str] = attrs.field(factory=Counter)
    #: Fault actions that should have happened and did not, each saying why.
    missed: list[str] = attrs.field(factory=list)
    #: Pids of the workers killed with SIGKILL.
    killed_pids: list[int] = attrs.field(factory=list)
    #: How long a kill waits for a worker of its role to be running.
    candidate_wait: float = CANDIDATE_WAIT_SECONDS

    def faulted(self) -> None:
        """Record that a fault action just ended."""
        self.last_fault = time.monotonic()

    def miss(self, what: str) -> None:
        """Record a fault action that did not happen (the verdict fails on it)."""
        self.missed.append(what)
        self.say(f"MISSED fault: {what}")

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


Injector = Callable[[FaultContext], None]


def no_fault(ctx: FaultContext) -> None:
    """Only concurrency: wait for the publisher."""
    for _ in ctx.windows((0.5, 0.5)):
        pass


def _running_candidate(ctx: FaultContext, role: str) -> Child | None:
    """A random worker of ``role`` whose engine runs, waiting (bounded) for one to be."""
    deadline = time.monotonic() + ctx.candidate_wait
    while True:
        candidates = ctx.procs.running_workers(role)
        if candidates:
            return ctx.rng.choice(candidates)
        if time.monotonic() > deadline:
            return None
        time.sleep(0.1)


def kill_workers(role: str, pause: tuple[float, float] = (1.5, 3.0)) -> Injector:
    """kill -9 a random running worker of ``role`` and start a replacement, repeatedly.

    Every window kills: when no worker of the role runs (the replacements are still
    starting), it waits for one; a window that finds none in time is a missed fault.
    """

    def inject(ctx: FaultContext) -> None:
        for n in ctx.windows(pause, tail=3.0):
            victim = _running_candidate(ctx, role)
            if victim is None:
                ctx.miss(f"kill {n}: no {role} worker running within {ctx.candidate_wait:g} s")
                continue
            if not ctx.procs.kill9(victim):
                ctx.miss(f"kill {n}: {victim.name} had already ended")
            else:
                ctx.facts[KILLS] += 1
                ctx.killed_pids.append(victim.pid)
                ctx.faulted()
            ctx.procs.start_worker(role)
        ctx.say(f"killed {ctx.facts[KILLS]} {role} workers with SIGKILL")

    return inject


def broker_outage(ctx: FaultContext) -> None:
    """Stop the broker a third into publishing; restart it empty after the outage.

    Counts as facts that the broker refused connections during the outage, that it served
    again, and how many rows were ``published`` when it stopped and still not consumed when
    it came back (``pending`` again by then, or still ``published``): their messages died
    with the broker, and only the stuck-published rescue can deliver them.
    """
    planned = ctx.spec.events / ctx.spec.rate
    time.sleep(max(1.0, planned / 3))
    ctx.broker.stop()
    on_the_broker = ctx.db.ids_in_status("published")
    ctx.say(f"broker {ctx.broker.kind} stopped for {ctx.outage_seconds:.0f} s")
    time.sleep(ctx.outage_seconds / 2)
    if ctx.broker.accepts_connections():
        ctx.miss("the broker still accepted connections in the middle of its outage")
    else:
        ctx.facts[BROKER_DOWN] += 1
    time.sleep(ctx.outage_seconds / 2)
    ctx.broker.start()
    if ctx.broker.accepts_connections():
        ctx.facts[BROKER_BACK] += 1
    ctx.facts[STRANDED] += len(on_the_broker & ctx.db.ids_in_status("pending", "published"))
    ctx.faulted()
    ctx.say(
        f"broker {ctx.broker.kind} restarted empty; {ctx.facts[STRANDED]} rows were published "
        "and not consumed"
    )


def terminate_connections(ctx: FaultContext) -> None:
    """Terminate all the run's database connections every 0.5-1.5 s (claim, publish, consume).

    While the publisher publishes it always holds a connection, so a round then that
    terminates nothing is a missed fault; rounds in the tail after it may find none.
    """
    for n in ctx.windows((0.5, 1.5), tail=2.0):
        publishing = ctx.publishing()
        killed = ctx.db.terminate_connections()
        ctx.facts[KILL_ROUNDS] += 1
        ctx.facts[CONNECTIONS_TERMINATED] += killed
        if killed == 0 and publishing:
            ctx.miss(f"connection-kill round {n} found no connection of the run to terminate")
        ctx.faulted()
    ctx.say(
        f"terminated {ctx.facts[CONNECTIONS_TERMINATED]} connections in "
        f"{ctx.facts[KILL_ROUNDS]} rounds"
    )


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


#: The kinds that name a real row: sent only while some row is open (pending or published).
AIMED_KINDS = ("truncated envelope", "undecodable, real row", "forged", "forged poison")


def bad_message(kind: str, ctx: FaultContext, n: int, target: int | None = None) -> bytes:
    """One message of ``kind``; those of :data:`AIMED_KINDS` name the open row ``target``."""
    if kind in AIMED_KINDS and target is None:
        raise ValueError(f"a {kind!r} message needs an open row to aim at")
    rng = ctx.rng
    forged_id = f"forged-{ctx.spec.run_id}-{n}"
    if kind == "random bytes":
        return rng.randbytes(rng.randint(1, 400))
    if kind == "oversized envelope":
        return _envelope(10**12 + n, forged_id, {"seq": -1, "pad": "y" * 950_000})
    if kind == "not an object":
        return rng.choice([b"[1,2,3]", b'"text"', b"null", b"42", b"{}"])
    if kind == "unknown row":
        return _envelope(10**12 + n, forged_id, {"seq": -1})
    assert target is not None
    if kind == "truncated envelope":
        whole = _envelope(target, forged_id, {"seq": -1})
        return whole[: rng.randint(1, len(whole) - 1)]
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


def garbage_and_forged(ctx: FaultContext) -> None:
    """Put raw garbage and forged envelopes on the topic, one every 0.1-0.3 s.

    The kinds take turns; one naming a real row waits for a window in which some row is
    open (never a row that may be consumed already). An injection that fails is a missed
    fault. (Every kind must be injected at least once: a short run needs its windows.)
    """
    turn = 0
    for n in ctx.windows((0.1, 0.3)):
        kind = BAD_KINDS[turn % len(BAD_KINDS)]
        target: int | None = None
        if kind in AIMED_KINDS:
            open_rows = ctx.db.open_row_ids(5)
            if not open_rows:
                continue  # this kind's turn again in the next window
            target = ctx.rng.choice(open_rows)
        turn += 1
        try:
            ctx.broker.inject(ctx.db.route.topic, b"garbage", bad_message(kind, ctx, n, target))
        except Exception as exc:
            ctx.miss(f"could not inject {kind}: {type(exc).__name__}: {exc}")
            continue
        ctx.facts[injected(kind)] += 1
        if kind in ("forged", "forged poison"):
            ctx.facts[FORGED_AIMED] += 1
        ctx.faulted()
    total = sum(ctx.facts[injected(k)] for k in BAD_KINDS)
    ctx.say(f"injected {total} bad messages ({len(ctx.missed)} injections failed)")
