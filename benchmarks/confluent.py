"""librdkafka (confluent-kafka) produce throughput, for folding into ``benchmarks.run``.

    .venv/bin/python -m benchmarks.confluent [--messages 20000] [--repeat 3] [--relay postgres]

Prints, against a Tansu it starts (or ``OUTBOXKIT_TEST_KAFKA_BOOTSTRAP``), the medians of
``--repeat`` interleaved runs of: raw ``Producer.produce`` x N + ``flush``; and
``ConfluentKafkaBroker.publish`` in batches of 100 distinct keys (one wave), 100 messages
over 50 keys (2 waves) and 500 over 50 keys (10 waves, the relay's batch shape in
``benchmarks.run``); plus kafka-python's ``KafkaBroker.publish`` for scale. With ``--relay``
it also drains an outbox through :func:`benchmarks.run.bench_relay` with this broker.

:func:`confluent_factory` has the shape of ``benchmarks.run._kafka``, so ``run.py`` can add
``("confluent", confluent_factory)`` to its broker loop.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from collections.abc import Callable

from benchmarks.run import PAYLOAD, bench_relay
from outboxkit.broker import Broker, BrokerMessage
from outboxkit.testing import services

#: The relay's message value in ``benchmarks.run``: an encoded envelope of ~300 bytes.
VALUE = json.dumps({"payload": PAYLOAD, "outbox_id": 1, "event_type": "bench.event"}).encode()


def _raw_producer_send(bootstrap: str) -> Callable[[int, str], int]:
    from confluent_kafka import Producer

    def raw_send(count: int, topic: str) -> int:
        failed: list[object] = []
        producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "acks": "all",
                "linger.ms": 5,
                "delivery.report.only.error": True,
                "on_delivery": lambda err, _msg: failed.append(err),
            }
        )
        for i in range(count):
            try:
                producer.produce(topic, value=VALUE, key=f"k{i % 50}".encode())
            except BufferError:  # local queue full: serve reports, then once more
                producer.poll(0.1)
                producer.produce(topic, value=VALUE, key=f"k{i % 50}".encode())
        producer.flush(30)
        assert not failed, failed[:3]
        return count

    return raw_send


def confluent_factory(
    rows_value: bytes,
) -> tuple[Broker, Callable[[int, str], int], Callable[[], None]]:
    """``(broker, raw_send, stop)`` like ``benchmarks.run._kafka``, for librdkafka."""
    from outboxkit.brokers.confluent import ConfluentKafkaBroker
    from outboxkit.testing.tansu import TansuServer

    server = None
    bootstrap = services.external_kafka_bootstrap()
    if bootstrap is None:
        server = TansuServer()
        server.start()
        bootstrap = server.bootstrap
    broker = ConfluentKafkaBroker.from_bootstrap(bootstrap)

    def stop() -> None:
        broker.close()
        if server is not None:
            server.stop()

    return broker, _raw_producer_send(bootstrap), stop


def _publish_rate(broker: Broker, topic: str, count: int, batch: int, keys: int) -> float:
    started = time.perf_counter()
    for start in range(0, count, batch):
        messages = [
            BrokerMessage(topic=topic, key=f"k{i % keys}", value=VALUE)
            for i in range(start, min(count, start + batch))
        ]
        results = broker.publish(messages)
        assert all(r.ok for r in results), [r.error for r in results if not r.ok][:3]
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--relay", default="", help="comma list: postgres,mysql")
    args = parser.parse_args()

    from outboxkit.brokers.confluent import ConfluentKafkaBroker
    from outboxkit.brokers.kafka import KafkaBroker

    broker, raw_send, stop = confluent_factory(VALUE)
    try:
        assert isinstance(broker, ConfluentKafkaBroker)
        bootstrap = broker.config.bootstrap_servers
        kafka_python = KafkaBroker.from_bootstrap(bootstrap)
        run = uuid.uuid4().hex[:8]

        def raw(topic: str) -> float:
            started = time.perf_counter()
            count = raw_send(args.messages, topic)
            return count / (time.perf_counter() - started)

        def ours(batch: int, keys: int, on: Broker = broker) -> Callable[[str], float]:
            count = args.messages if on is broker else max(args.messages // 5, 1000)
            return lambda topic: _publish_rate(on, topic, count, batch, keys)

        shapes: dict[str, Callable[[str], float]] = {
            "raw confluent produce+flush": raw,
            "publish 100 distinct keys (1 wave)": ours(100, 100),
            "publish 100 over 50 keys (2 waves)": ours(100, 50),
            "publish 500 over 50 keys (10 waves)": ours(500, 50),
            "kafka-python publish 100 distinct keys": ours(100, 100, kafka_python),
        }
        rates: dict[str, list[float]] = {name: [] for name in shapes}
        for rep in range(args.repeat):  # interleaved: drift hits every shape alike
            for index, (name, measure) in enumerate(shapes.items()):
                topic = f"bench-{run}-{rep}-{index}"
                broker.ensure_topic(topic)
                rates[name].append(measure(topic))
        raw_median = statistics.median(rates["raw confluent produce+flush"])
        print(f"{'what':<42} {'msg/s':>10} {'x raw':>6}")
        for name, values in rates.items():
            median = statistics.median(values)
            print(f"{name:<42} {median:>10,.0f} {median / raw_median:>6.2f}")
        kafka_python.close()
        if args.relay:
            import sqlalchemy as sa

            urls = {"postgres": services.postgres_url(), "mysql": services.mysql_url()}
            for name in args.relay.split(","):
                db = sa.create_engine(urls[name])
                try:
                    what, relayed, raw_rate = bench_relay(
                        f"{name} -> confluent", db, broker, raw_send, args.messages
                    )
                finally:
                    db.dispose()
                print(f"{what:<42} {relayed:>10,.0f} rows/s, raw {raw_rate:,.0f} msg/s")
    finally:
        stop()


if __name__ == "__main__":
    main()
